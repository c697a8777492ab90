//! PostgreSQL backend: several Herald instances share one database and so one
//! queue.
//!
//! What changes against SQLite, and why:
//! - A claim is one call of the server-side function `herald_claim`
//!   (migrations 0002 – 0004). Per app with due work it locks the app row
//!   (`FOR NO KEY UPDATE`, which does not block inserts referencing the app),
//!   then counts the app's unexpired leases and claims at most the remaining
//!   room with `FOR UPDATE SKIP LOCKED`. The app lock serialises claimers of
//!   one app across every instance, so `max_concurrency` holds for all of them
//!   together; the count runs as its own statement after the lock is held, so
//!   under READ COMMITTED it sees every claim committed before. On the server
//!   the lock is held for the work alone, not across network round trips.
//! - Claims and outcome writes use their own few connections, which commit
//!   without waiting for the disk (see [`QUEUE_POOL`]).
//! - Sends to one user without an idempotency key, the common case, that
//!   arrive together are stored by one statement (see [`user_send_loop`]):
//!   one synced commit and one fan-out for the batch, instead of a statement,
//!   a commit and a busy backend per send. The same statement leases the
//!   new deliveries to the instance that stores them, within its queue's
//!   free room and the app's `max_concurrency` (`herald_store_to_users`,
//!   migrations 0005 – 0006), and they start there without a claim: no
//!   second statement rewrites every new row, and instances do not take
//!   each other's fresh work. The app stays locked until that commit is on
//!   disk, a fraction of a millisecond on a local SSD. It is locked before
//!   the batch's notifications are inserted, so their foreign keys find the
//!   row already held and another instance's store waiting for it does not
//!   share the lock through a MultiXact.
//! - A send to everyone or to a topic is stored in chunks of
//!   subscriptions, one statement each, in one transaction (see
//!   [`FAN_OUT_CHUNK`]): `statement_timeout` bounds a statement, and must
//!   not bound the size of an app's audience.
//! - Idempotency keys are claimed with `INSERT … ON CONFLICT`: the primary key
//!   decides between two instances racing on one key, and the loser replays the
//!   winner's answer.
//! - Work that other instances should see at once (a send larger than this
//!   instance can start at once, a force, a raised `max_concurrency`, a
//!   recorded retry) is announced with one `pg_notify` after its transaction
//!   commits; [`PgStore::subscribe_wakeups`] listens and wakes the
//!   local queue. The payload is the schema, so deployments sharing a database
//!   in different schemas do not wake each other.
//! - `statement_timeout` is set on every connection; a pool connection that
//!   sat idle is checked before use (see [`CHECK_IF_IDLE`]), so after a
//!   database restart Herald reconnects by itself.

use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, FromRow, Postgres, QueryBuilder, Row};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::domain::new_id;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The channel every instance listens on; the payload names the schema.
pub const WAKE_CHANNEL: &str = "herald_wake";

/// How long a request waits for a pool connection before failing (and
/// `/healthz` reporting the database as down).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// A pooled connection unused for this long is pinged before it is handed
/// out, so one that a database restart cut meanwhile is replaced, not used.
/// One used moments ago was checked as it came back (sqlx pings every
/// connection on release): checking it again on acquire would add a round
/// trip to every send, claim and outcome write under load for nothing.
const CHECK_IF_IDLE: Duration = Duration::from_millis(100);

/// `/healthz` answers within this, database up or not.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// A safety net under the notifications: a claim at least this often even
/// when nothing was announced, so work can never wait on a wake-up that was
/// lost between instances (for instance the leases of an instance that died
/// right after another one looked at the queue).
const SAFETY_WAKE: Duration = Duration::from_secs(30);

const QUEUED: &str = "('pending', 'in_flight')";

/// Connections for the queue's own statements: one each for the dispatcher,
/// the outcome recorder and the announcer, and one spare.
///
/// They run with `synchronous_commit = off`: a claim or an outcome lost in a
/// database crash costs a repeated push and nothing else (a lost claim is
/// claimed again, a lost outcome is sent again after its lease, as
/// at-least-once allows), and later synchronous commits, every accepted send,
/// flush them too, in order. Waiting for an fsync per claim would keep each
/// instance's dispatcher idle for the disk's latency.
const QUEUE_POOL: u32 = 4;

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    /// The queue's own connections, for claims, outcome writes and wake-ups:
    /// their commits do not wait for the disk (see [`QUEUE_POOL`]).
    queue: PgPool,
    /// For the listener's own connection.
    options: Arc<PgConnectOptions>,
    /// `current_schema()` of the connections: the notification payload.
    schema: Arc<str>,
    /// Where new work goes: this instance's queue and the other instances.
    handover: Arc<Handover>,
    /// Sends to one user waiting to be stored together ([`user_send_loop`]).
    user_sends: tokio::sync::mpsc::Sender<UserSend>,
}

/// Where stored work goes: to this instance's queue, and announced to the
/// other instances when this one cannot start it all. Shared by the store
/// handles and [`user_send_loop`].
struct Handover {
    /// This instance's queue, once it runs: sends to users start there as
    /// they are stored ([`store_user_sends`]).
    intake: OnceLock<Arc<dyn Intake>>,
    /// Asks the announcer task for `pg_notify`s ([`announce_loop`]).
    wanted: tokio::sync::mpsc::Sender<()>,
    /// Whether this instance's own queue can start this many deliveries at
    /// once; set by [`PgStore::subscribe_wakeups`].
    local_room: OnceLock<RoomProbe>,
}

/// A send to one user waiting for [`user_send_loop`] to store it; the
/// answer is its number of deliveries.
struct UserSend {
    notification: NewNotification,
    reply: tokio::sync::oneshot::Sender<Result<u64>>,
}

/// How long a small batch of outcomes waits for more ([`Store::outcome_gather`]).
/// Outcome writes were the most frequent statement with three instances
/// (about ten outcomes each). Waiting 3 ms, in two interleaved pairs of
/// benchmark runs (40 000 subscriptions, 30 000 per-user sends), took the
/// server's CPU per broadcast delivery from 48.0 / 45.8 to 44.2 / 42.5 µs
/// with one instance and from 52.8 / 54.5 to 46.0 / 49.8 µs with three; on
/// SQLite it cost Herald 2 – 8 µs per delivery instead.
///
/// [`Store::outcome_gather`]: super::Store::outcome_gather
pub const OUTCOME_GATHER: Duration = Duration::from_millis(3);

/// How long a claim waits for more work while work streams in
/// ([`Store::claim_gather`]). Each instance's stored batch of sends woke its
/// dispatcher for a claim of its own, with lock waits between instances'
/// claims. In two interleaved pairs of benchmark runs (40 000
/// subscriptions, 30 000 per-user sends), three instances went from 5 756 /
/// 6 277 to 6 822 / 6 621 per-user deliveries/s, at 126 µs of server CPU
/// per delivery against 142 – 153; one instance and the broadcasts did not
/// move beyond the noise. Sends to users no longer wake the dispatcher
/// (they are leased as they are stored, see [`store_user_sends`]); the
/// wait still gathers broadcasts stored by several instances, retries and
/// announced work.
///
/// [`Store::claim_gather`]: super::Store::claim_gather
pub const CLAIM_GATHER: Duration = Duration::from_millis(1);

/// Most sends to users stored by one statement.
const USER_SEND_BATCH: usize = 256;

/// Batches of sends to users one instance stores at once. While one waits
/// for its commit, the next sends gather into the next batch: under load
/// the batches grow instead of the number of busy backends. Each statement
/// costs the server about the same whatever its rows, so one at a time
/// beats two: in two interleaved pairs of benchmark runs (40 000
/// subscriptions, 30 000 per-user sends) one instance went from 8 312 /
/// 8 176 to 8 637 / 8 632 per-user deliveries/s and three from 5 203 /
/// 4 922 to 5 724 / 5 887, the server's CPU per delivery from 189 / 204 to
/// 163 / 158 µs with three.
const USER_SEND_WRITERS: usize = 1;

/// While sends stream in (the last batch was taken less than
/// [`USER_SEND_STREAMING`] ago), a batch of fewer than
/// [`USER_SEND_GATHER_BELOW`] waits [`USER_SEND_GATHER`] for more. Each
/// stored batch then cost a claim too, so the statements per send fell with
/// the batch's size: with 64 API clients spread over three instances, each
/// stored about nine sends per statement. In two interleaved pairs of
/// benchmark runs (40 000 subscriptions, 30 000 per-user sends), three
/// instances went from 5 308 / 5 269 to 6 212 / 6 224 per-user deliveries/s
/// and the server's CPU per delivery from 180 / 183 to 142 / 140 µs; one
/// instance from 8 128 / 8 367 to 8 572 / 8 699 /s. Waiting 2 ms for 32
/// gained no more. A send that arrives alone, with none before it for a
/// while, is stored at once.
const USER_SEND_GATHER: Duration = Duration::from_millis(1);
/// See [`USER_SEND_GATHER`].
const USER_SEND_GATHER_BELOW: usize = 16;
/// See [`USER_SEND_GATHER`].
const USER_SEND_STREAMING: Duration = Duration::from_millis(10);

/// Answers whether the local queue has room for this many deliveries now.
pub type RoomProbe = Arc<dyn Fn(u64) -> bool + Send + Sync>;

impl PgStore {
    pub async fn connect(
        url: &str,
        max_connections: u32,
        statement_timeout_ms: u64,
    ) -> Result<Self> {
        let mut base = PgConnectOptions::from_str(url)?;
        if base.get_application_name().is_none() {
            base = base.application_name("herald");
        }
        // Migrations run on a connection of their own without the statement
        // timeout: a schema change on a large queue, or waiting for another
        // instance that is migrating, may take longer than any request should.
        {
            let mut conn = PgConnection::connect_with(&base).await?;
            let schema: Option<String> = sqlx::query_scalar("SELECT current_schema()")
                .fetch_one(&mut conn)
                .await?;
            if schema.is_none() {
                return Err(StoreError::Corrupt(
                    "the search_path names no existing schema: create the schema first".into(),
                ));
            }
            MIGRATOR.run(&mut conn).await?;
            let _ = conn.close().await;
        }
        let options = base.options([("statement_timeout", statement_timeout_ms)]);
        let pool = pool_options()
            .max_connections(max_connections.max(1))
            .connect_with(options.clone())
            .await?;
        let queue = pool_options()
            .max_connections(QUEUE_POOL)
            .connect_with(options.clone().options([("synchronous_commit", "off")]))
            .await?;
        let schema: Arc<str> = sqlx::query_scalar::<_, String>("SELECT current_schema()")
            .fetch_one(&pool)
            .await?
            .into();
        let (wanted_tx, wanted) = tokio::sync::mpsc::channel(1);
        tokio::spawn(announce_loop(queue.clone(), schema.clone(), wanted));
        let handover = Arc::new(Handover {
            intake: OnceLock::new(),
            wanted: wanted_tx,
            local_room: OnceLock::new(),
        });
        let (user_sends, waiting) = tokio::sync::mpsc::channel(4 * USER_SEND_BATCH);
        tokio::spawn(user_send_loop(pool.clone(), handover.clone(), waiting));
        Ok(PgStore {
            pool,
            queue,
            options: Arc::new(options),
            schema,
            handover,
            user_sends,
        })
    }

    pub async fn ping(&self) -> Result<()> {
        match tokio::time::timeout(PING_TIMEOUT, sqlx::query("SELECT 1").execute(&self.pool)).await
        {
            Ok(r) => {
                r?;
                Ok(())
            }
            Err(_) => Err(StoreError::Database(sqlx::Error::PoolTimedOut)),
        }
    }

    /// Listens for work announced by any instance and calls `on_wake` for
    /// each announcement, once after every (re)connection (announcements may
    /// have been missed meanwhile), and every [`SAFETY_WAKE`]. Runs until
    /// `stop` is cancelled; a lost connection is re-established with backoff.
    ///
    /// `room` tells new sends whether this instance's queue can start them at
    /// once; only work it cannot is announced (see
    /// [`Handover::announce_unless_local`]).
    pub fn subscribe_wakeups(
        &self,
        on_wake: Arc<dyn Fn() + Send + Sync>,
        room: RoomProbe,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let _ = self.handover.local_room.set(room);
        let options = (*self.options).clone().application_name(&format!(
            "{}-listener",
            self.options.get_application_name().unwrap_or("herald")
        ));
        let schema = self.schema.clone();
        tokio::spawn(async move {
            // Its own pool of one: the listening connection is held for good
            // and must not take a connection from the request pool.
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_lazy_with(options);
            let mut backoff = Duration::from_millis(100);
            while !stop.is_cancelled() {
                match listen(&pool, &schema, on_wake.as_ref(), &stop).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?backoff, "listening for queue wake-ups failed; reconnecting")
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {},
                    _ = stop.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        })
    }

    // ---- apps ----------------------------------------------------------

    pub async fn app_insert(&self, a: &AppRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO apps (id, name, contact, api_key_hash, vapid_public_key, vapid_private_sealed, vapid_generation, max_concurrency, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&a.id)
        .bind(&a.name)
        .bind(&a.contact)
        .bind(&a.api_key_hash)
        .bind(&a.vapid_public_key)
        .bind(&a.vapid_private_sealed)
        .bind(a.vapid_generation)
        .bind(a.max_concurrency)
        .bind(a.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn app_get(&self, id: &str) -> Result<Option<AppRow>> {
        Ok(sqlx::query("SELECT * FROM apps WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| app_row(&r)))
    }

    pub async fn app_list(&self) -> Result<Vec<AppRow>> {
        Ok(sqlx::query("SELECT * FROM apps ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(app_row)
            .collect())
    }

    pub async fn app_id_by_key_hash(&self, hash: &[u8]) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT id FROM apps WHERE api_key_hash = $1")
                .bind(hash)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn app_update(
        &self,
        id: &str,
        contact: Option<&str>,
        max_concurrency: Option<i64>,
    ) -> Result<Option<AppRow>> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "UPDATE apps SET contact = COALESCE($1, contact), max_concurrency = COALESCE($2, max_concurrency),
                 last_config_error = CASE WHEN $1::text IS NOT NULL THEN NULL ELSE last_config_error END
             WHERE id = $3 RETURNING *",
        )
        .bind(contact)
        .bind(max_concurrency)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        // A raised (or unchanged) limit may make held work claimable on any instance.
        if row.is_some() && max_concurrency.is_some_and(|m| m > 0) {
            self.announce();
        }
        Ok(row.map(|r| app_row(&r)))
    }

    pub async fn app_set_config_error(
        &self,
        id: &str,
        error: Option<&str>,
        at: Millis,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE apps SET last_config_error = $1, last_config_error_at = $2 WHERE id = $3",
        )
        .bind(error)
        .bind(error.map(|_| at))
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn app_regenerate(
        &self,
        id: &str,
        public_key: &str,
        sealed_private: &[u8],
    ) -> Result<Option<(u64, u64)>> {
        let mut tx = self.pool.begin().await?;
        // Takes the app row lock first, as claims do: the two never deadlock,
        // and no claim of this app runs between the key change and the delete.
        let updated = sqlx::query(
            "UPDATE apps SET vapid_public_key = $1, vapid_private_sealed = $2, vapid_generation = vapid_generation + 1,
                 last_config_error = NULL, last_config_error_at = NULL WHERE id = $3",
        )
        .bind(public_key)
        .bind(sealed_private)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Ok(None);
        }
        let deliveries = sqlx::query(&format!(
            "DELETE FROM deliveries WHERE app_id = $1 AND status IN {QUEUED}"
        ))
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let subs = sqlx::query("DELETE FROM subscriptions WHERE app_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some((subs.rows_affected(), deliveries.rows_affected())))
    }

    // ---- subscriptions -------------------------------------------------

    pub async fn subscription_upsert(
        &self,
        s: &NewSubscription,
        now: Millis,
    ) -> Result<(String, bool)> {
        let mut tx = self.pool.begin().await?;
        let topics = serde_json::to_string(&s.topics).expect("strings serialise");
        // One statement, so two instances storing the same endpoint at once
        // end with one row. `xmax = 0` tells an inserted row from an updated one.
        let row = sqlx::query(
            "INSERT INTO subscriptions (id, app_id, user_id, endpoint, endpoint_host, vendor, p256dh, auth, content_encoding, topics, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11)
             ON CONFLICT (app_id, endpoint) DO UPDATE SET user_id = EXCLUDED.user_id, p256dh = EXCLUDED.p256dh, auth = EXCLUDED.auth,
                 content_encoding = EXCLUDED.content_encoding, topics = EXCLUDED.topics, updated_at = EXCLUDED.updated_at
             RETURNING id, (xmax = 0) AS created",
        )
        .bind(new_id())
        .bind(&s.app_id)
        .bind(&s.user_id)
        .bind(&s.endpoint)
        .bind(&s.endpoint_host)
        .bind(&s.vendor)
        .bind(&s.p256dh)
        .bind(&s.auth)
        .bind(&s.content_encoding)
        .bind(&topics)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let id: String = row.get("id");
        let created: bool = row.get("created");
        if !created {
            sqlx::query("DELETE FROM subscription_topics WHERE subscription_id = $1")
                .bind(&id)
                .execute(&mut *tx)
                .await?;
        }
        if !s.topics.is_empty() {
            sqlx::query(
                "INSERT INTO subscription_topics (app_id, topic, subscription_id) SELECT $1, t, $2 FROM unnest($3::text[]) AS t
                 ON CONFLICT DO NOTHING",
            )
            .bind(&s.app_id)
            .bind(&id)
            .bind(&s.topics)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok((id, created))
    }

    pub async fn subscription_list(
        &self,
        app_id: &str,
        user: Option<&str>,
    ) -> Result<Vec<SubscriptionRow>> {
        let rows = sqlx::query("SELECT * FROM subscriptions WHERE app_id = $1 AND ($2::text IS NULL OR user_id = $2) ORDER BY created_at, id")
            .bind(app_id)
            .bind(user)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(subscription_row).collect()
    }

    pub async fn subscription_get(
        &self,
        app_id: &str,
        id: &str,
    ) -> Result<Option<SubscriptionRow>> {
        let row = sqlx::query("SELECT * FROM subscriptions WHERE app_id = $1 AND id = $2")
            .bind(app_id)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(subscription_row).transpose()
    }

    pub async fn subscription_by_endpoint(
        &self,
        app_id: &str,
        endpoint: &str,
    ) -> Result<Option<SubscriptionRow>> {
        let row = sqlx::query("SELECT * FROM subscriptions WHERE app_id = $1 AND endpoint = $2")
            .bind(app_id)
            .bind(endpoint)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(subscription_row).transpose()
    }

    pub async fn subscription_delete(
        &self,
        app_id: &str,
        id: &str,
        user: Option<&str>,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let deleted = sqlx::query("DELETE FROM subscriptions WHERE app_id = $1 AND id = $2 AND ($3::text IS NULL OR user_id = $3)")
            .bind(app_id)
            .bind(id)
            .bind(user)
            .execute(&mut *tx)
            .await?;
        if deleted.rows_affected() > 0 {
            mark_queued_gone(
                &mut tx,
                id,
                "subscription deleted",
                crate::domain::now_millis(),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(deleted.rows_affected() > 0)
    }

    // ---- notifications -------------------------------------------------

    pub async fn notification_create(
        &self,
        n: &NewNotification,
        idempotency_key: Option<&str>,
        window_ms: i64,
    ) -> Result<Accepted> {
        let Some(key) = idempotency_key else {
            // No BEGIN and COMMIT of its own: a send to one user shares one
            // statement with the others waiting ([`user_send_loop`]), which
            // also starts, wakes and announces; any other send is one
            // statement.
            let deliveries = match &n.recipients {
                Recipients::User(_) => self.store_user_send(n).await?,
                _ => {
                    let deliveries = store_one(&self.pool, n).await?;
                    self.handover.queue_stored(deliveries);
                    deliveries
                }
            };
            return Ok(Accepted::Created {
                id: n.id.clone(),
                deliveries,
            });
        };
        let mut tx = self.pool.begin().await?;
        // Claim the key first. A fresh key of another request (on any
        // instance) makes this insert wait for that transaction, then do
        // nothing: that answer is replayed. A key older than the window is
        // taken over.
        let claimed = sqlx::query(
            "INSERT INTO idempotency_keys (app_id, key, notification_id, deliveries, created_at) VALUES ($1, $2, $3, 0, $4)
             ON CONFLICT (app_id, key) DO UPDATE SET notification_id = EXCLUDED.notification_id, deliveries = 0, created_at = EXCLUDED.created_at
                 WHERE idempotency_keys.created_at <= $5
             RETURNING 1",
        )
        .bind(&n.app_id)
        .bind(key)
        .bind(&n.id)
        .bind(n.created_at)
        .bind(n.created_at - window_ms)
        .fetch_optional(&mut *tx)
        .await?;
        if claimed.is_none() {
            let (id, deliveries): (String, i64) = sqlx::query_as("SELECT notification_id, deliveries FROM idempotency_keys WHERE app_id = $1 AND key = $2")
                .bind(&n.app_id)
                .bind(key)
                .fetch_one(&mut *tx)
                .await?;
            tx.rollback().await?;
            return Ok(Accepted::Replayed {
                id,
                deliveries: deliveries as u64,
            });
        }
        let deliveries = store_notification(&mut tx, n).await?;
        sqlx::query("UPDATE idempotency_keys SET deliveries = $1 WHERE app_id = $2 AND key = $3")
            .bind(deliveries as i64)
            .bind(&n.app_id)
            .bind(key)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.handover.queue_stored(deliveries);
        Ok(Accepted::Created {
            id: n.id.clone(),
            deliveries,
        })
    }

    /// Hands new deliveries to `intake`: sends to users start there as
    /// they are stored, and the store wakes it for everything else (see
    /// [`PgStore::wakes_queue`]).
    pub fn attach_intake(&self, intake: Arc<dyn Intake>) {
        let _ = self.handover.intake.set(intake);
    }

    /// Whether storing work wakes the local queue by itself.
    pub fn wakes_queue(&self) -> bool {
        self.handover.intake.get().is_some()
    }

    /// Stores a send to one user together with the others waiting.
    async fn store_user_send(&self, n: &NewNotification) -> Result<u64> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = UserSend {
            notification: n.clone(),
            reply,
        };
        self.user_sends
            .send(job)
            .await
            .map_err(|_| StoreError::WriterStopped)?;
        answer.await.map_err(|_| StoreError::WriterStopped)?
    }

    pub async fn notification_get(
        &self,
        app_id: &str,
        id: &str,
    ) -> Result<Option<(NotificationRow, Vec<QueueRow>)>> {
        let Some(row) = sqlx::query("SELECT id, app_id, title, created_at, expires_at FROM notifications WHERE app_id = $1 AND id = $2")
            .bind(app_id)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let n = NotificationRow {
            id: row.get("id"),
            app_id: row.get("app_id"),
            title: row.get("title"),
            created_at: row.get("created_at"),
            expires_at: row.get("expires_at"),
        };
        let rows = sqlx::query(&format!(
            "{QUEUE_SELECT} WHERE d.notification_id = $1 ORDER BY d.id"
        ))
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        Ok(Some((n, rows.iter().map(queue_row).collect())))
    }

    // ---- the delivery queue -------------------------------------------

    pub async fn deliveries_claim(
        &self,
        now: Millis,
        lease_until: Millis,
        limit: u32,
    ) -> Result<Vec<Claimed>> {
        self.claim(now, lease_until, limit, true).await
    }

    pub async fn deliveries_claim_due(
        &self,
        now: Millis,
        lease_until: Millis,
        limit: u32,
    ) -> Result<Vec<Claimed>> {
        self.claim(now, lease_until, limit, false).await
    }

    async fn claim(
        &self,
        now: Millis,
        lease_until: Millis,
        limit: u32,
        lapsed: bool,
    ) -> Result<Vec<Claimed>> {
        // One round trip: `herald_claim` (migrations 0002 – 0004) locks each
        // app with due work, counts its leases and claims within its room on
        // the server; leases that ran out too if `lapsed`.
        let rows = sqlx::query("SELECT * FROM herald_claim($1, $2, $3, $4)")
            .bind(now)
            .bind(lease_until)
            .bind(limit as i64)
            .bind(lapsed)
            .fetch_all(&self.queue)
            .await?;
        claimed_rows(&rows)
    }

    pub async fn deliveries_record(&self, outcomes: &[Recorded], now: Millis) -> Result<()> {
        if outcomes.is_empty() {
            return Ok(());
        }
        // The usual batch, every push delivered, is one statement and so its
        // own transaction.
        if outcomes
            .iter()
            .all(|o| matches!(o.disposition, Disposition::Delivered { .. }))
        {
            record_delivered(&mut *self.queue.acquire().await?, outcomes).await?;
            return Ok(());
        }
        let mut tx = self.queue.begin().await?;
        let mut retried = false;
        let mut i = 0;
        while i < outcomes.len() {
            // Consecutive successes, the common case, are one statement.
            let run = outcomes[i..]
                .iter()
                .take_while(|o| matches!(o.disposition, Disposition::Delivered { .. }))
                .count();
            if run > 0 {
                record_delivered(&mut tx, &outcomes[i..i + run]).await?;
                i += run;
                continue;
            }
            let o = &outcomes[i];
            i += 1;
            let fence = "WHERE id = $1 AND claims = $2 AND status = 'in_flight'";
            let done = match &o.disposition {
                Disposition::Delivered { .. } => unreachable!("handled above"),
                Disposition::Retry { at, error, used_attempt, without_topic } => {
                    retried = true;
                    sqlx::query(&format!(
                        "UPDATE deliveries SET status = 'pending', attempts = attempts + $3, last_error = $4, next_attempt_at = $5,
                             without_topic = without_topic OR $6, lease_until = NULL {fence}"
                    ))
                    .bind(o.id)
                    .bind(o.claims)
                    .bind(*used_attempt as i64)
                    .bind(error)
                    .bind(*at)
                    .bind(*without_topic)
                    .execute(&mut *tx)
                    .await?
                }
                Disposition::Gone { error } => {
                    let r = sqlx::query(&format!(
                        "UPDATE deliveries SET status = 'gone', attempts = attempts + 1, last_error = $3, finished_at = $4, lease_until = NULL {fence}"
                    ))
                    .bind(o.id)
                    .bind(o.claims)
                    .bind(error)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    if r.rows_affected() > 0 {
                        sqlx::query("DELETE FROM subscriptions WHERE id = $1").bind(&o.subscription_id).execute(&mut *tx).await?;
                        mark_queued_gone(&mut tx, &o.subscription_id, error, now).await?;
                    }
                    r
                }
                Disposition::Failed { error } => {
                    sqlx::query(&format!(
                        "UPDATE deliveries SET status = 'failed', attempts = attempts + 1, last_error = $3, finished_at = $4, lease_until = NULL {fence}"
                    ))
                    .bind(o.id)
                    .bind(o.claims)
                    .bind(error)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                }
                Disposition::Expired { error } => {
                    sqlx::query(&format!(
                        "UPDATE deliveries SET status = 'expired', last_error = COALESCE($3, last_error), finished_at = $4, lease_until = NULL {fence}"
                    ))
                    .bind(o.id)
                    .bind(o.claims)
                    .bind(error)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                }
            };
            if done.rows_affected() == 0 {
                tracing::debug!(
                    delivery = o.id,
                    claims = o.claims,
                    "outcome of a stale claim ignored"
                );
            }
        }
        tx.commit().await?;
        // Other instances plan their sleep from the due times they last saw:
        // a new retry time must reach them too.
        if retried {
            self.announce();
        }
        Ok(())
    }

    pub async fn queue_next_pending(&self) -> Result<Option<Millis>> {
        Ok(sqlx::query_scalar(
            "SELECT min((SELECT next_attempt_at FROM deliveries WHERE app_id = a.id AND status = 'pending'
                         ORDER BY next_attempt_at LIMIT 1))
             FROM apps a WHERE a.max_concurrency > 0",
        )
        .fetch_one(&self.queue)
        .await?)
    }

    pub async fn queue_next_due(&self) -> Result<Option<Millis>> {
        // Per app through the partial indexes, not a scan of the queue.
        Ok(sqlx::query_scalar(
            "SELECT min(x.due) FROM apps a CROSS JOIN LATERAL (
                 (SELECT next_attempt_at AS due FROM deliveries WHERE app_id = a.id AND status = 'pending' ORDER BY next_attempt_at LIMIT 1)
                 UNION ALL
                 (SELECT lease_until FROM deliveries WHERE app_id = a.id AND status = 'in_flight' ORDER BY lease_until LIMIT 1)
             ) x WHERE a.max_concurrency > 0",
        )
        .fetch_one(&self.queue)
        .await?)
    }

    pub async fn queue_list(&self, f: &QueueFilter) -> Result<Vec<QueueRow>> {
        let rows = sqlx::query(&format!(
            "{QUEUE_SELECT} WHERE ($1::text IS NULL OR d.app_id = $1) AND ($2::text IS NULL OR d.status = $2) ORDER BY d.id DESC LIMIT $3"
        ))
        .bind(f.app.as_deref())
        .bind(f.status.map(|s| s.as_str()))
        .bind(f.limit as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(queue_row).collect())
    }

    pub async fn queue_counts(&self) -> Result<QueueCounts> {
        let (pending, in_flight): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status = 'pending'), count(*) FILTER (WHERE status = 'in_flight') FROM deliveries WHERE status IN ('pending', 'in_flight')",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(QueueCounts { pending, in_flight })
    }

    pub async fn queue_due_count(&self, now: Millis) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM deliveries WHERE status = 'pending' AND next_attempt_at <= $1",
        )
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        Ok(n as u64)
    }

    pub async fn queue_force(&self, now: Millis) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query("UPDATE deliveries SET next_attempt_at = $1 WHERE status = 'pending' AND next_attempt_at > $1")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let due: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM deliveries WHERE status = 'pending' AND next_attempt_at <= $1",
        )
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let forced = (due as u64).max(r.rows_affected());
        tx.commit().await?;
        if forced > 0 {
            self.announce();
        }
        Ok(forced)
    }

    pub async fn queue_remove(&self, id: i64) -> Result<u64> {
        Ok(sqlx::query("DELETE FROM deliveries WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    pub async fn queue_clear(&self, app_id: Option<&str>) -> Result<u64> {
        // Instances delivering these meanwhile record nothing: their writes
        // are fenced on rows that no longer exist.
        Ok(sqlx::query(&format!(
            "DELETE FROM deliveries WHERE status IN {QUEUED} AND ($1::text IS NULL OR app_id = $1)"
        ))
        .bind(app_id)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    pub async fn vendor_stats(&self) -> Result<Vec<VendorStats>> {
        let rows = sqlx::query(
            "SELECT vendor,
                    count(*) FILTER (WHERE status = 'delivered') AS delivered, count(*) FILTER (WHERE status = 'failed') AS failed,
                    count(*) FILTER (WHERE status = 'gone') AS gone, count(*) FILTER (WHERE status = 'expired') AS expired,
                    avg(sent_at - created_at) FILTER (WHERE status = 'delivered')::float8 AS wait,
                    avg(finished_at - sent_at) FILTER (WHERE status = 'delivered')::float8 AS took
             FROM deliveries GROUP BY vendor ORDER BY vendor",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| VendorStats {
                vendor: r.get("vendor"),
                delivered: r.get("delivered"),
                failed: r.get("failed"),
                gone: r.get("gone"),
                expired: r.get("expired"),
                avg_queue_wait_ms: r.get("wait"),
                avg_delivery_ms: r.get("took"),
            })
            .collect())
    }

    pub async fn purge_finished(&self, before: Millis) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        let d = sqlx::query(
            "DELETE FROM deliveries WHERE finished_at IS NOT NULL AND finished_at < $1",
        )
        .bind(before)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM notifications WHERE created_at < $1 AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.notification_id = notifications.id)")
            .bind(before)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
            .bind(before)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(d.rows_affected())
    }

    /// Tells every instance's listener that committed work may be claimable.
    /// Called after the commit, never inside the transaction: a `NOTIFY`
    /// takes a database-wide lock from its commit until the commit is on
    /// disk, so notifying inside every send would serialise all sends'
    /// commits behind one another. Requests made while one announcement is
    /// under way are folded into the next.
    fn announce(&self) {
        self.handover.announce();
    }
}

impl Handover {
    /// See [`PgStore::announce`].
    fn announce(&self) {
        let _ = self.wanted.try_send(());
    }

    /// Wakes this instance's queue for `deliveries` stored and not started,
    /// and tells the other instances if it cannot start them all.
    fn queue_stored(&self, deliveries: u64) {
        if deliveries == 0 {
            return;
        }
        if let Some(intake) = self.intake.get() {
            intake.wake();
        }
        self.announce_unless_local(deliveries);
    }

    /// Announces new deliveries only if this instance's queue, which has
    /// been woken for them or started them already, cannot start all of
    /// them at once. A send to one user then costs no `NOTIFY`, and does not
    /// wake every other instance into a claim that finds nothing; a
    /// broadcast still brings every instance in. Without a local queue (a
    /// store used on its own) every send is announced.
    fn announce_unless_local(&self, deliveries: u64) {
        match self.local_room.get() {
            Some(room) if room(deliveries) => {}
            _ => self.announce(),
        }
    }
}

/// Both pools: a bounded wait for a connection, and one that sat idle
/// checked before use ([`CHECK_IF_IDLE`]).
fn pool_options() -> PgPoolOptions {
    PgPoolOptions::new()
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= CHECK_IF_IDLE {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
}

/// Sends the announcements [`PgStore::announce`] asks for, one at a time,
/// until every store handle is dropped.
async fn announce_loop(
    pool: PgPool,
    schema: Arc<str>,
    mut wanted: tokio::sync::mpsc::Receiver<()>,
) {
    while wanted.recv().await.is_some() {
        // On the queue's connections, without an fsync: the notification
        // carries no data, and a lost one is covered by the safety wake.
        let sent = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(WAKE_CHANNEL)
            .bind(&*schema)
            .execute(&pool)
            .await;
        if let Err(e) = sent {
            tracing::warn!(error = %e, "announcing queued work to other instances failed");
        }
    }
}

/// Stores the sends to users that wait, in batches of at most
/// [`USER_SEND_BATCH`] and [`USER_SEND_WRITERS`] batches at a time, until
/// every store handle is dropped.
async fn user_send_loop(
    pool: PgPool,
    handover: Arc<Handover>,
    mut waiting: tokio::sync::mpsc::Receiver<UserSend>,
) {
    let writers = Arc::new(tokio::sync::Semaphore::new(USER_SEND_WRITERS));
    let mut last_batch = None::<tokio::time::Instant>;
    loop {
        let Ok(writer) = writers.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = waiting.recv().await else {
            return;
        };
        let mut batch = vec![first];
        take_waiting(&mut waiting, &mut batch);
        let streaming = last_batch.is_some_and(|at| at.elapsed() < USER_SEND_STREAMING);
        if streaming && batch.len() < USER_SEND_GATHER_BELOW {
            tokio::time::sleep(USER_SEND_GATHER).await;
            take_waiting(&mut waiting, &mut batch);
        }
        last_batch = Some(tokio::time::Instant::now());
        let pool = pool.clone();
        let handover = handover.clone();
        tokio::spawn(async move {
            store_user_sends(&pool, &handover, batch).await;
            drop(writer);
        });
    }
}

/// Moves the sends already waiting into `batch`, up to [`USER_SEND_BATCH`].
fn take_waiting(waiting: &mut tokio::sync::mpsc::Receiver<UserSend>, batch: &mut Vec<UserSend>) {
    while batch.len() < USER_SEND_BATCH {
        match waiting.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
}

/// Room reserved in the local queue per send to a user, for the devices
/// it may have; what is not used goes back at once.
const HANDOVER_PER_SEND: usize = 4;

/// Stores a batch of sends to users, answers each, and starts what it
/// leased in the local queue: answered first, so that the 202s are written
/// before the runtime's workers turn to the new pushes, as on SQLite
/// (`Stored::answer` there says why). In two interleaved pairs of benchmark
/// runs (40 000 subscriptions, 30 000 per-user sends) one instance went
/// from 8 768 / 8 090 to 10 086 / 9 679 per-user deliveries/s, three from
/// 6 599 / 6 372 to 7 171 / 7 286. What was not leased (no room in the queue
/// or the app) wakes the queue, and the other instances if this one has no
/// room. If the batch fails as a whole, nothing of it is stored, and each
/// send runs again on its own, so one that cannot be stored answers its own
/// caller with the error and the others are stored; those wait for a claim.
async fn store_user_sends(pool: &PgPool, handover: &Handover, batch: Vec<UserSend>) {
    let intake = handover.intake.get();
    // Without a local queue nothing is reserved, and nothing is leased.
    let reserved = intake.map(|intake| intake.reserve(HANDOVER_PER_SEND * batch.len()));
    match store_together(pool, &batch, reserved.as_ref()).await {
        Ok(stored) => {
            for (job, n) in batch.into_iter().zip(stored.counts) {
                let _ = job.reply.send(Ok(n));
            }
            if let (Some(intake), Some(reserved)) = (intake, reserved) {
                // Room reserved but not used goes back as its permits drop.
                for (claimed, permit) in stored.leased.into_iter().zip(reserved.permits) {
                    intake.start(claimed, permit);
                }
            }
            handover.queue_stored(stored.waiting);
        }
        Err(_) => {
            drop(reserved);
            let mut waiting = 0;
            for job in batch {
                let result = store_one(pool, &job.notification).await;
                waiting += result.as_ref().map_or(0, |n| *n);
                let _ = job.reply.send(result);
            }
            handover.queue_stored(waiting);
        }
    }
}

/// What [`store_together`] stored.
struct StoredSends {
    /// Deliveries per send, in the batch's order.
    counts: Vec<u64>,
    /// The deliveries leased to the local queue, as a claim returns them.
    leased: Vec<Claimed>,
    /// Deliveries stored pending, for a claim.
    waiting: u64,
}

/// One statement for the whole batch (`herald_store_to_users`, migrations
/// 0005 – 0006): the notifications as arrays, each fanned out to its user's
/// devices, and as many of the deliveries as `reserved` has room for (and
/// each app's `max_concurrency`) leased to the local queue. The arrays keep
/// the statement's text the same whatever the batch's length, so it is
/// prepared once.
async fn store_together(
    pool: &PgPool,
    batch: &[UserSend],
    reserved: Option<&Reservation>,
) -> Result<StoredSends> {
    let mut ids = Vec::with_capacity(batch.len());
    let mut apps = Vec::with_capacity(batch.len());
    let mut titles = Vec::with_capacity(batch.len());
    let mut payloads = Vec::with_capacity(batch.len());
    let mut ttls = Vec::with_capacity(batch.len());
    let mut urgencies = Vec::with_capacity(batch.len());
    let mut topic_keys = Vec::with_capacity(batch.len());
    let mut created = Vec::with_capacity(batch.len());
    let mut expires = Vec::with_capacity(batch.len());
    let mut users = Vec::with_capacity(batch.len());
    for job in batch {
        let n = &job.notification;
        let Recipients::User(user) = &n.recipients else {
            unreachable!("only sends to one user are batched")
        };
        ids.push(n.id.as_str());
        apps.push(n.app_id.as_str());
        titles.push(n.title.as_str());
        payloads.push(n.payload.as_slice());
        ttls.push(n.ttl_secs as i64);
        urgencies.push(n.urgency.as_str());
        topic_keys.push(n.topic_key.as_deref());
        created.push(n.created_at);
        expires.push(n.expires_at());
        users.push(user.as_str());
    }
    let (now, lease_until, budget) = match reserved {
        Some(r) => (r.now, r.lease_until, r.permits.len() as i64),
        None => (0, 0, 0),
    };
    let rows = sqlx::query(
        "SELECT * FROM herald_store_to_users($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(&ids)
    .bind(&apps)
    .bind(&titles)
    .bind(&payloads)
    .bind(&ttls)
    .bind(&urgencies)
    .bind(&topic_keys)
    .bind(&created)
    .bind(&expires)
    .bind(&users)
    .bind(now)
    .bind(lease_until)
    .bind(budget)
    .fetch_all(pool)
    .await?;
    let position: std::collections::HashMap<&str, usize> =
        ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let mut stored = StoredSends {
        counts: vec![0; batch.len()],
        leased: Vec::new(),
        waiting: 0,
    };
    let mut leased = Vec::new();
    for r in &rows {
        if let Some(&i) = position.get(r.get::<&str, _>("notification_id")) {
            stored.counts[i] += 1;
        }
        if r.get("leased") {
            leased.push(r);
        } else {
            stored.waiting += 1;
        }
    }
    stored.leased = claimed_rows(leased)?;
    Ok(stored)
}

/// Stores one notification with its fan-out; answers its number of
/// deliveries. A fan-out that may take several statements
/// ([`store_notification`]) gets a transaction of its own.
async fn store_one(pool: &PgPool, n: &NewNotification) -> Result<u64> {
    if !fans_out_in_chunks(n) {
        return store_notification(&mut *pool.acquire().await?, n).await;
    }
    let mut tx = pool.begin().await?;
    let deliveries = store_notification(&mut tx, n).await?;
    tx.commit().await?;
    Ok(deliveries)
}

/// Most deliveries one statement of a send to everyone or to a topic
/// stores. Such a send is stored by as many statements as its audience
/// needs, so `statement_timeout` bounds each statement, not the size of an
/// app's audience: on the development machine one statement for a million
/// subscriptions ran past the default 10 s, and the send failed. A
/// statement of this many takes a fraction of a second there.
const FAN_OUT_CHUNK: i64 = 20_000;

/// Whether `n`'s audience can be larger than a request names.
fn fans_out_in_chunks(n: &NewNotification) -> bool {
    matches!(n.recipients, Recipients::All | Recipients::Topic(_))
}

/// Stores a notification and its fan-out ([`push_fan_out`]); answers the
/// number of deliveries. The first statement stores the notification too:
/// the deliveries' foreign key to it is checked at the end of the
/// statement, when both exist. A send to everyone or to a topic goes on in
/// chunks of [`FAN_OUT_CHUNK`] subscriptions in id order, each starting
/// after the last id of the one before, and needs the caller's transaction
/// so that it is stored whole or not at all; any other send is one
/// statement.
async fn store_notification(conn: &mut PgConnection, n: &NewNotification) -> Result<u64> {
    let chunked = fans_out_in_chunks(n);
    let mut stored = 0;
    let mut after: Option<String> = None;
    loop {
        let mut q: QueryBuilder<Postgres> = QueryBuilder::new("WITH ");
        if after.is_none() {
            q.push("stored AS (INSERT INTO ");
            q.push(NOTIFICATION_COLUMNS).push(" VALUES (");
            push_notification_row(&mut q.separated(", "), n);
            q.push(")), ");
        }
        q.push("fanned AS (");
        push_fan_out(&mut q, n);
        if chunked {
            q.push(" AND s.id > ")
                .push_bind(after.clone().unwrap_or_default())
                .push(" ORDER BY s.id LIMIT ")
                .push_bind(FAN_OUT_CHUNK);
        }
        q.push(" RETURNING subscription_id) SELECT count(*), max(subscription_id) FROM fanned");
        let (count, last): (i64, Option<String>) = q.build_query_as().fetch_one(&mut *conn).await?;
        stored += count as u64;
        match last {
            Some(last) if chunked && count == FAN_OUT_CHUNK => after = Some(last),
            _ => return Ok(stored),
        }
    }
}

/// One listening session: returns `Ok` when stopped, `Err` when the
/// connection failed in a way the listener could not mend by itself.
async fn listen(
    pool: &PgPool,
    schema: &str,
    on_wake: &(dyn Fn() + Send + Sync),
    stop: &CancellationToken,
) -> std::result::Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(WAKE_CHANNEL).await?;
    tracing::debug!("listening for queue wake-ups");
    // Announcements made while not listening are lost: look once.
    on_wake();
    let mut safety = tokio::time::interval(SAFETY_WAKE);
    safety.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = safety.tick() => on_wake(),
            got = listener.try_recv() => match got? {
                Some(n) => {
                    if n.payload() == schema {
                        on_wake();
                    }
                }
                // The connection was lost and has been re-established.
                None => {
                    tracing::info!("reconnected the wake-up listener");
                    on_wake();
                }
            },
        }
    }
}

/// A dead subscription's queued deliveries will never arrive: mark them gone.
async fn mark_queued_gone(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    subscription_id: &str,
    error: &str,
    now: Millis,
) -> Result<()> {
    sqlx::query(&format!(
        "UPDATE deliveries SET status = 'gone', last_error = $1, finished_at = $2, lease_until = NULL
         WHERE subscription_id = $3 AND status IN {QUEUED}"
    ))
    .bind(error)
    .bind(now)
    .bind(subscription_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

const QUEUE_SELECT: &str = "SELECT d.id, d.app_id, d.notification_id, d.subscription_id, d.user_id, n.title, d.endpoint_host, d.vendor,
        d.attempts, d.last_error, d.status, d.created_at, d.next_attempt_at, d.finished_at
    FROM deliveries d JOIN notifications n ON n.id = d.notification_id";

fn queue_row(r: &PgRow) -> QueueRow {
    decode(r)
}

fn app_row(r: &PgRow) -> AppRow {
    decode(r)
}

fn subscription_row(r: &PgRow) -> Result<SubscriptionRow> {
    let topics: String = r.get("topics");
    Ok(SubscriptionRow {
        id: r.get("id"),
        app_id: r.get("app_id"),
        user_id: r.get("user_id"),
        endpoint: r.get("endpoint"),
        endpoint_host: r.get("endpoint_host"),
        vendor: r.get("vendor"),
        auth: r.get("auth"),
        content_encoding: r.get("content_encoding"),
        topics: serde_json::from_str(&topics)
            .map_err(|e| StoreError::Corrupt(format!("subscription topics: {e}")))?,
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
    })
}

/// Decodes the rows of a claim; rows of one notification share one
/// decoded `Notice`.
fn claimed_rows<'r>(rows: impl IntoIterator<Item = &'r PgRow>) -> Result<Vec<Claimed>> {
    let mut notices: std::collections::HashMap<String, Arc<Notice>> = Default::default();
    rows.into_iter()
        .map(|r| {
            let notification_id: String = r.get("notification_id");
            let notice = match notices.get(&notification_id) {
                Some(notice) => notice.clone(),
                None => {
                    let notice = Arc::new(Notice::from_row(r)?);
                    notices.insert(notification_id.clone(), notice.clone());
                    notice
                }
            };
            Ok(claimed_row(r, notification_id, notice))
        })
        .collect()
}

fn claimed_row(r: &PgRow, notification_id: String, notice: Arc<Notice>) -> Claimed {
    let endpoint: Option<String> = r.get("endpoint");
    Claimed {
        id: r.get("id"),
        claims: r.get("claims"),
        attempts: r.get("attempts"),
        app_id: r.get("app_id"),
        notification_id,
        subscription_id: r.get("subscription_id"),
        vendor: r.get("vendor"),
        target: endpoint.map(|endpoint| Target {
            endpoint,
            p256dh: r.get("p256dh"),
            auth: r.get("auth"),
            content_encoding: r.get("content_encoding"),
        }),
        notice,
        without_topic: r.get("without_topic"),
        expires_at: r.get("expires_at"),
        created_at: r.get("created_at"),
    }
}

/// Marks a run of delivered outcomes in one statement, fenced by
/// (id, claims) as every outcome write.
async fn record_delivered(conn: &mut PgConnection, batch: &[Recorded]) -> Result<()> {
    let mut ids = Vec::with_capacity(batch.len());
    let mut claims = Vec::with_capacity(batch.len());
    let mut ats = Vec::with_capacity(batch.len());
    for o in batch {
        let Disposition::Delivered { at } = o.disposition else {
            unreachable!("only delivered outcomes are passed here")
        };
        ids.push(o.id);
        claims.push(o.claims);
        ats.push(at);
    }
    sqlx::query(
        "UPDATE deliveries d SET status = 'delivered', attempts = d.attempts + 1, last_error = NULL, finished_at = u.at, lease_until = NULL
         FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS u(id, claims, at)
         WHERE d.id = u.id AND d.claims = u.claims AND d.status = 'in_flight'",
    )
    .bind(&ids)
    .bind(&claims)
    .bind(&ats)
    .execute(conn)
    .await?;
    Ok(())
}
