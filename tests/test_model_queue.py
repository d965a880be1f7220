"""Property-based: the real Service on a real store, and the reference model of docs/api.md, side by side.

Hypothesis drives random steps (acquire, groups of several environments at once, crowds, polls, renewals,
releases, leaving, /maybe, clock steps, sweeps, slot and maintenance changes, restarts, pauses of the whole
process, and draining: everything released until nobody waits) against both and compares
after every step: each answer (lease, position or error code), every audit event the step caused (grants,
including grants at once, expiries, revocations, abandonments), who holds what with which deadlines, who
waits, every position, and that fences grow. Beside the model, the invariants of groups are checked on the
server's own state: no group holds part of what it asked for while it waits (no partial hold), no environment
gets a grant beyond its slots and no ticket two (no double grant), fences strictly increase per environment,
and releasing everything lets every waiting request through (no deadlock). The model (tests/refmodel.py) is
written from the contract alone, so the server's own rules are never the oracle.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

from callme.server.constants import PAUSE_THRESHOLD
from callme.server.errors import CallMeError
from callme.server.model import Event, Principal
from callme.server.outcomes import Granted, GrantedGroup, Queued
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
        self.parts: dict[int, list[tuple[str | None, str | None]]] = {}  # first seq of a group -> its parts
        self.group_ids: dict[int, str] = {}  # first seq of a group -> its id, as the server gave it
        self.group_tokens: dict[str, str] = {}  # group id -> token, as the 201 gave it
        self.last_fence: dict[str, int] = defaultdict(int)  # environment -> the fence of its latest grant

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
        for e in events:
            if e.kind == "acquired":
                assert e.environment is not None
                assert e.fence is not None
                assert e.fence > self.last_fence[e.environment], ("fence per environment", e, self.last_fence)
                self.last_fence[e.environment] = e.fence
        self._no_double_grant({e.environment for e in events if e.kind == "acquired"})
        if isinstance(expected, Refused):
            assert isinstance(answer, CallMeError), f"server answered {answer!r}, model refused with {expected.code}"
            assert answer.code == expected.code, (answer.code, expected.code)
        elif isinstance(answer, CallMeError):
            raise AssertionError(f"server refused with {answer.code} ({answer}), model answered {expected!r}")
        elif expected == "granted":
            assert isinstance(answer, (Granted, GrantedGroup)), f"model granted, server answered {answer!r}"
            if isinstance(answer, GrantedGroup):
                assert answer.token is not None
                self.group_tokens[answer.group_id] = answer.token
                self.group_ids[answer.leases[0].lease.seq or 0] = answer.group_id
                for granted in answer.leases:
                    self.tokens[granted.lease.id] = granted.token  # type: ignore[assignment]
            else:
                self.tokens[answer.lease.id] = answer.token  # type: ignore[assignment]
        elif isinstance(expected, int):
            assert isinstance(answer, Queued), f"model queued at {expected}, server answered {answer!r}"
            assert answer.position == expected, ("position", answer.position, expected)
            self.secrets[answer.ticket.seq] = answer.ticket_id
            if answer.ticket.group_id is not None:
                self.group_ids[answer.ticket.seq] = answer.ticket.group_id
        return answer, expected

    def _no_double_grant(self, granted_on: set[str | None]) -> None:
        """Right after a grant on an environment, it holds no more live leases than slots; no ticket holds two."""
        live = self.h.live_leases()
        slots = {e.name: e.slots for e in self.h.environments()}
        counts = Counter(lease.environment for lease in live)
        for name in granted_on:
            assert name is not None
            assert counts[name] <= slots[name], ("double grant", name, counts[name], slots[name])
        tickets = Counter(lease.ticket_id for lease in live)
        assert all(n == 1 for n in tickets.values()), ("a ticket holds two leases", tickets)

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

    @rule(
        elapsed=ELAPSED,
        goals=st.lists(st.sampled_from(TARGETS), min_size=2, max_size=3).filter(
            lambda goals: len({g[0] for g in goals if g[0]}) == sum(1 for g in goals if g[0])
        ),
        priority=st.sampled_from([0, 0, 1, -1]),
        ttl=TTLS,
        queue=st.booleans(),
        key=st.sampled_from(sorted(KEYS)),
    )
    def acquire_group(
        self, goals: list[tuple[str | None, str | None]], priority: int, ttl: int, queue: bool, key: str,
        elapsed: float,
    ) -> None:  # fmt: skip
        """Several environments at once (`all`): granted all together or not at all."""
        self.h.clock.advance(elapsed)
        self._acquire((None, None), priority, ttl, queue, key, parts=goals)

    def _acquire(
        self, goal: tuple[str | None, str | None], priority: int, ttl: int, queue: bool, key: str,
        parts: list[tuple[str | None, str | None]] | None = None,
    ) -> None:  # fmt: skip
        env, label = goal
        principal = KEYS[key]
        answer: list[object] = []

        def server() -> object:
            req = request(env, label, ttl=ttl, priority=priority, queue=queue, parts=parts)
            answer.append(self.h.acquire(req, principal))
            return answer[0]

        def model(grants: object) -> tuple[object, Happened]:
            seq = _seq(answer[0]) if answer else None
            return self.model.acquire(
                self.now, seq, env, label, priority=priority, ttl=ttl, queue=queue, key=principal.name,
                grants=grants, parts=parts,  # type: ignore[arg-type]
            )  # fmt: skip

        self._step(server, model)
        if parts is not None and answer and not isinstance(answer[0], CallMeError):
            self.parts[_seq(answer[0]) or 0] = parts

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
        if seq in self.parts:
            again = request(priority=t.priority, ticket=self.secrets[seq], parts=self.parts[seq])
        else:
            again = request(t.environment, t.label, priority=t.priority, ticket=self.secrets[seq])
        answer, expected = self._step(
            lambda: self.h.acquire(again), lambda grants: self.model.poll(self.now, seq, grants)
        )
        if expected == "granted":
            # Coming back with a granted ticket returns the same lease and token, as often as asked.
            repeat = self.h.acquire(again)
            assert isinstance(answer, (Granted, GrantedGroup))
            assert type(repeat) is type(answer)
            if isinstance(answer, GrantedGroup):
                assert isinstance(repeat, GrantedGroup)
                assert (repeat.group_id, repeat.token) == (answer.group_id, answer.token)
                assert [(g.lease.id, g.token) for g in repeat.leases] == [(g.lease.id, g.token) for g in answer.leases]
            else:
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

    @precondition(lambda self: self.group_ids)
    @rule(elapsed=ELAPSED, data=st.data(), ttl=st.none() | st.integers(1, 30))
    def renew_group(self, data: st.DataObject, ttl: int | None, elapsed: float) -> None:
        """Every lease of a group renewed by the group's id and token: all of them, or none (410)."""
        self.h.clock.advance(elapsed)
        seq = data.draw(st.sampled_from(sorted(self.group_ids)))
        if not self.model.group_leases(seq):
            return  # not granted yet: the server knows no such group of leases (404), nor does the model
        group_id = self.group_ids[seq]
        token = self.h.secret.group_token(group_id)
        self._step(
            lambda: self.h.run(self.h.svc.renew_group(group_id, token, ttl)),
            lambda grants: (None, self.model.renew_group(self.now, seq, ttl, grants)),
        )

    @precondition(lambda self: self.group_ids)
    @rule(elapsed=ELAPSED, data=st.data(), force=st.sampled_from([False, False, True]))
    def release_group(self, data: st.DataObject, force: bool, elapsed: float) -> None:
        """Every live lease of a group released at once by the group's id and token."""
        self.h.clock.advance(elapsed)
        seq = data.draw(st.sampled_from(sorted(self.group_ids)))
        if not self.model.group_leases(seq):
            return
        group_id = self.group_ids[seq]
        token = None if force else self.h.secret.group_token(group_id)
        self._step(
            lambda: self.h.run(self.h.svc.release_group(ADMIN, group_id, token, force=force)),
            lambda grants: (None, self.model.release_group(self.now, seq, grants, force=force)),
        )

    @rule()
    def drain(self) -> None:
        """No deadlock: with maintenance lifted and every live lease released, round after round, every waiting
        request is granted (or abandoned) in the end; a round that leaves someone waiting and grants nothing fails."""
        for name, env in sorted(self.model.envs.items()):
            if env.maintenance:
                self.change(name, None, False)
        for _ in range(len(self.model.waiting()) + 2):
            live = [lease.id for lease in self.model.leases.values() if lease.live]
            waiting_before = {t.seq for t in self.model.waiting()}
            for lease_id in live:
                token = self.tokens.get(lease_id) or self._token(lease_id)
                self._step(
                    lambda lease_id=lease_id, token=token: self.h.run(self.h.svc.release(ADMIN, lease_id, token)),
                    lambda grants, lease_id=lease_id: (None, self.model.release(self.now, lease_id, grants)),
                )
            waiting_after = {t.seq for t in self.h.waiting()}
            if not waiting_after:
                return
            assert waiting_after < waiting_before, ("deadlock: nothing granted", sorted(waiting_after))
        raise AssertionError(f"still waiting after every round: {sorted(t.seq for t in self.h.waiting())}")

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
        # No partial hold: a group that waits holds none of what it asked for.
        server_waiting = self.h.waiting()
        waiting_groups = {t.group_id for t in server_waiting if t.group_id is not None}
        partial = [lease.id for lease in self.h.live_leases() if lease.group_id in waiting_groups]
        assert not partial, ("a waiting group holds part of what it asked for", partial)
        waiting = {t.seq: t.seen_at for t in server_waiting}
        expected = {t.seq: t.seen_at for t in self.model.waiting()}
        assert waiting.keys() == expected.keys(), ("waiting", sorted(waiting), sorted(expected))
        for seq, seen_at in expected.items():
            assert abs(waiting[seq] - seen_at) < TOLERANCE, ("seen_at", seq, waiting[seq], seen_at)
        views = self.h.run(self.h.svc.environments())
        shown = {(v.env.name, t.seq, place) for v in views for t, place in v.queue}
        model_envs = self.model.envs
        # A group is listed once in each queue, by the first of its parts that environment could serve.
        should = {
            (name, next(p for p in r if self.model.serves(env, p)).seq, self.model.position(r[0]))
            for name, env in model_envs.items()
            for r in self.model.requests()
            if any(self.model.serves(env, p) for p in r)
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
    if isinstance(answer, GrantedGroup):
        return answer.leases[0].lease.seq
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
