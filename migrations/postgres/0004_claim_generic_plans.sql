-- Claims planned once per connection.
--
-- PL/pgSQL plans each statement with the call's values until it trusts a
-- generic plan, and for the claim it kept planning anew: with a constant
-- for `next_attempt_at <= p_now`, the planner reads the ends of the queue's
-- indexes, which after a large send start with entries of deliveries
-- already claimed, and walks them every time. On a synthetic queue (one
-- app, ten deliveries per claim, after two 40 000-delivery sends and no
-- VACUUM since) a claim took 1.43 ms of server time that way, and 0.81 ms
-- as below.
--
-- A generic plan does not know how many deliveries a claim returns, and
-- for the joins that complete the claimed rows it chose hash joins over a
-- scan of every subscription. Each claimed row now reads its notification
-- and subscription through their primary keys (`OFFSET 0` keeps the
-- lateral subqueries from being turned back into joins), and the app's
-- key generation and contact come from the row the claim locks anyway.
CREATE OR REPLACE FUNCTION herald_claim(p_now BIGINT, p_lease_until BIGINT, p_budget BIGINT, p_lapsed BOOLEAN DEFAULT true)
RETURNS TABLE (
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
    v_got BIGINT;
    v_budget BIGINT := p_budget;
BEGIN
    -- Apps with something claimable, read without locks. Each app's
    -- earliest due time is read as ORDER BY … LIMIT 1, which only the partial
    -- indexes answer cheaply: an EXISTS may be planned as a sequential scan
    -- that expects a match early, and walks instead through every finished
    -- delivery still kept as history.
    FOR v_app IN
        SELECT a.id FROM apps a WHERE a.max_concurrency > 0 AND (
            (SELECT d.next_attempt_at FROM deliveries d WHERE d.app_id = a.id AND d.status = 'pending'
                 ORDER BY d.next_attempt_at LIMIT 1) <= p_now
            OR (p_lapsed AND (SELECT d.lease_until FROM deliveries d WHERE d.app_id = a.id AND d.status = 'in_flight'
                 ORDER BY d.lease_until LIMIT 1) <= p_now))
        ORDER BY a.id
    LOOP
        EXIT WHEN v_budget <= 0;
        -- Serialises claimers of this app across instances. NO KEY UPDATE
        -- does not conflict with the key-share locks of inserts referencing
        -- the app.
        SELECT a.max_concurrency, a.vapid_generation, a.contact INTO v_max, v_generation, v_contact
            FROM apps a WHERE a.id = v_app FOR NO KEY UPDATE;
        CONTINUE WHEN NOT FOUND;
        SELECT count(*) INTO v_leased FROM deliveries d
            WHERE d.app_id = v_app AND d.status = 'in_flight' AND d.lease_until > p_now;
        v_take := least(v_max - v_leased, v_budget);
        CONTINUE WHEN v_take <= 0;
        -- Due pending work first, then leases that ran out (a crashed
        -- worker's), when asked to look for them. SKIP LOCKED passes over
        -- rows an outcome write or an admin action holds.
        RETURN QUERY
        WITH due AS (
            SELECT d.id, d.next_attempt_at AS due FROM deliveries d
                WHERE d.app_id = v_app AND d.status = 'pending' AND d.next_attempt_at <= p_now
                ORDER BY d.next_attempt_at LIMIT v_take FOR UPDATE SKIP LOCKED
        ), lapsed AS (
            SELECT d.id, d.lease_until AS due FROM deliveries d
                WHERE p_lapsed AND d.app_id = v_app AND d.status = 'in_flight' AND d.lease_until <= p_now
                ORDER BY d.lease_until LIMIT v_take FOR UPDATE SKIP LOCKED
        ), picked AS (
            SELECT u.id FROM (SELECT * FROM due UNION ALL SELECT * FROM lapsed) u ORDER BY u.due LIMIT v_take
        ), claimed AS (
            UPDATE deliveries d SET status = 'in_flight', lease_until = p_lease_until, claims = d.claims + 1, sent_at = p_now
            FROM picked WHERE d.id = picked.id
            RETURNING d.*
        )
        SELECT d.id, d.claims, d.attempts, d.app_id, d.notification_id, d.subscription_id, d.vendor,
               d.without_topic, d.expires_at, d.created_at,
               n.payload, n.ttl_secs, n.urgency, n.topic_key, v_generation, v_contact,
               s.endpoint, s.p256dh, s.auth, s.content_encoding
        FROM claimed d
        CROSS JOIN LATERAL (
            SELECT n.payload, n.ttl_secs, n.urgency, n.topic_key FROM notifications n
                WHERE n.id = d.notification_id OFFSET 0
        ) n
        LEFT JOIN LATERAL (
            SELECT s.endpoint, s.p256dh, s.auth, s.content_encoding FROM subscriptions s
                WHERE s.id = d.subscription_id OFFSET 0
        ) s ON true
        ORDER BY d.id;
        GET DIAGNOSTICS v_got = ROW_COUNT;
        v_budget := v_budget - v_got;
    END LOOP;
END
$$;
