-- pgbench's peer of figure `pg` (bench/README.md): one call-me acquire and one release of a free declared
-- environment, as a careful SQL client would write them, on call-me's own tables in the same database. Each
-- client cycles over its own environments (client_id, client_id + clients, ...), as the HTTP clients do.
-- The same locks, reads that decide, writes, sequences, events lock and NOTIFY as call-me's store; one
-- statement a round trip, prepared (-M prepared); the commit durable (synchronous_commit on, fsync on).
-- A failed check (a wrong token, a lease already ended) makes \gset find no row: pgbench aborts the run.
\set e :client_id + :clients * random(0, :per_client - 1)

-- acquire: lock the environment, count its live leases and its queue, take a place granted at once, the lease,
-- its event in commit order (the events lock, as _EVENTS_LOCK), the wake-up for other replicas
BEGIN;
SELECT 'env-' || lpad(:e::text, 4, '0') AS env, 'l_' || substr(md5(random()::text), 1, 20) AS lease,
    't_' || md5(random()::text) AS ticket, 'k_' || md5(random()::text) AS token,
    extract(epoch FROM clock_timestamp())::float8 AS now \gset
SELECT * FROM environments WHERE name = :env FOR UPDATE;
SELECT * FROM leases WHERE state = 'active' AND environment = :env ORDER BY acquired_at, fence;
SELECT * FROM tickets WHERE state = 'waiting' AND environment = :env ORDER BY seq;
INSERT INTO tickets (id, seq, key_name, environment, label, holder, ttl, priority, metadata, enqueued_at, seen_at,
    request_id, state, lease_id, ended_at)
    VALUES (:ticket, nextval('ticket_seq'), 'admin', :env, NULL, 'admin', 3600, 0, '{}', :now, :now, NULL,
    'granted', :lease, NULL) RETURNING seq \gset
INSERT INTO leases (id, environment, token, holder, metadata, fence, ttl, acquired_at, expires_at, touched_at,
    key_name, state, ended_at, ticket_id, seq, collect_by)
    VALUES (:lease, :env, :token, 'admin', '{}', nextval('fence_seq'), 3600, :now, :now::float8 + 3600, :now,
    'admin', 'active', NULL, :ticket, :seq, NULL) RETURNING fence \gset
SELECT pg_advisory_xact_lock(:events_lock);
INSERT INTO events (at, kind, environment, lease, seq, fence, holder, actor, detail)
    VALUES (:now, 'acquired', :env, :lease, :seq, :fence, 'admin', 'admin', NULL) RETURNING id AS event \gset
SELECT pg_notify(:channel, '{"e":[' || :event || '],"o":"pgbench","t":["' || :ticket || '"]}');
END;

-- release: find the lease by id and token, lock its environment, read its live leases, end the lease and its
-- ticket, read the queue the freed slot would go to, the event, the wake-up
BEGIN;
SELECT environment, ticket_id, extract(epoch FROM clock_timestamp())::float8 AS now FROM leases
    WHERE id = :lease AND token = :token \gset
SELECT * FROM environments WHERE name = :environment FOR UPDATE;
SELECT * FROM leases WHERE state = 'active' AND environment = :environment ORDER BY acquired_at, fence;
UPDATE leases SET state = 'released', ended_at = :now, collect_by = NULL WHERE id = :lease AND state = 'active'
    RETURNING id AS ended \gset
UPDATE tickets SET ended_at = :now WHERE id = :ticket_id;
SELECT * FROM tickets WHERE state = 'waiting' AND environment = :environment ORDER BY seq;
SELECT pg_advisory_xact_lock(:events_lock);
INSERT INTO events (at, kind, environment, lease, seq, fence, holder, actor, detail)
    VALUES (:now, 'released', :environment, :lease, :seq, :fence, 'admin', 'admin', NULL) RETURNING id AS event \gset
SELECT pg_notify(:channel, '{"e":[' || :event || '],"o":"pgbench","t":[]}');
END;
