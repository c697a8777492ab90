-- Stores a batch of sends to single users with each app locked before its
-- notifications are inserted, not after.
--
-- Each notification's foreign key takes a KEY SHARE lock on its app's row.
-- Taken first, while another instance's store held the same row FOR NO KEY
-- UPDATE (until its synced commit), that share joined the other lock in a
-- MultiXact: a new one for every batch that arrived meanwhile, each logged,
-- written to the MultiXact SLRU and looked up again by every later reader of
-- the row. With three instances storing sends to users of one app,
-- `pg_stat_slru` counted about 5 600 MultiXact lookups in one benchmark
-- phase of 30 000 sends, against none with one instance. Locked first, the
-- app's row is already held by the transaction's own stronger lock when the
-- foreign keys are checked, and no MultiXact is made.
--
-- Otherwise as migration 0005, which says what the function does.
CREATE OR REPLACE FUNCTION herald_store_to_users(
    p_ids TEXT[], p_apps TEXT[], p_titles TEXT[], p_payloads BYTEA[], p_ttls BIGINT[],
    p_urgencies TEXT[], p_topic_keys TEXT[], p_created BIGINT[], p_expires BIGINT[], p_users TEXT[],
    p_now BIGINT, p_lease_until BIGINT, p_budget BIGINT)
RETURNS TABLE (
    leased BOOLEAN,
    id BIGINT, claims BIGINT, attempts BIGINT, app_id TEXT, notification_id TEXT,
    subscription_id TEXT, vendor TEXT, without_topic BOOLEAN, expires_at BIGINT,
    created_at BIGINT, payload BYTEA, ttl_secs BIGINT, urgency TEXT, topic_key TEXT,
    vapid_generation BIGINT, contact TEXT, endpoint TEXT, p256dh BYTEA, auth BYTEA,
    content_encoding TEXT
)
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    v_app TEXT;
    v_max BIGINT;
    v_generation BIGINT;
    v_contact TEXT;
    v_leased BIGINT;
    v_take BIGINT;
    v_budget BIGINT := p_budget;
    v_apps TEXT[] := '{}';
    v_takes BIGINT[] := '{}';
    v_generations BIGINT[] := '{}';
    v_contacts TEXT[] := '{}';
BEGIN
    -- In one order on every instance, so two of them never wait for each
    -- other's locks crosswise.
    FOR v_app IN SELECT DISTINCT a FROM unnest(p_apps) AS a WHERE v_budget > 0 ORDER BY 1
    LOOP
        EXIT WHEN v_budget <= 0;
        SELECT a.max_concurrency, a.vapid_generation, a.contact INTO v_max, v_generation, v_contact
            FROM apps a WHERE a.id = v_app FOR NO KEY UPDATE;
        CONTINUE WHEN NOT FOUND;
        SELECT count(*) INTO v_leased FROM deliveries d
            WHERE d.app_id = v_app AND d.status = 'in_flight' AND d.lease_until > p_now;
        v_take := least(v_max - v_leased, v_budget);
        CONTINUE WHEN v_take <= 0;
        v_apps := v_apps || v_app;
        v_takes := v_takes || v_take;
        v_generations := v_generations || v_generation;
        v_contacts := v_contacts || v_contact;
        v_budget := v_budget - v_take;
    END LOOP;
    -- After the locks: see the top of this file.
    INSERT INTO notifications (id, app_id, title, payload, ttl_secs, urgency, topic_key, created_at, expires_at)
    SELECT * FROM unnest(p_ids, p_apps, p_titles, p_payloads, p_ttls, p_urgencies, p_topic_keys, p_created, p_expires);
    RETURN QUERY
    WITH sends AS (
        SELECT * FROM unnest(p_ids, p_apps, p_payloads, p_ttls, p_urgencies, p_topic_keys, p_created, p_expires, p_users)
            AS u(id, app_id, payload, ttl_secs, urgency, topic_key, created_at, expires_at, user_id)
    ), takes AS (
        SELECT * FROM unnest(v_apps, v_takes, v_generations, v_contacts) AS t(app_id, take, generation, contact)
    ), targets AS (
        SELECT n.id AS notification_id, n.app_id, s.id AS subscription_id, s.user_id, s.endpoint_host, s.vendor,
               n.created_at, n.expires_at,
               row_number() OVER (PARTITION BY n.app_id ORDER BY n.created_at, n.id, s.id) <= coalesce(k.take, 0) AS leased
        FROM sends n
        JOIN subscriptions s ON s.app_id = n.app_id AND s.user_id = n.user_id
        LEFT JOIN takes k ON k.app_id = n.app_id
    ), stored AS (
        INSERT INTO deliveries (notification_id, app_id, subscription_id, user_id, endpoint_host, vendor,
                                next_attempt_at, expires_at, created_at, status, lease_until, claims, sent_at)
        SELECT t.notification_id, t.app_id, t.subscription_id, t.user_id, t.endpoint_host, t.vendor,
               t.created_at, t.expires_at, t.created_at,
               CASE WHEN t.leased THEN 'in_flight' ELSE 'pending' END,
               CASE WHEN t.leased THEN p_lease_until END,
               CASE WHEN t.leased THEN 1 ELSE 0 END,
               CASE WHEN t.leased THEN p_now END
        FROM targets t
        RETURNING *
    )
    SELECT d.status = 'in_flight', d.id, d.claims, d.attempts, d.app_id, d.notification_id, d.subscription_id,
           d.vendor, d.without_topic, d.expires_at, d.created_at,
           l.payload, l.ttl_secs, l.urgency, l.topic_key, l.generation, l.contact,
           l.endpoint, l.p256dh, l.auth, l.content_encoding
    FROM stored d
    -- The leased deliveries' notice and target; the others get nulls.
    LEFT JOIN LATERAL (
        SELECT n.payload, n.ttl_secs, n.urgency, n.topic_key, k.generation, k.contact,
               s.endpoint, s.p256dh, s.auth, s.content_encoding
        FROM sends n, takes k, subscriptions s
        WHERE d.status = 'in_flight' AND n.id = d.notification_id AND k.app_id = d.app_id AND s.id = d.subscription_id
    ) l ON true;
END
$$;
