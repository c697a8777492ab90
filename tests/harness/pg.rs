//! PostgreSQL for tests: a fresh schema per test on the local server, so tests
//! run in parallel on one database without seeing each other's rows.
//!
//! The server is `HERALD_TEST_PG_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`). A test that needs PostgreSQL
//! and cannot reach it fails with a message saying how to start it: it is
//! never skipped silently.
#![allow(dead_code)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::{Connection, Executor, PgConnection};

pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Schemas left behind by runs that were killed are dropped after this long.
const STALE_AFTER_SECS: u64 = 3 * 3600;

pub fn base_url() -> String {
    std::env::var("HERALD_TEST_PG_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| DEFAULT_URL.to_string())
}

/// An admin connection to the test server, or a panic that says how to start it.
pub async fn admin_connection() -> PgConnection {
    let url = base_url();
    match tokio::time::timeout(Duration::from_secs(10), PgConnection::connect(&url)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => panic!("{}", unreachable_message(&url, &e.to_string())),
        Err(_) => panic!("{}", unreachable_message(&url, "timed out after 10 s")),
    }
}

fn unreachable_message(url: &str, why: &str) -> String {
    format!(
        "PostgreSQL is needed by this test and cannot be reached at {url}: {why}\n\
         Start the local server with:\n    pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start\n\
         or point HERALD_TEST_PG_URL at another server (trust auth, an existing database).\n\
         scripts/require-postgres.sh checks the same."
    )
}

/// A schema created for one test and dropped (with every connection still
/// using it) when this value is dropped.
pub struct PgSchema {
    pub name: String,
}

impl PgSchema {
    pub async fn create() -> PgSchema {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let name = format!("t_{now}_{:08x}", rand::random::<u32>());
        let mut c = admin_connection().await;
        drop_stale(&mut c, now).await;
        c.execute(&*format!("CREATE SCHEMA {name}"))
            .await
            .expect("create test schema");
        let _ = c.close().await;
        PgSchema { name }
    }

    /// A URL whose connections use only this schema. Their application name
    /// is the schema's, so a test can find (and cut) exactly its own
    /// instance's connections.
    pub fn url(&self) -> String {
        let base = base_url();
        let sep = if base.contains('?') { '&' } else { '?' };
        format!(
            "{base}{sep}options=-c%20search_path%3D{0}&application_name={0}",
            self.name
        )
    }

    /// Terminates every server connection opened through [`PgSchema::url`]
    /// (the pool's and the wake-up listener's); returns how many.
    pub async fn terminate_connections(&self) -> i64 {
        let mut c = admin_connection().await;
        let n: i64 = sqlx::query_scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name LIKE $1 || '%' AND pid <> pg_backend_pid()",
        )
        .bind(&self.name)
        .fetch_one(&mut c)
        .await
        .expect("terminate test connections");
        let _ = c.close().await;
        n
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop may run inside a runtime: do the async work on a thread of its own.
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let Ok(mut c) = PgConnection::connect(&base_url()).await else { return };
                let _ = sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE $1 || '%'")
                    .bind(&name)
                    .execute(&mut c)
                    .await;
                let _ = c.execute("SET lock_timeout = '10s'").await;
                if let Err(e) = c.execute(&*format!("DROP SCHEMA IF EXISTS {name} CASCADE")).await {
                    eprintln!("could not drop test schema {name}: {e}");
                }
                let _ = c.close().await;
            })
        });
        let _ = done.join();
    }
}

/// Drops test schemas (named `t_<unix seconds>_<hex>`) older than a few hours.
async fn drop_stale(c: &mut PgConnection, now: u64) {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname ~ '^t_[0-9]{10}_[0-9a-f]{8}$'",
    )
    .fetch_all(&mut *c)
    .await
    .unwrap_or_default();
    for name in names {
        let created: u64 = name[2..12].parse().unwrap_or(u64::MAX);
        if created.saturating_add(STALE_AFTER_SECS) < now {
            let _ = c
                .execute(&*format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                .await;
        }
    }
}
