//! The sender: one claimed delivery in, one decision out.
//!
//! It encrypts the payload for the subscriber, signs (or reuses) the VAPID
//! token for the push service's origin, sends, and maps the protocol core's
//! classification onto the queue's dispositions. It holds no database
//! transaction while the request is in flight.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use crate::domain::{now_millis, Millis};
use crate::secrets::MasterKey;
use crate::store::{AppRow, Claimed, Disposition, Store};
use crate::webpush::{
    self, ece, AllowedHosts, AuthSecret, ContentEncoding, Endpoint, Outcome, P256dh, PushOptions,
    TopicKey, Ttl, Urgency, VapidSigner, Vendor,
};

use super::retry::RetryPolicy;
use crate::metrics::Metrics;

/// Answer bodies are read only this far: enough for any vendor's reason.
const MAX_ANSWER_BYTES: usize = 4096;

struct CachedSigner {
    generation: i64,
    contact: String,
    signer: Arc<VapidSigner>,
}

pub struct Sender {
    client: reqwest::Client,
    allowed: AllowedHosts,
    store: Store,
    master: MasterKey,
    policy: RetryPolicy,
    metrics: Arc<Metrics>,
    /// One signer per app, so each caches its tokens per audience.
    signers: RwLock<HashMap<String, CachedSigner>>,
    /// Per push-service origin, whether a connection is up (see [`Sender::send`]).
    origins: RwLock<HashMap<String, Arc<OriginGate>>>,
}

/// What the sender decided, plus an app-level configuration error to show.
pub struct Decision {
    pub disposition: Disposition,
    pub config_error: Option<String>,
}

impl Sender {
    pub fn new(
        client: reqwest::Client,
        allowed: AllowedHosts,
        store: Store,
        master: MasterKey,
        policy: RetryPolicy,
        metrics: Arc<Metrics>,
    ) -> Self {
        Sender {
            client,
            allowed,
            store,
            master,
            policy,
            metrics,
            signers: RwLock::new(HashMap::new()),
            origins: RwLock::new(HashMap::new()),
        }
    }

    /// Drops a cached signer (after a contact change or regeneration here).
    pub fn forget_app(&self, app_id: &str) {
        self.signers
            .write()
            .expect("signer cache lock")
            .remove(app_id);
    }

    async fn signer(&self, c: &Claimed) -> Result<Arc<VapidSigner>, String> {
        if let Some(cached) = self
            .signers
            .read()
            .expect("signer cache lock")
            .get(&c.app_id)
        {
            if cached.generation == c.notice.vapid_generation && cached.contact == c.notice.contact
            {
                return Ok(cached.signer.clone());
            }
        }
        let app = self
            .store
            .app_get(&c.app_id)
            .await
            .map_err(|e| format!("loading app: {e}"))?
            .ok_or("app no longer exists")?;
        let signer = Arc::new(self.build_signer(&app)?);
        self.signers.write().expect("signer cache lock").insert(
            app.id.clone(),
            CachedSigner {
                generation: app.vapid_generation,
                contact: app.contact.clone(),
                signer: signer.clone(),
            },
        );
        Ok(signer)
    }

    fn build_signer(&self, app: &AppRow) -> Result<VapidSigner, String> {
        let der = self
            .master
            .open(&app.id, &app.vapid_private_sealed)
            .map_err(|e| e.to_string())?;
        let key =
            webpush::VapidKey::from_pkcs8(&der).map_err(|e| format!("stored VAPID key: {e}"))?;
        let contact =
            webpush::Contact::parse(&app.contact).map_err(|e| format!("app contact: {e}"))?;
        Ok(VapidSigner::new(key, Some(contact)))
    }

    /// Sends one delivery and decides what happens to it.
    pub async fn deliver(&self, c: &Claimed) -> Decision {
        let now = now_millis();
        self.metrics
            .observe_queue_wait(&c.vendor, (now - c.created_at).max(0) as f64 / 1000.0);
        if c.expires_at <= now {
            return self.finish(c, Disposition::Expired { error: None }, None);
        }
        let Some(target) = &c.target else {
            return self.finish(
                c,
                Disposition::Gone {
                    error: "subscription was removed".into(),
                },
                None,
            );
        };
        let prepared = match self.prepare(c, target).await {
            Ok(p) => p,
            Err(Prepared::Failed(e)) => {
                return self.finish(c, Disposition::Failed { error: e }, None)
            }
            Err(Prepared::Config(e)) => {
                return self.finish(c, Disposition::Failed { error: e.clone() }, Some(e))
            }
        };
        let (endpoint, request) = prepared;
        let vendor = Vendor::of(&endpoint);
        let started = Instant::now();
        let classified = match self.send(&endpoint, request).await {
            Ok(mut resp) => {
                let status = resp.status().as_u16();
                let headers = std::mem::take(resp.headers_mut());
                let body = read_limited(resp).await;
                webpush::vendor::classify(vendor, status, &headers, &body, SystemTime::now())
            }
            Err(e) => {
                self.origin_failed(endpoint.origin());
                webpush::vendor::classify_transport_error(&e)
            }
        };
        self.metrics
            .observe_delivery_latency(&c.vendor, started.elapsed().as_secs_f64());
        let now = now_millis();
        let reason = classified.reason.clone();
        let attempts = c.attempts as u32 + 1;
        let (disposition, config_error) = match classified.outcome {
            Outcome::Delivered => (Disposition::Delivered { at: now }, None),
            Outcome::Gone | Outcome::KeyMismatch => (Disposition::Gone { error: reason }, None),
            Outcome::RateLimited { retry_after } => {
                let wait = retry_after.unwrap_or_else(|| self.policy.backoff(attempts));
                (
                    self.retry_or_expire(c, now, wait, reason, false, false),
                    None,
                )
            }
            Outcome::Retry { after } if self.policy.may_retry(attempts) => (
                self.retry_or_expire(
                    c,
                    now,
                    after.unwrap_or_else(|| self.policy.backoff(attempts)),
                    reason,
                    true,
                    false,
                ),
                None,
            ),
            Outcome::Retry { .. } => (
                Disposition::Failed {
                    error: format!("{reason} (gave up after {attempts} attempts)"),
                },
                None,
            ),
            Outcome::RetryWithoutTopic if !c.without_topic => (
                self.retry_or_expire(c, now, Duration::ZERO, reason, true, true),
                None,
            ),
            Outcome::RetryWithoutTopic | Outcome::Failed => {
                (Disposition::Failed { error: reason }, None)
            }
            Outcome::ConfigError => (
                Disposition::Failed {
                    error: reason.clone(),
                },
                Some(reason),
            ),
        };
        self.finish(c, disposition, config_error)
    }

    fn retry_or_expire(
        &self,
        c: &Claimed,
        now: Millis,
        wait: Duration,
        error: String,
        used_attempt: bool,
        without_topic: bool,
    ) -> Disposition {
        let at = now + wait.as_millis() as Millis;
        // Never send late: a retry due after the TTL would be dropped by the
        // push service anyway, or worse, shown out of context.
        if at >= c.expires_at {
            return Disposition::Expired { error: Some(error) };
        }
        Disposition::Retry {
            at,
            error,
            used_attempt,
            without_topic,
        }
    }

    fn finish(
        &self,
        c: &Claimed,
        disposition: Disposition,
        config_error: Option<String>,
    ) -> Decision {
        let label = match &disposition {
            Disposition::Delivered { .. } => "delivered",
            Disposition::Gone { .. } => "gone",
            Disposition::Failed { .. } => "failed",
            Disposition::Expired { .. } => "expired",
            Disposition::Retry { .. } => {
                self.metrics.retry(&c.vendor);
                ""
            }
        };
        if !label.is_empty() {
            self.metrics.outcome(&c.vendor, label);
        }
        Decision {
            disposition,
            config_error,
        }
    }

    async fn prepare(
        &self,
        c: &Claimed,
        target: &crate::store::Target,
    ) -> Result<(Endpoint, reqwest::RequestBuilder), Prepared> {
        // The allow-list is checked again at send time: configuration may
        // have narrowed since the subscription was stored.
        let endpoint = Endpoint::parse(&target.endpoint, &self.allowed)
            .map_err(|e| Prepared::Failed(format!("endpoint refused: {e}")))?;
        let p256dh = P256dh(
            target
                .p256dh
                .as_slice()
                .try_into()
                .map_err(|_| Prepared::Failed("stored p256dh is corrupt".into()))?,
        );
        let auth = AuthSecret(
            target
                .auth
                .as_slice()
                .try_into()
                .map_err(|_| Prepared::Failed("stored auth secret is corrupt".into()))?,
        );
        let encoding =
            ContentEncoding::parse(&target.content_encoding).unwrap_or(ContentEncoding::Aes128gcm);
        let encrypted = ece::encrypt(&p256dh, &auth, &c.notice.payload, encoding)
            .map_err(|e| Prepared::Failed(e.to_string()))?;
        let signer = self.signer(c).await.map_err(Prepared::Config)?;
        let authorization = signer
            .authorization(&endpoint)
            .map_err(|e| Prepared::Config(e.to_string()))?;
        let remaining_secs = ((c.expires_at - now_millis()).max(1000) / 1000) as u64;
        let opts = PushOptions {
            ttl: Ttl::new(remaining_secs.min(c.notice.ttl_secs.max(1) as u64)),
            urgency: Urgency::parse(&c.notice.urgency).unwrap_or_default(),
            topic: if c.without_topic {
                None
            } else {
                c.notice.topic_key.as_deref().map(TopicKey::new)
            },
        };
        let request = webpush::request::build(
            &self.client,
            &endpoint,
            encrypted,
            &opts,
            &authorization,
            signer.public_key_b64(),
        );
        Ok((endpoint, request))
    }
}

/// Whether an origin has a live connection, and the turn of the request
/// that opens one.
#[derive(Default)]
struct OriginGate {
    warm: AtomicBool,
    opening: tokio::sync::Mutex<()>,
}

impl Sender {
    /// Sends, opening at most one connection per origin at a time. Without
    /// this a burst of N deliveries to a cold origin starts N TLS handshakes
    /// before the first HTTP/2 connection is up to carry them all; the push
    /// service sees a connection storm and Herald pays N handshakes.
    async fn send(
        &self,
        endpoint: &Endpoint,
        request: reqwest::RequestBuilder,
    ) -> reqwest::Result<reqwest::Response> {
        let gate = self.origin_gate(endpoint.origin());
        if gate.warm.load(Ordering::Acquire) {
            return request.send().await;
        }
        let _turn = gate.opening.lock().await;
        if gate.warm.load(Ordering::Acquire) {
            drop(_turn);
            return request.send().await;
        }
        let result = request.send().await;
        gate.warm.store(result.is_ok(), Ordering::Release);
        result
    }

    fn origin_gate(&self, origin: &str) -> Arc<OriginGate> {
        if let Some(g) = self.origins.read().expect("origin lock").get(origin) {
            return g.clone();
        }
        self.origins
            .write()
            .expect("origin lock")
            .entry(origin.to_string())
            .or_default()
            .clone()
    }

    /// A transport failure may mean the connection is gone: the next burst
    /// opens one again before fanning out.
    fn origin_failed(&self, origin: &str) {
        if let Some(g) = self.origins.read().expect("origin lock").get(origin) {
            g.warm.store(false, Ordering::Release);
        }
    }
}

enum Prepared {
    Failed(String),
    Config(String),
}

async fn read_limited(mut resp: reqwest::Response) -> String {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        let room = MAX_ANSWER_BYTES.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_ANSWER_BYTES {
            break;
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}
