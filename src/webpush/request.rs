//! RFC 8030 request building: the POST that carries one encrypted message to
//! the push service.
//!
//! Headers Herald always sends:
//! - `TTL` (RFC 8030 §5.2): mandatory. [`Ttl::default`] is 24 h; values are
//!   clamped to 28 days (the longest any vendor keeps a message).
//!   [`Ttl::new(0)`](Ttl::new) does give 0 ("deliver now or drop"), because a
//!   caller asked for exactly that; nothing defaults to 0, since WNS refuses
//!   it and other services treat it as "drop if the device is offline".
//! - `Urgency` (RFC 8030 §5.3): sent even when `normal`, as the common
//!   web-push libraries do; an absent header means the same thing, so this
//!   only makes requests explicit in logs and captures.
//! - `Content-Encoding`, `Content-Type: application/octet-stream`.
//! - `Authorization`: the VAPID `vapid t=<JWT>, k=<key>` form for both
//!   codings. For `aesgcm`, the VAPID key is *also* announced as
//!   `p256ecdsa=<key>` in `Crypto-Key`, next to the `dh=` of the encryption,
//!   which is what older push-service deployments of that era look for.
//!
//! Sent when applicable: `Topic` (RFC 8030 §5.4) as a fixed 32-character
//! digest of the caller's key ([`TopicKey`]), and for `aesgcm` the
//! `Encryption: salt=...` header.
use super::{ece::ContentEncoding, ece::Encrypted, subscription::Endpoint};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttl(u32);
impl Ttl {
    pub const MAX: u32 = 28 * 24 * 3600;
    /// Clamps to 28 days. 0 is refused by WNS, so callers must not default to it.
    /// `Ttl::new(0)` is kept as 0: an explicit "deliver now or drop".
    pub fn new(secs: u64) -> Self {
        Ttl(secs.min(Self::MAX as u64) as u32)
    }
    pub fn seconds(self) -> u32 {
        self.0
    }
    pub fn as_duration(self) -> Duration {
        Duration::from_secs(self.0 as u64)
    }
}
impl Default for Ttl {
    fn default() -> Self {
        Ttl(24 * 3600)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Urgency {
    VeryLow,
    Low,
    #[default]
    Normal,
    High,
}
impl Urgency {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::VeryLow => "very-low",
            Self::Low => "low",
            Self::Normal => "normal",
            Self::High => "high",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "very-low" => Some(Self::VeryLow),
            "low" => Some(Self::Low),
            "normal" => Some(Self::Normal),
            "high" => Some(Self::High),
            _ => None,
        }
    }
}

/// A caller's replace key. Sent as a fixed-length 32-char URL-safe digest.
///
/// RFC 8030 limits `Topic` to 32 characters of the base64url alphabet; the
/// caller's key can be anything, so it is hashed: base64url of the first 24
/// bytes of SHA-256(key), exactly 32 characters. The same key always maps to
/// the same topic, and the push service never sees the caller's key itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicKey(String);
impl TopicKey {
    pub fn new(key: &str) -> Self {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.as_bytes());
        TopicKey(URL_SAFE_NO_PAD.encode(&d.as_ref()[..24]))
    }
    /// The 32-char header value.
    pub fn header_value(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    pub ttl: Ttl,
    pub urgency: Urgency,
    pub topic: Option<TopicKey>,
}

/// Build the POST to the push service. `authorization` is from `VapidSigner::authorization`;
/// for aesgcm the VAPID key is also appended to Crypto-Key as `p256ecdsa=` by this function.
pub fn build(
    client: &reqwest::Client,
    endpoint: &Endpoint,
    encrypted: Encrypted,
    opts: &PushOptions,
    authorization: &str,
    vapid_public_key_b64: &str,
) -> reqwest::RequestBuilder {
    let mut req = client
        .post(endpoint.url().clone())
        .header("TTL", opts.ttl.seconds())
        .header("Urgency", opts.urgency.as_str())
        .header(
            reqwest::header::CONTENT_ENCODING,
            encrypted.encoding.as_str(),
        )
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .header(reqwest::header::AUTHORIZATION, authorization);
    if let Some(topic) = &opts.topic {
        req = req.header("Topic", topic.header_value());
    }
    if encrypted.encoding == ContentEncoding::Aesgcm {
        if let Some(enc) = &encrypted.encryption_header {
            req = req.header("Encryption", enc.as_str());
        }
        let crypto_key = match &encrypted.crypto_key_header {
            Some(dh) => format!("{dh};p256ecdsa={vapid_public_key_b64}"),
            None => format!("p256ecdsa={vapid_public_key_b64}"),
        };
        req = req.header("Crypto-Key", crypto_key);
    }
    req.body(encrypted.body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webpush::{
        ece,
        keys::VapidKey,
        subscription::{AllowedHosts, AuthSecret, P256dh},
    };

    #[test]
    fn ttl_clamps_and_keeps_explicit_zero() {
        assert_eq!(Ttl::default().seconds(), 86_400);
        assert_eq!(Ttl::new(0).seconds(), 0);
        assert_eq!(Ttl::new(60).seconds(), 60);
        assert_eq!(Ttl::new(u64::MAX).seconds(), Ttl::MAX);
        assert_eq!(Ttl::new(Ttl::MAX as u64 + 1).seconds(), Ttl::MAX);
    }

    #[test]
    fn topic_is_32_url_safe_chars_and_stable() {
        for k in ["", "a", "chat-42", &"x".repeat(10_000), "ünïcødé / + ="] {
            let t = TopicKey::new(k);
            assert_eq!(t.header_value().len(), 32);
            assert!(t
                .header_value()
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            assert_eq!(t, TopicKey::new(k));
        }
        assert_ne!(TopicKey::new("a"), TopicKey::new("b"));
    }

    fn sub() -> (P256dh, AuthSecret) {
        let k = VapidKey::generate().unwrap();
        (P256dh(*k.public_key()), AuthSecret([1; 16]))
    }

    #[test]
    fn aes128gcm_request_headers() {
        let (p, a) = sub();
        let e = ece::encrypt(&p, &a, b"hi", ContentEncoding::Aes128gcm).unwrap();
        let body_len = e.body.len();
        let ep = Endpoint::parse(
            "https://fcm.googleapis.com/fcm/send/x",
            &AllowedHosts::vendors(),
        )
        .unwrap();
        let opts = PushOptions {
            ttl: Ttl::new(90),
            urgency: Urgency::High,
            topic: Some(TopicKey::new("t")),
        };
        let r = build(
            &reqwest::Client::new(),
            &ep,
            e,
            &opts,
            "vapid t=a.b.c, k=K",
            "K",
        )
        .build()
        .unwrap();
        assert_eq!(r.method(), reqwest::Method::POST);
        assert_eq!(r.url().as_str(), "https://fcm.googleapis.com/fcm/send/x");
        let h = r.headers();
        assert_eq!(h["ttl"], "90");
        assert_eq!(h["urgency"], "high");
        assert_eq!(h["topic"], TopicKey::new("t").header_value());
        assert_eq!(h["content-encoding"], "aes128gcm");
        assert_eq!(h["content-type"], "application/octet-stream");
        assert_eq!(h["authorization"], "vapid t=a.b.c, k=K");
        assert!(h.get("crypto-key").is_none() && h.get("encryption").is_none());
        assert_eq!(
            r.body().and_then(|b| b.as_bytes()).map(<[u8]>::len),
            Some(body_len)
        );
    }

    #[test]
    fn aesgcm_request_headers() {
        let (p, a) = sub();
        let e = ece::encrypt(&p, &a, b"hi", ContentEncoding::Aesgcm).unwrap();
        let dh = e.crypto_key_header.clone().unwrap();
        let salt = e.encryption_header.clone().unwrap();
        let ep = Endpoint::parse(
            "https://fcm.googleapis.com/fcm/send/x",
            &AllowedHosts::vendors(),
        )
        .unwrap();
        let r = build(
            &reqwest::Client::new(),
            &ep,
            e,
            &PushOptions::default(),
            "vapid t=a.b.c, k=K",
            "K",
        )
        .build()
        .unwrap();
        let h = r.headers();
        assert_eq!(h["ttl"], "86400");
        assert_eq!(h["urgency"], "normal");
        assert!(h.get("topic").is_none());
        assert_eq!(h["content-encoding"], "aesgcm");
        assert_eq!(h["encryption"], salt.as_str());
        assert_eq!(h["crypto-key"], format!("{dh};p256ecdsa=K").as_str());
        assert!(salt.starts_with("salt=") && dh.starts_with("dh="));
    }
}
