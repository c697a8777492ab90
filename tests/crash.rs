//! Herald killed with SIGKILL mid-delivery and started again on the same
//! database: every delivery ends delivered, none is lost, and only those in
//! flight at the kill may arrive twice.

mod support;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use support::emulator::{EmuVendor, Emulator};

const ADMIN: &str = "crash-test-admin-token-0123456789";
const CONCURRENCY: usize = 64;
const SUBSCRIBERS: usize = 1000;
const NOTIFICATIONS: usize = 3;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Herald {
    child: Child,
    base: String,
}

/// A failing assertion must not leave a server running.
impl Drop for Herald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &std::path::Path, port: u16, emu: &Emulator) -> Herald {
    let child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("serve")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("HERALD_BIND", format!("127.0.0.1:{port}"))
        .env(
            "HERALD_DATABASE_URL",
            format!("sqlite://{}/herald.db", dir.display()),
        )
        .env("HERALD_KEYS_DIR", dir.join("keys"))
        .env("HERALD_ADMIN_TOKEN", ADMIN)
        .env("HERALD_ALLOWED_PUSH_HOSTS", "localhost")
        .env("HERALD_EXTRA_CA_FILES", emu.ca_file())
        .env("HERALD_CONCURRENCY", CONCURRENCY.to_string())
        .env("HERALD_LEASE_MS", "3000")
        .env("HERALD_REQUEST_TIMEOUT_MS", "2000")
        .env("HERALD_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("herald.log"))
                .unwrap(),
        )
        .spawn()
        .expect("herald binary starts");
    Herald {
        child,
        base: format!("http://127.0.0.1:{port}"),
    }
}

/// Waits for /healthz; on failure says whether the process died, with its log.
async fn ready(http: &reqwest::Client, herald: &mut Herald, dir: &std::path::Path) {
    for _ in 0..600 {
        if let Ok(r) = http.get(format!("{}/healthz", herald.base)).send().await {
            if r.status().is_success() {
                return;
            }
        }
        if let Some(status) = herald.child.try_wait().unwrap() {
            panic!(
                "herald exited with {status}: {}",
                std::fs::read_to_string(dir.join("herald.log")).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "herald did not become healthy in 30 s: {}",
        std::fs::read_to_string(dir.join("herald.log")).unwrap_or_default()
    );
}

async fn post(http: &reqwest::Client, url: String, token: &str, body: Value) -> Value {
    let r = http
        .post(url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_delivery_loses_nothing() {
    let emu = Emulator::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let http = reqwest::Client::new();
    let mut herald = start(dir.path(), port, &emu);
    ready(&http, &mut herald, dir.path()).await;

    let app = post(
        &http,
        format!("{}/api/v1/apps", herald.base),
        ADMIN,
        json!({"name": "crash", "contact": "mailto:ops@example.com"}),
    )
    .await;
    let (app_id, key) = (
        app["id"].as_str().unwrap().to_string(),
        app["api_key"].as_str().unwrap().to_string(),
    );
    let subscribers: Vec<_> = (0..SUBSCRIBERS)
        .map(|_| emu.subscriber(EmuVendor::Fcm))
        .collect();
    let subs_url = format!("{}/api/v1/apps/{app_id}/subscriptions", herald.base);
    futures::future::join_all(subscribers.iter().enumerate().map(|(i, s)| {
        post(
            &http,
            subs_url.clone(),
            &key,
            json!({"user": format!("u{i}"), "subscription": s.subscription_json()}),
        )
    }))
    .await;

    let mut ids = Vec::new();
    for n in 0..NOTIFICATIONS {
        let r = post(
            &http,
            format!("{}/api/v1/apps/{app_id}/notifications", herald.base),
            &key,
            json!({"to": {"all": true}, "title": format!("n{n}"), "body": "b"}),
        )
        .await;
        assert_eq!(r["deliveries"], SUBSCRIBERS);
        ids.push(r["id"].as_str().unwrap().to_string());
    }
    let total = SUBSCRIBERS * NOTIFICATIONS;
    emu.wait_until(Duration::from_secs(60), |all| all.len() >= total / 5)
        .await
        .expect("delivery under way");
    herald.child.kill().expect("SIGKILL");
    herald.child.wait().unwrap();
    let at_kill = emu.received().len();
    assert!(
        at_kill < total,
        "the kill must land mid-delivery ({at_kill} of {total} arrived)"
    );

    let mut herald = start(dir.path(), port, &emu);
    ready(&http, &mut herald, dir.path()).await;
    for id in &ids {
        let url = format!("{}/api/v1/apps/{app_id}/notifications/{id}", herald.base);
        let mut n = Value::Null;
        for _ in 0..600 {
            n = http
                .get(&url)
                .bearer_auth(&key)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if n["status"] == "completed" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            n["delivered"], SUBSCRIBERS,
            "every delivery ends delivered: {}",
            n["status"]
        );
    }
    herald.child.kill().unwrap();
    herald.child.wait().unwrap();

    // Each (device, notification) arrived at least once; extra arrivals are
    // bounded by what could have been in flight when the process died.
    let mut arrivals: HashMap<(String, String), usize> = HashMap::new();
    for r in emu.received().iter().filter(|r| r.delivered()) {
        let p: Value = serde_json::from_slice(r.plaintext.as_ref().unwrap()).unwrap();
        *arrivals
            .entry((r.token.clone(), p["id"].as_str().unwrap().to_string()))
            .or_default() += 1;
    }
    for s in &subscribers {
        for id in &ids {
            assert!(
                arrivals
                    .get(&(s.token().to_string(), id.clone()))
                    .copied()
                    .unwrap_or(0)
                    >= 1,
                "lost: {} {id}",
                s.token()
            );
        }
    }
    let duplicates: usize = arrivals.values().map(|n| n - 1).sum();
    assert!(
        duplicates <= CONCURRENCY,
        "{duplicates} duplicates, but at most {CONCURRENCY} deliveries were in flight"
    );
    eprintln!("killed after {at_kill} of {total} arrivals; {duplicates} arrived twice");
}
