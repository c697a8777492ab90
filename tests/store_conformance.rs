//! One conformance suite for every storage backend: each case runs against
//! SQLite (a temporary file) and PostgreSQL (a fresh schema), and both must
//! answer the same. PostgreSQL must be reachable: see `harness/pg.rs`.

mod harness;

use std::collections::HashSet;

use harness::pg::PgSchema;
use herald::domain::DeliveryStatus;
use herald::domain::{new_id, NewNotification, Recipients};
use herald::store::{
    Accepted, AppRow, Claimed, Disposition, NewSubscription, QueueFilter, Recorded, Store,
};
use tempfile::TempDir;

/// A store under test and what keeps its database alive.
struct Db {
    store: Store,
    url: String,
    _dir: Option<TempDir>,
    _schema: Option<PgSchema>,
}

impl Db {
    /// Another instance on the same database. PostgreSQL is shared by many
    /// instances: a second, independent handle. An SQLite file belongs to one
    /// process: the same handle, used concurrently.
    async fn another_instance(&self) -> Store {
        match self.store.backend() {
            "sqlite" => self.store.clone(),
            _ => Store::connect(&self.url, 4, 10_000)
                .await
                .expect("second handle"),
        }
    }
}

async fn sqlite() -> Db {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/herald.db", dir.path().display());
    let store = Store::connect(&url, 4, 10_000).await.expect("open SQLite");
    assert_eq!(store.backend(), "sqlite");
    Db {
        store,
        url,
        _dir: Some(dir),
        _schema: None,
    }
}

async fn postgres() -> Db {
    let schema = PgSchema::create().await;
    let url = schema.url();
    let store = Store::connect(&url, 4, 10_000)
        .await
        .expect("open PostgreSQL");
    assert_eq!(store.backend(), "postgres");
    Db {
        store,
        url,
        _dir: None,
        _schema: Some(schema),
    }
}

/// Runs every listed case once per backend: `sqlite::case` and `postgres::case`.
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let db = super::sqlite().await;
                    super::$case(&db).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let db = super::postgres().await;
                    super::$case(&db).await;
                }
            )*
        }
    };
}

conformance!(
    apps_are_inserted_read_listed_and_updated,
    an_api_key_hash_finds_its_app,
    the_same_endpoint_keeps_one_row,
    deleting_a_subscription_marks_its_queued_deliveries_gone,
    each_kind_of_recipients_fans_out_to_the_right_subscriptions,
    an_idempotency_key_replays_within_the_window_and_not_after,
    racing_requests_with_one_idempotency_key_store_one_notification,
    a_send_that_cannot_be_stored_fails_alone,
    concurrent_sends_to_single_users_reach_each_users_own_devices,
    a_claim_leases_and_honours_max_concurrency_and_the_limit,
    a_paused_app_is_never_claimed,
    claims_from_two_instances_share_max_concurrency_and_never_overlap,
    an_expired_lease_is_claimed_again,
    a_claim_of_due_work_leaves_expired_leases_for_a_full_claim,
    the_outcome_of_a_stale_claim_changes_nothing,
    work_removed_while_claimed_stays_removed,
    every_disposition_is_recorded,
    gone_removes_the_subscription_and_its_other_queued_deliveries,
    the_next_due_time_ignores_paused_apps,
    the_queue_is_listed_forced_removed_and_cleared,
    regenerating_removes_subscriptions_and_queued_work,
    vendor_stats_count_outcomes_and_average_times,
    purging_removes_old_history_only,
    sends_to_users_start_in_the_local_queue_as_they_are_stored,
    only_what_the_queue_and_the_app_have_room_for_is_started,
    sends_to_users_through_two_instances_share_max_concurrency,
);

// ---- fixtures ---------------------------------------------------------------

fn now() -> i64 {
    herald::domain::now_millis()
}

async fn app(store: &Store, max_concurrency: i64) -> AppRow {
    let id = new_id();
    let row = AppRow {
        id: id.clone(),
        name: format!("app {id}"),
        contact: "mailto:ops@example.com".into(),
        api_key_hash: herald::secrets::token_hash(&id),
        vapid_public_key: format!("pub-{id}"),
        vapid_private_sealed: vec![1, 2, 3],
        vapid_generation: 1,
        max_concurrency,
        last_config_error: None,
        last_config_error_at: None,
        created_at: now(),
    };
    store.app_insert(&row).await.unwrap();
    row
}

fn new_sub(app: &AppRow, user: &str, vendor: &str, topics: &[&str]) -> NewSubscription {
    NewSubscription {
        app_id: app.id.clone(),
        user_id: user.into(),
        endpoint: format!("https://push.example.com/{vendor}/{}", new_id()),
        endpoint_host: "push.example.com".into(),
        vendor: vendor.into(),
        p256dh: vec![4; 65],
        auth: vec![7; 16],
        content_encoding: "aes128gcm".into(),
        topics: topics.iter().map(|t| t.to_string()).collect(),
    }
}

async fn sub(store: &Store, app: &AppRow, user: &str) -> String {
    sub_with(store, app, user, "fcm", &[]).await
}

async fn sub_with(
    store: &Store,
    app: &AppRow,
    user: &str,
    vendor: &str,
    topics: &[&str],
) -> String {
    let (id, created) = store
        .subscription_upsert(&new_sub(app, user, vendor, topics), now())
        .await
        .unwrap();
    assert!(created);
    id
}

fn notification(app: &AppRow, to: Recipients, created_at: i64) -> NewNotification {
    NewNotification {
        id: new_id(),
        app_id: app.id.clone(),
        recipients: to,
        title: "title".into(),
        payload: b"{\"title\":\"title\"}".to_vec(),
        ttl_secs: 3600,
        urgency: "normal".into(),
        topic_key: Some("topic".into()),
        created_at,
    }
}

/// Queues one delivery per subscription of `to`, due at `at`; returns the count.
async fn send(store: &Store, app: &AppRow, to: Recipients, at: i64) -> u64 {
    match store
        .notification_create(&notification(app, to, at), None, 0)
        .await
        .unwrap()
    {
        Accepted::Created { deliveries, .. } => deliveries,
        other => panic!("not created: {other:?}"),
    }
}

fn recorded(c: &Claimed, disposition: Disposition) -> Recorded {
    Recorded {
        id: c.id,
        claims: c.claims,
        subscription_id: c.subscription_id.clone(),
        disposition,
    }
}

async fn rows(
    store: &Store,
    app: &AppRow,
    status: Option<DeliveryStatus>,
) -> Vec<herald::store::QueueRow> {
    store
        .queue_list(&QueueFilter {
            app: Some(app.id.clone()),
            status,
            limit: 1000,
        })
        .await
        .unwrap()
}

async fn status_of(store: &Store, app: &AppRow, id: i64) -> herald::store::QueueRow {
    rows(store, app, None)
        .await
        .into_iter()
        .find(|r| r.id == id)
        .expect("delivery exists")
}

// ---- apps -------------------------------------------------------------------

async fn apps_are_inserted_read_listed_and_updated(db: &Db) {
    let s = &db.store;
    let a = app(s, 5).await;
    let b = AppRow {
        id: new_id(),
        api_key_hash: herald::secrets::token_hash("b"),
        max_concurrency: 7,
        created_at: a.created_at + 1,
        ..a.clone()
    };
    s.app_insert(&b).await.unwrap();
    let got = s
        .app_get(&a.id)
        .await
        .unwrap()
        .expect("inserted app is found");
    assert_eq!(
        (
            got.name.as_str(),
            got.contact.as_str(),
            got.max_concurrency,
            got.vapid_generation
        ),
        (a.name.as_str(), "mailto:ops@example.com", 5, 1)
    );
    assert_eq!(got.vapid_private_sealed, vec![1, 2, 3]);
    assert_eq!(got.api_key_hash, a.api_key_hash);
    assert!(s.app_get("no-such-app").await.unwrap().is_none());
    let ids: Vec<String> = s
        .app_list()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(
        ids,
        vec![a.id.clone(), b.id.clone()],
        "listed in creation order"
    );

    s.app_set_config_error(&a.id, Some("BadJwtToken"), 1234)
        .await
        .unwrap();
    let got = s.app_get(&a.id).await.unwrap().unwrap();
    assert_eq!(
        (got.last_config_error.as_deref(), got.last_config_error_at),
        (Some("BadJwtToken"), Some(1234))
    );

    let only_limit = s.app_update(&a.id, None, Some(0)).await.unwrap().unwrap();
    assert_eq!(
        (only_limit.max_concurrency, only_limit.contact.as_str()),
        (0, "mailto:ops@example.com")
    );
    assert_eq!(
        only_limit.last_config_error.as_deref(),
        Some("BadJwtToken"),
        "a limit change keeps the error"
    );
    let new_contact = s
        .app_update(&a.id, Some("https://example.com/contact"), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (new_contact.max_concurrency, new_contact.contact.as_str()),
        (0, "https://example.com/contact")
    );
    assert_eq!(
        new_contact.last_config_error, None,
        "a new contact clears the configuration error"
    );
    assert!(s
        .app_update("no-such-app", None, Some(3))
        .await
        .unwrap()
        .is_none());
    s.app_set_config_error(&b.id, None, 99).await.unwrap();
    assert_eq!(
        s.app_get(&b.id)
            .await
            .unwrap()
            .unwrap()
            .last_config_error_at,
        None
    );
}

async fn an_api_key_hash_finds_its_app(db: &Db) {
    let s = &db.store;
    let a = app(s, 5).await;
    app(s, 5).await;
    assert_eq!(
        s.app_id_by_key_hash(&a.api_key_hash).await.unwrap(),
        Some(a.id.clone())
    );
    assert_eq!(
        s.app_id_by_key_hash(&herald::secrets::token_hash("hk_unknown"))
            .await
            .unwrap(),
        None
    );
}

// ---- subscriptions ----------------------------------------------------------

async fn the_same_endpoint_keeps_one_row(db: &Db) {
    let s = &db.store;
    let a = app(s, 5).await;
    let mut n = new_sub(&a, "bo", "fcm", &["news"]);
    let (id, created) = s.subscription_upsert(&n, 1000).await.unwrap();
    assert!(created);
    n.user_id = "al".into();
    n.topics = vec!["billing".into(), "alerts".into()];
    n.auth = vec![9; 16];
    let (again, created) = s.subscription_upsert(&n, 2000).await.unwrap();
    assert_eq!((again.as_str(), created), (id.as_str(), false));
    let all = s.subscription_list(&a.id, None).await.unwrap();
    assert_eq!(all.len(), 1, "one row per endpoint");
    let row = &all[0];
    assert_eq!(
        (row.user_id.as_str(), row.auth.clone(), row.topics.clone()),
        (
            "al",
            vec![9; 16],
            vec!["billing".to_string(), "alerts".to_string()]
        )
    );
    assert_eq!((row.created_at, row.updated_at), (1000, 2000));
    assert_eq!(
        s.subscription_get(&a.id, &id)
            .await
            .unwrap()
            .unwrap()
            .endpoint,
        n.endpoint
    );
    assert_eq!(
        s.subscription_by_endpoint(&a.id, &n.endpoint)
            .await
            .unwrap()
            .unwrap()
            .id,
        id
    );
    assert!(s
        .subscription_by_endpoint(&a.id, "https://push.example.com/none")
        .await
        .unwrap()
        .is_none());
    assert!(s
        .subscription_list(&a.id, Some("bo"))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        s.subscription_list(&a.id, Some("al")).await.unwrap().len(),
        1
    );
    // Topics follow the update: the old one no longer reaches the device.
    assert_eq!(
        send(s, &a, Recipients::Topic("news".into()), now()).await,
        0
    );
    assert_eq!(
        send(s, &a, Recipients::Topic("alerts".into()), now()).await,
        1
    );
    // The same endpoint under another app is another device.
    let b = app(s, 5).await;
    let other = NewSubscription {
        app_id: b.id.clone(),
        ..n.clone()
    };
    assert!(s.subscription_upsert(&other, 3000).await.unwrap().1);
    assert!(
        s.subscription_get(&b.id, &id).await.unwrap().is_none(),
        "subscriptions are per app"
    );
}

async fn deleting_a_subscription_marks_its_queued_deliveries_gone(db: &Db) {
    let s = &db.store;
    let a = app(s, 0).await;
    let id = sub(s, &a, "bo").await;
    let keep = sub(s, &a, "al").await;
    assert_eq!(send(s, &a, Recipients::All, now()).await, 2);
    assert!(
        !s.subscription_delete(&a.id, &id, Some("al")).await.unwrap(),
        "another user's device is not deleted"
    );
    assert!(s.subscription_delete(&a.id, &id, Some("bo")).await.unwrap());
    assert!(
        !s.subscription_delete(&a.id, &id, None).await.unwrap(),
        "already gone"
    );
    assert!(s.subscription_get(&a.id, &id).await.unwrap().is_none());
    let gone = rows(s, &a, Some(DeliveryStatus::Gone)).await;
    assert_eq!(gone.len(), 1);
    assert_eq!(
        (
            gone[0].subscription_id.as_str(),
            gone[0].last_error.as_deref()
        ),
        (id.as_str(), Some("subscription deleted"))
    );
    assert!(gone[0].finished_at.is_some());
    let pending = rows(s, &a, Some(DeliveryStatus::Pending)).await;
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].subscription_id, keep);
    assert!(
        s.subscription_delete(&a.id, &keep, None).await.unwrap(),
        "no user: any device of the app"
    );
}

// ---- notifications ------------------------------------------------------------

async fn each_kind_of_recipients_fans_out_to_the_right_subscriptions(db: &Db) {
    let s = &db.store;
    let a = app(s, 0).await;
    let bo_news = sub_with(s, &a, "bo", "fcm", &["news"]).await;
    let bo_plain = sub_with(s, &a, "bo", "mozilla", &[]).await;
    let al_billing = sub_with(s, &a, "al", "apple", &["billing", "news"]).await;
    let cy = sub_with(s, &a, "cy", "fcm", &[]).await;
    let other = app(s, 0).await;
    sub_with(s, &other, "bo", "fcm", &["news"]).await;

    let targets = |n: NewNotification| async move {
        let id = n.id.clone();
        s.notification_create(&n, None, 0).await.unwrap();
        let (row, deliveries) = s
            .notification_get(&n.app_id, &id)
            .await
            .unwrap()
            .expect("stored");
        assert_eq!(
            (row.id.as_str(), row.title.as_str(), row.expires_at),
            (id.as_str(), "title", n.created_at + 3_600_000)
        );
        let mut subs: Vec<String> = deliveries
            .iter()
            .map(|d| d.subscription_id.clone())
            .collect();
        subs.sort();
        subs
    };
    let sorted = |mut v: Vec<&String>| {
        v.sort();
        v.into_iter().cloned().collect::<Vec<String>>()
    };
    assert_eq!(
        targets(notification(&a, Recipients::User("bo".into()), now())).await,
        sorted(vec![&bo_news, &bo_plain])
    );
    assert_eq!(
        targets(notification(
            &a,
            Recipients::Users(vec!["bo".into(), "cy".into(), "nobody".into()]),
            now()
        ))
        .await,
        sorted(vec![&bo_news, &bo_plain, &cy])
    );
    assert_eq!(
        targets(notification(
            &a,
            Recipients::Subscription(al_billing.clone()),
            now()
        ))
        .await,
        vec![al_billing.clone()]
    );
    assert_eq!(
        targets(notification(&a, Recipients::Topic("news".into()), now())).await,
        sorted(vec![&bo_news, &al_billing])
    );
    assert_eq!(
        targets(notification(&a, Recipients::Topic("nothing".into()), now())).await,
        Vec::<String>::new()
    );
    assert_eq!(
        targets(notification(&a, Recipients::All, now())).await,
        sorted(vec![&bo_news, &bo_plain, &al_billing, &cy])
    );
    assert_eq!(
        targets(notification(
            &a,
            Recipients::Subscription("not-a-subscription".into()),
            now()
        ))
        .await,
        Vec::<String>::new()
    );
    // Each delivery carries the subscription's user, host and vendor.
    let queued = rows(s, &a, Some(DeliveryStatus::Pending)).await;
    let al = queued
        .iter()
        .find(|r| r.subscription_id == al_billing)
        .unwrap();
    assert_eq!(
        (
            al.user_id.as_str(),
            al.vendor.as_str(),
            al.endpoint_host.as_str(),
            al.attempts
        ),
        ("al", "apple", "push.example.com", 0)
    );
    assert!(
        s.notification_get(&other.id, &queued[0].notification_id)
            .await
            .unwrap()
            .is_none(),
        "notifications are per app"
    );
}

async fn an_idempotency_key_replays_within_the_window_and_not_after(db: &Db) {
    let s = &db.store;
    let a = app(s, 0).await;
    sub(s, &a, "bo").await;
    sub(s, &a, "al").await;
    let t0 = now();
    let first = s
        .notification_create(
            &notification(&a, Recipients::All, t0),
            Some("order-7"),
            1000,
        )
        .await
        .unwrap();
    let Accepted::Created { id, deliveries: 2 } = first.clone() else {
        panic!("{first:?}")
    };
    let again = s
        .notification_create(
            &notification(&a, Recipients::User("bo".into()), t0 + 999),
            Some("order-7"),
            1000,
        )
        .await
        .unwrap();
    assert_eq!(
        again,
        Accepted::Replayed {
            id: id.clone(),
            deliveries: 2
        },
        "the first answer, whatever the new request says"
    );
    assert_eq!(rows(s, &a, None).await.len(), 2, "a replay queues nothing");
    let other_key = s
        .notification_create(
            &notification(&a, Recipients::All, t0 + 10),
            Some("order-8"),
            1000,
        )
        .await
        .unwrap();
    assert!(matches!(other_key, Accepted::Created { deliveries: 2, .. }));
    let b = app(s, 0).await;
    let other_app = s
        .notification_create(
            &notification(&b, Recipients::All, t0 + 10),
            Some("order-7"),
            1000,
        )
        .await
        .unwrap();
    assert!(
        matches!(other_app, Accepted::Created { deliveries: 0, .. }),
        "keys are per app: {other_app:?}"
    );
    let later = s
        .notification_create(
            &notification(&a, Recipients::User("bo".into()), t0 + 1000),
            Some("order-7"),
            1000,
        )
        .await
        .unwrap();
    let Accepted::Created {
        id: new_id,
        deliveries: 1,
    } = later.clone()
    else {
        panic!("after the window the key is new again: {later:?}")
    };
    assert_ne!(new_id, id);
    let replay_of_new = s
        .notification_create(
            &notification(&a, Recipients::All, t0 + 1500),
            Some("order-7"),
            1000,
        )
        .await
        .unwrap();
    assert_eq!(
        replay_of_new,
        Accepted::Replayed {
            id: new_id,
            deliveries: 1
        }
    );
}

async fn racing_requests_with_one_idempotency_key_store_one_notification(db: &Db) {
    let a = app(&db.store, 0).await;
    sub(&db.store, &a, "bo").await;
    let stores = [db.store.clone(), db.another_instance().await];
    let t0 = now();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = stores[i % 2].clone();
        let n = notification(&a, Recipients::All, t0 + i as i64);
        tasks.push(tokio::spawn(async move {
            s.notification_create(&n, Some("same-key"), 60_000)
                .await
                .unwrap()
        }));
    }
    let mut created = Vec::new();
    let mut replayed = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Accepted::Created { id, deliveries } => created.push((id, deliveries)),
            Accepted::Replayed { id, deliveries } => replayed.push((id, deliveries)),
        }
    }
    assert_eq!(
        created.len(),
        1,
        "exactly one request stores the notification: {created:?}"
    );
    assert!(
        replayed.iter().all(|r| *r == created[0]),
        "every other request replays it: {replayed:?}"
    );
    assert_eq!(rows(&db.store, &a, None).await.len(), 1);
}

// ---- claims -------------------------------------------------------------------

/// Sends arriving together are committed together; one that breaks a
/// constraint gets its own error, and the sends beside it are still stored.
async fn a_send_that_cannot_be_stored_fails_alone(db: &Db) {
    let store = &db.store;
    let app = app(store, 10).await;
    sub(store, &app, "u1").await;
    // Never inserted: its notification breaks the foreign key to apps.
    let missing = AppRow {
        id: new_id(),
        ..app.clone()
    };
    let sends = (0..20).map(|i| {
        let owner = if i == 10 { &missing } else { &app };
        let n = notification(owner, Recipients::All, now());
        async move { store.notification_create(&n, None, 0).await }
    });
    let results = futures::future::join_all(sends).await;
    for (i, result) in results.iter().enumerate() {
        match (i, result) {
            (10, Err(_)) => {}
            (10, Ok(r)) => panic!("a notification of a missing app was stored: {r:?}"),
            (_, Ok(Accepted::Created { deliveries: 1, .. })) => {}
            (_, other) => panic!("send {i} next to the failing one: {other:?}"),
        }
    }
    assert_eq!(rows(store, &app, None).await.len(), 19);
}

/// Sends to one user each, arriving together, are stored together (one
/// commit on SQLite, one statement on PostgreSQL): each answer still counts
/// that user's devices only, each delivery belongs to its own notification,
/// and a send that cannot be stored fails without taking the others with it.
async fn concurrent_sends_to_single_users_reach_each_users_own_devices(db: &Db) {
    let store = &db.store;
    let app = app(store, 10).await;
    // user i has i % 4 devices (user 0 none).
    let mut devices: std::collections::HashMap<String, Vec<String>> = Default::default();
    for i in 0..12 {
        let user = format!("user-{i}");
        for _ in 0..i % 4 {
            let id = sub(store, &app, &user).await;
            devices.entry(user.clone()).or_default().push(id);
        }
    }
    let missing = AppRow {
        id: new_id(),
        ..app.clone()
    };
    let mut stored = 0;
    // First every send can be stored, then one among them cannot.
    for failing in [None, Some(25)] {
        let sends: Vec<(String, NewNotification)> = (0..48)
            .map(|k| {
                let user = format!("user-{}", k % 12);
                let owner = if Some(k) == failing { &missing } else { &app };
                let n = notification(owner, Recipients::User(user.clone()), now());
                (user, n)
            })
            .collect();
        let results = futures::future::join_all(
            sends
                .iter()
                .map(|(_, n)| store.notification_create(n, None, 0)),
        )
        .await;
        let queued = rows(store, &app, None).await;
        for (k, ((user, n), result)) in sends.iter().zip(&results).enumerate() {
            let expected = devices.get(user).map_or(0, Vec::len);
            match (Some(k) == failing, result) {
                (true, Err(_)) => continue,
                (true, Ok(r)) => panic!("a notification of a missing app was stored: {r:?}"),
                (false, Ok(Accepted::Created { id, deliveries })) => {
                    assert_eq!(id, &n.id);
                    assert_eq!(*deliveries as usize, expected, "send {k} to {user}");
                }
                (false, other) => panic!("send {k} to {user}: {other:?}"),
            }
            let mut got: Vec<&str> = queued
                .iter()
                .filter(|r| r.notification_id == n.id)
                .inspect(|r| assert_eq!(&r.user_id, user))
                .map(|r| r.subscription_id.as_str())
                .collect();
            got.sort_unstable();
            let mut want: Vec<&str> = devices
                .get(user)
                .map(|d| d.iter().map(String::as_str).collect())
                .unwrap_or_default();
            want.sort_unstable();
            assert_eq!(got, want, "deliveries of send {k} to {user}");
            stored += expected;
        }
        assert_eq!(queued.len(), stored);
    }
}

async fn a_claim_leases_and_honours_max_concurrency_and_the_limit(db: &Db) {
    let s = &db.store;
    let t = now();
    let a = app(s, 3).await;
    for u in ["1", "2", "3", "4", "5"] {
        sub(s, &a, u).await;
    }
    assert_eq!(send(s, &a, Recipients::All, t - 1000).await, 5);
    assert_eq!(
        send(s, &a, Recipients::All, t + 60_000).await,
        5,
        "not due yet"
    );

    let first = s.deliveries_claim(t, t + 30_000, 100).await.unwrap();
    assert_eq!(first.len(), 3, "max_concurrency bounds the claim");
    for c in &first {
        assert_eq!(
            (
                c.claims,
                c.attempts,
                c.app_id.as_str(),
                c.notice.vapid_generation,
                c.notice.contact.as_str()
            ),
            (1, 0, a.id.as_str(), 1, "mailto:ops@example.com")
        );
        let target = c.target.as_ref().expect("subscription attached");
        assert_eq!(
            (
                target.p256dh.len(),
                target.auth.len(),
                target.content_encoding.as_str()
            ),
            (65, 16, "aes128gcm")
        );
        assert_eq!(
            (
                c.notice.payload.as_slice(),
                c.notice.ttl_secs,
                c.notice.urgency.as_str(),
                c.notice.topic_key.as_deref(),
                c.without_topic
            ),
            (
                &b"{\"title\":\"title\"}"[..],
                3600,
                "normal",
                Some("topic"),
                false
            )
        );
        assert_eq!(c.expires_at, t - 1000 + 3_600_000);
        assert_eq!(c.created_at, t - 1000);
        assert_eq!(status_of(s, &a, c.id).await.status, "in_flight");
    }
    assert!(
        first
            .iter()
            .all(|c| std::sync::Arc::ptr_eq(&c.notice, &first[0].notice)),
        "deliveries of one notification share one copy of it"
    );
    assert!(
        s.deliveries_claim(t, t + 30_000, 100)
            .await
            .unwrap()
            .is_empty(),
        "no room while three leases run"
    );
    assert_eq!(s.queue_counts().await.unwrap().in_flight, 3);

    s.deliveries_record(&[recorded(&first[0], Disposition::Delivered { at: t })], t)
        .await
        .unwrap();
    let second = s.deliveries_claim(t, t + 30_000, 100).await.unwrap();
    assert_eq!(second.len(), 1, "a finished delivery frees one place");
    assert!(!first.iter().any(|c| c.id == second[0].id));

    let b = app(s, 100).await;
    for u in ["1", "2", "3", "4", "5"] {
        sub(s, &b, u).await;
    }
    send(s, &b, Recipients::All, t - 1000).await;
    assert_eq!(
        s.deliveries_claim(t, t + 30_000, 2).await.unwrap().len(),
        2,
        "the limit bounds the claim"
    );
    // a's room is used up, so only b's remaining three come.
    let rest = s.deliveries_claim(t, t + 30_000, 100).await.unwrap();
    assert_eq!(rest.len(), 3);
    assert!(rest.iter().all(|c| c.app_id == b.id));
    let counts = s.queue_counts().await.unwrap();
    assert_eq!((counts.pending, counts.in_flight), (1 + 5, 3 + 5));
}

async fn a_paused_app_is_never_claimed(db: &Db) {
    let s = &db.store;
    let t = now();
    let a = app(s, 0).await;
    sub(s, &a, "bo").await;
    send(s, &a, Recipients::All, t - 1000).await;
    assert!(
        s.deliveries_claim(t, t + 30_000, 100)
            .await
            .unwrap()
            .is_empty(),
        "max_concurrency 0 pauses the app"
    );
    assert_eq!(
        s.queue_due_count(t).await.unwrap(),
        1,
        "the work is still due"
    );
    s.app_update(&a.id, None, Some(1)).await.unwrap();
    assert_eq!(
        s.deliveries_claim(t, t + 30_000, 100).await.unwrap().len(),
        1,
        "raising the limit releases it"
    );
}

async fn claims_from_two_instances_share_max_concurrency_and_never_overlap(db: &Db) {
    let t = now();
    let a = app(&db.store, 7).await;
    for i in 0..40 {
        sub(&db.store, &a, &format!("user-{i}")).await;
    }
    send(&db.store, &a, Recipients::All, t - 1000).await;
    let stores = [db.store.clone(), db.another_instance().await];
    // Each instance keeps claiming and finishing what it claimed; the leases
    // in force never exceed 7 and no delivery is claimed twice.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(HashSet::new()));
    let mut tasks = Vec::new();
    for s in stores {
        let seen = seen.clone();
        let app = a.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = 0;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while std::time::Instant::now() < deadline {
                let got = s.deliveries_claim(t, t + 60_000, 5).await.unwrap();
                let leased = rows(&s, &app, Some(DeliveryStatus::InFlight)).await.len();
                assert!(
                    leased <= 7,
                    "{leased} leases in force for max_concurrency 7"
                );
                for c in &got {
                    assert!(
                        seen.lock().unwrap().insert(c.id),
                        "delivery {} claimed twice",
                        c.id
                    );
                }
                mine += got.len();
                let done: Vec<Recorded> = got
                    .iter()
                    .map(|c| recorded(c, Disposition::Delivered { at: t }))
                    .collect();
                s.deliveries_record(&done, t).await.unwrap();
                if seen.lock().unwrap().len() == 40 {
                    break;
                }
                tokio::task::yield_now().await;
            }
            mine
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    assert_eq!(total, 40);
    assert_eq!(
        rows(&db.store, &a, Some(DeliveryStatus::Delivered))
            .await
            .len(),
        40
    );
}

async fn an_expired_lease_is_claimed_again(db: &Db) {
    let s = &db.store;
    let t = now();
    let a = app(s, 1).await;
    sub(s, &a, "bo").await;
    send(s, &a, Recipients::All, t - 1000).await;
    let first = s.deliveries_claim(t, t + 100, 10).await.unwrap();
    assert_eq!(first.len(), 1);
    assert!(
        s.deliveries_claim(t + 99, t + 5000, 10)
            .await
            .unwrap()
            .is_empty(),
        "the lease still runs"
    );
    assert_eq!(
        s.queue_next_due().await.unwrap(),
        Some(t + 100),
        "the lease expiry is when work may come back"
    );
    let again = s.deliveries_claim(t + 100, t + 5000, 10).await.unwrap();
    assert_eq!(
        again.len(),
        1,
        "an expired lease no longer counts and its delivery is claimed again"
    );
    assert_eq!((again[0].id, again[0].claims), (first[0].id, 2));
}

async fn a_claim_of_due_work_leaves_expired_leases_for_a_full_claim(db: &Db) {
    let s = &db.store;
    let t = now();
    let a = app(s, 5).await;
    sub(s, &a, "bo").await;
    send(s, &a, Recipients::All, t - 1000).await;
    let first = s.deliveries_claim(t, t + 100, 10).await.unwrap();
    assert_eq!(first.len(), 1);
    // Its lease has run out; then a second send to bo is due.
    send(s, &a, Recipients::All, t + 150).await;
    assert_eq!(
        s.queue_next_pending().await.unwrap(),
        Some(t + 150),
        "the next pending due time leaves the lease out"
    );
    assert_eq!(s.queue_next_due().await.unwrap(), Some(t + 100));

    let due = s.deliveries_claim_due(t + 200, t + 5000, 10).await.unwrap();
    assert_eq!(due.len(), 1, "the due send only");
    assert_ne!(due[0].id, first[0].id);
    assert_eq!(due[0].claims, 1);
    assert!(
        s.deliveries_claim_due(t + 200, t + 5000, 10)
            .await
            .unwrap()
            .is_empty(),
        "an expired lease is not due work"
    );
    assert_eq!(s.queue_next_pending().await.unwrap(), None);

    let again = s.deliveries_claim(t + 200, t + 5000, 10).await.unwrap();
    assert_eq!(
        again.iter().map(|c| (c.id, c.claims)).collect::<Vec<_>>(),
        vec![(first[0].id, 2)],
        "a full claim takes the expired lease again"
    );
}

async fn the_outcome_of_a_stale_claim_changes_nothing(db: &Db) {
    let s = &db.store;
    let t = now();
    let a = app(s, 5).await;
    let bo = sub(s, &a, "bo").await;
    send(s, &a, Recipients::All, t - 1000).await;
    let stale = s.deliveries_claim(t, t + 100, 10).await.unwrap().remove(0);
    let fresh = s
        .deliveries_claim(t + 200, t + 5000, 10)
        .await
        .unwrap()
        .remove(0);
    assert_eq!((fresh.id, fresh.claims), (stale.id, 2));
    for d in [
        Disposition::Delivered { at: t },
        Disposition::Retry {
            at: t,
            error: "500".into(),
            used_attempt: true,
            without_topic: true,
        },
        Disposition::Gone {
            error: "410".into(),
        },
        Disposition::Failed {
            error: "400".into(),
        },
        Disposition::Expired {
            error: Some("ttl".into()),
        },
    ] {
        s.deliveries_record(&[recorded(&stale, d)], t + 300)
            .await
            .unwrap();
        let row = status_of(s, &a, stale.id).await;
        assert_eq!(
            (row.status.as_str(), row.attempts, row.last_error.as_deref()),
            ("in_flight", 0, None),
            "a stale outcome changes nothing"
        );
    }
    assert!(
        s.subscription_get(&a.id, &bo).await.unwrap().is_some(),
        "a stale Gone deletes nothing"
    );
    s.deliveries_record(
        &[recorded(
            &fresh,
            Disposition::Failed {
                error: "400 bad".into(),
            },
        )],
        t + 300,
    )
    .await
    .unwrap();
    let row = status_of(s, &a, fresh.id).await;
    assert_eq!(
        (row.status.as_str(), row.attempts, row.last_error.as_deref()),
        ("failed", 1, Some("400 bad"))
    );
    s.deliveries_record(
        &[recorded(&fresh, Disposition::Delivered { at: t })],
        t + 400,
    )
    .await
    .unwrap();
    assert_eq!(
        status_of(s, &a, fresh.id).await.status,
        "failed",
        "a finished delivery is final"
    );
}

async fn every_disposition_is_recorded(db: &Db) {
    let s = &db.store;
    let t = now();
    let a = app(s, 100).await;
    for u in [
        "delivered",
        "retry",
        "ratelimited",
        "failed",
        "expired",
        "expired-quiet",
    ] {
        sub(s, &a, u).await;
    }
    send(s, &a, Recipients::All, t - 1000).await;
    let claimed = s.deliveries_claim(t, t + 30_000, 100).await.unwrap();
    assert_eq!(claimed.len(), 6);
    let mut outcomes = Vec::new();
    let mut by_user = std::collections::HashMap::new();
    for c in &claimed {
        let user = status_of(s, &a, c.id).await.user_id;
        let d = match user.as_str() {
            "delivered" => Disposition::Delivered { at: t + 10 },
            "retry" => Disposition::Retry {
                at: t + 5000,
                error: "500 Internal".into(),
                used_attempt: true,
                without_topic: true,
            },
            "ratelimited" => Disposition::Retry {
                at: t + 7000,
                error: "429 Too Many".into(),
                used_attempt: false,
                without_topic: false,
            },
            "failed" => Disposition::Failed {
                error: "400 Bad".into(),
            },
            "expired" => Disposition::Expired {
                error: Some("503 then TTL".into()),
            },
            _ => Disposition::Expired { error: None },
        };
        outcomes.push(recorded(c, d));
        by_user.insert(user, c.id);
    }
    s.deliveries_record(&outcomes, t + 20).await.unwrap();
    let row = |u: &str| status_of(s, &a, by_user[u]);
    let r = row("delivered").await;
    assert_eq!(
        (r.status.as_str(), r.attempts, r.last_error, r.finished_at),
        ("delivered", 1, None, Some(t + 10))
    );
    let r = row("retry").await;
    assert_eq!(
        (
            r.status.as_str(),
            r.attempts,
            r.last_error.as_deref(),
            r.next_attempt_at,
            r.finished_at
        ),
        ("pending", 1, Some("500 Internal"), t + 5000, None)
    );
    let r = row("ratelimited").await;
    assert_eq!(
        (r.status.as_str(), r.attempts, r.next_attempt_at),
        ("pending", 0, t + 7000),
        "a rate limit uses no attempt"
    );
    let r = row("failed").await;
    assert_eq!(
        (
            r.status.as_str(),
            r.attempts,
            r.last_error.as_deref(),
            r.finished_at
        ),
        ("failed", 1, Some("400 Bad"), Some(t + 20))
    );
    let r = row("expired").await;
    assert_eq!(
        (
            r.status.as_str(),
            r.attempts,
            r.last_error.as_deref(),
            r.finished_at
        ),
        ("expired", 0, Some("503 then TTL"), Some(t + 20))
    );
    let r = row("expired-quiet").await;
    assert_eq!((r.status.as_str(), r.last_error), ("expired", None));

    // The retried delivery comes back at its time, without its topic, and an
    // expiry without a reason keeps the last attempt's.
    assert!(s
        .deliveries_claim(t + 4999, t + 40_000, 100)
        .await
        .unwrap()
        .is_empty());
    let again = s.deliveries_claim(t + 5000, t + 40_000, 100).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(
        (
            again[0].id,
            again[0].attempts,
            again[0].claims,
            again[0].without_topic
        ),
        (by_user["retry"], 1, 2, true)
    );
    s.deliveries_record(
        &[recorded(&again[0], Disposition::Expired { error: None })],
        t + 5001,
    )
    .await
    .unwrap();
    let r = row("retry").await;
    assert_eq!(
        (r.status.as_str(), r.last_error.as_deref()),
        ("expired", Some("500 Internal"))
    );
}

async fn gone_removes_the_subscription_and_its_other_queued_deliveries(db: &Db) {
    let s = &db.store;
    let t = now();
    let a = app(s, 1).await;
    let dead = sub(s, &a, "bo").await;
    let alive = sub(s, &a, "al").await;
    send(s, &a, Recipients::User("bo".into()), t - 2000).await;
    send(s, &a, Recipients::All, t - 1000).await;
    let claimed = s.deliveries_claim(t, t + 30_000, 10).await.unwrap();
    assert_eq!(
        (claimed.len(), claimed[0].subscription_id.as_str()),
        (1, dead.as_str()),
        "the oldest due first"
    );
    s.deliveries_record(
        &[recorded(
            &claimed[0],
            Disposition::Gone {
                error: "410 Gone".into(),
            },
        )],
        t + 5,
    )
    .await
    .unwrap();
    assert!(
        s.subscription_get(&a.id, &dead).await.unwrap().is_none(),
        "the dead subscription is deleted"
    );
    let gone = rows(s, &a, Some(DeliveryStatus::Gone)).await;
    assert_eq!(gone.len(), 2, "its other queued delivery is gone too");
    assert!(gone.iter().all(|r| r.subscription_id == dead
        && r.last_error.as_deref() == Some("410 Gone")
        && r.finished_at == Some(t + 5)));
    assert_eq!(
        gone.iter()
            .find(|r| r.id == claimed[0].id)
            .unwrap()
            .attempts,
        1
    );
    let pending = rows(s, &a, Some(DeliveryStatus::Pending)).await;
    assert_eq!(
        (pending.len(), pending[0].subscription_id.as_str()),
        (1, alive.as_str())
    );
    // A delivery claimed after its subscription disappeared carries no target.
    let b = app(s, 5).await;
    let vanishing = sub(s, &b, "x").await;
    send(s, &b, Recipients::All, t - 1000).await;
    let c = s
        .deliveries_claim(t, t + 30_000, 10)
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.app_id == b.id)
        .unwrap();
    assert!(s
        .subscription_delete(&b.id, &vanishing, None)
        .await
        .unwrap());
    assert_eq!(
        status_of(s, &b, c.id).await.status,
        "gone",
        "in-flight work of a deleted subscription is gone"
    );
    // Deleted while pending: nothing is left to claim.
    let b2 = app(s, 5).await;
    let sid = sub(s, &b2, "y").await;
    send(s, &b2, Recipients::All, t - 1000).await;
    assert!(s.subscription_delete(&b2.id, &sid, None).await.unwrap());
    assert!(s
        .deliveries_claim(t, t + 30_000, 10)
        .await
        .unwrap()
        .iter()
        .all(|c| c.app_id != b2.id));
}

async fn the_next_due_time_ignores_paused_apps(db: &Db) {
    let s = &db.store;
    let t = now();
    assert_eq!(
        s.queue_next_due().await.unwrap(),
        None,
        "an empty queue has nothing due"
    );
    let paused = app(s, 0).await;
    sub(s, &paused, "bo").await;
    send(s, &paused, Recipients::All, t - 5000).await;
    assert_eq!(
        s.queue_next_due().await.unwrap(),
        None,
        "a paused app's work is not waited for"
    );
    let a = app(s, 1).await;
    sub(s, &a, "bo").await;
    sub(s, &a, "al").await;
    send(s, &a, Recipients::User("bo".into()), t + 8000).await;
    assert_eq!(s.queue_next_due().await.unwrap(), Some(t + 8000));
    send(s, &a, Recipients::User("al".into()), t - 100).await;
    assert_eq!(s.queue_next_due().await.unwrap(), Some(t - 100));
    let c = s.deliveries_claim(t, t + 3000, 10).await.unwrap();
    assert_eq!(c.len(), 1);
    assert_eq!(
        s.queue_next_due().await.unwrap(),
        Some(t + 3000),
        "a running lease counts by its expiry"
    );
    s.app_update(&a.id, None, Some(0)).await.unwrap();
    assert_eq!(s.queue_next_due().await.unwrap(), None);
}

async fn the_queue_is_listed_forced_removed_and_cleared(db: &Db) {
    let s = &db.store;
    let t = now();
    let a = app(s, 5).await;
    let b = app(s, 0).await;
    sub(s, &a, "bo").await;
    sub(s, &b, "al").await;
    send(s, &a, Recipients::All, t - 1000).await;
    let c = s
        .deliveries_claim(t, t + 30_000, 10)
        .await
        .unwrap()
        .remove(0);
    s.deliveries_record(
        &[recorded(
            &c,
            Disposition::Retry {
                at: t + 3_600_000,
                error: "429".into(),
                used_attempt: false,
                without_topic: false,
            },
        )],
        t,
    )
    .await
    .unwrap();
    send(s, &a, Recipients::All, t - 500).await;
    send(s, &b, Recipients::All, t - 500).await;
    send(s, &b, Recipients::All, t + 1_000_000).await;

    let all = s
        .queue_list(&QueueFilter {
            app: None,
            status: None,
            limit: 100,
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 4);
    assert!(all.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    assert_eq!(all[0].title, "title");
    assert_eq!(
        s.queue_list(&QueueFilter {
            app: None,
            status: None,
            limit: 2
        })
        .await
        .unwrap()
        .len(),
        2,
        "limit"
    );
    assert_eq!(rows(s, &b, None).await.len(), 2, "filtered by app");
    let pending_a = rows(s, &a, Some(DeliveryStatus::Pending)).await;
    assert_eq!(pending_a.len(), 2, "filtered by status");
    assert_eq!(
        s.queue_due_count(t).await.unwrap(),
        2,
        "a's second and b's first are due"
    );

    let forced = s.queue_force(t).await.unwrap();
    assert_eq!(forced, 4, "every pending delivery is due now");
    assert_eq!(s.queue_due_count(t).await.unwrap(), 4);
    assert_eq!(status_of(s, &a, c.id).await.next_attempt_at, t);

    assert_eq!(s.queue_remove(c.id).await.unwrap(), 1);
    assert_eq!(s.queue_remove(c.id).await.unwrap(), 0, "already removed");
    assert_eq!(s.queue_clear(Some(&b.id)).await.unwrap(), 2);
    assert!(rows(s, &b, None).await.is_empty());
    assert_eq!(
        rows(s, &a, None).await.len(),
        1,
        "other apps keep their queue"
    );
    // Finished history is not queued work: clearing keeps it.
    let d = s
        .deliveries_claim(t, t + 30_000, 10)
        .await
        .unwrap()
        .remove(0);
    s.deliveries_record(&[recorded(&d, Disposition::Delivered { at: t })], t)
        .await
        .unwrap();
    send(s, &a, Recipients::All, t).await;
    assert_eq!(s.queue_clear(None).await.unwrap(), 1);
    assert_eq!(rows(s, &a, None).await.len(), 1);
    assert_eq!(rows(s, &a, Some(DeliveryStatus::Delivered)).await.len(), 1);
}

async fn regenerating_removes_subscriptions_and_queued_work(db: &Db) {
    let s = &db.store;
    let t = now();
    let a = app(s, 5).await;
    let other = app(s, 5).await;
    sub(s, &a, "bo").await;
    sub(s, &a, "al").await;
    sub(s, &other, "bo").await;
    send(s, &a, Recipients::User("bo".into()), t - 1000).await;
    let done = s
        .deliveries_claim(t, t + 30_000, 10)
        .await
        .unwrap()
        .remove(0);
    s.deliveries_record(&[recorded(&done, Disposition::Delivered { at: t })], t)
        .await
        .unwrap();
    send(s, &a, Recipients::All, t).await;
    send(s, &other, Recipients::All, t).await;
    s.app_set_config_error(&a.id, Some("BadJwtToken"), t)
        .await
        .unwrap();

    assert_eq!(
        s.app_regenerate(&a.id, "new-public", &[9, 9])
            .await
            .unwrap(),
        Some((2, 2))
    );
    let got = s.app_get(&a.id).await.unwrap().unwrap();
    assert_eq!(
        (
            got.vapid_public_key.as_str(),
            got.vapid_private_sealed.clone(),
            got.vapid_generation
        ),
        ("new-public", vec![9, 9], 2)
    );
    assert_eq!(
        (got.last_config_error, got.last_config_error_at),
        (None, None)
    );
    assert!(s.subscription_list(&a.id, None).await.unwrap().is_empty());
    let left = rows(s, &a, None).await;
    assert_eq!(
        (left.len(), left[0].status.as_str()),
        (1, "delivered"),
        "history stays"
    );
    assert_eq!(
        s.subscription_list(&other.id, None).await.unwrap().len(),
        1,
        "other apps untouched"
    );
    assert_eq!(rows(s, &other, None).await.len(), 1);
    assert_eq!(
        s.app_regenerate("no-such-app", "k", &[1]).await.unwrap(),
        None
    );
}

async fn vendor_stats_count_outcomes_and_average_times(db: &Db) {
    let s = &db.store;
    let t = now();
    let a = app(s, 100).await;
    for (u, v) in [
        ("a", "fcm"),
        ("b", "fcm"),
        ("c", "fcm"),
        ("d", "mozilla"),
        ("e", "mozilla"),
    ] {
        sub_with(s, &a, u, v, &[]).await;
    }
    send(s, &a, Recipients::All, t - 1000).await;
    let claimed = s.deliveries_claim(t, t + 30_000, 100).await.unwrap();
    let mut outcomes = Vec::new();
    for c in &claimed {
        let user = status_of(s, &a, c.id).await.user_id;
        outcomes.push(recorded(
            c,
            match user.as_str() {
                "a" => Disposition::Delivered { at: t + 100 },
                "b" => Disposition::Delivered { at: t + 300 },
                "c" => Disposition::Failed {
                    error: "400".into(),
                },
                "d" => Disposition::Gone {
                    error: "410".into(),
                },
                _ => Disposition::Expired { error: None },
            },
        ));
    }
    s.deliveries_record(&outcomes, t + 400).await.unwrap();
    let stats = s.vendor_stats().await.unwrap();
    assert_eq!(stats.len(), 2);
    let fcm = &stats[0];
    assert_eq!(
        (
            fcm.vendor.as_str(),
            fcm.delivered,
            fcm.failed,
            fcm.gone,
            fcm.expired
        ),
        ("fcm", 2, 1, 0, 0)
    );
    assert_eq!(
        fcm.avg_queue_wait_ms,
        Some(1000.0),
        "claimed 1 s after it was queued"
    );
    assert_eq!(fcm.avg_delivery_ms, Some(200.0), "(100 + 300) / 2");
    let moz = &stats[1];
    assert_eq!(
        (
            moz.vendor.as_str(),
            moz.delivered,
            moz.failed,
            moz.gone,
            moz.expired
        ),
        ("mozilla", 0, 0, 1, 1)
    );
    assert_eq!(
        (moz.avg_queue_wait_ms, moz.avg_delivery_ms),
        (None, None),
        "no delivery, no average"
    );
}

async fn purging_removes_old_history_only(db: &Db) {
    let s = &db.store;
    let t = now();
    let a = app(s, 100).await;
    sub(s, &a, "bo").await;
    let old = notification(&a, Recipients::All, t - 10_000);
    s.notification_create(&old, Some("old-key"), 1_000_000)
        .await
        .unwrap();
    let c = s
        .deliveries_claim(t - 9000, t + 30_000, 10)
        .await
        .unwrap()
        .remove(0);
    s.deliveries_record(
        &[recorded(&c, Disposition::Delivered { at: t - 8000 })],
        t - 8000,
    )
    .await
    .unwrap();
    let old_pending = notification(&a, Recipients::All, t - 10_000);
    s.app_update(&a.id, None, Some(0)).await.unwrap();
    s.notification_create(&old_pending, None, 0).await.unwrap();
    let recent = notification(&a, Recipients::All, t);
    s.notification_create(&recent, Some("new-key"), 1_000_000)
        .await
        .unwrap();

    assert_eq!(
        s.purge_finished(t - 5000).await.unwrap(),
        1,
        "one finished delivery older than the cut"
    );
    assert!(
        s.notification_get(&a.id, &old.id).await.unwrap().is_none(),
        "its notification has nothing left and goes"
    );
    assert!(
        s.notification_get(&a.id, &old_pending.id)
            .await
            .unwrap()
            .is_some(),
        "queued work is kept, however old"
    );
    assert!(s
        .notification_get(&a.id, &recent.id)
        .await
        .unwrap()
        .is_some());
    assert_eq!(rows(s, &a, None).await.len(), 2);
    // The old idempotency key went with it; the recent one still replays.
    let reuse = s
        .notification_create(
            &notification(&a, Recipients::All, t + 1),
            Some("old-key"),
            1_000_000,
        )
        .await
        .unwrap();
    assert!(matches!(reuse, Accepted::Created { .. }), "{reuse:?}");
    let replay = s
        .notification_create(
            &notification(&a, Recipients::All, t + 1),
            Some("new-key"),
            1_000_000,
        )
        .await
        .unwrap();
    assert_eq!(
        replay,
        Accepted::Replayed {
            id: recent.id.clone(),
            deliveries: 1
        }
    );
}

async fn work_removed_while_claimed_stays_removed(db: &Db) {
    // Another instance clears the queue or regenerates the app's keys while
    // this one is sending: the outcomes it records afterwards change nothing.
    let s = &db.store;
    let other = db.another_instance().await;
    let t = now();
    let a = app(s, 10).await;
    let b = app(s, 10).await;
    let a_sub = sub(s, &a, "bo").await;
    let b_sub = sub(s, &b, "bo").await;
    send(s, &a, Recipients::All, t - 1000).await;
    send(s, &b, Recipients::All, t - 1000).await;
    let claimed = s.deliveries_claim(t, t + 30_000, 10).await.unwrap();
    assert_eq!(claimed.len(), 2);
    assert_eq!(other.queue_clear(Some(&a.id)).await.unwrap(), 1);
    assert_eq!(
        other.app_regenerate(&b.id, "new", &[2]).await.unwrap(),
        Some((1, 1))
    );
    let outcomes: Vec<Recorded> = claimed
        .iter()
        .map(|c| {
            recorded(
                c,
                Disposition::Gone {
                    error: "410".into(),
                },
            )
        })
        .collect();
    s.deliveries_record(&outcomes, t).await.unwrap();
    assert!(
        rows(s, &a, None).await.is_empty(),
        "a cleared delivery is not brought back"
    );
    assert!(rows(s, &b, None).await.is_empty());
    assert!(
        s.subscription_get(&a.id, &a_sub).await.unwrap().is_some(),
        "an outcome of removed work deletes nothing"
    );
    assert!(
        s.subscription_get(&b.id, &b_sub).await.unwrap().is_none(),
        "removed by the regeneration"
    );
}

// ---- sends to users handed to the local queue as they are stored -----------

/// A queue with `room` free senders that records what it is handed.
struct FakeIntake {
    room: std::sync::Arc<tokio::sync::Semaphore>,
    lease: i64,
    started: std::sync::Mutex<Vec<(Claimed, tokio::sync::OwnedSemaphorePermit)>>,
    wakes: std::sync::atomic::AtomicUsize,
}

impl FakeIntake {
    fn attach(store: &Store, room: usize) -> std::sync::Arc<FakeIntake> {
        let intake = std::sync::Arc::new(FakeIntake {
            room: std::sync::Arc::new(tokio::sync::Semaphore::new(room)),
            lease: 60_000,
            started: Default::default(),
            wakes: Default::default(),
        });
        store.attach_intake(intake.clone());
        intake
    }

    fn started(&self) -> Vec<Claimed> {
        let started = self.started.lock().unwrap();
        started.iter().map(|(c, _)| c.clone()).collect()
    }

    fn wakes(&self) -> usize {
        self.wakes.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl herald::store::Intake for FakeIntake {
    fn reserve(&self, wanted: usize) -> herald::store::Reservation {
        let now = now();
        let mut permits = Vec::new();
        while permits.len() < wanted {
            match self.room.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        herald::store::Reservation {
            permits,
            now,
            lease_until: now + self.lease,
        }
    }

    fn start(&self, claimed: Claimed, permit: tokio::sync::OwnedSemaphorePermit) {
        self.started.lock().unwrap().push((claimed, permit));
    }

    fn wake(&self) {
        self.wakes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Waits until `handed_over` holds. A store answers the sends of a batch
/// first and hands their deliveries to the queue right after, in the same
/// step (so the 202s do not wait behind the pushes); a caller holding its
/// answer may look a moment before that.
async fn once(handed_over: impl Fn() -> bool, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !handed_over() {
        assert!(
            std::time::Instant::now() < deadline,
            "never handed over: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

/// Sends to `users` at once, so the store commits them together; answers
/// the sends and the deliveries each was answered with.
async fn send_to_users(
    store: &Store,
    app: &AppRow,
    users: &[&str],
) -> (Vec<NewNotification>, Vec<u64>) {
    let sends: Vec<NewNotification> = users
        .iter()
        .map(|u| notification(app, Recipients::User(u.to_string()), now()))
        .collect();
    let mut deliveries = Vec::new();
    for (n, r) in sends.iter().zip(
        futures::future::join_all(sends.iter().map(|n| store.notification_create(n, None, 0)))
            .await,
    ) {
        match r.unwrap() {
            Accepted::Created { id, deliveries: d } => {
                assert_eq!(id, n.id);
                deliveries.push(d);
            }
            other => panic!("a new send was answered {other:?}"),
        }
    }
    (sends, deliveries)
}

async fn sends_to_users_start_in_the_local_queue_as_they_are_stored(db: &Db) {
    let store = &db.store;
    let app = app(store, 100).await;
    for u in ["ann", "bob", "cy"] {
        sub(store, &app, u).await;
    }
    sub(store, &app, "bob").await;
    let intake = FakeIntake::attach(store, 100);
    assert!(store.wakes_queue());
    // Two of them to bob, stored together: each of his devices gets both.
    let (sends, deliveries) = send_to_users(store, &app, &["ann", "bob", "cy", "bob"]).await;
    assert_eq!(
        deliveries,
        [1, 2, 1, 2],
        "each send answers its own devices"
    );

    // All six deliveries went to the queue, leased, with what a claim
    // gives, as the sends were answered.
    once(|| intake.started().len() >= 6, "six deliveries").await;
    let started = intake.started();
    assert_eq!(started.len(), 6);
    assert_eq!(intake.wakes(), 0, "nothing left to claim");
    for c in &started {
        let n = sends
            .iter()
            .find(|n| n.id == c.notification_id)
            .expect("a delivery of one of the sends");
        assert_eq!(c.claims, 1);
        assert_eq!(c.attempts, 0);
        assert_eq!(c.notice.payload, n.payload);
        assert_eq!(c.notice.topic_key, n.topic_key);
        assert_eq!(c.notice.contact, app.contact);
        assert_eq!(c.notice.vapid_generation, app.vapid_generation);
        let target = c.target.as_ref().expect("the subscription's target");
        let subscription = store
            .subscription_get(&app.id, &c.subscription_id)
            .await
            .unwrap()
            .expect("the delivery's subscription");
        let Recipients::User(user) = &n.recipients else {
            unreachable!("sent to users")
        };
        assert_eq!(&subscription.user_id, user, "a device of the user sent to");
        assert_eq!(
            target.endpoint, subscription.endpoint,
            "its own device's endpoint"
        );
        assert_eq!(target.p256dh, vec![4; 65]);
        assert_eq!(target.auth, vec![7; 16]);
        assert_eq!(target.content_encoding, subscription.content_encoding);
        let row = status_of(store, &app, c.id).await;
        assert_eq!(row.status, "in_flight");
    }
    let mut pairs: Vec<_> = started
        .iter()
        .map(|c| (&c.notification_id, &c.subscription_id))
        .collect();
    pairs.sort();
    pairs.dedup();
    assert_eq!(pairs.len(), 6, "one delivery per send and device");
    // A claim does not take them again while their lease runs.
    assert!(store
        .deliveries_claim(now(), now() + 60_000, 100)
        .await
        .unwrap()
        .is_empty());
    // Their outcomes are fenced by the claim they were stored with.
    let outcomes: Vec<Recorded> = started
        .iter()
        .map(|c| recorded(c, Disposition::Delivered { at: now() }))
        .collect();
    store.deliveries_record(&outcomes, now()).await.unwrap();
    assert_eq!(
        rows(store, &app, Some(DeliveryStatus::Delivered))
            .await
            .len(),
        6
    );
}

async fn only_what_the_queue_and_the_app_have_room_for_is_started(db: &Db) {
    let store = &db.store;
    // Room in the app for 3 (one lease already runs), in the queue for 5.
    let app = app(store, 4).await;
    let users = ["u0", "u1", "u2", "u3", "u4", "u5"];
    for u in users {
        sub(store, &app, u).await;
    }
    sub(store, &app, "first").await;
    send(store, &app, Recipients::User("first".into()), now()).await;
    assert_eq!(
        store
            .deliveries_claim(now(), now() + 60_000, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    let intake = FakeIntake::attach(store, 5);
    send_to_users(store, &app, &users).await;

    once(|| intake.wakes() > 0, "the rest is claimable").await;
    assert_eq!(intake.started().len(), 3, "the app's max_concurrency holds");
    assert_eq!(
        rows(store, &app, Some(DeliveryStatus::InFlight))
            .await
            .len(),
        4
    );
    assert_eq!(
        rows(store, &app, Some(DeliveryStatus::Pending)).await.len(),
        3
    );
    // Room reserved but not used went back to the queue.
    assert_eq!(intake.room.available_permits(), 2);

    // A paused app gets nothing handed over, and its sends wait.
    let paused = self::app(store, 0).await;
    sub(store, &paused, "p").await;
    let wakes = intake.wakes();
    send_to_users(store, &paused, &["p"]).await;
    once(
        || intake.wakes() > wakes,
        "the paused app's send is claimable",
    )
    .await;
    assert_eq!(intake.started().len(), 3);
    assert_eq!(
        rows(store, &paused, Some(DeliveryStatus::Pending))
            .await
            .len(),
        1
    );
}

async fn sends_to_users_through_two_instances_share_max_concurrency(db: &Db) {
    let app = app(&db.store, 5).await;
    let users: Vec<String> = (0..30).map(|i| format!("u{i}")).collect();
    for u in &users {
        sub(&db.store, &app, u).await;
    }
    let other = db.another_instance().await;
    // One queue per instance (on SQLite both handles are one process's).
    let queues = match db.store.backend() {
        "sqlite" => vec![FakeIntake::attach(&db.store, 100)],
        _ => vec![
            FakeIntake::attach(&db.store, 100),
            FakeIntake::attach(&other, 100),
        ],
    };
    // Half of the users through each instance, at the same time.
    let first: Vec<&str> = users.iter().step_by(2).map(String::as_str).collect();
    let second: Vec<&str> = users
        .iter()
        .skip(1)
        .step_by(2)
        .map(String::as_str)
        .collect();
    tokio::join!(
        send_to_users(&db.store, &app, &first),
        send_to_users(&other, &app, &second)
    );
    // Each instance stored what it was sent and started what the app's
    // room allowed; the rest waits for a claim. Each instance was sent more
    // than the app has room for, so each wakes its queue once it is done.
    once(
        || queues.iter().all(|q| q.wakes() > 0),
        "both instances' sends",
    )
    .await;
    let started: Vec<i64> = queues
        .iter()
        .flat_map(|q| q.started())
        .map(|c| c.id)
        .collect();
    let distinct: HashSet<i64> = started.iter().copied().collect();
    assert_eq!(distinct.len(), started.len(), "no delivery started twice");
    assert_eq!(
        started.len(),
        5,
        "the app's max_concurrency holds across instances"
    );
    assert_eq!(
        rows(&db.store, &app, Some(DeliveryStatus::InFlight))
            .await
            .len(),
        5
    );
    assert_eq!(
        rows(&db.store, &app, Some(DeliveryStatus::Pending))
            .await
            .len(),
        25
    );
}
