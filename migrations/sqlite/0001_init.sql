-- Herald schema (SQLite). Times are Unix milliseconds.

CREATE TABLE apps (
    id                   TEXT PRIMARY KEY,
    name                 TEXT NOT NULL,
    contact              TEXT NOT NULL,
    api_key_hash         BLOB NOT NULL UNIQUE,
    vapid_public_key     TEXT NOT NULL,
    -- PKCS#8 private key sealed under the master key, bound to the app id.
    vapid_private_sealed BLOB NOT NULL,
    -- Bumped on every regeneration so workers drop cached signers.
    vapid_generation     INTEGER NOT NULL DEFAULT 1,
    max_concurrency      INTEGER NOT NULL CHECK (max_concurrency >= 0),
    last_config_error    TEXT,
    last_config_error_at INTEGER,
    created_at           INTEGER NOT NULL
);

CREATE TABLE subscriptions (
    id               TEXT PRIMARY KEY,
    app_id           TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    user_id          TEXT NOT NULL,
    endpoint         TEXT NOT NULL,
    endpoint_host    TEXT NOT NULL,
    vendor           TEXT NOT NULL,
    p256dh           BLOB NOT NULL,
    auth             BLOB NOT NULL,
    content_encoding TEXT NOT NULL CHECK (content_encoding IN ('aes128gcm', 'aesgcm')),
    topics           TEXT NOT NULL DEFAULT '[]',
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    -- One row per device: the endpoint identifies it.
    UNIQUE (app_id, endpoint)
);
CREATE INDEX subscriptions_by_user ON subscriptions (app_id, user_id);

-- Topic membership, so a topic send is an index lookup.
CREATE TABLE subscription_topics (
    app_id          TEXT NOT NULL,
    topic           TEXT NOT NULL,
    subscription_id TEXT NOT NULL REFERENCES subscriptions(id) ON DELETE CASCADE,
    PRIMARY KEY (app_id, topic, subscription_id)
);
CREATE INDEX subscription_topics_by_subscription ON subscription_topics (subscription_id);

CREATE TABLE notifications (
    id          TEXT PRIMARY KEY,
    app_id      TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    title       TEXT NOT NULL,
    payload     BLOB NOT NULL,
    ttl_secs    INTEGER NOT NULL,
    urgency     TEXT NOT NULL,
    topic_key   TEXT,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);
CREATE INDEX notifications_by_app ON notifications (app_id, created_at);

CREATE TABLE deliveries (
    id                 INTEGER PRIMARY KEY,
    notification_id    TEXT NOT NULL REFERENCES notifications(id) ON DELETE CASCADE,
    app_id             TEXT NOT NULL,
    -- No foreign key: history outlives the subscription it went to.
    subscription_id    TEXT NOT NULL,
    user_id            TEXT NOT NULL,
    endpoint_host      TEXT NOT NULL,
    vendor             TEXT NOT NULL,
    status             TEXT NOT NULL DEFAULT 'pending'
                       CHECK (status IN ('pending', 'in_flight', 'delivered', 'failed', 'gone', 'expired')),
    attempts           INTEGER NOT NULL DEFAULT 0,
    -- Incremented by every claim; outcome writes are fenced by it so a worker
    -- whose lease ran out cannot overwrite a newer result.
    claims             INTEGER NOT NULL DEFAULT 0,
    last_error         TEXT,
    without_topic      INTEGER NOT NULL DEFAULT 0,
    next_attempt_at    INTEGER NOT NULL,
    lease_until        INTEGER,
    expires_at         INTEGER NOT NULL,
    created_at         INTEGER NOT NULL,
    sent_at            INTEGER,
    finished_at        INTEGER,
    UNIQUE (notification_id, subscription_id)
);
CREATE INDEX deliveries_due ON deliveries (app_id, next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_leased ON deliveries (app_id, lease_until) WHERE status = 'in_flight';
CREATE INDEX deliveries_by_subscription ON deliveries (subscription_id) WHERE status IN ('pending', 'in_flight');
CREATE INDEX deliveries_finished ON deliveries (finished_at) WHERE finished_at IS NOT NULL;

-- A repeated Idempotency-Key answers as the first call did; written in the
-- same transaction as the notification it describes.
CREATE TABLE idempotency_keys (
    app_id          TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    key             TEXT NOT NULL,
    notification_id TEXT NOT NULL,
    deliveries      INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    PRIMARY KEY (app_id, key)
);
