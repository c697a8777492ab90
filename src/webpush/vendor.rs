//! Push-vendor knowledge: which service an endpoint belongs to, and what that
//! service means by each answer.
//!
//! [`classify`] turns (vendor, status, headers, body) into an [`Outcome`] the
//! queue acts on, and a short `reason` an administrator can read. Rules are
//! checked most specific first: vendor-specific bodies (key mismatch, bad
//! topic, bad JWT) before the generic status-code meaning. The function is
//! total: any status and any body give an answer, never a panic.
//!
//! Bodies are untrusted: only the first [`MAX_BODY_INSPECTED`] bytes are
//! looked at, JSON is only parsed when it looks like an object, and reason
//! excerpts are stripped of control characters and cut to
//! [`MAX_REASON_EXCERPT`] characters.
use super::subscription::Endpoint;
use std::time::{Duration, SystemTime};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Vendor {
    Fcm,
    Apple,
    Mozilla,
    Wns,
    Other,
}
impl Vendor {
    pub const ALL: [Vendor; 5] = [
        Vendor::Fcm,
        Vendor::Apple,
        Vendor::Mozilla,
        Vendor::Wns,
        Vendor::Other,
    ];

    /// By host for the real services; for any other allowed host (a relay,
    /// a private deployment, a test emulator) by the vendor's path shape, so
    /// that host still gets its vendor's answer rules.
    pub fn of(endpoint: &Endpoint) -> Self {
        match Self::of_host(endpoint.host()) {
            Self::Other => Self::of_path(endpoint.as_str()),
            v => v,
        }
    }
    /// Path shapes: FCM `/fcm/send/<token>`, Mozilla `/wpush/v1|v2/<token>`,
    /// Apple `/3/device/<token>`, WNS `/w/?token=<token>`.
    fn of_path(url: &str) -> Self {
        // Everything from the first '/' after "scheme://host".
        let path = url
            .find("://")
            .and_then(|i| url[i + 3..].find('/').map(|j| &url[i + 3 + j..]))
            .unwrap_or("");
        if path.contains("/fcm/send/") || path.contains("/gcm/send/") {
            Self::Fcm
        } else if path.contains("/wpush/v1/") || path.contains("/wpush/v2/") {
            Self::Mozilla
        } else if path.contains("/3/device/") {
            Self::Apple
        } else if path.contains("/w/?token=") || path.contains("/w?token=") {
            Self::Wns
        } else {
            Self::Other
        }
    }
    /// By host name (case-insensitive, no port).
    pub fn of_host(host: &str) -> Self {
        let h = host.to_ascii_lowercase();
        let under = |suffix: &str| {
            h.len() > suffix.len()
                && h.ends_with(suffix)
                && h.as_bytes()[h.len() - suffix.len() - 1] == b'.'
        };
        match h.as_str() {
            "fcm.googleapis.com" | "jmt17.google.com" | "android.googleapis.com" => Self::Fcm,
            "push.services.mozilla.com" => Self::Mozilla,
            _ if under("push.services.mozilla.com") => Self::Mozilla,
            _ if under("push.apple.com") => Self::Apple,
            _ if under("notify.windows.com") => Self::Wns,
            _ => Self::Other,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fcm => "fcm",
            Self::Apple => "apple",
            Self::Mozilla => "mozilla",
            Self::Wns => "wns",
            Self::Other => "other",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    Gone,
    KeyMismatch,
    RateLimited {
        retry_after: Option<Duration>,
    },
    /// Try again after a backoff, or after `after` when the service said
    /// when (a 503 with Retry-After).
    Retry {
        after: Option<Duration>,
    },
    RetryWithoutTopic,
    ConfigError,
    Failed,
}

/// One answer, classified, with what the admin needs to see.
#[derive(Debug, Clone)]
pub struct Classified {
    pub outcome: Outcome,
    pub status: Option<u16>,
    /// Short human reason: `"410 Gone: <body excerpt>"`, `"timeout"`, ...
    pub reason: String,
}

/// Longest excerpt of the vendor's reason kept in [`Classified::reason`], in characters.
pub const MAX_REASON_EXCERPT: usize = 200;
/// Only this much of a response body is examined.
pub const MAX_BODY_INSPECTED: usize = 16 * 1024;

/// Classify a push service's HTTP answer. `now` is used for HTTP-date Retry-After.
pub fn classify(
    vendor: Vendor,
    status: u16,
    headers: &reqwest::header::HeaderMap,
    body: &str,
    now: std::time::SystemTime,
) -> Classified {
    let body = truncate_chars_bytes(body, MAX_BODY_INSPECTED);
    let json_reason = json_reason(body);
    // What the vendor says, in its own words: Apple's `reason`, Mozilla's
    // `message`, otherwise the text of the body.
    let said = json_reason.as_deref().unwrap_or(body);
    let said_lower = said.to_ascii_lowercase();
    let body_lower = body.to_ascii_lowercase();
    let mentions = |needle: &str| said_lower.contains(needle) || body_lower.contains(needle);

    use Outcome::*;
    use Vendor::*;
    let outcome = match (vendor, status) {
        // RFC 8030 §5: 201 Created is the normal answer; some services send 200 or 202.
        (_, 200..=299) => Delivered,

        // FCM 403 "the VAPID credentials in the authorization header do not
        // correspond to the credentials used to create the subscription": the
        // browser subscribed with a different applicationServerKey. Only
        // re-subscribing with Herald's key can fix it.
        (Fcm, 403) if mentions("do not correspond") || mentions("does not correspond") => {
            KeyMismatch
        }
        // Apple VapidPkHashMismatch: the key that signed the JWT is not the
        // one the subscription was created with. Documented as 400, seen as 403.
        (Apple, 400 | 403) if said == "VapidPkHashMismatch" => KeyMismatch,
        // Mozilla autopush 401 {"errno":109,"message":"VAPID public key
        // mismatch"}: same meaning, k= does not match the subscription's key.
        (Mozilla, 401) if mentions("vapid public key mismatch") => KeyMismatch,

        // Apple BadWebPushTopic: the Topic header is not valid for Apple. The
        // message itself is fine; send it again without a Topic.
        (Apple, 400) if said == "BadWebPushTopic" => RetryWithoutTopic,

        // Apple 403 BadJwtToken: the JWT is missing, signed with the wrong
        // key, has a bad sub/aud or an exp over a day away. Any other Apple
        // 403 (e.g. ExpiredJwtToken) is likewise about Herald's credentials.
        (Apple, 403) => ConfigError,
        // FCM 400 UnauthorizedRegistration: the request's authorisation is
        // unusable (missing or malformed VAPID, or for aesgcm a missing
        // p256ecdsa). Every message to FCM would fail the same way.
        (Fcm, 400) if mentions("unauthorizedregistration") => ConfigError,
        // 401 Unauthorized / 403 Forbidden from any service (Mozilla 401 other
        // than key mismatch: invalid or expired token; WNS 401/403: token
        // rejected or not allowed for this channel; FCM 403 other than key
        // mismatch): the service rejects Herald's VAPID credentials, not this
        // subscription. Retrying or dropping the subscriber would not help.
        (_, 401 | 403) => ConfigError,

        // 404 Not Found / 410 Gone: the subscription expired or the user
        // unsubscribed (Apple "Unregistered", Mozilla errno 103/105/106, WNS
        // channel expired). Delete it.
        (_, 404 | 410) => Gone,

        // 429 Too Many Requests: slow down; Retry-After says how long.
        (_, 429) => RateLimited {
            retry_after: retry_after(headers, now),
        },
        // WNS 406 Not Acceptable: "this cloud service has exceeded its throttle limit".
        (Wns, 406) => RateLimited {
            retry_after: retry_after(headers, now),
        },

        // 413 Payload Too Large: this message will never fit; the subscription is fine.
        (_, 413) => Failed,

        // 5xx: the service's own trouble (Apple InternalServerError,
        // ServiceUnavailable, FCM/Mozilla 502/503). Try again later.
        // A 503 may say when to come back; that wait is honoured.
        (_, 500..=599) => Retry {
            after: retry_after(headers, now),
        },

        // Any other 4xx: this request is malformed in a way retrying will not
        // fix (e.g. Apple BadExpirationDate, Mozilla 400 errno 101..). Also
        // 1xx/3xx, which a push service should never answer.
        _ => Failed,
    };
    Classified {
        outcome,
        status: Some(status),
        reason: reason_text(status, said),
    }
}

/// Classify a transport failure (timeout, connection refused, TLS error): always a retry.
///
/// Exception: a *builder* error means the request could not even be formed
/// (e.g. an invalid header value); sending it again cannot succeed, so it is
/// [`Outcome::Failed`].
pub fn classify_transport_error(err: &reqwest::Error) -> Classified {
    let kind = if err.is_timeout() {
        "timeout"
    } else if err.is_connect() {
        "connection failed"
    } else if err.is_builder() {
        "invalid request"
    } else if err.is_redirect() {
        "redirect error"
    } else if err.is_body() || err.is_decode() {
        "response body error"
    } else {
        "request error"
    };
    // The source chain says what went wrong (DNS, refused, TLS) without
    // repeating the URL, which is a capability and long.
    let mut detail = String::new();
    let mut src = std::error::Error::source(err);
    while let Some(e) = src {
        let s = e.to_string();
        if !s.is_empty() && !detail.contains(&s) {
            if !detail.is_empty() {
                detail.push_str(": ");
            }
            detail.push_str(&s);
        }
        src = e.source();
    }
    let reason = if detail.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {}", excerpt(&detail))
    };
    let outcome = if err.is_builder() {
        Outcome::Failed
    } else {
        Outcome::Retry { after: None }
    };
    Classified {
        outcome,
        status: None,
        reason,
    }
}

/// Parse a `Retry-After` value: delay-seconds or an HTTP date (RFC 9110
/// §10.2.3). A date in the past means "now" (zero). `None` when unparseable.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return v.parse::<u64>().ok().map(Duration::from_secs);
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

fn retry_after(headers: &reqwest::header::HeaderMap, now: SystemTime) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(v, now)
}

/// The vendor's own reason from a JSON body: Apple `{"reason":"..."}`,
/// Mozilla `{"code":..,"errno":..,"error":"..","message":".."}`, Google-style
/// `{"error":{"message":".."}}`.
fn json_reason(body: &str) -> Option<String> {
    let t = body.trim_start();
    if !t.starts_with('{') {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(t).ok()?;
    let s = |v: &serde_json::Value| v.as_str().map(str::to_string).filter(|s| !s.is_empty());
    v.get("reason")
        .and_then(s)
        .or_else(|| v.get("message").and_then(s))
        .or_else(|| {
            v.get("error")
                .and_then(|e| s(e).or_else(|| e.get("message").and_then(s)))
        })
}

fn reason_text(status: u16, said: &str) -> String {
    let name = reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason());
    let head = match name {
        Some(n) => format!("{status} {n}"),
        None => status.to_string(),
    };
    let ex = excerpt(said);
    if ex.is_empty() {
        head
    } else {
        format!("{head}: {ex}")
    }
}

/// Collapse whitespace and control characters, cut to [`MAX_REASON_EXCERPT`] characters.
fn excerpt(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_REASON_EXCERPT * 2));
    let mut n = 0;
    let mut space = false;
    for c in s.trim().chars() {
        if c.is_whitespace() || c.is_control() {
            space = true;
            continue;
        }
        if n == MAX_REASON_EXCERPT {
            out.push('…');
            return out;
        }
        if space && !out.is_empty() {
            out.push(' ');
            n += 1;
            if n == MAX_REASON_EXCERPT {
                out.push('…');
                return out;
            }
        }
        space = false;
        out.push(c);
        n += 1;
    }
    out
}

/// The longest prefix of `s` of at most `max` bytes ending on a char boundary.
fn truncate_chars_bytes(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webpush::subscription::AllowedHosts;
    use reqwest::header::HeaderMap;

    fn c(v: Vendor, status: u16, body: &str) -> Classified {
        classify(v, status, &HeaderMap::new(), body, SystemTime::UNIX_EPOCH)
    }

    #[test]
    fn vendor_of() {
        let a = AllowedHosts::with_extra([
            "localhost",
            "push.services.mozilla.com",
            "*.push.services.mozilla.com",
        ]);
        for (url, v) in [
            ("https://fcm.googleapis.com/fcm/send/x", Vendor::Fcm),
            ("https://jmt17.google.com/fcm/send/x", Vendor::Fcm),
            ("https://android.googleapis.com/gcm/send/x", Vendor::Fcm),
            ("https://web.push.apple.com/x", Vendor::Apple),
            (
                "https://updates.push.services.mozilla.com/wpush/v2/x",
                Vendor::Mozilla,
            ),
            (
                "https://stage.push.services.mozilla.com/wpush/v2/x",
                Vendor::Mozilla,
            ),
            (
                "https://wns2-by3p.notify.windows.com/w/?token=x",
                Vendor::Wns,
            ),
            ("https://localhost:8443/x", Vendor::Other),
            // Hosts outside the vendor list are recognised by path shape.
            ("https://localhost:8443/relay/fcm/send/x", Vendor::Fcm),
            ("https://localhost:8443/wpush/v2/x", Vendor::Mozilla),
            ("https://localhost:8443/3/device/x", Vendor::Apple),
            ("https://localhost:8443/w/?token=x", Vendor::Wns),
        ] {
            assert_eq!(Vendor::of(&Endpoint::parse(url, &a).unwrap()), v, "{url}");
        }
        assert_eq!(Vendor::of_host("notpush.apple.com"), Vendor::Other);
        assert_eq!(Vendor::of_host("push.apple.com"), Vendor::Other);
        assert_eq!(Vendor::of_host("WEB.PUSH.APPLE.COM"), Vendor::Apple);
    }

    #[test]
    fn excerpt_limits_and_cleans() {
        let long = "é".repeat(1000);
        let e = excerpt(&long);
        assert_eq!(e.chars().count(), MAX_REASON_EXCERPT + 1);
        assert!(e.ends_with('…'));
        assert_eq!(excerpt("  a\n\r\tb\u{0}c  "), "a b c");
        assert_eq!(
            excerpt(&"ab ".repeat(200)).chars().count(),
            MAX_REASON_EXCERPT + 1
        );
    }

    #[test]
    fn delivered_on_any_2xx() {
        for s in [200, 201, 202, 204, 299] {
            assert_eq!(c(Vendor::Other, s, "").outcome, Outcome::Delivered);
        }
        let r = c(Vendor::Fcm, 201, "");
        assert_eq!((r.status, r.reason.as_str()), (Some(201), "201 Created"));
    }

    #[test]
    fn gone_on_404_and_410() {
        for v in [
            Vendor::Fcm,
            Vendor::Apple,
            Vendor::Mozilla,
            Vendor::Wns,
            Vendor::Other,
        ] {
            assert_eq!(c(v, 404, "").outcome, Outcome::Gone);
            assert_eq!(c(v, 410, "").outcome, Outcome::Gone);
        }
        let r = c(Vendor::Apple, 410, r#"{"reason":"Unregistered"}"#);
        assert_eq!(r.reason, "410 Gone: Unregistered");
        let r = c(
            Vendor::Mozilla,
            410,
            r#"{"code":410,"errno":106,"error":"Gone","message":"Request did not validate UAID not found"}"#,
        );
        assert_eq!(
            r.reason,
            "410 Gone: Request did not validate UAID not found"
        );
    }

    #[test]
    fn fcm_key_mismatch() {
        let body = "the VAPID credentials in the authorization header do not correspond to the credentials used to create the subscription.";
        let r = c(Vendor::Fcm, 403, body);
        assert_eq!(r.outcome, Outcome::KeyMismatch);
        assert!(
            r.reason.starts_with("403 Forbidden: the VAPID credentials"),
            "{}",
            r.reason
        );
        // Same words from another vendor or status are not a mismatch.
        assert_eq!(c(Vendor::Other, 403, body).outcome, Outcome::ConfigError);
        assert_eq!(c(Vendor::Fcm, 400, body).outcome, Outcome::Failed);
        // FCM 403 for any other reason: the credentials themselves are bad.
        assert_eq!(
            c(Vendor::Fcm, 403, "invalid JWT provided").outcome,
            Outcome::ConfigError
        );
    }

    #[test]
    fn apple_key_mismatch_on_400_and_403() {
        for s in [400, 403] {
            let r = c(Vendor::Apple, s, r#"{"reason":"VapidPkHashMismatch"}"#);
            assert_eq!(r.outcome, Outcome::KeyMismatch);
            assert!(r.reason.ends_with(": VapidPkHashMismatch"), "{}", r.reason);
        }
    }

    #[test]
    fn mozilla_key_mismatch_and_other_401() {
        let body = r#"{"code": 401, "errno": 109, "error": "Unauthorized", "message": "VAPID public key mismatch"}"#;
        let r = c(Vendor::Mozilla, 401, body);
        assert_eq!(r.outcome, Outcome::KeyMismatch);
        assert_eq!(r.reason, "401 Unauthorized: VAPID public key mismatch");
        let expired = r#"{"code": 401, "errno": 109, "error": "Unauthorized", "message": "Request did not validate Invalid Authorization Header"}"#;
        assert_eq!(
            c(Vendor::Mozilla, 401, expired).outcome,
            Outcome::ConfigError
        );
    }

    #[test]
    fn apple_bad_topic_retries_without_topic() {
        let r = c(Vendor::Apple, 400, r#"{"reason":"BadWebPushTopic"}"#);
        assert_eq!(r.outcome, Outcome::RetryWithoutTopic);
        assert_eq!(
            c(Vendor::Other, 400, r#"{"reason":"BadWebPushTopic"}"#).outcome,
            Outcome::Failed
        );
        assert_eq!(
            c(Vendor::Apple, 400, r#"{"reason":"BadExpirationDate"}"#).outcome,
            Outcome::Failed
        );
    }

    #[test]
    fn config_errors() {
        let r = c(Vendor::Apple, 403, r#"{"reason":"BadJwtToken"}"#);
        assert_eq!(r.outcome, Outcome::ConfigError);
        assert_eq!(r.reason, "403 Forbidden: BadJwtToken");
        assert_eq!(
            c(Vendor::Apple, 403, r#"{"reason":"ExpiredJwtToken"}"#).outcome,
            Outcome::ConfigError
        );
        let r = c(
            Vendor::Fcm,
            400,
            "<HTML><BODY>UnauthorizedRegistration</BODY></HTML>",
        );
        assert_eq!(r.outcome, Outcome::ConfigError);
        assert_eq!(c(Vendor::Wns, 401, "").outcome, Outcome::ConfigError);
        assert_eq!(c(Vendor::Wns, 403, "").outcome, Outcome::ConfigError);
        assert_eq!(c(Vendor::Other, 401, "").outcome, Outcome::ConfigError);
    }

    #[test]
    fn rate_limited_with_retry_after() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut h = HeaderMap::new();
        h.insert("retry-after", "120".parse().unwrap());
        let r = classify(Vendor::Fcm, 429, &h, "", now);
        assert_eq!(
            r.outcome,
            Outcome::RateLimited {
                retry_after: Some(Duration::from_secs(120))
            }
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(90));
        h.insert("retry-after", date.parse().unwrap());
        assert_eq!(
            classify(Vendor::Apple, 429, &h, "", now).outcome,
            Outcome::RateLimited {
                retry_after: Some(Duration::from_secs(90))
            }
        );
        // WNS throttling is 406.
        assert_eq!(
            classify(Vendor::Wns, 406, &h, "", now).outcome,
            Outcome::RateLimited {
                retry_after: Some(Duration::from_secs(90))
            }
        );
        assert_eq!(c(Vendor::Fcm, 406, "").outcome, Outcome::Failed);
        h.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(
            classify(Vendor::Other, 429, &h, "", now).outcome,
            Outcome::RateLimited { retry_after: None }
        );
        assert_eq!(
            c(Vendor::Other, 429, "").outcome,
            Outcome::RateLimited { retry_after: None }
        );
    }

    #[test]
    fn retry_after_parsing() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("0", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after(" 30 ", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("1.5", now), None);
        assert_eq!(parse_retry_after("", now), None);
        assert_eq!(parse_retry_after("99999999999999999999999", now), None);
        let past = httpdate::fmt_http_date(now - Duration::from_secs(60));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", UNIX_EPOCH_PLUS(1445412470)),
            Some(Duration::from_secs(10))
        );
    }

    #[allow(non_snake_case)]
    fn UNIX_EPOCH_PLUS(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn retry_on_5xx() {
        for s in [500, 502, 503, 504, 599] {
            assert_eq!(
                c(Vendor::Fcm, s, "").outcome,
                Outcome::Retry { after: None }
            );
        }
    }

    #[test]
    fn permanent_failures() {
        let r = c(
            Vendor::Mozilla,
            413,
            r#"{"code":413,"errno":104,"error":"Payload Too Large","message":"Message too big"}"#,
        );
        assert_eq!(r.outcome, Outcome::Failed);
        assert_eq!(r.reason, "413 Payload Too Large: Message too big");
        for s in [400, 405, 408, 411, 415, 499, 100, 301, 600, 0, 65535] {
            assert_eq!(c(Vendor::Other, s, "").outcome, Outcome::Failed, "{s}");
        }
        assert_eq!(c(Vendor::Other, 799, "").reason, "799");
    }

    #[test]
    fn reason_excerpt_is_short_and_clean() {
        let body = format!("line1\n\x1b[31m{}", "x".repeat(5000));
        let r = c(Vendor::Fcm, 400, &body);
        assert!(
            r.reason.starts_with("400 Bad Request: line1 [31mxxx"),
            "{}",
            r.reason
        );
        assert!(r.reason.chars().count() <= "400 Bad Request: ".len() + MAX_REASON_EXCERPT + 1);
        assert!(!r.reason.chars().any(char::is_control));
        // Google-style JSON error.
        let r = c(
            Vendor::Fcm,
            400,
            r#"{"error":{"code":400,"message":"Bad things"}}"#,
        );
        assert_eq!(r.reason, "400 Bad Request: Bad things");
    }

    #[test]
    fn transport_errors() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let client = reqwest::Client::new();
        let err = client.get("http://[bad").build().unwrap_err();
        let r = classify_transport_error(&err);
        assert_eq!((r.outcome, r.status), (Outcome::Failed, None));
        assert!(r.reason.starts_with("invalid request"), "{}", r.reason);

        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let err = rt
            .block_on(client.post(format!("http://127.0.0.1:{port}/x")).send())
            .unwrap_err();
        let r = classify_transport_error(&err);
        assert_eq!(
            (r.outcome, r.status),
            (Outcome::Retry { after: None }, None)
        );
        assert!(r.reason.starts_with("connection failed"), "{}", r.reason);
        assert!(!r.reason.contains("/x"), "{}", r.reason);

        // A server that accepts and never answers: timeout.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let slow = reqwest::Client::builder()
            .timeout(Duration::from_millis(200))
            .build()
            .unwrap();
        let err = rt
            .block_on(slow.post(format!("http://{addr}/x")).send())
            .unwrap_err();
        let r = classify_transport_error(&err);
        assert_eq!(r.outcome, Outcome::Retry { after: None });
        assert!(r.reason.starts_with("timeout"), "{}", r.reason);
        drop(l);
    }
}
