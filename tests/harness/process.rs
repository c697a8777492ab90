//! Herald as a real process (the `herald` binary), configured only through
//! `HERALD_*` variables, for tests and benchmarks that run several instances
//! or kill one.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use herald::domain::now_millis;
use herald::secrets::MasterKey;
use herald::store::{NewSubscription, Store};
use herald::webpush::{AllowedHosts, Endpoint, Vendor};

pub const ADMIN: &str = "cluster-admin-token-0123456789";

/// One running `herald` process.
pub struct HeraldProcess {
    pub child: Child,
    pub base: String,
    pub log: PathBuf,
}

impl HeraldProcess {
    /// Starts `binary` with `env` (plus a free port) and waits until
    /// `/healthz` answers 200. Retries with another port if the one picked was
    /// taken meanwhile.
    pub async fn start(
        binary: &str,
        dir: &Path,
        name: &str,
        env: &[(&str, String)],
    ) -> HeraldProcess {
        let mut last_error = String::new();
        for attempt in 0..3 {
            let port = free_port();
            let log = dir.join(format!("{name}-{attempt}.log"));
            let mut cmd = Command::new(binary);
            cmd.current_dir(dir)
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .env("HERALD_BIND", format!("127.0.0.1:{port}"))
                .env("HERALD_LOG", "warn,herald=warn")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("log file"));
            for (k, v) in env {
                cmd.env(k, v);
            }
            let child = cmd.spawn().expect("herald starts");
            let mut p = HeraldProcess {
                child,
                base: format!("http://127.0.0.1:{port}"),
                log,
            };
            match p.wait_healthy(Duration::from_secs(30)).await {
                Ok(()) => return p,
                Err(e) => {
                    last_error = e;
                    let _ = p.child.kill();
                    let _ = p.child.wait();
                }
            }
        }
        panic!("herald {name} did not start: {last_error}");
    }

    async fn wait_healthy(&mut self, within: Duration) -> Result<(), String> {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "exited with {status}: {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                ));
            }
            if let Ok(r) = client.get(format!("{}/healthz", self.base)).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no healthy answer within {within:?}: {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no graceful shutdown, leases stay behind.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for HeraldProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The variables every instance of one test deployment shares.
pub fn shared_env(
    database_url: &str,
    master: &MasterKey,
    ca_file: &Path,
    keys_dir: &Path,
) -> Vec<(&'static str, String)> {
    vec![
        ("HERALD_DATABASE_URL", database_url.to_string()),
        ("HERALD_MASTER_KEY", master.to_base64()),
        ("HERALD_ADMIN_TOKEN", ADMIN.to_string()),
        ("HERALD_KEYS_DIR", keys_dir.display().to_string()),
        ("HERALD_ALLOWED_PUSH_HOSTS", "localhost".to_string()),
        ("HERALD_EXTRA_CA_FILES", ca_file.display().to_string()),
        (
            "HERALD_STATIC_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/static").to_string(),
        ),
        ("HERALD_RETRY_BASE_MS", "200".to_string()),
        ("HERALD_RETRY_MAX_MS", "1000".to_string()),
    ]
}

/// Stores subscriptions directly (much faster than the API for thousands),
/// `parallel` at a time; returns their ids in the order given.
pub async fn insert_subscriptions(
    store: &Store,
    app_id: &str,
    subs: &[(String, String, Vec<u8>, Vec<u8>)],
    parallel: usize,
) -> Vec<String> {
    let allowed = AllowedHosts::with_extra(["localhost"]);
    let rows: Vec<NewSubscription> = subs
        .iter()
        .map(|(user, endpoint, p256dh, auth)| {
            let ep = Endpoint::parse(endpoint, &allowed).expect("emulator endpoint");
            NewSubscription {
                app_id: app_id.to_string(),
                user_id: user.clone(),
                endpoint: endpoint.clone(),
                endpoint_host: ep.host().to_string(),
                vendor: Vendor::of(&ep).as_str().to_string(),
                p256dh: p256dh.clone(),
                auth: auth.clone(),
                content_encoding: "aes128gcm".into(),
                topics: Vec::new(),
            }
        })
        .collect();
    let mut ids = vec![String::new(); rows.len()];
    let chunk = rows.len().div_ceil(parallel.max(1)).max(1);
    let mut tasks = Vec::new();
    for (n, part) in rows.chunks(chunk).enumerate() {
        let store = store.clone();
        let part = part.to_vec();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for s in part {
                out.push(
                    store
                        .subscription_upsert(&s, now_millis())
                        .await
                        .expect("subscription stored")
                        .0,
                );
            }
            (n, out)
        }));
    }
    for t in tasks {
        let (n, out) = t.await.unwrap();
        for (i, id) in out.into_iter().enumerate() {
            ids[n * chunk + i] = id;
        }
    }
    ids
}
