"""The embedded store: one SQLite file, one writer.

How it stays atomic: every operation runs on a single worker thread inside `BEGIN IMMEDIATE ... COMMIT`,
so operations are serialised and each sees the state the previous one committed. WAL with
`synchronous=FULL` makes every commit durable before `transact` returns, hence before any 2xx is sent.
An exclusive `flock` on `<file>.lock` keeps a second server process off the same file.
Before a commit that wrote, the writer checks that the file is still the one it opened and that the high-water
mark beside it covers the numbers handed out (sqlite_file.py); readiness follows the commits (health.py).
The database file and the lock file are created 0600 (private.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import takewhile
from pathlib import Path
from typing import IO, Any, TypeVar

from .. import private
from ..clock import Clock
from ..constants import CLOCK_STEP_TOLERANCE, IDENTITY_CHECK_INTERVAL, MAX_BATCH, SCHEMA_VERSION
from ..model import Delivery, Environment, Event, Lease, Ticket, Webhook, request_digest
from .base import StoreBroken, StoreError, StoreLocked
from .batch import GroupCommit, Job
from .health import WriteHealth
from .migrations import MIGRATIONS, statements
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
    env_values,
    event_from,
    event_values,
    lease_from,
    lease_values,
    ticket_from,
    ticket_values,
    webhook_from,
    webhook_values,
)
from .sqlite_file import FileIdentity, HighWaterMark, broken_reason

T = TypeVar("T")
log = logging.getLogger("callme.store")


class SQLiteTx:
    # Lists travel as one JSON parameter (`IN (SELECT value FROM json_each(?))`): one statement text whatever
    # their length, and still one index lookup per value.
    #
    # The group: the named environments and the given labels, then alternately the labels of the environments
    # reached and the environments carrying the labels reached, until nothing new is reached. UNION drops
    # what was reached before, so each edge of environment_labels in the group is followed once.
    _GROUP = f"""
        WITH RECURSIVE node(environment, label) AS (
            SELECT name, NULL FROM environments WHERE name IN (SELECT value FROM json_each(?1))
            UNION SELECT NULL, value FROM json_each(?2)
            UNION SELECT l.environment, NULL FROM node JOIN environment_labels AS l ON l.label = node.label
            UNION SELECT NULL, l.label FROM node JOIN environment_labels AS l ON l.environment = node.environment
        )
        SELECT {ENV_COLUMNS} FROM environments WHERE name IN (SELECT environment FROM node) ORDER BY name
    """
    # Two lookups, each through its partial index on the waiting tickets, rather than one OR that reads them
    # all; the second leaves out what the first found.
    _WAITING = f"""
        SELECT {TICKET_COLUMNS} FROM tickets
        WHERE state = 'waiting' AND environment IN (SELECT value FROM json_each(?1))
        UNION ALL
        SELECT {TICKET_COLUMNS} FROM tickets
        WHERE state = 'waiting' AND label IN (SELECT value FROM json_each(?2))
        AND (environment IS NULL OR environment NOT IN (SELECT value FROM json_each(?1)))
        ORDER BY seq
    """

    row_locks = False  # BEGIN IMMEDIATE holds the whole database: no decision waits for another's rows

    def __init__(self, conn: sqlite3.Connection, clock: Clock) -> None:
        self._conn = conn
        self._clock = clock

    def now(self) -> float:
        return self._clock.now()

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return self._conn.execute(sql, params).fetchall()

    def _one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._conn.execute(sql, params).fetchone()
        return row

    def environments(self) -> list[Environment]:
        return [env_from(r) for r in self._all(f"SELECT {ENV_COLUMNS} FROM environments ORDER BY name")]

    def environment(self, name: str) -> Environment | None:
        row = self._one(f"SELECT {ENV_COLUMNS} FROM environments WHERE name = ?", (name,))
        return env_from(row) if row else None

    def group(self, names: Iterable[str], labels: Iterable[str]) -> list[Environment]:
        # The whole database is locked by BEGIN IMMEDIATE; the group only bounds what is decided.
        return [env_from(r) for r in self._all(self._GROUP, (dump(list(names)), dump(list(labels))))]

    def peek_group(self, names: Iterable[str], labels: Iterable[str]) -> list[Environment]:
        return self.group(names, labels)  # one writer: nothing to lock, and nothing changes meanwhile

    def save_environment(self, env: Environment) -> None:
        # An upsert, not INSERT OR REPLACE: the columns the record does not carry (last_used_at) are kept.
        self._conn.execute(
            f"INSERT INTO environments ({ENV_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?) "
            "ON CONFLICT (name) DO UPDATE SET slots = excluded.slots, labels = excluded.labels, "
            "description = excluded.description, "
            "properties = excluded.properties, maintenance = excluded.maintenance, note = excluded.note, "
            "auto = excluded.auto, created_at = excluded.created_at, updated_at = excluded.updated_at, "
            "held_too_long = excluded.held_too_long, waiting_too_long = excluded.waiting_too_long",
            env_values(env, flags=int),
        )
        labels = dump(list(env.labels))
        self._conn.execute(
            "DELETE FROM environment_labels WHERE environment = ? AND label NOT IN (SELECT value FROM json_each(?))",
            (env.name, labels),
        )
        self._conn.execute(
            "INSERT OR IGNORE INTO environment_labels (label, environment) SELECT value, ? FROM json_each(?)",
            (env.name, labels),
        )

    def delete_environment(self, name: str) -> None:
        self._conn.execute("DELETE FROM environments WHERE name = ?", (name,))
        self._conn.execute("DELETE FROM environment_labels WHERE environment = ?", (name,))

    def touch_environment(self, name: str, at: float) -> None:
        self._conn.execute("UPDATE environments SET last_used_at = ? WHERE name = ? AND auto", (at, name))

    def idle_auto_environments(self, before: float, limit: int) -> list[str]:
        rows = self._all(
            "SELECT name FROM environments WHERE auto AND last_used_at < ? ORDER BY last_used_at LIMIT ?",
            (before, limit),
        )
        return [r[0] for r in rows]

    def lease(self, lease_id: str) -> Lease | None:
        row = self._one(f"SELECT {LEASE_COLUMNS} FROM leases WHERE id = ?", (lease_id,))
        return lease_from(row) if row else None

    def live_leases(self, environments: Sequence[str]) -> list[Lease]:
        sql = (
            f"SELECT {LEASE_COLUMNS} FROM leases WHERE state = 'active' "
            "AND environment IN (SELECT value FROM json_each(?)) ORDER BY acquired_at, fence"
        )
        return [lease_from(r) for r in self._all(sql, (dump(list(environments)),))]

    def oldest_live_lease(self, environment: str, key_name: str | None) -> Lease | None:
        sql = f"SELECT {LEASE_COLUMNS} FROM leases WHERE state = 'active' AND environment = ?"
        params: list[Any] = [environment]
        if key_name is not None:
            sql += " AND key_name = ?"
            params.append(key_name)
        row = self._one(sql + " ORDER BY acquired_at, fence LIMIT 1", params)
        return lease_from(row) if row else None

    def insert_lease(self, lease: Lease) -> None:
        marks = ",".join("?" * 17)
        self._conn.execute(f"INSERT INTO leases ({LEASE_COLUMNS}) VALUES ({marks})", lease_values(lease))

    def update_lease(self, lease: Lease) -> None:
        self._conn.execute(
            "UPDATE leases SET expires_at = ?, touched_at = ?, ttl = ?, state = ?, ended_at = ?, "
            "collect_by = ? WHERE id = ?",
            (
                lease.expires_at,
                lease.touched_at,
                lease.ttl,
                lease.state,
                lease.ended_at,
                lease.collect_by,
                lease.id,
            ),
        )

    def ticket(self, ticket_id: str) -> Ticket | None:
        row = self._one(f"SELECT {TICKET_COLUMNS} FROM tickets WHERE id = ?", (ticket_id,))
        return ticket_from(row) if row else None

    def ticket_by_request(self, key_name: str, request_id: str) -> Ticket | None:
        row = self._one(
            f"SELECT {TICKET_COLUMNS} FROM tickets WHERE key_name = ? AND request_id = ?",
            (key_name, request_id),
        )
        return ticket_from(row) if row else None

    def waiting_tickets(self, environments: Sequence[str], labels: Sequence[str]) -> list[Ticket]:
        rows = self._all(self._WAITING, (dump(list(environments)), dump(list(labels))))
        return [ticket_from(r) for r in rows]

    def group_tickets(self, group_id: str) -> list[Ticket]:
        rows = self._all(f"SELECT {TICKET_COLUMNS} FROM tickets WHERE group_id = ? ORDER BY seq", (group_id,))
        return [ticket_from(r) for r in rows]

    def group_leases(self, group_id: str) -> list[Lease]:
        rows = self._all(f"SELECT {LEASE_COLUMNS} FROM leases WHERE group_id = ? ORDER BY seq", (group_id,))
        return [lease_from(r) for r in rows]

    def insert_ticket(self, ticket: Ticket) -> None:
        self._conn.execute(
            f"INSERT INTO tickets ({TICKET_COLUMNS}) VALUES ({','.join('?' * 17)})",
            ticket_values(ticket),
        )

    def update_ticket(self, ticket: Ticket) -> None:
        self._conn.execute(
            "UPDATE tickets SET seen_at = ?, state = ?, lease_id = ?, ended_at = ? WHERE id = ?",
            (ticket.seen_at, ticket.state, ticket.lease_id, ticket.ended_at, ticket.id),
        )

    def _bump(self, name: str) -> int:
        row = self._one("UPDATE counters SET value = value + 1 WHERE name = ? RETURNING value", (name,))
        assert row is not None
        return int(row[0])

    def next_fence(self) -> int:
        return self._bump("fence")

    def next_seq(self) -> int:
        return self._bump("seq")

    def add_event(self, event: Event) -> int:
        cursor = self._conn.execute(
            f"INSERT INTO events ({EVENT_INSERT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)", event_values(event)
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def events(self, environment: str | None, limit: int) -> list[Event]:
        if environment is None:
            rows = self._all(f"SELECT {EVENT_COLUMNS} FROM events ORDER BY id DESC LIMIT ?", (limit,))
        else:
            rows = self._all(
                f"SELECT {EVENT_COLUMNS} FROM events WHERE environment = ? ORDER BY id DESC LIMIT ?",
                (environment, limit),
            )
        return [event_from(r) for r in rows]

    def events_after(self, after: int, limit: int) -> list[Event]:
        rows = self._all(f"SELECT {EVENT_COLUMNS} FROM events WHERE id > ? ORDER BY id LIMIT ?", (after, limit))
        return [event_from(r) for r in rows]

    def due(self, now: float, grace: float) -> tuple[list[str], list[str]]:
        # One lookup per deadline, each through its partial index on the live leases.
        envs = self._all(
            "SELECT environment FROM leases WHERE state = 'active' AND expires_at <= ? "
            "UNION SELECT environment FROM leases WHERE state = 'active' AND collect_by <= ?",
            (now, now),
        )
        tickets = self._all(
            "SELECT DISTINCT environment, label FROM tickets WHERE state = 'waiting' AND seen_at <= ?",
            (now - grace,),
        )
        names = {r[0] for r in envs} | {r[0] for r in tickets if r[0] is not None}
        labels = {r[1] for r in tickets if r[1] is not None}
        return sorted(names), sorted(labels)

    def webhooks(self) -> list[Webhook]:
        return [webhook_from(r) for r in self._all(f"SELECT {WEBHOOK_COLUMNS} FROM webhooks ORDER BY name")]

    def webhook(self, name: str) -> Webhook | None:
        row = self._one(f"SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE name = ?", (name,))
        return webhook_from(row) if row else None

    def save_webhook(self, hook: Webhook) -> None:
        self._conn.execute(
            f"INSERT OR REPLACE INTO webhooks ({WEBHOOK_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)",
            webhook_values(hook, flags=int),
        )

    def delete_webhook(self, name: str) -> bool:
        self._conn.execute("DELETE FROM webhook_deliveries WHERE hook = ?", (name,))
        return self._conn.execute("DELETE FROM webhooks WHERE name = ?", (name,)).rowcount > 0

    def add_delivery(self, hook: str, event: str, environment: str | None, payload: str, at: float) -> int:
        cursor = self._conn.execute(
            f"INSERT INTO webhook_deliveries ({DELIVERY_INSERT_COLUMNS}) VALUES (?,?,?,?,?,'pending',0,?)",
            (hook, event, environment, payload, at, at),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def claim_deliveries(
        self, now: float, until: float, limit: int, lapsed: float, skip_hooks: Sequence[str] = ()
    ) -> list[Delivery]:
        # One writer: the claim cannot race another; it only keeps a delivery in flight from being claimed again.
        rows = self._all(
            f"UPDATE webhook_deliveries SET claimed_until = ? WHERE id IN (SELECT id FROM webhook_deliveries "
            "WHERE state = 'pending' AND next_at <= ? AND (claimed_until IS NULL OR claimed_until < ?) "
            f"AND hook NOT IN (SELECT value FROM json_each(?)) ORDER BY next_at LIMIT ?) RETURNING {DELIVERY_COLUMNS}",
            (until, now, lapsed, dump(list(skip_hooks)), limit),
        )
        return sorted((delivery_from(r) for r in rows), key=lambda d: (d.next_at or 0, d.id))

    def due_deliveries(
        self, now: float, limit: int, skip_ids: Sequence[int] = (), skip_hooks: Sequence[str] = ()
    ) -> list[Delivery]:
        rows = self._all(
            f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE state = 'pending' AND next_at <= ? "
            "AND id NOT IN (SELECT value FROM json_each(?)) AND hook NOT IN (SELECT value FROM json_each(?)) "
            "ORDER BY next_at, id LIMIT ?",
            (now, dump(list(skip_ids)), dump(list(skip_hooks)), limit),
        )
        return [delivery_from(r) for r in rows]

    def finish_attempt(self, delivery: Delivery) -> None:
        d = delivery
        self._conn.execute(
            "UPDATE webhook_deliveries SET state = ?, attempts = ?, next_at = ?, claimed_until = NULL, "
            "last_status = ?, last_error = ?, delivered_at = ? WHERE id = ?",
            (d.state, d.attempts, d.next_at, d.last_status, d.last_error, d.delivered_at, d.id),
        )

    def deliveries(self, hook: str, limit: int) -> list[Delivery]:
        rows = self._all(
            f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE hook = ? ORDER BY id DESC LIMIT ?", (hook, limit)
        )
        return [delivery_from(r) for r in rows]

    def overdue_leases(self, now: float, default: float, limit: int) -> list[Lease]:
        columns = ", ".join(f"l.{c.strip()}" for c in LEASE_COLUMNS.split(","))
        rows = self._all(
            f"SELECT {columns} FROM leases AS l JOIN environments AS e ON e.name = l.environment "
            "WHERE l.state = 'active' AND l.alerted_at IS NULL AND l.acquired_at <= ? - coalesce(e.held_too_long, ?) "
            "ORDER BY l.acquired_at LIMIT ?",
            (now, default, limit),
        )
        return [lease_from(r) for r in rows]

    def overdue_tickets(self, now: float, default: float, limit: int) -> list[Ticket]:
        columns = ", ".join(f"t.{c.strip()}" for c in TICKET_COLUMNS.split(","))
        rows = self._all(
            f"SELECT {columns} FROM tickets AS t LEFT JOIN environments AS e ON e.name = t.environment "
            "WHERE t.state = 'waiting' AND t.alerted_at IS NULL "
            "AND t.enqueued_at <= ? - coalesce(e.waiting_too_long, ?) ORDER BY t.seq LIMIT ?",
            (now, default, limit),
        )
        return [ticket_from(r) for r in rows]

    def mark_alerted(self, lease_id: str | None, ticket_id: str | None, at: float) -> bool:
        table, row_id = ("leases", lease_id) if lease_id is not None else ("tickets", ticket_id)
        sql = f"UPDATE {table} SET alerted_at = ? WHERE id = ? AND alerted_at IS NULL"
        return self._conn.execute(sql, (at, row_id)).rowcount > 0

    def prune_deliveries(self, before: float, limit: int) -> int:
        sql = (
            "DELETE FROM webhook_deliveries WHERE id IN (SELECT id FROM webhook_deliveries "
            "WHERE created_at < ? AND state != 'pending' ORDER BY created_at LIMIT ?)"
        )
        return self._conn.execute(sql, (before, limit)).rowcount

    def prune_tickets(self, before: float, limit: int) -> int:
        sql = "DELETE FROM tickets WHERE id IN (SELECT id FROM tickets WHERE ended_at < ? ORDER BY ended_at LIMIT ?)"
        return self._conn.execute(sql, (before, limit)).rowcount

    def prune_leases(self, before: float, limit: int) -> int:
        sql = "DELETE FROM leases WHERE id IN (SELECT id FROM leases WHERE ended_at < ? ORDER BY ended_at LIMIT ?)"
        return self._conn.execute(sql, (before, limit)).rowcount

    def prune_events(self, before: float, limit: int) -> int:
        # Events are found by id (their primary key), not by time, which has no index: the oldest first, and
        # only as far as they are all old.
        rows = self._all("SELECT id, at FROM events ORDER BY id LIMIT ?", (limit,))
        old = list(takewhile(lambda r: r["at"] < before, rows))
        if not old:
            return 0
        return self._conn.execute("DELETE FROM events WHERE id <= ?", (old[-1]["id"],)).rowcount


class SQLiteStore:
    """The embedded default store; see the module docstring for how it stays atomic and durable."""

    recheck_interval: float | None = None  # one process makes every change: its wake-ups are exact

    def __init__(self, path: str, clock: Clock, *, allow_new_database: bool = False) -> None:
        self.path = path
        self.clock = clock
        self.started_at = clock.now()
        self._conn: sqlite3.Connection | None = None
        self._lock_file: IO[str] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="callme-sqlite")
        self._commits = GroupCommit(self._executor, self._run_batch, MAX_BATCH)
        # The file's identity and high-water mark (sqlite_file.py), and what the last writes showed (health.py).
        self._allow_new_database = allow_new_database
        self._mark = HighWaterMark(path)
        self._identity: FileIdentity | None = None
        self._checked_at = 0.0
        self._health = WriteHealth()
        self._closed = False

    def subscribe(self, hook: Callable[[Sequence[str], Sequence[Event]], None]) -> None:
        pass  # no other process shares the file

    async def open(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._open)

    def _open(self) -> None:
        path = Path(self.path)
        if path.parent and not path.parent.exists():
            raise StoreError(f"database folder {str(path.parent)!r} does not exist; create it or set CALL_ME_DATABASE")
        lock_path = f"{self.path}.lock"
        try:
            lock_file = open(lock_path, "a+", opener=private.opener)  # noqa: SIM115 - held for the life of the store
        except OSError as exc:
            raise StoreError(cannot_open(self.path, exc)) from None
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock_file.seek(0)
            holder = lock_file.read().strip() or "unknown"
            lock_file.close()
            raise StoreLocked(
                f"database {self.path!r} is in use by another call-me-server process (pid {holder}); "
                "SQLite serves one process: stop the other one, or use PostgreSQL for several replicas"
            ) from None
        lock_file.truncate(0)
        lock_file.write(str(os.getpid()))
        lock_file.flush()
        self._lock_file = lock_file
        try:
            # Read before the database is created, so that a refusal leaves no empty database behind.
            earlier = self._mark.read()
            if earlier is not None and not path.exists() and not self._allow_new_database:
                raise StoreError(self._mark.refusal(earlier, None))
            # 0600 before SQLite writes a byte; it gives -wal and -shm the database file's mode (private.py).
            private.create(self.path, "database")
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.create_function("callme_request_digest", 1, request_digest, deterministic=True)  # migration 5
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA busy_timeout = 5000")
            # The group walk, the lookups by lists and the unions build small temporary b-trees: in memory, not
            # in a temporary file opened afresh by each statement (a tenth of the cost of a walk).
            conn.execute("PRAGMA temp_store = MEMORY")
            self._conn = conn
            self._migrate(conn)
            self._mark.adopt(conn, earlier, allow_new=self._allow_new_database)
            self._continue_time(conn)
            self._identity = FileIdentity(self.path)
            self._checked_at = time.monotonic()
        except (sqlite3.Error, OSError, StoreError) as exc:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self._release_lock()
            if isinstance(exc, StoreError):
                raise
            raise StoreError(cannot_open(self.path, exc)) from exc

    def _identity_changed(self) -> str | None:
        """Latch the store broken (logged once) if its file was removed or replaced; the reason, or None."""
        if self._health.broken is None and self._identity is not None:
            self._checked_at = time.monotonic()
            what = self._identity.changed()
            if what is not None:
                self._health.break_(broken_reason(what))
        return self._health.broken

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"database {self.path!r} has schema version {version}, newer than this server's "
                    f"{SCHEMA_VERSION}; upgrade call-me"
                )
            for step in MIGRATIONS[version:]:
                for statement in statements(step.sqlite):
                    conn.execute(statement)
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _continue_time(self, conn: sqlite3.Connection) -> None:
        """Never start behind the newest time the database holds: the history stays in order, and a clock set
        back while the server was stopped (or stepped back while it ran, which its clock ignored) does not give
        every lease that much more time. The server's clock continues from that time instead."""
        row = conn.execute(
            "SELECT max(coalesce((SELECT at FROM events ORDER BY id DESC LIMIT 1), 0),"
            " coalesce((SELECT max(touched_at) FROM leases WHERE state = 'active'), 0))"
        ).fetchone()
        behind = self.clock.not_before(float(row[0]))
        self.started_at = max(self.started_at, self.clock.now())
        if behind > CLOCK_STEP_TOLERANCE:
            log.warning(
                "event=clock_behind seconds=%.1f: the system clock is behind the newest time in %r; the server's "
                "clock continues from that time, ahead of the system clock by as much (API.md, invariant 5)",
                behind, self.path,
            )  # fmt: skip

    def _release_lock(self) -> None:
        if self._lock_file is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True

        def _close() -> None:
            if self._conn is not None:
                if self._mark.database_id is not None and self._identity_changed() is None:
                    # The exact counters, so that the next start leaves no gap; the reservation stands otherwise.
                    with contextlib.suppress(StoreError, sqlite3.Error):
                        self._mark.cover(self._conn, ahead=0, force=True)
                self._conn.close()
                self._conn = None
            self._release_lock()

        await asyncio.get_running_loop().run_in_executor(self._executor, _close)
        self._executor.shutdown(wait=True)

    def _run_batch(self, jobs: list[Job]) -> None:
        """One transaction for `jobs` (see batch.py): a savepoint each, then one durable COMMIT."""
        conn = self._conn
        if conn is None:
            _fail(jobs, StoreError("the store is closed"))
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._health.failed(str(exc))
            _fail(jobs, StoreError(f"cannot start a transaction: {exc}"))
            return
        changes, faulted = conn.total_changes, False
        # A job alone needs no savepoint: its transaction is one. (A savepoint makes SQLite keep a statement
        # journal of every page the job changes, which triples the cost of a large delete.)
        alone = len(jobs) == 1
        undo = "ROLLBACK" if alone else "ROLLBACK TO op"
        try:
            for job in jobs:
                if not alone:
                    conn.execute("SAVEPOINT op")
                try:
                    job.result = job.fn(SQLiteTx(conn, self.clock))
                except sqlite3.Error as exc:
                    if not conn.in_transaction:
                        raise  # SQLite ended the whole transaction: the batch fails as one, below
                    if not isinstance(exc, sqlite3.IntegrityError):  # a storage fault, not a broken rule
                        faulted = True
                        self._health.failed(str(exc))
                    job.error = StoreError(f"database error: {exc}")
                    conn.execute(undo)
                except BaseException as exc:
                    job.error = exc
                    conn.execute(undo)
                if not alone:
                    conn.execute("RELEASE op")
            if not (alone and jobs[0].error is not None):
                wrote = conn.total_changes != changes
                if wrote:
                    self._before_commit(conn)
                elif time.monotonic() - self._checked_at >= IDENTITY_CHECK_INTERVAL:
                    self._identity_changed()  # a read-only batch goes on; only writes are refused
                conn.execute("COMMIT")
                if wrote and not faulted:
                    self._health.succeeded()
        except (sqlite3.Error, StoreError) as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            if isinstance(exc, StoreBroken):
                _fail(jobs, exc)
                return
            self._health.failed(str(exc))
            _fail(jobs, StoreError(f"database error: {exc}"))

    def _before_commit(self, conn: sqlite3.Connection) -> None:
        """Raise unless the batch's changes may be committed and acknowledged: the file is still the one opened
        (else the store is broken for good), and the high-water mark covers every number handed out."""
        broken = self._identity_changed()
        if broken is not None:
            raise StoreBroken(broken)
        self._mark.cover(conn)

    async def transact(self, fn: Callable[[SQLiteTx], T]) -> T:
        return await self._commits.submit(fn)

    async def read(self, fn: Callable[[SQLiteTx], T]) -> T:
        # The one writer's transactions read the state the last one committed; a read changes nothing in its batch.
        return await self._commits.submit(fn)

    async def readiness(self) -> str | None:
        conn = self._conn
        if conn is None:
            return "the store is closed"
        # Two stats, cheap enough for a route that needs no key: a removed file shows at once, even while idle.
        broken = self._identity_changed()
        if broken is not None:
            return broken

        def probe(tx: SQLiteTx) -> None:  # a write as small as one can be, answered as every write is
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('ready_probe', ?)", (repr(tx.now()),))

        return await self._health.readiness(lambda: self.transact(probe))


def _fail(jobs: list[Job], error: StoreError) -> None:
    """The whole batch failed: no job's change stays, so none may be acknowledged."""
    for job in jobs:
        job.result, job.error = None, error


def cannot_open(path: str, exc: BaseException) -> str:
    """One line for a database the server cannot open, saying what to do (start-up prints it and exits)."""
    if isinstance(exc, PermissionError):
        folder = os.path.dirname(os.path.abspath(path))
        return (
            f"cannot open database {path!r}: permission denied ({exc.filename or path}); the server runs as uid "
            f"{os.getuid()}: give it the folder {folder!r} and its files (e.g. chown -R {os.getuid()} {folder}), "
            "or set CALL_ME_DATABASE to a path it may write"
        )
    if isinstance(exc, sqlite3.OperationalError) and "readonly" in str(exc):
        folder = os.path.dirname(os.path.abspath(path))
        return (
            f"cannot open database {path!r}: it is read-only for this server (uid {os.getuid()}); give it the "
            f"folder {folder!r} and its files (e.g. chown -R {os.getuid()} {folder})"
        )
    if isinstance(exc, OSError) and exc.strerror:
        return f"cannot open database {path!r}: {exc.strerror} ({exc.filename or path})"
    return f"cannot open database {path!r}: {exc}"
