//! A push-service emulator: a real HTTPS server (HTTP/2 and HTTP/1.1, its own
//! CA) that answers the way FCM, Mozilla autopush, Apple and WNS answer, and
//! checks every request the way a strict push service would.
//!
//! It is deliberately independent of Herald's own protocol code: subscriber
//! keys are made and bodies decrypted with the `ece` crate, and VAPID
//! signatures are checked with aws-lc-rs directly. A bug in Herald's crypto
//! therefore shows up as a refused push, not as two halves agreeing on the
//! same mistake.
//!
//! # Starting
//!
//! ```ignore
//! mod support;
//! use support::emulator::{Emulator, EmuVendor, Scripted};
//!
//! let emu = Emulator::start().await;          // verifying emulator
//! let sink = Emulator::start_sink().await;    // benchmark sink (no checks)
//! let emu = Emulator::launch(Mode::Verify);   // same, from sync code
//! ```
//!
//! Each emulator binds `127.0.0.1:0` and serves TLS with a leaf certificate
//! for `localhost` and `127.0.0.1`, signed by a CA created for it alone. It
//! runs on its own thread with its own Tokio runtime, so it works the same
//! under `#[tokio::test]` (current-thread), a multi-thread runtime, or a
//! synchronous benchmark, and never competes with the client's runtime.
//!
//! - [`Emulator::port`], [`Emulator::origin`] (`https://localhost:PORT`, the
//!   VAPID audience), [`Emulator::allowed_host`] (`"localhost"`).
//! - [`Emulator::ca_pem`] and [`Emulator::ca_file`] (a PEM file in a temp dir
//!   that lives as long as the emulator): give either to the client as an
//!   extra trusted CA. [`Emulator::client_builder`] returns a reqwest builder
//!   that trusts exactly that CA and nothing else.
//!
//! # Subscribers
//!
//! [`Emulator::subscriber`] creates a browser-side subscription: a fresh
//! P-256 key pair and 16-byte auth secret, and an endpoint on this emulator
//! shaped like the vendor's:
//!
//! | vendor | endpoint |
//! |---|---|
//! | [`EmuVendor::Fcm`] | `https://localhost:PORT/fcm/send/<token>` |
//! | [`EmuVendor::Mozilla`] | `https://localhost:PORT/mozilla/wpush/v2/<token>` |
//! | [`EmuVendor::Apple`] | `https://localhost:PORT/apple/3/device/<token>` |
//! | [`EmuVendor::Wns`] | `https://localhost:PORT/wns/w/?token=<token>` (token contains `%2b`/`%3d` escapes, as real WNS channel URIs do) |
//! | [`EmuVendor::Generic`] | `https://localhost:PORT/push/<token>` (plain RFC 8030 service) |
//!
//! The host is always `localhost`, so the vendor's behaviour is chosen by the
//! path prefix. [`Subscriber::subscription_json`] gives what a browser's
//! `PushSubscription.toJSON()` would. [`Emulator::forget`] drops a subscriber
//! so later pushes get the vendor's "unsubscribed" answer.
//!
//! # What is checked on every POST (verify mode)
//!
//! In this order, the first failure deciding the answer:
//! 1. The path names a vendor and token (else 404), the method is POST (else 405).
//! 2. The token was created by [`Emulator::subscriber`] for that vendor and not
//!    forgotten (else the vendor's unknown-subscription answer: FCM 410,
//!    Mozilla 410 errno 106, Apple 410 `Unregistered`, WNS 404, generic 404).
//! 3. The body is at most 4096 bytes (else 413).
//! 4. `Authorization: vapid t=<jwt>, k=<key>`: ES256 signature valid for `k`,
//!    `aud` equal to the origin, `exp` in the future and at most 24 h ahead,
//!    `sub` a `mailto:` or `https:` URI without spaces or angle brackets (the
//!    pre-RFC `WebPush <jwt>` scheme is refused). For
//!    `aesgcm`, a `p256ecdsa=` in `Crypto-Key`, if present, must equal `k`.
//!    Failure: FCM 403 (400 when the header is missing), Apple 403
//!    `BadJwtToken`, Mozilla 401 errno 109, WNS and generic 401.
//! 5. If [`Emulator::set_expected_vapid_key`] is set, `k` must equal it (else
//!    FCM 403 "the VAPID credentials ... do not correspond ...", Apple 400
//!    `VapidPkHashMismatch`, Mozilla 401 errno 109 "VAPID public key
//!    mismatch", WNS and generic 403).
//! 6. `TTL` present and a non-negative integer (WNS also refuses 0);
//!    `Urgency`, if present, one of the four RFC 8030 values; `Topic`, if
//!    present, at most 32 base64url characters for Apple (400
//!    `BadWebPushTopic`), Mozilla and generic.
//! 7. `Content-Encoding` `aes128gcm` (whole body, one record) or `aesgcm`
//!    (`Encryption: salt=` and `Crypto-Key: dh=`), and the body decrypts with
//!    the subscriber's private key (else 400). An empty body with no
//!    `Content-Encoding` is a valid payload-less push.
//!
//! Success is `201 Created` with an empty body and a `Location` header, plus
//! what the vendor adds (Mozilla echoes `TTL`, Apple sends `apns-id`, WNS
//! sends `X-WNS-Msg-ID` and `X-WNS-Status: received`).
//!
//! # Scripting answers
//!
//! [`Emulator::script`] appends answers to a subscriber's queue; each request
//! to that subscriber takes the next one, and when the queue is empty the
//! normal checks decide. A scripted answer is served even if the request would
//! have failed the checks, but the checks still run and are recorded.
//!
//! ```ignore
//! emu.script(&sub, vec![
//!     Scripted::status(429).retry_after("3"),   // vendor-shaped 429 body
//!     Scripted::status(500),
//!     Scripted::apple_reason(400, "BadWebPushTopic"),
//!     Scripted::body(403, "custom text"),
//!     Scripted::status(503).delay(Duration::from_secs(2)),
//!     Scripted::reset(),                        // no answer: stream/connection reset
//! ]);
//! ```
//!
//! [`Scripted::status`] fills in the body the vendor sends for that status
//! (FCM plain text, Mozilla autopush JSON with errno, Apple `{"reason":..}`,
//! WNS an empty body with `X-WNS-Error-Description`).
//!
//! # Inspecting
//!
//! - [`Emulator::received`] / [`Emulator::received_for`]: every request, in
//!   arrival order, as [`Received`] (decrypted plaintext or the decryption
//!   error, the VAPID claims or why they were refused, the RFC 8030 headers,
//!   the status answered, and the emulator's own verdict in `refusal`).
//! - [`Emulator::wait_for`]`(n, timeout)`: waits (woken by each arrival, no
//!   polling) until at least `n` requests were answered 2xx, and returns those;
//!   panics with a summary of what did arrive on timeout.
//!   [`Emulator::wait_until`] takes any predicate over all requests.
//!
//! # Sink mode (benchmarks)
//!
//! [`Emulator::start_sink`] serves the same TLS/HTTP2 setup but answers every
//! POST `201` with an empty body at once: no routing, verification or
//! decryption. It only counts arrivals ([`Emulator::sink_count`]) and keeps
//! their times ([`Emulator::sink_arrivals`], offsets from start), keeps each
//! token's latest arrival ([`Emulator::sink_arrival_of`],
//! [`Emulator::wait_for_token`]), and [`Emulator::wait_for_count`] waits for a
//! count. Subscribers still work, so
//! the client can encrypt for real keys.

use super::ca::TestCa;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{oneshot, Notify};

/// Largest body real push services accept (RFC 8291 §4 makes 4096 the floor
/// they must accept; FCM, Mozilla and Apple all stop there).
pub const MAX_BODY: usize = 4096;

/// How much body the emulator reads before giving up. Larger than
/// [`MAX_BODY`] so an oversized body is measured and answered 413 rather than
/// cut off mid-stream.
const READ_CAP: usize = 1 << 20;

/// A VAPID token may be valid for at most this long (RFC 8292 §2).
const MAX_JWT_LIFETIME_SECS: i64 = 24 * 3600;

const AUTOPUSH_MORE_INFO: &str = "http://autopush.readthedocs.io/en/latest/http.html#error-codes";

/// Which push service a subscriber's endpoint imitates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EmuVendor {
    Fcm,
    Mozilla,
    Apple,
    Wns,
    /// A plain RFC 8030 push service with no vendor quirks.
    Generic,
}

impl EmuVendor {
    pub const ALL: [EmuVendor; 5] = [
        EmuVendor::Fcm,
        EmuVendor::Mozilla,
        EmuVendor::Apple,
        EmuVendor::Wns,
        EmuVendor::Generic,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EmuVendor::Fcm => "fcm",
            EmuVendor::Mozilla => "mozilla",
            EmuVendor::Apple => "apple",
            EmuVendor::Wns => "wns",
            EmuVendor::Generic => "generic",
        }
    }

    /// First path segment of this vendor's endpoints, also used for `Location`.
    fn path_root(self) -> &'static str {
        match self {
            EmuVendor::Generic => "push",
            other => other.as_str(),
        }
    }
}

/// Whether the emulator checks requests or only counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Route, verify, decrypt and record every request.
    Verify,
    /// Answer 201 to everything, only counting and timestamping arrivals.
    Sink,
}

/// A browser-side subscription created on the emulator.
#[derive(Clone)]
pub struct Subscriber {
    vendor: EmuVendor,
    token: String,
    endpoint: String,
    p256dh: Vec<u8>,
    auth: [u8; 16],
    keys: ece::EcKeyComponents,
}

impl fmt::Debug for Subscriber {
    // The private key is left out so it never lands in test output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber")
            .field("vendor", &self.vendor)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Subscriber {
    /// What `PushSubscription.toJSON()` gives in a browser.
    pub fn subscription_json(&self) -> Value {
        json!({
            "endpoint": self.endpoint,
            "expirationTime": null,
            "keys": { "p256dh": self.p256dh_b64(), "auth": self.auth_b64() },
        })
    }
    pub fn token(&self) -> &str {
        &self.token
    }
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
    pub fn vendor(&self) -> EmuVendor {
        self.vendor
    }
    /// Uncompressed P-256 public key (65 bytes, `0x04 || X || Y`).
    pub fn p256dh(&self) -> &[u8] {
        &self.p256dh
    }
    pub fn auth(&self) -> &[u8; 16] {
        &self.auth
    }
    pub fn p256dh_b64(&self) -> String {
        B64.encode(&self.p256dh)
    }
    pub fn auth_b64(&self) -> String {
        B64.encode(self.auth)
    }
}

/// Claims of a VAPID token that passed verification.
#[derive(Debug, Clone, PartialEq)]
pub struct VapidClaims {
    pub aud: String,
    pub exp: i64,
    pub sub: String,
    /// The `k=` public key exactly as sent (base64url).
    pub k: String,
    /// The whole JWT header and claims, for checks beyond the usual three.
    pub header: Value,
    pub claims: Value,
}

/// One request as the emulator saw it.
#[derive(Debug, Clone)]
pub struct Received {
    /// Arrival order, from 0.
    pub seq: u64,
    /// When the request head arrived.
    pub at: Instant,
    /// `None` when the path matched no vendor.
    pub vendor: Option<EmuVendor>,
    /// The token from the path (or WNS query); empty when the path matched nothing.
    pub token: String,
    pub method: String,
    /// Path and query as sent.
    pub path: String,
    pub http_version: Version,
    pub ttl: Option<String>,
    pub urgency: Option<String>,
    pub topic: Option<String>,
    pub content_encoding: Option<String>,
    pub authorization: Option<String>,
    /// All request headers.
    pub headers: HeaderMap,
    /// The body as received (ciphertext).
    pub body: Bytes,
    /// Decrypted payload; `Some(empty)` for a push without a body.
    pub plaintext: Option<Vec<u8>>,
    /// Why the body could not be decrypted (also set for unknown subscribers).
    pub decrypt_error: Option<String>,
    /// The verified VAPID claims, or why the `Authorization` header was refused.
    pub vapid: Result<VapidClaims, String>,
    /// Status code sent back; 0 when a scripted reset sent none.
    pub status_answered: u16,
    /// True when the answer came from [`Emulator::script`].
    pub scripted: bool,
    /// The emulator's own verdict, `None` when the request passed every check.
    /// Computed even when a scripted answer was served instead.
    pub refusal: Option<String>,
}

impl Received {
    /// Answered 2xx.
    pub fn delivered(&self) -> bool {
        (200..300).contains(&self.status_answered)
    }
    pub fn plaintext_str(&self) -> Option<&str> {
        self.plaintext
            .as_deref()
            .and_then(|p| std::str::from_utf8(p).ok())
    }
}

/// One scripted answer; see the module docs.
#[derive(Debug, Clone)]
pub struct Scripted {
    status: u16,
    /// `None`: the vendor's usual body for `status`.
    body: Option<(String, Bytes)>,
    headers: Vec<(String, String)>,
    delay: Option<Duration>,
    reset: bool,
}

impl Scripted {
    /// Answer `code` with the body and headers the vendor sends for it.
    pub fn status(code: u16) -> Scripted {
        Scripted {
            status: code,
            body: None,
            headers: Vec::new(),
            delay: None,
            reset: false,
        }
    }
    /// A normal success (201 with `Location`), as if unscripted and valid.
    pub fn ok() -> Scripted {
        Scripted::status(201)
    }
    /// Answer `code` with exactly this text body.
    pub fn body(code: u16, text: impl Into<String>) -> Scripted {
        Scripted {
            body: Some(("text/plain; charset=utf-8".into(), Bytes::from(text.into()))),
            ..Scripted::status(code)
        }
    }
    /// Answer `code` with this JSON body.
    pub fn json(code: u16, value: Value) -> Scripted {
        Scripted {
            body: Some(("application/json".into(), Bytes::from(value.to_string()))),
            ..Scripted::status(code)
        }
    }
    /// Apple's error shape: `{"reason": "<reason>"}`.
    pub fn apple_reason(code: u16, reason: &str) -> Scripted {
        Scripted::json(code, json!({ "reason": reason }))
    }
    /// Mozilla autopush's error shape with the given errno and message.
    pub fn mozilla_errno(code: u16, errno: u32, message: &str) -> Scripted {
        Scripted::json(code, autopush_json(code, errno, message))
    }
    /// Send no answer: HTTP/1.1 closes the connection, HTTP/2 resets the
    /// stream. The client sees a transport error.
    pub fn reset() -> Scripted {
        Scripted {
            reset: true,
            ..Scripted::status(0)
        }
    }
    pub fn retry_after(self, value: &str) -> Scripted {
        self.header("Retry-After", value)
    }
    pub fn header(mut self, name: &str, value: &str) -> Scripted {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
    /// Wait this long before answering (to exercise client timeouts).
    pub fn delay(mut self, d: Duration) -> Scripted {
        self.delay = Some(d);
        self
    }
}

/// The push-service emulator. Dropping it (or [`Emulator::shutdown`]) stops
/// the server and closes its connections.
pub struct Emulator {
    shared: Arc<Shared>,
    ca: TestCa,
    ca_file: PathBuf,
    // Holds the CA file; removed when the emulator goes.
    _ca_dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    mode: Mode,
    origin: String,
    started: Instant,
    subscribers: Mutex<HashMap<String, Subscriber>>,
    scripts: Mutex<HashMap<String, VecDeque<Scripted>>>,
    received: Mutex<Vec<Received>>,
    seq: AtomicU64,
    expected_vapid: Mutex<Option<Vec<u8>>>,
    /// Woken on every recorded arrival so waiters need not poll.
    notify: Notify,
    sink_count: AtomicU64,
    /// Nanoseconds since `started`; a plain vector under a lock is cheap next
    /// to a TLS record and keeps the sink allocation-free per request once warm.
    sink_arrivals: Mutex<Vec<u64>>,
    /// Sink mode: each token's latest arrival, nanoseconds since `started`.
    sink_last: Mutex<HashMap<Box<str>, u64>>,
    token_counter: AtomicUsize,
}

impl Emulator {
    /// Start a verifying emulator.
    pub async fn start() -> Emulator {
        Emulator::launch(Mode::Verify)
    }

    /// Start a sink for benchmarks: same TLS and HTTP/2, no checks.
    pub async fn start_sink() -> Emulator {
        Emulator::launch(Mode::Sink)
    }

    /// Start in the given mode; usable from synchronous code (the server runs
    /// on its own thread and runtime either way).
    pub fn launch(mode: Mode) -> Emulator {
        let ca = TestCa::new();
        let leaf = ca.issue_server_cert(&["localhost", "127.0.0.1"]);
        // Explicit provider: the test process links both ring (via reqwest)
        // and aws-lc-rs, so rustls cannot pick a process default on its own.
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(leaf.chain, leaf.key)
            .expect("server certificate");
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

        // Bound here, not on the server thread, so the port is known (and
        // already accepting into the backlog) when launch returns.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind emulator");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let port = listener.local_addr().expect("local addr").port();

        let ca_dir = tempfile::tempdir().expect("temp dir for CA");
        let ca_file = ca.write_pem(ca_dir.path());

        let shared = Arc::new(Shared {
            mode,
            origin: format!("https://localhost:{port}"),
            started: Instant::now(),
            subscribers: Mutex::new(HashMap::new()),
            scripts: Mutex::new(HashMap::new()),
            received: Mutex::new(Vec::new()),
            seq: AtomicU64::new(0),
            expected_vapid: Mutex::new(None),
            notify: Notify::new(),
            sink_count: AtomicU64::new(0),
            sink_arrivals: Mutex::new(Vec::with_capacity(if mode == Mode::Sink {
                1 << 16
            } else {
                0
            })),
            sink_last: Mutex::new(HashMap::new()),
            token_counter: AtomicUsize::new(0),
        });

        let (stop_tx, stop_rx) = oneshot::channel();
        let server_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("push-emulator-{port}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("emulator runtime");
                rt.block_on(serve(listener, acceptor, server_shared, stop_rx));
                // Dropping the runtime here cancels every connection task, so
                // clients see the server go away when the emulator is dropped.
                drop(rt);
            })
            .expect("spawn emulator thread");

        Emulator {
            shared,
            ca,
            ca_file,
            _ca_dir: ca_dir,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn mode(&self) -> Mode {
        self.shared.mode
    }
    pub fn port(&self) -> u16 {
        self.shared
            .origin
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port in origin")
    }
    /// `https://localhost:PORT`: the VAPID audience for every endpoint here.
    pub fn origin(&self) -> &str {
        &self.shared.origin
    }
    /// The host to add to a push-service allow-list.
    pub fn allowed_host(&self) -> String {
        "localhost".to_string()
    }
    pub fn ca_pem(&self) -> &str {
        &self.ca.cert_pem
    }
    /// The CA certificate as a PEM file, valid while the emulator lives.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }
    pub fn ca(&self) -> &TestCa {
        &self.ca
    }

    /// A reqwest builder that trusts this emulator's CA and no other root.
    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        let cert = reqwest::Certificate::from_pem(self.ca.cert_pem.as_bytes()).expect("CA PEM");
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(cert)
    }

    /// Create a subscriber whose endpoint imitates `vendor` on this emulator.
    pub fn subscriber(&self, vendor: EmuVendor) -> Subscriber {
        let (key_pair, auth) = ece::generate_keypair_and_auth_secret().expect("subscriber keys");
        let keys = key_pair.raw_components().expect("raw key components");
        let p256dh = key_pair.pub_as_raw().expect("raw public key");
        let n = self.shared.token_counter.fetch_add(1, Ordering::Relaxed);
        let token = make_token(vendor, n);
        let origin = &self.shared.origin;
        let endpoint = match vendor {
            EmuVendor::Fcm => format!("{origin}/fcm/send/{token}"),
            EmuVendor::Mozilla => format!("{origin}/mozilla/wpush/v2/{token}"),
            EmuVendor::Apple => format!("{origin}/apple/3/device/{token}"),
            EmuVendor::Wns => format!("{origin}/wns/w/?token={token}"),
            EmuVendor::Generic => format!("{origin}/push/{token}"),
        };
        let sub = Subscriber {
            vendor,
            token: token.clone(),
            endpoint,
            p256dh,
            auth,
            keys,
        };
        self.shared
            .subscribers
            .lock()
            .unwrap()
            .insert(token, sub.clone());
        sub
    }

    /// Forget a subscriber, as when the browser unsubscribes: later pushes get
    /// the vendor's unknown-subscription answer.
    pub fn forget(&self, sub: &Subscriber) {
        self.shared.subscribers.lock().unwrap().remove(&sub.token);
    }

    /// Queue answers for this subscriber, after any already queued.
    pub fn script(&self, sub: &Subscriber, responses: Vec<Scripted>) {
        self.shared
            .scripts
            .lock()
            .unwrap()
            .entry(sub.token.clone())
            .or_default()
            .extend(responses);
    }

    /// Drop this subscriber's queued answers that were not used yet.
    pub fn clear_script(&self, sub: &Subscriber) {
        self.shared.scripts.lock().unwrap().remove(&sub.token);
    }

    /// When set, a VAPID `k` different from this key (base64url) gets the
    /// vendor's key-mismatch answer, as for a subscription created with
    /// another application server key.
    pub fn set_expected_vapid_key(&self, b64_pubkey: Option<String>) {
        let decoded = b64_pubkey.map(|k| {
            B64.decode(k.trim_end_matches('='))
                .expect("expected VAPID key must be base64url")
        });
        *self.shared.expected_vapid.lock().unwrap() = decoded;
    }

    /// Every request so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    pub fn received_for(&self, sub: &Subscriber) -> Vec<Received> {
        self.shared
            .received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.token == sub.token)
            .cloned()
            .collect()
    }

    /// Forget what was received (scripts and subscribers stay).
    pub fn clear_received(&self) {
        self.shared.received.lock().unwrap().clear();
    }

    /// Wait until at least `n` requests were answered 2xx and return those,
    /// in order. Panics on timeout, listing what did arrive.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        match self.wait_until(timeout, |all| all.iter().filter(|r| r.delivered()).count() >= n).await {
            Ok(all) => all.into_iter().filter(|r| r.delivered()).collect(),
            Err(all) => panic!(
                "push emulator: expected {n} delivered pushes within {timeout:?}, got {}; received:\n{}",
                all.iter().filter(|r| r.delivered()).count(),
                summary(&all)
            ),
        }
    }

    /// Wait until `pred` holds over everything received; `Ok(all)` when it
    /// does, `Err(all)` on timeout. Re-checked on each arrival, not polled.
    pub async fn wait_until<F>(
        &self,
        timeout: Duration,
        pred: F,
    ) -> Result<Vec<Received>, Vec<Received>>
    where
        F: Fn(&[Received]) -> bool,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Register interest before looking, so an arrival between the
            // check and the await still wakes us.
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let all = self.shared.received.lock().unwrap();
                if pred(&all) {
                    return Ok(all.clone());
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let all = self.shared.received.lock().unwrap().clone();
                return if pred(&all) { Ok(all) } else { Err(all) };
            }
        }
    }

    /// Sink mode: requests answered so far.
    pub fn sink_count(&self) -> u64 {
        self.shared.sink_count.load(Ordering::Relaxed)
    }

    /// Sink mode: arrival times as offsets from [`Emulator::started_at`].
    pub fn sink_arrivals(&self) -> Vec<Duration> {
        self.shared
            .sink_arrivals
            .lock()
            .unwrap()
            .iter()
            .map(|&n| Duration::from_nanos(n))
            .collect()
    }

    /// Sink mode: when a request for `token` (an endpoint's last path segment,
    /// or its `token=` query value) last arrived, as an offset from
    /// [`Emulator::started_at`].
    pub fn sink_arrival_of(&self, token: &str) -> Option<Duration> {
        self.shared
            .sink_last
            .lock()
            .unwrap()
            .get(token)
            .map(|&n| Duration::from_nanos(n))
    }

    /// Sink mode: wait until a request for `token` arrives later than `after`
    /// (an offset from [`Emulator::started_at`]); returns its arrival offset,
    /// or `None` on timeout.
    pub async fn wait_for_token(
        &self,
        token: &str,
        after: Duration,
        timeout: Duration,
    ) -> Option<Duration> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.sink_arrival_of(token) {
                Some(at) if at > after => return Some(at),
                _ => {}
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.sink_arrival_of(token).filter(|&at| at > after);
            }
        }
    }

    /// When the emulator started; the zero point of [`Emulator::sink_arrivals`].
    pub fn started_at(&self) -> Instant {
        self.shared.started
    }

    /// Sink mode: wait until `n` requests arrived; returns the count reached.
    /// Panics on timeout.
    pub async fn wait_for_count(&self, n: u64, timeout: Duration) -> u64 {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let count = self.sink_count();
            if count >= n {
                return count;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let count = self.sink_count();
                assert!(
                    count >= n,
                    "push sink: expected {n} arrivals within {timeout:?}, got {count}"
                );
                return count;
            }
        }
    }

    /// Stop the server and wait for its thread.
    pub fn shutdown(self) {
        drop(self)
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Tokens shaped like each vendor's, so the client meets realistic URLs
/// (FCM's colon, WNS's percent-escapes in a query string).
fn make_token(vendor: EmuVendor, n: usize) -> String {
    let r = |len: usize| {
        let mut bytes = vec![0u8; len];
        aws_lc_rs::rand::fill(&mut bytes).expect("random");
        B64.encode(bytes)
    };
    match vendor {
        EmuVendor::Fcm => format!("{}:APA91b{}", r(8), r(30)),
        EmuVendor::Mozilla => format!("gAAAAAB{}", r(48)),
        EmuVendor::Apple => format!("{}{n}", r(24)),
        EmuVendor::Wns => format!("AwYAAAB{}%2b{}%3d", r(24), r(12)),
        EmuVendor::Generic => format!("{}{n}", r(16)),
    }
}

async fn serve(
    listener: std::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
                let (tcp, _) = match accepted {
                    Ok(pair) => pair,
                    Err(_) => {
                        // Usually fd exhaustion; back off instead of spinning.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let shared = shared.clone();
                let builder = builder.clone();
                tokio::spawn(async move {
                    let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => tls,
                        _ => return,
                    };
                    let service = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move {
                            match shared.mode {
                                Mode::Sink => handle_sink(&shared, req).await,
                                Mode::Verify => handle(&shared, req).await,
                            }
                        }
                    });
                    let _ = builder.serve_connection(TokioIo::new(tls), service).await;
                });
            }
        }
    }
}

/// The subscriber token a sink request is for: the `token=` query value (WNS
/// shape), else the last path segment.
fn sink_token(uri: &hyper::Uri) -> &str {
    if let Some(t) = uri
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")))
    {
        return t;
    }
    uri.path().rsplit('/').next().unwrap_or("")
}

/// Returned by the service to make hyper drop the exchange without an answer.
#[derive(Debug)]
struct Reset;
impl fmt::Display for Reset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("scripted reset")
    }
}
impl std::error::Error for Reset {}

async fn handle_sink(
    shared: &Shared,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Reset> {
    let at = shared.started.elapsed().as_nanos() as u64;
    let uri = req.uri().clone();
    // Drain the body: an unread body stops HTTP/1.1 from reusing the connection.
    let _ = req.into_body().collect().await;
    shared.sink_arrivals.lock().unwrap().push(at);
    {
        let token = sink_token(&uri);
        let mut last = shared.sink_last.lock().unwrap();
        match last.get_mut(token) {
            Some(t) => *t = at,
            None => {
                last.insert(token.into(), at);
            }
        }
    }
    shared.sink_count.fetch_add(1, Ordering::Relaxed);
    shared.notify.notify_waiters();
    Ok(Response::builder()
        .status(201)
        .body(Full::new(Bytes::new()))
        .unwrap())
}

/// Why the emulator refuses a request; rendered per vendor by [`refusal_answer`].
#[derive(Debug)]
enum Problem {
    UnknownPath,
    Method,
    UnknownSubscription,
    TooLarge(usize),
    MissingAuth,
    BadJwt(String),
    KeyMismatch,
    MissingTtl,
    BadTtl(String),
    BadUrgency(String),
    BadTopic(String),
    BadEncoding(String),
    Decrypt(String),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::UnknownPath => write!(f, "path matches no vendor endpoint"),
            Problem::Method => write!(f, "method is not POST"),
            Problem::UnknownSubscription => write!(f, "unknown or unsubscribed token"),
            Problem::TooLarge(n) => write!(f, "body is {n} bytes, more than {MAX_BODY}"),
            Problem::MissingAuth => write!(f, "no Authorization header"),
            Problem::BadJwt(why) => write!(f, "VAPID refused: {why}"),
            Problem::KeyMismatch => write!(f, "VAPID key differs from the subscription's"),
            Problem::MissingTtl => write!(f, "no TTL header"),
            Problem::BadTtl(v) => write!(f, "invalid TTL {v:?}"),
            Problem::BadUrgency(v) => write!(f, "invalid Urgency {v:?}"),
            Problem::BadTopic(v) => write!(f, "invalid Topic {v:?}"),
            Problem::BadEncoding(why) => write!(f, "bad content encoding: {why}"),
            Problem::Decrypt(why) => write!(f, "body does not decrypt: {why}"),
        }
    }
}

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Bytes,
}

impl Answer {
    fn new(status: u16) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }
    fn with(mut self, name: &str, value: impl Into<String>) -> Answer {
        self.headers.push((name.to_string(), value.into()));
        self
    }
    fn text(status: u16, text: &str) -> Answer {
        Answer {
            body: Bytes::from(format!("{text}\n")),
            ..Answer::new(status)
        }
        .with("content-type", "text/plain; charset=utf-8")
    }
    fn json(status: u16, value: Value) -> Answer {
        Answer {
            body: Bytes::from(value.to_string()),
            ..Answer::new(status)
        }
        .with("content-type", "application/json")
    }
    fn into_response(self) -> Response<Full<Bytes>> {
        let mut builder = Response::builder().status(self.status);
        for (name, value) in &self.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        builder
            .body(Full::new(self.body))
            .expect("valid emulator response")
    }
}

async fn handle(shared: &Shared, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Reset> {
    let at = Instant::now();
    let seq = shared.seq.fetch_add(1, Ordering::Relaxed);
    let (parts, body) = req.into_parts();
    let route = route(&parts.uri);
    let (vendor, token) = match &route {
        Some((v, t)) => (Some(*v), t.clone()),
        None => (None, String::new()),
    };
    let body = match Limited::new(body, READ_CAP).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => Err(e.to_string()),
    };
    let body_len = body.as_ref().map(|b| b.len()).unwrap_or(READ_CAP + 1);
    let body = body.unwrap_or_default();

    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let ttl = header("ttl");
    let urgency = header("urgency");
    let topic = header("topic");
    let content_encoding = header("content-encoding");
    let authorization = header("authorization");
    let crypto_key = header("crypto-key");
    let encryption = header("encryption");

    let subscriber = route.as_ref().and_then(|(v, t)| {
        shared
            .subscribers
            .lock()
            .unwrap()
            .get(t)
            .filter(|s| s.vendor == *v)
            .cloned()
    });

    let now = unix_now();
    let mut vapid = match &authorization {
        Some(auth) => verify_vapid(auth, &shared.origin, now),
        None => Err("no Authorization header".to_string()),
    };
    // aesgcm senders repeat the VAPID key in Crypto-Key; a different one there
    // is a sender bug that FCM refuses.
    if let (Ok(claims), Some(ck)) = (&vapid, &crypto_key) {
        if let Some(p256ecdsa) = header_param(ck, "p256ecdsa") {
            if p256ecdsa != claims.k {
                vapid = Err(format!(
                    "Crypto-Key p256ecdsa={p256ecdsa} differs from Authorization k={}",
                    claims.k
                ));
            }
        }
    }

    let decrypted: Result<Vec<u8>, String> = match &subscriber {
        None => Err("no such subscriber".into()),
        Some(sub) => decrypt(
            sub,
            content_encoding.as_deref(),
            encryption.as_deref(),
            crypto_key.as_deref(),
            &body,
        ),
    };

    let problem = (|| {
        let vendor = vendor.ok_or(Problem::UnknownPath)?;
        if parts.method != hyper::Method::POST {
            return Err(Problem::Method);
        }
        if subscriber.is_none() {
            return Err(Problem::UnknownSubscription);
        }
        if body_len > MAX_BODY {
            return Err(Problem::TooLarge(body_len));
        }
        let claims = match (&authorization, &vapid) {
            (None, _) => return Err(Problem::MissingAuth),
            (Some(_), Err(why)) => return Err(Problem::BadJwt(why.clone())),
            (Some(_), Ok(claims)) => claims,
        };
        if let Some(expected) = shared.expected_vapid.lock().unwrap().as_ref() {
            if B64.decode(&claims.k).ok().as_ref() != Some(expected) {
                return Err(Problem::KeyMismatch);
            }
        }
        match ttl.as_deref() {
            None => return Err(Problem::MissingTtl),
            Some(v)
                if v.is_empty()
                    || !v.bytes().all(|b| b.is_ascii_digit())
                    || v.parse::<u64>().is_err() =>
            {
                return Err(Problem::BadTtl(v.to_string()))
            }
            Some("0") if vendor == EmuVendor::Wns => return Err(Problem::BadTtl("0".into())),
            Some(_) => {}
        }
        if let Some(u) = &urgency {
            if !matches!(u.as_str(), "very-low" | "low" | "normal" | "high") {
                return Err(Problem::BadUrgency(u.clone()));
            }
        }
        if let Some(t) = &topic {
            let strict = matches!(
                vendor,
                EmuVendor::Apple | EmuVendor::Mozilla | EmuVendor::Generic
            );
            let valid = !t.is_empty()
                && t.len() <= 32
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if strict && !valid {
                return Err(Problem::BadTopic(t.clone()));
            }
        }
        if let Err(why) = &decrypted {
            return Err(match content_encoding.as_deref() {
                Some("aes128gcm") | Some("aesgcm") => Problem::Decrypt(why.clone()),
                None if body.is_empty() => Problem::Decrypt(why.clone()),
                _ => Problem::BadEncoding(why.clone()),
            });
        }
        Ok(vendor)
    })();

    let script = subscriber.as_ref().and_then(|s| {
        shared
            .scripts
            .lock()
            .unwrap()
            .get_mut(&s.token)?
            .pop_front()
    });

    let refusal = problem.as_ref().err().map(|p| p.to_string());
    let (answer, scripted, reset) = match script {
        Some(s) => {
            if let Some(d) = s.delay {
                tokio::time::sleep(d).await;
            }
            let v = vendor.expect("scripted subscriber has a vendor");
            if s.reset {
                (None, true, true)
            } else {
                (
                    Some(scripted_answer(shared, v, &s, seq, ttl.as_deref())),
                    true,
                    false,
                )
            }
        }
        None => {
            let answer = match &problem {
                Ok(v) => success(shared, *v, 201, seq, ttl.as_deref()),
                Err(p) => refusal_answer(vendor, p),
            };
            (Some(answer), false, false)
        }
    };

    let (plaintext, decrypt_error) = match decrypted {
        Ok(p) => (Some(p), None),
        Err(e) => (None, Some(e)),
    };
    let record = Received {
        seq,
        at,
        vendor,
        token,
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        http_version: parts.version,
        ttl,
        urgency,
        topic,
        content_encoding,
        authorization,
        headers: parts.headers.clone(),
        body,
        plaintext,
        decrypt_error,
        vapid,
        status_answered: answer.as_ref().map(|a| a.status).unwrap_or(0),
        scripted,
        refusal,
    };
    shared.received.lock().unwrap().push(record);
    shared.notify.notify_waiters();

    if reset {
        return Err(Reset);
    }
    Ok(answer.expect("answer unless reset").into_response())
}

/// Vendor and token from a request path, by the prefixes in the module docs.
fn route(uri: &hyper::Uri) -> Option<(EmuVendor, String)> {
    let path = uri.path();
    let tail = |prefix: &str| {
        path.strip_prefix(prefix)
            .filter(|t| !t.is_empty() && !t.contains('/'))
            .map(str::to_owned)
    };
    if let Some(t) = tail("/fcm/send/") {
        return Some((EmuVendor::Fcm, t));
    }
    if let Some(t) = tail("/mozilla/wpush/v2/") {
        return Some((EmuVendor::Mozilla, t));
    }
    if let Some(t) = tail("/apple/3/device/") {
        return Some((EmuVendor::Apple, t));
    }
    if let Some(t) = tail("/push/") {
        return Some((EmuVendor::Generic, t));
    }
    if path == "/wns/w/" || path == "/wns/w" {
        // Compared raw (still percent-encoded): a client that decodes and
        // re-encodes the channel URI differently addresses another channel.
        let token = uri
            .query()?
            .split('&')
            .find_map(|kv| kv.strip_prefix("token="))?;
        return (!token.is_empty()).then(|| (EmuVendor::Wns, token.to_string()));
    }
    None
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// Check an RFC 8292 `Authorization: vapid t=..., k=...` header.
fn verify_vapid(header: &str, origin: &str, now: i64) -> Result<VapidClaims, String> {
    let header = header.trim();
    let (scheme, params) = header
        .split_once(' ')
        .ok_or("Authorization has no parameters")?;
    if !scheme.eq_ignore_ascii_case("vapid") {
        return Err(format!(
            "Authorization scheme is {scheme:?}, expected \"vapid\" (RFC 8292)"
        ));
    }
    let mut t = None;
    let mut k = None;
    for param in params.split(',') {
        let (name, value) = param
            .trim()
            .split_once('=')
            .ok_or_else(|| format!("malformed parameter {param:?}"))?;
        match name.trim().to_ascii_lowercase().as_str() {
            "t" => t = Some(value.trim()),
            "k" => k = Some(value.trim()),
            _ => {}
        }
    }
    let t = t.ok_or("no t= (token) parameter")?;
    let k = k.ok_or("no k= (public key) parameter")?;
    let key = B64
        .decode(k)
        .map_err(|e| format!("k is not unpadded base64url: {e}"))?;
    if key.len() != 65 || key[0] != 0x04 {
        return Err(format!(
            "k is {} bytes, expected a 65-byte uncompressed P-256 point",
            key.len()
        ));
    }

    let mut parts = t.split('.');
    let (h64, c64, s64) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(c), Some(s), None) => (h, c, s),
        _ => return Err("token is not a three-part JWS".into()),
    };
    let jwt_header: Value = B64
        .decode(h64)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("JWT header is not base64url JSON")?;
    if jwt_header.get("alg").and_then(Value::as_str) != Some("ES256") {
        return Err(format!(
            "JWT alg is {}, expected ES256",
            jwt_header.get("alg").unwrap_or(&Value::Null)
        ));
    }
    if let Some(typ) = jwt_header.get("typ") {
        if !typ.as_str().is_some_and(|t| t.eq_ignore_ascii_case("JWT")) {
            return Err(format!("JWT typ is {typ}, expected JWT"));
        }
    }
    let signature = B64
        .decode(s64)
        .map_err(|e| format!("JWT signature is not base64url: {e}"))?;
    if signature.len() != 64 {
        return Err(format!(
            "JWT signature is {} bytes, expected 64 (JOSE r||s)",
            signature.len()
        ));
    }
    let signed = &t[..h64.len() + 1 + c64.len()];
    aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
        &key,
    )
    .verify(signed.as_bytes(), &signature)
    .map_err(|_| "JWT signature does not verify against k".to_string())?;

    let claims: Value = B64
        .decode(c64)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("JWT claims are not base64url JSON")?;
    let aud = claims
        .get("aud")
        .and_then(Value::as_str)
        .ok_or("JWT has no aud string")?;
    if aud != origin {
        return Err(format!(
            "aud is {aud:?}, expected the push service origin {origin:?}"
        ));
    }
    let exp = claims
        .get("exp")
        .and_then(Value::as_i64)
        .ok_or("JWT has no integer exp")?;
    if exp <= now {
        return Err(format!("exp {exp} is not in the future (now {now})"));
    }
    if exp > now + MAX_JWT_LIFETIME_SECS {
        return Err(format!("exp {exp} is more than 24 h ahead (now {now})"));
    }
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .ok_or("JWT has no sub string")?;
    // Apple refuses "mailto: <a@b>" style subjects; a URI has neither anyway.
    let sub_ok = (sub.starts_with("mailto:") && sub.len() > 7
        || sub.starts_with("https:") && sub.len() > 8)
        && !sub.contains(|c: char| c.is_whitespace() || c == '<' || c == '>');
    if !sub_ok {
        return Err(format!("sub {sub:?} is not a mailto: or https: URI"));
    }
    Ok(VapidClaims {
        aud: aud.into(),
        exp,
        sub: sub.into(),
        k: k.into(),
        header: jwt_header,
        claims,
    })
}

/// A named parameter from a header like `Crypto-Key: dh=..; p256ecdsa=..`
/// (parameters separated by `;` or `,`).
fn header_param(header: &str, name: &str) -> Option<String> {
    header.split([',', ';']).find_map(|p| {
        let (n, v) = p.trim().split_once('=')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().trim_matches('"').to_string())
    })
}

fn decrypt(
    sub: &Subscriber,
    encoding: Option<&str>,
    encryption: Option<&str>,
    crypto_key: Option<&str>,
    body: &[u8],
) -> Result<Vec<u8>, String> {
    match encoding {
        None if body.is_empty() => Ok(Vec::new()),
        None => Err("body without Content-Encoding".into()),
        Some("aes128gcm") => {
            // RFC 8291 §4: exactly one record, and the key id is the sender's
            // 65-byte public key. ece accepts several records, so check here.
            if body.len() < 21 {
                return Err("aes128gcm body shorter than its header".into());
            }
            let rs = u32::from_be_bytes([body[16], body[17], body[18], body[19]]) as usize;
            let idlen = body[20] as usize;
            if idlen != 65 {
                return Err(format!("aes128gcm keyid is {idlen} bytes, expected 65"));
            }
            let records = body.len().saturating_sub(21 + idlen);
            if records > rs {
                return Err(format!(
                    "aes128gcm body has more than one record (rs {rs}, {records} bytes)"
                ));
            }
            ece::decrypt(&sub.keys, &sub.auth, body).map_err(|e| format!("aes128gcm: {e}"))
        }
        Some("aesgcm") => {
            let salt = encryption
                .and_then(|h| header_param(h, "salt"))
                .ok_or("aesgcm without Encryption salt=")?;
            let dh = crypto_key
                .and_then(|h| header_param(h, "dh"))
                .ok_or("aesgcm without Crypto-Key dh=")?;
            let rs = match encryption.and_then(|h| header_param(h, "rs")) {
                Some(rs) => rs
                    .parse::<u32>()
                    .map_err(|_| format!("aesgcm rs={rs} is not a number"))?,
                None => 4096,
            };
            let salt = B64
                .decode(salt)
                .map_err(|e| format!("aesgcm salt is not base64url: {e}"))?;
            let dh = B64
                .decode(dh)
                .map_err(|e| format!("aesgcm dh is not base64url: {e}"))?;
            let block = ece::legacy::AesGcmEncryptedBlock::new(&dh, &salt, rs, body.to_vec())
                .map_err(|e| format!("aesgcm: {e}"))?;
            ece::legacy::decrypt_aesgcm(&sub.keys, &sub.auth, &block)
                .map_err(|e| format!("aesgcm: {e}"))
        }
        Some(other) => Err(format!(
            "Content-Encoding {other:?} is neither aes128gcm nor aesgcm"
        )),
    }
}

/// The success answer, with what each vendor adds to it.
fn success(shared: &Shared, vendor: EmuVendor, status: u16, seq: u64, ttl: Option<&str>) -> Answer {
    let location = format!("{}/{}/m/{seq}", shared.origin, vendor.path_root());
    let answer = Answer::new(status).with("location", location);
    match vendor {
        EmuVendor::Mozilla => match ttl {
            Some(ttl) => answer.with("ttl", ttl),
            None => answer,
        },
        EmuVendor::Apple => answer.with("apns-id", uuid::Uuid::new_v4().to_string().to_uppercase()),
        EmuVendor::Wns => answer
            .with("x-wns-msg-id", format!("{seq:016X}"))
            .with("x-wns-status", "received"),
        EmuVendor::Fcm | EmuVendor::Generic => answer,
    }
}

fn scripted_answer(
    shared: &Shared,
    vendor: EmuVendor,
    s: &Scripted,
    seq: u64,
    ttl: Option<&str>,
) -> Answer {
    let mut answer = match &s.body {
        Some((content_type, body)) => Answer {
            body: body.clone(),
            ..Answer::new(s.status)
        }
        .with("content-type", content_type.clone()),
        None if (200..300).contains(&s.status) => success(shared, vendor, s.status, seq, ttl),
        None => canned(vendor, s.status),
    };
    answer.headers.extend(s.headers.iter().cloned());
    answer
}

fn autopush_json(code: u16, errno: u32, message: &str) -> Value {
    json!({
        "code": code,
        "errno": errno,
        "error": reason_phrase(code),
        "message": message,
        "more_info": AUTOPUSH_MORE_INFO,
    })
}

fn reason_phrase(code: u16) -> &'static str {
    StatusCode::from_u16(code)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Unknown")
}

fn apple(code: u16, reason: &str) -> Answer {
    let body = if code == 410 {
        // Apple adds when the token stopped being valid, in ms.
        json!({ "reason": reason, "timestamp": unix_now() * 1000 })
    } else {
        json!({ "reason": reason })
    };
    Answer::json(code, body).with("apns-id", uuid::Uuid::new_v4().to_string().to_uppercase())
}

fn wns(code: u16, description: &str) -> Answer {
    Answer::new(code)
        .with("x-wns-error-description", description)
        .with("x-wns-msg-id", "0000000000000000")
}

/// The body and headers a vendor sends for a bare status code.
fn canned(vendor: EmuVendor, code: u16) -> Answer {
    match vendor {
        EmuVendor::Fcm => Answer::text(
            code,
            match code {
                400 => "UnauthorizedRegistration",
                401 => "UnauthorizedRegistration",
                403 => "permission denied: invalid JWT provided",
                404 => "Requested entity was not found.",
                410 => "push subscription has unsubscribed or expired.",
                413 => "Request payload exceeds the maximum size of 4096 bytes.",
                429 => "Quota exceeded for quota metric 'Messages' and limit 'Messages per minute'.",
                500 => "Internal error encountered.",
                503 => "The service is currently unavailable.",
                other => reason_phrase(other),
            },
        ),
        EmuVendor::Mozilla => {
            let (errno, message) = match code {
                400 => (111, "Request did not validate: missing or invalid header"),
                401 => (109, "Request did not validate Invalid Authorization Header"),
                404 => (102, "Request did not validate invalid token"),
                410 => (106, "Request did not validate UAID not found"),
                413 => (104, "This message is intended for a constrained device and is limited in size."),
                503 => (201, "Service Unavailable: use exponential back-off for retries"),
                _ => (999, reason_phrase(code)),
            };
            Answer::json(code, autopush_json(code, errno, message))
        }
        EmuVendor::Apple => {
            let reason = match code {
                400 => "BadRequest".to_string(),
                403 => "BadJwtToken".to_string(),
                404 => "BadPath".to_string(),
                405 => "MethodNotAllowed".to_string(),
                410 => "Unregistered".to_string(),
                413 => "PayloadTooLarge".to_string(),
                429 => "TooManyRequests".to_string(),
                500 => "InternalServerError".to_string(),
                503 => "ServiceUnavailable".to_string(),
                other => reason_phrase(other).replace(' ', ""),
            };
            apple(code, &reason)
        }
        EmuVendor::Wns => wns(
            code,
            match code {
                400 => "One or more headers were specified incorrectly or conflict with another header.",
                401 => "The cloud service did not present a valid authentication ticket.",
                403 => "The cloud service is not authorized to send a notification to this URI.",
                404 => "The channel URI is not valid or is not recognized by WNS.",
                406 => "The cloud service exceeded its throttle limit.",
                410 => "The channel expired.",
                413 => "The notification payload exceeds the size limit.",
                500 => "An internal failure caused notification delivery to fail.",
                503 => "The server is currently unavailable.",
                other => reason_phrase(other),
            },
        ),
        EmuVendor::Generic => Answer::text(code, reason_phrase(code)),
    }
}

/// How each vendor refuses a request that failed a check.
fn refusal_answer(vendor: Option<EmuVendor>, problem: &Problem) -> Answer {
    use Problem::*;
    let Some(vendor) = vendor else {
        return Answer::text(404, "Not Found");
    };
    let detail = problem.to_string();
    match vendor {
        EmuVendor::Fcm => match problem {
            UnknownPath | Method => canned(vendor, if matches!(problem, Method) { 405 } else { 404 }),
            UnknownSubscription => canned(vendor, 410),
            TooLarge(_) => canned(vendor, 413),
            MissingAuth => canned(vendor, 400),
            BadJwt(_) => canned(vendor, 403),
            KeyMismatch => Answer::text(
                403,
                "the VAPID credentials in the authorization header do not correspond to the credentials used to create the subscriptions.",
            ),
            MissingTtl | BadTtl(_) | BadUrgency(_) | BadTopic(_) | BadEncoding(_) | Decrypt(_) => {
                Answer::text(400, &detail)
            }
        },
        EmuVendor::Mozilla => {
            let (code, errno, message) = match problem {
                UnknownPath => (404, 102, "Request did not validate invalid token".to_string()),
                Method => (405, 999, "Method Not Allowed".to_string()),
                UnknownSubscription => (410, 106, "Request did not validate UAID not found".to_string()),
                TooLarge(n) => (
                    413,
                    104,
                    format!(
                        "This message is intended for a constrained device and is limited in size. Converted buffer is too long by {} bytes",
                        n - MAX_BODY
                    ),
                ),
                MissingAuth | BadJwt(_) => (401, 109, format!("Request did not validate Invalid Authorization Header: {detail}")),
                KeyMismatch => (401, 109, "VAPID public key mismatch".to_string()),
                MissingTtl => (400, 111, "Missing TTL header".to_string()),
                BadTtl(_) | BadUrgency(_) => (400, 112, detail),
                BadTopic(_) => (400, 113, "Topic must be no greater than 32 characters and use the URL and filename safe Base64 alphabet".to_string()),
                BadEncoding(_) | Decrypt(_) => (400, 110, format!("Invalid crypto headers: {detail}")),
            };
            Answer::json(code, autopush_json(code, errno, &message))
        }
        EmuVendor::Apple => match problem {
            UnknownPath => apple(404, "BadPath"),
            Method => apple(405, "MethodNotAllowed"),
            UnknownSubscription => apple(410, "Unregistered"),
            TooLarge(_) => apple(413, "PayloadTooLarge"),
            MissingAuth | BadJwt(_) => apple(403, "BadJwtToken"),
            KeyMismatch => apple(400, "VapidPkHashMismatch"),
            MissingTtl | BadTtl(_) => apple(400, "BadExpirationDate"),
            BadUrgency(_) => apple(400, "BadPriority"),
            BadTopic(_) => apple(400, "BadWebPushTopic"),
            BadEncoding(_) | Decrypt(_) => apple(400, "BadRequest"),
        },
        EmuVendor::Wns => match problem {
            UnknownPath | UnknownSubscription => canned(vendor, 404),
            Method => wns(405, "Method Not Allowed"),
            TooLarge(_) => canned(vendor, 413),
            MissingAuth | BadJwt(_) => canned(vendor, 401),
            KeyMismatch => canned(vendor, 403),
            _ => wns(400, &detail),
        },
        EmuVendor::Generic => match problem {
            UnknownPath | UnknownSubscription => Answer::text(404, "Not Found"),
            Method => Answer::text(405, "Method Not Allowed"),
            TooLarge(_) => Answer::text(413, &detail),
            MissingAuth | BadJwt(_) => Answer::text(401, &detail),
            KeyMismatch => Answer::text(403, &detail),
            _ => Answer::text(400, &detail),
        },
    }
}

/// One line per request, for timeout panics.
fn summary(all: &[Received]) -> String {
    if all.is_empty() {
        return "  (nothing)".into();
    }
    all.iter()
        .map(|r| {
            format!(
                "  #{} {} {} -> {}{}{}",
                r.seq,
                r.method,
                r.path,
                r.status_answered,
                if r.scripted { " (scripted)" } else { "" },
                r.refusal
                    .as_ref()
                    .map(|p| format!(" refused: {p}"))
                    .unwrap_or_default(),
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
