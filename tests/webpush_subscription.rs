//! `PushSubscription.toJSON()` as browsers send it, and each way Herald
//! refuses one: the error names the field at fault and says what is wrong.
use base64::{
    engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD},
    Engine,
};
use herald::webpush::{AllowedHosts, Subscription, SubscriptionError, SubscriptionJson, VapidKey};
use serde_json::json;

fn p256dh() -> [u8; 65] {
    *VapidKey::generate().unwrap().public_key()
}

fn parse(v: serde_json::Value) -> Result<Subscription, SubscriptionError> {
    let json: SubscriptionJson = serde_json::from_value(v).unwrap();
    Subscription::parse(&json, &AllowedHosts::with_extra(["localhost"]))
}

fn sub(endpoint: &str, p256dh: &str, auth: &str) -> serde_json::Value {
    json!({"endpoint": endpoint, "expirationTime": null, "keys": {"p256dh": p256dh, "auth": auth}})
}

#[test]
fn browser_shapes_are_accepted() {
    let key = p256dh();
    let auth = [0xABu8; 16];
    // Chrome/Firefox: unpadded base64url; some libraries pad, some use the standard alphabet.
    for (p, a) in [
        (URL_SAFE_NO_PAD.encode(key), URL_SAFE_NO_PAD.encode(auth)),
        (URL_SAFE.encode(key), URL_SAFE.encode(auth)),
        (STANDARD.encode(key), STANDARD.encode(auth)),
    ] {
        let s = parse(sub(
            "https://fcm.googleapis.com/fcm/send/dQw4:APA91b",
            &p,
            &a,
        ))
        .unwrap();
        assert_eq!(s.p256dh.0, key);
        assert_eq!(s.auth.0, auth);
        assert_eq!(s.expiration_time, None);
        assert_eq!(s.endpoint.origin(), "https://fcm.googleapis.com");
    }
    let with_exp = json!({
        "endpoint": "https://updates.push.services.mozilla.com/wpush/v2/gAAAA",
        "expirationTime": 1_900_000_000_000u64,
        "keys": {"p256dh": URL_SAFE_NO_PAD.encode(key), "auth": URL_SAFE_NO_PAD.encode(auth)},
    });
    assert_eq!(
        parse(with_exp).unwrap().expiration_time,
        Some(1_900_000_000_000)
    );
    // expirationTime may be absent entirely.
    let no_exp = json!({"endpoint": "https://web.push.apple.com/QG", "keys": {"p256dh": URL_SAFE_NO_PAD.encode(key), "auth": URL_SAFE_NO_PAD.encode(auth)}});
    assert!(parse(no_exp).is_ok());
}

#[test]
fn legacy_gcm_endpoint_is_rewritten_to_fcm() {
    let s = parse(sub(
        "https://android.googleapis.com/gcm/send/X",
        &URL_SAFE_NO_PAD.encode(p256dh()),
        &URL_SAFE_NO_PAD.encode([1u8; 16]),
    ))
    .unwrap();
    assert_eq!(s.endpoint.as_str(), "https://fcm.googleapis.com/fcm/send/X");
}

#[test]
fn each_rejection_names_its_field_and_reason() {
    let good_p = URL_SAFE_NO_PAD.encode(p256dh());
    let good_a = URL_SAFE_NO_PAD.encode([1u8; 16]);
    let mut off_curve = p256dh();
    off_curve[64] ^= 1;
    let mut compressed = vec![0x02];
    compressed.extend_from_slice(&p256dh()[1..33]);
    let cases: Vec<(serde_json::Value, SubscriptionError, &str, &str)> = vec![
        (
            sub("http://fcm.googleapis.com/fcm/send/x", &good_p, &good_a),
            SubscriptionError::EndpointNotHttps,
            "endpoint",
            "endpoint must be an absolute https URL",
        ),
        (
            sub("fcm.googleapis.com/fcm/send/x", &good_p, &good_a),
            SubscriptionError::EndpointNotHttps,
            "endpoint",
            "endpoint must be an absolute https URL",
        ),
        (
            sub("https://exa mple.com/x", &good_p, &good_a),
            SubscriptionError::EndpointInvalid,
            "endpoint",
            "endpoint is not a valid URL",
        ),
        (
            sub("https://push.evil.example/x", &good_p, &good_a),
            SubscriptionError::HostNotAllowed("push.evil.example".into()),
            "endpoint",
            "endpoint host push.evil.example is not an allowed push service",
        ),
        (
            sub(
                "https://u:p@fcm.googleapis.com/fcm/send/x",
                &good_p,
                &good_a,
            ),
            SubscriptionError::EndpointHasCredentials,
            "endpoint",
            "endpoint must not contain a user name or password",
        ),
        (
            sub(
                &format!("https://fcm.googleapis.com/fcm/send/{}", "a".repeat(1000)),
                &good_p,
                &good_a,
            ),
            SubscriptionError::EndpointTooLong,
            "endpoint",
            "endpoint must be at most 1024 characters",
        ),
        (
            sub(
                "https://fcm.googleapis.com/x",
                &URL_SAFE_NO_PAD.encode(off_curve),
                &good_a,
            ),
            SubscriptionError::P256dhInvalid,
            "keys.p256dh",
            "on the curve",
        ),
        (
            sub(
                "https://fcm.googleapis.com/x",
                &URL_SAFE_NO_PAD.encode(&compressed),
                &good_a,
            ),
            SubscriptionError::P256dhInvalid,
            "keys.p256dh",
            "uncompressed",
        ),
        (
            sub("https://fcm.googleapis.com/x", "not base64!", &good_a),
            SubscriptionError::P256dhInvalid,
            "keys.p256dh",
            "base64url",
        ),
        (
            sub(
                "https://fcm.googleapis.com/x",
                &good_p,
                &URL_SAFE_NO_PAD.encode([1u8; 15]),
            ),
            SubscriptionError::AuthInvalid,
            "keys.auth",
            "exactly 16 bytes",
        ),
        (
            sub(
                "https://fcm.googleapis.com/x",
                &good_p,
                &URL_SAFE_NO_PAD.encode([1u8; 17]),
            ),
            SubscriptionError::AuthInvalid,
            "keys.auth",
            "exactly 16 bytes",
        ),
        (
            sub("https://fcm.googleapis.com/x", &good_p, ""),
            SubscriptionError::AuthInvalid,
            "keys.auth",
            "exactly 16 bytes",
        ),
    ];
    for (json, want, field, msg) in cases {
        let err = parse(json.clone()).unwrap_err();
        assert_eq!(err, want, "{json}");
        assert_eq!(err.field(), field, "{json}");
        assert!(err.to_string().contains(msg), "{json}: {err}");
    }
}

#[test]
fn extra_hosts_allow_any_port_unless_one_is_given() {
    let key = URL_SAFE_NO_PAD.encode(p256dh());
    let auth = URL_SAFE_NO_PAD.encode([1u8; 16]);
    let allowed = AllowedHosts::with_extra([
        "127.0.0.1",
        "LocalHost",
        "relay.example.org:9443",
        "*.corp.example",
    ]);
    let ok = |url: &str| {
        let json: SubscriptionJson = serde_json::from_value(sub(url, &key, &auth)).unwrap();
        Subscription::parse(&json, &allowed)
    };
    assert!(ok("https://127.0.0.1:40000/p").is_ok());
    assert!(ok("https://localhost:1/p").is_ok());
    assert!(ok("https://relay.example.org:9443/p").is_ok());
    assert_eq!(
        ok("https://relay.example.org/p").unwrap_err(),
        SubscriptionError::HostNotAllowed("relay.example.org".into())
    );
    assert!(ok("https://a.corp.example/p").is_ok());
    assert!(ok("https://corp.example/p").is_err());
    // Not on the default list: the legacy vendor hosts are, arbitrary ones not.
    assert!(Subscription::parse(
        &serde_json::from_value(sub("https://localhost:1/p", &key, &auth)).unwrap(),
        &AllowedHosts::vendors()
    )
    .is_err());
}
