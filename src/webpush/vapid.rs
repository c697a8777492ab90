//! RFC 8292 VAPID: the `Authorization: vapid t=<JWT>, k=<public key>` header
//! that identifies the application server to the push service.
//!
//! Invariants:
//! - The JWT is ES256 (JWS compact, fixed-width `r ‖ s` signature) with
//!   claims `aud` = the endpoint's origin, `exp` = issue time + 12 h (never
//!   more: push services refuse tokens valid for over 24 h, and some clocks
//!   are skewed), and `sub` = the contact when one is configured.
//! - [`VapidSigner`] caches the header per audience and reuses it until
//!   [`REFRESH_MARGIN`] before it expires, so a burst to one push service signs
//!   once. A cached header is never handed out with less than the margin left,
//!   which covers queueing delay, retries and clock skew.
//! - Cache hits take a read lock and clone an `Arc`; only misses write.
//!
//! [`Contact`] is validated up front because Apple refuses tokens whose `sub`
//! is not a reachable address (`BadJwtToken`), which would otherwise surface
//! only as failed deliveries.
use super::{keys::VapidKey, subscription::Endpoint};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// Lifetime of a signed token.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// A cached token is replaced once it has less than this left.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(3600);
/// Beyond this many audiences, expired entries are pruned (and if that is not
/// enough, the cache is cleared) so hostile endpoints cannot grow it forever.
const MAX_CACHED_AUDIENCES: usize = 4096;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ContactError {
    #[error("{0}")]
    Invalid(String),
}

/// A validated `sub` claim: `mailto:` with a real address, or an `https:` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact(String);
impl Contact {
    pub fn parse(s: &str) -> Result<Self, ContactError> {
        let bad = |m: &str| Err(ContactError::Invalid(m.to_string()));
        if s.is_empty() {
            return bad("contact is empty; use mailto:you@example.com or an https: URL");
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return bad("contact must not contain spaces or control characters");
        }
        if s.contains(['<', '>']) {
            return bad("contact must not contain angle brackets: write mailto:you@example.com, not a display name");
        }
        if s.len() > 512 {
            return bad("contact is longer than 512 characters");
        }
        let lower = s.to_ascii_lowercase();
        if let Some(addr) = lower.strip_prefix("mailto:") {
            if addr.starts_with("mailto:") {
                return bad("contact has mailto: twice");
            }
            let Some((local, domain)) = addr.split_once('@') else {
                return bad("mailto: contact must be an email address like you@example.com");
            };
            if local.is_empty()
                || !local.bytes().all(is_atext_or_dot)
                || local.starts_with('.')
                || local.ends_with('.')
            {
                return bad("mailto: contact has an invalid local part before the @");
            }
            if let Err(m) = check_public_domain(domain) {
                return bad(&format!("mailto: contact {m}"));
            }
            // Keep the address as written, only normalising the scheme.
            return Ok(Self(format!("mailto:{}", &s["mailto:".len()..])));
        }
        if lower.starts_with("https:") {
            let url = url::Url::parse(s).map_err(|e| {
                ContactError::Invalid(format!("https: contact is not a valid URL ({e})"))
            })?;
            if !url.username().is_empty() || url.password().is_some() {
                return bad("https: contact must not contain credentials");
            }
            match url.host() {
                None => return bad("https: contact has no host"),
                Some(url::Host::Domain(d)) => {
                    if let Err(m) = check_public_domain(d) {
                        return bad(&format!("https: contact {m}"));
                    }
                }
                Some(url::Host::Ipv4(ip)) if ip.is_loopback() || ip.is_unspecified() => {
                    return bad("https: contact must not be a loopback address")
                }
                Some(url::Host::Ipv6(ip)) if ip.is_loopback() || ip.is_unspecified() => {
                    return bad("https: contact must not be a loopback address")
                }
                Some(_) => {}
            }
            return Ok(Self(url.into()));
        }
        bad("contact must start with mailto: or https:")
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// RFC 5322 `atext` plus `.`: what may appear in an unquoted local part.
fn is_atext_or_dot(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~.".contains(&b)
}

/// A domain someone outside could reach: at least two labels, LDH labels,
/// alphabetic TLD, and not `localhost` / `*.local` (Apple refuses those).
fn check_public_domain(domain: &str) -> Result<(), &'static str> {
    let d = domain.trim_end_matches('.');
    if d.is_empty() {
        return Err("has no domain");
    }
    if d == "localhost" || d.ends_with(".localhost") || d == "local" || d.ends_with(".local") {
        return Err("must not use a localhost or .local domain");
    }
    let labels: Vec<&str> = d.split('.').collect();
    if labels.len() < 2 {
        return Err("domain must have a dot, like example.com");
    }
    for l in &labels {
        if l.is_empty()
            || l.len() > 63
            || l.starts_with('-')
            || l.ends_with('-')
            || !l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err("has an invalid domain");
        }
    }
    let tld = labels[labels.len() - 1];
    if tld.len() < 2 || !(tld.bytes().all(|b| b.is_ascii_alphabetic()) || tld.starts_with("xn--")) {
        return Err("has an invalid top-level domain");
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum VapidError {
    #[error("signing failed: {0}")]
    Sign(String),
}

/// Where the signer gets the time; injectable so tests can move it.
pub trait Clock: Send + Sync {
    fn now(&self) -> SystemTime;
}
/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;
impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}
impl<F: Fn() -> SystemTime + Send + Sync> Clock for F {
    fn now(&self) -> SystemTime {
        self()
    }
}

struct CachedHeader {
    header: Arc<str>,
    /// `exp` claim, seconds since the epoch.
    expires_at: u64,
}

/// Signs VAPID tokens and caches them per audience until shortly before expiry.
pub struct VapidSigner {
    key: VapidKey,
    public_b64: String,
    contact: Option<Contact>,
    clock: Arc<dyn Clock>,
    cache: RwLock<HashMap<String, CachedHeader>>,
}

impl std::fmt::Debug for VapidSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VapidSigner")
            .field("public_key", &self.public_b64)
            .field("contact", &self.contact)
            .finish_non_exhaustive()
    }
}

impl VapidSigner {
    pub fn new(key: VapidKey, contact: Option<Contact>) -> Self {
        Self::with_clock(key, contact, Arc::new(SystemClock))
    }

    /// As [`new`](Self::new), reading the time from `clock`.
    pub fn with_clock(key: VapidKey, contact: Option<Contact>, clock: Arc<dyn Clock>) -> Self {
        let public_b64 = key.public_key_base64();
        Self {
            key,
            public_b64,
            contact,
            clock,
            cache: RwLock::new(HashMap::new()),
        }
    }

    /// `vapid t=<jwt>, k=<public key>` for this endpoint's origin; cached.
    pub fn authorization(&self, endpoint: &Endpoint) -> Result<Arc<str>, VapidError> {
        let aud = endpoint.origin();
        let now = unix_secs(self.clock.now());
        let fresh = |c: &CachedHeader| now.saturating_add(REFRESH_MARGIN.as_secs()) < c.expires_at;
        {
            // A poisoned lock only means another thread panicked mid-insert;
            // the map itself is still consistent, so keep using it.
            let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = cache.get(aud).filter(|c| fresh(c)) {
                return Ok(c.header.clone());
            }
        }
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        // Another thread may have signed while we waited for the write lock.
        if let Some(c) = cache.get(aud).filter(|c| fresh(c)) {
            return Ok(c.header.clone());
        }
        let expires_at = now.saturating_add(TOKEN_LIFETIME.as_secs());
        let header: Arc<str> = Arc::from(self.header_for(aud, expires_at)?);
        if cache.len() >= MAX_CACHED_AUDIENCES {
            cache.retain(|_, c| fresh(c));
            if cache.len() >= MAX_CACHED_AUDIENCES {
                cache.clear();
            }
        }
        cache.insert(
            aud.to_string(),
            CachedHeader {
                header: header.clone(),
                expires_at,
            },
        );
        Ok(header)
    }

    /// Sign a new header for this endpoint, bypassing (and not filling) the
    /// cache. For measuring signing cost; delivery uses [`authorization`](Self::authorization).
    pub fn authorization_uncached(&self, endpoint: &Endpoint) -> Result<String, VapidError> {
        let now = unix_secs(self.clock.now());
        self.header_for(
            endpoint.origin(),
            now.saturating_add(TOKEN_LIFETIME.as_secs()),
        )
    }

    pub fn public_key_base64(&self) -> String {
        self.public_b64.clone()
    }

    /// The same, borrowed: the sender needs it for every aesgcm message.
    pub fn public_key_b64(&self) -> &str {
        &self.public_b64
    }

    fn header_for(&self, aud: &str, exp: u64) -> Result<String, VapidError> {
        let jwt = sign_jwt(
            &self.key,
            aud,
            exp,
            self.contact.as_ref().map(Contact::as_str),
        )?;
        Ok(format!("vapid t={jwt}, k={}", self.public_b64))
    }
}

/// base64url of `{"typ":"JWT","alg":"ES256"}`.
const JWT_HEADER_B64: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJFUzI1NiJ9";

/// An ES256 JWS compact token with the VAPID claims.
pub fn sign_jwt(
    key: &VapidKey,
    aud: &str,
    exp: u64,
    sub: Option<&str>,
) -> Result<String, VapidError> {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        aud: &'a str,
        exp: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        sub: Option<&'a str>,
    }
    let claims = serde_json::to_vec(&Claims { aud, exp, sub })
        .map_err(|e| VapidError::Sign(e.to_string()))?;
    let mut token = String::with_capacity(JWT_HEADER_B64.len() + 2 + claims.len() * 4 / 3 + 4 + 86);
    token.push_str(JWT_HEADER_B64);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(&claims, &mut token);
    let sig = key
        .pair()
        .sign(&aws_lc_rs::rand::SystemRandom::new(), token.as_bytes())
        .map_err(|_| VapidError::Sign("ECDSA signing failed".into()))?;
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(sig.as_ref(), &mut token);
    Ok(token)
}

fn unix_secs(t: SystemTime) -> u64 {
    // A clock before 1970 is broken; treat it as the epoch rather than panic.
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webpush::subscription::AllowedHosts;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn jwt_header_constant_matches() {
        assert_eq!(
            URL_SAFE_NO_PAD.decode(JWT_HEADER_B64).unwrap(),
            br#"{"typ":"JWT","alg":"ES256"}"#
        );
    }

    #[test]
    fn contacts_accepted() {
        for ok in [
            "mailto:admin@example.com",
            "MAILTO:first.last+tag@sub.example.co.uk",
            "https://example.com/contact",
            "https://example.com",
        ] {
            Contact::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        assert_eq!(
            Contact::parse("MAILTO:a@example.com").unwrap().as_str(),
            "mailto:a@example.com"
        );
    }

    #[test]
    fn contacts_refused_with_reasons() {
        for (bad, needle) in [
            ("", "empty"),
            ("mailto: admin@example.com", "spaces"),
            ("admin@example.com", "mailto: or https:"),
            ("mailto:<admin@example.com>", "angle"),
            ("Admin <mailto:admin@example.com>", "spaces"),
            ("mailto:mailto:admin@example.com", "twice"),
            ("mailto:admin", "email address"),
            ("mailto:@example.com", "local part"),
            ("mailto:admin@localhost", "localhost"),
            ("mailto:admin@mac.local", ".local"),
            ("mailto:admin@example", "dot"),
            ("mailto:admin@example.c", "top-level"),
            ("mailto:admin@ex_ample.com", "invalid domain"),
            ("https://localhost/x", "localhost"),
            ("https://printer.local", ".local"),
            ("https://u:p@example.com", "credentials"),
            ("http://example.com", "mailto: or https:"),
            ("https://", "valid URL"),
        ] {
            let e = Contact::parse(bad).unwrap_err().to_string();
            assert!(e.contains(needle), "{bad:?}: {e}");
        }
    }

    #[test]
    fn cache_reuses_until_margin_then_resigns() {
        let t = Arc::new(AtomicU64::new(1_700_000_000));
        let tc = t.clone();
        let clock = Arc::new(move || UNIX_EPOCH + Duration::from_secs(tc.load(Ordering::SeqCst)));
        let s = VapidSigner::with_clock(VapidKey::generate().unwrap(), None, clock);
        let allowed = AllowedHosts::vendors();
        let e1 = Endpoint::parse("https://fcm.googleapis.com/fcm/send/a", &allowed).unwrap();
        let e2 = Endpoint::parse("https://fcm.googleapis.com/fcm/send/b", &allowed).unwrap();
        let other = Endpoint::parse(
            "https://updates.push.services.mozilla.com/wpush/v2/x",
            &allowed,
        )
        .unwrap();
        let h1 = s.authorization(&e1).unwrap();
        assert!(
            Arc::ptr_eq(&h1, &s.authorization(&e2).unwrap()),
            "same origin must share a header"
        );
        assert!(!Arc::ptr_eq(&h1, &s.authorization(&other).unwrap()));
        // Just before the refresh point: still cached.
        t.fetch_add(
            TOKEN_LIFETIME.as_secs() - REFRESH_MARGIN.as_secs() - 1,
            Ordering::SeqCst,
        );
        assert!(Arc::ptr_eq(&h1, &s.authorization(&e1).unwrap()));
        // At the refresh point: re-signed.
        t.fetch_add(1, Ordering::SeqCst);
        let h2 = s.authorization(&e1).unwrap();
        assert!(!Arc::ptr_eq(&h1, &h2));
        assert_ne!(*h1, *h2);
        assert!(Arc::ptr_eq(&h2, &s.authorization(&e1).unwrap()));
    }
}
