//! Embedded SQLite backend, the default.
//!
//! SQLite allows one writer at a time, so writes go through a pool of exactly
//! one connection: transactions never fail with SQLITE_BUSY halfway, and the
//! claim's read-then-update cannot interleave with another writer. Reads use a
//! separate pool and run concurrently thanks to WAL mode.
//!
//! Durability is chosen per transaction. Everything the API acknowledges
//! (apps, subscriptions, a notification answered 202) commits with
//! `synchronous = FULL` and survives power loss. Claims and outcome writes
//! commit with `NORMAL`: losing the last of them in a power cut only means a
//! delivery is sent again, which at-least-once delivery allows, and it keeps
//! an fsync out of the path between a 202 and the push.
//!
//! Sends and outcomes share one writer loop ([`write_loop`]): outcomes that
//! wait while sends are stored go into the sends' transaction, so under load
//! the writer takes one turn per batch instead of two. Each transaction is
//! one or two round trips to the connection's thread, `BEGIN` and `COMMIT`
//! included (see [`Frame`]).
//!
//! Sends to users go to the local queue as they are stored: one process owns
//! the database, so the accept transaction can lease the new deliveries to
//! this process's queue itself (within its free senders and the app's
//! `max_concurrency`) and hand them over after the commit, instead of waking
//! the dispatcher to claim them in a transaction of its own.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Connection, FromRow, QueryBuilder, Row, Sqlite};

use super::*;
use crate::domain::new_id;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

#[derive(Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    /// Notifications to accept and outcomes to record, committed together
    /// by [`write_loop`].
    writes: tokio::sync::mpsc::Sender<WriteJob>,
    /// The local queue, once it runs: sends to users are handed to it as
    /// they are stored (see [`accept_to_users`]).
    intake: Arc<OnceLock<Arc<dyn Intake>>>,
}

/// One send request waiting for its notification to be stored.
struct AcceptJob {
    notification: NewNotification,
    idempotency_key: Option<String>,
    window_ms: i64,
    reply: tokio::sync::oneshot::Sender<Result<Accepted>>,
}

/// Outcomes of deliveries waiting to be written.
struct RecordJob {
    outcomes: Vec<Recorded>,
    now: Millis,
    reply: tokio::sync::oneshot::Sender<Result<()>>,
}

/// What [`write_loop`] commits.
enum WriteJob {
    Accept(AcceptJob),
    Record(RecordJob),
}

/// Most notifications committed by one synced transaction.
const ACCEPT_BATCH: usize = 256;

/// WAL frames (pages) after which the writer checkpoints them into the
/// database, instead of SQLite's 1 000. Every transaction writes the queue's
/// hot pages (the ends of the tables and indexes each send and outcome
/// touches) to the WAL again, and a checkpoint copies each page once however
/// often it is there: with ten times the frames between checkpoints, far
/// fewer pages are copied and synced per delivery. The WAL file keeps its
/// largest size on disk, about 40 MiB, and is overwritten from its start
/// after each checkpoint.
const WAL_AUTOCHECKPOINT: &str = "10000";

/// A batch padded to the next power of two with `None`, for a statement
/// that binds one `VALUES` row per item. Each length of such a statement is
/// a statement of its own to prepare, and batch lengths vary all the time:
/// unpadded, they outnumber sqlx's statement cache and are prepared again
/// and again. Padded, each batched statement has at most ten shapes. The
/// padding rows are all NULL, and every batched statement skips them.
fn padded<T>(items: &[T]) -> impl Iterator<Item = Option<&T>> {
    let len = match items.len() {
        0 => 0,
        n => n.next_power_of_two(),
    };
    items
        .iter()
        .map(Some)
        .chain(std::iter::repeat(None))
        .take(len)
}

/// Binds a padding row of `columns` NULLs (see [`padded`]).
fn push_nulls(
    row: &mut sqlx::query_builder::Separated<'_, '_, Sqlite, &'static str>,
    columns: usize,
) {
    for _ in 0..columns {
        row.push_bind(None::<i64>);
    }
}

const QUEUED: &str = "('pending', 'in_flight')";

/// What a claim returns per delivery, by position (see [`claimed_delivery`]):
/// the delivery's own columns. Its subscription's target is read apart, one
/// lookup by id per delivery (see [`claimed_targets`]); read in the
/// `RETURNING`, it took four lookups, one per column.
macro_rules! claim_returning {
    () => {
        " RETURNING id, claims, attempts, app_id, notification_id, subscription_id, vendor,
        without_topic, expires_at, created_at"
    };
}

impl SqliteStore {
    pub async fn connect(url: &str, max_connections: u32, busy_timeout_ms: u64) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_millis(busy_timeout_ms))
            .pragma("temp_store", "memory");
        if let Some(dir) = options.get_filename().parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::Corrupt(format!("cannot create {}: {e}", dir.display()))
                })?;
            }
        }
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            // sqlx pings a connection as it goes back to the pool anyway; a
            // second ping on every acquire would add a round trip to each
            // write for a file that cannot hang up.
            .test_before_acquire(false)
            // The page cache is per connection: the writer, which touches the
            // hot end of the queue, gets 8 MiB; each reader 2 MiB, so idle
            // memory stays small however many readers there are.
            .connect_with(
                options
                    .clone()
                    .pragma("cache_size", "-8000")
                    .pragma("wal_autocheckpoint", WAL_AUTOCHECKPOINT),
            )
            .await?;
        MIGRATOR.run(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(max_connections.max(1))
            .connect_with(options.read_only(true).pragma("cache_size", "-2000"))
            .await?;
        let (writes, jobs) = tokio::sync::mpsc::channel(4 * ACCEPT_BATCH);
        let intake: Arc<OnceLock<Arc<dyn Intake>>> = Arc::new(OnceLock::new());
        tokio::spawn(write_loop(writer.clone(), jobs, intake.clone()));
        Ok(SqliteStore {
            writer,
            reader,
            writes,
            intake,
        })
    }

    pub fn attach_intake(&self, intake: Arc<dyn Intake>) {
        let _ = self.intake.set(intake);
    }

    pub fn wakes_queue(&self) -> bool {
        self.intake.get().is_some()
    }

    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    // ---- apps ----------------------------------------------------------

    pub async fn app_insert(&self, a: &AppRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO apps (id, name, contact, api_key_hash, vapid_public_key, vapid_private_sealed, vapid_generation, max_concurrency, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    pub async fn app_get(&self, id: &str) -> Result<Option<AppRow>> {
        Ok(sqlx::query("SELECT * FROM apps WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.reader)
            .await?
            .map(|r| app_row(&r)))
    }

    pub async fn app_list(&self) -> Result<Vec<AppRow>> {
        Ok(sqlx::query("SELECT * FROM apps ORDER BY created_at, id")
            .fetch_all(&self.reader)
            .await?
            .iter()
            .map(app_row)
            .collect())
    }

    pub async fn app_id_by_key_hash(&self, hash: &[u8]) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT id FROM apps WHERE api_key_hash = ?")
                .bind(hash)
                .fetch_optional(&self.reader)
                .await?,
        )
    }

    pub async fn app_update(
        &self,
        id: &str,
        contact: Option<&str>,
        max_concurrency: Option<i64>,
    ) -> Result<Option<AppRow>> {
        let row = sqlx::query(
            "UPDATE apps SET contact = COALESCE(?, contact), max_concurrency = COALESCE(?, max_concurrency),
                 last_config_error = CASE WHEN ? IS NOT NULL THEN NULL ELSE last_config_error END
             WHERE id = ? RETURNING *",
        )
        .bind(contact)
        .bind(max_concurrency)
        .bind(contact)
        .bind(id)
        .fetch_optional(&self.writer)
        .await?;
        Ok(row.map(|r| app_row(&r)))
    }

    pub async fn app_set_config_error(
        &self,
        id: &str,
        error: Option<&str>,
        at: Millis,
    ) -> Result<()> {
        sqlx::query("UPDATE apps SET last_config_error = ?, last_config_error_at = ? WHERE id = ?")
            .bind(error)
            .bind(error.map(|_| at))
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    pub async fn app_regenerate(
        &self,
        id: &str,
        public_key: &str,
        sealed_private: &[u8],
    ) -> Result<Option<(u64, u64)>> {
        let mut tx = self.writer.begin().await?;
        let updated = sqlx::query(
            "UPDATE apps SET vapid_public_key = ?, vapid_private_sealed = ?, vapid_generation = vapid_generation + 1,
                 last_config_error = NULL, last_config_error_at = NULL WHERE id = ?",
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
            "DELETE FROM deliveries WHERE app_id = ? AND status IN {QUEUED}"
        ))
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let subs = sqlx::query("DELETE FROM subscriptions WHERE app_id = ?")
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
        let mut tx = self.writer.begin().await?;
        let existing: Option<String> =
            sqlx::query_scalar("SELECT id FROM subscriptions WHERE app_id = ? AND endpoint = ?")
                .bind(&s.app_id)
                .bind(&s.endpoint)
                .fetch_optional(&mut *tx)
                .await?;
        let topics = serde_json::to_string(&s.topics).expect("strings serialise");
        let (id, created) = match existing {
            Some(id) => {
                sqlx::query(
                    "UPDATE subscriptions SET user_id = ?, p256dh = ?, auth = ?, content_encoding = ?, topics = ?, updated_at = ? WHERE id = ?",
                )
                .bind(&s.user_id)
                .bind(&s.p256dh)
                .bind(&s.auth)
                .bind(&s.content_encoding)
                .bind(&topics)
                .bind(now)
                .bind(&id)
                .execute(&mut *tx)
                .await?;
                sqlx::query("DELETE FROM subscription_topics WHERE subscription_id = ?")
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                (id, false)
            }
            None => {
                let id = new_id();
                sqlx::query(
                    "INSERT INTO subscriptions (id, app_id, user_id, endpoint, endpoint_host, vendor, p256dh, auth, content_encoding, topics, created_at, updated_at)
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(&id)
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
                .bind(now)
                .execute(&mut *tx)
                .await?;
                (id, true)
            }
        };
        for topic in &s.topics {
            sqlx::query("INSERT OR IGNORE INTO subscription_topics (app_id, topic, subscription_id) VALUES (?, ?, ?)")
                .bind(&s.app_id)
                .bind(topic)
                .bind(&id)
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
        let rows = sqlx::query("SELECT * FROM subscriptions WHERE app_id = ? AND (? IS NULL OR user_id = ?) ORDER BY created_at, id")
            .bind(app_id)
            .bind(user)
            .bind(user)
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(subscription_row).collect()
    }

    pub async fn subscription_get(
        &self,
        app_id: &str,
        id: &str,
    ) -> Result<Option<SubscriptionRow>> {
        let row = sqlx::query("SELECT * FROM subscriptions WHERE app_id = ? AND id = ?")
            .bind(app_id)
            .bind(id)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(subscription_row).transpose()
    }

    pub async fn subscription_by_endpoint(
        &self,
        app_id: &str,
        endpoint: &str,
    ) -> Result<Option<SubscriptionRow>> {
        let row = sqlx::query("SELECT * FROM subscriptions WHERE app_id = ? AND endpoint = ?")
            .bind(app_id)
            .bind(endpoint)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(subscription_row).transpose()
    }

    pub async fn subscription_delete(
        &self,
        app_id: &str,
        id: &str,
        user: Option<&str>,
    ) -> Result<bool> {
        let mut tx = self.writer.begin().await?;
        let deleted = sqlx::query(
            "DELETE FROM subscriptions WHERE app_id = ? AND id = ? AND (? IS NULL OR user_id = ?)",
        )
        .bind(app_id)
        .bind(id)
        .bind(user)
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

    /// Stores a notification with its fan-out. Concurrent calls are committed
    /// together (group commit): one fsync for a burst of send requests
    /// instead of one each, since SQLite has a single writer.
    pub async fn notification_create(
        &self,
        n: &NewNotification,
        idempotency_key: Option<&str>,
        window_ms: i64,
    ) -> Result<Accepted> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = AcceptJob {
            notification: n.clone(),
            idempotency_key: idempotency_key.map(str::to_string),
            window_ms,
            reply,
        };
        self.write(WriteJob::Accept(job), answer).await
    }

    async fn write<T>(
        &self,
        job: WriteJob,
        answer: tokio::sync::oneshot::Receiver<Result<T>>,
    ) -> Result<T> {
        self.writes
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
        let Some(row) = sqlx::query("SELECT id, app_id, title, created_at, expires_at FROM notifications WHERE app_id = ? AND id = ?")
            .bind(app_id)
            .bind(id)
            .fetch_optional(&self.reader)
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
            "{QUEUE_SELECT} WHERE d.notification_id = ? ORDER BY d.id"
        ))
        .bind(id)
        .fetch_all(&self.reader)
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
        // Claims and outcome writes begin with [`RELAXED_BEGIN`].
        let mut conn = self.writer.acquire().await?;
        let out = claim(&mut conn, now, lease_until, limit, lapsed).await;
        restore_synced(conn).await;
        out
    }

    /// Outcomes are written by [`write_loop`], in the transaction of the
    /// sends waiting to be stored, if there are any.
    pub async fn deliveries_record(&self, outcomes: &[Recorded], now: Millis) -> Result<()> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = RecordJob {
            outcomes: outcomes.to_vec(),
            now,
            reply,
        };
        self.write(WriteJob::Record(job), answer).await
    }
}

/// Writes outcomes in a relaxed transaction of their own.
async fn record_alone(writer: &SqlitePool, outcomes: &[&Recorded], now: Millis) -> Result<()> {
    let mut conn = writer.acquire().await?;
    let written = record(&mut conn, outcomes, now).await;
    if !matches!(written, Ok(Synced::Again)) {
        restore_synced(conn).await;
    }
    written.map(drop)
}

/// Commits waiting notifications in batches: one synced commit for all of
/// them. If the batch fails as a whole, nothing of it is stored, and each job
/// runs again in a transaction of its own, so one failing insert answers its
/// own caller with the error and the others are stored. (Per-job savepoints
/// would give the same answers at three more statements per notification.)
///
/// Outcomes waiting to be written go into the same transaction, before the
/// sends: under load, the writer then takes one turn per batch of sends
/// instead of two, and the room the outcomes free is there for the sends
/// to take. Outcomes alone commit relaxed (see the module comment); with
/// sends, they are synced with them, which costs them nothing more.
async fn write_loop(
    writer: SqlitePool,
    mut jobs: tokio::sync::mpsc::Receiver<WriteJob>,
    intake: Arc<OnceLock<Arc<dyn Intake>>>,
) {
    while let Some(first) = jobs.recv().await {
        let mut batch = Vec::new();
        let mut records = Vec::new();
        let mut next = Some(first);
        while let Some(job) = next {
            match job {
                WriteJob::Accept(job) => batch.push(job),
                WriteJob::Record(job) => records.push(job),
            }
            next = match batch.len() < ACCEPT_BATCH {
                true => jobs.try_recv().ok(),
                false => None,
            };
        }
        let intake = intake.get().map(|i| &**i);
        let outcomes: Vec<&Recorded> = records.iter().flat_map(|r| &r.outcomes).collect();
        let now = records.iter().map(|r| r.now).max().unwrap_or_default();
        if !outcomes.is_empty() {
            if !batch.is_empty() {
                if let Ok(stored) = accept_batch(&writer, &batch, &outcomes, now, intake).await {
                    for r in records {
                        let _ = r.reply.send(Ok(()));
                    }
                    stored.answer(batch, intake);
                    continue;
                }
                // Nothing of it was stored: the outcomes go on their own,
                // and the sends as if they had come alone.
            }
            let mut recorded = Some(record_alone(&writer, &outcomes, now).await);
            // The queue's recorder waits for each write, so there is one
            // job here; others would get the error described.
            let described = match &recorded {
                Some(Err(e)) => Some(e.to_string()),
                _ => None,
            };
            for r in records {
                let result = recorded.take().unwrap_or_else(|| match &described {
                    Some(e) => Err(StoreError::Corrupt(format!("recording outcomes: {e}"))),
                    None => Ok(()),
                });
                let _ = r.reply.send(result);
            }
            if batch.is_empty() {
                continue;
            }
        }
        accept(&writer, batch, intake).await;
    }
}

/// Stores a batch of sends, or each send on its own if the batch fails.
async fn accept(writer: &SqlitePool, mut batch: Vec<AcceptJob>, intake: Option<&dyn Intake>) {
    match accept_batch(writer, &batch, &[], 0, intake).await {
        Ok(stored) => stored.answer(batch, intake),
        Err(e) if batch.len() == 1 => {
            let _ = batch.remove(0).reply.send(Err(e));
        }
        Err(_) => {
            for job in batch {
                match accept_batch(writer, std::slice::from_ref(&job), &[], 0, intake).await {
                    Ok(one) => one.answer(vec![job], intake),
                    Err(e) => {
                        let _ = job.reply.send(Err(e));
                    }
                }
            }
        }
    }
}

/// What one accept transaction stored, once it has committed.
#[derive(Default)]
struct Stored {
    results: Vec<Accepted>,
    /// Deliveries stored already leased to the local queue, with the room
    /// reserved for them.
    started: Vec<Claimed>,
    permits: Vec<tokio::sync::OwnedSemaphorePermit>,
    /// Deliveries stored for the dispatcher to claim.
    waiting: u64,
    /// Results of the sends stored one by one, in the order of the batch.
    others: Vec<Accepted>,
}

impl Stored {
    /// Answers `jobs` (the batch that was stored, in order), then hands the
    /// leased deliveries to the queue and wakes it for the rest. Room
    /// reserved but not used is given back as the permits drop.
    ///
    /// Answered first because the runtime runs a worker's tasks in the
    /// order they were woken or spawned: answers woken after the pushes
    /// waited for a batch of encryptions before their 202 was written, and
    /// the clients that wait for it sent their next sends that much later.
    /// In three interleaved pairs of benchmark runs (40 000 subscriptions,
    /// 30 000 per-user sends from 64 clients), per-user deliveries/s went
    /// from 10 919 / 12 643 / 12 781 to 12 168 / 12 819 / 13 220, POST →
    /// 202 p50 from 5.5 / 4.8 / 4.9 to 5.0 / 4.7 / 4.6 ms. Both happen
    /// before the writer takes its next batch, so the pushes of a 202 still
    /// start at once; on an idle queue they arrive about 0.3 ms after the
    /// 202 rather than with it (docs/performance.md).
    fn answer(self, jobs: Vec<AcceptJob>, intake: Option<&dyn Intake>) {
        for (job, result) in jobs.into_iter().zip(self.results) {
            let _ = job.reply.send(Ok(result));
        }
        if let Some(intake) = intake {
            for (claimed, permit) in self.started.into_iter().zip(self.permits) {
                intake.start(claimed, permit);
            }
            if self.waiting > 0 {
                intake.wake();
            }
        }
    }
}

/// Stores `batch` in one synced transaction, after writing `outcomes` in
/// the same one (see [`write_loop`]).
fn accept_batch<'a>(
    writer: &'a SqlitePool,
    batch: &'a [AcceptJob],
    outcomes: &'a [&'a Recorded],
    now: Millis,
    intake: Option<&'a dyn Intake>,
) -> futures::future::BoxFuture<'a, Result<Stored>> {
    Box::pin(async move {
        // Sends to one user without an idempotency key, the common case, are
        // stored by one command for the whole batch; every other send by its
        // own statements.
        let to_user = |job: &'a AcceptJob| match &job.notification.recipients {
            Recipients::User(user) if job.idempotency_key.is_none() => {
                Some((&job.notification, user.as_str()))
            }
            _ => None,
        };
        let together: Vec<_> = batch.iter().filter_map(to_user).collect();
        let others: Vec<&AcceptJob> = batch.iter().filter(|job| to_user(job).is_none()).collect();
        let mut stored = Stored::default();
        let mut conn = writer.acquire().await?;
        let written = async {
            // The transaction begins with the first command, and ends with
            // the last: one round trip each for outcomes and for sends to
            // users (see [`Frame`]).
            let begun = !outcomes.is_empty();
            if begun {
                record_statements(&mut conn, outcomes, now, Some("BEGIN")).await?;
            }
            let frame = Frame {
                begins: !begun,
                commits: others.is_empty(),
            };
            let fanned_out =
                accept_to_users(&mut conn, &together, intake, &mut stored, frame).await?;
            if !others.is_empty() {
                for job in &others {
                    let n = &job.notification;
                    let result =
                        accept_one(&mut conn, n, job.idempotency_key.as_deref(), job.window_ms)
                            .await?;
                    if let Accepted::Created { deliveries, .. } = &result {
                        stored.waiting += deliveries;
                    }
                    stored.others.push(result);
                }
                sqlx::query("COMMIT").execute(&mut *conn).await?;
            }
            Ok::<_, StoreError>(fanned_out)
        }
        .await;
        let fanned_out = match written {
            Ok(fanned_out) => fanned_out,
            Err(e) => {
                roll_back(&mut conn).await;
                return Err(e);
            }
        };
        // Answers in the order of the batch.
        let mut others = std::mem::take(&mut stored.others).into_iter();
        stored.results = batch
            .iter()
            .map(|job| {
                let n = &job.notification;
                match to_user(job) {
                    Some(_) => Accepted::Created {
                        id: n.id.clone(),
                        deliveries: fanned_out.get(n.id.as_str()).copied().unwrap_or(0),
                    },
                    None => others.next().expect("one result per other send"),
                }
            })
            .collect();
        Ok(stored)
    })
}

/// Whether the commands of [`accept_to_users`] begin the transaction, and
/// end it. Each command is one round trip to the connection's thread,
/// where every statement it holds runs in turn; the writer is held for
/// those round trips, so the fewer there are, the more sends get through
/// per second. `BEGIN` and `COMMIT` therefore travel with the statements.
#[derive(Clone, Copy)]
struct Frame {
    begins: bool,
    commits: bool,
}

#[cfg(test)]
impl Frame {
    const WITHIN: Frame = Frame {
        begins: false,
        commits: false,
    };
}

/// Ends the transaction a failed command may have left open (they begin it
/// with a plain `BEGIN`; see [`Frame`]). If even that fails, the connection is closed rather than handed on
/// in a state nobody knows.
async fn roll_back(conn: &mut sqlx::pool::PoolConnection<Sqlite>) {
    if sqlx::query("ROLLBACK").execute(&mut **conn).await.is_err() {
        // Also when no transaction was open (the failure came first, or
        // SQLite rolled back itself): closing is harmless, and rare.
        conn.close_on_drop();
    }
}

/// Pushes the statement storing the notification rows of `notifications`,
/// padded (see [`padded`]).
fn push_insert_notifications<'a>(
    q: &mut QueryBuilder<'a, Sqlite>,
    notifications: &[&'a NewNotification],
) {
    q.push("INSERT INTO ");
    q.push(NOTIFICATION_COLUMNS).push(" SELECT * FROM (");
    q.push_values(padded(notifications), |mut row, n| match n {
        Some(n) => push_notification_row(&mut row, n),
        None => push_nulls(&mut row, NOTIFICATION_COLUMN_COUNT),
    });
    q.push(") WHERE column1 IS NOT NULL");
}

/// The columns [`NOTIFICATION_COLUMNS`] names.
const NOTIFICATION_COLUMN_COUNT: usize = 9;

/// Notifications per multi-row statement: 9 parameters each, well below
/// SQLite's limit of 32 766.
const ACCEPT_CHUNK: usize = 256;

/// Stores notifications that each go to one user, with their fan-out, in
/// one command of two statements per chunk; answers how many deliveries
/// each one got.
///
/// With a local queue that has room, and the app too, the deliveries are
/// stored already leased to the queue, exactly as a claim would lease them,
/// and collected in `stored.started`, to be sent once the transaction
/// commits. The claim they skip would cost a transaction of its own and a
/// read of every notification again; a crash before they are sent leaves
/// leases that run out and are claimed again, as for any claimed delivery.
///
/// The room is reserved in the queue first, and the statement leases at most
/// that many, and no more than the app's `max_concurrency` leaves (counted
/// as a claim counts it), so the app's room needs no statement of its own.
async fn accept_to_users<'a>(
    conn: &mut sqlx::SqliteConnection,
    sends: &[(&'a NewNotification, &'a str)],
    intake: Option<&dyn Intake>,
    stored: &mut Stored,
    frame: Frame,
) -> Result<HashMap<&'a str, u64>> {
    let mut deliveries: HashMap<&str, u64> = HashMap::new();
    let chunks: Vec<_> = sends.chunks(ACCEPT_CHUNK).collect();
    if chunks.is_empty() {
        let framing = match (frame.begins, frame.commits) {
            (true, true) => "BEGIN; COMMIT",
            (true, false) => "BEGIN",
            (false, true) => "COMMIT",
            (false, false) => "",
        };
        if !framing.is_empty() {
            sqlx::query(framing).execute(&mut *conn).await?;
        }
    }
    for (i, chunk) in chunks.iter().enumerate() {
        let begins = frame.begins && i == 0;
        let commits = frame.commits && i + 1 == chunks.len();
        // Room for a chunk of one app only: several would need their
        // max_concurrency counted each. A user has a few devices; what does
        // not fit waits for a claim.
        let app_id = &chunk[0].0.app_id;
        let one_app = chunk.iter().all(|(n, _)| &n.app_id == app_id);
        let reserved = intake
            .filter(|_| one_app)
            .map(|intake| intake.reserve(HANDOVER_PER_SEND * chunk.len()))
            .filter(|r| !r.permits.is_empty());
        let (now, lease, room) = match &reserved {
            Some(r) => (r.now, r.lease_until, r.permits.len() as i64),
            None => (0, 0, 0),
        };

        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(if begins { "BEGIN; " } else { "" });
        let notifications: Vec<&NewNotification> = chunk.iter().map(|(n, _)| *n).collect();
        push_insert_notifications(&mut q, &notifications);
        // The same rows as `push_fan_out` writes for `Recipients::User`; the
        // first `take` of them leased as a claim leases them.
        q.push(
            "; INSERT INTO deliveries (notification_id, app_id, subscription_id, user_id, endpoint_host, vendor, next_attempt_at, expires_at, created_at, status, lease_until, claims, sent_at)
             SELECT nid, app_id, sid, user_id, host, vendor, at, expires, at,
                 CASE WHEN n <= take THEN 'in_flight' ELSE 'pending' END,
                 CASE WHEN n <= take THEN ",
        );
        q.push_bind(lease)
            .push(" END, n <= take, CASE WHEN n <= take THEN ")
            .push_bind(now)
            .push(
                " END FROM (SELECT v.column1 AS nid, s.app_id, s.id AS sid, s.user_id, s.endpoint_host AS host, s.vendor,
                     v.column2 AS at, v.column3 AS expires, row_number() OVER () AS n FROM (",
            );
        // Padding rows join no subscription.
        q.push_values(padded(chunk), |mut row, send| match send {
            Some((n, user)) => {
                row.push_bind(&n.id)
                    .push_bind(n.created_at)
                    .push_bind(n.expires_at())
                    .push_bind(&n.app_id)
                    .push_bind(*user);
            }
            None => push_nulls(&mut row, 5),
        });
        q.push(") AS v JOIN subscriptions s ON s.app_id = v.column4 AND s.user_id = v.column5)");
        // Uncorrelated, so SQLite computes it once, before the first row.
        q.push(" JOIN (SELECT coalesce((SELECT min(")
            .push_bind(room)
            .push(
                ", a.max_concurrency - (SELECT count(*) FROM deliveries d
                     WHERE d.app_id = a.id AND d.status = 'in_flight' AND d.lease_until > ",
            )
            .push_bind(now)
            .push(")) FROM apps a WHERE a.id = ")
            .push_bind(app_id)
            .push("), 0) AS take)");
        q.push(LEASED_RETURNING);
        if reserved.is_some() {
            push_targets_of_users(&mut q, app_id, chunk);
        }
        if commits {
            q.push("; COMMIT");
        }
        let rows = q.build().fetch_all(&mut *conn).await?;
        // The insert's rows, then the targets' (see `push_targets_of_users`).
        let (targets, rows): (Vec<&SqliteRow>, Vec<&SqliteRow>) =
            rows.iter().partition(|r| r.len() == TARGET_COLUMNS);
        // Decoded per delivery that uses one: a user sent to twice in the
        // batch has each device's row used twice.
        let app: Option<(i64, String)> = targets.first().map(|r| (r.get(5), r.get(6)));
        let targets: HashMap<&str, &SqliteRow> =
            targets.into_iter().map(|r| (r.get(0), r)).collect();

        deliveries.extend(chunk.iter().map(|(n, _)| (n.id.as_str(), 0)));
        let by_id: HashMap<&str, &NewNotification> = match reserved {
            Some(_) => chunk.iter().map(|(n, _)| (n.id.as_str(), *n)).collect(),
            None => HashMap::new(),
        };
        let mut notices: HashMap<&str, Arc<Notice>> = HashMap::new();
        let started_before = stored.started.len();
        for r in rows {
            let notification_id: &str = r.get(4);
            let Some((key, count)) = deliveries.get_key_value(notification_id) else {
                continue;
            };
            let key: &'a str = key;
            *deliveries.get_mut(key).expect("present") = count + 1;
            if !r.get::<bool, _>(10) {
                stored.waiting += 1;
                continue;
            }
            // Read in the same transaction as the insert that joined it, so
            // it is there; were it not, the lease would run out and a claim
            // would take the delivery.
            let (Some(target), Some((generation, contact))) =
                (targets.get(r.get::<&str, _>(5)), &app)
            else {
                tracing::warn!(
                    notification = key,
                    "a delivery stored without its subscription's target"
                );
                continue;
            };
            let notice = notices.entry(key).or_insert_with(|| {
                let n = by_id[key];
                Arc::new(Notice {
                    payload: n.payload.clone(),
                    ttl_secs: i64::from(n.ttl_secs),
                    urgency: n.urgency.clone(),
                    topic_key: n.topic_key.clone(),
                    vapid_generation: *generation,
                    contact: contact.clone(),
                })
            });
            stored.started.push(claimed_delivery(
                r,
                key.to_string(),
                notice.clone(),
                Some(target_row(target)),
            ));
        }
        if let Some(r) = reserved {
            // Room for more than were leased goes back when the permits drop.
            let mut permits = r.permits;
            permits.truncate(stored.started.len() - started_before);
            stored.permits.extend(permits);
        }
    }
    Ok(deliveries)
}

/// Room reserved per send to a user, for the devices it may have.
const HANDOVER_PER_SEND: usize = 4;

/// What the insert of [`accept_to_users`] returns per delivery: the
/// delivery's own columns, as a claim returns them, and whether it was
/// leased. Its subscription's target comes from [`push_targets_of_users`].
const LEASED_RETURNING: &str = concat!(claim_returning!(), ", status = 'in_flight'");

/// The columns of a row of [`push_targets_of_users`]; the insert's rows
/// have eleven.
const TARGET_COLUMNS: usize = 7;

/// Pushes the statement that reads the subscriptions of `sends`' users, with
/// their app's key generation and contact: what the leased deliveries need
/// to be sent. One lookup per subscription through the index by user, where
/// reading each target in the insert's `RETURNING` took four lookups by id
/// per delivery, and two of the app.
fn push_targets_of_users<'a>(
    q: &mut QueryBuilder<'a, Sqlite>,
    app_id: &'a str,
    sends: &[(&'a NewNotification, &'a str)],
) {
    q.push(
        "; SELECT s.id, s.endpoint, s.p256dh, s.auth, s.content_encoding, a.vapid_generation, a.contact
         FROM (",
    );
    // Padding rows match no subscription.
    q.push_values(padded(sends), |mut row, send| match send {
        Some((_, user)) => {
            row.push_bind(*user);
        }
        None => push_nulls(&mut row, 1),
    });
    // CROSS JOIN fixes the order SQLite joins in: left to its own choice,
    // it may scan every subscription and look each up in the users.
    q.push(
        ") AS v CROSS JOIN subscriptions s CROSS JOIN apps a
         WHERE s.app_id = ",
    )
    .push_bind(app_id)
    .push(" AND s.user_id = v.column1 AND a.id = s.app_id");
}

fn accept_one<'a>(
    tx: &'a mut sqlx::SqliteConnection,
    n: &'a NewNotification,
    idempotency_key: Option<&'a str>,
    window_ms: i64,
) -> futures::future::BoxFuture<'a, Result<Accepted>> {
    Box::pin(async move {
        if let Some(key) = idempotency_key {
            let seen = sqlx::query("SELECT notification_id, deliveries, created_at FROM idempotency_keys WHERE app_id = ? AND key = ?")
                .bind(&n.app_id)
                .bind(key)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(row) = seen {
                if row.get::<i64, _>("created_at") > n.created_at - window_ms {
                    return Ok(Accepted::Replayed {
                        id: row.get("notification_id"),
                        deliveries: row.get::<i64, _>("deliveries") as u64,
                    });
                }
                sqlx::query("DELETE FROM idempotency_keys WHERE app_id = ? AND key = ?")
                    .bind(&n.app_id)
                    .bind(key)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new("");
        push_insert_notifications(&mut q, &[n]);
        q.build().execute(&mut *tx).await?;

        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new("");
        push_fan_out(&mut q, n);
        let deliveries = q.build().execute(&mut *tx).await?.rows_affected();

        if let Some(key) = idempotency_key {
            sqlx::query("INSERT INTO idempotency_keys (app_id, key, notification_id, deliveries, created_at) VALUES (?, ?, ?, ?, ?)")
                .bind(&n.app_id)
                .bind(key)
                .bind(&n.id)
                .bind(deliveries as i64)
                .bind(n.created_at)
                .execute(&mut *tx)
                .await?;
        }
        Ok(Accepted::Created {
            id: n.id.clone(),
            deliveries,
        })
    })
}

/// How a claim or an outcome write begins: on the writer switched to
/// `synchronous = NORMAL` in the same round trip to the connection thread.
/// Hand the connection back with [`restore_synced`].
const RELAXED_BEGIN: &str = "PRAGMA synchronous = NORMAL; BEGIN";

/// Puts the writer back to `synchronous = FULL` after [`RELAXED_BEGIN`], or
/// closes it if that fails, so nothing the API acknowledges commits relaxed.
async fn restore_synced(mut conn: sqlx::pool::PoolConnection<Sqlite>) {
    if sqlx::query("PRAGMA synchronous = FULL")
        .execute(&mut *conn)
        .await
        .is_err()
    {
        conn.close_on_drop();
    }
}

const CLAIM_DUE: &str = concat!(
    "UPDATE deliveries SET status = 'in_flight', lease_until = ?1, claims = claims + 1, sent_at = ?2
    WHERE id IN (SELECT id FROM deliveries WHERE app_id = ?3 AND status = 'pending' AND next_attempt_at <= ?2
                 ORDER BY next_attempt_at LIMIT ?4)",
    claim_returning!()
);

const CLAIM_EXPIRED_LEASES: &str = concat!(
    "UPDATE deliveries SET lease_until = ?1, claims = claims + 1, sent_at = ?2
    WHERE id IN (SELECT id FROM deliveries WHERE app_id = ?3 AND status = 'in_flight' AND lease_until <= ?2
                 ORDER BY lease_until LIMIT ?4)",
    claim_returning!()
);

async fn claim(
    conn: &mut sqlx::SqliteConnection,
    now: Millis,
    lease_until: Millis,
    limit: u32,
    lapsed: bool,
) -> Result<Vec<Claimed>> {
    let mut tx = conn.begin_with(RELAXED_BEGIN).await?;
    // Room per app: max_concurrency minus its unexpired leases.
    let rooms: Vec<(String, i64)> = sqlx::query_as(
        "SELECT a.id, a.max_concurrency - (SELECT count(*) FROM deliveries d
             WHERE d.app_id = a.id AND d.status = 'in_flight' AND d.lease_until > ?1)
         FROM apps a WHERE a.max_concurrency > 0",
    )
    .bind(now)
    .fetch_all(&mut *tx)
    .await?;
    let mut rows: Vec<SqliteRow> = Vec::new();
    let mut budget = limit as i64;
    for (app_id, room) in rooms {
        let take = room.min(budget);
        if take <= 0 {
            continue;
        }
        // Leases that ran out (a crashed worker's) first: they are overdue.
        // Each statement reads its partial index in order, so a claim
        // costs the same with ten or a million deliveries waiting.
        let before = rows.len() as i64;
        let statements = match lapsed {
            true => &[CLAIM_EXPIRED_LEASES, CLAIM_DUE][..],
            false => &[CLAIM_DUE][..],
        };
        for statement in statements {
            let wanted = take - (rows.len() as i64 - before);
            if wanted <= 0 {
                break;
            }
            let claimed = sqlx::query(statement)
                .bind(lease_until)
                .bind(now)
                .bind(&app_id)
                .bind(wanted)
                .fetch_all(&mut *tx)
                .await?;
            rows.extend(claimed);
        }
        budget -= rows.len() as i64 - before;
        if budget <= 0 {
            break;
        }
    }
    if rows.is_empty() {
        tx.commit().await?;
        return Ok(Vec::new());
    }
    let notices = claimed_notices(&mut tx, &rows).await?;
    let targets = claimed_targets(&mut tx, &rows).await?;
    tx.commit().await?;
    // The foreign key keeps every delivery's notification; should one be
    // missing all the same, that row waits out its lease and the others go.
    // A delivery whose subscription is gone is claimed without a target and
    // recorded as gone by the sender.
    Ok(rows
        .iter()
        .filter_map(|r| {
            let notification_id: String = r.get(4);
            match notices.get(&notification_id) {
                Some(notice) => {
                    let target = targets.get(r.get::<&str, _>(5)).cloned();
                    Some(claimed_delivery(r, notification_id, notice.clone(), target))
                }
                None => {
                    tracing::warn!(notification = %notification_id, "claimed a delivery of a missing notification");
                    None
                }
            }
        })
        .collect())
}

/// The notifications behind a claim's rows, each read once.
async fn claimed_notices(
    conn: &mut sqlx::SqliteConnection,
    rows: &[SqliteRow],
) -> Result<HashMap<String, Arc<Notice>>> {
    let mut ids: Vec<&str> = rows.iter().map(|r| r.get::<&str, _>(4)).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
        "SELECT n.id, n.payload, n.ttl_secs, n.urgency, n.topic_key, a.vapid_generation, a.contact
         FROM notifications n JOIN apps a ON a.id = n.app_id
         WHERE n.id IN (",
    );
    let mut sep = q.separated(", ");
    for id in ids {
        sep.push_bind(id.to_string());
    }
    q.push(")");
    let notices = q.build().fetch_all(&mut *conn).await?;
    notices
        .iter()
        .map(|r| Ok((r.try_get("id")?, Arc::new(Notice::from_row(r)?))))
        .collect()
}

/// Most subscriptions one statement of [`claimed_targets`] looks up: a
/// claim may be larger (`HERALD_CLAIM_BATCH`) than the parameters SQLite
/// binds to one statement.
const TARGET_LOOKUP_CHUNK: usize = 512;

/// The targets of a claim's deliveries, by subscription id: one lookup by
/// primary key each.
async fn claimed_targets(
    conn: &mut sqlx::SqliteConnection,
    rows: &[SqliteRow],
) -> Result<HashMap<String, Target>> {
    let mut ids: Vec<&str> = rows.iter().map(|r| r.get::<&str, _>(5)).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut targets = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(TARGET_LOOKUP_CHUNK) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
            "SELECT id, endpoint, p256dh, auth, content_encoding FROM subscriptions WHERE id IN (",
        );
        // Padded, so that a few statement texts serve every claim size.
        let mut sep = q.separated(", ");
        for id in padded(chunk) {
            sep.push_bind(id.copied());
        }
        q.push(")");
        for r in q.build().fetch_all(&mut *conn).await? {
            targets.insert(r.get(0), target_row(&r));
        }
    }
    Ok(targets)
}

/// A subscription's target from a row that starts `id, endpoint, p256dh,
/// auth, content_encoding`, as [`claimed_targets`] and
/// [`push_targets_of_users`] read them.
fn target_row(r: &SqliteRow) -> Target {
    Target {
        endpoint: r.get(1),
        p256dh: r.get(2),
        auth: r.get(3),
        content_encoding: r.get(4),
    }
}

/// Every outcome is this one statement. It is fenced by `(id, claims)`: a
/// worker whose lease ran out and was re-claimed must not overwrite the newer
/// attempt's result.
const RECORD_OUTCOME: &str = "UPDATE deliveries SET status = ?1, attempts = attempts + ?2,
        last_error = CASE WHEN ?3 THEN last_error ELSE ?4 END,
        next_attempt_at = COALESCE(?5, next_attempt_at), without_topic = without_topic OR ?6,
        finished_at = ?7, lease_until = NULL
    WHERE id = ?8 AND claims = ?9 AND status = 'in_flight'";

/// How a disposition changes a delivery row.
struct RowChange<'a> {
    status: &'static str,
    used_attempt: bool,
    keep_error: bool,
    error: Option<&'a str>,
    next_attempt_at: Option<Millis>,
    without_topic: bool,
    finished_at: Option<Millis>,
}

fn row_change(d: &Disposition, now: Millis) -> RowChange<'_> {
    fn finished<'a>(
        status: &'static str,
        error: Option<&'a str>,
        used_attempt: bool,
        now: Millis,
    ) -> RowChange<'a> {
        RowChange {
            status,
            used_attempt,
            keep_error: false,
            error,
            next_attempt_at: None,
            without_topic: false,
            finished_at: Some(now),
        }
    }
    match d {
        Disposition::Delivered { at } => RowChange {
            finished_at: Some(*at),
            ..finished("delivered", None, true, now)
        },
        Disposition::Retry {
            at,
            error,
            used_attempt,
            without_topic,
        } => RowChange {
            status: "pending",
            used_attempt: *used_attempt,
            keep_error: false,
            error: Some(error),
            next_attempt_at: Some(*at),
            without_topic: *without_topic,
            finished_at: None,
        },
        Disposition::Gone { error } => finished("gone", Some(error), true, now),
        Disposition::Failed { error } => finished("failed", Some(error), true, now),
        // Nothing was sent: no attempt used; keep the last attempt's reason
        // unless this one brought a newer one.
        Disposition::Expired { error } => RowChange {
            keep_error: error.is_none(),
            ..finished("expired", error.as_deref(), false, now)
        },
    }
}

/// Deliveries per statement when recording successes together.
const DELIVERED_CHUNK: usize = 500;

/// Whether the writer is back at `synchronous = FULL` after [`record`].
#[derive(Debug, PartialEq, Eq)]
enum Synced {
    Again,
    Not,
}

/// Pushes the statement recording a chunk of successes, padded (see
/// [`padded`]) and fenced by the same (id, claims) match as every other
/// outcome.
fn push_record_delivered<'a>(
    q: &mut QueryBuilder<'a, Sqlite>,
    chunk: &[&'a Recorded],
    now: Millis,
) {
    q.push(
        "UPDATE deliveries SET status = 'delivered', attempts = attempts + 1, last_error = NULL,
             finished_at = v.column3, lease_until = NULL FROM (",
    );
    // Padding rows match no delivery.
    q.push_values(padded(chunk), |mut row, o| match o {
        Some(o) => {
            let at = match o.disposition {
                Disposition::Delivered { at } => at,
                _ => now,
            };
            row.push_bind(o.id).push_bind(o.claims).push_bind(at);
        }
        None => push_nulls(&mut row, 3),
    });
    q.push(
        ") AS v WHERE deliveries.id = v.column1 AND deliveries.claims = v.column2
             AND deliveries.status = 'in_flight'",
    );
}

/// Writes outcomes in a relaxed transaction of their own, and says whether
/// the writer is synced again.
async fn record(
    conn: &mut sqlx::pool::PoolConnection<Sqlite>,
    outcomes: &[&Recorded],
    now: Millis,
) -> Result<Synced> {
    let written = if outcomes.len() <= DELIVERED_CHUNK
        && outcomes
            .iter()
            .all(|o| matches!(o.disposition, Disposition::Delivered { .. }))
    {
        // Only successes, the common case: one command is the whole
        // transaction, the switch to NORMAL and back to FULL included (see
        // [`Frame`] for why the round trips count). Outcomes of stale claims
        // match no row and change nothing.
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(RELAXED_BEGIN);
        q.push("; ");
        push_record_delivered(&mut q, outcomes, now);
        q.push("; COMMIT; PRAGMA synchronous = FULL");
        q.build()
            .execute(&mut **conn)
            .await
            .map(|_| Synced::Again)
            .map_err(StoreError::from)
    } else {
        match record_statements(conn, outcomes, now, Some(RELAXED_BEGIN)).await {
            Ok(()) => sqlx::query("COMMIT")
                .execute(&mut **conn)
                .await
                .map(|_| Synced::Not)
                .map_err(StoreError::from),
            Err(e) => Err(e),
        }
    };
    if written.is_err() {
        roll_back(conn).await;
    }
    written
}

/// Runs the statements that write `outcomes`, the first of them prefixed
/// with `begin` if given, which then begins the transaction.
async fn record_statements(
    conn: &mut sqlx::SqliteConnection,
    outcomes: &[&Recorded],
    now: Millis,
    mut begin: Option<&str>,
) -> Result<()> {
    // Successes, the common case, are one statement per chunk.
    let (delivered, others): (Vec<&Recorded>, Vec<&Recorded>) = outcomes
        .iter()
        .partition(|o| matches!(o.disposition, Disposition::Delivered { .. }));
    for chunk in delivered.chunks(DELIVERED_CHUNK) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new("");
        let prefixed = begin.is_some();
        if let Some(begin) = begin.take() {
            q.push(begin).push("; ");
        }
        push_record_delivered(&mut q, chunk, now);
        let done = q.build().execute(&mut *conn).await?;
        // A prefixed command's count is not the update's alone.
        if !prefixed && (done.rows_affected() as usize) < chunk.len() {
            tracing::debug!(
                stale = chunk.len() - done.rows_affected() as usize,
                "outcomes of stale claims ignored"
            );
        }
    }
    if let Some(begin) = begin {
        sqlx::query(begin).execute(&mut *conn).await?;
    }
    for o in others {
        let c = row_change(&o.disposition, now);
        let done = sqlx::query(RECORD_OUTCOME)
            .bind(c.status)
            .bind(c.used_attempt as i64)
            .bind(c.keep_error)
            .bind(c.error)
            .bind(c.next_attempt_at)
            .bind(c.without_topic)
            .bind(c.finished_at)
            .bind(o.id)
            .bind(o.claims)
            .execute(&mut *conn)
            .await?;
        if done.rows_affected() == 0 {
            tracing::debug!(
                delivery = o.id,
                claims = o.claims,
                "outcome of a stale claim ignored"
            );
        } else if let Disposition::Gone { error } = &o.disposition {
            sqlx::query("DELETE FROM subscriptions WHERE id = ?")
                .bind(&o.subscription_id)
                .execute(&mut *conn)
                .await?;
            mark_queued_gone(&mut *conn, &o.subscription_id, error, now).await?;
        }
    }
    Ok(())
}

impl SqliteStore {
    pub async fn queue_next_pending(&self) -> Result<Option<Millis>> {
        Ok(sqlx::query_scalar(
            "SELECT min((SELECT next_attempt_at FROM deliveries
                         WHERE app_id = a.id AND status = 'pending' ORDER BY next_attempt_at LIMIT 1))
             FROM apps a WHERE a.max_concurrency > 0",
        )
        .fetch_one(&self.reader)
        .await?)
    }

    pub async fn queue_next_due(&self) -> Result<Option<Millis>> {
        Ok(sqlx::query_scalar(
            // One index seek per app and state: a GROUP BY over the partial
            // indexes would step through every queued row, and this runs
            // whenever a claim comes back empty.
            "SELECT min(due) FROM (
                 SELECT (SELECT next_attempt_at FROM deliveries
                         WHERE app_id = a.id AND status = 'pending' ORDER BY next_attempt_at LIMIT 1) AS due
                     FROM apps a WHERE a.max_concurrency > 0
                 UNION ALL
                 SELECT (SELECT lease_until FROM deliveries
                         WHERE app_id = a.id AND status = 'in_flight' ORDER BY lease_until LIMIT 1)
                     FROM apps a WHERE a.max_concurrency > 0)",
        )
        .fetch_one(&self.reader)
        .await?)
    }

    pub async fn queue_list(&self, f: &QueueFilter) -> Result<Vec<QueueRow>> {
        let rows = sqlx::query(&format!("{QUEUE_SELECT} WHERE (?1 IS NULL OR d.app_id = ?1) AND (?2 IS NULL OR d.status = ?2) ORDER BY d.id DESC LIMIT ?3"))
            .bind(f.app.as_deref())
            .bind(f.status.map(|s| s.as_str()))
            .bind(f.limit as i64)
            .fetch_all(&self.reader)
            .await?;
        Ok(rows.iter().map(queue_row).collect())
    }

    pub async fn queue_counts(&self) -> Result<QueueCounts> {
        let (pending, in_flight): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM deliveries WHERE status = 'pending'), (SELECT count(*) FROM deliveries WHERE status = 'in_flight')",
        )
        .fetch_one(&self.reader)
        .await?;
        Ok(QueueCounts { pending, in_flight })
    }

    pub async fn queue_due_count(&self, now: Millis) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM deliveries WHERE status = 'pending' AND next_attempt_at <= ?",
        )
        .bind(now)
        .fetch_one(&self.reader)
        .await?;
        Ok(n as u64)
    }

    pub async fn queue_force(&self, now: Millis) -> Result<u64> {
        let r = sqlx::query("UPDATE deliveries SET next_attempt_at = ? WHERE status = 'pending' AND next_attempt_at > ?")
            .bind(now)
            .bind(now)
            .execute(&self.writer)
            .await?;
        let due_already = self.queue_due_count(now).await?;
        Ok(due_already.max(r.rows_affected()))
    }

    pub async fn queue_remove(&self, id: i64) -> Result<u64> {
        Ok(sqlx::query("DELETE FROM deliveries WHERE id = ?")
            .bind(id)
            .execute(&self.writer)
            .await?
            .rows_affected())
    }

    pub async fn queue_clear(&self, app_id: Option<&str>) -> Result<u64> {
        Ok(sqlx::query(&format!(
            "DELETE FROM deliveries WHERE status IN {QUEUED} AND (?1 IS NULL OR app_id = ?1)"
        ))
        .bind(app_id)
        .execute(&self.writer)
        .await?
        .rows_affected())
    }

    pub async fn vendor_stats(&self) -> Result<Vec<VendorStats>> {
        let rows = sqlx::query(
            "SELECT vendor,
                    sum(status = 'delivered') AS delivered, sum(status = 'failed') AS failed,
                    sum(status = 'gone') AS gone, sum(status = 'expired') AS expired,
                    avg(CASE WHEN status = 'delivered' THEN sent_at - created_at END) AS wait,
                    avg(CASE WHEN status = 'delivered' THEN finished_at - sent_at END) AS took
             FROM deliveries GROUP BY vendor ORDER BY vendor",
        )
        .fetch_all(&self.reader)
        .await?;
        Ok(rows
            .iter()
            .map(|r| VendorStats {
                vendor: r.get("vendor"),
                delivered: r.get::<Option<i64>, _>("delivered").unwrap_or(0),
                failed: r.get::<Option<i64>, _>("failed").unwrap_or(0),
                gone: r.get::<Option<i64>, _>("gone").unwrap_or(0),
                expired: r.get::<Option<i64>, _>("expired").unwrap_or(0),
                avg_queue_wait_ms: r.get("wait"),
                avg_delivery_ms: r.get("took"),
            })
            .collect())
    }

    pub async fn purge_finished(&self, before: Millis) -> Result<u64> {
        let mut tx = self.writer.begin().await?;
        let d =
            sqlx::query("DELETE FROM deliveries WHERE finished_at IS NOT NULL AND finished_at < ?")
                .bind(before)
                .execute(&mut *tx)
                .await?;
        sqlx::query("DELETE FROM notifications WHERE created_at < ? AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.notification_id = notifications.id)")
            .bind(before)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM idempotency_keys WHERE created_at < ?")
            .bind(before)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(d.rows_affected())
    }
}

/// A dead subscription's queued deliveries will never arrive: mark them gone.
async fn mark_queued_gone(
    conn: &mut sqlx::SqliteConnection,
    subscription_id: &str,
    error: &str,
    now: Millis,
) -> Result<()> {
    sqlx::query(&format!(
        "UPDATE deliveries SET status = 'gone', last_error = ?, finished_at = ?, lease_until = NULL
         WHERE subscription_id = ? AND status IN {QUEUED}"
    ))
    .bind(error)
    .bind(now)
    .bind(subscription_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

const QUEUE_SELECT: &str = "SELECT d.id, d.app_id, d.notification_id, d.subscription_id, d.user_id, n.title, d.endpoint_host, d.vendor,
        d.attempts, d.last_error, d.status, d.created_at, d.next_attempt_at, d.finished_at
    FROM deliveries d JOIN notifications n ON n.id = d.notification_id";

fn queue_row(r: &SqliteRow) -> QueueRow {
    decode(r)
}

fn app_row(r: &SqliteRow) -> AppRow {
    decode(r)
}

fn subscription_row(r: &SqliteRow) -> Result<SubscriptionRow> {
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

/// The delivery's own columns of a claim's row (`claim_returning!`, which
/// [`LEASED_RETURNING`] extends), with its target.
fn claimed_delivery(
    r: &SqliteRow,
    notification_id: String,
    notice: Arc<Notice>,
    target: Option<Target>,
) -> Claimed {
    Claimed {
        id: r.get(0),
        claims: r.get(1),
        attempts: r.get(2),
        app_id: r.get(3),
        notification_id,
        subscription_id: r.get(5),
        vendor: r.get(6),
        target,
        notice,
        without_topic: r.get::<i64, _>(7) != 0,
        expires_at: r.get(8),
        created_at: r.get(9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::now_millis;

    #[test]
    fn batches_are_padded_to_a_power_of_two() {
        let lengths: Vec<(usize, usize, usize)> = [0, 1, 2, 3, 5, 8, 9, 300]
            .into_iter()
            .map(|n| {
                let items: Vec<usize> = (0..n).collect();
                let rows: Vec<Option<&usize>> = padded(&items).collect();
                let real = rows.iter().flatten().count();
                (n, rows.len(), real)
            })
            .collect();
        assert_eq!(
            lengths,
            [
                (0, 0, 0),
                (1, 1, 1),
                (2, 2, 2),
                (3, 4, 3),
                (5, 8, 5),
                (8, 8, 8),
                (9, 16, 9),
                (300, 512, 300)
            ]
        );
    }

    /// Claims and outcome writes commit relaxed; whatever the writer does
    /// next, such as storing a subscription the API acknowledges, is synced.
    #[tokio::test]
    async fn the_writer_is_synced_again_after_a_claim_and_an_outcome_write() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("h.db").display());
        let store = SqliteStore::connect(&url, 1, 5_000).await.unwrap();
        let mode = || async {
            sqlx::query_scalar::<_, i64>("PRAGMA synchronous")
                .fetch_one(&store.writer)
                .await
                .unwrap()
        };
        const FULL: i64 = 2;
        assert_eq!(mode().await, FULL);
        store
            .deliveries_claim(now_millis(), now_millis() + 1000, 10)
            .await
            .unwrap();
        assert_eq!(mode().await, FULL);
        let stale = Recorded {
            id: 1,
            claims: 1,
            subscription_id: "gone".into(),
            disposition: Disposition::Delivered { at: now_millis() },
        };
        // Successes alone are one command; any other outcome takes the
        // statements one by one.
        let failed = Recorded {
            disposition: Disposition::Failed {
                error: "400".into(),
            },
            ..stale.clone()
        };
        for outcomes in [vec![stale.clone()], vec![stale, failed]] {
            store
                .deliveries_record(&outcomes, now_millis())
                .await
                .unwrap();
            assert_eq!(mode().await, FULL);
        }
    }

    /// The writer checkpoints the WAL every [`WAL_AUTOCHECKPOINT`] frames,
    /// not every 1 000 as SQLite would.
    #[tokio::test]
    async fn the_writer_checkpoints_the_wal_only_every_ten_thousand_frames() {
        let (_dir, store, _app) = store_with_users(&[]).await;
        assert_eq!(count(&store, "PRAGMA wal_autocheckpoint").await, 10_000);
    }

    fn notification(app_id: &str) -> NewNotification {
        NewNotification {
            id: new_id(),
            app_id: app_id.into(),
            recipients: Recipients::User(String::new()),
            title: "t".into(),
            payload: b"{}".to_vec(),
            ttl_secs: 60,
            urgency: "normal".into(),
            topic_key: None,
            created_at: now_millis(),
        }
    }

    /// A claim larger than one lookup of targets takes (a large
    /// `HERALD_CLAIM_BATCH`) still gives every delivery its own device's
    /// endpoint.
    #[tokio::test]
    async fn a_large_claim_reads_every_deliverys_own_target() {
        let devices = TARGET_LOOKUP_CHUNK + 100;
        let (_dir, store, app) = store_with_users(&[("ann", devices)]).await;
        sqlx::query("UPDATE apps SET max_concurrency = 10000")
            .execute(&store.writer)
            .await
            .unwrap();
        let mut n = notification(&app.id);
        n.recipients = Recipients::All;
        store.notification_create(&n, None, 0).await.unwrap();

        let now = now_millis();
        let claimed = store
            .deliveries_claim(now, now + 60_000, 10_000)
            .await
            .unwrap();

        assert_eq!(claimed.len(), devices);
        let endpoints: HashMap<String, String> =
            sqlx::query_as("SELECT id, endpoint FROM subscriptions")
                .fetch_all(&store.writer)
                .await
                .unwrap()
                .into_iter()
                .collect();
        for c in &claimed {
            let target = c.target.as_ref().expect("a claimed delivery's target");
            assert_eq!(target.endpoint, endpoints[&c.subscription_id]);
        }
    }

    /// A store with one app whose users have the given numbers of devices.
    async fn store_with_users(users: &[(&str, usize)]) -> (tempfile::TempDir, SqliteStore, AppRow) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("h.db").display());
        let store = SqliteStore::connect(&url, 1, 5_000).await.unwrap();
        let now = now_millis();
        let app = AppRow {
            id: new_id(),
            name: "a".into(),
            contact: "mailto:ops@example.com".into(),
            api_key_hash: vec![1],
            vapid_public_key: "pub".into(),
            vapid_private_sealed: vec![1],
            vapid_generation: 1,
            max_concurrency: 100,
            last_config_error: None,
            last_config_error_at: None,
            created_at: now,
        };
        store.app_insert(&app).await.unwrap();
        for (user, devices) in users {
            for _ in 0..*devices {
                let s = NewSubscription {
                    app_id: app.id.clone(),
                    user_id: user.to_string(),
                    endpoint: format!("https://push.example.com/{}", new_id()),
                    endpoint_host: "push.example.com".into(),
                    vendor: "fcm".into(),
                    p256dh: vec![4; 65],
                    auth: vec![7; 16],
                    content_encoding: "aes128gcm".into(),
                    topics: vec![],
                };
                store.subscription_upsert(&s, now).await.unwrap();
            }
        }
        (dir, store, app)
    }

    fn send_to(n: NewNotification) -> AcceptJob {
        AcceptJob {
            notification: n,
            idempotency_key: None,
            window_ms: 0,
            reply: tokio::sync::oneshot::channel().0,
        }
    }

    fn delivered(claimed: &[Claimed]) -> Vec<Recorded> {
        claimed
            .iter()
            .map(|c| Recorded {
                id: c.id,
                claims: c.claims,
                subscription_id: c.subscription_id.clone(),
                disposition: Disposition::Delivered { at: now_millis() },
            })
            .collect()
    }

    async fn count(store: &SqliteStore, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&store.writer)
            .await
            .unwrap()
    }

    async fn deliveries_in(store: &SqliteStore, status: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE status = ?")
            .bind(status)
            .fetch_one(&store.writer)
            .await
            .unwrap()
    }

    /// Stores a send to `user`, claims its one delivery, and answers the
    /// outcome a worker would report for it.
    async fn sent_and_delivered(store: &SqliteStore, app: &AppRow, user: &str) -> Vec<Recorded> {
        let send = send_to(notification_to(&app.id, user));
        accept_batch(&store.writer, &[send], &[], 0, None)
            .await
            .unwrap();
        let claimed = store
            .deliveries_claim(now_millis(), now_millis() + 60_000, 10)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        delivered(&claimed)
    }

    /// Outcomes that wait while sends are stored go into the sends'
    /// transaction, and the writer is synced after it as before.
    #[tokio::test]
    async fn outcomes_are_written_in_the_transaction_of_the_sends_waiting() {
        let (_dir, store, app) = store_with_users(&[("ann", 1), ("bob", 1)]).await;
        let outcomes = sent_and_delivered(&store, &app, "ann").await;
        let outcomes: Vec<&Recorded> = outcomes.iter().collect();

        let second = send_to(notification_to(&app.id, "bob"));
        let stored = accept_batch(&store.writer, &[second], &outcomes, now_millis(), None)
            .await
            .unwrap();
        assert_eq!(stored.waiting, 1);
        assert_eq!(deliveries_in(&store, "delivered").await, 1);
        assert_eq!(deliveries_in(&store, "pending").await, 1);
        const FULL: i64 = 2;
        assert_eq!(count(&store, "PRAGMA synchronous").await, FULL);
    }

    /// A batch that fails stores nothing, writes none of its outcomes, and
    /// leaves no transaction open behind it on the writer.
    #[tokio::test]
    async fn a_failed_batch_writes_nothing_and_the_writer_goes_on() {
        let (_dir, store, app) = store_with_users(&[("ann", 1), ("bob", 1)]).await;
        let outcomes = sent_and_delivered(&store, &app, "ann").await;
        let outcomes: Vec<&Recorded> = outcomes.iter().collect();

        // No such app: the notification breaks its foreign key.
        let broken = send_to(notification_to("no-such-app", "bob"));
        for waiting in [&outcomes[..], &[]] {
            let failed = accept_batch(
                &store.writer,
                std::slice::from_ref(&broken),
                waiting,
                now_millis(),
                None,
            )
            .await;
            assert!(failed.is_err());
        }
        assert_eq!(count(&store, "SELECT count(*) FROM notifications").await, 1);
        assert_eq!(deliveries_in(&store, "in_flight").await, 1);

        let fine = send_to(notification_to(&app.id, "bob"));
        accept_batch(&store.writer, &[fine], &outcomes, now_millis(), None)
            .await
            .unwrap();
        assert_eq!(count(&store, "SELECT count(*) FROM notifications").await, 2);
        assert_eq!(deliveries_in(&store, "delivered").await, 1);
    }

    fn notification_to(app_id: &str, user: &str) -> NewNotification {
        NewNotification {
            recipients: Recipients::User(user.into()),
            ..notification(app_id)
        }
    }

    /// The batched statements themselves, without the per-send fallback an
    /// accept batch takes when its statements fail: padding rows must store
    /// nothing and match nothing.
    #[tokio::test]
    async fn padded_batches_store_and_record_only_their_own_rows() {
        let (_dir, store, app) = store_with_users(&[("ann", 1), ("bob", 2), ("cy", 0)]).await;
        // Three sends: padded to four rows in each statement.
        let sends: Vec<NewNotification> = (0..3).map(|_| notification(&app.id)).collect();
        let batch: Vec<(&NewNotification, &str)> = sends.iter().zip(["ann", "bob", "cy"]).collect();
        let mut conn = store.writer.acquire().await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        let mut stored = Stored::default();
        let counts = accept_to_users(&mut tx, &batch, None, &mut stored, Frame::WITHIN)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let by_user: Vec<u64> = sends.iter().map(|n| counts[n.id.as_str()]).collect();
        assert_eq!(by_user, [1, 2, 0]);
        assert_eq!(stored.waiting, 3);
        let count = |sql: &'static str| sqlx::query_scalar::<_, i64>(sql);
        assert_eq!(
            count("SELECT count(*) FROM notifications")
                .fetch_one(&mut *conn)
                .await
                .unwrap(),
            3
        );

        let claimed = claim(&mut conn, now_millis(), now_millis() + 60_000, 10, true)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 3);
        let outcomes = delivered(&claimed);
        let outcomes: Vec<&Recorded> = outcomes.iter().collect();
        record(&mut conn, &outcomes, now_millis()).await.unwrap();
        assert_eq!(
            count("SELECT count(*) FROM deliveries WHERE status = 'delivered'")
                .fetch_one(&mut *conn)
                .await
                .unwrap(),
            3
        );
    }
}
