//! Starts a real Herald on a random port with a temporary SQLite database,
//! trusting the push-service emulator's CA, and offers one method per
//! endpoint so tests read like the feature they prove.
//!
//! With `HERALD_TEST_DATABASE=postgres` every instance gets a fresh schema on
//! the local PostgreSQL instead (see [`pg`]), so the same tests prove the same
//! behaviour on both backends.
#![allow(dead_code)]

pub mod pg;
pub mod process;

use std::sync::Arc;
use std::time::Duration;

use herald::{Application, Settings};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

pub const ADMIN: &str = "test-admin-token-0123456789";

pub struct TestApp {
    pub base: String,
    pub dir: TempDir,
    pub http: reqwest::Client,
    pub settings: Settings,
    /// The PostgreSQL schema of this instance, when running on PostgreSQL.
    pub schema: Option<Arc<pg::PgSchema>>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// The backend the service tests run on: `HERALD_TEST_DATABASE` is `sqlite`
/// (the default) or `postgres`.
pub fn on_postgres() -> bool {
    match std::env::var("HERALD_TEST_DATABASE").as_deref() {
        Ok("postgres") | Ok("postgresql") => true,
        Ok("sqlite") | Ok("") | Err(_) => false,
        Ok(other) => panic!("HERALD_TEST_DATABASE must be sqlite or postgres, not {other:?}"),
    }
}

/// Settings for a test instance: fast retries, the emulator trusted.
pub fn test_settings(dir: &std::path::Path, ca_file: &std::path::Path) -> Settings {
    Settings {
        bind: "127.0.0.1:0".parse().unwrap(),
        database_url: format!("sqlite://{}/herald.db", dir.display()),
        keys_dir: dir.join("keys"),
        admin_token: Some(ADMIN.into()),
        allowed_push_hosts: vec!["localhost".into()],
        extra_ca_files: vec![ca_file.to_path_buf()],
        retry_base_ms: 300,
        retry_max_ms: 2_000,
        request_timeout_ms: 5_000,
        lease_ms: 20_000,
        max_attempts: 4,
        static_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/static").into(),
        ..Settings::default()
    }
}

pub async fn spawn_app(ca_file: &std::path::Path) -> TestApp {
    spawn_app_with(ca_file, |_| {}).await
}

pub async fn spawn_app_with(
    ca_file: &std::path::Path,
    tweak: impl FnOnce(&mut Settings),
) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path(), ca_file);
    let schema = if on_postgres() {
        let schema = pg::PgSchema::create().await;
        use_postgres(&mut settings, &schema);
        Some(Arc::new(schema))
    } else {
        None
    };
    tweak(&mut settings);
    start(dir, settings, schema).await
}

/// Points settings at a PostgreSQL schema, with the master key such a
/// deployment must be given.
pub fn use_postgres(settings: &mut Settings, schema: &pg::PgSchema) {
    settings.database_url = schema.url();
    settings.master_key = Some(herald::secrets::MasterKey::generate().to_base64());
    settings.db_max_connections = 4;
}

/// Starts Herald with exactly these settings (the schema, if any, is kept
/// until the instance is dropped).
pub async fn start(dir: TempDir, settings: Settings, schema: Option<Arc<pg::PgSchema>>) -> TestApp {
    let app = Application::build(settings.clone())
        .await
        .expect("Herald starts");
    let base = format!("http://{}", app.local_addr());
    let stop = app.stop_token();
    let task = tokio::spawn(async move {
        app.run_until_stopped().await.unwrap();
    });
    TestApp {
        base,
        dir,
        http: reqwest::Client::new(),
        settings,
        schema,
        stop,
        task: Some(task),
    }
}

pub struct Created {
    pub id: String,
    pub api_key: String,
    pub vapid_public_key: String,
}

impl TestApp {
    /// Stops gracefully and starts again on the same database.
    pub async fn restart(mut self) -> TestApp {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        start(dir, self.settings.clone(), self.schema.take()).await
    }

    /// Stops gracefully and waits until the workers have finished.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call_with(method, path, token, body, &[]).await
    }

    pub async fn call_with(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("Herald answers");
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, json)
    }

    pub async fn create_app(&self, name: &str) -> Created {
        let (status, body) = self
            .call(
                Method::POST,
                "/api/v1/apps",
                Some(ADMIN),
                Some(json!({"name": name, "contact": "mailto:ops@example.com"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        Created {
            id: body["id"].as_str().unwrap().into(),
            api_key: body["api_key"].as_str().unwrap().into(),
            vapid_public_key: body["vapid_public_key"].as_str().unwrap().into(),
        }
    }

    pub async fn subscribe(&self, app: &Created, user: &str, subscription: Value) -> String {
        self.subscribe_with(app, json!({"user": user, "subscription": subscription}))
            .await
    }

    pub async fn subscribe_with(&self, app: &Created, body: Value) -> String {
        let (status, body) = self
            .call(
                Method::POST,
                &format!("/api/v1/apps/{}/subscriptions", app.id),
                Some(&app.api_key),
                Some(body),
            )
            .await;
        assert!(
            status == StatusCode::CREATED || status == StatusCode::OK,
            "{status} {body}"
        );
        body["id"].as_str().unwrap().to_string()
    }

    pub async fn send(&self, app: &Created, body: Value) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            &format!("/api/v1/apps/{}/notifications", app.id),
            Some(&app.api_key),
            Some(body),
        )
        .await
    }

    /// Sends and expects 202; returns the notification id.
    pub async fn send_ok(&self, app: &Created, body: Value) -> String {
        let (status, body) = self.send(app, body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        body["id"].as_str().unwrap().to_string()
    }

    pub async fn notification(&self, app: &Created, id: &str) -> Value {
        let (status, body) = self
            .call(
                Method::GET,
                &format!("/api/v1/apps/{}/notifications/{id}", app.id),
                Some(&app.api_key),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// Waits until the notification has nothing pending.
    pub async fn settled(&self, app: &Created, id: &str, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let n = self.notification(app, id).await;
            if n["status"] == "completed" {
                return n;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "notification still pending: {n}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn queue(&self, query: &str) -> Vec<Value> {
        let (status, body) = self
            .call(
                Method::GET,
                &format!("/api/v1/queue?{query}"),
                Some(ADMIN),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["deliveries"].as_array().unwrap().clone()
    }

    pub async fn subscriptions(&self, app: &Created, user: Option<&str>) -> Vec<Value> {
        let q = user.map(|u| format!("?user={u}")).unwrap_or_default();
        let (status, body) = self
            .call(
                Method::GET,
                &format!("/api/v1/apps/{}/subscriptions{q}", app.id),
                Some(&app.api_key),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["subscriptions"].as_array().unwrap().clone()
    }

    pub async fn patch_app(&self, app: &Created, body: Value) -> Value {
        let (status, body) = self
            .call(
                Method::PATCH,
                &format!("/api/v1/apps/{}", app.id),
                Some(ADMIN),
                Some(body),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// An instance's `/metrics` page.
pub async fn metrics_text(http: &reqwest::Client, base: &str) -> String {
    http.get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("metrics body")
}
