"""The store contract: the same tests against every store (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from callme.server.clock import Clock
from callme.server.constants import FORGOTTEN, PRUNE_BATCH, REQUEST_ID_RETENTION, SCHEMA_VERSION
from callme.server.errors import Busy, ConfigError, NotFound, TicketGone
from callme.server.model import Environment, Event, Lease, Ticket, Webhook
from callme.server.outcomes import Granted
from callme.server.settings import Settings, load
from callme.server.store import for_database
from callme.server.store.base import Store, StoreError, Tx, connected
from callme.server.store.migrations import MIGRATIONS, statements
from callme.server.store.postgres import PostgresStore, redact
from callme.server.store.sqlite import SQLiteStore

from .harness import ADMIN, Harness, request
from .pgserver import PostgresServer

T = TypeVar("T")


class Opened:
    """One store on its own event loop, reopened on the same data as often as asked."""

    def __init__(self, kind: str, make: Callable[[], Store]) -> None:
        self.kind = kind
        self.make = make
        self.loop = asyncio.new_event_loop()
        self.store = make()
        self.run(self.store.open())

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def tx(self, fn: Callable[[Tx], T]) -> T:
        return self.run(self.store.transact(fn))

    def reopen(self) -> None:
        self.run(self.store.close())
        self.store = self.make()
        self.run(self.store.open())

    def close(self) -> None:
        self.run(self.store.close())
        self.loop.close()


@pytest.fixture(params=["sqlite", "postgres"])
def opened(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opened]:
    if request.param == "sqlite":
        path = str(tmp_path / "db.sqlite")
        store = Opened("sqlite", lambda: SQLiteStore(path, Clock()))
    else:
        url = request.getfixturevalue("pg_url")
        store = Opened("postgres", lambda: PostgresStore(url))
    try:
        yield store
    finally:
        store.close()


def env(name: str, *labels: str, slots: int = 1) -> Environment:
    return Environment(name=name, slots=slots, labels=labels, properties={"url": f"https://{name}"}, created_at=1.0)


def lease(lease_id: str, environment: str, fence: int, *, acquired_at: float = 100.0, key: str = "ci") -> Lease:
    return Lease(
        id=lease_id, environment=environment, token="k_" + lease_id, holder="me", metadata={"run": 1, "b": [1]},
        fence=fence, ttl=60, acquired_at=acquired_at, expires_at=acquired_at + 60, touched_at=acquired_at,
        key_name=key,
    )  # fmt: skip


def ticket(ticket_id: str, seq: int, environment: str | None = None, label: str | None = None, **kw: Any) -> Ticket:
    values: dict[str, Any] = {
        "id": ticket_id, "seq": seq, "key_name": "ci", "environment": environment, "label": label, "holder": "me",
        "ttl": 60, "priority": 0, "metadata": {}, "enqueued_at": 100.0, "seen_at": 100.0, **kw,
    }  # fmt: skip
    return Ticket(**values)


# -- Tx operations ----------------------------------------------------------------------------------------


def test_environments_round_trip_and_groups(opened: Opened) -> None:
    def fill(tx: Tx) -> None:
        for e in (env("b", "L1", "L2", slots=3), env("a", "L1"), env("c", "L2"), env("d"), env("e", "L3")):
            tx.save_environment(e)

    opened.tx(fill)
    envs = opened.tx(lambda tx: tx.environments())
    assert [e.name for e in envs] == ["a", "b", "c", "d", "e"]
    assert opened.tx(lambda tx: tx.environment("b")) == env("b", "L1", "L2", slots=3)
    assert opened.tx(lambda tx: tx.environment("nope")) is None
    names = lambda es: [e.name for e in es]  # noqa: E731
    assert names(opened.tx(lambda tx: tx.group(["a"], []))) == ["a", "b", "c"]
    assert names(opened.tx(lambda tx: tx.group([], ["L2"]))) == ["a", "b", "c"]
    assert names(opened.tx(lambda tx: tx.group(["d"], []))) == ["d"]
    assert names(opened.tx(lambda tx: tx.group(["d", "e"], ["nope"]))) == ["d", "e"]
    assert opened.tx(lambda tx: tx.group(["ghost"], ["nope"])) == []
    changed = Environment(name="b", slots=1, labels=(), maintenance=True, note="n", auto=True, updated_at=5.0)
    opened.tx(lambda tx: tx.save_environment(changed))
    assert opened.tx(lambda tx: tx.environment("b")) == changed
    assert names(opened.tx(lambda tx: tx.group(["a"], []))) == ["a"]
    opened.tx(lambda tx: tx.delete_environment("a"))
    assert names(opened.tx(lambda tx: tx.environments())) == ["b", "c", "d", "e"]


def test_the_webhook_outbox_claims_each_delivery_once_until_its_claim_lapses(opened: Opened) -> None:
    hook = Webhook(
        name="ops", url="https://h.example/x", events=("lease.forced",), sealed_secret="s1.x", created_at=1.0
    )
    opened.tx(lambda tx: tx.save_webhook(hook))
    assert opened.tx(lambda tx: tx.webhooks()) == [hook]
    first = opened.tx(lambda tx: tx.add_delivery("ops", "lease.forced", "uat", '{"a":1}', 100.0))
    second = opened.tx(lambda tx: tx.add_delivery("ops", "lease.forced", None, '{"a":2}', 200.0))
    claim = lambda now, until, lapsed: opened.tx(lambda tx: tx.claim_deliveries(now, until, 10, lapsed))  # noqa: E731
    due = lambda now, **skip: [d.id for d in opened.tx(lambda tx: tx.due_deliveries(now, 10, **skip))]  # noqa: E731
    assert (due(99.0), due(150.0), due(250.0)) == ([], [first], [first, second])
    assert (due(250.0, skip_ids=[first]), due(250.0, skip_hooks=["ops"])) == ([second], [])
    assert opened.tx(lambda tx: tx.claim_deliveries(250.0, 260.0, 10, 250.0, ["ops"])) == []  # a full hook
    assert claim(99.0, 150.0, 99.0) == []  # nothing due yet
    (taken,) = claim(150.0, 160.0, 150.0)  # the second is not due until 200
    assert (taken.id, taken.payload, taken.state, taken.claimed_until) == (first, '{"a":1}', "pending", 160.0)
    assert claim(155.0, 170.0, 155.0) == []  # claimed until 160
    assert [d.id for d in claim(158.0, 170.0, float("inf"))] == [first]  # taken over (a single-process store)
    assert [d.id for d in claim(201.0, 211.0, 201.0)] == [first, second]  # both due, the first's claim lapsed
    opened.tx(lambda tx: tx.finish_attempt(replace(taken, state="delivered", attempts=1, last_status=200)))
    assert [d.id for d in claim(300.0, 310.0, 300.0)] == [second]
    log = opened.tx(lambda tx: tx.deliveries("ops", 10))
    assert [(d.id, d.state, d.attempts, d.last_status, d.claimed_until) for d in log] == [
        (second, "pending", 0, None, 310.0),
        (first, "delivered", 1, 200, None),
    ]
    assert opened.tx(lambda tx: tx.prune_deliveries(1000.0, 10)) == 1  # the delivered one; a pending one stays
    assert opened.tx(lambda tx: tx.delete_webhook("ops")) is True
    assert opened.tx(lambda tx: tx.deliveries("ops", 10)) == []
    assert opened.tx(lambda tx: tx.delete_webhook("ops")) is False
    # An id is never given twice, even once every delivery went with its hook: receivers tell deliveries apart by it.
    opened.tx(lambda tx: tx.save_webhook(hook))
    assert opened.tx(lambda tx: tx.add_delivery("ops", "lease.forced", None, "{}", 400.0)) > second


def test_overdue_leases_and_tickets_follow_their_environments_thresholds_and_are_alerted_once(opened: Opened) -> None:
    def fill(tx: Tx) -> None:
        tx.save_environment(replace(env("a"), held_too_long=10.0, waiting_too_long=20.0))
        tx.save_environment(env("b"))
        tx.insert_lease(lease("l_a", "a", 1))
        tx.insert_lease(lease("l_b", "b", 2))
        tx.insert_ticket(ticket("t_a", 1, "a"))
        tx.insert_ticket(ticket("t_label", 2, label="L"))

    opened.tx(fill)
    leases = lambda now: [x.id for x in opened.tx(lambda tx: tx.overdue_leases(now, 50.0, 10))]  # noqa: E731
    tickets = lambda now: [x.id for x in opened.tx(lambda tx: tx.overdue_tickets(now, 50.0, 10))]  # noqa: E731
    assert (leases(109.0), tickets(119.0)) == ([], [])
    assert (leases(110.0), tickets(120.0)) == (["l_a"], ["t_a"])  # a's own thresholds
    assert (leases(150.0), tickets(150.0)) == (["l_a", "l_b"], ["t_a", "t_label"])  # b and the label: the default
    assert opened.tx(lambda tx: tx.mark_alerted("l_a", None, 150.0)) is True
    assert opened.tx(lambda tx: tx.mark_alerted("l_a", None, 151.0)) is False  # once
    assert opened.tx(lambda tx: tx.mark_alerted(None, "t_a", 150.0)) is True
    assert (leases(150.0), tickets(150.0)) == (["l_b"], ["t_label"])
    ended = replace(lease("l_b", "b", 2), state="expired", ended_at=150.0)
    opened.tx(lambda tx: tx.update_lease(ended))
    assert leases(1000.0) == []  # only live leases


def test_the_parts_of_a_group_and_its_leases_are_found_by_the_groups_id(opened: Opened) -> None:
    parts = [
        ticket("t-2", 2, "uat", group_id="g_1", group_seq=2),
        ticket("t-4", 4, None, "db", group_id="g_1", group_seq=2),  # not consecutive: seq 3 went to someone else
    ]

    def fill(tx: Tx) -> None:
        tx.save_environment(env("uat"))
        tx.save_environment(env("db-1", "db"))
        tx.insert_ticket(ticket("t-3", 3, "uat"))
        for part in parts[::-1]:
            tx.insert_ticket(part)
        for n, (part, name) in enumerate(zip(parts, ("uat", "db-1"), strict=True), 1):
            tx.insert_lease(replace(lease(f"l-{n}", name, n), ticket_id=part.id, seq=part.seq, group_id="g_1"))

    opened.tx(fill)
    opened.reopen()
    assert opened.tx(lambda tx: tx.group_tickets("g_1")) == parts
    assert [x.id for x in opened.tx(lambda tx: tx.group_leases("g_1"))] == ["l-1", "l-2"]
    assert {x.group_id for x in opened.tx(lambda tx: tx.group_leases("g_1"))} == {"g_1"}
    assert opened.tx(lambda tx: (tx.group_tickets("g_other"), tx.group_leases("g_other"))) == ([], [])
    waiting = opened.tx(lambda tx: tx.waiting_tickets(["uat"], ["db"]))
    assert [(t.seq, t.group_seq) for t in waiting] == [(2, 2), (3, None), (4, 2)]
    # What a decision will lock, seen without locking it: the same environments as the group itself.
    assert opened.tx(lambda tx: tx.peek_group(["uat"], ["db"])) == opened.tx(lambda tx: tx.group(["uat"], ["db"]))


def label_rows(store: Store) -> list[tuple[str, str]]:
    """The rows of the labels table, (environment, label), sorted: read beside the store, not through it."""
    sql = "SELECT environment, label FROM environment_labels ORDER BY environment, label"
    if isinstance(store, SQLiteStore):
        with contextlib.closing(sqlite3.connect(store.path)) as conn:
            return [(r[0], r[1]) for r in conn.execute(sql)]
    assert isinstance(store, PostgresStore)
    with psycopg.connect(store.url) as pg:
        return [(r[0], r[1]) for r in pg.execute(sql)]


def labels_in_step(store: Store | None, envs: list[Environment]) -> list[tuple[str, str]]:
    """The labels table, checked against the environments' own lists of labels."""
    assert store is not None
    rows = label_rows(store)
    assert rows == sorted((e.name, label) for e in envs for label in e.labels)
    return rows


def test_the_labels_table_follows_every_change_of_labels(opened: Opened) -> None:
    in_step = lambda: labels_in_step(opened.store, opened.tx(lambda tx: tx.environments()))  # noqa: E731
    opened.tx(lambda tx: [tx.save_environment(e) for e in (env("a", "L", "M"), env("b", "M"), env("c"))])
    assert in_step() == [("a", "L"), ("a", "M"), ("b", "M")]
    opened.tx(lambda tx: tx.save_environment(env("a", "M", "N")))  # relabel: one kept, one dropped, one new
    opened.tx(lambda tx: tx.save_environment(env("c", "L")))
    assert in_step() == [("a", "M"), ("a", "N"), ("b", "M"), ("c", "L")]
    opened.tx(lambda tx: tx.save_environment(env("b")))  # no labels left
    opened.tx(lambda tx: tx.delete_environment("a"))
    assert in_step() == [("c", "L")]
    opened.tx(lambda tx: tx.save_environment(env("a")))  # created again, with none of its old labels
    assert in_step() == [("c", "L")]
    assert [e.name for e in opened.tx(lambda tx: tx.group([], ["M"]))] == []


def test_the_labels_table_follows_the_service(harness: Harness) -> None:
    """Declared, relabelled, deleted, force-deleted with a lease, created by a first request."""
    h = harness
    in_step = lambda: labels_in_step(h.store, h.environments())  # noqa: E731
    h.put("a", labels=("L",))
    h.put("b", labels=("L", "M"))
    h.put("c", labels=("M",))
    assert in_step() == [("a", "L"), ("b", "L"), ("b", "M"), ("c", "M")]
    h.put("b", labels=("N",))  # the group a-L-b-M-c falls apart
    assert in_step() == [("a", "L"), ("b", "N"), ("c", "M")]
    assert [e.name for e in h.read(lambda tx: tx.group(["a"], []))] == ["a"]
    held = h.acquire(request(label="M"))
    assert isinstance(held, Granted)
    assert held.lease.environment == "c"
    h.run(h.svc.delete_environment(ADMIN, "c", force=True))
    assert in_step() == [("a", "L"), ("b", "N")]
    h.run(h.svc.delete_environment(ADMIN, "a", force=False))
    assert in_step() == [("b", "N")]
    assert isinstance(h.acquire(request("fresh")), Granted)  # created by a first request: no labels
    assert in_step() == [("b", "N")]
    assert [e.name for e in h.read(lambda tx: tx.group([], ["L"]))] == []


def test_a_group_is_walked_through_shared_labels(opened: Opened) -> None:
    """Chains of labels, isolated environments, labels nobody carries: the same sets as base.connected."""
    chain = [env("e0", "L0"), env("e1", "L0", "L1"), env("e2", "L1", "L2"), env("e3", "L2")]
    others = [env("x"), env("y", "M"), env("z", "M")]
    opened.tx(lambda tx: [tx.save_environment(e) for e in chain + others])
    group = lambda names, labels: [e.name for e in opened.tx(lambda tx: tx.group(names, labels))]  # noqa: E731
    whole = ["e0", "e1", "e2", "e3"]
    for name in whole:
        assert group([name], []) == whole
    assert group([], ["L1"]) == whole
    assert group(["x"], []) == ["x"]
    assert group([], ["M"]) == ["y", "z"]
    assert group(["y", "e3"], ["nobody"]) == [*whole, "y", "z"]
    assert group([], ["nobody"]) == []
    assert group(["ghost"], ["nobody"]) == []
    assert group([], []) == []
    assert opened.tx(lambda tx: tx.group(["e1"], []))[1] == env("e1", "L0", "L1")  # whole rows, in name order
    opened.tx(lambda tx: tx.save_environment(env("e1", "L0")))  # the chain breaks at e1-L1
    assert group(["e0"], []) == ["e0", "e1"]
    assert group(["e3"], []) == ["e2", "e3"]
    # Random graphs against the reference walk.
    rng = random.Random(11)
    opened.tx(lambda tx: [tx.delete_environment(e.name) for e in tx.environments()])
    pool = [f"L{i}" for i in range(12)]
    envs = [env(f"r{i:02}", *rng.sample(pool, rng.choice((0, 1, 1, 2)))) for i in range(40)]
    opened.tx(lambda tx: [tx.save_environment(e) for e in envs])
    by_name = {e.name: e for e in envs}
    for _ in range(30):
        names = rng.sample([*by_name, "ghost"], rng.randint(0, 2))
        labels = rng.sample([*pool, "nobody"], rng.randint(0, 2))
        assert group(names, labels) == connected(names, labels, by_name), (names, labels)


def test_a_group_stays_locked_while_labels_change(opened: Opened) -> None:
    """Decisions through group() while environments join and leave the group: every group returned is the
    connected set of what is committed, and no update is lost."""
    opened.tx(lambda tx: [tx.save_environment(e) for e in (env("a", "L"), env("b", "M"), env("c", "M"))])

    def bump(names: list[str], labels: list[str]) -> Callable[[Tx], list[str]]:
        def fn(tx: Tx) -> list[str]:
            group = tx.group(names, labels)
            time.sleep(0.002)
            assert [e.name for e in group] == connected(names, labels, {e.name: e for e in tx.environments()})
            for e in group:
                tx.save_environment(Environment(**{**e.__dict__, "slots": e.slots + 1}))
            return [e.name for e in group]

        return fn

    def relabel(i: int) -> Callable[[Tx], list[str]]:
        def fn(tx: Tx) -> list[str]:
            b = next(e for e in tx.group(["b"], []) if e.name == "b")
            tx.save_environment(Environment(**{**b.__dict__, "labels": ("M", "L") if i % 2 else ("M",)}))
            return []

        return fn

    ops = [bump(["a"], []) if i % 3 == 0 else bump([], ["M"]) if i % 3 == 1 else relabel(i) for i in range(45)]
    groups = _gather(opened, ops)
    slots = {e.name: e.slots for e in opened.tx(lambda tx: tx.environments())}
    assert slots == {name: 1 + sum(name in g for g in groups) for name in ("a", "b", "c")}


def test_leases(opened: Opened) -> None:
    def fill(tx: Tx) -> None:
        tx.save_environment(env("a"))
        tx.insert_lease(lease("l1", "a", 1, acquired_at=100.0, key="ci"))
        tx.insert_lease(lease("l2", "a", 2, acquired_at=50.0, key="other"))
        tx.insert_lease(lease("l3", "b", 3))

    opened.tx(fill)
    assert opened.tx(lambda tx: tx.lease("l1")) == lease("l1", "a", 1)
    assert opened.tx(lambda tx: tx.lease("nope")) is None
    assert [x.id for x in opened.tx(lambda tx: tx.live_leases(["a"]))] == ["l2", "l1"]
    assert [x.id for x in opened.tx(lambda tx: tx.live_leases(["a", "b"]))] == ["l2", "l1", "l3"]
    assert opened.tx(lambda tx: tx.live_leases([])) == []
    assert _id(opened.tx(lambda tx: tx.oldest_live_lease("a", None))) == "l2"
    assert _id(opened.tx(lambda tx: tx.oldest_live_lease("a", "ci"))) == "l1"
    assert opened.tx(lambda tx: tx.oldest_live_lease("a", "nobody")) is None

    def end(tx: Tx) -> None:
        x = tx.lease("l2")
        assert x is not None
        x.state, x.ended_at, x.expires_at, x.ttl, x.collect_by = "released", 120.0, 180.0, 90, 130.0
        tx.update_lease(x)

    opened.tx(end)
    ended = opened.tx(lambda tx: tx.lease("l2"))
    assert ended is not None
    assert (ended.state, ended.ended_at, ended.expires_at, ended.ttl, ended.collect_by) == (
        "released", 120.0, 180.0, 90, 130.0,
    )  # fmt: skip
    assert [x.id for x in opened.tx(lambda tx: tx.live_leases(["a"]))] == ["l1"]


def _id(value: Lease | None) -> str | None:
    return value.id if value is not None else None


def test_tickets(opened: Opened) -> None:
    def fill(tx: Tx) -> None:
        tx.insert_ticket(ticket("t3", 3, "a", request_id="r3"))
        tx.insert_ticket(ticket("t1", 1, None, "L", metadata={"x": "y"}))
        tx.insert_ticket(ticket("t2", 2, "b"))
        tx.insert_ticket(ticket("t4", 4, "a", state="left", ended_at=10.0))

    opened.tx(fill)
    assert opened.tx(lambda tx: tx.ticket("t1")) == ticket("t1", 1, None, "L", metadata={"x": "y"})
    assert opened.tx(lambda tx: tx.ticket("nope")) is None
    assert _tid(opened.tx(lambda tx: tx.ticket_by_request("ci", "r3"))) == "t3"
    assert opened.tx(lambda tx: tx.ticket_by_request("other", "r3")) is None
    waiting = lambda envs, labels: [t.id for t in opened.tx(lambda tx: tx.waiting_tickets(envs, labels))]  # noqa: E731
    assert waiting(["a"], ["L"]) == ["t1", "t3"]
    assert waiting(["a", "b"], []) == ["t2", "t3"]
    assert waiting([], []) == []
    assert waiting([], ["L", "nobody"]) == ["t1"]
    assert waiting(["b"], ["L"]) == ["t1", "t2"]

    def grant(tx: Tx) -> None:
        t = tx.ticket("t3")
        assert t is not None
        t.state, t.lease_id, t.seen_at = "granted", "l9", 150.0
        tx.update_ticket(t)

    opened.tx(grant)
    t3 = opened.tx(lambda tx: tx.ticket("t3"))
    assert t3 is not None
    assert (t3.state, t3.lease_id, t3.seen_at) == ("granted", "l9", 150.0)
    assert waiting(["a"], ["L"]) == ["t1"]

    def end_granted(tx: Tx) -> None:  # granted tickets whose lease ended before the cut (t5) and after it (t6)
        tx.insert_ticket(ticket("t5", 5, "a", request_id="r5", state="granted", lease_id="l5", ended_at=10.0))
        tx.insert_ticket(ticket("t6", 6, "a", request_id="r6", state="granted", lease_id="l6", ended_at=30.0))

    opened.tx(end_granted)
    # prune forgets tickets that ended before the cut, with their request ids; a granted ticket whose lease is
    # live has not ended and stays.
    opened.tx(lambda tx: tx.prune_tickets(20.0, 100))
    assert opened.tx(lambda tx: tx.ticket("t4")) is None
    assert opened.tx(lambda tx: tx.ticket("t5")) is None
    assert opened.tx(lambda tx: tx.ticket_by_request("ci", "r5")) is None
    assert [_tid(opened.tx(lambda tx, t=t: tx.ticket(t))) for t in ("t3", "t6")] == ["t3", "t6"]


def _tid(value: Ticket | None) -> str | None:
    return value.id if value is not None else None


@pytest.fixture(params=["sqlite", "postgres"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    """The Service on each store, with a FakeClock (on PostgreSQL too: the test moves time by days)."""
    if request.param == "sqlite":
        h = Harness(tmp_path / "db.sqlite")
    else:
        url = request.getfixturevalue("pg_url")
        h = Harness(url, make_store=lambda clock: PostgresStore(url, listen=False, clock=clock))
    try:
        yield h
    finally:
        h.close()


def test_a_granted_ticket_is_forgotten_a_retention_period_after_its_lease_ended(harness: Harness) -> None:
    h = harness
    h.put("a")
    h.put("b")
    ended = h.acquire(request("a", request_id="r-ended"))
    assert isinstance(ended, Granted)
    h.run(h.svc.release(ADMIN, ended.lease.id, ended.token))
    maybe = h.run(h.svc.maybe_acquire(ADMIN, "b"))  # a /maybe POST makes a ticket too
    h.run(h.svc.maybe_release(ADMIN, "b"))
    with pytest.raises(TicketGone):  # API.md: the same request_id is 410 once its lease has ended ...
        h.acquire(request("a", request_id="r-ended"))
    h.clock.advance(h.settings.history_days * DAY + 1)
    live = h.acquire(request("a", request_id="r-live"))
    assert isinstance(live, Granted)
    h.run(h.svc.prune())
    ticket_of = lambda granted: h.read(lambda tx: tx.ticket(granted.lease.ticket_id))  # noqa: E731
    # ... and forgotten once it has been kept long enough; a ticket whose lease is live stays.
    assert (ticket_of(ended), ticket_of(maybe), _tid(ticket_of(live))) == (None, None, live.lease.ticket_id)
    with pytest.raises(Busy):  # the forgotten request_id makes a new request (here: "a" is held by r-live)
        h.acquire(request("a", request_id="r-ended", queue=False))
    repeat = h.acquire(request("a", request_id="r-live"))
    assert isinstance(repeat, Granted)
    assert repeat.lease.id == live.lease.id


# -- bounded history: the prune and the forgetting of idle auto-created environments ------------------------

DAY = 86400


def test_prune_deletes_in_batches_only_what_ended_before_the_cut(opened: Opened) -> None:
    def fill(tx: Tx) -> list[int]:
        tx.insert_ticket(ticket("t-wait", 1, "a", enqueued_at=1.0))  # waiting since long ago: not ended
        tx.insert_ticket(ticket("t-live", 2, "a", state="granted", lease_id="l-live"))  # its lease is live
        for i, ended in enumerate((10.0, 11.0, 12.0, 30.0)):
            tx.insert_ticket(ticket(f"t{i}", 10 + i, "a", state="left", ended_at=ended, request_id=f"r{i}"))
        tx.insert_lease(lease("l-live", "a", 1, acquired_at=1.0))  # live since long ago
        for i, ended in enumerate((10.0, 11.0, 12.0, 30.0)):
            x = lease(f"l{i}", "a", 10 + i, acquired_at=5.0)
            x.state, x.ended_at = "released", ended
            tx.insert_lease(x)
        # Events in id order; the one at 15 comes after one at 25 (a clock set back): it waits for a later prune.
        return [tx.add_event(Event(at=at, kind="acquired", environment="a")) for at in (1, 2, 3, 4, 5, 25, 15, 30)]

    ids = opened.tx(fill)

    def tickets() -> list[str]:
        ids = ("t-wait", "t-live", "t0", "t1", "t2", "t3")
        return sorted(t for t in ids if opened.tx(lambda tx, t=t: tx.ticket(t)) is not None)

    def leases() -> list[str]:
        ids = ("l-live", "l0", "l1", "l2", "l3")
        return sorted(x for x in ids if opened.tx(lambda tx, x=x: tx.lease(x)) is not None)

    assert [opened.tx(lambda tx: tx.prune_tickets(20.0, 2)) for _ in range(3)] == [2, 1, 0]
    assert tickets() == ["t-live", "t-wait", "t3"]
    assert opened.tx(lambda tx: tx.ticket_by_request("ci", "r0")) is None
    assert [opened.tx(lambda tx: tx.prune_leases(20.0, 2)) for _ in range(3)] == [2, 1, 0]
    assert leases() == ["l-live", "l3"]
    assert [opened.tx(lambda tx: tx.prune_events(20.0, 2)) for _ in range(4)] == [2, 2, 1, 0]
    remaining = [e.id for e in opened.tx(lambda tx: tx.events_after(0, 100))]
    assert remaining == ids[5:]
    # A client resuming from a pruned event gets what remains; ids keep growing after a prune (SSE resumes by id).
    assert [e.id for e in opened.tx(lambda tx: tx.events_after(ids[0], 100))] == ids[5:]
    assert opened.tx(lambda tx: tx.prune_events(100.0, 10)) == 3
    assert opened.tx(lambda tx: tx.add_event(Event(at=200.0, kind="left", environment="a"))) > ids[-1]


def test_idle_auto_created_environments_are_found_by_when_they_were_last_used(opened: Opened) -> None:
    def fill(tx: Tx) -> None:
        for name, auto in (("a", True), ("b", True), ("c", True), ("declared", False)):
            tx.save_environment(Environment(name=name, auto=auto, created_at=1.0, updated_at=1.0))
        for name, at in (("a", 10.0), ("b", 50.0), ("c", 40.0), ("declared", 5.0)):
            tx.touch_environment(name, at)

    opened.tx(fill)
    idle = lambda before, limit=10: opened.tx(lambda tx: tx.idle_auto_environments(before, limit))  # noqa: E731
    assert idle(20.0) == ["a"]
    assert idle(100.0) == ["a", "c", "b"]  # least recently used first; a declared one never
    assert idle(100.0, 2) == ["a", "c"]
    opened.tx(lambda tx: tx.touch_environment("a", 60.0))
    assert idle(55.0) == ["c", "b"]
    opened.tx(lambda tx: tx.delete_environment("c"))
    assert idle(100.0) == ["b", "a"]


def _events_before(h: Harness, cut: float) -> list[Event]:
    return [e for e in h.events() if e.at < cut]


def test_prune_removes_old_history_in_batches_and_keeps_what_is_live(harness: Harness) -> None:
    h = harness
    h.put("a")
    old = h.acquire(request("a", request_id="r-old"))
    assert isinstance(old, Granted)
    h.run(h.svc.release(ADMIN, old.lease.id, old.token))
    start = h.clock.now()
    many = 2 * PRUNE_BATCH + 500  # more old events than two batches

    def long_ago(tx: Tx) -> None:
        for i in range(many):
            tx.add_event(Event(at=start, kind="queued", environment="a", seq=i))
        # A lease held since long ago (renewed for months) and a ticket waiting for it as long: both live.
        tx.insert_lease(
            Lease(id="l_held", environment="a", token="k_held", holder="me", metadata={}, fence=tx.next_fence(),
                  ttl=3600, acquired_at=start, expires_at=start + 1000 * DAY, touched_at=start, key_name="tester")
        )  # fmt: skip
        tx.insert_ticket(
            Ticket(id="t_waiting", seq=tx.next_seq(), key_name="tester", environment="a", label=None, holder="me",
                   ttl=60, priority=0, metadata={}, enqueued_at=start, seen_at=start + 1000 * DAY)
        )  # fmt: skip

    h.read(long_ago)
    first = h.events()[0]
    h.clock.advance(h.settings.history_days * DAY + 1)
    h.put("c")
    recent = h.acquire(request("c", request_id="r-recent"))
    assert isinstance(recent, Granted)
    h.run(h.svc.release(ADMIN, recent.lease.id, recent.token))
    cut = h.clock.now() - h.settings.history_days * DAY
    kept = [e for e in h.events() if e.at >= cut]
    assert len(_events_before(h, cut)) == many + 3  # the put, acquired and released of "a" as well

    done = h.run(h.svc.prune())
    assert (done.tickets, done.leases, done.events, done.forgotten) == (1, 1, many + 3, 0)
    assert done.largest <= PRUNE_BATCH < many  # the events in several batches, none larger than PRUNE_BATCH
    assert done.batches >= 1 + 1 + 3 + 1 + 1  # tickets, leases, events, webhook deliveries, forgetting
    assert h.events() == kept
    # A client resuming from before the pruned range gets what remains.
    assert h.run(h.svc.events_after(first.id or 0, 10_000)) == kept
    with pytest.raises(NotFound):  # API.md: an ended lease is kept for CALL_ME_HISTORY_DAYS
        h.run(h.svc.lease(old.lease.id))
    assert h.run(h.svc.lease("l_held")).lease.live
    assert h.run(h.svc.lease(recent.lease.id)).lease.state == "released"
    assert [t.id for t in h.waiting()] == ["t_waiting"]
    with pytest.raises(TicketGone):  # the recent request_id is remembered ...
        h.acquire(request("c", request_id="r-recent"))
    with pytest.raises(Busy):  # ... the pruned one is not: a new request ("a" is held, and waited for)
        h.acquire(request("a", request_id="r-old", queue=False))
    again = h.run(h.svc.prune())
    assert (again.tickets, again.leases, again.events, again.batches) == (0, 0, 0, 5)


def test_a_granted_ticket_whose_lease_was_pruned_first_is_gone(harness: Harness) -> None:
    h = harness
    h.put("a")
    granted = h.acquire(request("a", request_id="r1"))
    assert isinstance(granted, Granted)
    h.run(h.svc.release(ADMIN, granted.lease.id, granted.token))
    assert h.read(lambda tx: tx.prune_leases(h.clock.now() + 1, 10)) == 1  # the ticket is still there
    with pytest.raises(TicketGone):
        h.acquire(request("a", request_id="r1"))


def test_request_ids_are_kept_a_day_whatever_the_history_setting(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db.sqlite", settings=Settings(history_days=0, ticket_grace=10, default_ttl=60))
    try:
        h.put("a")
        granted = h.acquire(request("a", request_id="r1"))
        assert isinstance(granted, Granted)
        h.run(h.svc.release(ADMIN, granted.lease.id, granted.token))
        h.clock.advance(REQUEST_ID_RETENTION - 60)
        assert h.run(h.svc.prune()).tickets == 0
        with pytest.raises(TicketGone):
            h.acquire(request("a", request_id="r1"))
        h.clock.advance(120)
        assert h.run(h.svc.prune()).tickets == 1
        assert isinstance(h.acquire(request("a", request_id="r1")), Granted)
    finally:
        h.close()


def test_idle_auto_created_environments_are_forgotten_and_declared_ones_never(harness: Harness) -> None:
    h = harness
    month = h.settings.auto_forget_days * DAY
    h.put("declared")
    for name in ("idle", "held", "queued", "used", "promoted"):
        got = h.acquire(request(name))
        assert isinstance(got, Granted)
        h.run(h.svc.release(ADMIN, got.lease.id, got.token))
    h.put("promoted", description="declared by an admin after a first request")
    start = h.clock.now()

    def in_use(tx: Tx) -> None:
        # "held": a lease that lives on (renewed for months); "queued": a ticket still waiting.
        tx.insert_lease(
            Lease(id="l_held", environment="held", token="k_held", holder="me", metadata={}, fence=tx.next_fence(),
                  ttl=3600, acquired_at=start, expires_at=start + 3 * month, touched_at=start, key_name="tester")
        )  # fmt: skip
        tx.insert_ticket(
            Ticket(id="t_queued", seq=tx.next_seq(), key_name="tester", environment="queued", label=None,
                   holder="me", ttl=60, priority=0, metadata={}, enqueued_at=start, seen_at=start + 3 * month)
        )  # fmt: skip

    h.read(in_use)
    h.clock.advance(month / 2)
    used = h.acquire(request("used"))  # a ticket made for it: in use
    assert isinstance(used, Granted)
    h.run(h.svc.release(ADMIN, used.lease.id, used.token))
    h.clock.advance(month / 2 + 1)
    names = lambda: [e.name for e in h.environments()]  # noqa: E731
    assert h.run(h.svc.prune()).forgotten == 1
    assert names() == ["declared", "held", "promoted", "queued", "used"]
    deleted = [(e.environment, e.actor, e.detail) for e in h.events() if e.kind == "environment_deleted"]
    assert deleted == [("idle", None, FORGOTTEN.format(h.settings.auto_forget_days))]
    # A month on, unused: only the live lease keeps its environment; declared ones stay whatever happens.
    h.clock.advance(month + 1)
    h.run(h.svc.sweep())  # ends what the ticket of "queued" was granted and never collected
    assert h.run(h.svc.prune()).forgotten == 2
    assert names() == ["declared", "held", "promoted"]
    assert isinstance(h.acquire(request("idle")), Granted)  # a forgotten name is created again on request
    assert [e.auto for e in h.environments() if e.name == "idle"] == [True]


def _at_version_3(execute: Callable[..., Any], dialect: str) -> None:
    execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    for step in MIGRATIONS[:3]:
        for statement in statements(getattr(step, dialect)):
            execute(statement)
    execute("INSERT INTO meta VALUES ('schema_version', '3')")
    for name, auto in (("busy", True), ("quiet", True), ("declared", False)):
        execute("INSERT INTO environments VALUES (?, 1, '[]', '', '{}', ?, NULL, ?, 1.0, 2.0)", (name, False, auto))
    for at in (300.0, 500.0):
        execute("INSERT INTO events (at, kind, environment) VALUES (?, 'acquired', 'busy')", (at,))
    execute("INSERT INTO events (at, kind, environment) VALUES (900.0, 'acquired', 'declared')")


def _check_last_used_backfilled(opened: Opened) -> None:
    try:  # from its newest event, or its last change when it has none; declared ones are never idle
        assert opened.tx(lambda tx: tx.idle_auto_environments(1e9, 10)) == ["quiet", "busy"]
        assert opened.tx(lambda tx: tx.idle_auto_environments(500.0, 10)) == ["quiet"]
    finally:
        opened.close()


def test_a_sqlite_database_of_schema_version_3_gets_when_auto_environments_were_last_used(tmp_path: Path) -> None:
    path = str(tmp_path / "v3.sqlite")
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        _at_version_3(conn.execute, "sqlite")
    _check_last_used_backfilled(Opened("sqlite", lambda: SQLiteStore(path, Clock())))


def test_a_postgres_database_of_schema_version_3_gets_when_auto_environments_were_last_used(
    postgres: PostgresServer,
) -> None:
    url = postgres.create_database(empty=True)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            _at_version_3(lambda sql, params=(): conn.execute(sql.replace("?", "%s"), params), "postgres")
        _check_last_used_backfilled(Opened("postgres", lambda: PostgresStore(url)))
    finally:
        postgres.drop_database(url)


def test_due(opened: Opened) -> None:
    def fill(tx: Tx) -> None:
        tx.insert_lease(lease("l1", "a", 1, acquired_at=0.0))  # expires at 60
        tx.insert_lease(lease("l2", "b", 2, acquired_at=100.0))
        x = lease("l3", "c", 3, acquired_at=100.0)
        x.collect_by = 110.0
        tx.insert_lease(x)
        tx.insert_ticket(ticket("t1", 1, None, "L", seen_at=50.0))
        tx.insert_ticket(ticket("t2", 2, "d", seen_at=50.0))
        tx.insert_ticket(ticket("t3", 3, "e", seen_at=95.0))

    opened.tx(fill)
    assert opened.tx(lambda tx: tx.due(120.0, 30.0)) == (["a", "c", "d"], ["L"])
    assert opened.tx(lambda tx: tx.due(59.0, 30.0)) == ([], [])


def test_events(opened: Opened) -> None:
    def add(tx: Tx) -> list[int]:
        return [
            tx.add_event(Event(at=float(i), kind="acquired", environment="a" if i % 2 else "b", seq=i, fence=i))
            for i in range(1, 6)
        ]

    ids = opened.tx(add)
    assert ids == sorted(ids)
    assert len(set(ids)) == 5
    newest = opened.tx(lambda tx: tx.events(None, 3))
    assert [e.id for e in newest] == ids[::-1][:3]
    assert newest[0] == Event(at=5.0, kind="acquired", environment="a", seq=5, fence=5, id=ids[4])
    assert [e.seq for e in opened.tx(lambda tx: tx.events("a", 100))] == [5, 3, 1]
    assert [e.id for e in opened.tx(lambda tx: tx.events_after(ids[1], 2))] == ids[2:4]


def test_counters_grow_across_reopen(opened: Opened) -> None:
    fences = [opened.tx(lambda tx: tx.next_fence()) for _ in range(3)]
    seqs = [opened.tx(lambda tx: tx.next_seq()) for _ in range(3)]
    assert fences == sorted(set(fences))
    assert seqs == sorted(set(seqs))
    opened.reopen()
    assert opened.tx(lambda tx: tx.next_fence()) > fences[-1]
    assert opened.tx(lambda tx: tx.next_seq()) > seqs[-1]


def test_clock_is_near_the_wall_and_moves(opened: Opened) -> None:
    first = opened.tx(lambda tx: tx.now())
    assert abs(first - time.time()) < 5
    time.sleep(0.01)
    assert opened.tx(lambda tx: tx.now()) > first
    assert abs(opened.store.started_at - time.time()) < 60
    assert opened.run(opened.store.readiness()) is None


# -- atomicity and durability -----------------------------------------------------------------------------


class Boom(Exception):
    pass


def test_an_error_in_the_operation_rolls_everything_back(opened: Opened) -> None:
    def half(tx: Tx) -> None:
        tx.save_environment(env("a"))
        tx.insert_lease(lease("l1", "a", 1))
        tx.insert_ticket(ticket("t1", 1, "a"))
        tx.add_event(Event(at=1.0, kind="acquired", environment="a"))
        raise Boom

    with pytest.raises(Boom):
        opened.tx(half)
    assert opened.tx(lambda tx: (tx.environments(), tx.lease("l1"), tx.ticket("t1"), tx.events(None, 10))) == (
        [], None, None, [],
    )  # fmt: skip
    # The store is still usable afterwards.
    opened.tx(lambda tx: tx.save_environment(env("a")))
    assert [e.name for e in opened.tx(lambda tx: tx.environments())] == ["a"]


def test_a_database_error_is_a_store_error_and_rolls_back(opened: Opened) -> None:
    def duplicate(tx: Tx) -> None:
        tx.save_environment(env("a"))
        tx.insert_lease(lease("l1", "a", 1))
        tx.insert_lease(lease("l1", "a", 2))  # the same id twice

    with pytest.raises(StoreError):
        opened.tx(duplicate)
    assert opened.tx(lambda tx: tx.environments()) == []


def test_committed_writes_survive_a_reopen(opened: Opened) -> None:
    def fill(tx: Tx) -> int:
        tx.save_environment(env("a", "L"))
        tx.insert_lease(lease("l1", "a", tx.next_fence()))
        tx.insert_ticket(ticket("t1", tx.next_seq(), None, "L"))
        return tx.add_event(Event(at=1.0, kind="acquired", environment="a", lease="l1"))

    event_id = opened.tx(fill)
    opened.reopen()
    assert opened.tx(lambda tx: tx.environment("a")) == env("a", "L")
    assert _id(opened.tx(lambda tx: tx.lease("l1"))) == "l1"
    assert _tid(opened.tx(lambda tx: tx.ticket("t1"))) == "t1"
    assert [e.id for e in opened.tx(lambda tx: tx.events(None, 10))] == [event_id]


# -- concurrency: group locking -----------------------------------------------------------------------------


def _gather(opened: Opened, fns: list[Callable[[Tx], T]]) -> list[T]:
    async def all_at_once() -> list[T]:
        return list(await asyncio.gather(*(opened.store.transact(fn) for fn in fns)))

    return opened.run(all_at_once())


def test_decisions_on_one_group_never_interleave(opened: Opened) -> None:
    """Read-modify-write through group() from different entry points (a name, a label): no lost update."""
    opened.tx(lambda tx: [tx.save_environment(e) for e in (env("a", "L"), env("b", "L", "M"), env("c", "M"))])

    def bump(names: list[str], labels: list[str]) -> Callable[[Tx], None]:
        def fn(tx: Tx) -> None:
            group = tx.group(names, labels)
            assert [e.name for e in group] == ["a", "b", "c"]
            time.sleep(0.002)  # widen the window between the read and the write
            for e in group:
                tx.save_environment(Environment(**{**e.__dict__, "slots": e.slots + 1}))

        return fn

    entries: list[tuple[list[str], list[str]]] = [(["a"], []), ([], ["M"]), (["c"], ["L"]), (["b"], [])]
    _gather(opened, [bump(*entries[i % 4]) for i in range(40)])
    assert [e.slots for e in opened.tx(lambda tx: tx.environments())] == [41, 41, 41]


def test_event_ids_appear_in_commit_order(opened: Opened) -> None:
    """A reader that has seen event N has seen every event before N (SSE resume by Last-Event-ID)."""
    opened.tx(lambda tx: [tx.save_environment(e) for e in (env("p"), env("q"))])
    a_inside = threading.Event()

    def a(tx: Tx) -> None:
        tx.group(["p"], [])
        tx.add_event(Event(at=tx.now(), kind="released", environment="p"))
        a_inside.set()
        time.sleep(0.5)  # its event stays uncommitted while b, on another environment, goes ahead

    def b(tx: Tx) -> None:
        a_inside.wait(5)
        tx.group(["q"], [])
        tx.add_event(Event(at=tx.now(), kind="released", environment="q"))

    seen: list[list[int]] = []

    async def watch() -> None:
        for _ in range(40):
            events = await opened.store.transact(lambda tx: tx.events_after(0, 100))
            seen.append([e.id or 0 for e in events])
            await asyncio.sleep(0.02)

    async def run() -> None:
        await asyncio.gather(opened.store.transact(a), opened.store.transact(b), watch())

    opened.run(run())
    final = [e.id or 0 for e in opened.tx(lambda tx: tx.events_after(0, 100))]
    assert len(final) == 2
    for ids in seen:
        assert ids == final[: len(ids)], f"saw {ids} of {final}"


def test_an_environment_is_created_once_by_racing_operations(opened: Opened) -> None:
    def create(tx: Tx) -> bool:
        if tx.environment("x") is not None:
            return False
        time.sleep(0.002)
        tx.save_environment(Environment(name="x", auto=True))
        tx.add_event(Event(at=tx.now(), kind="environment_changed", environment="x", detail="created"))
        return True

    assert sum(_gather(opened, [create] * 20)) == 1
    assert len(opened.tx(lambda tx: tx.events("x", 100))) == 1


def test_a_request_id_is_taken_once_by_racing_operations(opened: Opened) -> None:
    def take(i: int) -> Callable[[Tx], str]:
        def fn(tx: Tx) -> str:
            found = tx.ticket_by_request("ci", "r1")
            if found is not None:
                return found.id
            time.sleep(0.002)
            tx.insert_ticket(ticket(f"t{i}", tx.next_seq(), "a", request_id="r1"))
            return f"t{i}"

        return fn

    assert len(set(_gather(opened, [take(i) for i in range(10)]))) == 1


def test_a_row_read_before_its_lock_is_not_written_back_stale(opened: Opened) -> None:
    """Leave-like operations read a ticket, then lock: a change made meanwhile is never overwritten."""
    opened.tx(lambda tx: (tx.save_environment(env("a")), tx.insert_ticket(ticket("t1", 1, "a"))))

    def touch(i: int) -> Callable[[Tx], None]:
        def fn(tx: Tx) -> None:
            t = tx.ticket("t1")
            assert t is not None
            time.sleep(0.002)
            tx.group(["a"], [])
            t.seen_at += 1
            tx.update_ticket(t)

        return fn

    _gather(opened, [touch(i) for i in range(20)])
    t1 = opened.tx(lambda tx: tx.ticket("t1"))
    assert t1 is not None
    assert t1.seen_at == 120.0


# -- migrations ---------------------------------------------------------------------------------------------


def test_a_sqlite_database_of_schema_version_1_is_migrated(tmp_path: Path) -> None:
    path = str(tmp_path / "v1.sqlite")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    for statement in statements(MIGRATIONS[0].sqlite):
        conn.execute(statement)
    conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    _fill_v1(conn.execute)
    conn.close()
    _check_migrated(Opened("sqlite", lambda: SQLiteStore(path, Clock())))
    version = sqlite3.connect(path).execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    assert version == (str(SCHEMA_VERSION),)


def test_a_postgres_database_of_schema_version_1_is_migrated(postgres: PostgresServer) -> None:
    url = postgres.create_database(empty=True)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            for statement in statements(MIGRATIONS[0].postgres):
                conn.execute(statement)
            conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
            _fill_v1(lambda sql, params=(): conn.execute(sql.replace("?", "%s"), params))
        _check_migrated(Opened("postgres", lambda: PostgresStore(url)))
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            assert row == (str(SCHEMA_VERSION),)
    finally:
        postgres.drop_database(url)


def _fill_v1(execute: Callable[..., Any]) -> None:
    execute("UPDATE counters SET value = 41 WHERE name = 'fence'")
    execute("UPDATE counters SET value = 17 WHERE name = 'seq'")
    for name, labels in (("uat", '["L"]'), ("qa", '["M","L"]'), ("solo", "[]"), ("other", '["N"]')):
        execute(
            "INSERT INTO environments VALUES (?, 1, ?, 'old', '{}', ?, NULL, ?, 1.0, 2.0)", (name, labels, False, False)
        )
    execute(
        "INSERT INTO leases VALUES ('l1', 'uat', 'k_x', 'me', '{}', 41, 60, 1.0, 61.0, 1.0, 'ci', 'active', "
        "NULL, 't1', 16, NULL)"
    )
    # Before version 3 a granted ticket kept ended_at NULL after its lease ended (t2), so was never pruned.
    execute(
        "INSERT INTO leases VALUES ('l2', 'uat', 'k_y', 'me', '{}', 40, 60, 1.0, 61.0, 1.0, 'ci', 'released', "
        "5.0, 't2', 17, NULL)"
    )
    for ticket_id, seq, lease_id in (("t1", 16, "l1"), ("t2", 17, "l2")):
        execute(
            "INSERT INTO tickets VALUES (?, ?, 'ci', 'uat', NULL, 'me', 60, 0, '{}', 1.0, 1.0, ?, 'granted', ?, NULL)",
            (ticket_id, seq, f"r{seq}", lease_id),
        )


def _check_migrated(opened: Opened) -> None:
    try:
        assert opened.tx(lambda tx: tx.environment("uat")) == Environment(
            name="uat", labels=("L",), description="old", created_at=1.0, updated_at=2.0
        )
        # Version 4 fills the labels table from the environments' lists of labels, and groups are walked on it.
        assert label_rows(opened.store) == [("other", "N"), ("qa", "L"), ("qa", "M"), ("uat", "L")]
        group = lambda names, labels: [e.name for e in opened.tx(lambda tx: tx.group(names, labels))]  # noqa: E731
        assert (group(["uat"], []), group([], ["M"]), group(["solo"], [])) == (["qa", "uat"], ["qa", "uat"], ["solo"])
        assert _id(opened.tx(lambda tx: tx.lease("l1"))) == "l1"
        tickets = [opened.tx(lambda tx, t=t: tx.ticket(t)) for t in ("t1", "t2")]
        assert [(t.id, t.ended_at) for t in tickets if t is not None] == [
            ("t1", None),
            ("t2", 5.0),
        ]  # ends with its lease
        assert opened.tx(lambda tx: tx.next_fence()) == 42
        assert opened.tx(lambda tx: tx.next_seq()) == 18
        opened.reopen()  # migrating again is a no-op
        assert opened.tx(lambda tx: tx.next_fence()) == 43
    finally:
        opened.close()


def test_replicas_starting_at_once_migrate_once(postgres: PostgresServer) -> None:
    url = postgres.create_database(empty=True)
    try:
        errors: list[BaseException] = []

        def start() -> None:
            try:
                Opened("postgres", lambda: PostgresStore(url, listen=False)).close()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=start) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
    finally:
        postgres.drop_database(url)


# -- PostgreSQL only: replicas, wake-ups, lost connections --------------------------------------------------


def test_a_commit_on_one_replica_reaches_the_others(pg_url: str) -> None:
    a, b = Opened("postgres", lambda: PostgresStore(pg_url)), Opened("postgres", lambda: PostgresStore(pg_url))
    try:
        heard: list[tuple[list[str], list[Event]]] = []
        b.store.subscribe(lambda tickets, events: heard.append((list(tickets), list(events))))
        a.store.subscribe(lambda tickets, events: heard.append((["from a itself?"], [])))
        time.sleep(0.3)  # b's LISTEN connection is up

        def grant(tx: Tx) -> int:
            tx.insert_ticket(ticket("t1", 1, "a"))
            t = tx.ticket("t1")
            assert t is not None
            t.state = "granted"
            tx.update_ticket(t)
            return tx.add_event(Event(at=1.0, kind="acquired", environment="a", seq=1))

        event_id = a.tx(grant)
        with pytest.raises(Boom):
            a.tx(lambda tx: (tx.add_event(Event(at=1.0, kind="acquired", environment="z")), _raise()))
        deadline = time.monotonic() + 5
        while len(heard) < 2 and time.monotonic() < deadline:
            b.run(asyncio.sleep(0.02))
        b.run(asyncio.sleep(0.3))
        assert heard == [(["t1"], []), ([], [Event(at=1.0, kind="acquired", environment="a", seq=1, id=event_id)])]
    finally:
        a.close()
        b.close()


def _raise() -> None:
    raise Boom


def test_the_events_reach_the_other_replicas_as_stored_even_when_they_do_not_fit_a_notify(pg_url: str) -> None:
    a, b = Opened("postgres", lambda: PostgresStore(pg_url)), Opened("postgres", lambda: PostgresStore(pg_url))
    try:
        heard: list[Event] = []
        b.store.subscribe(lambda tickets, events: heard.extend(events))
        time.sleep(0.3)  # b's LISTEN connection is up
        written = [
            Event(at=1.5, kind="released", environment="a", lease="l_1", seq=3, fence=7, holder="h", actor="k"),
            # Too long for a NOTIFY's payload (under 8000 bytes): b reads it back.
            Event(at=2.0, kind="revoked", environment="a", detail="x" * 7500),
            Event(at=2.5, kind="environment_changed", environment=None, detail='é and " quotes'),
        ]
        a.tx(lambda tx: [tx.add_event(event) for event in written])
        deadline = time.monotonic() + 5
        while len(heard) < len(written) and time.monotonic() < deadline:
            b.run(asyncio.sleep(0.02))
        stored = a.tx(lambda tx: tx.events_after(0, 100))
        assert [replace(e, id=None) for e in stored] == written
        assert heard == stored
    finally:
        a.close()
        b.close()


def test_lost_connections_are_replaced(pg_url: str, postgres: PostgresServer) -> None:
    opened = Opened("postgres", lambda: PostgresStore(pg_url, listen=False))
    try:
        opened.tx(lambda tx: tx.save_environment(env("a")))
        with psycopg.connect(postgres.admin_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (pg_url.rpartition("/")[2],),
            )
        assert [e.name for e in opened.tx(lambda tx: tx.environments())] == ["a"]
    finally:
        opened.close()


def test_an_unreachable_database_is_a_store_error() -> None:
    opened_loop = asyncio.new_event_loop()
    store = PostgresStore("postgresql://nobody:secret@127.0.0.1:1/none", listen=False)
    try:
        with pytest.raises(StoreError) as raised:
            opened_loop.run_until_complete(store.open())
        assert "secret" not in str(raised.value)
        reason = opened_loop.run_until_complete(store.readiness())
        assert reason is not None
        assert "secret" not in reason
    finally:
        opened_loop.run_until_complete(store.close())
        opened_loop.close()


def test_redact() -> None:
    assert redact("postgresql://u:pw@h:5/db") == "postgresql://u:***@h:5/db"
    assert redact("postgresql://h/db?password=pw&x=1") == "postgresql://h/db?password=***&x=1"
    assert redact("postgresql://u@h/db") == "postgresql://u@h/db"


def test_the_settings_select_the_store() -> None:
    settings = load({"API_KEY": "k" * 8, "CALL_ME_DATABASE": "postgresql://u:pw@h/db", "CALL_ME_PG_LISTEN": "false"})
    assert "pw" not in repr(settings)
    store = for_database(settings.database, Clock(), listen=settings.pg_listen)
    assert isinstance(store, PostgresStore)
    assert (store.listen, store.recheck_interval) == (False, 0.5)
    assert "pw" not in repr(store)
    assert isinstance(for_database("call-me.db", Clock()), SQLiteStore)
    assert for_database("call-me.db", Clock()).recheck_interval is None
    with pytest.raises(ConfigError, match="CALL_ME_PG_LISTEN"):
        load({"API_KEY": "k" * 8, "CALL_ME_PG_LISTEN": "maybe"})
