//! Proves the push-service emulator itself works, using only independent
//! tools on the sending side (the `ece` crate to encrypt, jsonwebtoken to sign
//! VAPID, reqwest to send), so later tests can trust its verdicts on Herald.

mod support;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::emulator::{EmuVendor, Emulator, Scripted, Subscriber, MAX_BODY};

const WAIT: Duration = Duration::from_secs(10);

/// An application server's VAPID key, made and used without Herald's code.
struct Vapid {
    key: EncodingKey,
    public_b64: String,
}

impl Vapid {
    fn generate() -> Vapid {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        Vapid {
            key: EncodingKey::from_ec_der(pkcs8.as_ref()),
            public_b64: B64.encode(pair.public_key().as_ref()),
        }
    }

    fn jwt(&self, claims: &Value) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), claims, &self.key).unwrap()
    }

    /// A valid header for this emulator: aud = origin, exp in 12 h.
    fn authorization(&self, emu: &Emulator) -> String {
        self.authorization_with(&json!({ "aud": emu.origin(), "exp": now() + 12 * 3600, "sub": "mailto:ops@example.com" }))
    }

    fn authorization_with(&self, claims: &Value) -> String {
        format!("vapid t={}, k={}", self.jwt(claims), self.public_b64)
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn client(emu: &Emulator) -> reqwest::Client {
    emu.client_builder().build().unwrap()
}

fn client_h1(emu: &Emulator) -> reqwest::Client {
    emu.client_builder().http1_only().build().unwrap()
}

/// POST an aes128gcm push, encrypted with the `ece` crate for `sub`.
async fn push(
    client: &reqwest::Client,
    sub: &Subscriber,
    authorization: &str,
    plaintext: &[u8],
) -> reqwest::Response {
    let body = ece::encrypt(sub.p256dh(), sub.auth(), plaintext).unwrap();
    client
        .post(sub.endpoint())
        .header("TTL", "60")
        .header("Content-Encoding", "aes128gcm")
        .header("Authorization", authorization)
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn valid_push_over_http2_is_decrypted_and_recorded() {
    let emu = Emulator::start().await;
    let vapid = Vapid::generate();
    let sub = emu.subscriber(EmuVendor::Fcm);

    let json = sub.subscription_json();
    assert_eq!(json["endpoint"], sub.endpoint());
    assert!(json["expirationTime"].is_null());
    assert_eq!(
        B64.decode(json["keys"]["p256dh"].as_str().unwrap())
            .unwrap()
            .len(),
        65
    );
    assert_eq!(
        B64.decode(json["keys"]["auth"].as_str().unwrap())
            .unwrap()
            .len(),
        16
    );
    assert!(sub
        .endpoint()
        .starts_with(&format!("https://localhost:{}/fcm/send/", emu.port())));

    let resp = push(
        &client(&emu),
        &sub,
        &vapid.authorization(&emu),
        b"hello from the test",
    )
    .await;
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert!(resp.headers().get("location").is_some());
    assert!(resp.bytes().await.unwrap().is_empty());

    let got = emu.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(r.plaintext.as_deref(), Some(&b"hello from the test"[..]));
    assert_eq!(r.decrypt_error, None);
    assert_eq!(r.refusal, None);
    assert_eq!(r.vendor, Some(EmuVendor::Fcm));
    assert_eq!(r.token, sub.token());
    assert_eq!(r.ttl.as_deref(), Some("60"));
    assert_eq!(r.content_encoding.as_deref(), Some("aes128gcm"));
    assert_eq!(r.http_version, hyper::Version::HTTP_2);
    let claims = r.vapid.as_ref().unwrap();
    assert_eq!(claims.aud, emu.origin());
    assert_eq!(claims.k, vapid.public_b64);
    assert_eq!(claims.sub, "mailto:ops@example.com");
    assert_eq!(emu.received_for(&sub).len(), 1);
}

#[tokio::test]
async fn valid_push_over_http1_for_every_vendor() {
    let emu = Emulator::start().await;
    let vapid = Vapid::generate();
    let client = client_h1(&emu);
    for vendor in EmuVendor::ALL {
        let sub = emu.subscriber(vendor);
        let resp = push(
            &client,
            &sub,
            &vapid.authorization(&emu),
            vendor.as_str().as_bytes(),
        )
        .await;
        assert_eq!(resp.status(), 201, "{vendor:?}");
        assert_eq!(resp.version(), reqwest::Version::HTTP_11);
        match vendor {
            EmuVendor::Apple => assert!(resp.headers().contains_key("apns-id")),
            EmuVendor::Wns => assert_eq!(resp.headers()["x-wns-status"], "received"),
            EmuVendor::Mozilla => assert_eq!(resp.headers()["ttl"], "60"),
            _ => {}
        }
    }
    let got = emu.wait_for(EmuVendor::ALL.len(), WAIT).await;
    for (r, vendor) in got.iter().zip(EmuVendor::ALL) {
        assert_eq!(r.vendor, Some(vendor));
        assert_eq!(r.plaintext_str(), Some(vendor.as_str()));
        assert_eq!(r.http_version, hyper::Version::HTTP_11);
    }
    // The WNS token travels percent-encoded in the query and must match raw.
    assert!(got[3].path.contains("%2b"));
}

#[tokio::test]
async fn legacy_aesgcm_body_is_decrypted() {
    let emu = Emulator::start().await;
    let vapid = Vapid::generate();
    let sub = emu.subscriber(EmuVendor::Mozilla);
    let block = ece::legacy::encrypt_aesgcm(sub.p256dh(), sub.auth(), b"legacy payload").unwrap();
    let vapid_pub = B64.decode(&vapid.public_b64).unwrap();
    let mut req = client(&emu)
        .post(sub.endpoint())
        .header("TTL", "30")
        .header("Content-Encoding", "aesgcm")
        .header("Authorization", vapid.authorization(&emu));
    for (name, value) in block.headers(Some(&vapid_pub)) {
        req = req.header(name, value);
    }
    // ece hands the aesgcm body back base64url-encoded; the wire carries raw bytes.
    let resp = req
        .body(B64.decode(block.body()).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let got = emu.wait_for(1, WAIT).await;
    assert_eq!(got[0].plaintext_str(), Some("legacy payload"));
}

#[tokio::test]
async fn tampered_body_is_refused() {
    let emu = Emulator::start().await;
    let vapid = Vapid::generate();
    let sub = emu.subscriber(EmuVendor::Mozilla);
    let mut body = ece::encrypt(sub.p256dh(), sub.auth(), b"secret").unwrap();
    let last = body.len() - 1;
    body[last] ^= 0x01;
    let resp = client(&emu)
        .post(sub.endpoint())
        .header("TTL", "60")
        .header("Content-Encoding", "aes128gcm")
        .header("Authorization", vapid.authorization(&emu))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["errno"], 110);

    let all = emu.received();
    assert_eq!(all.len(), 1);
    assert!(all[0].decrypt_error.is_some());
    assert!(all[0].plaintext.is_none());
    assert!(!all[0].delivered());

    // Encrypted for another subscriber's key: refused too.
    let other = emu.subscriber(EmuVendor::Mozilla);
    let body = ece::encrypt(other.p256dh(), other.auth(), b"misaddressed").unwrap();
    let resp = client(&emu)
        .post(sub.endpoint())
        .header("TTL", "60")
        .header("Content-Encoding", "aes128gcm")
        .header("Authorization", vapid.authorization(&emu))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn bad_vapid_is_refused_as_each_vendor_does() {
    let emu = Emulator::start().await;
    let signer = Vapid::generate();
    let other = Vapid::generate();
    let client = client(&emu);
    // Signed by one key, presented with another.
    let forged = format!(
        "vapid t={}, k={}",
        signer.jwt(
            &json!({ "aud": emu.origin(), "exp": now() + 3600, "sub": "mailto:ops@example.com" })
        ),
        other.public_b64
    );

    let cases = [
        (EmuVendor::Fcm, 403u16, "invalid JWT"),
        (EmuVendor::Apple, 403, "BadJwtToken"),
        (EmuVendor::Mozilla, 401, "\"errno\":109"),
        (EmuVendor::Wns, 401, ""),
    ];
    for (vendor, status, needle) in cases {
        let sub = emu.subscriber(vendor);
        let resp = push(&client, &sub, &forged, b"x").await;
        assert_eq!(resp.status(), status, "{vendor:?}");
        assert!(resp.text().await.unwrap().contains(needle), "{vendor:?}");
    }
    for r in emu.received() {
        let why = r.vapid.as_ref().unwrap_err();
        assert!(why.contains("signature"), "{why}");
        // The body itself was fine: only VAPID failed.
        assert!(r.plaintext.is_some());
    }

    // Claims that are signed correctly but wrong.
    let sub = emu.subscriber(EmuVendor::Apple);
    let bad_claims = [
        json!({ "aud": "https://fcm.googleapis.com", "exp": now() + 3600, "sub": "mailto:ops@example.com" }),
        json!({ "aud": emu.origin(), "exp": now() + 25 * 3600, "sub": "mailto:ops@example.com" }),
        json!({ "aud": emu.origin(), "exp": now() - 10, "sub": "mailto:ops@example.com" }),
        json!({ "aud": emu.origin(), "exp": now() + 3600 }),
        json!({ "aud": emu.origin(), "exp": now() + 3600, "sub": "mailto: <ops@example.com>" }),
    ];
    for claims in bad_claims {
        let resp = push(&client, &sub, &signer.authorization_with(&claims), b"x").await;
        assert_eq!(resp.status(), 403, "{claims}");
    }
    // No Authorization at all.
    let body = ece::encrypt(sub.p256dh(), sub.auth(), b"x").unwrap();
    let resp = client
        .post(sub.endpoint())
        .header("TTL", "60")
        .header("Content-Encoding", "aes128gcm")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(emu.received().iter().filter(|r| r.delivered()).count(), 0);
}

#[tokio::test]
async fn expected_vapid_key_mismatch_gets_vendor_answer() {
    let emu = Emulator::start().await;
    let registered = Vapid::generate();
    let sender = Vapid::generate();
    emu.set_expected_vapid_key(Some(registered.public_b64.clone()));
    let client = client(&emu);

    let fcm = emu.subscriber(EmuVendor::Fcm);
    let resp = push(&client, &fcm, &sender.authorization(&emu), b"x").await;
    assert_eq!(resp.status(), 403);
    assert!(resp
        .text()
        .await
        .unwrap()
        .contains("do not correspond to the credentials used to create the subscriptions"));

    let apple = emu.subscriber(EmuVendor::Apple);
    let resp = push(&client, &apple, &sender.authorization(&emu), b"x").await;
    assert_eq!(resp.status(), 400);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["reason"],
        "VapidPkHashMismatch"
    );

    let moz = emu.subscriber(EmuVendor::Mozilla);
    let resp = push(&client, &moz, &sender.authorization(&emu), b"x").await;
    assert_eq!(resp.status(), 401);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        (v["errno"].as_u64(), v["message"].as_str()),
        (Some(109), Some("VAPID public key mismatch"))
    );

    // The registered key still works.
    let resp = push(&client, &fcm, &registered.authorization(&emu), b"ok").await;
    assert_eq!(resp.status(), 201);
}

#[tokio::test]
async fn scripted_answers_are_served_in_order_then_default() {
    let emu = Emulator::start().await;
    let vapid = Vapid::generate();
    let sub = emu.subscriber(EmuVendor::Mozilla);
    emu.script(
        &sub,
        vec![
            Scripted::status(429).retry_after("3"),
            Scripted::status(500),
            Scripted::body(403, "custom"),
            Scripted::status(410),
        ],
    );
    let client = client(&emu);
    let auth = vapid.authorization(&emu);

    let r = push(&client, &sub, &auth, b"1").await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "3");
    assert_eq!(r.json::<Value>().await.unwrap()["code"], 429);
    let r = push(&client, &sub, &auth, b"2").await;
    assert_eq!(r.status(), 500);
    let r = push(&client, &sub, &auth, b"3").await;
    assert_eq!(r.status(), 403);
    assert_eq!(r.text().await.unwrap(), "custom");
    let r = push(&client, &sub, &auth, b"4").await;
    assert_eq!(r.status(), 410);
    assert_eq!(r.json::<Value>().await.unwrap()["errno"], 106);
    let r = push(&client, &sub, &auth, b"5").await;
    assert_eq!(r.status(), 201);

    let all = emu.received_for(&sub);
    let statuses: Vec<u16> = all.iter().map(|r| r.status_answered).collect();
    assert_eq!(statuses, [429, 500, 403, 410, 201]);
    assert!(all[..4].iter().all(|r| r.scripted && r.refusal.is_none()));
    // Verification still ran on scripted requests.
    assert_eq!(all[1].plaintext_str(), Some("2"));

    // Apple-shaped scripted reasons, and scripts are per subscriber.
    let apple = emu.subscriber(EmuVendor::Apple);
    emu.script(
        &apple,
        vec![
            Scripted::apple_reason(400, "BadWebPushTopic"),
            Scripted::status(410),
        ],
    );
    let r = push(&client, &apple, &auth, b"a").await;
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["reason"],
        "BadWebPushTopic"
    );
    let r = push(&client, &apple, &auth, b"b").await;
    assert_eq!(r.status(), 410);
    assert_eq!(r.json::<Value>().await.unwrap()["reason"], "Unregistered");
}

#[tokio::test]
async fn scripted_reset_and_delay() {
    let emu = Emulator::start().await;
    let vapid = Vapid::generate();
    let sub = emu.subscriber(EmuVendor::Fcm);
    emu.script(
        &sub,
        vec![
            Scripted::reset(),
            Scripted::status(503).delay(Duration::from_millis(300)),
        ],
    );
    let client = client(&emu);
    let body = ece::encrypt(sub.p256dh(), sub.auth(), b"x").unwrap();
    let err = client
        .post(sub.endpoint())
        .header("TTL", "60")
        .header("Content-Encoding", "aes128gcm")
        .header("Authorization", vapid.authorization(&emu))
        .body(body)
        .send()
        .await;
    assert!(err.is_err(), "a reset must surface as a transport error");

    let started = std::time::Instant::now();
    let r = push(&client, &sub, &vapid.authorization(&emu), b"x").await;
    assert_eq!(r.status(), 503);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(emu.received_for(&sub)[0].status_answered, 0);
}

#[tokio::test]
async fn header_checks() {
    let emu = Emulator::start().await;
    let vapid = Vapid::generate();
    let client = client(&emu);
    let auth = vapid.authorization(&emu);
    let send = |sub: &Subscriber, headers: &[(&str, &str)], body: Vec<u8>| {
        let mut req = client
            .post(sub.endpoint())
            .header("Authorization", &auth)
            .body(body);
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        req.send()
    };
    let apple = emu.subscriber(EmuVendor::Apple);
    let enc = |s: &Subscriber| ece::encrypt(s.p256dh(), s.auth(), b"x").unwrap();

    // Topic longer than 32 characters on Apple.
    let long_topic = "a".repeat(33);
    let r = send(
        &apple,
        &[
            ("TTL", "60"),
            ("Content-Encoding", "aes128gcm"),
            ("Topic", &long_topic),
        ],
        enc(&apple),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["reason"],
        "BadWebPushTopic"
    );
    // A 32-character topic is fine.
    let topic = "b".repeat(32);
    let r = send(
        &apple,
        &[
            ("TTL", "60"),
            ("Content-Encoding", "aes128gcm"),
            ("Topic", &topic),
        ],
        enc(&apple),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 201);

    // Missing and non-numeric TTL.
    let moz = emu.subscriber(EmuVendor::Mozilla);
    let r = send(&moz, &[("Content-Encoding", "aes128gcm")], enc(&moz))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["errno"], 111);
    let r = send(
        &moz,
        &[("TTL", "soon"), ("Content-Encoding", "aes128gcm")],
        enc(&moz),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);

    // Unknown Content-Encoding and bad Urgency.
    let r = send(
        &moz,
        &[("TTL", "60"), ("Content-Encoding", "gzip")],
        enc(&moz),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    let r = send(
        &moz,
        &[
            ("TTL", "60"),
            ("Content-Encoding", "aes128gcm"),
            ("Urgency", "urgent"),
        ],
        enc(&moz),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);

    // Body over 4096 bytes.
    let r = send(
        &moz,
        &[("TTL", "60"), ("Content-Encoding", "aes128gcm")],
        vec![0u8; MAX_BODY + 1],
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(r.json::<Value>().await.unwrap()["errno"], 104);

    // A push without payload is valid.
    let r = send(&moz, &[("TTL", "0")], Vec::new()).await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        emu.received().last().unwrap().plaintext.as_deref(),
        Some(&b""[..])
    );
}

#[tokio::test]
async fn unknown_or_forgotten_subscribers_are_gone() {
    let emu = Emulator::start().await;
    let vapid = Vapid::generate();
    let client = client(&emu);
    let expected = [
        (EmuVendor::Fcm, 410u16),
        (EmuVendor::Mozilla, 410),
        (EmuVendor::Apple, 410),
        (EmuVendor::Wns, 404),
        (EmuVendor::Generic, 404),
    ];
    for (vendor, status) in expected {
        let sub = emu.subscriber(vendor);
        emu.forget(&sub);
        let r = push(&client, &sub, &vapid.authorization(&emu), b"x").await;
        assert_eq!(r.status(), status, "{vendor:?}");
    }
    let r = client
        .post(format!("{}/nowhere/abc", emu.origin()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn wait_for_wakes_on_arrival() {
    let emu = Emulator::start().await;
    let vapid = Vapid::generate();
    let sub = emu.subscriber(EmuVendor::Generic);
    let client = client(&emu);
    let auth = vapid.authorization(&emu);
    let sender = {
        let sub = sub.clone();
        tokio::spawn(async move {
            for i in 0..3 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                assert_eq!(
                    push(&client, &sub, &auth, format!("m{i}").as_bytes())
                        .await
                        .status(),
                    201
                );
            }
        })
    };
    let got = emu.wait_for(3, WAIT).await;
    let texts: Vec<_> = got
        .iter()
        .map(|r| r.plaintext_str().unwrap().to_string())
        .collect();
    assert_eq!(texts, ["m0", "m1", "m2"]);
    sender.await.unwrap();
    // A predicate that never holds times out with everything received.
    let res = emu
        .wait_until(Duration::from_millis(50), |all| all.len() > 3)
        .await;
    assert_eq!(res.unwrap_err().len(), 3);
}

#[tokio::test]
async fn tls_is_real() {
    let emu = Emulator::start().await;
    // A client that trusts only the public roots must refuse the emulator.
    let plain = reqwest::Client::builder().build().unwrap();
    assert!(plain
        .post(format!("{}/push/x", emu.origin()))
        .send()
        .await
        .is_err());
    // And one that trusts another emulator's CA too.
    let other = Emulator::start().await;
    let wrong = other.client_builder().build().unwrap();
    assert!(wrong
        .post(format!("{}/push/x", emu.origin()))
        .send()
        .await
        .is_err());
    // The CA file holds the same PEM.
    assert_eq!(
        std::fs::read_to_string(emu.ca_file()).unwrap(),
        emu.ca_pem()
    );
    // Reachable by IP as well as by name.
    let by_ip = client(&emu)
        .post(format!("https://127.0.0.1:{}/push/x", emu.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(by_ip.status(), 404);
}

#[tokio::test]
async fn sink_counts_fast_and_answers_201() {
    let sink = Emulator::start_sink().await;
    let sub = sink.subscriber(EmuVendor::Fcm);
    let client = client(&sink);
    let n = 200u64;
    let body = ece::encrypt(sub.p256dh(), sub.auth(), b"bench").unwrap();
    let sends = (0..n).map(|_| {
        client
            .post(sub.endpoint())
            .header("TTL", "60")
            .header("Content-Encoding", "aes128gcm")
            .body(body.clone())
            .send()
    });
    let started = std::time::Instant::now();
    for r in futures::future::join_all(sends).await {
        let r = r.unwrap();
        assert_eq!(r.status(), 201);
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert!(r.bytes().await.unwrap().is_empty());
    }
    assert_eq!(sink.wait_for_count(n, WAIT).await, n);
    let arrivals = sink.sink_arrivals();
    assert_eq!(arrivals.len() as u64, n);
    assert!(arrivals.windows(2).all(|w| w[0] <= w[1]));
    // The token's latest arrival is the last one, and a later wait times out.
    assert_eq!(sink.sink_arrival_of(sub.token()), arrivals.last().copied());
    assert_eq!(
        sink.wait_for_token(
            sub.token(),
            *arrivals.last().unwrap(),
            Duration::from_millis(50)
        )
        .await,
        None
    );
    assert_eq!(sink.sink_arrival_of("no-such-token"), None);
    assert!(sink.received().is_empty(), "sink records nothing in detail");
    eprintln!("sink: {n} pushes in {:?}", started.elapsed());
    sink.shutdown();
}

#[tokio::test]
async fn shutdown_closes_the_port() {
    let emu = Emulator::start().await;
    let port = emu.port();
    emu.shutdown();
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}
