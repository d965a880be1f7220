"""One versioned schema for both stores: step N migrates a database from version N to N + 1.

Each store applies the steps it has not seen yet at start-up, in one transaction that also records the new
version, so a start-up that fails half-way leaves the database as it was. A step is written once per SQL
dialect; an empty string means that step changes nothing on that store.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..constants import SCHEMA_VERSION


@dataclass(frozen=True)
class Migration:
    what: str
    sqlite: str
    postgres: str


# Until version 3 a granted ticket kept ended_at NULL for ever and was never pruned. The statement reads the
# same in both dialects; it runs once, so the scan of the granted tickets is paid once.
_END_GRANTED_TICKETS = """
UPDATE tickets SET ended_at = (SELECT leases.ended_at FROM leases WHERE leases.id = tickets.lease_id)
WHERE state = 'granted' AND ended_at IS NULL
AND lease_id IN (SELECT id FROM leases WHERE ended_at IS NOT NULL)
"""

# Version 4 (flat cost): `environment_labels` holds one row per label an environment carries (kept in step by
# save_environment and delete_environment), indexed both ways, so that a group is found by walking only the
# labels and environments it reaches; the waiting tickets are found by environment and by label, and the
# sweep finds the leases past a deadline, through partial indexes on the live rows only. Each dialect then
# fills the labels table from the environments' JSON lists of labels.
_FLAT_COST = """
CREATE TABLE environment_labels (
    label TEXT NOT NULL, environment TEXT NOT NULL, PRIMARY KEY (label, environment)
);
CREATE INDEX environment_labels_environment ON environment_labels (environment, label);
CREATE INDEX tickets_waiting_environment ON tickets (environment, seq) WHERE state = 'waiting';
CREATE INDEX tickets_waiting_label ON tickets (label, seq) WHERE state = 'waiting';
CREATE INDEX leases_expiring ON leases (expires_at) WHERE state = 'active';
CREATE INDEX leases_collecting ON leases (collect_by) WHERE state = 'active';
"""
_FILL_LABELS_SQLITE = """
INSERT OR IGNORE INTO environment_labels (label, environment)
SELECT j.value, e.name FROM environments AS e, json_each(e.labels) AS j;
"""
_FILL_LABELS_POSTGRES = """
INSERT INTO environment_labels (label, environment)
SELECT DISTINCT j.label, e.name FROM environments AS e, json_array_elements_text(e.labels::json) AS j(label);
"""
# Also version 4 (bounded history): the background prune finds the ended leases by when they ended (as it finds
# the ended tickets, by tickets_ended), and the auto-created environments unused for long by when they were
# last used (a ticket made for one, a lease on one ended: Tx.touch_environment), each through its own index,
# without a scan. last_used_at is backfilled from the environment's newest event (one lookup per environment
# in events_environment), or its last change if it has none left.
_BOUNDED_HISTORY = """
CREATE INDEX leases_ended ON leases (ended_at) WHERE ended_at IS NOT NULL;
ALTER TABLE environments ADD COLUMN last_used_at {real};
UPDATE environments SET last_used_at = {greatest}(updated_at, COALESCE(
    (SELECT at FROM events WHERE events.environment = environments.name ORDER BY id DESC LIMIT 1), updated_at
)) WHERE auto;
CREATE INDEX environments_idle ON environments (last_used_at) WHERE auto;
"""
_BOUNDED_HISTORY_SQLITE = _BOUNDED_HISTORY.format(real="REAL", greatest="max")
_BOUNDED_HISTORY_POSTGRES = _BOUNDED_HISTORY.format(real="DOUBLE PRECISION", greatest="GREATEST")

# Version 5 (secrets at rest, secret.py): leases granted from now on store no token (an empty one) and tickets
# made from now on store only the public part of their id, which older servers would get wrong (every such lease
# would answer wrong_token), hence a version of its own that they refuse to open. Rows from before keep their token
# and their id until they end. Their request_ids are hashed now, as new ones are (model.request_digest): a
# request_id with its key returns the lease's token, so none may stay readable in a copy of the database. SQLite
# has no SHA-256 of its own: the store gives its connection `callme_request_digest` (the same function).
_HASH_REQUEST_IDS_SQLITE = """
UPDATE tickets SET request_id = callme_request_digest(request_id) WHERE request_id IS NOT NULL
"""
_HASH_REQUEST_IDS_POSTGRES = """
UPDATE tickets SET request_id = 'sha256:' || encode(sha256(convert_to(request_id, 'UTF8')), 'hex')
WHERE request_id IS NOT NULL
"""

# Version 6 (webhooks): the hooks (an admin's or the config file's; the secret sealed with the server secret), and
# the outbox of their deliveries, written in the transaction of the change that causes one, so that nothing
# committed is left unannounced by a crash. Pending deliveries are found by when they are due through a partial
# index; a hook's log by hook and id. A lease and a ticket note when they were announced as held or waiting too
# long (once each); an environment may set its own thresholds for that (NULL: the server's default).
_WEBHOOKS = """
CREATE TABLE webhooks (
    name TEXT PRIMARY KEY, url TEXT NOT NULL, events TEXT NOT NULL, secret TEXT NOT NULL, format TEXT NOT NULL,
    declared {flag} NOT NULL, created_at {real} NOT NULL, updated_at {real} NOT NULL
);
CREATE TABLE webhook_deliveries (
    id {serial}, hook TEXT NOT NULL, event TEXT NOT NULL, environment TEXT, payload TEXT NOT NULL,
    created_at {real} NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL, next_at {real},
    claimed_until {real}, last_status INTEGER, last_error TEXT, delivered_at {real}
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_hook ON webhook_deliveries (hook, id);
CREATE INDEX webhook_deliveries_created ON webhook_deliveries (created_at);
ALTER TABLE leases ADD COLUMN alerted_at {real};
ALTER TABLE tickets ADD COLUMN alerted_at {real};
ALTER TABLE environments ADD COLUMN held_too_long {real};
ALTER TABLE environments ADD COLUMN waiting_too_long {real};
"""
# AUTOINCREMENT: an id is never given again, even once every delivery was deleted with its hook; a receiver tells
# deliveries apart by it, and an attempt still in flight for a deleted one must not meet a new one by its id.
_WEBHOOKS_SQLITE = _WEBHOOKS.format(flag="INTEGER", real="REAL", serial="INTEGER PRIMARY KEY AUTOINCREMENT")
_WEBHOOKS_POSTGRES = _WEBHOOKS.format(flag="BOOLEAN", real="DOUBLE PRECISION", serial="BIGSERIAL PRIMARY KEY")
# Version 7 (groups, docs/api.md "The queue"): a request of several parts has one ticket row per part, each
# carrying the group's id and the seq of its first part (the group's place in the order); the leases granted to
# them carry the group's id, so that the group is renewed and released by it. Rows from before have neither.
_GROUPS = """
ALTER TABLE tickets ADD COLUMN group_id TEXT;
ALTER TABLE tickets ADD COLUMN group_seq {integer};
ALTER TABLE leases ADD COLUMN group_id TEXT;
CREATE INDEX tickets_group ON tickets (group_id) WHERE group_id IS NOT NULL;
CREATE INDEX leases_group ON leases (group_id) WHERE group_id IS NOT NULL;
"""

MIGRATIONS: list[Migration] = [
    Migration(
        what="the first schema: environments, leases, tickets, events and the fence and seq counters",
        sqlite="""
        CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
        INSERT INTO counters VALUES ('fence', 0), ('seq', 0);
        CREATE TABLE environments (
            name TEXT PRIMARY KEY, slots INTEGER NOT NULL, labels TEXT NOT NULL, description TEXT NOT NULL,
            properties TEXT NOT NULL, maintenance INTEGER NOT NULL, note TEXT, auto INTEGER NOT NULL,
            created_at REAL NOT NULL, updated_at REAL NOT NULL
        );
        CREATE TABLE leases (
            id TEXT PRIMARY KEY, environment TEXT NOT NULL, token TEXT NOT NULL, holder TEXT NOT NULL,
            metadata TEXT NOT NULL, fence INTEGER NOT NULL UNIQUE, ttl INTEGER NOT NULL,
            acquired_at REAL NOT NULL, expires_at REAL NOT NULL, touched_at REAL NOT NULL,
            key_name TEXT NOT NULL, state TEXT NOT NULL, ended_at REAL, ticket_id TEXT, seq INTEGER,
            collect_by REAL
        );
        CREATE INDEX leases_live ON leases (environment, acquired_at) WHERE state = 'active';
        CREATE TABLE tickets (
            id TEXT PRIMARY KEY, seq INTEGER NOT NULL UNIQUE, key_name TEXT NOT NULL, environment TEXT,
            label TEXT, holder TEXT NOT NULL, ttl INTEGER NOT NULL, priority INTEGER NOT NULL,
            metadata TEXT NOT NULL, enqueued_at REAL NOT NULL, seen_at REAL NOT NULL, request_id TEXT,
            state TEXT NOT NULL, lease_id TEXT, ended_at REAL
        );
        CREATE UNIQUE INDEX tickets_request ON tickets (key_name, request_id) WHERE request_id IS NOT NULL;
        CREATE INDEX tickets_waiting ON tickets (seen_at) WHERE state = 'waiting';
        CREATE INDEX tickets_ended ON tickets (ended_at) WHERE ended_at IS NOT NULL;
        CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, kind TEXT NOT NULL, environment TEXT,
            lease TEXT, seq INTEGER, fence INTEGER, holder TEXT, actor TEXT, detail TEXT
        );
        CREATE INDEX events_environment ON events (environment, id);
        """,
        # The same tables; JSON stays text (as on SQLite) so both stores give back exactly what they were given.
        postgres="""
        CREATE TABLE counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL);
        INSERT INTO counters VALUES ('fence', 0), ('seq', 0);
        CREATE TABLE environments (
            name TEXT PRIMARY KEY, slots INTEGER NOT NULL, labels TEXT NOT NULL, description TEXT NOT NULL,
            properties TEXT NOT NULL, maintenance BOOLEAN NOT NULL, note TEXT, auto BOOLEAN NOT NULL,
            created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL
        );
        CREATE TABLE leases (
            id TEXT PRIMARY KEY, environment TEXT NOT NULL, token TEXT NOT NULL, holder TEXT NOT NULL,
            metadata TEXT NOT NULL, fence BIGINT NOT NULL UNIQUE, ttl INTEGER NOT NULL,
            acquired_at DOUBLE PRECISION NOT NULL, expires_at DOUBLE PRECISION NOT NULL,
            touched_at DOUBLE PRECISION NOT NULL, key_name TEXT NOT NULL, state TEXT NOT NULL,
            ended_at DOUBLE PRECISION, ticket_id TEXT, seq BIGINT, collect_by DOUBLE PRECISION
        );
        CREATE INDEX leases_live ON leases (environment, acquired_at) WHERE state = 'active';
        CREATE TABLE tickets (
            id TEXT PRIMARY KEY, seq BIGINT NOT NULL UNIQUE, key_name TEXT NOT NULL, environment TEXT,
            label TEXT, holder TEXT NOT NULL, ttl INTEGER NOT NULL, priority INTEGER NOT NULL,
            metadata TEXT NOT NULL, enqueued_at DOUBLE PRECISION NOT NULL, seen_at DOUBLE PRECISION NOT NULL,
            request_id TEXT, state TEXT NOT NULL, lease_id TEXT, ended_at DOUBLE PRECISION
        );
        CREATE UNIQUE INDEX tickets_request ON tickets (key_name, request_id) WHERE request_id IS NOT NULL;
        CREATE INDEX tickets_waiting ON tickets (seen_at) WHERE state = 'waiting';
        CREATE INDEX tickets_ended ON tickets (ended_at) WHERE ended_at IS NOT NULL;
        CREATE TABLE events (
            id BIGSERIAL PRIMARY KEY, at DOUBLE PRECISION NOT NULL, kind TEXT NOT NULL, environment TEXT,
            lease TEXT, seq BIGINT, fence BIGINT, holder TEXT, actor TEXT, detail TEXT
        );
        CREATE INDEX events_environment ON events (environment, id);
        """,
    ),
    Migration(
        what="PostgreSQL: fence and seq come from sequences, not from one counter row every grant must lock",
        # SQLite has one writer that holds the whole database anyway: its counters table stays.
        sqlite="",
        # CACHE 1 (the default) matters: a session-cached sequence would hand out values out of order.
        postgres="""
        CREATE SEQUENCE fence_seq AS BIGINT MINVALUE 1 CACHE 1;
        CREATE SEQUENCE ticket_seq AS BIGINT MINVALUE 1 CACHE 1;
        SELECT setval('fence_seq', value + 1, false) FROM counters WHERE name = 'fence';
        SELECT setval('ticket_seq', value + 1, false) FROM counters WHERE name = 'seq';
        DROP TABLE counters;
        """,
    ),
    Migration(
        what="a granted ticket ends with its lease, so that prune forgets it: backfill those already ended",
        sqlite=_END_GRANTED_TICKETS,
        postgres=_END_GRANTED_TICKETS,
    ),
    Migration(
        what="flat cost: a table of labels to walk a group by, and indexes for every query an operation runs; "
        "bounded history: what the prune finds ended leases and idle auto-created environments by",
        sqlite=_FLAT_COST + _FILL_LABELS_SQLITE + _BOUNDED_HISTORY_SQLITE,
        postgres=_FLAT_COST + _FILL_LABELS_POSTGRES + _BOUNDED_HISTORY_POSTGRES,
    ),
    Migration(
        what="secrets at rest: no clear token or ticket id in new rows, request_ids kept as their SHA-256",
        sqlite=_HASH_REQUEST_IDS_SQLITE,
        postgres=_HASH_REQUEST_IDS_POSTGRES,
    ),
    Migration(
        what="webhooks: the hooks, the outbox and log of their deliveries, and the once-only alerts' marks",
        sqlite=_WEBHOOKS_SQLITE,
        postgres=_WEBHOOKS_POSTGRES,
    ),
    Migration(
        what="groups: the parts of a request for several environments at once, and the leases granted to them",
        sqlite=_GROUPS.format(integer="INTEGER"),
        postgres=_GROUPS.format(integer="BIGINT"),
    ),
]
assert len(MIGRATIONS) == SCHEMA_VERSION


def statements(sql: str) -> list[str]:
    """The statements of one step (no step has a `;` inside a literal)."""
    return [s.strip() for s in sql.split(";") if s.strip()]
