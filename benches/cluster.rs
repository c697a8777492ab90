//! Delivery throughput by backend and number of instances, in one run:
//! SQLite with one instance, PostgreSQL with one, two and three.
//!
//! ```sh
//! cargo bench --bench cluster
//! HERALD_BENCH_SUBSCRIPTIONS=5000 HERALD_BENCH_NOTIFICATIONS=4 cargo bench --bench cluster
//! ```
//!
//! Each configuration gets a fresh database with one app and its
//! subscriptions on a push sink (the test emulator answering 201 at once).
//! The app is paused while every broadcast is queued; the clock starts when
//! the pause is lifted and stops when the sink has counted every push, so the
//! figure is the queue's drain rate: claim, encrypt, sign, send, record.
//! Instances are real `herald` processes (release build) on this machine:
//! they share its cores with each other, the database and the sink.

#[path = "../tests/harness/pg.rs"]
mod pg;
#[path = "../tests/harness/process.rs"]
mod process;
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use herald::secrets::MasterKey;
use herald::store::Store;
use process::{insert_subscriptions, shared_env, HeraldProcess, ADMIN};
use serde_json::json;
use support::emulator::{EmuVendor, Emulator};

struct Run {
    backend: &'static str,
    instances: usize,
    deliveries: u64,
    took: Duration,
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this
    // binary without it: then a small smoke run keeps the benchmark working.
    let measuring = std::env::args().any(|a| a == "--bench");
    let (default_subs, default_notifications) = if measuring { (2_000, 10) } else { (100, 2) };
    let subscriptions = env_or("HERALD_BENCH_SUBSCRIPTIONS", default_subs);
    let notifications = env_or("HERALD_BENCH_NOTIFICATIONS", default_notifications);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut runs = Vec::new();
    for (backend, instances) in [
        ("sqlite", 1),
        ("postgres", 1),
        ("postgres", 2),
        ("postgres", 3),
    ] {
        let run = rt.block_on(run(backend, instances, subscriptions, notifications));
        eprintln!(
            "{backend} x{instances}: {} deliveries in {:.2} s",
            run.deliveries,
            run.took.as_secs_f64()
        );
        runs.push(run);
    }
    println!();
    println!("| backend  | instances | deliveries | seconds | deliveries/s |");
    println!("|----------|----------:|-----------:|--------:|-------------:|");
    for r in &runs {
        println!(
            "| {:<8} | {:>9} | {:>10} | {:>7.2} | {:>12.0} |",
            r.backend,
            r.instances,
            r.deliveries,
            r.took.as_secs_f64(),
            r.deliveries as f64 / r.took.as_secs_f64()
        );
    }
    println!();
    if !measuring {
        println!("Smoke run with few deliveries; `cargo bench --bench cluster` measures.");
    }
    println!(
        "{} cores on this machine, shared by the instances, the database and the push sink.",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
}

async fn run(
    backend: &'static str,
    instances: usize,
    subscriptions: usize,
    notifications: usize,
) -> Run {
    let sink = Emulator::start_sink().await;
    let dir = tempfile::tempdir().unwrap();
    let schema = if backend == "postgres" {
        Some(pg::PgSchema::create().await)
    } else {
        None
    };
    let url = match &schema {
        Some(s) => s.url(),
        None => format!("sqlite://{}/herald.db", dir.path().display()),
    };
    let master = MasterKey::generate();

    // Setup straight through the storage API, then let go of the database
    // (an SQLite file belongs to the one instance).
    let (app_id, api_key) = {
        let store = Store::connect(&url, 8, 10_000)
            .await
            .expect("database opens");
        let app =
            herald::service::create_app(&store, &master, "bench", "mailto:ops@example.com", 0)
                .await
                .unwrap();
        let rows: Vec<_> = (0..subscriptions)
            .map(|i| {
                let s = sink.subscriber(EmuVendor::Fcm);
                (
                    format!("user-{i}"),
                    s.endpoint().to_string(),
                    s.p256dh().to_vec(),
                    s.auth().to_vec(),
                )
            })
            .collect();
        insert_subscriptions(&store, &app.app.id, &rows, 8).await;
        (app.app.id, app.api_key)
    };

    let env = shared_env(&url, &master, sink.ca_file(), &dir.path().join("keys"));
    let mut procs = Vec::new();
    for i in 0..instances {
        procs.push(
            HeraldProcess::start(
                env!("CARGO_BIN_EXE_herald"),
                dir.path(),
                &format!("{backend}-{i}"),
                &env,
            )
            .await,
        );
    }
    let http = reqwest::Client::new();
    for i in 0..notifications {
        let r = http
            .post(format!(
                "{}/api/v1/apps/{app_id}/notifications",
                procs[i % instances].base
            ))
            .bearer_auth(&api_key)
            .json(
                &json!({"to": {"all": true}, "title": format!("bench {i}"), "body": "throughput"}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
    }
    let total = (subscriptions * notifications) as u64;

    let started = Instant::now();
    let r = http
        .patch(format!("{}/api/v1/apps/{app_id}", procs[0].base))
        .bearer_auth(ADMIN)
        .json(&json!({"max_concurrency": 100_000}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    sink.wait_for_count(total, Duration::from_secs(600)).await;
    let took = started.elapsed();
    drop(procs);
    drop(schema);
    Run {
        backend,
        instances,
        deliveries: total,
        took,
    }
}
