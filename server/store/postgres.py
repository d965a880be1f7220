"""The PostgreSQL store: several server replicas on one database.

Why psycopg 3, synchronous, on a small thread pool: the Tx stays a plain synchronous object as on SQLite, so
the service keeps one code path and an operation stays a pure function of its Tx that can simply be run
again after a serialization failure or deadlock. asyncpg would need an async Tx, a second path through the
service, for little gain: a transaction is a few short statements. Each of the `PG_CONNECTIONS` worker
threads keeps one connection of its own and replaces it when it is lost, which bounds connections and
concurrency per replica; psycopg-pool would only duplicate that (and add threads and a dependency).
A connection is held for one transaction only, never while a client long-polls.

How it stays atomic and serialised: READ COMMITTED transactions; a decision first locks the environment rows
of its group (`Tx.group`: the connected set sharing labels, walked over `environment_labels` so that only the
group is read) FOR UPDATE, in name order, walking again after each round of locks until it is stable.
Decisions that could touch the same slot therefore run one after the other on every replica, and each
statement reads what the one before committed (snapshot
isolation would read from a snapshot taken before the lock wait, and grant one slot twice). A row read before
its lock (a ticket being left, an environment being changed) is written back only if it is unchanged since
(compare-and-set in the UPDATE); if it changed, the whole operation runs again, as after a serialization
failure (40001) or a deadlock (40P01). A new environment is created with INSERT ... ON CONFLICT DO NOTHING:
of two replicas creating it at once, one inserts and the other runs its operation again and finds it.

Time: the database's clock, one clock for all replicas. `clock_timestamp()` is read as the first statement of
each transaction, once per operation (and afresh when an operation runs again after a conflict);
`now()`/`statement_timestamp()` would give the same instant there, but clock_timestamp says what is meant:
the time of the read, not of some earlier start. The read comes before the group's locks, so a decision that
waited for a lock may be made with a time a few milliseconds before the previous decision's: deadlines then
fall a little later, never earlier, which is the safe side. An event is never recorded at a time before the
event recorded before it (`add_event`), so the history stays in order all the same. Steps of the database's
clock are taken out before anything is decided with them (pgclock.py).

Fences and seqs come from sequences (migration 2). The environment rows are locked across a grant, so a later
grant on an environment draws a later `nextval`: fences strictly increase per environment, without a counter
row that would serialise every grant of every replica.

Wake-ups across replicas: the transaction NOTIFYs (delivered only if it commits) the tickets it granted and
the events it recorded (their ids, and the events themselves as far as the payload has room; the others are
read back by id); each replica LISTENs on a connection of its own thread, reconnecting when it is lost,
and hands them to the service on the event loop. They are hints: a parked long-poll also looks again every
`PG_RECHECK` s. With `listen=False` (PgBouncer transaction pooling breaks LISTEN and server-side prepared
statements) there is no LISTEN, no NOTIFY, no prepared statement, and waiters look again every
`PG_RECHECK_POLL_ONLY` s.

Failures: a lost connection is a StoreError (503) and the next operation connects again. A connection found
dead before COMMIT is replaced and the operation run once more (nothing was committed); a failure during
COMMIT is never retried (its outcome is unknown) and a client's retry with its request_id finds the truth.

Identity: the schema carries a random `database_id` (in `meta`), read at open. Every new connection reads it
again: a database dropped and created again (or another one put behind the URL) forces every connection to be
made anew, so it is seen before the first operation on it, and the store is latched broken (health.py) rather
than handing out fences from 1 again. Readiness (health.py): a failed transaction marks the store not ready,
and /readyz's probe, a write that also reads the id back, marks it ready again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from itertools import takewhile
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import DictRow, dict_row
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from ..clock import Clock, Seconds
from ..clock import elapsed as _elapsed
from ..constants import (
    PG_CHANNEL,
    PG_CONNECT_TIMEOUT,
    PG_CONNECTIONS,
    PG_LOCK_TIMEOUT,
    PG_RECHECK,
    PG_RECHECK_POLL_ONLY,
    PG_RETRIES,
    PG_RETRY_BACKOFF_FIRST,
    PG_RETRY_BACKOFF_MAX,
    SCHEMA_VERSION,
)
from ..model import Delivery, Environment, Event, Lease, Ticket, Webhook
from .base import StoreBroken, StoreError, redact
from .health import WriteHealth
from .migrations import MIGRATIONS, statements
from .pgclock import DatabaseClock
from .rows import (
    DELIVERY_COLUMNS,
    DELIVERY_INSERT_COLUMNS,
    ENV_COLUMNS,
    EVENT_COLUMNS,
    EVENT_INSERT_COLUMNS,
    LEASE_COLUMNS,
    TICKET_COLUMNS,
    WEBHOOK_COLUMNS,
    delivery_from,
    dump,
    env_from,
    event_from,
    event_values,
    lease_from,
    lease_values,
    ticket_from,
    ticket_values,
    webhook_from,
    webhook_values,
)

log = logging.getLogger("callme.store")
T = TypeVar("T")
Hook = Callable[[Sequence[str], Sequence[Event]], None]
Connection = psycopg.Connection[DictRow]

_MIGRATION_LOCK = 0x63616C6C6D65  # pg_advisory_xact_lock key ("callme"): one replica migrates at a time
# Taken by a transaction just before its first event, held to its commit: event ids are then drawn in
# commit order, so a reader that has seen id N has seen every event below N (SSE resume by id relies on
# it). Events are the last writes of an operation, so the lock covers only the insert and the commit.
_EVENTS_LOCK = 0x63616C6C6D66
_GROUP_ROUNDS = 20
_NOTIFY_CHUNK = 100  # ids per NOTIFY: well under PostgreSQL's 8000-byte payload limit
_NOTIFY_BYTES = 7000  # what a NOTIFY's payload may reach with the events it carries (PostgreSQL: < 8000)
_EVENT_FIELDS = [name.strip() for name in EVENT_COLUMNS.split(",")]
_UNSEEN = object()


class _Conflict(Exception):
    """A row changed between this operation's read and its write: the operation runs again."""


class _ConnectionLost(StoreError):
    """The connection was found dead before COMMIT: nothing was committed."""


# A unique violation is a race lost to another replica (two first requests with one request_id): run again,
# and find what the other one made.
_CONFLICTS = (_Conflict, pg_errors.SerializationFailure, pg_errors.DeadlockDetected, pg_errors.UniqueViolation)


def is_conflict(exc: BaseException) -> bool:
    """A conflict with a concurrent operation, rolled back: running the operation again may succeed."""
    return isinstance(exc, _CONFLICTS)


def retry_conflicts(attempt: Callable[[], T], *, sleep: Callable[[float], None] = time.sleep) -> T:
    """`attempt()`, run again after each conflict up to PG_RETRIES attempts in all; then a StoreError (503)
    from the last conflict. Any other error surfaces at once."""
    retrying = Retrying(
        stop=stop_after_attempt(PG_RETRIES),
        # Exponential, jittered: with a linear step, a few replicas re-reading one row kept meeting and one of
        # them could lose every attempt.
        wait=wait_random_exponential(multiplier=PG_RETRY_BACKOFF_FIRST, max=PG_RETRY_BACKOFF_MAX),
        retry=retry_if_exception(is_conflict),
        sleep=sleep,
        reraise=True,
    )
    try:
        return retrying(attempt)
    except _CONFLICTS as exc:
        raise StoreError(f"gave up after {PG_RETRIES} conflicting attempts: {_reason(exc)}") from exc


def _reason(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _locked_env(env: Environment | None) -> Environment:
    """An environment of a group this transaction holds locked: only this transaction could have removed it."""
    assert env is not None
    return env


def _lease_state(lease: Lease) -> tuple[Any, ...]:
    return (lease.expires_at, lease.touched_at, lease.ttl, lease.state, lease.ended_at, lease.collect_by)


def _ticket_state(ticket: Ticket) -> tuple[Any, ...]:
    return (ticket.seen_at, ticket.state, ticket.lease_id, ticket.ended_at)


class PostgresTx:
    # The group, walked and locked in one statement: the named environments and the given labels, then
    # alternately the labels of the environments reached and the environments carrying the labels reached,
    # until nothing new is reached (UNION drops what was reached before). Its environment rows are locked FOR
    # UPDATE in name order (ORDER BY under FOR UPDATE) and read as they are once locked.
    _GROUP_WALK = """
        WITH RECURSIVE node(kind, name) AS (
            {start}
            UNION SELECT step.kind, step.name FROM node, LATERAL (
                SELECT 'l'::text, l.label FROM environment_labels AS l
                WHERE node.kind = 'e' AND l.environment = node.name
                UNION ALL
                SELECT 'e'::text, l.environment FROM environment_labels AS l
                WHERE node.kind = 'l' AND l.label = node.name
            ) AS step (kind, name)
        )
        SELECT {columns} FROM environments WHERE name = ANY(ARRAY(SELECT name FROM node WHERE kind = 'e'))
        ORDER BY name FOR UPDATE OF environments
    """
    _GROUP = _GROUP_WALK.format(
        start="SELECT 'e'::text, name FROM environments WHERE name = ANY(%(names)s::text[]) "
        "UNION SELECT 'l'::text, label FROM unnest(%(labels)s::text[]) AS label",
        columns=ENV_COLUMNS,
    )
    # The same from one environment (most operations): PostgreSQL re-plans a prepared statement at every run
    # while its generic plan looks dearer than one made for the values, which it does with `= ANY(array)`, an
    # array of unknown size; with `= %s` the generic plan is as cheap, so it is planned once per connection.
    _GROUP_OF_ONE = _GROUP_WALK.format(
        start="SELECT 'e'::text, name FROM environments WHERE name = %(name)s", columns=ENV_COLUMNS
    )
    # The same without the lock, for a transaction that only reads (Store.read).
    _GROUP_SEEN = _GROUP.replace("FOR UPDATE OF environments", "")
    _GROUP_OF_ONE_SEEN = _GROUP_OF_ONE.replace("FOR UPDATE OF environments", "")
    # Two lookups, each through its partial index on the waiting tickets, rather than one OR that reads them
    # all; the second leaves out what the first found.
    _WAITING = f"""
        SELECT {TICKET_COLUMNS} FROM tickets WHERE state = 'waiting' AND environment = ANY(%(envs)s::text[])
        UNION ALL
        SELECT {TICKET_COLUMNS} FROM tickets WHERE state = 'waiting' AND label = ANY(%(labels)s::text[])
        AND (environment IS NULL OR NOT environment = ANY(%(envs)s::text[]))
        ORDER BY seq
    """

    row_locks = True

    def __init__(self, conn: Connection, now: float, *, read_only: bool = False) -> None:
        self._conn = conn
        self._now = now
        self._read_only = read_only
        self._locked: set[str] = set()
        self._groups: dict[tuple[tuple[str, ...], tuple[str, ...]], list[str]] = {}  # group() -> names, while locked
        # What this transaction last read or wrote of each row it may write back (for compare-and-set).
        self._envs: dict[str, Environment | None] = {}
        self._leases: dict[str, tuple[Any, ...]] = {}
        self._tickets: dict[str, tuple[Any, ...]] = {}
        self.granted: list[str] = []
        self.recorded: list[Event] = []  # the events added, with their ids

    def now(self) -> float:
        return self._now

    def _all(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[DictRow]:
        return self._conn.execute(sql, params).fetchall()

    def _one(self, sql: str, params: Sequence[Any] = ()) -> DictRow | None:
        return self._conn.execute(sql, params).fetchone()

    def _seen_env(self, env: Environment) -> Environment:
        self._envs[env.name] = env
        return env

    def _seen_lease(self, lease: Lease) -> Lease:
        self._leases[lease.id] = _lease_state(lease)
        return lease

    def _seen_ticket(self, ticket: Ticket) -> Ticket:
        self._tickets[ticket.id] = _ticket_state(ticket)
        return ticket

    def environments(self) -> list[Environment]:
        rows = self._all(f"SELECT {ENV_COLUMNS} FROM environments ORDER BY name")
        return [self._seen_env(env_from(r)) for r in rows]

    def environment(self, name: str) -> Environment | None:
        row = self._one(f"SELECT {ENV_COLUMNS} FROM environments WHERE name = %s", (name,))
        if row is None:
            self._envs[name] = None
            return None
        return self._seen_env(env_from(row))

    def group(self, names: Iterable[str], labels: Iterable[str]) -> list[Environment]:
        params = {"names": sorted(set(names)), "labels": sorted(set(labels))}
        key = (tuple(params["names"]), tuple(params["labels"]))
        if key in self._groups:
            # Walked and locked by this transaction already: while its rows stay locked nothing joins or leaves
            # the group (a change of labels locks the groups it touches first), and this transaction's own
            # changes of environments forget the groups kept (save_environment, delete_environment).
            return [self._seen_env(_locked_env(self._envs.get(name))) for name in self._groups[key]]
        values: Mapping[str, object] = params
        sql = self._GROUP
        if len(params["names"]) == 1 and not params["labels"]:
            sql, values = self._GROUP_OF_ONE, {"name": params["names"][0]}
        if self._read_only:  # a snapshot: one walk sees one state, and nothing may be locked
            unlocked = self._GROUP_SEEN if sql is self._GROUP else self._GROUP_OF_ONE_SEEN
            return [self._seen_env(env_from(r)) for r in self._all(unlocked, values)]
        for _ in range(_GROUP_ROUNDS):
            envs = [env_from(r) for r in self._all(sql, values)]
            found = [env.name for env in envs]
            # Stable when every environment found was locked before this walk began: their labels cannot have
            # changed since (a change of labels locks the environment first), and an environment gaining a
            # label of the group locks the group before it writes (save_environment). Otherwise labels may
            # have changed while we waited for a lock: walk again from what is committed now. Also stable at
            # once when no label is asked for and the named environments, all found and read as locked, carry
            # none: the group is then those environments alone, and it stays so while they are locked.
            stable = self._locked.issuperset(found) or (
                not params["labels"] and set(found) == set(params["names"]) and not any(env.labels for env in envs)
            )
            self._locked.update(found)
            if stable:
                self._groups[key] = found
                return [self._seen_env(env) for env in envs]
        raise _Conflict("the group of environments kept changing while it was being locked")

    def peek_group(self, names: Iterable[str], labels: Iterable[str]) -> list[Environment]:
        params = {"names": sorted(set(names)), "labels": sorted(set(labels))}
        return [env_from(r) for r in self._all(self._GROUP_SEEN, params)]

    def save_environment(self, env: Environment) -> None:
        base = self._envs.get(env.name, _UNSEEN)
        # Lock it (if it exists) with its group and the groups of its new labels, in name order, before any
        # of them gains a label through this change.
        self.group([env.name], env.labels)
        current = self._envs.get(env.name) if env.name in self._locked else None
        if base is not _UNSEEN and base != current:
            raise _Conflict(f"environment {env.name} changed since it was read")
        values = (
            env.slots,
            dump(list(env.labels)),
            env.description,
            dump(env.properties),
            env.maintenance,
            env.note,
            env.auto,
            env.created_at,
            env.updated_at,
            env.held_too_long,
            env.waiting_too_long,
            env.name,
        )
        if env.name in self._locked:
            self._conn.execute(
                "UPDATE environments SET slots = %s, labels = %s, description = %s, properties = %s, "
                "maintenance = %s, note = %s, auto = %s, created_at = %s, updated_at = %s, held_too_long = %s, "
                "waiting_too_long = %s WHERE name = %s",
                values,
            )
        else:
            row = self._one(
                "INSERT INTO environments (slots, labels, description, properties, maintenance, note, auto, "
                "created_at, updated_at, held_too_long, waiting_too_long, name) "
                "VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) "
                "ON CONFLICT (name) DO NOTHING RETURNING name",
                values,
            )
            if row is None:
                raise _Conflict(f"environment {env.name} was created by another operation meanwhile")
            self._locked.add(env.name)
        if set(env.labels) != set(current.labels if current is not None else ()):
            labels = list(env.labels)
            self._conn.execute(
                "DELETE FROM environment_labels WHERE environment = %s AND NOT label = ANY(%s::text[])",
                (env.name, labels),
            )
            self._conn.execute(
                "INSERT INTO environment_labels (label, environment) SELECT unnest(%s::text[]), %s "
                "ON CONFLICT DO NOTHING",
                (labels, env.name),
            )
        self._envs[env.name] = env
        self._groups.clear()

    def delete_environment(self, name: str) -> None:
        self._conn.execute("DELETE FROM environments WHERE name = %s", (name,))
        self._conn.execute("DELETE FROM environment_labels WHERE environment = %s", (name,))
        self._envs[name] = None
        self._groups.clear()

    def touch_environment(self, name: str, at: float) -> None:
        self._conn.execute("UPDATE environments SET last_used_at = %s WHERE name = %s AND auto", (at, name))

    def idle_auto_environments(self, before: float, limit: int) -> list[str]:
        rows = self._all(
            "SELECT name FROM environments WHERE auto AND last_used_at < %s ORDER BY last_used_at LIMIT %s",
            (before, limit),
        )
        return [r["name"] for r in rows]

    def lease(self, lease_id: str) -> Lease | None:
        row = self._one(f"SELECT {LEASE_COLUMNS} FROM leases WHERE id = %s", (lease_id,))
        return self._seen_lease(lease_from(row)) if row else None

    def live_leases(self, environments: Sequence[str]) -> list[Lease]:
        # `= %s` for one environment (most operations): planned once per connection, as _GROUP_OF_ONE.
        where, value = ("= %s", environments[0]) if len(environments) == 1 else ("= ANY(%s)", list(environments))
        rows = self._all(
            f"SELECT {LEASE_COLUMNS} FROM leases WHERE state = 'active' AND environment {where} "
            "ORDER BY acquired_at, fence",
            (value,),
        )
        return [self._seen_lease(lease_from(r)) for r in rows]

    def oldest_live_lease(self, environment: str, key_name: str | None) -> Lease | None:
        sql = f"SELECT {LEASE_COLUMNS} FROM leases WHERE state = 'active' AND environment = %s"
        params: list[Any] = [environment]
        if key_name is not None:
            sql += " AND key_name = %s"
            params.append(key_name)
        row = self._one(sql + " ORDER BY acquired_at, fence LIMIT 1", params)
        return self._seen_lease(lease_from(row)) if row else None

    def insert_lease(self, lease: Lease) -> None:
        self._conn.execute(
            f"INSERT INTO leases ({LEASE_COLUMNS}) VALUES ({','.join(['%s'] * 17)})",
            lease_values(lease),
        )
        self._seen_lease(lease)

    def update_lease(self, lease: Lease) -> None:
        sql = (
            "UPDATE leases SET expires_at = %s, touched_at = %s, ttl = %s, state = %s, ended_at = %s, "
            "collect_by = %s WHERE id = %s"
        )
        params: list[Any] = [*_lease_state(lease), lease.id]
        before = self._leases.get(lease.id)
        if before is not None:
            sql += (
                " AND (expires_at, touched_at, ttl, state, ended_at, collect_by) IS NOT DISTINCT FROM "
                "(%s::float8, %s::float8, %s::integer, %s::text, %s::float8, %s::float8)"
            )
            params.extend(before)
        if self._one(sql + " RETURNING id", params) is None:
            raise _Conflict(f"lease {lease.id} changed since it was read")
        self._seen_lease(lease)

    def ticket(self, ticket_id: str) -> Ticket | None:
        row = self._one(f"SELECT {TICKET_COLUMNS} FROM tickets WHERE id = %s", (ticket_id,))
        return self._seen_ticket(ticket_from(row)) if row else None

    def ticket_by_request(self, key_name: str, request_id: str) -> Ticket | None:
        row = self._one(
            f"SELECT {TICKET_COLUMNS} FROM tickets WHERE key_name = %s AND request_id = %s",
            (key_name, request_id),
        )
        return self._seen_ticket(ticket_from(row)) if row else None

    def waiting_tickets(self, environments: Sequence[str], labels: Sequence[str]) -> list[Ticket]:
        rows = self._all(self._WAITING, {"envs": list(environments), "labels": list(labels)})
        return [self._seen_ticket(ticket_from(r)) for r in rows]

    def group_tickets(self, group_id: str) -> list[Ticket]:
        rows = self._all(f"SELECT {TICKET_COLUMNS} FROM tickets WHERE group_id = %s ORDER BY seq", (group_id,))
        return [self._seen_ticket(ticket_from(r)) for r in rows]

    def group_leases(self, group_id: str) -> list[Lease]:
        rows = self._all(f"SELECT {LEASE_COLUMNS} FROM leases WHERE group_id = %s ORDER BY seq", (group_id,))
        return [self._seen_lease(lease_from(r)) for r in rows]

    def insert_ticket(self, ticket: Ticket) -> None:
        self._conn.execute(
            f"INSERT INTO tickets ({TICKET_COLUMNS}) VALUES ({','.join(['%s'] * 17)})",
            ticket_values(ticket),
        )
        self._seen_ticket(ticket)

    def update_ticket(self, ticket: Ticket) -> None:
        sql = "UPDATE tickets SET seen_at = %s, state = %s, lease_id = %s, ended_at = %s WHERE id = %s"
        params: list[Any] = [*_ticket_state(ticket), ticket.id]
        before = self._tickets.get(ticket.id)
        if before is not None:
            sql += (
                " AND (seen_at, state, lease_id, ended_at) IS NOT DISTINCT FROM "
                "(%s::float8, %s::text, %s::text, %s::float8)"
            )
            params.extend(before)
        if self._one(sql + " RETURNING id", params) is None:
            raise _Conflict(f"ticket #{ticket.seq} changed since it was read")
        if ticket.state == "granted" and (before is None or before[1] != "granted"):
            self.granted.append(ticket.id)
        self._seen_ticket(ticket)

    def _next(self, sequence: str) -> int:
        row = self._one("SELECT nextval(%s) AS value", (sequence,))
        assert row is not None
        return int(row["value"])

    def next_fence(self) -> int:
        return self._next("fence_seq")

    def next_seq(self) -> int:
        return self._next("ticket_seq")

    def add_event(self, event: Event) -> int:
        if not self.recorded:
            self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_EVENTS_LOCK,))
        # Under the lock every event recorded before this one has committed: its time is never earlier than
        # theirs, though a transaction on another thread or replica read the clock a little later than this one.
        row = self._one(
            f"INSERT INTO events ({EVENT_INSERT_COLUMNS}) VALUES (GREATEST(%s, (SELECT at FROM events ORDER BY id DESC"
            " LIMIT 1)),%s,%s,%s,%s,%s,%s,%s,%s) RETURNING id",
            event_values(event),
        )
        assert row is not None
        self.recorded.append(replace(event, id=int(row["id"])))
        return int(row["id"])

    def events(self, environment: str | None, limit: int) -> list[Event]:
        if environment is None:
            rows = self._all(f"SELECT {EVENT_COLUMNS} FROM events ORDER BY id DESC LIMIT %s", (limit,))
        else:
            rows = self._all(
                f"SELECT {EVENT_COLUMNS} FROM events WHERE environment = %s ORDER BY id DESC LIMIT %s",
                (environment, limit),
            )
        return [event_from(r) for r in rows]

    def events_after(self, after: int, limit: int) -> list[Event]:
        # Ids are drawn in commit order (see _EVENTS_LOCK), so nothing below `after` can still appear.
        rows = self._all(f"SELECT {EVENT_COLUMNS} FROM events WHERE id > %s ORDER BY id LIMIT %s", (after, limit))
        return [event_from(r) for r in rows]

    def due(self, now: float, grace: float) -> tuple[list[str], list[str]]:
        # One lookup per deadline, each through its partial index on the live leases.
        envs = self._all(
            "SELECT environment FROM leases WHERE state = 'active' AND expires_at <= %s "
            "UNION SELECT environment FROM leases WHERE state = 'active' AND collect_by <= %s",
            (now, now),
        )
        tickets = self._all(
            "SELECT DISTINCT environment, label FROM tickets WHERE state = 'waiting' AND seen_at <= %s",
            (now - grace,),
        )
        names = {r["environment"] for r in envs} | {r["environment"] for r in tickets if r["environment"]}
        labels = {r["label"] for r in tickets if r["label"] is not None}
        return sorted(names), sorted(labels)

    def webhooks(self) -> list[Webhook]:
        return [webhook_from(r) for r in self._all(f"SELECT {WEBHOOK_COLUMNS} FROM webhooks ORDER BY name")]

    def webhook(self, name: str) -> Webhook | None:
        row = self._one(f"SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE name = %s", (name,))
        return webhook_from(row) if row else None

    def save_webhook(self, hook: Webhook) -> None:
        self._conn.execute(
            f"INSERT INTO webhooks ({WEBHOOK_COLUMNS}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (name) DO UPDATE "
            "SET url = excluded.url, events = excluded.events, secret = excluded.secret, format = excluded.format, "
            "declared = excluded.declared, created_at = excluded.created_at, updated_at = excluded.updated_at",
            webhook_values(hook),
        )

    def delete_webhook(self, name: str) -> bool:
        self._conn.execute("DELETE FROM webhook_deliveries WHERE hook = %s", (name,))
        return self._conn.execute("DELETE FROM webhooks WHERE name = %s", (name,)).rowcount > 0

    def add_delivery(self, hook: str, event: str, environment: str | None, payload: str, at: float) -> int:
        row = self._one(
            f"INSERT INTO webhook_deliveries ({DELIVERY_INSERT_COLUMNS}) VALUES (%s,%s,%s,%s,%s,'pending',0,%s) "
            "RETURNING id",
            (hook, event, environment, payload, at, at),
        )
        assert row is not None
        return int(row["id"])

    def claim_deliveries(
        self, now: float, until: float, limit: int, lapsed: float, skip_hooks: Sequence[str] = ()
    ) -> list[Delivery]:
        # SKIP LOCKED: replicas claiming at once each take other rows, and none waits for another's claim; the
        # claimed_until they write keeps a delivery in flight from being claimed again after their commit.
        rows = self._all(
            "UPDATE webhook_deliveries SET claimed_until = %s WHERE id IN (SELECT id FROM webhook_deliveries "
            "WHERE state = 'pending' AND next_at <= %s AND (claimed_until IS NULL OR claimed_until < %s) "
            "AND NOT hook = ANY(%s::text[]) "
            f"ORDER BY next_at LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING {DELIVERY_COLUMNS}",
            (until, now, lapsed, list(skip_hooks), limit),
        )
        return sorted((delivery_from(r) for r in rows), key=lambda d: (d.next_at or 0, d.id))

    def due_deliveries(
        self, now: float, limit: int, skip_ids: Sequence[int] = (), skip_hooks: Sequence[str] = ()
    ) -> list[Delivery]:
        rows = self._all(
            f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE state = 'pending' AND next_at <= %s "
            "AND NOT id = ANY(%s::bigint[]) AND NOT hook = ANY(%s::text[]) ORDER BY next_at, id LIMIT %s",
            (now, list(skip_ids), list(skip_hooks), limit),
        )
        return [delivery_from(r) for r in rows]

    def finish_attempt(self, delivery: Delivery) -> None:
        d = delivery
        self._conn.execute(
            "UPDATE webhook_deliveries SET state = %s, attempts = %s, next_at = %s, claimed_until = NULL, "
            "last_status = %s, last_error = %s, delivered_at = %s WHERE id = %s",
            (d.state, d.attempts, d.next_at, d.last_status, d.last_error, d.delivered_at, d.id),
        )

    def deliveries(self, hook: str, limit: int) -> list[Delivery]:
        rows = self._all(
            f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE hook = %s ORDER BY id DESC LIMIT %s",
            (hook, limit),
        )
        return [delivery_from(r) for r in rows]

    def overdue_leases(self, now: float, default: float, limit: int) -> list[Lease]:
        columns = ", ".join(f"l.{c.strip()}" for c in LEASE_COLUMNS.split(","))
        rows = self._all(
            f"SELECT {columns} FROM leases AS l JOIN environments AS e ON e.name = l.environment "
            "WHERE l.state = 'active' AND l.alerted_at IS NULL "
            "AND l.acquired_at <= %s - COALESCE(e.held_too_long, %s) ORDER BY l.acquired_at LIMIT %s",
            (now, default, limit),
        )
        return [lease_from(r) for r in rows]

    def overdue_tickets(self, now: float, default: float, limit: int) -> list[Ticket]:
        columns = ", ".join(f"t.{c.strip()}" for c in TICKET_COLUMNS.split(","))
        rows = self._all(
            f"SELECT {columns} FROM tickets AS t LEFT JOIN environments AS e ON e.name = t.environment "
            "WHERE t.state = 'waiting' AND t.alerted_at IS NULL "
            "AND t.enqueued_at <= %s - COALESCE(e.waiting_too_long, %s) ORDER BY t.seq LIMIT %s",
            (now, default, limit),
        )
        return [ticket_from(r) for r in rows]

    def mark_alerted(self, lease_id: str | None, ticket_id: str | None, at: float) -> bool:
        # Under READ COMMITTED a second replica's UPDATE waits for the first's row lock, then finds it noted.
        table, row_id = ("leases", lease_id) if lease_id is not None else ("tickets", ticket_id)
        sql = f"UPDATE {table} SET alerted_at = %s WHERE id = %s AND alerted_at IS NULL RETURNING id"
        return self._one(sql, (at, row_id)) is not None

    def prune_deliveries(self, before: float, limit: int) -> int:
        sql = (
            "DELETE FROM webhook_deliveries WHERE id IN (SELECT id FROM webhook_deliveries WHERE created_at < %s "
            "AND state <> 'pending' ORDER BY created_at LIMIT %s FOR UPDATE SKIP LOCKED)"
        )
        return self._conn.execute(sql, (before, limit)).rowcount

    # Replicas prune at once without waiting for each other: each skips the rows another one is deleting.
    def prune_tickets(self, before: float, limit: int) -> int:
        sql = (
            "DELETE FROM tickets WHERE id IN (SELECT id FROM tickets WHERE ended_at < %s "
            "ORDER BY ended_at LIMIT %s FOR UPDATE SKIP LOCKED)"
        )
        return self._conn.execute(sql, (before, limit)).rowcount

    def prune_leases(self, before: float, limit: int) -> int:
        sql = (
            "DELETE FROM leases WHERE id IN (SELECT id FROM leases WHERE ended_at < %s "
            "ORDER BY ended_at LIMIT %s FOR UPDATE SKIP LOCKED)"
        )
        return self._conn.execute(sql, (before, limit)).rowcount

    def prune_events(self, before: float, limit: int) -> int:
        # Found by id (the primary key), not by time, which has no index: the oldest first, and only as far as
        # they are all old. Ids are drawn in commit order (_EVENTS_LOCK): none below the last one read can
        # still appear.
        rows = self._all("SELECT id, at FROM events ORDER BY id LIMIT %s", (limit,))
        old = list(takewhile(lambda r: r["at"] < before, rows))
        if not old:
            return 0
        sql = "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE id <= %s FOR UPDATE SKIP LOCKED)"
        return self._conn.execute(sql, (old[-1]["id"],)).rowcount

    def probe(self) -> str | None:
        """A write that changes nothing (for /readyz); returns the database's id, which it proves is still there."""
        row = self._one("UPDATE meta SET value = value WHERE key = 'database_id' RETURNING value")
        return str(row["value"]) if row else None

    def publish(self, origin: str) -> None:
        """NOTIFY the other replicas of what this transaction granted and recorded (sent only on commit): the
        tickets granted, the ids of the events and, as far as the payload has room, the events themselves
        (`v`), so that the other replicas need not read them back, one query each per wake-up."""
        for i in range(0, max(len(self.granted), len(self.recorded)), _NOTIFY_CHUNK):
            events = self.recorded[i : i + _NOTIFY_CHUNK]
            payload: dict[str, Any] = {"o": origin, "t": self.granted[i : i + _NOTIFY_CHUNK], "e": [], "v": []}
            size = len(dump(payload))
            for event in events:
                payload["e"].append(event.id)
                size += len(str(event.id)) + 1
            for event in events:
                values = dump([getattr(event, name) for name in _EVENT_FIELDS])
                if size + len(values) + 1 > _NOTIFY_BYTES:
                    break  # the rest are read back by id
                payload["v"].append(json.loads(values))
                size += len(values) + 1
            self._conn.execute("SELECT pg_notify(%s, %s)", (PG_CHANNEL, dump(payload)))


class PostgresStore:
    """The store for several replicas; see the module docstring for how it stays atomic across them."""

    def __init__(
        self,
        url: str,
        *,
        listen: bool = True,
        clock: Clock | None = None,
        connections: int = PG_CONNECTIONS,
        sleep: Callable[[float], None] = time.sleep,
        elapsed: Seconds | None = None,
    ) -> None:
        self.url = url
        self.listen = listen
        # Tests only: a FakeClock instead of the database's clock, so that rule-level tests can move time (and
        # the elapsed time it is checked against for steps follows it, unless a test gives one of its own).
        self._clock = DatabaseClock(elapsed or (clock.now if clock is not None else _elapsed), clock)
        # The pause between conflicting attempts; on the worker threads, hence a blocking sleep.
        self._sleep = sleep
        self.recheck_interval: float | None = PG_RECHECK if listen else PG_RECHECK_POLL_ONLY
        self.started_at = 0.0
        self._executor = ThreadPoolExecutor(max_workers=connections, thread_name_prefix="callme-pg")
        self._local = threading.local()
        self._conns: set[Connection] = set()
        self._conns_lock = threading.Lock()
        self._hooks: list[Hook] = []
        self._origin = secrets.token_hex(8)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._listener: threading.Thread | None = None
        self._timeouts = (f"{int(PG_LOCK_TIMEOUT * 1000)}ms", f"{int(PG_LOCK_TIMEOUT * 3000)}ms")
        self._database_id: str | None = None  # read at open; every connection made after checks it
        self._health = WriteHealth()

    def __repr__(self) -> str:
        return f"PostgresStore({redact(self.url)!r}, listen={self.listen})"

    def subscribe(self, hook: Hook) -> None:
        self._hooks.append(hook)

    # -- connections ------------------------------------------------------------------------------------

    def _connect(self, *, autocommit: bool = False) -> Connection:
        try:
            return psycopg.connect(
                self.url,
                autocommit=autocommit,
                row_factory=dict_row,
                connect_timeout=PG_CONNECT_TIMEOUT,
                application_name="call-me",
                # PgBouncer in transaction pooling mode loses server-side prepared statements between
                # transactions: the poll-only mode, meant for it, never prepares.
                prepare_threshold=5 if self.listen else None,
            )
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to PostgreSQL at {redact(self.url)}: {_reason(exc)}") from exc

    def _conn(self) -> Connection:
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                self._drop(conn)
            conn = self._connect()
            if self._database_id is not None:
                self._check_identity(conn)
            self._local.conn = conn
            with self._conns_lock:
                self._conns.add(conn)
        return conn

    def _check_identity(self, conn: Connection) -> None:
        """Latch the store broken, and close `conn`, unless its database is the one this store opened."""
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'database_id'").fetchone()
            conn.rollback()
        except pg_errors.UndefinedTable:
            row = None
        except psycopg.Error as exc:
            with contextlib.suppress(psycopg.Error):
                conn.close()
            raise StoreError(f"database error: {_reason(exc)}") from exc
        found = row["value"] if row else None
        if found != self._database_id:
            with contextlib.suppress(psycopg.Error):
                conn.close()
            raise self._health.break_(
                f"the database behind CALL_ME_DATABASE is not the one this server opened (database id "
                f"{self._database_id}, now {found or 'none'}: dropped and created again, or replaced); changes "
                "are refused, since fences would start again below those handed out: restore the database and "
                "restart the server"
            )

    def _drop(self, conn: Connection) -> None:
        with contextlib.suppress(psycopg.Error):
            conn.close()
        with self._conns_lock:
            self._conns.discard(conn)
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None

    def _rollback(self, conn: Connection) -> None:
        with contextlib.suppress(psycopg.Error):
            conn.rollback()
        if conn.broken or conn.closed:
            self._drop(conn)

    # -- transactions -----------------------------------------------------------------------------------

    def _run(self, fn: Callable[[PostgresTx], T], read_only: bool = False) -> T:
        reconnected = False

        def attempt() -> T:
            nonlocal reconnected
            try:
                return self._transaction(fn, read_only)
            except _ConnectionLost:
                if reconnected:
                    raise
                # Found dead (PostgreSQL restarted since its last use): nothing was committed, run again, once.
                reconnected = True
                return self._transaction(fn, read_only)

        return retry_conflicts(attempt, sleep=self._sleep)

    def _transaction(self, fn: Callable[[PostgresTx], T], read_only: bool = False) -> T:
        """One attempt: BEGIN, the operation, COMMIT on this thread's connection; rolled back unless committed."""
        conn = self._conn()
        try:
            if read_only:
                # One snapshot for every statement, so that a read sees one state without locking what decisions
                # lock (it neither waits for them nor holds them up), and READ ONLY, so that a database that
                # refuses writes (a standby after a fail-over) still serves it.
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            now = self._clock.begin(conn, self._timeouts, read_only=read_only)
            if now is None:
                raise _Conflict("a step of the database's clock was taken out: read it again")
            tx = PostgresTx(conn, now, read_only=read_only)
            result = fn(tx)
            if self.listen and not read_only:
                tx.publish(self._origin)
        except BaseException as exc:
            lost = conn.broken or conn.closed
            self._rollback(conn)
            if isinstance(exc, psycopg.Error) and not is_conflict(exc):
                raise (_ConnectionLost if lost else StoreError)(f"database error: {_reason(exc)}") from exc
            raise
        try:
            conn.commit()
        except psycopg.Error as exc:
            self._rollback(conn)
            raise StoreError(f"the commit failed, its outcome is unknown: {_reason(exc)}") from exc
        return result

    async def transact(self, fn: Callable[[PostgresTx], T]) -> T:
        return await self._submit(fn, False)

    async def read(self, fn: Callable[[PostgresTx], T]) -> T:
        return await self._submit(fn, True)

    async def _submit(self, fn: Callable[[PostgresTx], T], read_only: bool) -> T:
        if self._health.broken is not None:
            raise StoreBroken(self._health.broken)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, self._run, fn, read_only)
        except StoreBroken:
            raise
        except StoreError as exc:
            # Any failure counts: a read that fails shows the database unreachable; only a probe's write clears it.
            self._health.failed(str(exc))
            raise

    async def readiness(self) -> str | None:
        return await self._health.readiness(self._probe)

    async def _probe(self) -> None:
        found = await self.transact(PostgresTx.probe)
        if found != self._database_id:
            raise self._health.break_(
                f"the database behind CALL_ME_DATABASE lost its id {self._database_id} (now {found or 'none'}); "
                "changes are refused: restore the database and restart the server"
            )
        self._health.succeeded()

    # -- life -------------------------------------------------------------------------------------------

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop.clear()
        self.started_at = await self._loop.run_in_executor(self._executor, self._open)
        if self.listen:
            self._listener = threading.Thread(target=self._listen, name="callme-pg-listen", daemon=True)
            self._listener.start()

    def _open(self) -> float:
        conn = self._conn()
        try:
            self._migrate(conn)
            started_at = self._clock.open(conn)
            conn.commit()
        except psycopg.Error as exc:
            self._rollback(conn)
            raise StoreError(f"cannot prepare the database at {redact(self.url)}: {_reason(exc)}") from exc
        return started_at

    def _migrate(self, conn: Connection) -> None:
        # Replicas starting at once wait here for each other; the lock ends with the transaction.
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = int(row["value"]) if row else 0
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the database has schema version {version}, newer than this server's {SCHEMA_VERSION}; upgrade call-me"
            )
        for step in MIGRATIONS[version:]:
            for statement in statements(step.postgres):
                conn.execute(statement)
        conn.execute(
            "INSERT INTO meta VALUES ('schema_version', %s) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(SCHEMA_VERSION),),
        )
        if version < SCHEMA_VERSION:
            log.info("event=migrated from=%s to=%s", version, SCHEMA_VERSION)
        # Made once with the schema (a database from before it gets one now); the replicas all read the same.
        conn.execute(
            "INSERT INTO meta VALUES ('database_id', %s) ON CONFLICT (key) DO NOTHING", (secrets.token_hex(16),)
        )
        row = conn.execute("SELECT value FROM meta WHERE key = 'database_id'").fetchone()
        assert row is not None
        self._database_id = str(row["value"])

    async def close(self) -> None:
        self._stop.set()
        if self._listener is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._listener.join, 5.0)
            self._listener = None
        self._executor.shutdown(wait=True)
        with self._conns_lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    # -- wake-ups from other replicas -------------------------------------------------------------------

    def _listen(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            try:
                conn = self._connect(autocommit=True)
            except StoreError as exc:
                log.warning("event=listen_failed error=%s retry_in=%.1fs", exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)
                continue
            try:
                with conn:
                    conn.execute(f"LISTEN {PG_CHANNEL}")
                    delay = 0.5
                    log.info("event=listening channel=%s", PG_CHANNEL)
                    while not self._stop.is_set():
                        notes = list(conn.notifies(timeout=0.5, stop_after=1))
                        if notes:
                            self._deliver(conn, [n.payload for n in notes])
            except psycopg.Error as exc:
                if not self._stop.is_set():
                    log.warning("event=listen_lost error=%s; reconnecting", _reason(exc))
                    self._stop.wait(delay)

    def _deliver(self, conn: Connection, payloads: Sequence[str]) -> None:
        tickets: list[str] = []
        event_ids: list[int] = []
        carried: dict[int, Event] = {}
        for payload in payloads:
            try:
                data = json.loads(payload)
            except ValueError:
                continue
            if not isinstance(data, dict) or data.get("o") == self._origin:
                continue  # this replica's own commit: it woke its waiters itself
            tickets.extend(str(t) for t in data.get("t", ()))
            event_ids.extend(int(e) for e in data.get("e", ()))
            for values in data.get("v", ()):
                with contextlib.suppress(TypeError, ValueError):  # not as written by publish: read back by id
                    event = event_from(dict(zip(_EVENT_FIELDS, values, strict=True)))
                    carried[int(event.id or 0)] = event
        if tickets:
            self._call_hooks(tickets, [])
        if event_ids:
            events = [carried[i] for i in event_ids if i in carried]
            missing = [i for i in event_ids if i not in carried]
            if missing:
                rows = conn.execute(f"SELECT {EVENT_COLUMNS} FROM events WHERE id = ANY(%s)", (missing,)).fetchall()
                events += [event_from(r) for r in rows]
            self._call_hooks([], sorted(events, key=lambda e: e.id or 0))

    def _call_hooks(self, tickets: Sequence[str], events: Sequence[Event]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        for hook in self._hooks:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits any more
                loop.call_soon_threadsafe(hook, tickets, events)
