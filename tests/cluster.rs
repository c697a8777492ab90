//! Three Herald processes on one PostgreSQL database deliver 20 000
//! notifications while one of them is killed with SIGKILL mid-way: every
//! delivery ends delivered, none is lost, and only deliveries whose lease was
//! cut arrive twice.

mod harness;
mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::pg::{admin_connection, PgSchema};
use harness::process::{insert_subscriptions, shared_env, HeraldProcess};
use herald::secrets::MasterKey;
use herald::store::Store;
use serde_json::{json, Value};
use support::emulator::{EmuVendor, Emulator, Scripted};

const SUBSCRIPTIONS: usize = 2_000;
const NOTIFICATIONS: usize = 10;
const TOTAL: usize = SUBSCRIPTIONS * NOTIFICATIONS;
/// Pushes in flight per instance: the most a killed instance can leave unrecorded.
const CONCURRENCY: usize = 100;
/// The app's limit, below the three instances' 300 together.
const APP_LIMIT: i64 = 150;
/// How long the push service takes over each answer.
const ANSWER_DELAY: Duration = Duration::from_millis(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_deliver_everything_when_one_is_killed_mid_way() {
    let started = Instant::now();
    let emu = Emulator::start().await;
    let schema = PgSchema::create().await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&schema.url(), 8, 10_000)
        .await
        .expect("schema migrated");
    let master = MasterKey::generate();
    let app = herald::service::create_app(
        &store,
        &master,
        "cluster",
        "mailto:ops@example.com",
        APP_LIMIT as u32,
    )
    .await
    .unwrap();

    let vendors = [
        EmuVendor::Fcm,
        EmuVendor::Mozilla,
        EmuVendor::Apple,
        EmuVendor::Generic,
    ];
    let subscribers: Vec<_> = (0..SUBSCRIPTIONS)
        .map(|i| emu.subscriber(vendors[i % vendors.len()]))
        .collect();
    // Each answer takes a moment, so a push seen in flight is still in
    // flight (and its lease unrecorded) when the instance is killed just
    // after: with instant answers it could be recorded in between.
    for s in &subscribers {
        emu.script(s, vec![Scripted::ok().delay(ANSWER_DELAY); NOTIFICATIONS]);
    }
    let rows: Vec<_> = subscribers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            (
                format!("user-{i}"),
                s.endpoint().to_string(),
                s.p256dh().to_vec(),
                s.auth().to_vec(),
            )
        })
        .collect();
    let sub_ids = insert_subscriptions(&store, &app.app.id, &rows, 8).await;
    let sub_of_token: HashMap<String, String> = subscribers
        .iter()
        .zip(&sub_ids)
        .map(|(s, id)| (s.token().to_string(), id.clone()))
        .collect();
    println!(
        "setup: {SUBSCRIPTIONS} subscriptions in {:?}",
        started.elapsed()
    );

    let mut env = shared_env(
        &schema.url(),
        &master,
        emu.ca_file(),
        &dir.path().join("keys"),
    );
    env.extend([
        ("HERALD_CONCURRENCY", CONCURRENCY.to_string()),
        ("HERALD_CLAIM_BATCH", "50".to_string()),
        ("HERALD_LEASE_MS", "3000".to_string()),
        ("HERALD_REQUEST_TIMEOUT_MS", "2000".to_string()),
        ("HERALD_DB_MAX_CONNECTIONS", "6".to_string()),
    ]);
    let binary = env!("CARGO_BIN_EXE_herald");
    let mut instances = Vec::new();
    for name in ["a", "b", "c"] {
        instances.push(HeraldProcess::start(binary, dir.path(), name, &env).await);
    }

    // The app's limit holds for the three together: sample the leases in force.
    let most_leased = Arc::new(AtomicI64::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (most, on, app_id, schema_name) = (
            most_leased.clone(),
            sampling.clone(),
            app.app.id.clone(),
            schema.name.clone(),
        );
        tokio::spawn(async move {
            let mut c = admin_connection().await;
            sqlx::query(&format!("SET search_path = {schema_name}"))
                .execute(&mut c)
                .await
                .unwrap();
            while on.load(Ordering::Relaxed) {
                // clock_timestamp(): read after the snapshot, so a lease a
                // claimer already saw as expired is never counted here.
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM deliveries WHERE app_id = $1 AND status = 'in_flight'
                         AND lease_until > (extract(epoch FROM clock_timestamp()) * 1000)::bigint",
                )
                .bind(&app_id)
                .fetch_one(&mut c)
                .await
                .unwrap();
                most.fetch_max(n, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    // Ten broadcasts, sent through the three instances in turn.
    let http = reqwest::Client::new();
    let sending = Instant::now();
    for i in 0..NOTIFICATIONS {
        let base = &instances[i % 3].base;
        let r = http
            .post(format!("{base}/api/v1/apps/{}/notifications", app.app.id))
            .bearer_auth(&app.api_key)
            .json(&json!({"to": {"all": true}, "title": format!("broadcast {i}"), "body": "b"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["deliveries"], SUBSCRIPTIONS as u64);
    }

    // Kill one instance while everyone is busy.
    emu.wait_until(Duration::from_secs(60), |all| all.len() >= TOTAL / 4)
        .await
        .expect("a quarter arrives");
    // Others may hold the app's whole limit for a moment: kill b while it
    // has pushes of its own in flight, so it leaves leases behind. A few
    // seen in flight may all be answered and recorded by the time the kill
    // lands, so wait for more than a few.
    let deadline = Instant::now() + Duration::from_secs(30);
    while in_flight(&http, &instances[1].base).await < 10 {
        assert!(Instant::now() < deadline, "instance b never took part");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    instances[1].kill();
    let at_kill = emu.received().len();
    println!(
        "killed instance b after {at_kill} arrivals, {:?} into sending",
        sending.elapsed()
    );

    // Wait for the database to show every delivery finished.
    let deadline = Instant::now() + Duration::from_secs(90);
    let statuses = loop {
        let statuses: Vec<(String, i64)> = sqlx::query_as(&format!(
            "SELECT status, count(*) FROM {}.deliveries GROUP BY status ORDER BY status",
            schema.name
        ))
        .fetch_all(&mut admin_connection().await)
        .await
        .unwrap();
        if statuses
            .iter()
            .all(|(s, _)| s != "pending" && s != "in_flight")
        {
            break statuses;
        }
        assert!(Instant::now() < deadline, "still unfinished: {statuses:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let took = sending.elapsed();
    sampling.store(false, Ordering::Relaxed);
    sampler.await.unwrap();
    assert_eq!(
        statuses,
        vec![("delivered".to_string(), TOTAL as i64)],
        "every delivery ends delivered"
    );

    // What arrived: every (device, notification) at least once, every request valid.
    let received = emu.received();
    let mut arrivals: HashMap<(String, String), usize> = HashMap::new();
    for r in &received {
        assert!(
            r.delivered() && r.refusal.is_none(),
            "refused push: {:?} {:?}",
            r.status_answered,
            r.refusal
        );
        let payload: Value =
            serde_json::from_slice(r.plaintext.as_ref().expect("decrypted")).unwrap();
        let sub = sub_of_token.get(&r.token).expect("a known device").clone();
        *arrivals
            .entry((sub, payload["id"].as_str().unwrap().to_string()))
            .or_default() += 1;
    }
    assert_eq!(arrivals.len(), TOTAL, "none lost");
    let duplicates: usize = arrivals.values().map(|n| n - 1).sum();

    // A delivery that arrived k times was claimed at least k times: only a
    // lease that ran out (the killed instance's) lets a delivery go out again.
    let claims: Vec<(String, String, i64)> = sqlx::query_as(&format!(
        "SELECT subscription_id, notification_id, claims FROM {}.deliveries",
        schema.name
    ))
    .fetch_all(&mut admin_connection().await)
    .await
    .unwrap();
    let claims: HashMap<(String, String), i64> =
        claims.into_iter().map(|(s, n, c)| ((s, n), c)).collect();
    let reclaimed = claims.values().filter(|c| **c > 1).count();
    for (key, n) in &arrivals {
        if *n > 1 {
            assert!(
                claims[key] >= *n as i64,
                "{key:?} arrived {n} times but was claimed {} times",
                claims[key]
            );
        }
    }
    let most = most_leased.load(Ordering::Relaxed);
    println!(
        "{TOTAL} deliveries in {took:?} ({:.0}/s) by 3 instances, one killed: {} arrivals, {duplicates} duplicates, \
         {reclaimed} deliveries re-claimed after their lease, at most {most} leases in force; whole test {:?}",
        TOTAL as f64 / took.as_secs_f64(),
        received.len(),
        started.elapsed()
    );
    assert!(
        duplicates <= CONCURRENCY,
        "{duplicates} duplicates, more than the killed instance had in flight ({CONCURRENCY})"
    );
    assert!(
        most <= APP_LIMIT,
        "{most} leases in force for max_concurrency {APP_LIMIT}"
    );
    assert!(
        reclaimed > 0,
        "the killed instance left leases behind (else the test killed nothing in flight)"
    );

    // The survivors are still healthy.
    for i in [0, 2] {
        let r = http
            .get(format!("{}/healthz", instances[i].base))
            .send()
            .await;
        let r = r.unwrap_or_else(|e| {
            panic!(
                "instance {i} does not answer: {e}; log: {}",
                std::fs::read_to_string(&instances[i].log).unwrap_or_default()
            )
        });
        let status = r.status();
        assert_eq!(
            status,
            200,
            "instance {i}: {}",
            r.text().await.unwrap_or_default()
        );
    }
}

/// The instance's pushes in flight, from its metrics.
async fn in_flight(http: &reqwest::Client, base: &str) -> i64 {
    harness::metrics_text(http, base)
        .await
        .lines()
        .find_map(|l| l.strip_prefix("herald_in_flight ")?.trim().parse().ok())
        .expect("an in-flight gauge")
}
