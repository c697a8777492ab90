//! Browser subscriptions: parsing `PushSubscription.toJSON()` and deciding
//! which push-service hosts Herald will ever POST to.
//!
//! Invariants of a validated [`Subscription`]:
//! - the endpoint is an absolute `https` URL of at most 1024 bytes, without
//!   userinfo (user:password@), whose host is on the [`AllowedHosts`] list (the allow-list is
//!   what stops Herald being used to POST to arbitrary URLs, e.g. internal
//!   services);
//! - legacy GCM endpoints (`android.googleapis.com/gcm/send/...`) have been
//!   rewritten to their FCM form, so the rest of Herald never sees them;
//! - `p256dh` is an uncompressed P-256 point on the curve and `auth` exactly
//!   16 bytes, so encryption for this subscriber cannot fail on bad keys.
//!
//! Base64 fields are accepted in base64url with or without padding, and in the
//! standard alphabet, because client libraries disagree.
use super::keys::{decode_b64, is_on_curve};
use serde::Deserialize;

/// Longest endpoint accepted, in bytes (endpoints are ASCII once parsed).
pub const MAX_ENDPOINT_LEN: usize = 1024;

/// Every reason a subscription is refused. `field()` names the JSON field at fault.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SubscriptionError {
    #[error("endpoint must be an absolute https URL")]
    EndpointNotHttps,
    #[error("endpoint is not a valid URL")]
    EndpointInvalid,
    #[error("endpoint must be at most 1024 characters")]
    EndpointTooLong,
    #[error("endpoint host {0} is not an allowed push service")]
    HostNotAllowed(String),
    #[error("endpoint must not contain a user name or password")]
    EndpointHasCredentials,
    #[error("keys.p256dh must be base64url of an uncompressed P-256 point on the curve (65 bytes starting 0x04)")]
    P256dhInvalid,
    #[error("keys.auth must be base64url of exactly 16 bytes")]
    AuthInvalid,
}

impl SubscriptionError {
    /// The JSON path of the field at fault, relative to the subscription object.
    pub fn field(&self) -> &'static str {
        match self {
            Self::EndpointNotHttps
            | Self::EndpointInvalid
            | Self::EndpointTooLong
            | Self::EndpointHasCredentials
            | Self::HostNotAllowed(_) => "endpoint",
            Self::P256dhInvalid => "keys.p256dh",
            Self::AuthInvalid => "keys.auth",
        }
    }
}

/// The push services of the browser vendors. `android.googleapis.com` is the
/// legacy GCM host: accepted, then rewritten to FCM by [`Endpoint::parse`].
const VENDOR_HOSTS: &[&str] = &[
    "fcm.googleapis.com",
    "jmt17.google.com",
    "android.googleapis.com",
    "updates.push.services.mozilla.com",
    "*.push.apple.com",
    "*.notify.windows.com",
];

/// One allow-list entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HostPattern {
    /// Lowercase. For a wildcard, the suffix including its leading dot (`.example.net`).
    name: String,
    wildcard: bool,
    /// `None` allows any port.
    port: Option<u16>,
}

impl HostPattern {
    fn parse(s: &str) -> Option<Self> {
        let s = s.trim().to_ascii_lowercase();
        let (host, port) = split_host_port(&s)?;
        let (name, wildcard) = match host.strip_prefix("*.") {
            Some(suffix) if !suffix.is_empty() && !suffix.contains('*') => {
                (format!(".{suffix}"), true)
            }
            Some(_) => return None,
            None if !host.is_empty() && !host.contains('*') => (host.to_string(), false),
            None => return None,
        };
        Some(Self {
            name,
            wildcard,
            port,
        })
    }

    fn matches(&self, host: &str, port: u16) -> bool {
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        if self.wildcard {
            // `*.example.net` matches `a.example.net`, not `example.net` itself.
            host.len() > self.name.len() && host.ends_with(&self.name)
        } else {
            host == self.name
        }
    }
}

/// Split `host`, `host:port`, `[v6]` or `[v6]:port`. `None` when a port is
/// present but not a valid number.
fn split_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    if s.starts_with('[') {
        let close = s.find(']')?;
        let (host, rest) = s.split_at(close + 1);
        return match rest {
            "" => Some((host, None)),
            _ => Some((host, Some(rest.strip_prefix(':')?.parse().ok()?))),
        };
    }
    match s.rsplit_once(':') {
        // More than one colon without brackets: a bare IPv6 address, no port.
        Some((host, _)) if host.contains(':') => Some((s, None)),
        Some((host, port)) => Some((host, Some(port.parse().ok()?))),
        None => Some((s, None)),
    }
}

/// Allow-list of push-service hosts. Exact names or `*.suffix` patterns,
/// each optionally with `:port` (without a port, any port is allowed).
/// Comparison is case-insensitive.
#[derive(Debug, Clone)]
pub struct AllowedHosts {
    patterns: Vec<HostPattern>,
}

impl AllowedHosts {
    /// The real vendors' hosts only.
    pub fn vendors() -> Self {
        Self::with_extra(std::iter::empty::<&str>())
    }

    /// Vendors plus extra patterns (e.g. `localhost`, `push.example.com`, `*.example.net`).
    /// Malformed patterns (e.g. `host:notaport`, `*` alone) are ignored: they
    /// can only ever narrow what is allowed.
    pub fn with_extra<I: IntoIterator<Item = S>, S: AsRef<str>>(extra: I) -> Self {
        let patterns = VENDOR_HOSTS
            .iter()
            .copied()
            .filter_map(HostPattern::parse)
            .chain(
                extra
                    .into_iter()
                    .filter_map(|s| HostPattern::parse(s.as_ref())),
            )
            .collect();
        Self { patterns }
    }

    /// Whether `host` (optionally `host:port`; no port means 443) may receive pushes.
    pub fn allows(&self, host: &str) -> bool {
        let lower = host.to_ascii_lowercase();
        let Some((name, port)) = split_host_port(&lower) else {
            return false;
        };
        self.allows_parts(name, port.unwrap_or(443))
    }

    fn allows_parts(&self, host: &str, port: u16) -> bool {
        !host.is_empty() && self.patterns.iter().any(|p| p.matches(host, port))
    }
}

impl Default for AllowedHosts {
    fn default() -> Self {
        Self::vendors()
    }
}

/// A validated push endpoint (https, allowed host, ≤ 1024 chars).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Parsed once: the HTTP client takes it as is, without parsing the
    /// string again for every push.
    url: url::Url,
    /// Byte range of the host inside `url`'s serialisation.
    host: std::ops::Range<usize>,
    origin: String,
}

impl Endpoint {
    pub fn parse(s: &str, allowed: &AllowedHosts) -> Result<Self, SubscriptionError> {
        if s.len() > MAX_ENDPOINT_LEN {
            return Err(SubscriptionError::EndpointTooLong);
        }
        let mut url = match url::Url::parse(s) {
            Ok(u) => u,
            Err(url::ParseError::RelativeUrlWithoutBase) => {
                return Err(SubscriptionError::EndpointNotHttps)
            }
            Err(_) => return Err(SubscriptionError::EndpointInvalid),
        };
        if url.scheme() != "https" {
            return Err(SubscriptionError::EndpointNotHttps);
        }
        // Credentials in a push URL are never legitimate: no push service
        // uses them, and they would end up in logs and in admin screens.
        if !url.username().is_empty() || url.password().is_some() {
            return Err(SubscriptionError::EndpointHasCredentials);
        }
        let host = url
            .host_str()
            .ok_or(SubscriptionError::EndpointInvalid)?
            .to_ascii_lowercase();
        // `port()` is `None` for the scheme default.
        let port = url.port().unwrap_or(443);
        if !allowed.allows_parts(&host, port) {
            return Err(SubscriptionError::HostNotAllowed(match url.port() {
                Some(p) => format!("{host}:{p}"),
                None => host,
            }));
        }
        if host == "android.googleapis.com" {
            // GCM was shut down; Google keeps the subscriptions alive at FCM
            // under the same token, which is what every web-push library sends to.
            url.set_host(Some("fcm.googleapis.com"))
                .map_err(|_| SubscriptionError::EndpointInvalid)?;
            if let Some(rest) = url.path().strip_prefix("/gcm/send/") {
                let path = format!("/fcm/send/{rest}");
                url.set_path(&path);
            }
        }
        // Fragments are never sent to the server; drop them so equal
        // endpoints compare equal.
        url.set_fragment(None);
        if url.as_str().len() > MAX_ENDPOINT_LEN {
            // Normalisation (percent-encoding) can lengthen the input.
            return Err(SubscriptionError::EndpointTooLong);
        }
        Self::from_normalized(url)
    }

    /// Build from an already-normalised URL (output of `url::Url`).
    fn from_normalized(parsed: url::Url) -> Result<Self, SubscriptionError> {
        let url = parsed.as_str();
        let after_scheme = "https://".len();
        if !url.starts_with("https://") {
            return Err(SubscriptionError::EndpointNotHttps);
        }
        let authority_end = url[after_scheme..]
            .find('/')
            .map_or(url.len(), |i| after_scheme + i);
        let authority = &url[after_scheme..authority_end];
        let host_len = if authority.starts_with('[') {
            authority
                .find(']')
                .map(|i| i + 1)
                .ok_or(SubscriptionError::EndpointInvalid)?
        } else {
            authority.find(':').unwrap_or(authority.len())
        };
        let origin = url[..authority_end].to_string();
        Ok(Self {
            host: after_scheme..after_scheme + host_len,
            origin,
            url: parsed,
        })
    }

    pub fn as_str(&self) -> &str {
        self.url.as_str()
    }

    /// The parsed URL, for the HTTP client.
    pub fn url(&self) -> &url::Url {
        &self.url
    }

    /// The host, lowercase, without port (IPv6 in brackets).
    pub fn host(&self) -> &str {
        &self.as_str()[self.host.clone()]
    }

    /// scheme://host[:port] — the VAPID audience. The port appears only when it is not 443.
    pub fn origin(&self) -> &str {
        &self.origin
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct P256dh(pub [u8; 65]);
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSecret(pub [u8; 16]);

impl P256dh {
    pub fn parse(b64: &str) -> Result<Self, SubscriptionError> {
        let bytes = decode_b64(b64, 65).ok_or(SubscriptionError::P256dhInvalid)?;
        let point: [u8; 65] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| SubscriptionError::P256dhInvalid)?;
        if !is_on_curve(&point) {
            return Err(SubscriptionError::P256dhInvalid);
        }
        Ok(Self(point))
    }
}

impl AuthSecret {
    pub fn parse(b64: &str) -> Result<Self, SubscriptionError> {
        let bytes = decode_b64(b64, 16).ok_or(SubscriptionError::AuthInvalid)?;
        Ok(Self(
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| SubscriptionError::AuthInvalid)?,
        ))
    }
}

/// The browser's `PushSubscription.toJSON()` shape, before validation.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionJson {
    pub endpoint: String,
    #[serde(default)]
    pub expiration_time: Option<f64>,
    pub keys: SubscriptionKeysJson,
}
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct SubscriptionKeysJson {
    pub p256dh: String,
    pub auth: String,
}

/// A validated subscription.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub endpoint: Endpoint,
    pub p256dh: P256dh,
    pub auth: AuthSecret,
    /// Milliseconds since the Unix epoch, as the browser reports it.
    pub expiration_time: Option<i64>,
}

impl Subscription {
    /// Validate in field order (endpoint, keys.p256dh, keys.auth); the first
    /// fault is reported.
    pub fn parse(
        json: &SubscriptionJson,
        allowed: &AllowedHosts,
    ) -> Result<Self, SubscriptionError> {
        let endpoint = Endpoint::parse(&json.endpoint, allowed)?;
        let p256dh = P256dh::parse(&json.keys.p256dh)?;
        let auth = AuthSecret::parse(&json.keys.auth)?;
        // Browsers send a millisecond timestamp or null; anything not finite
        // is treated as "no expiry" rather than refused.
        let expiration_time = json
            .expiration_time
            .filter(|t| t.is_finite())
            .map(|t| t as i64);
        Ok(Self {
            endpoint,
            p256dh,
            auth,
            expiration_time,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> AllowedHosts {
        AllowedHosts::with_extra(["localhost", "push.example.com:8443", "*.example.net"])
    }

    #[test]
    fn vendor_hosts() {
        let a = AllowedHosts::vendors();
        for h in [
            "fcm.googleapis.com",
            "FCM.googleapis.COM",
            "jmt17.google.com",
            "android.googleapis.com",
            "updates.push.services.mozilla.com",
            "web.push.apple.com",
            "wns2-by3p.notify.windows.com",
            "fcm.googleapis.com:443",
        ] {
            assert!(a.allows(h), "{h}");
        }
        for h in [
            "push.apple.com",
            "evil.com",
            "fcm.googleapis.com.evil.com",
            "evilpush.apple.com",
            "localhost",
            "",
            "fcm.googleapis.com:444x",
        ] {
            assert!(!a.allows(h), "{h}");
        }
    }

    #[test]
    fn extra_hosts_with_and_without_port() {
        let a = allowed();
        assert!(a.allows("localhost:1234"));
        assert!(a.allows("LOCALHOST"));
        assert!(a.allows("push.example.com:8443"));
        assert!(!a.allows("push.example.com"));
        assert!(!a.allows("push.example.com:9443"));
        assert!(a.allows("a.b.example.net:1"));
        assert!(!a.allows("example.net"));
        let v6 = AllowedHosts::with_extra(["[::1]", "127.0.0.1"]);
        assert!(v6.allows("[::1]:8443"));
        assert!(v6.allows("127.0.0.1:9"));
        // Malformed patterns are ignored, never widening the list.
        let bad = AllowedHosts::with_extra(["*", "*.", "x:y", ""]);
        assert!(!bad.allows("anything.com"));
    }

    #[test]
    fn endpoint_parse_and_origin() {
        let a = allowed();
        let e = Endpoint::parse("https://fcm.googleapis.com/fcm/send/abc", &a).unwrap();
        assert_eq!(e.host(), "fcm.googleapis.com");
        assert_eq!(e.origin(), "https://fcm.googleapis.com");
        let e = Endpoint::parse("https://localhost:8443/push/1", &a).unwrap();
        assert_eq!(e.host(), "localhost");
        assert_eq!(e.origin(), "https://localhost:8443");
        assert_eq!(e.as_str(), "https://localhost:8443/push/1");
        let e = Endpoint::parse("https://FCM.GoogleAPIs.com:443/x", &a).unwrap();
        assert_eq!(e.origin(), "https://fcm.googleapis.com");
        assert_eq!(e.as_str(), "https://fcm.googleapis.com/x");
        let v6 = AllowedHosts::with_extra(["[::1]"]);
        let e = Endpoint::parse("https://[::1]:9000/p", &v6).unwrap();
        assert_eq!(e.host(), "[::1]");
        assert_eq!(e.origin(), "https://[::1]:9000");
    }

    #[test]
    fn legacy_gcm_rewritten() {
        let e =
            Endpoint::parse("https://android.googleapis.com/gcm/send/X:Y-z", &allowed()).unwrap();
        assert_eq!(e.as_str(), "https://fcm.googleapis.com/fcm/send/X:Y-z");
        assert_eq!(e.host(), "fcm.googleapis.com");
        assert_eq!(e.origin(), "https://fcm.googleapis.com");
    }

    #[test]
    fn endpoint_rejections() {
        let a = allowed();
        let err = |s: &str| Endpoint::parse(s, &a).unwrap_err();
        assert_eq!(
            err("http://fcm.googleapis.com/x"),
            SubscriptionError::EndpointNotHttps
        );
        assert_eq!(err("/relative"), SubscriptionError::EndpointNotHttps);
        assert_eq!(
            err("wss://fcm.googleapis.com/x"),
            SubscriptionError::EndpointNotHttps
        );
        assert_eq!(err("https://"), SubscriptionError::EndpointInvalid);
        assert_eq!(
            err("https://user:pass@fcm.googleapis.com/x"),
            SubscriptionError::EndpointHasCredentials
        );
        assert_eq!(
            err("https://user@fcm.googleapis.com/x"),
            SubscriptionError::EndpointHasCredentials
        );
        assert_eq!(
            err("https://:pass@fcm.googleapis.com/x"),
            SubscriptionError::EndpointHasCredentials
        );
        assert_eq!(
            err("https://evil.com/x"),
            SubscriptionError::HostNotAllowed("evil.com".into())
        );
        assert_eq!(
            err("https://push.example.com:9/x"),
            SubscriptionError::HostNotAllowed("push.example.com:9".into())
        );
        let long = format!("https://fcm.googleapis.com/{}", "a".repeat(1000));
        assert_eq!(err(&long), SubscriptionError::EndpointTooLong);
        let exact = format!("https://fcm.googleapis.com/{}", "a".repeat(1024 - 27));
        assert_eq!(exact.len(), 1024);
        assert!(Endpoint::parse(&exact, &a).is_ok());
        // Spaces percent-encode to three bytes each: too long after normalisation.
        let grows = format!("https://fcm.googleapis.com/{}b", "a ".repeat(300));
        assert_eq!(err(&grows), SubscriptionError::EndpointTooLong);
    }

    #[test]
    fn every_rejection_has_its_own_message_and_field() {
        let cases = [
            (SubscriptionError::EndpointNotHttps, "endpoint", "https"),
            (SubscriptionError::EndpointInvalid, "endpoint", "valid URL"),
            (SubscriptionError::EndpointTooLong, "endpoint", "1024"),
            (
                SubscriptionError::HostNotAllowed("evil.com".into()),
                "endpoint",
                "evil.com",
            ),
            (
                SubscriptionError::EndpointHasCredentials,
                "endpoint",
                "password",
            ),
            (
                SubscriptionError::P256dhInvalid,
                "keys.p256dh",
                "on the curve",
            ),
            (SubscriptionError::AuthInvalid, "keys.auth", "16 bytes"),
        ];
        let mut seen = std::collections::HashSet::new();
        for (e, field, needle) in cases {
            assert_eq!(e.field(), field);
            let msg = e.to_string();
            assert!(msg.contains(needle), "{msg}");
            assert!(seen.insert(msg));
        }
    }
}
