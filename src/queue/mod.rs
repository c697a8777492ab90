//! The durable delivery queue and the workers that drain it.
//!
//! ```text
//!  API ── store ──▶ wake() ──▶ Dispatcher ── claim batch ──▶ Sender tasks ──▶ push service
//!           │                       ▲                          ▲  │
//!           └── started as stored ──┼──────────────────────────┘  │  (sends to users)
//!                                   └── wake() ◀── Recorder ◀─────┘ outcomes, written in batches
//! ```
//!
//! - Event-driven: storing work calls [`Queue::wake`]; the dispatcher claims at
//!   once. With nothing due it sleeps until the earliest due time or lease
//!   expiry that the database reports, or until woken: never a polling period.
//! - A send to users skips the dispatcher: the statement that stores it
//!   leases the new deliveries to this queue, within its free permits and
//!   the app's `max_concurrency`, and the store hands them over
//!   ([`Intake`]); it wakes the dispatcher only for what did not fit.
//! - At-least-once: a claim is a lease in the database. If this process dies,
//!   the lease runs out and any worker claims the delivery again. A busy
//!   dispatcher looks for such leases about once a second
//!   ([`LAPSED_LOOK_EVERY`]), an idle one whenever it claims: on PostgreSQL
//!   the look costs a walk over index entries of finished deliveries.
//! - A global limit (a semaphore of `concurrency` permits) bounds requests in
//!   flight; per-app `max_concurrency` is enforced by the claim itself (and by
//!   the store when it leases deliveries as it stores them).
//! - Outcomes are written in batches by one recorder, so a busy queue costs a
//!   transaction per batch, not per delivery. A written batch wakes the
//!   dispatcher only when that can find work: a retry was scheduled, or the
//!   dispatcher is waiting for apps at their `max_concurrency` to get room.
//!   Otherwise every batch would cost a claim that finds nothing.

pub mod retry;
pub mod sender;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::domain::now_millis;
use crate::store::{Claimed, Disposition, Intake, Recorded, Reservation, Store};
use sender::{Decision, Sender};

/// A finished send on its way to the recorder, with the permit it held.
type Finished = (Recorded, Option<String>, String, OwnedSemaphorePermit);

/// Most outcomes written in one transaction.
const RECORD_BATCH: usize = 1024;

/// Fewer outcomes than this wait [`Store::outcome_gather`] for more before
/// they are written.
const GATHER_BELOW: usize = 64;

/// Work counts as streaming in (for [`Store::claim_gather`]) when the
/// dispatcher is woken within this long of a claim that took everything due.
const STREAMING: Duration = Duration::from_millis(10);

/// How often a busy dispatcher's claim also looks for leases that ran out.
/// Between those looks it claims due pending work only, and sleeps no
/// longer than until the next look. A lease that runs out is taken again
/// within about this long (the lease itself is a minute by default).
pub const LAPSED_LOOK_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    sender: Arc<Sender>,
    wake: Notify,
    permits: Arc<Semaphore>,
    claim_batch: u32,
    lease: Duration,
    retention: Duration,
    /// The recorder's inbox while the queue runs, for deliveries the store
    /// hands over ([`Intake`]); `None` before and after.
    finished: RwLock<Option<mpsc::UnboundedSender<Finished>>>,
    stopping: AtomicBool,
    /// Counts the recorder's written batches: each may have freed room in an
    /// app at its `max_concurrency`.
    batches_recorded: AtomicU64,
    /// The dispatcher found due work it could not claim for want of app
    /// room, and waits for a recorded batch to free some.
    waiting_for_room: AtomicBool,
    /// Deliveries handed to senders and not yet finished ([`Queue::in_flight`]).
    sending: Arc<std::sync::atomic::AtomicUsize>,
}

impl Queue {
    pub fn new(
        store: Store,
        sender: Arc<Sender>,
        concurrency: usize,
        claim_batch: u32,
        lease: Duration,
        retention: Duration,
    ) -> Self {
        Queue {
            inner: Arc::new(Inner {
                store,
                sender,
                wake: Notify::new(),
                permits: Arc::new(Semaphore::new(concurrency)),
                claim_batch,
                lease,
                retention,
                finished: RwLock::new(None),
                stopping: AtomicBool::new(false),
                batches_recorded: AtomicU64::new(0),
                waiting_for_room: AtomicBool::new(false),
                sending: Default::default(),
            }),
        }
    }

    /// Work may be due: claim now. Cheap; a wake with no waiter is kept, so a
    /// wake that races with the dispatcher going to sleep is not lost.
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    pub fn sender(&self) -> &Sender {
        &self.inner.sender
    }

    /// Whether `n` more deliveries could start at once: free permits, not
    /// counting any app's `max_concurrency`.
    pub fn has_room_for(&self, n: u64) -> bool {
        n <= self.inner.permits.available_permits() as u64
    }

    /// Deliveries this instance is sending: claimed and handed to a sender,
    /// not yet passed to the recorder. Permits the dispatcher holds for a
    /// claim under way are not counted: that claim may find nothing.
    pub fn in_flight(&self) -> usize {
        self.inner.sending.load(Ordering::Relaxed)
    }

    /// Runs the dispatcher, recorder and maintenance until `stop` is cancelled.
    pub async fn run(self, stop: CancellationToken) {
        let (tx, rx) = mpsc::unbounded_channel();
        let recorder = tokio::spawn(self.clone().record(rx));
        let maintenance = tokio::spawn(self.clone().maintain(stop.clone()));
        *self.inner.finished.write().expect("intake lock") = Some(tx.clone());
        self.inner.store.attach_intake(Arc::new(QueueIntake {
            queue: Arc::downgrade(&self.inner),
        }));
        self.dispatch(tx, stop).await;
        // No new hand-overs; the recorder ends once the last send is recorded.
        self.inner.stopping.store(true, Ordering::Release);
        self.inner.finished.write().expect("intake lock").take();
        // In-flight sends finish and their outcomes are recorded; what is not
        // recorded is re-claimed after its lease by whoever runs next.
        let _ = recorder.await;
        maintenance.abort();
    }

    async fn dispatch(&self, tx: mpsc::UnboundedSender<Finished>, stop: CancellationToken) {
        let q = &self.inner;
        // When the next claim looks for leases that ran out as well.
        let mut look_lapsed_at = 0;
        let gather = q.store.claim_gather();
        // When the last claim that took everything due was made.
        let mut took_all_at: Option<Instant> = None;
        loop {
            if stop.is_cancelled() {
                return;
            }
            // Woken soon after a claim that took everything: work is
            // streaming in, and a moment's wait lets more of it share the
            // next claim (see [`Store::claim_gather`]).
            if took_all_at
                .take()
                .is_some_and(|at| at.elapsed() < STREAMING)
                && !gather.is_zero()
            {
                tokio::select! {
                    _ = tokio::time::sleep(gather) => {},
                    _ = stop.cancelled() => return,
                }
            }
            // Permits first, then the claim: the store may take permits for
            // the deliveries it starts itself ([`Intake`]) meanwhile.
            let mut permits = Vec::new();
            while permits.len() < q.claim_batch as usize {
                match q.permits.clone().try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }
            if permits.is_empty() {
                // Every permit is out: the next finished send frees one.
                tokio::select! {
                    p = q.permits.clone().acquire_owned() => drop(p),
                    _ = stop.cancelled() => return,
                }
                continue;
            }
            let recorded_before = q.batches_recorded.load(Ordering::SeqCst);
            let asked = permits.len();
            let now = now_millis();
            let lease_until = now + q.lease.as_millis() as i64;
            let looked_lapsed = now >= look_lapsed_at;
            let claimed = match looked_lapsed {
                true => {
                    q.store
                        .deliveries_claim(now, lease_until, asked as u32)
                        .await
                }
                false => {
                    q.store
                        .deliveries_claim_due(now, lease_until, asked as u32)
                        .await
                }
            };
            let claimed = match claimed {
                Ok(c) => c,
                Err(e) => {
                    drop(permits);
                    tracing::warn!(error = %e, "claiming deliveries failed; retrying shortly");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {},
                        _ = stop.cancelled() => return,
                    }
                    continue;
                }
            };
            // Fewer than asked: the claim took all that was due (or all the
            // apps had room for), so another one now would find nothing.
            // Work stored since has woken the dispatcher, and the sleep
            // ends at once.
            if looked_lapsed {
                look_lapsed_at = now + LAPSED_LOOK_EVERY.as_millis() as i64;
            }
            let took_all = claimed.len() < asked;
            if took_all {
                took_all_at = Some(Instant::now());
            }
            for c in claimed {
                let permit = permits
                    .pop()
                    .expect("a claim returns at most as many rows as it was given permits");
                spawn_send(q, c, permit, tx.clone());
            }
            if took_all {
                drop(permits);
                // After a claim that looked for lapsed leases, the sleep
                // lasts until the next due time or lease expiry; after one
                // that did not, at most until the next look.
                let look_at = (!looked_lapsed).then_some(look_lapsed_at);
                self.sleep_until_due(&stop, recorded_before, look_at).await;
            }
        }
    }

    /// `recorded_before` is the recorder's batch count read before the claim
    /// that found nothing, or less than it asked for. `look_lapsed_at` is
    /// when the next claim looks for leases that ran out, if that claim did
    /// not.
    async fn sleep_until_due(
        &self,
        stop: &CancellationToken,
        recorded_before: u64,
        look_lapsed_at: Option<i64>,
    ) {
        let q = &self.inner;
        let next = match look_lapsed_at {
            None => q.store.queue_next_due().await,
            Some(at) => {
                if at <= now_millis() {
                    // The next claim looks for lapsed leases: no sleep.
                    return;
                }
                q.store
                    .queue_next_pending()
                    .await
                    .map(|due| Some(due.map_or(at, |due| due.min(at))))
            }
        };
        let next = match next {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "reading the next due time failed");
                Some(now_millis() + 1000)
            }
        };
        let sleep = match next {
            Some(at) => Duration::from_millis((at - now_millis()).max(0) as u64),
            None => Duration::from_secs(24 * 3600),
        };
        if sleep.is_zero() {
            // Due work exists but could not be claimed (apps at their limit):
            // a recorded batch or a wake will free room. The flag is raised
            // before the count is read again, and the recorder counts before
            // it reads the flag, so a batch written since the claim either
            // shows in the count or sees the flag and wakes us. The timeout
            // covers room freed by another instance sharing the database.
            q.waiting_for_room.store(true, Ordering::SeqCst);
            if q.batches_recorded.load(Ordering::SeqCst) == recorded_before {
                tokio::select! {
                    _ = q.wake.notified() => {},
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {},
                    _ = stop.cancelled() => {},
                }
            }
            q.waiting_for_room.store(false, Ordering::SeqCst);
            return;
        }
        tokio::select! {
            _ = q.wake.notified() => {},
            _ = tokio::time::sleep(sleep) => {},
            _ = stop.cancelled() => {},
        }
    }

    async fn record(self, mut rx: mpsc::UnboundedReceiver<Finished>) {
        let q = &self.inner;
        let mut batch = Vec::with_capacity(RECORD_BATCH);
        let mut permits = Vec::with_capacity(RECORD_BATCH);
        let gather = q.store.outcome_gather();
        while let Some(first) = rx.recv().await {
            let mut items = vec![first];
            take_waiting(&mut rx, &mut items);
            if !gather.is_zero() && items.len() < GATHER_BELOW {
                tokio::time::sleep(gather).await;
                take_waiting(&mut rx, &mut items);
            }
            for (recorded, config_error, app_id, permit) in items {
                if let Some(error) = config_error {
                    if let Err(e) = q
                        .store
                        .app_set_config_error(&app_id, Some(&error), now_millis())
                        .await
                    {
                        tracing::warn!(app = %app_id, error = %e, "recording the app's configuration error failed");
                    }
                    tracing::warn!(app = %app_id, %error, "push service rejected the app's VAPID configuration");
                }
                batch.push(recorded);
                permits.push(permit);
            }
            // A failed write is retried: the outcome stays in memory rather
            // than being dropped, and the lease keeps others away meanwhile.
            let mut delay = Duration::from_millis(50);
            while let Err(e) = q.store.deliveries_record(&batch, now_millis()).await {
                tracing::warn!(error = %e, count = batch.len(), "recording outcomes failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            let retried = batch
                .iter()
                .any(|r| matches!(r.disposition, Disposition::Retry { .. }));
            batch.clear();
            permits.clear();
            q.batches_recorded.fetch_add(1, Ordering::SeqCst);
            // A retry may be due before the time the dispatcher sleeps until.
            if retried || q.waiting_for_room.load(Ordering::SeqCst) {
                q.wake.notify_one();
            }
        }
    }

    /// Deletes finished history past the retention period, hourly.
    async fn maintain(self, stop: CancellationToken) {
        loop {
            let before = now_millis() - self.inner.retention.as_millis() as i64;
            match self.inner.store.purge_finished(before).await {
                Ok(n) if n > 0 => {
                    tracing::info!(deliveries = n, "purged finished deliveries past retention")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "purging finished deliveries failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(3600)) => {},
                _ = stop.cancelled() => return,
            }
        }
    }
}

/// Moves the outcomes already waiting into `items`, up to [`RECORD_BATCH`].
fn take_waiting(rx: &mut mpsc::UnboundedReceiver<Finished>, items: &mut Vec<Finished>) {
    while items.len() < RECORD_BATCH {
        match rx.try_recv() {
            Ok(item) => items.push(item),
            Err(_) => break,
        }
    }
}

/// Sends one delivery on a task of its own; its outcome goes to the recorder.
fn spawn_send(
    q: &Inner,
    c: Claimed,
    permit: OwnedSemaphorePermit,
    tx: mpsc::UnboundedSender<Finished>,
) {
    let sender = q.sender.clone();
    let sending = Sending::new(&q.sending);
    tokio::spawn(async move {
        let Decision {
            disposition,
            config_error,
        } = sender.deliver(&c).await;
        let Claimed {
            id,
            claims,
            subscription_id,
            app_id,
            ..
        } = c;
        let _ = tx.send((
            Recorded {
                id,
                claims,
                subscription_id,
                disposition,
            },
            config_error,
            app_id,
            permit,
        ));
        drop(sending);
    });
}

/// Counts one delivery in [`Queue::in_flight`] while it lives.
struct Sending(Arc<std::sync::atomic::AtomicUsize>);

impl Sending {
    fn new(count: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Sending(count.clone())
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The queue as the store sees it. Weak, so a store outliving its queue (a
/// stopped test instance) does not keep it alive.
struct QueueIntake {
    queue: Weak<Inner>,
}

impl Intake for QueueIntake {
    fn reserve(&self, wanted: usize) -> Reservation {
        let now = now_millis();
        let mut r = Reservation {
            permits: Vec::new(),
            now,
            lease_until: now,
        };
        let Some(q) = self.queue.upgrade() else {
            return r;
        };
        if q.stopping.load(Ordering::Acquire) {
            return r;
        }
        r.lease_until = now + q.lease.as_millis() as i64;
        while r.permits.len() < wanted {
            match q.permits.clone().try_acquire_owned() {
                Ok(p) => r.permits.push(p),
                Err(_) => break,
            }
        }
        r
    }

    fn start(&self, claimed: Claimed, permit: OwnedSemaphorePermit) {
        let Some(q) = self.queue.upgrade() else {
            return;
        };
        // Stopped meanwhile: the delivery's lease runs out and it is
        // claimed again, as for any send cut short by a shutdown.
        let tx = q.finished.read().expect("intake lock").clone();
        if let Some(tx) = tx {
            spawn_send(&q, claimed, permit, tx);
        }
    }

    fn wake(&self) {
        if let Some(q) = self.queue.upgrade() {
            q.wake.notify_one();
        }
    }
}
