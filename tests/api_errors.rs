//! Bad input gets a clear 4xx naming the field and the rule, and changes nothing.

mod harness;
mod support;

use harness::{spawn_app, Created, TestApp, ADMIN};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use support::emulator::{EmuVendor, Emulator};

struct Fixture {
    emu: Emulator,
    app: TestApp,
    acme: Created,
    other: Created,
}

async fn fixture() -> Fixture {
    let emu = Emulator::start().await;
    let app = spawn_app(emu.ca_file()).await;
    let acme = app.create_app("acme").await;
    let other = app.create_app("other").await;
    Fixture {
        emu,
        app,
        acme,
        other,
    }
}

impl Fixture {
    /// Nothing was stored: no subscriptions, no deliveries.
    async fn assert_nothing_stored(&self) {
        assert!(
            self.app.subscriptions(&self.acme, None).await.is_empty(),
            "no subscription stored"
        );
        assert!(self.app.queue("").await.is_empty(), "no delivery queued");
    }

    fn subs(&self) -> String {
        format!("/api/v1/apps/{}/subscriptions", self.acme.id)
    }

    fn sends(&self) -> String {
        format!("/api/v1/apps/{}/notifications", self.acme.id)
    }
}

fn assert_error(
    status: StatusCode,
    body: &Value,
    want_status: StatusCode,
    want_field: Option<&str>,
) {
    assert_eq!(status, want_status, "{body}");
    assert!(
        body["error"]["code"].is_string(),
        "error has a code: {body}"
    );
    assert!(
        !body["error"]["message"].as_str().unwrap_or("").is_empty(),
        "error has a message: {body}"
    );
    if let Some(f) = want_field {
        assert_eq!(body["error"]["field"], f, "{body}");
    }
}

#[tokio::test]
async fn authentication_and_authorisation_are_required() {
    let f = fixture().await;
    let send = json!({"to": {"all": true}, "title": "t", "body": "b"});
    let (s, b) = f
        .app
        .call(Method::POST, &f.sends(), None, Some(send.clone()))
        .await;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, None);
    let (s, b) = f
        .app
        .call(
            Method::POST,
            &f.sends(),
            Some("hk_not-a-key"),
            Some(send.clone()),
        )
        .await;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, None);
    let (s, b) = f
        .app
        .call(
            Method::POST,
            &f.sends(),
            Some("garbage"),
            Some(send.clone()),
        )
        .await;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, None);
    let (s, b) = f
        .app
        .call(
            Method::POST,
            &f.sends(),
            Some(&f.other.api_key),
            Some(send.clone()),
        )
        .await;
    assert_error(s, &b, StatusCode::FORBIDDEN, None);
    let (s, b) = f
        .app
        .call(Method::GET, "/api/v1/queue", Some(&f.acme.api_key), None)
        .await;
    assert_error(s, &b, StatusCode::FORBIDDEN, None);
    let (s, b) = f
        .app
        .call(
            Method::POST,
            "/api/v1/apps",
            Some(&f.acme.api_key),
            Some(json!({"name": "x", "contact": "mailto:a@example.com"})),
        )
        .await;
    assert_error(s, &b, StatusCode::FORBIDDEN, None);
    let (s, b) = f
        .app
        .call(
            Method::POST,
            "/api/v1/apps/no-such-app/notifications",
            Some(ADMIN),
            Some(send),
        )
        .await;
    assert_error(s, &b, StatusCode::NOT_FOUND, None);
    let (s, _) = f
        .app
        .call(
            Method::GET,
            "/api/v1/apps/no-such-app/vapid-public-key",
            None,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    f.assert_nothing_stored().await;
}

#[tokio::test]
async fn malformed_subscriptions_are_refused_with_the_field_at_fault() {
    let f = fixture().await;
    let good = f.emu.subscriber(EmuVendor::Fcm).subscription_json();
    let with = |path: &[&str], v: Value| {
        let mut s = good.clone();
        let mut cur = &mut s;
        for p in &path[..path.len() - 1] {
            cur = &mut cur[*p];
        }
        cur[path[path.len() - 1]] = v;
        s
    };
    let cases = [
        (
            with(&["endpoint"], json!("http://localhost/fcm/send/x")),
            "subscription.endpoint",
        ),
        (
            with(&["endpoint"], json!("https://evil.example.net/fcm/send/x")),
            "subscription.endpoint",
        ),
        (
            with(
                &["endpoint"],
                json!(format!("https://localhost/{}", "a".repeat(1100))),
            ),
            "subscription.endpoint",
        ),
        (
            with(&["keys", "p256dh"], json!("BAAA")),
            "subscription.keys.p256dh",
        ),
        // 65 bytes starting 0x04 but not on the curve.
        (
            with(&["keys", "p256dh"], json!(format!("B{}", "A".repeat(86)))),
            "subscription.keys.p256dh",
        ),
        (
            with(&["keys", "auth"], json!("c2hvcnQ")),
            "subscription.keys.auth",
        ),
    ];
    for (sub, field) in cases {
        let (s, b) = f
            .app
            .call(
                Method::POST,
                &f.subs(),
                Some(&f.acme.api_key),
                Some(json!({"user": "bo", "subscription": sub})),
            )
            .await;
        assert_error(s, &b, StatusCode::UNPROCESSABLE_ENTITY, Some(field));
    }
    let (s, b) = f
        .app
        .call(
            Method::POST,
            &f.subs(),
            Some(&f.acme.api_key),
            Some(json!({"user": "bo", "subscription": {"endpoint": 5}})),
        )
        .await;
    assert_error(
        s,
        &b,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("subscription"),
    );
    let (s, b) = f
        .app
        .call(
            Method::POST,
            &f.subs(),
            Some(&f.acme.api_key),
            Some(json!({"user": "bo", "subscription": good.clone(), "content_encoding": "gzip"})),
        )
        .await;
    assert_error(
        s,
        &b,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("content_encoding"),
    );
    let (s, b) = f
        .app
        .call(
            Method::POST,
            &f.subs(),
            Some(&f.acme.api_key),
            Some(json!({"usr": "bo", "subscription": good.clone()})),
        )
        .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, Some("usr"));
    let (s, b) = f
        .app
        .call(
            Method::POST,
            &f.subs(),
            Some(&f.acme.api_key),
            Some(json!({"user": "", "subscription": good})),
        )
        .await;
    assert_error(s, &b, StatusCode::UNPROCESSABLE_ENTITY, Some("user"));
    f.assert_nothing_stored().await;
}

#[tokio::test]
async fn bad_notifications_are_refused_and_queue_nothing() {
    let f = fixture().await;
    f.app
        .subscribe(
            &f.acme,
            "bo",
            f.emu.subscriber(EmuVendor::Fcm).subscription_json(),
        )
        .await;
    let base = json!({"to": {"user": "bo"}, "title": "t", "body": "b"});
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    let cases: Vec<(Value, StatusCode, &str)> = vec![
        (
            with("target_url", json!("/relative/path")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "target_url",
        ),
        (
            with("target_url", json!("javascript:alert(1)")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "target_url",
        ),
        (
            with("body", json!("x".repeat(5000))),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body",
        ),
        (
            with("titel", json!("typo")),
            StatusCode::BAD_REQUEST,
            "titel",
        ),
        (
            with("to", json!({"usr": "bo"})),
            StatusCode::BAD_REQUEST,
            "to.usr",
        ),
        (
            with("to", json!({})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "to",
        ),
        (
            with("to", json!({"user": "bo", "all": true})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "to",
        ),
        (
            with("to", json!({"subscription": "nope"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "to.subscription",
        ),
        (
            with("type", json!("fatal")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "type",
        ),
        (
            with("urgency", json!("urgent")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "urgency",
        ),
        (
            with("ttl", json!(0)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "ttl",
        ),
        (with("ttl", json!("soon")), StatusCode::BAD_REQUEST, "ttl"),
        (
            with("title", json!("")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "title",
        ),
        (
            json!({"to": {"user": "bo"}, "body": "b"}),
            StatusCode::BAD_REQUEST,
            "title",
        ),
    ];
    for (body, status, field) in cases {
        let (s, b) = f
            .app
            .call(
                Method::POST,
                &f.sends(),
                Some(&f.acme.api_key),
                Some(body.clone()),
            )
            .await;
        assert_error(s, &b, status, Some(field));
    }
    let (s, b) = f
        .app
        .call_with(
            Method::POST,
            &f.sends(),
            Some(&f.acme.api_key),
            Some(base),
            &[("Idempotency-Key", &"k".repeat(300))],
        )
        .await;
    assert_error(
        s,
        &b,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("Idempotency-Key"),
    );
    let resp = f
        .app
        .http
        .post(format!("{}{}", f.app.base, f.sends()))
        .bearer_auth(&f.acme.api_key)
        .body("{not json")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(f.app.queue("").await.is_empty(), "nothing queued");
}

#[tokio::test]
async fn the_payload_limit_is_stated_in_the_error() {
    let f = fixture().await;
    let (s, b) = f
        .app
        .call(
            Method::POST,
            &f.sends(),
            Some(&f.acme.api_key),
            Some(json!({"to": {"all": true}, "title": "t", "body": "x".repeat(4000)})),
        )
        .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    let limit = herald::webpush::ece::max_plaintext(herald::webpush::ContentEncoding::Aes128gcm)
        .to_string();
    assert!(
        b["error"]["message"].as_str().unwrap().contains(&limit),
        "{b}"
    );
}

#[tokio::test]
async fn app_settings_are_validated() {
    let f = fixture().await;
    for (body, field) in [
        (
            json!({"name": "x", "contact": "ops@example.com"}),
            "contact",
        ),
        (
            json!({"name": "x", "contact": "mailto:mailto:ops@example.com"}),
            "contact",
        ),
        (
            json!({"name": "x", "contact": "mailto:ops@localhost"}),
            "contact",
        ),
        (
            json!({"name": "x", "contact": "https://intranet.local/push"}),
            "contact",
        ),
        (
            json!({"name": "", "contact": "mailto:ops@example.com"}),
            "name",
        ),
    ] {
        let (s, b) = f
            .app
            .call(Method::POST, "/api/v1/apps", Some(ADMIN), Some(body))
            .await;
        assert_error(s, &b, StatusCode::UNPROCESSABLE_ENTITY, Some(field));
    }
    let (s, b) = f
        .app
        .call(
            Method::PATCH,
            &format!("/api/v1/apps/{}", f.acme.id),
            Some(ADMIN),
            Some(json!({"max_concurrency": -1})),
        )
        .await;
    assert_error(
        s,
        &b,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("max_concurrency"),
    );
    let (_, apps) = f
        .app
        .call(Method::GET, "/api/v1/apps", Some(ADMIN), None)
        .await;
    assert_eq!(apps["apps"].as_array().unwrap().len(), 2, "nothing created");
    assert!(
        apps["apps"][0].get("api_key").is_none(),
        "the API key is shown only at creation"
    );
}

#[tokio::test]
async fn pages_on_another_origin_may_call_the_api_with_a_bearer_token() {
    let f = fixture().await;
    let resp = f
        .app
        .http
        .request(Method::OPTIONS, format!("{}{}", f.app.base, f.subs()))
        .header("Origin", "https://app.example.com")
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
    let allowed = resp.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("authorization"), "{allowed}");
}
