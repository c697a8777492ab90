//! Herald's VAPID `Authorization` header, checked by verifiers that share no
//! code with the signing path: `jsonwebtoken` (from the x/y components of
//! `k`) and aws-lc-rs `UnparsedPublicKey` over the raw JWS signing input.
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use herald::webpush::vapid::{REFRESH_MARGIN, TOKEN_LIFETIME};
use herald::webpush::{
    ece, request, AllowedHosts, AuthSecret, Contact, ContentEncoding, Endpoint, P256dh,
    PushOptions, VapidKey, VapidSigner,
};
use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, serde::Deserialize)]
struct Claims {
    aud: String,
    exp: u64,
    sub: Option<String>,
}

/// Split `vapid t=<jwt>, k=<key>` the way a push service does.
fn parse_header(h: &str) -> (String, String) {
    let rest = h.strip_prefix("vapid ").expect("scheme must be `vapid`");
    let mut t = None;
    let mut k = None;
    for part in rest.split(',') {
        let (name, value) = part.trim().split_once('=').unwrap();
        match name {
            "t" => t = Some(value.to_string()),
            "k" => k = Some(value.to_string()),
            other => panic!("unexpected parameter {other}"),
        }
    }
    (t.unwrap(), k.unwrap())
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Verify with jsonwebtoken, from the key's x and y coordinates.
fn verify_jsonwebtoken(jwt: &str, k: &str, aud: &str) -> Claims {
    let point = URL_SAFE_NO_PAD.decode(k).unwrap();
    assert_eq!(point.len(), 65);
    assert_eq!(point[0], 4);
    let key = jsonwebtoken::DecodingKey::from_ec_components(
        &URL_SAFE_NO_PAD.encode(&point[1..33]),
        &URL_SAFE_NO_PAD.encode(&point[33..65]),
    )
    .unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_audience(&[aud]);
    v.set_required_spec_claims(&["exp", "aud"]);
    v.leeway = 0;
    let header = jsonwebtoken::decode_header(jwt).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    jsonwebtoken::decode::<Claims>(jwt, &key, &v)
        .unwrap()
        .claims
}

/// Verify the raw JWS: signing input = header.payload, signature = r ‖ s.
fn verify_raw(jwt: &str, k: &str) -> bool {
    let Some((input, sig)) = jwt.rsplit_once('.') else {
        return false;
    };
    let Ok(sig) = URL_SAFE_NO_PAD.decode(sig) else {
        return false;
    };
    let Ok(point) = URL_SAFE_NO_PAD.decode(k) else {
        return false;
    };
    sig.len() == 64
        && aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
            point,
        )
        .verify(input.as_bytes(), &sig)
        .is_ok()
}

fn endpoint(url: &str) -> Endpoint {
    Endpoint::parse(url, &AllowedHosts::with_extra(["localhost"])).unwrap()
}

#[test]
fn header_verifies_independently_with_the_right_claims() {
    let key = VapidKey::generate().unwrap();
    let public = key.public_key_base64();
    let signer = VapidSigner::new(key, Some(Contact::parse("mailto:ops@example.com").unwrap()));
    for (url, aud) in [
        (
            "https://fcm.googleapis.com/fcm/send/abc",
            "https://fcm.googleapis.com",
        ),
        (
            "https://web.push.apple.com/QGx",
            "https://web.push.apple.com",
        ),
        ("https://localhost:8443/push/1", "https://localhost:8443"),
    ] {
        let before = now_secs();
        let h = signer.authorization(&endpoint(url)).unwrap();
        let (t, k) = parse_header(&h);
        assert_eq!(k, public);
        assert_eq!(k, signer.public_key_base64());
        let claims = verify_jsonwebtoken(&t, &k, aud);
        assert_eq!(claims.aud, aud);
        assert_eq!(claims.sub.as_deref(), Some("mailto:ops@example.com"));
        let after = now_secs();
        assert!(claims.exp > after, "already expired");
        assert!(
            claims.exp <= after + 24 * 3600,
            "push services refuse exp over 24h"
        );
        assert!(
            claims.exp >= before + 12 * 3600 && claims.exp <= after + 12 * 3600,
            "exp must be now + 12h"
        );
        assert!(verify_raw(&t, &k));
    }
}

#[test]
fn verifiers_reject_tampering_and_the_wrong_key() {
    let signer = VapidSigner::new(VapidKey::generate().unwrap(), None);
    let h = signer
        .authorization(&endpoint("https://fcm.googleapis.com/fcm/send/x"))
        .unwrap();
    let (t, k) = parse_header(&h);
    assert!(verify_raw(&t, &k));
    let other = VapidKey::generate().unwrap().public_key_base64();
    assert!(
        !verify_raw(&t, &other),
        "signature must not verify under another key"
    );
    // Change the audience in the payload, keep the signature.
    let mut parts: Vec<&str> = t.split('.').collect();
    let forged = URL_SAFE_NO_PAD.encode(br#"{"aud":"https://evil.example","exp":9999999999}"#);
    parts[1] = &forged;
    assert!(!verify_raw(&parts.join("."), &k));
    // No contact configured: no sub claim at all.
    let payload = URL_SAFE_NO_PAD
        .decode(t.split('.').nth(1).unwrap())
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert!(v.get("sub").is_none(), "{v}");
    assert_eq!(v["aud"], "https://fcm.googleapis.com");
}

#[test]
fn ten_thousand_messages_to_one_origin_sign_once() {
    let signer = VapidSigner::new(VapidKey::generate().unwrap(), None);
    let first = signer
        .authorization(&endpoint("https://fcm.googleapis.com/fcm/send/0"))
        .unwrap();
    for i in 0..10_000 {
        let h = signer
            .authorization(&endpoint(&format!(
                "https://fcm.googleapis.com/fcm/send/{i}"
            )))
            .unwrap();
        assert!(Arc::ptr_eq(&first, &h), "re-signed at message {i}");
    }
}

#[test]
fn cache_is_shared_across_threads() {
    let signer = Arc::new(VapidSigner::new(VapidKey::generate().unwrap(), None));
    let ep = endpoint("https://updates.push.services.mozilla.com/wpush/v2/x");
    let headers: Vec<Arc<str>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|_| s.spawn(|| signer.authorization(&ep).unwrap()))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        headers.iter().all(|h| Arc::ptr_eq(h, &headers[0])),
        "concurrent misses must sign once"
    );
}

#[test]
fn resigns_near_expiry_and_not_before() {
    let start = 1_800_000_000u64;
    let t = Arc::new(AtomicU64::new(start));
    let clock_t = t.clone();
    let clock = Arc::new(move || UNIX_EPOCH + Duration::from_secs(clock_t.load(Ordering::SeqCst)));
    let signer = VapidSigner::with_clock(VapidKey::generate().unwrap(), None, clock);
    let ep = endpoint("https://fcm.googleapis.com/fcm/send/x");
    let exp_of = |h: &str| {
        let (t, _) = parse_header(h);
        let payload = URL_SAFE_NO_PAD
            .decode(t.split('.').nth(1).unwrap())
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&payload).unwrap()["exp"]
            .as_u64()
            .unwrap()
    };
    let h1 = signer.authorization(&ep).unwrap();
    assert_eq!(exp_of(&h1), start + TOKEN_LIFETIME.as_secs());
    assert_eq!(TOKEN_LIFETIME, Duration::from_secs(12 * 3600));
    // Throughout the token's useful life: the same header.
    let refresh_at = start + TOKEN_LIFETIME.as_secs() - REFRESH_MARGIN.as_secs();
    for at in [start + 1, start + 3600, refresh_at - 1] {
        t.store(at, Ordering::SeqCst);
        assert!(
            Arc::ptr_eq(&h1, &signer.authorization(&ep).unwrap()),
            "re-signed too early at +{}s",
            at - start
        );
    }
    // Within the margin of expiry: a new token, expiring 12h from now.
    t.store(refresh_at, Ordering::SeqCst);
    let h2 = signer.authorization(&ep).unwrap();
    assert!(!Arc::ptr_eq(&h1, &h2));
    assert_eq!(exp_of(&h2), refresh_at + TOKEN_LIFETIME.as_secs());
    // REFRESH_MARGIN is about an hour.
    assert!(
        REFRESH_MARGIN >= Duration::from_secs(30 * 60)
            && REFRESH_MARGIN <= Duration::from_secs(2 * 3600)
    );
}

#[test]
fn aesgcm_request_announces_the_vapid_key_in_crypto_key() {
    let key = VapidKey::generate().unwrap();
    let ua = VapidKey::generate().unwrap();
    let signer = VapidSigner::new(key, None);
    let ep = endpoint("https://fcm.googleapis.com/fcm/send/x");
    let auth = signer.authorization(&ep).unwrap();
    let e = ece::encrypt(
        &P256dh(*ua.public_key()),
        &AuthSecret([3; 16]),
        b"x",
        ContentEncoding::Aesgcm,
    )
    .unwrap();
    let req = request::build(
        &reqwest::Client::new(),
        &ep,
        e,
        &PushOptions::default(),
        &auth,
        &signer.public_key_base64(),
    )
    .build()
    .unwrap();
    let (t, k) = parse_header(req.headers()["authorization"].to_str().unwrap());
    assert!(verify_raw(&t, &k));
    let ck = req.headers()["crypto-key"].to_str().unwrap();
    assert!(ck.starts_with("dh="), "{ck}");
    assert!(ck.ends_with(&format!(";p256ecdsa={k}")), "{ck}");
}
