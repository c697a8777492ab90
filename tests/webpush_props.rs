//! Property tests: every parser and classifier in the protocol core takes
//! arbitrary input without panicking, and the round-trip properties hold.
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use herald::webpush::{
    ece::{self, ContentEncoding},
    keys::parse_public_key,
    subscription::{SubscriptionJson, SubscriptionKeysJson},
    vendor::{self, parse_retry_after, Outcome},
    AllowedHosts, AuthSecret, Contact, Endpoint, P256dh, Subscription, TopicKey, VapidKey, Vendor,
};
use proptest::prelude::*;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn allowed() -> AllowedHosts {
    AllowedHosts::with_extra(["localhost", "*.example.net", "push.example.com:8443"])
}

/// Strings that look roughly like what each parser expects, plus noise.
fn urlish() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z]{0,6}://[a-zA-Z0-9.:@\\[\\]_-]{0,40}(/[ -~]{0,60})?",
        "https://(fcm\\.googleapis\\.com|localhost|[a-z]{1,5}\\.example\\.net|android\\.googleapis\\.com)(:[0-9]{1,6})?/[ -~]{0,80}",
    ]
}

fn b64ish() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[A-Za-z0-9+/_=-]{0,120}",
        proptest::collection::vec(any::<u8>(), 0..80).prop_map(|b| URL_SAFE_NO_PAD.encode(b))
    ]
}

fn ua_key() -> &'static (Vec<u8>, P256dh) {
    static K: OnceLock<(Vec<u8>, P256dh)> = OnceLock::new();
    K.get_or_init(|| {
        let k =
            aws_lc_rs::agreement::PrivateKey::generate(&aws_lc_rs::agreement::ECDH_P256).unwrap();
        use aws_lc_rs::encoding::{AsBigEndian, EcPrivateKeyBin};
        let raw: EcPrivateKeyBin<'_> = k.as_be_bytes().unwrap();
        let public = k.compute_public_key().unwrap();
        (
            raw.as_ref().to_vec(),
            P256dh(public.as_ref().try_into().unwrap()),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn endpoint_parse_never_panics_and_holds_invariants(s in urlish()) {
        if let Ok(e) = Endpoint::parse(&s, &allowed()) {
            prop_assert!(e.as_str().starts_with("https://"));
            prop_assert!(e.as_str().len() <= 1024);
            prop_assert!(e.as_str().starts_with(e.origin()));
            prop_assert!(e.origin().contains(e.host()));
            prop_assert!(allowed().allows(&e.origin()["https://".len()..]));
            prop_assert!(!e.origin().ends_with(":443"));
            // Parsing is idempotent.
            let again = Endpoint::parse(e.as_str(), &allowed());
            prop_assert_eq!(again.as_ref(), Ok(&e));
        }
    }

    #[test]
    fn allowed_hosts_never_panic(patterns in proptest::collection::vec(any::<String>(), 0..4), host in any::<String>()) {
        let a = AllowedHosts::with_extra(&patterns);
        let _ = a.allows(&host);
    }

    #[test]
    fn key_parsers_never_panic(s in b64ish()) {
        if let Ok(p) = P256dh::parse(&s) { prop_assert_eq!(p.0[0], 4); }
        if let Ok(a) = AuthSecret::parse(&s) { prop_assert_eq!(a.0.len(), 16); }
        if let Ok(k) = parse_public_key(&s) { prop_assert_eq!(P256dh::parse(&s).map(|p| p.0), Ok(k)); }
    }

    #[test]
    fn random_65_byte_points_are_almost_never_on_the_curve(x in proptest::array::uniform32(any::<u8>()), y in proptest::array::uniform32(any::<u8>())) {
        // A random (x, y) is on P-256 with negligible probability: the parser
        // must say no rather than trust the 0x04 prefix.
        let mut point = vec![4u8];
        point.extend_from_slice(&x);
        point.extend_from_slice(&y);
        prop_assert!(P256dh::parse(&URL_SAFE_NO_PAD.encode(&point)).is_err());
    }

    #[test]
    fn subscription_parse_never_panics(endpoint in urlish(), p in b64ish(), a in b64ish(), exp in proptest::option::of(any::<f64>())) {
        let json = SubscriptionJson { endpoint, expiration_time: exp, keys: SubscriptionKeysJson { p256dh: p, auth: a } };
        match Subscription::parse(&json, &allowed()) {
            Ok(_) => {}
            Err(e) => prop_assert!(["endpoint", "keys.p256dh", "keys.auth"].contains(&e.field())),
        }
    }

    #[test]
    fn subscription_json_from_arbitrary_text_never_panics(s in any::<String>()) {
        if let Ok(json) = serde_json::from_str::<SubscriptionJson>(&s) {
            let _ = Subscription::parse(&json, &allowed());
        }
    }

    #[test]
    fn contact_parse_never_panics(s in prop_oneof![any::<String>(), "(mailto:|https://|MAILTO:)[ -~]{0,40}"]) {
        if let Ok(c) = Contact::parse(&s) {
            prop_assert!(c.as_str().starts_with("mailto:") || c.as_str().starts_with("https:"));
            prop_assert!(!c.as_str().contains(' ') && !c.as_str().contains('<'));
        }
    }

    #[test]
    fn classify_never_panics(
        vendor in prop_oneof![Just(Vendor::Fcm), Just(Vendor::Apple), Just(Vendor::Mozilla), Just(Vendor::Wns), Just(Vendor::Other)],
        status in any::<u16>(),
        body in prop_oneof![any::<String>(), "\\{\"(reason|message|error)\":\"[ -~]{0,300}\"\\}"],
        retry_after in proptest::option::of(prop_oneof![any::<String>(), "[0-9]{1,25}"]),
        now_secs in any::<u32>(),
    ) {
        let mut h = reqwest::header::HeaderMap::new();
        if let Some(v) = retry_after.and_then(|v| reqwest::header::HeaderValue::from_str(&v).ok()) {
            h.insert(reqwest::header::RETRY_AFTER, v);
        }
        let c = vendor::classify(vendor, status, &h, &body, UNIX_EPOCH + Duration::from_secs(now_secs as u64));
        prop_assert_eq!(c.status, Some(status));
        prop_assert!(c.reason.starts_with(&status.to_string()));
        prop_assert!(c.reason.chars().count() <= 40 + vendor::MAX_REASON_EXCERPT);
        prop_assert!(!c.reason.chars().any(char::is_control));
        if (200..300).contains(&status) { prop_assert_eq!(&c.outcome, &Outcome::Delivered); }
        if (500..600).contains(&status) { let retry = matches!(c.outcome, Outcome::Retry { .. }); prop_assert!(retry, "5xx must be a retry: {:?}", c.outcome); }
    }

    #[test]
    fn retry_after_never_panics(s in any::<String>(), now_secs in any::<u64>()) {
        let now = UNIX_EPOCH.checked_add(Duration::from_secs(now_secs)).unwrap_or(UNIX_EPOCH);
        let _ = parse_retry_after(&s, now);
    }

    #[test]
    fn retry_after_seconds_and_dates(secs in 0u64..10_000_000, now_secs in 0u64..4_000_000_000) {
        let now = UNIX_EPOCH + Duration::from_secs(now_secs);
        prop_assert_eq!(parse_retry_after(&secs.to_string(), now), Some(Duration::from_secs(secs)));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(secs));
        prop_assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(secs)));
    }

    #[test]
    fn decrypt_never_panics(
        key in proptest::collection::vec(any::<u8>(), 0..140),
        auth in proptest::collection::vec(any::<u8>(), 0..20),
        body in proptest::collection::vec(any::<u8>(), 0..300),
        enc_h in proptest::option::of(any::<String>()),
        ck_h in proptest::option::of(any::<String>()),
    ) {
        for e in [ContentEncoding::Aes128gcm, ContentEncoding::Aesgcm] {
            let _ = ece::decrypt(&key, &auth, &body, e, enc_h.as_deref(), ck_h.as_deref());
        }
    }

    #[test]
    fn decrypt_never_panics_on_mutated_real_bodies(
        msg in proptest::collection::vec(any::<u8>(), 0..200),
        aesgcm in any::<bool>(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        cut in proptest::option::of(any::<usize>()),
    ) {
        let (raw, p256dh) = ua_key();
        let enc = if aesgcm { ContentEncoding::Aesgcm } else { ContentEncoding::Aes128gcm };
        let e = ece::encrypt(p256dh, &AuthSecret([9; 16]), &msg, enc).unwrap();
        let mut body = e.body.clone();
        let mutated = !flips.is_empty() || cut.is_some();
        for (i, x) in &flips { let n = body.len(); body[i % n] ^= x | 1; }
        if let Some(c) = cut { body.truncate(c % (body.len() + 1)); }
        let out = ece::decrypt(raw, &[9; 16], &body, enc, e.encryption_header.as_deref(), e.crypto_key_header.as_deref());
        if !mutated { prop_assert_eq!(out.as_deref(), Ok(&msg[..])); }
        else if let Ok(o) = out {
            // Only an unauthenticated header field (aes128gcm rs) may change
            // without detection, and then the message is intact.
            prop_assert_eq!(o, msg);
        }
    }

    #[test]
    fn encrypt_roundtrips_any_fitting_payload(msg in proptest::collection::vec(any::<u8>(), 0..4096), aesgcm in any::<bool>()) {
        let (raw, p256dh) = ua_key();
        let enc = if aesgcm { ContentEncoding::Aesgcm } else { ContentEncoding::Aes128gcm };
        match ece::encrypt(p256dh, &AuthSecret([1; 16]), &msg, enc) {
            Ok(e) => {
                prop_assert!(msg.len() <= ece::max_plaintext(enc));
                prop_assert!(e.body.len() <= ece::MAX_BODY);
                let out = ece::decrypt(raw, &[1; 16], &e.body, enc, e.encryption_header.as_deref(), e.crypto_key_header.as_deref());
                prop_assert_eq!(out.as_deref(), Ok(&msg[..]));
            }
            Err(ece::EceError::TooLarge { size, max, .. }) => {
                prop_assert_eq!(size, msg.len());
                prop_assert!(size > max);
            }
            Err(e) => prop_assert!(false, "{e}"),
        }
    }

    #[test]
    fn topic_is_always_32_url_safe(s in any::<String>()) {
        let t = TopicKey::new(&s);
        prop_assert_eq!(t.header_value().len(), 32);
        prop_assert!(t.header_value().bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    }

    #[test]
    fn pkcs8_import_never_panics(der in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = VapidKey::from_pkcs8(&der);
    }
}

#[test]
fn now_is_usable() {
    // A clock before the epoch must not panic the classifier.
    let h = reqwest::header::HeaderMap::new();
    let _ = vendor::classify(Vendor::Other, 429, &h, "", SystemTime::UNIX_EPOCH);
}
