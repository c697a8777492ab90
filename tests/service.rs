//! The service end to end: Herald on SQLite delivering to a real HTTPS
//! push-service emulator that checks every VAPID header and decrypts every body.

mod harness;
mod support;

use std::time::{Duration, Instant};

use harness::{spawn_app, spawn_app_with, Created, TestApp, ADMIN};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use support::emulator::{EmuVendor, Emulator, Scripted, Subscriber};

const WAIT: Duration = Duration::from_secs(15);

async fn setup() -> (Emulator, TestApp, Created) {
    let emu = Emulator::start().await;
    let app = spawn_app(emu.ca_file()).await;
    let created = app.create_app("acme").await;
    (emu, app, created)
}

fn payload_of(r: &support::emulator::Received) -> Value {
    serde_json::from_slice(
        r.plaintext
            .as_ref()
            .expect("body decrypted by the emulator"),
    )
    .unwrap()
}

async fn subscribed(
    app: &TestApp,
    created: &Created,
    emu: &Emulator,
    vendor: EmuVendor,
    user: &str,
) -> (Subscriber, String) {
    let sub = emu.subscriber(vendor);
    let id = app.subscribe(created, user, sub.subscription_json()).await;
    (sub, id)
}

#[tokio::test]
async fn a_users_three_devices_all_receive_the_notification() {
    let (emu, app, acme) = setup().await;
    let mut devices = Vec::new();
    for vendor in [EmuVendor::Fcm, EmuVendor::Mozilla, EmuVendor::Apple] {
        devices.push(subscribed(&app, &acme, &emu, vendor, "bo").await.0);
    }
    subscribed(&app, &acme, &emu, EmuVendor::Fcm, "someone-else").await;

    let id = app
        .send_ok(&acme, json!({"to": {"user": "bo"}, "title": "Reimbursement approved", "body": "€42 is on its way", "target_url": "https://app.example.com/expenses/7", "type": "success"}))
        .await;
    emu.wait_for(3, WAIT).await;
    for d in &devices {
        let got = emu.received_for(d);
        assert_eq!(got.len(), 1, "each device receives exactly once");
        let p = payload_of(&got[0]);
        assert_eq!(
            p,
            json!({"id": id, "title": "Reimbursement approved", "body": "€42 is on its way", "target_url": "https://app.example.com/expenses/7", "type": "success"})
        );
        assert!(got[0].vapid.is_ok(), "VAPID verified: {:?}", got[0].vapid);
    }
    let n = app.settled(&acme, &id, WAIT).await;
    assert_eq!(
        (n["total"].as_u64(), n["delivered"].as_u64()),
        (Some(3), Some(3)),
        "{n}"
    );
    assert!(n["deliveries"][0]["delivered_at"].is_string());
}

#[tokio::test]
async fn topic_and_all_reach_the_right_devices() {
    let (emu, app, acme) = setup().await;
    let news = emu.subscriber(EmuVendor::Fcm);
    app.subscribe_with(
        &acme,
        json!({"user": "a", "subscription": news.subscription_json(), "topics": ["news"]}),
    )
    .await;
    let quiet = emu.subscriber(EmuVendor::Mozilla);
    app.subscribe_with(
        &acme,
        json!({"user": "b", "subscription": quiet.subscription_json(), "topics": ["billing"]}),
    )
    .await;

    let (status, body) = app
        .send(
            &acme,
            json!({"to": {"topic": "news"}, "title": "News", "body": "x"}),
        )
        .await;
    assert_eq!(
        (status, body["deliveries"].as_u64()),
        (StatusCode::ACCEPTED, Some(1))
    );
    emu.wait_for(1, WAIT).await;
    assert_eq!(emu.received_for(&news).len(), 1);
    assert!(emu.received_for(&quiet).is_empty());

    let (status, body) = app
        .send(
            &acme,
            json!({"to": {"all": true}, "title": "Everyone", "body": "y"}),
        )
        .await;
    assert_eq!(
        (status, body["deliveries"].as_u64()),
        (StatusCode::ACCEPTED, Some(2))
    );
    emu.wait_for(3, WAIT).await;
    assert_eq!(emu.received_for(&quiet).len(), 1);

    let (status, body) = app
        .send(
            &acme,
            json!({"to": {"users": ["a", "b", "nobody"]}, "title": "Some", "body": "z"}),
        )
        .await;
    assert_eq!(
        (status, body["deliveries"].as_u64()),
        (StatusCode::ACCEPTED, Some(2))
    );
}

#[tokio::test]
async fn a_410_removes_the_subscription_and_is_not_retried() {
    let (emu, app, acme) = setup().await;
    let (dead, dead_id) = subscribed(&app, &acme, &emu, EmuVendor::Mozilla, "bo").await;
    emu.script(&dead, vec![Scripted::status(410)]);
    let id = app
        .send_ok(
            &acme,
            json!({"to": {"user": "bo"}, "title": "t", "body": "b"}),
        )
        .await;
    let n = app.settled(&acme, &id, WAIT).await;
    assert_eq!(n["gone"], 1, "{n}");
    assert!(app
        .subscriptions(&acme, Some("bo"))
        .await
        .iter()
        .all(|s| s["id"] != dead_id.as_str()));
    assert_eq!(emu.received_for(&dead).len(), 1, "never retried");
}

#[tokio::test]
async fn a_key_mismatch_removes_the_subscription() {
    let (emu, app, acme) = setup().await;
    let (sub, _) = subscribed(&app, &acme, &emu, EmuVendor::Fcm, "bo").await;
    emu.set_expected_vapid_key(Some("BOtherKeyThatIsNotTheAppsKey".into()));
    let id = app
        .send_ok(
            &acme,
            json!({"to": {"user": "bo"}, "title": "t", "body": "b"}),
        )
        .await;
    let n = app.settled(&acme, &id, WAIT).await;
    assert_eq!(n["gone"], 1, "{n}");
    assert!(
        n["deliveries"][0]["last_error"]
            .as_str()
            .unwrap()
            .contains("403"),
        "{n}"
    );
    assert!(app.subscriptions(&acme, None).await.is_empty());
    assert_eq!(emu.received_for(&sub).len(), 1);
}

#[tokio::test]
async fn a_429_with_retry_after_is_not_retried_before_the_time_given() {
    let (emu, app, acme) = setup().await;
    let (sub, _) = subscribed(&app, &acme, &emu, EmuVendor::Fcm, "bo").await;
    emu.script(&sub, vec![Scripted::status(429).retry_after("2")]);
    let id = app
        .send_ok(
            &acme,
            json!({"to": {"user": "bo"}, "title": "t", "body": "b"}),
        )
        .await;
    let n = app.settled(&acme, &id, WAIT).await;
    assert_eq!(n["delivered"], 1, "{n}");
    let got = emu.received_for(&sub);
    assert_eq!(got.len(), 2);
    let waited = got[1].at.duration_since(got[0].at);
    assert!(
        waited >= Duration::from_millis(1950),
        "retried after {waited:?}"
    );
    assert_eq!(
        n["deliveries"][0]["attempts"], 1,
        "a rate limit does not use up an attempt: {n}"
    );
}

#[tokio::test]
async fn a_500_then_201_is_retried_and_succeeds() {
    let (emu, app, acme) = setup().await;
    let (sub, _) = subscribed(&app, &acme, &emu, EmuVendor::Apple, "bo").await;
    emu.script(&sub, vec![Scripted::status(500)]);
    let id = app
        .send_ok(
            &acme,
            json!({"to": {"user": "bo"}, "title": "t", "body": "b"}),
        )
        .await;
    let n = app.settled(&acme, &id, WAIT).await;
    assert_eq!(n["delivered"], 1, "{n}");
    assert_eq!(n["deliveries"][0]["attempts"], 2);
    assert_eq!(emu.received_for(&sub).len(), 2);
}

#[tokio::test]
async fn retries_stop_at_the_attempt_limit() {
    let (emu, app, acme) = setup().await;
    let (sub, _) = subscribed(&app, &acme, &emu, EmuVendor::Fcm, "bo").await;
    emu.script(&sub, vec![Scripted::status(503); 10]);
    let id = app
        .send_ok(
            &acme,
            json!({"to": {"user": "bo"}, "title": "t", "body": "b"}),
        )
        .await;
    let n = app.settled(&acme, &id, Duration::from_secs(30)).await;
    assert_eq!(n["failed"], 1, "{n}");
    assert_eq!(n["deliveries"][0]["attempts"], app.settings.max_attempts);
    assert_eq!(
        emu.received_for(&sub).len() as u32,
        app.settings.max_attempts
    );
}

#[tokio::test]
async fn a_413_and_a_400_fail_without_retry_with_the_reason_in_the_queue() {
    let (emu, app, acme) = setup().await;
    let (big, _) = subscribed(&app, &acme, &emu, EmuVendor::Mozilla, "a").await;
    let (bad, _) = subscribed(&app, &acme, &emu, EmuVendor::Fcm, "b").await;
    emu.script(&big, vec![Scripted::status(413)]);
    emu.script(&bad, vec![Scripted::body(400, "InvalidParameters")]);
    let id = app
        .send_ok(
            &acme,
            json!({"to": {"all": true}, "title": "t", "body": "b"}),
        )
        .await;
    let n = app.settled(&acme, &id, WAIT).await;
    assert_eq!(n["failed"], 2, "{n}");
    let failed = app.queue(&format!("app={}&status=failed", acme.id)).await;
    assert_eq!(failed.len(), 2);
    let errors: Vec<&str> = failed
        .iter()
        .map(|d| d["last_error"].as_str().unwrap())
        .collect();
    assert!(errors.iter().any(|e| e.contains("413")), "{errors:?}");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("400") && e.contains("InvalidParameters")),
        "{errors:?}"
    );
    assert_eq!(
        emu.received_for(&big).len() + emu.received_for(&bad).len(),
        2,
        "no retries"
    );
}

#[tokio::test]
async fn a_bad_vapid_setup_fails_once_and_shows_on_the_app() {
    let (emu, app, acme) = setup().await;
    let (sub, _) = subscribed(&app, &acme, &emu, EmuVendor::Apple, "bo").await;
    emu.script(&sub, vec![Scripted::apple_reason(403, "BadJwtToken")]);
    let id = app
        .send_ok(
            &acme,
            json!({"to": {"user": "bo"}, "title": "t", "body": "b"}),
        )
        .await;
    let n = app.settled(&acme, &id, WAIT).await;
    assert_eq!(n["failed"], 1, "{n}");
    assert_eq!(emu.received_for(&sub).len(), 1, "no blind retries");
    let (_, shown) = app
        .call(
            Method::GET,
            &format!("/api/v1/apps/{}", acme.id),
            Some(ADMIN),
            None,
        )
        .await;
    assert!(
        shown["last_config_error"]
            .as_str()
            .unwrap()
            .contains("BadJwtToken"),
        "{shown}"
    );
}

#[tokio::test]
async fn an_expired_ttl_is_dropped_not_sent_late() {
    let (emu, app, acme) = setup().await;
    let (sub, _) = subscribed(&app, &acme, &emu, EmuVendor::Fcm, "bo").await;
    app.patch_app(&acme, json!({"max_concurrency": 0})).await;
    let id = app
        .send_ok(
            &acme,
            json!({"to": {"user": "bo"}, "title": "t", "body": "b", "ttl": 1}),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    app.patch_app(&acme, json!({"max_concurrency": 10})).await;
    let n = app.settled(&acme, &id, WAIT).await;
    assert_eq!(n["expired"], 1, "{n}");
    assert!(emu.received_for(&sub).is_empty(), "never sent late");
}

#[tokio::test]
async fn max_concurrency_zero_holds_work_until_raised() {
    let (emu, app, acme) = setup().await;
    let (sub, _) = subscribed(&app, &acme, &emu, EmuVendor::Fcm, "bo").await;
    let paused = app.patch_app(&acme, json!({"max_concurrency": 0})).await;
    assert_eq!(paused["max_concurrency"], 0);
    let id = app
        .send_ok(
            &acme,
            json!({"to": {"user": "bo"}, "title": "t", "body": "b"}),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(emu.received_for(&sub).is_empty());
    assert_eq!(
        app.queue(&format!("app={}&status=pending", acme.id))
            .await
            .len(),
        1,
        "still queued"
    );
    app.patch_app(&acme, json!({"max_concurrency": 5})).await;
    emu.wait_for(1, WAIT).await;
    assert_eq!(app.settled(&acme, &id, WAIT).await["delivered"], 1);
}

#[tokio::test]
async fn the_admin_can_push_force_remove_and_clear_the_queue() {
    let (emu, app, acme) = setup().await;
    let (sub, _) = subscribed(&app, &acme, &emu, EmuVendor::Fcm, "bo").await;
    // A delivery waiting for its retry, far in the future.
    emu.script(&sub, vec![Scripted::status(429).retry_after("3600")]);
    let id = app
        .send_ok(
            &acme,
            json!({"to": {"user": "bo"}, "title": "waiting", "body": "b"}),
        )
        .await;
    emu.wait_until(WAIT, |all| !all.is_empty())
        .await
        .expect("the first attempt arrives");
    let waiting = loop {
        let q = app.queue("status=pending").await;
        if !q.is_empty() && q[0]["last_error"].is_string() {
            break q;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(waiting[0]["title"], "waiting");
    assert!(waiting[0]["last_error"].as_str().unwrap().contains("429"));
    for field in [
        "id",
        "app",
        "notification_id",
        "subscription_id",
        "user",
        "endpoint_host",
        "attempts",
        "status",
        "created_at",
        "next_attempt_at",
    ] {
        assert!(!waiting[0][field].is_null(), "queue entries show {field}");
    }

    let (_, pushed) = app
        .call(Method::POST, "/api/v1/queue/push", Some(ADMIN), None)
        .await;
    assert_eq!(pushed["due"], 0, "push only sends what is due");
    let (_, forced) = app
        .call(Method::POST, "/api/v1/queue/force", Some(ADMIN), None)
        .await;
    assert_eq!(forced["forced"], 1);
    assert_eq!(
        app.settled(&acme, &id, WAIT).await["delivered"],
        1,
        "force made the retry due now"
    );

    // Remove one entry and clear the rest of the app's queue while paused.
    app.patch_app(&acme, json!({"max_concurrency": 0})).await;
    app.send_ok(
        &acme,
        json!({"to": {"user": "bo"}, "title": "one", "body": "b"}),
    )
    .await;
    app.send_ok(
        &acme,
        json!({"to": {"user": "bo"}, "title": "two", "body": "b"}),
    )
    .await;
    app.send_ok(
        &acme,
        json!({"to": {"user": "bo"}, "title": "three", "body": "b"}),
    )
    .await;
    let pending = app.queue("status=pending").await;
    assert_eq!(pending.len(), 3);
    let (status, removed) = app
        .call(
            Method::DELETE,
            &format!("/api/v1/queue/{}", pending[0]["id"]),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(
        (status, removed["removed"].as_u64()),
        (StatusCode::OK, Some(1))
    );
    let (_, cleared) = app
        .call(
            Method::DELETE,
            &format!("/api/v1/queue?app={}", acme.id),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(cleared["removed"], 2);
    assert!(app.queue("status=pending").await.is_empty());
    let (status, _) = app
        .call(Method::DELETE, "/api/v1/queue/999999", Some(ADMIN), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn regenerating_credentials_removes_subscriptions_and_queued_work() {
    let (emu, app, acme) = setup().await;
    subscribed(&app, &acme, &emu, EmuVendor::Fcm, "a").await;
    subscribed(&app, &acme, &emu, EmuVendor::Mozilla, "b").await;
    app.patch_app(&acme, json!({"max_concurrency": 0})).await;
    app.send_ok(
        &acme,
        json!({"to": {"all": true}, "title": "t", "body": "b"}),
    )
    .await;

    let (status, r) = app
        .call(
            Method::POST,
            &format!("/api/v1/apps/{}/credentials/regenerate", acme.id),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(
        (
            r["subscriptions_removed"].as_u64(),
            r["deliveries_removed"].as_u64()
        ),
        (Some(2), Some(2))
    );
    assert_ne!(r["vapid_public_key"], acme.vapid_public_key.as_str());
    let (_, key) = app
        .call(
            Method::GET,
            &format!("/api/v1/apps/{}/vapid-public-key", acme.id),
            None,
            None,
        )
        .await;
    assert_eq!(key["vapid_public_key"], r["vapid_public_key"]);
    assert!(app.subscriptions(&acme, None).await.is_empty());
    assert!(app
        .queue(&format!("app={}&status=pending", acme.id))
        .await
        .is_empty());

    // New subscriptions work with the new key.
    app.patch_app(&acme, json!({"max_concurrency": 10})).await;
    emu.set_expected_vapid_key(Some(r["vapid_public_key"].as_str().unwrap().into()));
    let (sub, _) = subscribed(&app, &acme, &emu, EmuVendor::Fcm, "a").await;
    let id = app
        .send_ok(
            &acme,
            json!({"to": {"user": "a"}, "title": "after", "body": "b"}),
        )
        .await;
    assert_eq!(app.settled(&acme, &id, WAIT).await["delivered"], 1);
    assert_eq!(emu.received_for(&sub).len(), 1);
}

#[tokio::test]
async fn a_repeated_idempotency_key_answers_as_the_first_call_and_queues_nothing() {
    let (emu, app, acme) = setup().await;
    subscribed(&app, &acme, &emu, EmuVendor::Fcm, "bo").await;
    let path = format!("/api/v1/apps/{}/notifications", acme.id);
    let body = json!({"to": {"user": "bo"}, "title": "once", "body": "b"});
    let first = app
        .call_with(
            Method::POST,
            &path,
            Some(&acme.api_key),
            Some(body.clone()),
            &[("Idempotency-Key", "order-7")],
        )
        .await;
    let again = app
        .call_with(
            Method::POST,
            &path,
            Some(&acme.api_key),
            Some(body.clone()),
            &[("Idempotency-Key", "order-7")],
        )
        .await;
    assert_eq!(first.0, StatusCode::ACCEPTED);
    assert_eq!(first, again);
    emu.wait_for(1, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(emu.received().len(), 1);
    let other = app
        .call_with(
            Method::POST,
            &path,
            Some(&acme.api_key),
            Some(body),
            &[("Idempotency-Key", "order-8")],
        )
        .await;
    assert_ne!(other.1["id"], first.1["id"]);
}

#[tokio::test]
async fn the_same_endpoint_updates_its_row_instead_of_duplicating() {
    let (emu, app, acme) = setup().await;
    let sub = emu.subscriber(EmuVendor::Fcm);
    let path = format!("/api/v1/apps/{}/subscriptions", acme.id);
    let (s1, b1) = app
        .call(
            Method::POST,
            &path,
            Some(&acme.api_key),
            Some(json!({"user": "bo", "subscription": sub.subscription_json()})),
        )
        .await;
    let (s2, b2) = app
        .call(
            Method::POST,
            &path,
            Some(&acme.api_key),
            Some(json!({"user": "bo", "subscription": sub.subscription_json(), "topics": ["x"]})),
        )
        .await;
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::OK));
    assert_eq!(b1["id"], b2["id"]);
    let subs = app.subscriptions(&acme, None).await;
    assert_eq!(subs.len(), 1);
    assert_eq!(subs[0]["topics"], json!(["x"]));
}

#[tokio::test]
async fn user_tokens_let_a_page_manage_only_its_users_devices() {
    let (emu, app, acme) = setup().await;
    let path = format!("/api/v1/apps/{}/user-tokens", acme.id);
    let (status, t) = app
        .call(
            Method::POST,
            &path,
            Some(&acme.api_key),
            Some(json!({"user": "bo", "ttl_seconds": 600})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{t}");
    let token = t["token"].as_str().unwrap().to_string();
    let subs = format!("/api/v1/apps/{}/subscriptions", acme.id);
    let sub = emu.subscriber(EmuVendor::Mozilla);
    let (status, created) = app
        .call(
            Method::POST,
            &subs,
            Some(&token),
            Some(json!({"subscription": sub.subscription_json()})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let (status, _) = app.call(Method::POST, &subs, Some(&token), Some(json!({"user": "eve", "subscription": emu.subscriber(EmuVendor::Fcm).subscription_json()}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "another user's device");
    let (status, _) = app
        .call(
            Method::POST,
            &format!("/api/v1/apps/{}/notifications", acme.id),
            Some(&token),
            Some(json!({"to": {"all": true}, "title": "t", "body": "b"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a page cannot send");
    let eve = app
        .subscribe(
            &acme,
            "eve",
            emu.subscriber(EmuVendor::Fcm).subscription_json(),
        )
        .await;
    let (status, _) = app
        .call(Method::DELETE, &format!("{subs}/{eve}"), Some(&token), None)
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "cannot delete another user's device"
    );
    let endpoint = sub.subscription_json()["endpoint"]
        .as_str()
        .unwrap()
        .to_string();
    let by_endpoint = format!("{subs}?endpoint={}", url_encode(&endpoint));
    let (status, _) = app
        .call(Method::DELETE, &by_endpoint, Some(&token), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(app.subscriptions(&acme, None).await.len(), 1);
}

fn url_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn work_accepted_before_a_restart_is_delivered_after_it() {
    let (emu, app, acme) = setup().await;
    let (sub, _) = subscribed(&app, &acme, &emu, EmuVendor::Fcm, "bo").await;
    app.patch_app(&acme, json!({"max_concurrency": 0})).await;
    let id = app
        .send_ok(
            &acme,
            json!({"to": {"user": "bo"}, "title": "durable", "body": "b"}),
        )
        .await;
    let app = app.restart().await;
    app.patch_app(&acme, json!({"max_concurrency": 4})).await;
    assert_eq!(app.settled(&acme, &id, WAIT).await["delivered"], 1);
    assert_eq!(payload_of(&emu.received_for(&sub)[0])["title"], "durable");
}

#[tokio::test]
async fn metrics_and_health_are_public() {
    let (emu, app, acme) = setup().await;
    subscribed(&app, &acme, &emu, EmuVendor::Fcm, "bo").await;
    let id = app
        .send_ok(
            &acme,
            json!({"to": {"user": "bo"}, "title": "t", "body": "b"}),
        )
        .await;
    app.settled(&acme, &id, WAIT).await;
    let (status, health) = app.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(
        (status, health["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let text = harness::metrics_text(&app.http, &app.base).await;
    assert!(
        text.contains("herald_deliveries_total{vendor=\"fcm\",outcome=\"delivered\"} 1"),
        "{text}"
    );
    assert!(text.contains("herald_queue_wait_seconds_bucket"), "{text}");
    assert!(
        text.contains("herald_delivery_latency_seconds_count{vendor=\"fcm\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn delivery_starts_without_waiting_for_a_timer() {
    let (emu, app, acme) = setup().await;
    subscribed(&app, &acme, &emu, EmuVendor::Fcm, "bo").await;
    // Warm the connection, then measure an idle-queue send.
    let id = app
        .send_ok(
            &acme,
            json!({"to": {"user": "bo"}, "title": "warm", "body": "b"}),
        )
        .await;
    app.settled(&acme, &id, WAIT).await;
    let started = Instant::now();
    app.send_ok(
        &acme,
        json!({"to": {"user": "bo"}, "title": "now", "body": "b"}),
    )
    .await;
    emu.wait_for(2, WAIT).await;
    // Not a speed goal (see the benchmark): proof that no polling period sits
    // between accepting and sending; a 1 s poll would fail this most runs.
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn herald_refuses_push_hosts_outside_the_allow_list_by_default() {
    let emu = Emulator::start().await;
    let app = spawn_app_with(emu.ca_file(), |s| s.allowed_push_hosts.clear()).await;
    let acme = app.create_app("acme").await;
    let (status, body) = app
        .call(Method::POST, &format!("/api/v1/apps/{}/subscriptions", acme.id), Some(&acme.api_key), Some(json!({"user": "bo", "subscription": emu.subscriber(EmuVendor::Fcm).subscription_json()})))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["code"], "host_not_allowed");
    assert_eq!(body["error"]["field"], "subscription.endpoint");
}

#[tokio::test]
async fn ttl_urgency_and_topic_are_sent_as_rfc_8030_headers_over_http2() {
    let (emu, app, acme) = setup().await;
    let (sub, _) = subscribed(&app, &acme, &emu, EmuVendor::Mozilla, "bo").await;
    let id = app.send_ok(&acme, json!({"to": {"user": "bo"}, "title": "t", "body": "b", "ttl": 600, "urgency": "high", "topic_key": "order-7 status"})).await;
    app.settled(&acme, &id, WAIT).await;
    let got = &emu.received_for(&sub)[0];
    let ttl: u32 = got.ttl.as_deref().unwrap().parse().unwrap();
    assert!(
        (590..=600).contains(&ttl),
        "TTL is what remains of 600 s: {ttl}"
    );
    assert_eq!(got.urgency.as_deref(), Some("high"));
    let topic = got.topic.as_deref().unwrap();
    assert_eq!(topic.len(), 32, "Topic is a fixed-length digest: {topic}");
    assert!(topic
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    assert_eq!(got.content_encoding.as_deref(), Some("aes128gcm"));
    assert_eq!(got.http_version, reqwest::Version::HTTP_2);
}

#[tokio::test]
async fn apple_bad_web_push_topic_is_retried_once_without_the_topic() {
    let (emu, app, acme) = setup().await;
    let (sub, _) = subscribed(&app, &acme, &emu, EmuVendor::Apple, "bo").await;
    emu.script(&sub, vec![Scripted::apple_reason(400, "BadWebPushTopic")]);
    let id = app
        .send_ok(
            &acme,
            json!({"to": {"user": "bo"}, "title": "t", "body": "b", "topic_key": "k"}),
        )
        .await;
    assert_eq!(app.settled(&acme, &id, WAIT).await["delivered"], 1);
    let got = emu.received_for(&sub);
    assert_eq!(got.len(), 2);
    assert!(
        got[0].topic.is_some() && got[1].topic.is_none(),
        "second attempt has no Topic"
    );
}

#[tokio::test]
async fn legacy_aesgcm_subscriptions_receive_decryptable_pushes() {
    let (emu, app, acme) = setup().await;
    let sub = emu.subscriber(EmuVendor::Fcm);
    app.subscribe_with(&acme, json!({"user": "old", "subscription": sub.subscription_json(), "content_encoding": "aesgcm"})).await;
    let id = app
        .send_ok(
            &acme,
            json!({"to": {"user": "old"}, "title": "legacy", "body": "b"}),
        )
        .await;
    assert_eq!(app.settled(&acme, &id, WAIT).await["delivered"], 1);
    let got = &emu.received_for(&sub)[0];
    assert_eq!(got.content_encoding.as_deref(), Some("aesgcm"));
    assert_eq!(payload_of(got)["title"], "legacy");
}

#[tokio::test]
async fn wns_throttling_waits_without_using_an_attempt() {
    let (emu, app, acme) = setup().await;
    let (sub, _) = subscribed(&app, &acme, &emu, EmuVendor::Wns, "bo").await;
    emu.script(&sub, vec![Scripted::status(406).retry_after("1")]);
    let id = app
        .send_ok(
            &acme,
            json!({"to": {"user": "bo"}, "title": "t", "body": "b"}),
        )
        .await;
    let n = app.settled(&acme, &id, WAIT).await;
    assert_eq!(
        (
            n["delivered"].as_u64(),
            n["deliveries"][0]["attempts"].as_u64()
        ),
        (Some(1), Some(1)),
        "{n}"
    );
    let got = emu.received_for(&sub);
    assert!(got[1].at.duration_since(got[0].at) >= Duration::from_millis(950));
}

#[tokio::test]
async fn a_503_with_retry_after_is_retried_when_the_service_said() {
    let (emu, app, acme) = setup().await;
    let (sub, _) = subscribed(&app, &acme, &emu, EmuVendor::Mozilla, "bo").await;
    emu.script(&sub, vec![Scripted::status(503).retry_after("2")]);
    let id = app
        .send_ok(
            &acme,
            json!({"to": {"user": "bo"}, "title": "t", "body": "b"}),
        )
        .await;
    let n = app.settled(&acme, &id, WAIT).await;
    assert_eq!(
        (
            n["delivered"].as_u64(),
            n["deliveries"][0]["attempts"].as_u64()
        ),
        (Some(1), Some(2)),
        "{n}"
    );
    let got = emu.received_for(&sub);
    let waited = got[1].at.duration_since(got[0].at);
    // The test policy's backoff would retry after at most 300 ms.
    assert!(
        waited >= Duration::from_millis(1950),
        "retried after {waited:?}"
    );
}

#[tokio::test]
async fn sends_to_users_keep_within_the_apps_max_concurrency() {
    let (emu, app, acme) = setup().await;
    app.patch_app(&acme, json!({"max_concurrency": 2})).await;
    let mut subs = Vec::new();
    for i in 0..6 {
        let (sub, _) = subscribed(&app, &acme, &emu, EmuVendor::Fcm, &format!("u{i}")).await;
        emu.script(&sub, vec![Scripted::ok().delay(Duration::from_millis(600))]);
        subs.push(sub);
    }
    // Six sends at once, each to its own user: accepted together, so they
    // are stored in one go, and only two may be in flight.
    let sends = (0..6).map(|i| {
        app.send_ok(
            &acme,
            json!({"to": {"user": format!("u{i}")}, "title": "t", "body": "b"}),
        )
    });
    let ids = futures::future::join_all(sends).await;
    let got = emu.wait_for(6, WAIT).await;
    for id in &ids {
        assert_eq!(app.settled(&acme, id, WAIT).await["delivered"], 1);
    }
    // Each answer takes 600 ms, so with two in flight no 500 ms window sees
    // more than two requests arrive.
    for r in &got {
        let close = got
            .iter()
            .filter(|o| o.at >= r.at && o.at < r.at + Duration::from_millis(500))
            .count();
        assert!(
            close <= 2,
            "{close} requests began within 500 ms of each other"
        );
    }
}

#[tokio::test]
async fn a_user_with_more_devices_than_free_senders_gets_every_device() {
    let emu = Emulator::start().await;
    let app = spawn_app_with(emu.ca_file(), |s| s.concurrency = 2).await;
    let acme = app.create_app("acme").await;
    let vendors = [
        EmuVendor::Fcm,
        EmuVendor::Mozilla,
        EmuVendor::Apple,
        EmuVendor::Wns,
        EmuVendor::Fcm,
    ];
    let mut subs = Vec::new();
    for v in vendors {
        let (sub, _) = subscribed(&app, &acme, &emu, v, "bo").await;
        subs.push(sub);
    }
    let id = app
        .send_ok(
            &acme,
            json!({"to": {"user": "bo"}, "title": "all five", "body": "b"}),
        )
        .await;
    assert_eq!(app.settled(&acme, &id, WAIT).await["delivered"], 5);
    for sub in &subs {
        let got = emu.received_for(sub);
        assert_eq!(got.len(), 1, "one push per device");
        assert_eq!(payload_of(&got[0])["title"], "all five");
    }
}

#[tokio::test]
async fn an_app_at_its_max_concurrency_sends_the_next_push_as_soon_as_one_finishes() {
    let (emu, app, acme) = setup().await;
    app.patch_app(&acme, json!({"max_concurrency": 1})).await;
    let answer = Duration::from_millis(600);
    for vendor in [
        EmuVendor::Fcm,
        EmuVendor::Mozilla,
        EmuVendor::Apple,
        EmuVendor::Wns,
    ] {
        let (sub, _) = subscribed(&app, &acme, &emu, vendor, "bo").await;
        emu.script(&sub, vec![Scripted::ok().delay(answer)]);
    }
    let id = app
        .send_ok(
            &acme,
            json!({"to": {"user": "bo"}, "title": "one at a time", "body": "b"}),
        )
        .await;
    let got = emu.wait_for(4, WAIT).await;
    assert_eq!(app.settled(&acme, &id, WAIT).await["delivered"], 4);
    // One in flight at a time, and the next starts once the last answer is
    // recorded: not on a later timer tick.
    let mut at: Vec<Instant> = got.iter().map(|r| r.at).collect();
    at.sort();
    for pair in at.windows(2) {
        let gap = pair[1].duration_since(pair[0]);
        assert!(gap >= answer, "two in flight at once: {gap:?} apart");
        assert!(
            gap < answer + Duration::from_millis(100),
            "the next push waited {:?} after an answer",
            gap - answer
        );
    }
}
