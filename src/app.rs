//! `Application::build` wires configuration, key material, storage, the
//! outbound client, the queue and the HTTP API. `serve`, the tests and the
//! benchmarks all start Herald through it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::http::{self, AppState};
use crate::metrics::Metrics;
use crate::queue::{retry::RetryPolicy, sender::Sender, Queue};
use crate::secrets::{AdminToken, MasterKey, UserTokens};
use crate::store::Store;
use crate::webpush::AllowedHosts;

pub struct Application {
    listener: tokio::net::TcpListener,
    router: axum::Router,
    queue: Queue,
    stop: CancellationToken,
    /// The admin token when it was created by this start (shown once).
    pub new_admin_token: Option<String>,
    pub store: Store,
}

/// The master key: from configuration, else the key file. Only SQLite may
/// create one: instances sharing PostgreSQL must share one key.
pub fn load_master_key(s: &Settings) -> anyhow::Result<MasterKey> {
    if let Some(k) = &s.master_key {
        return MasterKey::from_base64(k).context("HERALD_MASTER_KEY");
    }
    let path = s
        .master_key_file
        .clone()
        .unwrap_or_else(|| s.keys_dir.join("master.key"));
    if s.is_postgres() && s.master_key_file.is_none() && !path.exists() {
        bail!(
            "PostgreSQL deployments share one master key between all instances: set HERALD_MASTER_KEY \
             (base64 of 32 bytes; `herald keys generate` prints one) or HERALD_MASTER_KEY_FILE"
        );
    }
    let (key, created) = MasterKey::load_or_create(&path, !s.is_postgres())
        .with_context(|| format!("master key {}", path.display()))?;
    if created {
        tracing::info!(path = %path.display(), "created a new master key; back it up: without it sealed VAPID keys cannot be opened");
    }
    Ok(key)
}

/// The admin token: from configuration, else the token file. Only SQLite may
/// create one: every instance sharing PostgreSQL must accept the same token,
/// so there it comes from `HERALD_ADMIN_TOKEN` or a file the operator shares
/// (`HERALD_ADMIN_TOKEN_FILE`).
pub fn load_admin_token(s: &Settings) -> anyhow::Result<AdminToken> {
    let checked = |t: &str| {
        if t.trim().len() >= 16 {
            Ok(AdminToken::from_value(t))
        } else {
            bail!("the admin token must be at least 16 characters")
        }
    };
    if let Some(t) = &s.admin_token {
        return checked(t).context("HERALD_ADMIN_TOKEN");
    }
    if let Some(path) = &s.admin_token_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("admin token file {}", path.display()))?;
        return checked(&text).with_context(|| format!("admin token file {}", path.display()));
    }
    let path = s.keys_dir.join("admin-token");
    if s.is_postgres() && !path.exists() {
        bail!(
            "PostgreSQL deployments share one admin token between all instances: set HERALD_ADMIN_TOKEN \
             (at least 16 characters) or HERALD_ADMIN_TOKEN_FILE"
        );
    }
    AdminToken::load_or_create(&path).context("admin token")
}

pub fn allowed_hosts(s: &Settings) -> AllowedHosts {
    AllowedHosts::with_extra(&s.allowed_push_hosts)
}

/// The outbound client: rustls, HTTP/2 where offered, pooled connections per
/// origin, no redirects (a redirect could lead off the allow-list).
pub fn push_client(s: &Settings) -> anyhow::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(s.request_timeout())
        .connect_timeout(Duration::from_secs(10).min(s.request_timeout()))
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(64)
        .tcp_nodelay(true)
        .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")));
    for path in &s.extra_ca_files {
        let pem =
            std::fs::read(path).with_context(|| format!("extra CA file {}", path.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("extra CA file {}", path.display()))?
        {
            b = b.add_root_certificate(cert);
        }
    }
    if let Some(proxy) = &s.proxy {
        // Proxy::all: HTTPS push hosts are reached through CONNECT by name, so
        // the proxy resolves them, as firewalled networks require.
        let mut p = reqwest::Proxy::all(proxy).with_context(|| format!("proxy URL {proxy}"))?;
        if let Some(no) = &s.no_proxy {
            p = p.no_proxy(reqwest::NoProxy::from_string(no));
        }
        b = b.proxy(p);
    }
    b.build().context("building the HTTP client")
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        settings.validate()?;
        let master = load_master_key(&settings)?;
        let admin = load_admin_token(&settings)?;
        let new_admin_token = admin.created.clone();
        let store = Store::connect(
            &settings.database_url,
            settings.db_max_connections,
            settings.db_statement_timeout_ms,
        )
        .await
        .with_context(|| format!("opening database {}", redact(&settings.database_url)))?;
        let metrics = Arc::new(Metrics::default());
        let allowed = allowed_hosts(&settings);
        let policy = RetryPolicy {
            base: Duration::from_millis(settings.retry_base_ms),
            max: Duration::from_millis(settings.retry_max_ms),
            max_attempts: settings.max_attempts,
        };
        let sender = Arc::new(Sender::new(
            push_client(&settings)?,
            allowed.clone(),
            store.clone(),
            master.clone(),
            policy,
            metrics.clone(),
        ));
        let queue = Queue::new(
            store.clone(),
            sender,
            settings.concurrency,
            settings.claim_batch,
            settings.lease(),
            Duration::from_secs(settings.retention_hours * 3600),
        );
        let state = AppState::new(http::Shared {
            store: store.clone(),
            queue: queue.clone(),
            admin,
            user_tokens: UserTokens::new(&master),
            master,
            allowed_hosts: allowed,
            metrics,
            app_concurrency: settings.app_concurrency,
            api_keys: Default::default(),
        });
        let router = http::router(state, &settings.static_dir);
        let listener = tokio::net::TcpListener::bind(settings.bind)
            .await
            .with_context(|| format!("binding {}", settings.bind))?;
        Ok(Application {
            listener,
            router,
            queue,
            stop: CancellationToken::new(),
            new_admin_token,
            store,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    /// Cancelling this token stops the server and the workers gracefully.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        // Work stored through other instances wakes this one's queue too.
        let (queue, local) = (self.queue.clone(), self.queue.clone());
        let wakeups = self.store.subscribe_wakeups(
            Arc::new(move || queue.wake()),
            Arc::new(move |n| local.has_room_for(n)),
            self.stop.clone(),
        );
        let workers = tokio::spawn(self.queue.clone().run(self.stop.clone()));
        let stop = self.stop.clone();
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await?;
        self.stop.cancel();
        let _ = workers.await;
        if let Some(w) = wakeups {
            let _ = w.await;
        }
        Ok(())
    }
}

/// A database URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}
