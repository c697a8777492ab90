//! Configuration: defaults, then an optional TOML file, then `HERALD_*`
//! environment variables, validated once at start-up.
//!
//! Every setting has a default that works on a bare machine: Herald listens on
//! 127.0.0.1:8080 and keeps its SQLite database under `./data/` and its key
//! material under `./keys/`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// The validated settings Herald runs with.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Address the HTTP API listens on. Port 0 picks a free port (tests).
    pub bind: SocketAddr,
    /// `sqlite://path` (default) or `postgres://...`.
    pub database_url: String,
    /// Directory for the master key and admin token (SQLite deployments).
    pub keys_dir: PathBuf,
    /// Base64 of the 32-byte master key that seals VAPID private keys. When
    /// unset, `master_key_file` is read; on SQLite a missing file is created.
    pub master_key: Option<String>,
    pub master_key_file: Option<PathBuf>,
    /// Overrides the admin token stored under `keys_dir`.
    pub admin_token: Option<String>,
    /// A file holding the admin token (never created), e.g. a secret shared
    /// by every instance on PostgreSQL.
    pub admin_token_file: Option<PathBuf>,
    /// Push-service hosts allowed besides the real vendors' (`host`, `*.suffix`).
    pub allowed_push_hosts: Vec<String>,
    /// PEM files with extra CA certificates to trust for outbound pushes.
    pub extra_ca_files: Vec<PathBuf>,
    /// Outbound proxy URL (`http://proxy:3128`); push hosts are reached through
    /// it by name with CONNECT.
    pub proxy: Option<String>,
    /// Hosts reached directly even when a proxy is set (comma-separated list
    /// syntax of `NO_PROXY`).
    pub no_proxy: Option<String>,
    /// Most pushes in flight at once in this instance, over all apps.
    pub concurrency: usize,
    /// Default `max_concurrency` for new apps.
    pub app_concurrency: u32,
    /// How many deliveries one claim takes at most.
    pub claim_batch: u32,
    /// Attempts before a delivery that keeps failing is marked failed.
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt, with jitter.
    pub retry_base_ms: u64,
    /// Longest retry delay.
    pub retry_max_ms: u64,
    /// Timeout of one push request.
    pub request_timeout_ms: u64,
    /// How long a claimed delivery stays leased before another worker may take it.
    pub lease_ms: u64,
    /// Finished deliveries and notifications are kept this long for the admin.
    pub retention_hours: u64,
    /// Database connection pool size.
    pub db_max_connections: u32,
    /// Statement timeout (PostgreSQL) / busy timeout (SQLite).
    pub db_statement_timeout_ms: u64,
    /// Directory with the service worker and pages.
    pub static_dir: PathBuf,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            bind: "127.0.0.1:8080".parse().expect("valid default address"),
            database_url: "sqlite://data/herald.db".into(),
            keys_dir: "keys".into(),
            master_key: None,
            master_key_file: None,
            admin_token: None,
            admin_token_file: None,
            allowed_push_hosts: Vec::new(),
            extra_ca_files: Vec::new(),
            proxy: None,
            no_proxy: None,
            concurrency: 1024,
            app_concurrency: 1024,
            claim_batch: 256,
            max_attempts: 8,
            retry_base_ms: 2_000,
            retry_max_ms: 3_600_000,
            request_timeout_ms: 15_000,
            lease_ms: 60_000,
            retention_hours: 24 * 7,
            db_max_connections: 8,
            db_statement_timeout_ms: 10_000,
            static_dir: "static".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("environment variable {name}: {message}")]
    Env { name: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl Settings {
    /// Defaults, then the file named by `HERALD_CONFIG` (or `herald.toml` when
    /// present), then the environment.
    pub fn load() -> Result<Self, ConfigError> {
        let file = std::env::var_os("HERALD_CONFIG")
            .map(PathBuf::from)
            .or_else(|| {
                let p = PathBuf::from("herald.toml");
                p.exists().then_some(p)
            });
        let mut settings = match file {
            Some(path) => Self::from_file(&path)?,
            None => Settings::default(),
        };
        settings.apply_env(|k| std::env::var(k).ok())?;
        settings.validate()?;
        Ok(settings)
    }

    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source,
        })
    }

    /// Overlay `HERALD_<SETTING>` variables; `get` is injectable for tests.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        fn parse<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            v.trim().parse().map_err(|e: T::Err| ConfigError::Env {
                name: name.into(),
                message: e.to_string(),
            })
        }
        fn list(v: &str) -> Vec<String> {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        }
        macro_rules! env {
            ($name:literal, $v:ident => $apply:expr) => {
                if let Some($v) = get($name) {
                    $apply;
                }
            };
        }
        env!("HERALD_BIND", v => self.bind = parse("HERALD_BIND", &v)?);
        env!("HERALD_DATABASE_URL", v => self.database_url = v);
        env!("HERALD_KEYS_DIR", v => self.keys_dir = v.into());
        env!("HERALD_MASTER_KEY", v => self.master_key = Some(v));
        env!("HERALD_MASTER_KEY_FILE", v => self.master_key_file = Some(v.into()));
        env!("HERALD_ADMIN_TOKEN", v => self.admin_token = Some(v));
        env!("HERALD_ADMIN_TOKEN_FILE", v => self.admin_token_file = Some(v.into()));
        env!("HERALD_ALLOWED_PUSH_HOSTS", v => self.allowed_push_hosts = list(&v));
        env!("HERALD_EXTRA_CA_FILES", v => self.extra_ca_files = list(&v).into_iter().map(PathBuf::from).collect());
        env!("HERALD_PROXY", v => self.proxy = Some(v).filter(|s| !s.is_empty()));
        env!("HERALD_NO_PROXY", v => self.no_proxy = Some(v));
        env!("HERALD_CONCURRENCY", v => self.concurrency = parse("HERALD_CONCURRENCY", &v)?);
        env!("HERALD_APP_CONCURRENCY", v => self.app_concurrency = parse("HERALD_APP_CONCURRENCY", &v)?);
        env!("HERALD_CLAIM_BATCH", v => self.claim_batch = parse("HERALD_CLAIM_BATCH", &v)?);
        env!("HERALD_MAX_ATTEMPTS", v => self.max_attempts = parse("HERALD_MAX_ATTEMPTS", &v)?);
        env!("HERALD_RETRY_BASE_MS", v => self.retry_base_ms = parse("HERALD_RETRY_BASE_MS", &v)?);
        env!("HERALD_RETRY_MAX_MS", v => self.retry_max_ms = parse("HERALD_RETRY_MAX_MS", &v)?);
        env!("HERALD_REQUEST_TIMEOUT_MS", v => self.request_timeout_ms = parse("HERALD_REQUEST_TIMEOUT_MS", &v)?);
        env!("HERALD_LEASE_MS", v => self.lease_ms = parse("HERALD_LEASE_MS", &v)?);
        env!("HERALD_RETENTION_HOURS", v => self.retention_hours = parse("HERALD_RETENTION_HOURS", &v)?);
        env!("HERALD_DB_MAX_CONNECTIONS", v => self.db_max_connections = parse("HERALD_DB_MAX_CONNECTIONS", &v)?);
        env!("HERALD_DB_STATEMENT_TIMEOUT_MS", v => self.db_statement_timeout_ms = parse("HERALD_DB_STATEMENT_TIMEOUT_MS", &v)?);
        env!("HERALD_STATIC_DIR", v => self.static_dir = v.into());
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(m.into()));
        if !(self.database_url.starts_with("sqlite:")
            || self.database_url.starts_with("postgres://")
            || self.database_url.starts_with("postgresql://"))
        {
            return invalid("database_url must start with sqlite: or postgres://");
        }
        if self.concurrency == 0 {
            return invalid("concurrency must be at least 1");
        }
        if self.claim_batch == 0 {
            return invalid("claim_batch must be at least 1");
        }
        if self.max_attempts == 0 {
            return invalid("max_attempts must be at least 1");
        }
        if self.retry_base_ms == 0 || self.retry_max_ms < self.retry_base_ms {
            return invalid("retry_base_ms must be positive and not above retry_max_ms");
        }
        if self.lease_ms <= self.request_timeout_ms {
            return invalid(
                "lease_ms must exceed request_timeout_ms, or a slow push would be claimed twice",
            );
        }
        Ok(())
    }

    pub fn is_postgres(&self) -> bool {
        self.database_url.starts_with("postgres")
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_overrides_defaults() {
        let mut s = Settings::default();
        s.apply_env(|k| match k {
            "HERALD_BIND" => Some("0.0.0.0:9000".into()),
            "HERALD_ALLOWED_PUSH_HOSTS" => Some("localhost, push.example.com".into()),
            "HERALD_MAX_ATTEMPTS" => Some("3".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(s.bind.port(), 9000);
        assert_eq!(s.allowed_push_hosts, vec!["localhost", "push.example.com"]);
        assert_eq!(s.max_attempts, 3);
    }

    #[test]
    fn a_malformed_number_names_the_variable() {
        let mut s = Settings::default();
        let err = s
            .apply_env(|k| (k == "HERALD_CONCURRENCY").then(|| "many".into()))
            .unwrap_err();
        assert!(err.to_string().contains("HERALD_CONCURRENCY"), "{err}");
    }

    #[test]
    fn a_lease_shorter_than_the_request_timeout_is_refused() {
        let s = Settings {
            lease_ms: 1000,
            request_timeout_ms: 5000,
            ..Settings::default()
        };
        assert!(s.validate().is_err());
    }
}
