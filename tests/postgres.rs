//! What only PostgreSQL deployments have: instances that wake each other,
//! survive losing the database, and refuse to start without shared keys.
//! Always runs on the local PostgreSQL (see `harness/pg.rs`).

mod harness;
mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::pg::{admin_connection, PgSchema};
use harness::{start, test_settings, use_postgres, Created, TestApp, ADMIN};
use herald::domain::{new_id, now_millis, NewNotification, Recipients};
use herald::store::{Accepted, Store};
use herald::{Application, Settings};
use reqwest::{Method, StatusCode};
use serde_json::json;
use support::emulator::{EmuVendor, Emulator, Scripted, Subscriber};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(15);

/// A Herald instance on `schema`, reaching PostgreSQL at `url`.
async fn instance(emu: &Emulator, schema: &Arc<PgSchema>, url: Option<String>) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path(), emu.ca_file());
    use_postgres(&mut settings, schema);
    settings.master_key = Some(MASTER.into());
    if let Some(url) = url {
        settings.database_url = url;
    }
    start(dir, settings, Some(schema.clone())).await
}

/// Every instance of a deployment shares one master key.
const MASTER: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// Another instance's view of the database: stores work without waking
/// anything in this process, as an instance elsewhere would.
async fn elsewhere(schema: &PgSchema) -> Store {
    Store::connect(&schema.url(), 2, 10_000)
        .await
        .expect("second instance connects")
}

/// Queues a notification to `user` through `store`, as another instance's API would.
async fn queue_elsewhere(store: &Store, app: &Created, user: &str, title: &str) -> String {
    let id = new_id();
    let payload = serde_json::to_vec(&json!({"id": id, "title": title, "body": "b"})).unwrap();
    let n = NewNotification {
        id: id.clone(),
        app_id: app.id.clone(),
        recipients: Recipients::User(user.into()),
        title: title.into(),
        payload,
        ttl_secs: 3600,
        urgency: "normal".into(),
        topic_key: None,
        created_at: now_millis(),
    };
    store
        .notification_create(&n, None, 0)
        .await
        .expect("stored elsewhere");
    id
}

async fn setup(url: Option<String>) -> (Emulator, Arc<PgSchema>, TestApp, Created, Subscriber) {
    let emu = Emulator::start().await;
    let schema = Arc::new(PgSchema::create().await);
    let app = instance(&emu, &schema, url).await;
    let acme = app.create_app("acme").await;
    let sub = emu.subscriber(EmuVendor::Fcm);
    app.subscribe(&acme, "bo", sub.subscription_json()).await;
    // One delivery first: the connection to the push service is warm and the
    // queue has gone idle (nothing due: it sleeps without a timer).
    let id = app
        .send_ok(
            &acme,
            json!({"to": {"user": "bo"}, "title": "warm", "body": "b"}),
        )
        .await;
    app.settled(&acme, &id, WAIT).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    (emu, schema, app, acme, sub)
}

/// Waits until this schema's instance listens for wake-ups again.
async fn listening(schema: &PgSchema) {
    let mut c = admin_connection().await;
    let deadline = Instant::now() + WAIT;
    loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND query LIKE 'LISTEN%'")
            .bind(format!("{}-listener", schema.name))
            .fetch_one(&mut c)
            .await
            .unwrap();
        if n > 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the wake-up listener did not come back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn health(app: &TestApp) -> (StatusCode, serde_json::Value) {
    app.call(Method::GET, "/healthz", None, None).await
}

async fn health_becomes(app: &TestApp, want: StatusCode, within: Duration) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = health(app).await;
        if status == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/healthz still {status} {body} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_queued_by_another_instance_wakes_this_one_at_once() {
    let (emu, schema, _app, acme, sub) = setup(None).await;
    let other = elsewhere(&schema).await;
    let started = Instant::now();
    let id = queue_elsewhere(&other, &acme, "bo", "from elsewhere").await;
    emu.wait_for(2, WAIT).await;
    let took = started.elapsed();
    println!("queued on one instance, sent by another after {took:?}");
    // This instance had nothing due and no timer: only the notification can
    // have woken it. Milliseconds in practice; the bound leaves room for a
    // loaded machine, far below any polling period or the 30 s safety wake.
    assert!(took < Duration::from_millis(1500), "{took:?}");
    let got = emu.received_for(&sub);
    let last: serde_json::Value =
        serde_json::from_slice(got.last().unwrap().plaintext.as_ref().unwrap()).unwrap();
    assert_eq!(last["id"], id.as_str());
}

/// A send the receiving instance cannot start at once (every one of its
/// permits is taken) is announced, and an idle instance delivers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_the_receiving_instance_cannot_start_wakes_another() {
    let emu = Emulator::start().await;
    let schema = Arc::new(PgSchema::create().await);
    // Instance a sends one push at a time; instance b idles.
    let a = {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = test_settings(dir.path(), emu.ca_file());
        use_postgres(&mut settings, &schema);
        settings.master_key = Some(MASTER.into());
        settings.concurrency = 1;
        start(dir, settings, Some(schema.clone())).await
    };
    let _b = instance(&emu, &schema, None).await;
    let acme = a.create_app("acme").await;
    let (slow, quick) = (
        emu.subscriber(EmuVendor::Fcm),
        emu.subscriber(EmuVendor::Fcm),
    );
    a.subscribe(&acme, "slow", slow.subscription_json()).await;
    a.subscribe(&acme, "quick", quick.subscription_json()).await;
    emu.script(&slow, vec![Scripted::ok().delay(Duration::from_secs(3))]);

    // a has room for this one and takes it: its only permit is now held for 3 s.
    a.send_ok(
        &acme,
        json!({"to": {"user": "slow"}, "title": "slow", "body": "b"}),
    )
    .await;
    let deadline = Instant::now() + WAIT;
    while a.queue("status=in_flight").await.is_empty() {
        assert!(Instant::now() < deadline, "a never took the first send");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let started = Instant::now();
    a.send_ok(
        &acme,
        json!({"to": {"user": "quick"}, "title": "quick", "body": "b"}),
    )
    .await;
    emu.wait_until(WAIT, |all| {
        all.iter()
            .any(|r| r.token == quick.token() && r.delivered())
    })
    .await
    .expect("the second send arrives");
    let took = started.elapsed();
    // Had a kept it, it would have waited for a's permit (3 s).
    assert!(
        took < Duration::from_millis(1500),
        "the second send waited {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_force_through_another_instance_wakes_this_one() {
    let (emu, schema, app, acme, sub) = setup(None).await;
    let other = elsewhere(&schema).await;
    // A retry due in an hour: this instance sleeps until then.
    emu.script(&sub, vec![Scripted::status(429).retry_after("3600")]);
    let id = app
        .send_ok(
            &acme,
            json!({"to": {"user": "bo"}, "title": "later", "body": "b"}),
        )
        .await;
    emu.wait_until(WAIT, |all| all.len() >= 2)
        .await
        .expect("the first attempt arrives");
    let deadline = Instant::now() + WAIT;
    while app.queue("status=pending").await.is_empty() {
        assert!(Instant::now() < deadline, "the retry was not recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    assert_eq!(other.queue_force(now_millis()).await.unwrap(), 1);
    emu.wait_for(2, WAIT).await;
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(app.settled(&acme, &id, WAIT).await["delivered"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_listen_connection_is_re_established() {
    let (emu, schema, app, acme, _sub) = setup(None).await;
    listening(&schema).await;
    let cut = schema.terminate_connections().await;
    assert!(
        cut >= 2,
        "the pool's and the listener's connections were cut ({cut})"
    );
    listening(&schema).await;
    let other = elsewhere(&schema).await;
    // Still listening: work stored elsewhere is sent without delay.
    let started = Instant::now();
    queue_elsewhere(&other, &acme, "bo", "after the cut").await;
    emu.wait_for(2, WAIT).await;
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    let (status, _) = health(&app).await;
    assert_eq!(status, StatusCode::OK);
}

/// Pooled connections are not pinged on every use, only after sitting idle:
/// the first send after the database cut them all is still accepted, and
/// delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_send_after_every_connection_was_cut_is_accepted() {
    let (emu, schema, app, acme, _sub) = setup(None).await;
    let cut = schema.terminate_connections().await;
    assert!(cut >= 2, "the pools' connections were cut ({cut})");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = app
        .send(
            &acme,
            json!({"to": {"user": "bo"}, "title": "after the cut", "body": "b"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    emu.wait_for(2, WAIT).await;
    assert_eq!(app.settled(&acme, &id, WAIT).await["delivered"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_stays_up_through_a_database_outage_and_resumes_delivery() {
    let proxy = TcpProxy::start().await;
    let schema_for_url = PgSchema::create().await;
    // Herald reaches the database only through the proxy, which can cut it off.
    let mut url = url::Url::parse(&schema_for_url.url()).unwrap();
    url.set_port(Some(proxy.port)).unwrap();
    let (emu, schema, app, acme, sub) = setup_with_schema(schema_for_url, url.to_string()).await;
    let other = elsewhere(&schema).await;
    assert_eq!(health(&app).await.0, StatusCode::OK);

    proxy.set_up(false);
    let body = health_becomes(&app, StatusCode::SERVICE_UNAVAILABLE, WAIT).await;
    assert_eq!(
        (body["status"].as_str(), body["database"].as_str()),
        (Some("degraded"), Some("postgres")),
        "{body}"
    );
    let (status, refused) = app
        .send(
            &acme,
            json!({"to": {"user": "bo"}, "title": "refused", "body": "b"}),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{refused}");
    assert_eq!(refused["error"]["code"], "database_unavailable");
    // Work accepted meanwhile by an instance that still reaches the database.
    let id = queue_elsewhere(&other, &acme, "bo", "during the outage").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        emu.received_for(&sub).len(),
        1,
        "nothing can be claimed while the database is away"
    );

    proxy.set_up(true);
    let body = health_becomes(&app, StatusCode::OK, WAIT).await;
    assert_eq!(body["status"], "ok");
    emu.wait_for(2, WAIT).await;
    let got = emu.received_for(&sub);
    let last: serde_json::Value =
        serde_json::from_slice(got.last().unwrap().plaintext.as_ref().unwrap()).unwrap();
    assert_eq!(last["id"], id.as_str(), "delivery resumed");
    assert_eq!(app.settled(&acme, &id, WAIT).await["delivered"], 1);
    // And the API takes work again.
    app.send_ok(
        &acme,
        json!({"to": {"user": "bo"}, "title": "after", "body": "b"}),
    )
    .await;
    emu.wait_for(3, WAIT).await;
}

async fn setup_with_schema(
    schema: PgSchema,
    url: String,
) -> (Emulator, Arc<PgSchema>, TestApp, Created, Subscriber) {
    let emu = Emulator::start().await;
    let schema = Arc::new(schema);
    let app = instance(&emu, &schema, Some(url)).await;
    let acme = app.create_app("acme").await;
    let sub = emu.subscriber(EmuVendor::Fcm);
    app.subscribe(&acme, "bo", sub.subscription_json()).await;
    let id = app
        .send_ok(
            &acme,
            json!({"to": {"user": "bo"}, "title": "warm", "body": "b"}),
        )
        .await;
    app.settled(&acme, &id, WAIT).await;
    (emu, schema, app, acme, sub)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_queue_and_the_admin_token() {
    let emu = Emulator::start().await;
    let schema = Arc::new(PgSchema::create().await);
    let a = instance(&emu, &schema, None).await;
    let b = instance(&emu, &schema, None).await;
    let acme = a.create_app("acme").await;
    let mut subs = Vec::new();
    for i in 0..20 {
        let sub = emu.subscriber(EmuVendor::ALL[i % 5]);
        b.subscribe(&acme, &format!("user-{i}"), sub.subscription_json())
            .await;
        subs.push(sub);
    }
    let (status, listed) = b
        .call(
            Method::GET,
            &format!("/api/v1/apps/{}", acme.id),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the app created through one instance is seen by the other: {listed}"
    );
    let id = a
        .send_ok(
            &acme,
            json!({"to": {"all": true}, "title": "everyone", "body": "b"}),
        )
        .await;
    let n = b.settled(&acme, &id, WAIT).await;
    assert_eq!(n["delivered"], 20, "{n}");
    for s in &subs {
        assert_eq!(emu.received_for(s).len(), 1, "each device exactly once");
    }
    // Pausing through one instance holds the work of both.
    b.patch_app(&acme, json!({"max_concurrency": 0})).await;
    let held = a
        .send_ok(
            &acme,
            json!({"to": {"all": true}, "title": "held", "body": "b"}),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(emu.received().len(), 20);
    // Raising the limit on one instance wakes both.
    a.patch_app(&acme, json!({"max_concurrency": 3})).await;
    assert_eq!(b.settled(&acme, &held, WAIT).await["delivered"], 20);
    assert_eq!(emu.received().len(), 40);
}

#[tokio::test]
async fn postgres_requires_a_configured_master_key_and_admin_token() {
    let schema = PgSchema::create().await;
    let dir = tempfile::tempdir().unwrap();
    let base = Settings {
        bind: "127.0.0.1:0".parse().unwrap(),
        database_url: schema.url(),
        keys_dir: dir.path().join("keys"),
        ..Settings::default()
    };
    let no_key = Settings {
        admin_token: Some(ADMIN.into()),
        ..base.clone()
    };
    let err = Application::build(no_key)
        .await
        .err()
        .expect("no master key: refused")
        .to_string();
    assert!(err.contains("HERALD_MASTER_KEY"), "{err}");
    assert!(
        !dir.path().join("keys/master.key").exists(),
        "no key was made up"
    );

    let no_token = Settings {
        master_key: Some(MASTER.into()),
        ..base.clone()
    };
    let err = format!(
        "{:#}",
        Application::build(no_token)
            .await
            .err()
            .expect("no admin token: refused")
    );
    assert!(err.contains("HERALD_ADMIN_TOKEN"), "{err}");
    assert!(
        !dir.path().join("keys/admin-token").exists(),
        "no token was made up"
    );

    let key_file = dir.path().join("master.key");
    std::fs::write(&key_file, MASTER).unwrap();
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, format!("{ADMIN}\n")).unwrap();
    let from_files = Settings {
        master_key_file: Some(key_file),
        admin_token_file: Some(token_file),
        ..base.clone()
    };
    let app = Application::build(from_files)
        .await
        .expect("keys from shared files");
    assert!(
        app.new_admin_token.is_none(),
        "nothing to show: the token was given"
    );
}

#[test]
fn herald_refuses_to_start_on_postgres_without_a_master_key() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let schema = rt.block_on(PgSchema::create());
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .current_dir(dir.path())
        .env_clear()
        .env("HERALD_DATABASE_URL", schema.url())
        .env("HERALD_BIND", "127.0.0.1:0")
        .env("HERALD_ADMIN_TOKEN", ADMIN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("HERALD_MASTER_KEY"), "{stderr}");
}

#[test]
fn herald_migrate_creates_the_postgres_schema() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let schema = rt.block_on(PgSchema::create());
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("migrate")
        .current_dir(dir.path())
        .env_clear()
        .env("HERALD_DATABASE_URL", schema.url())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("database is up to date"));
    let tables: Vec<String> = rt.block_on(async {
        let mut c = admin_connection().await;
        sqlx::query_scalar("SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1")
            .bind(&schema.name)
            .fetch_all(&mut c)
            .await
            .unwrap()
    });
    for t in [
        "apps",
        "deliveries",
        "idempotency_keys",
        "notifications",
        "subscription_topics",
        "subscriptions",
    ] {
        assert!(tables.iter().any(|x| x == t), "{t} missing from {tables:?}");
    }
    // Again: nothing to do, still fine.
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("migrate")
        .current_dir(dir.path())
        .env_clear()
        .env("HERALD_DATABASE_URL", schema.url())
        .output()
        .unwrap();
    assert!(again.status.success());
}

/// An app row stored directly, for tests of the store alone.
fn app_row(id: &str, max_concurrency: i64) -> herald::store::AppRow {
    herald::store::AppRow {
        id: id.into(),
        name: id.into(),
        contact: "mailto:a@example.com".into(),
        api_key_hash: id.as_bytes().to_vec(),
        vapid_public_key: "k".into(),
        vapid_private_sealed: vec![1],
        vapid_generation: 1,
        max_concurrency,
        last_config_error: None,
        last_config_error_at: None,
        created_at: now_millis(),
    }
}

#[tokio::test]
async fn the_statement_timeout_bounds_a_blocked_statement() {
    let schema = PgSchema::create().await;
    let store = Store::connect(&schema.url(), 2, 300).await.unwrap();
    let app = app_row(&new_id(), 1);
    store.app_insert(&app).await.unwrap();
    // Another session holds the app row.
    let mut blocker = admin_connection().await;
    sqlx::query(&format!("SET search_path = {}", schema.name))
        .execute(&mut blocker)
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
    sqlx::query("SELECT 1 FROM apps WHERE id = $1 FOR UPDATE")
        .bind(&app.id)
        .execute(&mut blocker)
        .await
        .unwrap();
    let started = Instant::now();
    let err = store
        .app_update(&app.id, None, Some(2))
        .await
        .expect_err("cancelled by the statement timeout");
    assert!(err.to_string().contains("statement timeout"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
}

/// A send to everyone or to a topic is stored in chunks of subscriptions,
/// so that `statement_timeout` bounds each statement, not the size of an
/// app's audience. Audiences below, above and at an exact multiple of the
/// chunk get one delivery per subscription of their app, with and without
/// an idempotency key.
#[tokio::test]
async fn sends_to_large_audiences_store_one_delivery_per_subscription() {
    let schema = PgSchema::create().await;
    let store = Store::connect(&schema.url(), 2, 10_000).await.unwrap();
    store.app_insert(&app_row("big", 0)).await.unwrap();
    store.app_insert(&app_row("other", 0)).await.unwrap();
    // 45 000 subscriptions in "big", 40 000 of them (twice the chunk) in
    // topic "news"; ids in an order unrelated to the rows' order. A few in
    // "other", in the same topic.
    let mut c = admin_connection().await;
    sqlx::query(&format!("SET search_path = {}", schema.name))
        .execute(&mut c)
        .await
        .unwrap();
    for (app_id, count) in [("big", 45_000), ("other", 300)] {
        sqlx::query(
            "INSERT INTO subscriptions (id, app_id, user_id, endpoint, endpoint_host, vendor, p256dh, auth, content_encoding, created_at, updated_at)
             SELECT md5($1 || i), $1, 'u' || i, 'https://fcm.googleapis.com/fcm/send/' || $1 || i, 'fcm.googleapis.com', 'fcm',
                    '\\x04', '\\x00', 'aes128gcm', 0, 0
             FROM generate_series(1, $2) i",
        )
        .bind(app_id)
        .bind(count)
        .execute(&mut c)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO subscription_topics (app_id, topic, subscription_id)
             SELECT $1, 'news', md5($1 || i) FROM generate_series(1, least($2, 40000)) i",
        )
        .bind(app_id)
        .bind(count)
        .execute(&mut c)
        .await
        .unwrap();
    }
    let send = |to: Recipients| NewNotification {
        id: new_id(),
        app_id: "big".into(),
        recipients: to,
        title: "t".into(),
        payload: b"{}".to_vec(),
        ttl_secs: 3600,
        urgency: "normal".into(),
        topic_key: None,
        created_at: now_millis(),
    };
    let cases = [
        (Recipients::All, None, 45_000),
        (Recipients::Topic("news".into()), None, 40_000),
        (Recipients::Topic("nobody".into()), None, 0),
        (Recipients::All, Some("once"), 45_000),
    ];
    for (to, key, want) in cases {
        let n = send(to.clone());
        let accepted = store.notification_create(&n, key, 60_000).await.unwrap();
        assert!(
            matches!(accepted, Accepted::Created { deliveries, .. } if deliveries == want),
            "{to:?}: {accepted:?}"
        );
        let (rows, subscriptions, other_apps): (i64, i64, i64) = sqlx::query_as(
            "SELECT count(*), count(DISTINCT subscription_id), count(*) FILTER (WHERE app_id <> 'big')
             FROM deliveries WHERE notification_id = $1",
        )
        .bind(&n.id)
        .fetch_one(&mut c)
        .await
        .unwrap();
        assert_eq!(
            (rows, subscriptions, other_apps),
            (want as i64, want as i64, 0),
            "{to:?}"
        );
    }
    // The key's answer is replayed whole, and nothing more is stored.
    let again = store
        .notification_create(&send(Recipients::All), Some("once"), 60_000)
        .await
        .unwrap();
    assert!(
        matches!(
            again,
            Accepted::Replayed {
                deliveries: 45_000,
                ..
            }
        ),
        "{again:?}"
    );
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM deliveries")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(total, 45_000 + 40_000 + 45_000);
}

/// A claim runs many times a second. With a long history of finished
/// deliveries it must still find due work through the queue's partial
/// indexes: a sequential scan per claim would pass over the whole history
/// every time. The risky moment is a large send being worked off: the
/// table's statistics still say "mostly pending" while the rows at the start
/// of the table are already delivered. The claim's plans are generic
/// (migration 0004), and a generic plan does not know how few rows a claim
/// returns: each claimed row must still read its subscription by key, not
/// join a scan of every subscription.
#[tokio::test]
async fn claims_find_due_work_through_the_indexes_not_by_scanning_history() {
    let schema = PgSchema::create().await;
    // Creates the schema, the claim function included.
    let store = Store::connect(&schema.url(), 2, 10_000).await.unwrap();
    drop(store);
    let mut c = admin_connection().await;
    for sql in [
        format!("SET search_path = {}", schema.name),
        "INSERT INTO apps (id, name, contact, api_key_hash, vapid_public_key, vapid_private_sealed, max_concurrency, created_at)
             VALUES ('app', 'a', 'mailto:a@example.com', '\\x01', 'k', '\\x01', 1024, 0)".into(),
        "INSERT INTO notifications (id, app_id, title, payload, ttl_secs, urgency, created_at, expires_at)
             VALUES ('n', 'app', 't', '\\x01', 3600, 'normal', 0, 9000000000000)".into(),
        "INSERT INTO subscriptions (id, app_id, user_id, endpoint, endpoint_host, vendor, p256dh, auth, content_encoding, created_at, updated_at)
             SELECT 's' || i, 'app', 'u' || i, 'https://push.example/' || i, 'push.example', 'other', '\\x04', '\\x01', 'aes128gcm', 0, 0
             FROM generate_series(1, 20000) i".into(),
        "INSERT INTO deliveries (notification_id, app_id, subscription_id, user_id, endpoint_host, vendor, next_attempt_at, expires_at, created_at)
             SELECT 'n', 'app', 's' || i, 'u' || i, 'push.example', 'other', 0, 9000000000000, 0 FROM generate_series(1, 20000) i".into(),
        "ANALYZE subscriptions".into(),
        "ANALYZE deliveries".into(),
        // Worked off since the statistics were gathered, but ten.
        "UPDATE deliveries SET status = 'delivered', attempts = 1, finished_at = 1 WHERE id <= 19990".into(),
    ] {
        sqlx::query(&sql).execute(&mut c).await.unwrap();
    }

    sqlx::query("BEGIN").execute(&mut c).await.unwrap();
    let seq_scans = "SELECT relname::text, seq_scan FROM pg_stat_xact_user_tables
         WHERE relid IN ('deliveries'::regclass, 'subscriptions'::regclass) ORDER BY relname";
    let before: Vec<(String, i64)> = sqlx::query_as(seq_scans).fetch_all(&mut c).await.unwrap();
    let mut endpoints = Vec::new();
    for _ in 0..8 {
        let claimed: Vec<(i64, Option<String>)> =
            sqlx::query_as("SELECT id, endpoint FROM herald_claim(1000, 2000, 1)")
                .fetch_all(&mut c)
                .await
                .unwrap();
        endpoints.extend(
            claimed
                .into_iter()
                .map(|(id, endpoint)| (id, endpoint.unwrap())),
        );
    }
    let after: Vec<(String, i64)> = sqlx::query_as(seq_scans).fetch_all(&mut c).await.unwrap();
    sqlx::query("ROLLBACK").execute(&mut c).await.unwrap();

    let mut ids: Vec<i64> = endpoints.iter().map(|(id, _)| *id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(
        ids.len(),
        8,
        "each claim takes one of the ten due deliveries"
    );
    assert!(
        ids.iter().all(|id| *id > 19_990),
        "only due deliveries are claimed"
    );
    for (id, endpoint) in &endpoints {
        // Delivery i was made for subscription i.
        assert_eq!(endpoint, &format!("https://push.example/{id}"));
    }
    let scans: Vec<(String, i64)> = before
        .iter()
        .zip(&after)
        .map(|((table, b), (_, a))| (table.clone(), a - b))
        .collect();
    assert_eq!(
        scans,
        [
            ("deliveries".to_string(), 0),
            ("subscriptions".to_string(), 0)
        ],
        "sequential scans by the claims"
    );
}

/// A TCP proxy in front of PostgreSQL that can cut every connection and
/// refuse new ones, as a database restart looks from Herald's side, without
/// touching the shared server.
struct TcpProxy {
    port: u16,
    up: Arc<AtomicBool>,
    cut: Arc<std::sync::Mutex<CancellationToken>>,
    stop: CancellationToken,
}

impl TcpProxy {
    async fn start() -> TcpProxy {
        let target = {
            let u = url::Url::parse(&harness::pg::base_url()).unwrap();
            format!(
                "{}:{}",
                u.host_str().unwrap_or("127.0.0.1"),
                u.port().unwrap_or(5432)
            )
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
        let stop = CancellationToken::new();
        let (up2, cut2, stop2) = (up.clone(), cut.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (mut client, _) = tokio::select! {
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                    _ = stop2.cancelled() => return,
                };
                if !up2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let token = cut2.lock().unwrap().clone();
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {},
                        _ = token.cancelled() => {},
                    }
                });
            }
        });
        TcpProxy {
            port,
            up,
            cut,
            stop,
        }
    }

    /// Down: every open connection is cut and new ones are closed at once.
    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
        if !up {
            let mut cut = self.cut.lock().unwrap();
            cut.cancel();
            *cut = CancellationToken::new();
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.cut.lock().unwrap().cancel();
    }
}

/// Two instances storing sends to users of one app at the same moment: the
/// second waits for the first's lock on the app before it touches the app's
/// row at all. Were its notifications inserted first, their foreign key's
/// share lock would join the first instance's lock on the row in a
/// MultiXact, one more for every batch that arrives meanwhile, each logged
/// and looked up again by every later reader of the row (migration 0006).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_waiting_for_another_instances_lock_on_the_app_leaves_the_lock_unshared() {
    let schema = PgSchema::create().await;
    let store = Store::connect(&schema.url(), 2, 10_000).await.unwrap();
    store.app_insert(&app_row("acme", 10)).await.unwrap();
    let session = || async {
        let mut c = admin_connection().await;
        sqlx::query(&format!("SET search_path = {}", schema.name))
            .execute(&mut c)
            .await
            .unwrap();
        c
    };
    // One send to one user, leasing up to four deliveries: the app is locked.
    async fn store_one_send(c: &mut sqlx::PgConnection, id: &str) {
        let now = now_millis();
        sqlx::query(
            "SELECT count(*) FROM herald_store_to_users(ARRAY[$1], ARRAY['acme'], ARRAY['t'],
                ARRAY['\\x00'::bytea], ARRAY[60::bigint], ARRAY['normal'], ARRAY[NULL::text],
                ARRAY[$2::bigint], ARRAY[$3::bigint], ARRAY['bo'], $2, $3, 4)",
        )
        .bind(id)
        .bind(now)
        .bind(now + 60_000)
        .execute(c)
        .await
        .unwrap();
    }

    let mut first = session().await;
    sqlx::query("BEGIN").execute(&mut first).await.unwrap();
    store_one_send(&mut first, "n1").await;
    let first_xid: String =
        sqlx::query_scalar("SELECT (pg_current_xact_id()::text::bigint % 4294967296)::text")
            .fetch_one(&mut first)
            .await
            .unwrap();

    let mut second = session().await;
    let second_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut second)
        .await
        .unwrap();
    let waiting = tokio::spawn(async move {
        store_one_send(&mut second, "n2").await;
    });
    let mut observer = session().await;
    let deadline = Instant::now() + WAIT;
    loop {
        let lock_wait: Option<String> =
            sqlx::query_scalar("SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1")
                .bind(second_pid)
                .fetch_one(&mut observer)
                .await
                .unwrap();
        if lock_wait.as_deref() == Some("Lock") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the second store never waited for the app's lock"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The row's xmax is still the first transaction's own: no MultiXact.
    let xmax: String = sqlx::query_scalar("SELECT xmax::text FROM apps WHERE id = 'acme'")
        .fetch_one(&mut observer)
        .await
        .unwrap();
    assert_eq!(
        xmax, first_xid,
        "the app's row lock is shared with the waiting store"
    );

    sqlx::query("COMMIT").execute(&mut first).await.unwrap();
    tokio::time::timeout(WAIT, waiting).await.unwrap().unwrap();
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM notifications WHERE app_id = 'acme'")
            .fetch_one(&mut observer)
            .await
            .unwrap();
    assert_eq!(stored, 2);
}
