//! Storage: one interface, one implementation per database.
//!
//! [`Store`] is what the rest of Herald talks to. Each backend answers the
//! same methods with the same meaning, and one conformance suite
//! (`tests/store_conformance.rs`) runs against every backend.
//!
//! Invariants every backend keeps:
//! - a notification, its deliveries and its idempotency key are written in one
//!   transaction: accepted work is durable before the API answers 202;
//! - a claim is a lease: claimed rows are `in_flight` until `lease_until`, after
//!   which any worker may claim them again;
//! - outcome writes are fenced by `(id, claims)`: a stale worker changes nothing;
//! - per-app `max_concurrency` bounds the unexpired leases of an app.

pub mod postgres;
pub mod sqlite;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::domain::{DeliveryStatus, Millis, NewNotification, Recipients};

/// The columns of a notification row, in the order [`push_notification_row`]
/// binds them.
const NOTIFICATION_COLUMNS: &str =
    "notifications (id, app_id, title, payload, ttl_secs, urgency, topic_key, created_at, expires_at)";

/// Binds one notification row's values, for [`NOTIFICATION_COLUMNS`].
fn push_notification_row<'a, DB: sqlx::Database>(
    row: &mut sqlx::query_builder::Separated<'_, 'a, DB, &'static str>,
    n: &'a NewNotification,
) where
    &'a String: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    &'a Vec<u8>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    &'a Option<String>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    row.push_bind(&n.id)
        .push_bind(&n.app_id)
        .push_bind(&n.title)
        .push_bind(&n.payload)
        .push_bind(n.ttl_secs as i64)
        .push_bind(&n.urgency)
        .push_bind(&n.topic_key)
        .push_bind(n.created_at)
        .push_bind(n.expires_at());
}

/// Appends a notification's fan-out, `INSERT INTO deliveries … SELECT …
/// FROM subscriptions` with the recipient filter, to `q`. One text for both
/// backends (the builder writes each one's placeholders): a broadcast to
/// 100 000 devices is one statement, not 100 000 round trips.
fn push_fan_out<'a, DB: sqlx::Database>(q: &mut sqlx::QueryBuilder<'a, DB>, n: &'a NewNotification)
where
    &'a String: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    q.push(
        "INSERT INTO deliveries (notification_id, app_id, subscription_id, user_id, endpoint_host, vendor, next_attempt_at, expires_at, created_at) SELECT ",
    );
    q.push_bind(&n.id)
        .push(", s.app_id, s.id, s.user_id, s.endpoint_host, s.vendor, ")
        .push_bind(n.created_at)
        .push(", ")
        .push_bind(n.expires_at())
        .push(", ")
        .push_bind(n.created_at)
        .push(" FROM subscriptions s WHERE s.app_id = ")
        .push_bind(&n.app_id);
    match &n.recipients {
        Recipients::User(u) => {
            q.push(" AND s.user_id = ").push_bind(u);
        }
        Recipients::Users(us) => {
            q.push(" AND s.user_id IN (");
            let mut list = q.separated(", ");
            for u in us {
                list.push_bind(u);
            }
            q.push(")");
        }
        Recipients::Subscription(id) => {
            q.push(" AND s.id = ").push_bind(id);
        }
        Recipients::Topic(t) => {
            q.push(" AND s.id IN (SELECT subscription_id FROM subscription_topics WHERE app_id = ")
                .push_bind(&n.app_id)
                .push(" AND topic = ")
                .push_bind(t)
                .push(")");
        }
        Recipients::All => {}
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The store's writer task is gone while a handle still sends to it:
    /// it panicked, or the runtime is shutting down. Nothing was stored.
    #[error("the store's writer has stopped")]
    WriterStopped,
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Decodes a row into one of the shared row types. Both backends' schemas
/// name and type these columns alike, so one derive serves both; like
/// `Row::get`, a row that does not match the schema is a bug and panics.
pub(crate) fn decode<'r, R: sqlx::Row, T: sqlx::FromRow<'r, R>>(r: &'r R) -> T {
    T::from_row(r).unwrap_or_else(|e| panic!("row does not match the schema: {e}"))
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AppRow {
    pub id: String,
    pub name: String,
    pub contact: String,
    pub api_key_hash: Vec<u8>,
    pub vapid_public_key: String,
    pub vapid_private_sealed: Vec<u8>,
    pub vapid_generation: i64,
    pub max_concurrency: i64,
    pub last_config_error: Option<String>,
    pub last_config_error_at: Option<Millis>,
    pub created_at: Millis,
}

#[derive(Debug, Clone)]
pub struct NewSubscription {
    pub app_id: String,
    pub user_id: String,
    pub endpoint: String,
    pub endpoint_host: String,
    pub vendor: String,
    pub p256dh: Vec<u8>,
    pub auth: Vec<u8>,
    pub content_encoding: String,
    pub topics: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct SubscriptionRow {
    pub id: String,
    pub app_id: String,
    pub user_id: String,
    pub endpoint: String,
    pub endpoint_host: String,
    pub vendor: String,
    pub auth: Vec<u8>,
    pub content_encoding: String,
    pub topics: Vec<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// Result of storing a notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    Created {
        id: String,
        deliveries: u64,
    },
    /// The idempotency key was seen within 24 h: the first answer, nothing new queued.
    Replayed {
        id: String,
        deliveries: u64,
    },
}

/// A local queue that deliveries can be handed to as they are stored, so
/// they start without waiting for the dispatcher's claim. On SQLite, where
/// one process owns the database, a send to a user is then stored already
/// leased and goes straight to a sender: no second transaction between the
/// 202 and the push. On PostgreSQL the same holds for the instance that
/// stored it, and instances do not take each other's fresh work.
pub trait Intake: Send + Sync {
    /// Free room for at most `wanted` deliveries, held until used or dropped.
    fn reserve(&self, wanted: usize) -> Reservation;
    /// Sends a delivery that the store leased for this queue.
    fn start(&self, claimed: Claimed, permit: tokio::sync::OwnedSemaphorePermit);
    /// Work was stored that nobody started: claim it.
    fn wake(&self);
}

/// Room reserved in a local queue, and the lease its deliveries get.
pub struct Reservation {
    pub permits: Vec<tokio::sync::OwnedSemaphorePermit>,
    pub now: Millis,
    pub lease_until: Millis,
}

/// One delivery handed to a worker, with everything needed to send it.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    pub claims: i64,
    pub attempts: i64,
    pub app_id: String,
    pub notification_id: String,
    pub subscription_id: String,
    pub vendor: String,
    /// `None` when the subscription disappeared while the delivery waited.
    pub target: Option<Target>,
    /// Shared by every delivery of the notification in the same claim.
    pub notice: Arc<Notice>,
    pub without_topic: bool,
    pub expires_at: Millis,
    pub created_at: Millis,
}

/// What all deliveries of one notification have in common. A claim reads it
/// once per notification, not once per delivery: a broadcast's batch shares
/// one payload instead of copying it into every row.
///
/// Both stores read it by column name, so one derive serves both.
#[derive(Debug, sqlx::FromRow)]
pub struct Notice {
    pub payload: Vec<u8>,
    pub ttl_secs: i64,
    pub urgency: String,
    pub topic_key: Option<String>,
    /// The app's key generation and contact, so a cached signer can be checked.
    pub vapid_generation: i64,
    pub contact: String,
}

#[derive(Debug, Clone)]
pub struct Target {
    pub endpoint: String,
    pub p256dh: Vec<u8>,
    pub auth: Vec<u8>,
    pub content_encoding: String,
}

/// What a worker decided about one claimed delivery.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub id: i64,
    pub claims: i64,
    pub subscription_id: String,
    pub disposition: Disposition,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Disposition {
    Delivered {
        at: Millis,
    },
    /// Back to pending. `used_attempt` is false for rate limits.
    Retry {
        at: Millis,
        error: String,
        used_attempt: bool,
        without_topic: bool,
    },
    /// The subscription is dead: delete it and mark its other pending deliveries gone.
    Gone {
        error: String,
    },
    Failed {
        error: String,
    },
    /// The TTL ran out; `error` is the last attempt's reason, if there was one.
    Expired {
        error: Option<String>,
    },
}

#[derive(Debug, Clone, Default)]
pub struct QueueFilter {
    pub app: Option<String>,
    pub status: Option<DeliveryStatus>,
    pub limit: u32,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct QueueRow {
    pub id: i64,
    pub app_id: String,
    pub notification_id: String,
    pub subscription_id: String,
    pub user_id: String,
    pub title: String,
    pub endpoint_host: String,
    pub vendor: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub status: String,
    pub created_at: Millis,
    pub next_attempt_at: Millis,
    pub finished_at: Option<Millis>,
}

#[derive(Debug, Clone)]
pub struct NotificationRow {
    pub id: String,
    pub app_id: String,
    pub title: String,
    pub created_at: Millis,
    pub expires_at: Millis,
}

#[derive(Debug, Clone, Default)]
pub struct VendorStats {
    pub vendor: String,
    pub delivered: i64,
    pub failed: i64,
    pub gone: i64,
    pub expired: i64,
    pub avg_queue_wait_ms: Option<f64>,
    pub avg_delivery_ms: Option<f64>,
}

#[derive(Debug, Clone, Default)]
pub struct QueueCounts {
    pub pending: i64,
    pub in_flight: i64,
}

/// The database behind Herald. Cheap to clone.
#[derive(Clone)]
pub enum Store {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

/// Forwards a method to the backend in use.
macro_rules! delegate {
    ($( $(#[$meta:meta])* fn $name:ident(&self $(, $arg:ident : $ty:ty)*) -> $ret:ty; )*) => {
        impl Store {
            $(
                $(#[$meta])*
                pub async fn $name(&self $(, $arg: $ty)*) -> $ret {
                    match self {
                        Store::Sqlite(s) => s.$name($($arg),*).await,
                        Store::Postgres(s) => s.$name($($arg),*).await,
                    }
                }
            )*
        }
    };
}

impl Store {
    /// Opens the database named by the URL and brings its schema up to date.
    pub async fn connect(
        url: &str,
        max_connections: u32,
        statement_timeout_ms: u64,
    ) -> Result<Store> {
        if url.starts_with("sqlite:") {
            Ok(Store::Sqlite(
                sqlite::SqliteStore::connect(url, max_connections, statement_timeout_ms).await?,
            ))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Store::Postgres(
                postgres::PgStore::connect(url, max_connections, statement_timeout_ms).await?,
            ))
        } else {
            Err(StoreError::Corrupt(format!(
                "unsupported database URL {url}"
            )))
        }
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// Hands new deliveries to `intake` as they are stored: sends to users
    /// are leased to it by the statement that stores them and start there
    /// without a claim, and the store wakes it for the rest.
    pub fn attach_intake(&self, intake: Arc<dyn Intake>) {
        match self {
            Store::Sqlite(s) => s.attach_intake(intake),
            Store::Postgres(s) => s.attach_intake(intake),
        }
    }

    /// How long the recorder lets a small batch of outcomes wait for more
    /// before writing it. On PostgreSQL each write is a statement that
    /// costs the database every instance shares about the same whatever
    /// its rows, and the wait holds only leases and senders' permits. On
    /// SQLite outcomes already join the single writer's next turn, and
    /// waiting cost CPU there (see [`postgres::OUTCOME_GATHER`]).
    pub fn outcome_gather(&self) -> std::time::Duration {
        match self {
            Store::Sqlite(_) => std::time::Duration::ZERO,
            Store::Postgres(_) => postgres::OUTCOME_GATHER,
        }
    }

    /// How long the dispatcher, woken soon after a claim that took
    /// everything due, waits before it claims again, so that more work
    /// shares the claim. On PostgreSQL a claim costs the server about the
    /// same whatever its rows, and every instance makes its own (see
    /// [`postgres::CLAIM_GATHER`]). On SQLite sends to users bypass claims
    /// ([`Intake`]), and the wait was not measured there.
    pub fn claim_gather(&self) -> std::time::Duration {
        match self {
            Store::Sqlite(_) => std::time::Duration::ZERO,
            Store::Postgres(_) => postgres::CLAIM_GATHER,
        }
    }

    /// Whether storing work wakes the queue by itself (see [`Intake::wake`]),
    /// so the API need not.
    pub fn wakes_queue(&self) -> bool {
        match self {
            Store::Sqlite(s) => s.wakes_queue(),
            Store::Postgres(s) => s.wakes_queue(),
        }
    }

    /// Work stored by other instances sharing the database: calls `on_wake`
    /// whenever any instance announces claimable work (PostgreSQL
    /// LISTEN/NOTIFY), until `stop`. `None` on SQLite, where one process owns
    /// the database and wakes its queue itself. `room` says whether the local
    /// queue can start a number of deliveries at once: sends it can are not
    /// announced to the other instances.
    pub fn subscribe_wakeups(
        &self,
        on_wake: Arc<dyn Fn() + Send + Sync>,
        room: postgres::RoomProbe,
        stop: CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>> {
        match self {
            Store::Sqlite(_) => None,
            Store::Postgres(s) => Some(s.subscribe_wakeups(on_wake, room, stop)),
        }
    }
}

delegate! {
    fn ping(&self) -> Result<()>;
    fn app_insert(&self, app: &AppRow) -> Result<()>;
    fn app_get(&self, id: &str) -> Result<Option<AppRow>>;
    fn app_list(&self) -> Result<Vec<AppRow>>;
    fn app_id_by_key_hash(&self, hash: &[u8]) -> Result<Option<String>>;
    fn app_update(&self, id: &str, contact: Option<&str>, max_concurrency: Option<i64>) -> Result<Option<AppRow>>;
    fn app_set_config_error(&self, id: &str, error: Option<&str>, at: Millis) -> Result<()>;
    /// New VAPID key; deletes the app's subscriptions and queued deliveries.
    /// Returns `(subscriptions_removed, deliveries_removed)`, `None` for an unknown app.
    fn app_regenerate(&self, id: &str, public_key: &str, sealed_private: &[u8]) -> Result<Option<(u64, u64)>>;
    /// Inserts, or updates the row with the same endpoint. Returns `(id, created)`.
    fn subscription_upsert(&self, sub: &NewSubscription, now: Millis) -> Result<(String, bool)>;
    fn subscription_list(&self, app_id: &str, user: Option<&str>) -> Result<Vec<SubscriptionRow>>;
    fn subscription_get(&self, app_id: &str, id: &str) -> Result<Option<SubscriptionRow>>;
    fn subscription_by_endpoint(&self, app_id: &str, endpoint: &str) -> Result<Option<SubscriptionRow>>;
    /// Deletes one subscription (of `user` when given) and marks its queued deliveries gone.
    fn subscription_delete(&self, app_id: &str, id: &str, user: Option<&str>) -> Result<bool>;
    /// Stores a notification and one delivery per recipient subscription.
    fn notification_create(&self, n: &NewNotification, idempotency_key: Option<&str>, idempotency_window_ms: i64) -> Result<Accepted>;
    fn notification_get(&self, app_id: &str, id: &str) -> Result<Option<(NotificationRow, Vec<QueueRow>)>>;
    /// Leases up to `limit` due deliveries, honouring every app's `max_concurrency`.
    fn deliveries_claim(&self, now: Millis, lease_until: Millis, limit: u32) -> Result<Vec<Claimed>>;
    /// As [`Store::deliveries_claim`], but due pending deliveries only: leases
    /// that ran out are left for a claim that looks for them (on PostgreSQL,
    /// looking walks the index entries of every delivery finished since the
    /// last VACUUM).
    fn deliveries_claim_due(&self, now: Millis, lease_until: Millis, limit: u32) -> Result<Vec<Claimed>>;
    fn deliveries_record(&self, outcomes: &[Recorded], now: Millis) -> Result<()>;
    /// When the next claim could find work: the earliest due time or lease expiry
    /// among apps that are not paused.
    fn queue_next_due(&self) -> Result<Option<Millis>>;
    /// The earliest due time of pending deliveries among apps that are not
    /// paused; leases are left out.
    fn queue_next_pending(&self) -> Result<Option<Millis>>;
    fn queue_list(&self, filter: &QueueFilter) -> Result<Vec<QueueRow>>;
    fn queue_counts(&self) -> Result<QueueCounts>;
    fn queue_due_count(&self, now: Millis) -> Result<u64>;
    /// Makes every pending delivery due now.
    fn queue_force(&self, now: Millis) -> Result<u64>;
    fn queue_remove(&self, id: i64) -> Result<u64>;
    /// Removes queued (pending or in-flight) deliveries, of one app or all.
    fn queue_clear(&self, app_id: Option<&str>) -> Result<u64>;
    fn vendor_stats(&self) -> Result<Vec<VendorStats>>;
    /// Deletes finished deliveries, notifications and idempotency keys older than `before`.
    fn purge_finished(&self, before: Millis) -> Result<u64>;
}
