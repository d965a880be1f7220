"""Property-based: the real Service on a real store, and the reference model of docs/api.md, side by side.

Hypothesis drives random steps (acquire, crowds, polls, renewals, releases, leaving, /maybe, clock steps,
sweeps, slot and maintenance changes, restarts, pauses of the whole process) against both and compares
after every step: each answer (lease, position or error code), every audit event the step caused (grants,
including grants at once, expiries, revocations, abandonments), who holds what with which deadlines, who
waits, every position, and that fences grow. The model (tests/refmodel.py) is written from the contract
alone, so the server's own rules are never the oracle.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path

from callme.server.constants import PAUSE_THRESHOLD
from callme.server.errors import CallMeError
from callme.server.model import Event, Principal
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
from .refmodel import Grants, Happened, QueueModel, Refused

GRACE = 10.0
ENVIRONMENTS = {"e0": ("L0",), "e1": ("L0", "L1"), "e2": ("L1",), "e3": ()}
TARGETS = [("e0", None), ("e1", None), ("e2", None), ("e3", None), (None, "L0"), (None, "L1")]
CLIENT = Principal("ci", "client", 1)
KEYS = {"admin": ADMIN, "client": CLIENT}
# Things created at the very instant of a start-up are neither clearly before nor after it: step past it.
AFTER_START = 0.25
TOLERANCE = 1e-3  # PostgreSQL keeps times to the microsecond
# Mostly shorter than the grace, so that leases end while their waiters are still there.
TTLS = st.sampled_from([1, 2, 3, 5, 8, 30])
# Time that passes before a step: often none, sometimes past a TTL, sometimes about a grace.
ELAPSED = st.sampled_from([0.0, 0.0, 0.0, 1.0, 2.5, 6.0, 9.5, 10.0, 12.0])
# Examples of the SQLite machine: fewer for a quick run (scripts/mutation runs it once per mutant), more for a long one.
EXAMPLES = int(os.environ.get("CALL_ME_MODEL_EXAMPLES", "100"))


class ModelledLockServer(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        self.h = self._harness()
        self.model = QueueModel(GRACE, started_at=self._started_at())
        self.h.clock.advance(AFTER_START)
        self.seen_event = 0
        self.secrets: dict[int, str] = {}  # seq -> ticket id, as the 202 gave it
        self.tokens: dict[str, str] = {}  # lease id -> token, as the 201 gave it

    def _harness(self) -> Harness:
        return Harness(Path(self.dir.name) / "db.sqlite", grace=GRACE)

    def _started_at(self) -> float:
        assert self.h.store is not None
        return self.h.store.started_at

    @property
    def now(self) -> float:
        return self.h.clock.now()

    # -- comparing one step --------------------------------------------------------------------------

    def _events(self) -> list[Event]:
        events = self.h.events(self.seen_event)
        if events:
            self.seen_event = max(e.id or 0 for e in events)
        return events

    def _step(self, server: object, model: object) -> tuple[object, object]:
        """Run the server's call, then the model's with the server's events in hand; compare both."""
        try:
            answer: object = server()  # type: ignore[operator]
        except CallMeError as exc:
            answer = exc
        events = self._events()
        grants = Grants(
            {e.seq: (e.environment, e.lease, e.fence) for e in events if e.kind == "acquired"},  # type: ignore[misc]
            refused=isinstance(answer, CallMeError),
        )
        try:
            expected, done = model(grants)  # type: ignore[operator]
        except Refused as refused:
            expected, done = refused, getattr(refused, "done", Happened(grants))
        theirs = Counter(_said(e) for e in events)
        ours = Counter(done.events)
        assert theirs == ours, (
            f"events differ: server {sorted(theirs - ours, key=str)} model {sorted(ours - theirs, key=str)}"
        )
        fences = [e.fence for e in events if e.kind == "acquired"]
        assert fences == sorted(set(fences)), f"fences do not grow in the order of grant: {fences}"
        if isinstance(expected, Refused):
            assert isinstance(answer, CallMeError), f"server answered {answer!r}, model refused with {expected.code}"
            assert answer.code == expected.code, (answer.code, expected.code)
        elif isinstance(answer, CallMeError):
            raise AssertionError(f"server refused with {answer.code} ({answer}), model answered {expected!r}")
        elif expected == "granted":
            assert isinstance(answer, Granted), f"model granted, server answered {answer!r}"
            self.tokens[answer.lease.id] = answer.token
        elif isinstance(expected, int):
            assert isinstance(answer, Queued), f"model queued at {expected}, server answered {answer!r}"
            assert answer.position == expected, ("position", answer.position, expected)
            self.secrets[answer.ticket.seq] = answer.ticket_id
        return answer, expected

    # -- steps ---------------------------------------------------------------------------------------

    @initialize(slots=st.lists(st.integers(1, 2), min_size=4, max_size=4))
    def declare(self, slots: list[int]) -> None:
        for (name, labels), n in zip(ENVIRONMENTS.items(), slots, strict=True):
            self._step(
                lambda: self.h.put(name, slots=n, labels=labels),  # noqa: B023 - called at once
                lambda grants: (None, self.model.put(self.now, name, grants, slots=n, labels=labels)),  # noqa: B023
            )

    @rule(
        elapsed=ELAPSED,
        goal=st.sampled_from(TARGETS),
        priority=st.sampled_from([0, 0, 1, -1]),
        ttl=TTLS,
        queue=st.booleans(),
        key=st.sampled_from(sorted(KEYS)),
    )
    def acquire(
        self, goal: tuple[str | None, str | None], priority: int, ttl: int, queue: bool, key: str, elapsed: float
    ) -> None:
        self.h.clock.advance(elapsed)
        self._acquire(goal, priority, ttl, queue, key)

    @precondition(lambda self: self.model.waiting())
    @rule(elapsed=ELAPSED, data=st.data(), priority=st.sampled_from([0, 0, 1, -1]), ttl=TTLS, queue=st.booleans())
    def join(self, data: st.DataObject, priority: int, ttl: int, queue: bool, elapsed: float) -> None:
        """A new request for what someone already waits for: where overtaking would show."""
        self.h.clock.advance(elapsed)
        goals = sorted({(t.environment, t.label) for t in self.model.waiting()}, key=str)
        self._acquire(data.draw(st.sampled_from(goals)), priority, ttl, queue, "client")

    def _acquire(self, goal: tuple[str | None, str | None], priority: int, ttl: int, queue: bool, key: str) -> None:
        env, label = goal
        principal = KEYS[key]
        answer: list[object] = []

        def server() -> object:
            answer.append(self.h.acquire(request(env, label, ttl=ttl, priority=priority, queue=queue), principal))
            return answer[0]

        def model(grants: object) -> tuple[object, Happened]:
            seq = _seq(answer[0]) if answer else None
            return self.model.acquire(
                self.now, seq, env, label, priority=priority, ttl=ttl, queue=queue, key=principal.name,
                grants=grants,  # type: ignore[arg-type]
            )  # fmt: skip

        self._step(server, model)

    @rule(
        elapsed=ELAPSED,
        goal=st.sampled_from(TARGETS),
        priorities=st.lists(st.sampled_from([-1, 0, 1]), min_size=2, max_size=4),
    )
    def crowd(self, goal: tuple[str | None, str | None], priorities: list[int], elapsed: float) -> None:
        """Several requests for one target at once: the queue's order matters only when it is crowded."""
        self.h.clock.advance(elapsed)
        for priority in priorities:
            self._acquire(goal, priority, 5, True, "admin")

    @precondition(lambda self: self.secrets)
    @rule(elapsed=ELAPSED, data=st.data())
    def poll(self, data: st.DataObject, elapsed: float) -> None:
        self.h.clock.advance(elapsed)
        seq = data.draw(st.sampled_from(sorted(self.secrets)))
        t = self.model.tickets[seq]
        again = request(t.environment, t.label, priority=t.priority, ticket=self.secrets[seq])
        answer, expected = self._step(
            lambda: self.h.acquire(again), lambda grants: self.model.poll(self.now, seq, grants)
        )
        if expected == "granted":
            # Coming back with a granted ticket returns the same lease and token, as often as asked.
            repeat = self.h.acquire(again)
            assert isinstance(answer, Granted)
            assert isinstance(repeat, Granted)
            assert (repeat.lease.id, repeat.token) == (answer.lease.id, answer.token)
            assert self._events() == []

    @precondition(lambda self: self.model.leases)
    @rule(elapsed=ELAPSED, data=st.data(), ttl=st.none() | st.integers(1, 30))
    def renew(self, data: st.DataObject, ttl: int | None, elapsed: float) -> None:
        self.h.clock.advance(elapsed)
        lease_id = data.draw(st.sampled_from(list(self.model.leases)))
        token = self.tokens.get(lease_id) or self._token(lease_id)
        self._step(
            lambda: self.h.run(self.h.svc.renew(lease_id, token, ttl)),
            lambda grants: (None, self.model.renew(self.now, lease_id, ttl, grants)),
        )

    @precondition(lambda self: self.model.leases)
    @rule(elapsed=ELAPSED, data=st.data(), force=st.sampled_from([False, False, True]))
    def release(self, data: st.DataObject, force: bool, elapsed: float) -> None:
        self.h.clock.advance(elapsed)
        lease_id = data.draw(st.sampled_from(list(self.model.leases)))
        token = None if force else self.tokens.get(lease_id) or self._token(lease_id)
        self._step(
            lambda: self.h.run(self.h.svc.release(ADMIN, lease_id, token, force=force)),
            lambda grants: (None, self.model.release(self.now, lease_id, grants, force=force)),
        )

    def _token(self, lease_id: str) -> str:
        """A grant its client never collected: the holder's token, derived as the client would get it."""
        lease = self.h.read(lambda tx: tx.lease(lease_id))
        assert lease is not None
        return self.h.secret.token(lease)

    @precondition(lambda self: self.secrets)
    @rule(elapsed=ELAPSED, data=st.data(), key=st.sampled_from(sorted(KEYS)))
    def leave(self, data: st.DataObject, key: str, elapsed: float) -> None:
        self.h.clock.advance(elapsed)
        seq = data.draw(st.sampled_from(sorted(self.secrets)))
        self._step(
            lambda: self.h.run(self.h.svc.leave(KEYS[key], self.secrets[seq])),
            lambda grants: (None, self.model.leave(self.now, seq, grants)),
        )

    @rule(elapsed=ELAPSED, name=st.sampled_from(sorted(ENVIRONMENTS)), key=st.sampled_from(sorted(KEYS)))
    def maybe(self, name: str, key: str, elapsed: float) -> None:
        """`GET /maybe` says what a `POST /maybe` right after it gets; the POST is an acquire that never queues."""
        self.h.clock.advance(elapsed)
        principal = KEYS[key]
        would = self.h.run(self.h.svc.maybe_check(principal, name))
        assert self._events() == []  # a check changes nothing
        answer: list[object] = []

        def server() -> object:
            answer.append(self.h.run(self.h.svc.maybe_acquire(principal, name)))
            return answer[0]

        def model(grants: object) -> tuple[object, Happened]:
            seq = _seq(answer[0]) if answer else None
            return self.model.acquire(
                self.now, seq, name, None, priority=-1_000_001, ttl=self.h.settings.maybe_ttl, queue=False,
                key=principal.name, grants=grants,  # type: ignore[arg-type]
            )  # fmt: skip

        got, _ = self._step(server, model)
        assert would == isinstance(got, Granted), (would, got)

    @rule(elapsed=ELAPSED, name=st.sampled_from(sorted(ENVIRONMENTS)), key=st.sampled_from(sorted(KEYS)))
    def maybe_release(self, name: str, key: str, elapsed: float) -> None:
        self.h.clock.advance(elapsed)
        principal = KEYS[key]
        self._step(
            lambda: self.h.run(self.h.svc.maybe_release(principal, name)),
            lambda grants: (
                None,
                self.model.maybe_release(self.now, name, None if principal.allows("admin") else principal.name, grants),
            ),
        )

    @rule(seconds=st.sampled_from([0.5, 1.0, 5.0, 9.99, 10.0, 15.0, 30.0]) | st.floats(0, 20))
    def advance(self, seconds: float) -> None:
        self.h.clock.advance(seconds)

    @rule()
    def sweep(self) -> None:
        self._step(lambda: self.h.run(self.h.svc.sweep()), lambda grants: (None, self.model.sweep(self.now, grants)))

    @rule(name=st.sampled_from(sorted(ENVIRONMENTS)), slots=st.none() | st.integers(1, 3), maintenance=st.booleans())
    def change(self, name: str, slots: int | None, maintenance: bool) -> None:
        self._step(
            lambda: self.h.put(name, slots=slots, maintenance=maintenance),
            lambda grants: (None, self.model.put(self.now, name, grants, slots=slots, maintenance=maintenance)),
        )

    @rule(seconds=st.sampled_from([PAUSE_THRESHOLD + 0.5, 9.5, 15.0]))
    def pause(self, seconds: float) -> None:
        """The whole process stops (SIGSTOP, a frozen VM) for `seconds` and runs on: its heartbeat beats late."""
        pauses = self.h.svc.pauses
        pauses.beat()
        self.h.clock.advance(seconds)
        pauses.beat()
        pauses.stop()  # no heartbeat between the other steps: their quiet spells are no pauses
        self.h.run(self.h.svc.environments())  # the next operation notices it, whatever it is
        self.model.resume(self.now)
        assert self._events() == []  # noticing a pause by itself ends nothing and grants nothing

    @rule()
    def restart(self) -> None:
        self.h.restart()
        self.model.restart(self._started_at())
        self.h.clock.advance(AFTER_START)
        assert self._events() == []  # a start-up by itself ends nothing and grants nothing

    # -- after every step: the whole state agrees ----------------------------------------------------

    @invariant()
    def agree(self) -> None:
        if not hasattr(self, "model"):
            return
        theirs = {
            lease.id: (lease.environment, lease.seq, lease.fence, lease.expires_at, lease.collect_by)
            for lease in self.h.live_leases()
        }
        ours = {
            lease.id: (lease.environment, lease.seq, lease.fence, lease.expires_at, lease.collect_by)
            for lease in self.model.leases.values()
            if lease.live
        }
        assert theirs.keys() == ours.keys(), ("live leases", sorted(theirs), sorted(ours))
        for lease_id, (env, seq, fence, expires_at, collect_by) in ours.items():
            t_env, t_seq, t_fence, t_expires, t_collect = theirs[lease_id]
            assert (t_env, t_seq, t_fence) == (env, seq, fence), (lease_id, theirs[lease_id], ours[lease_id])
            assert abs(t_expires - expires_at) < TOLERANCE, ("expires_at", lease_id, t_expires, expires_at)
            assert (t_collect is None) == (collect_by is None), ("collect_by", lease_id, t_collect, collect_by)
            if collect_by is not None and t_collect is not None:
                assert abs(t_collect - collect_by) < TOLERANCE, ("collect_by", lease_id, t_collect, collect_by)
        waiting = {t.seq: t.seen_at for t in self.h.waiting()}
        expected = {t.seq: t.seen_at for t in self.model.waiting()}
        assert waiting.keys() == expected.keys(), ("waiting", sorted(waiting), sorted(expected))
        for seq, seen_at in expected.items():
            assert abs(waiting[seq] - seen_at) < TOLERANCE, ("seen_at", seq, waiting[seq], seen_at)
        views = self.h.run(self.h.svc.environments())
        shown = {(v.env.name, t.seq, place) for v in views for t, place in v.queue}
        model_envs = self.model.envs
        should = {
            (name, t.seq, self.model.position(t))
            for name, env in model_envs.items()
            for t in self.model.waiting()
            if self.model.serves(env, t)
        }
        assert shown == should, ("queue positions", sorted(shown - should), sorted(should - shown))
        for view in views:
            env = model_envs[view.env.name]
            assert (view.env.slots, view.env.labels, view.env.maintenance) == (env.slots, env.labels, env.maintenance)

    def teardown(self) -> None:
        self.h.close()
        self.dir.cleanup()


def _said(event: Event) -> tuple[str, str | None, object]:
    """An audit event in the model's words: (kind, environment, the seq or lease it is about)."""
    if event.kind in ("acquired", "abandoned", "left", "queued"):
        return (event.kind, event.environment, event.seq)
    if event.kind in ("released", "expired", "revoked"):
        return (event.kind, event.environment, event.lease)
    return (event.kind, event.environment, None)


def _seq(answer: object) -> int | None:
    if isinstance(answer, Granted):
        return answer.lease.seq
    if isinstance(answer, Queued):
        return answer.ticket.seq
    return None


ModelledLockServer.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestModelledLockServer = ModelledLockServer.TestCase


class PostgresModelledLockServer(ModelledLockServer):
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


def test_model_agrees_on_postgres(postgres: PostgresServer) -> None:
    PostgresModelledLockServer.server = postgres
    run_state_machine_as_test(
        PostgresModelledLockServer,
        settings=settings(
            max_examples=25, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
        ),
    )
