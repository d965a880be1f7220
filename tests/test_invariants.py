"""Property-based: random sequences of acquire/poll/renew/release/leave/clock/restart steps against the real
Service and SQLite store, checking invariants 1-3 and 5 of API.md after every step."""

from __future__ import annotations

import tempfile
from pathlib import Path

from callme.server import rules
from callme.server.errors import CallMeError, LeaseGone, TicketGone
from callme.server.model import Ticket
from callme.server.outcomes import Granted, Queued
from callme.server.store.postgres import PostgresStore
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from .harness import ADMIN, Harness, request
from .pgserver import PostgresServer

GRACE = 10.0
ENVIRONMENTS = {"e0": ("L0",), "e1": ("L0", "L1"), "e2": ("L1",), "e3": ()}


def queue_order(ticket: Ticket) -> tuple[int, int]:
    """API.md's order, written out here so that a change to the server's own order cannot hide."""
    return (-ticket.priority, ticket.seq)


TARGETS = [("e0", None), ("e1", None), ("e2", None), ("e3", None), (None, "L0"), (None, "L1")]


class LockServer(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        self.h = self._harness()
        self.tickets: list[str] = []
        self.leases: dict[str, str] = {}  # lease id -> token
        self.seen_event = 0
        self.last_fence = 0
        self.restarts: list[tuple[float, set[str], set[int]]] = []
        self.before: list[Ticket] = []
        self.live_before: dict[str, int] = {}

    def _harness(self) -> Harness:
        return Harness(Path(self.dir.name) / "db.sqlite", grace=GRACE)

    @initialize(slots=st.lists(st.integers(1, 2), min_size=4, max_size=4))
    def declare(self, slots: list[int]) -> None:
        for (name, labels), n in zip(ENVIRONMENTS.items(), slots, strict=True):
            self.h.put(name, slots=n, labels=labels)
        self._snapshot()

    def _snapshot(self) -> None:
        self.before = self.h.waiting()
        counts: dict[str, int] = {}
        for lease in self.h.live_leases():
            counts[lease.environment] = counts.get(lease.environment, 0) + 1
        self.live_before = counts

    def _do(self, fn: object) -> object:
        try:
            return fn()  # type: ignore[operator]
        except (TicketGone, LeaseGone):
            return None

    @rule(
        goal=st.sampled_from(TARGETS),
        priority=st.sampled_from([0, 0, 1, -1]),
        ttl=st.integers(1, 30),
        queue=st.booleans(),
    )
    def acquire(self, goal: tuple[str | None, str | None], priority: int, ttl: int, queue: bool) -> None:
        env, label = goal
        try:
            outcome = self.h.acquire(request(env, label, ttl=ttl, priority=priority, queue=queue))
        except CallMeError as exc:
            error = exc
        else:
            self._remember(outcome)
            return
        assert not queue, error
        assert error.code in ("busy", "maintenance")

    @rule(goal=st.sampled_from(TARGETS), priorities=st.lists(st.sampled_from([-1, 0, 1]), min_size=2, max_size=4))
    def crowd(self, goal: tuple[str | None, str | None], priorities: list[int]) -> None:
        """Several requests for one target at once: the queue's order matters only when it is crowded."""
        for priority in priorities:
            self._remember(self.h.acquire(request(*goal, ttl=30, priority=priority)))

    def _remember(self, outcome: object) -> None:
        if isinstance(outcome, Granted):
            self.leases[outcome.lease.id] = outcome.lease.token
        elif isinstance(outcome, Queued) and outcome.ticket.id not in self.tickets:
            self.tickets.append(outcome.ticket.id)

    @precondition(lambda self: self.tickets)
    @rule(data=st.data())
    def poll(self, data: st.DataObject) -> None:
        ticket_id = data.draw(st.sampled_from(self.tickets))
        t = self.h.read(lambda tx: tx.ticket(ticket_id))
        assert t is not None
        outcome = self._do(
            lambda: self.h.acquire(request(t.environment, t.label, priority=t.priority, ticket=ticket_id))
        )
        if isinstance(outcome, Granted):
            # Coming back with a granted ticket returns the same lease and token, as often as asked.
            again = self.h.acquire(request(t.environment, t.label, priority=t.priority, ticket=ticket_id))
            assert isinstance(again, Granted)
            assert (again.lease.id, again.lease.token) == (outcome.lease.id, outcome.lease.token)
        self._remember(outcome)

    @precondition(lambda self: self.leases)
    @rule(data=st.data(), ttl=st.none() | st.integers(1, 30))
    def renew(self, data: st.DataObject, ttl: int | None) -> None:
        lease_id = data.draw(st.sampled_from(list(self.leases)))
        if self._do(lambda: self.h.run(self.h.svc.renew(lease_id, self.leases[lease_id], ttl))) is not None:
            # Renewed after a start-up: from now on the lease follows the deadline its holder asked for.
            for _, leases, _ in self.restarts:
                leases.discard(lease_id)

    @precondition(lambda self: self.leases)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        lease_id = data.draw(st.sampled_from(list(self.leases)))
        self._do(lambda: self.h.run(self.h.svc.release(ADMIN, lease_id, self.leases[lease_id])))

    @precondition(lambda self: self.tickets)
    @rule(data=st.data())
    def leave(self, data: st.DataObject) -> None:
        ticket_id = data.draw(st.sampled_from(self.tickets))
        self.h.run(self.h.svc.leave(ADMIN, ticket_id))

    @rule(seconds=st.floats(0, 20))
    def advance(self, seconds: float) -> None:
        self.h.clock.advance(seconds)

    @rule()
    def sweep(self) -> None:
        self.h.run(self.h.svc.sweep())
        # After a sweep nothing is left that could be granted: no waiting ticket has a usable free slot.
        envs = self.h.environments()
        counts: dict[str, int] = {}
        for lease in self.h.live_leases():
            counts[lease.environment] = counts.get(lease.environment, 0) + 1
        assert rules.schedule(envs, counts, self.h.waiting()) == []

    @rule(name=st.sampled_from(sorted(ENVIRONMENTS)), slots=st.none() | st.integers(1, 3), maintenance=st.booleans())
    def change(self, name: str, slots: int | None, maintenance: bool) -> None:
        self.h.put(name, slots=slots, maintenance=maintenance)

    @rule()
    def restart(self) -> None:
        leases = {lease.id for lease in self.h.live_leases()}
        tickets = {t.seq for t in self.h.waiting()}
        self.h.restart()
        # Nothing acknowledged is lost, and nothing that existed ends at the moment of start-up.
        assert {lease.id for lease in self.h.live_leases()} == leases
        assert {t.seq for t in self.h.waiting()} == tickets
        self.restarts.append((self.h.clock.now(), leases, tickets))

    @invariant()
    def hold(self) -> None:
        if not hasattr(self, "h"):
            return
        envs = {e.name: e for e in self.h.environments()}
        live = self.h.live_leases()
        events = self.h.events(self.seen_event)
        granted = [e for e in events if e.kind == "acquired"]
        counts: dict[str, int] = {}
        for lease in live:
            counts[lease.environment] = counts.get(lease.environment, 0) + 1
        # 1. No grant ever puts an environment over its slots (lowering slots revokes nothing, so a
        #    count over the new slots may stand, but only if nothing was granted there meanwhile).
        for name, count in counts.items():
            if any(e.environment == name for e in granted):
                assert count <= envs[name].slots, (name, count)
            else:
                assert count <= max(envs[name].slots, self.live_before.get(name, 0))
        # 3. Fences strictly increase in the order of grant.
        for event in granted:
            assert event.fence is not None
            assert event.fence > self.last_fence
            self.last_fence = event.fence
        # 2. Grants follow the queue order: no ticket ahead that could use the slot is still waiting.
        still_waiting = {t.seq: t for t in self.h.waiting()}
        for event in granted:
            env = envs.get(event.environment or "")
            mine = next((t for t in self.before if t.seq == event.seq), None)
            if env is None or mine is None:
                continue
            for other in self.before:
                if other.seq in still_waiting and rules.can_serve(env, other):
                    assert queue_order(other) > queue_order(mine), (event, other)
        # 5. After a start-up, nothing that existed at start-up ends before ticket_grace has passed.
        for started, leases, tickets in self.restarts:
            for event in events:
                if event.at >= started + GRACE or (event.actor is not None and event.kind != "abandoned"):
                    continue
                if event.kind in ("expired", "revoked"):
                    assert event.lease not in leases, event
                if event.kind == "abandoned":
                    assert event.seq not in tickets, event
        self.seen_event = max([self.seen_event, *(e.id or 0 for e in events)])
        self._snapshot()

    def teardown(self) -> None:
        self.h.close()
        self.dir.cleanup()


LockServer.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLockServer = LockServer.TestCase


class PostgresLockServer(LockServer):
    """The same machine on PostgreSQL. Time still comes from the FakeClock (the store's test-only `clock`):
    the database's clock cannot be moved, and steps that wait for real time would make examples neither
    repeatable nor shrinkable. What differs between the stores (SQL, locking, sequences, compare-and-set,
    reopening on the same data) is all exercised; the database's clock itself is tested in the contract suite."""

    server: PostgresServer | None = None  # set by the test below

    def _harness(self) -> Harness:
        assert self.server is not None
        self.url = url = self.server.create_database()
        return Harness(url, grace=GRACE, make_store=lambda clock: PostgresStore(url, listen=False, clock=clock))

    def teardown(self) -> None:
        super().teardown()
        assert self.server is not None
        self.server.drop_database(self.url)


def test_invariants_on_postgres(postgres: PostgresServer) -> None:
    PostgresLockServer.server = postgres
    run_state_machine_as_test(
        PostgresLockServer,
        settings=settings(
            max_examples=25, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
        ),
    )
