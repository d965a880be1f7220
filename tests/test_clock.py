"""The server's time: pauses it notices, clock steps it takes out, and a history that never runs backwards
(API.md invariant 5), on the fake clocks of the harness. The real thing, SIGSTOP and libfaketime against a
server process, is tests/test_clock_faults.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from callme.server.clock import Clock, FakeClock, Pauses, Steps
from callme.server.constants import CLOCK_STEP_TOLERANCE, PAUSE_THRESHOLD
from callme.server.outcomes import Granted, Queued
from callme.server.store.postgres import PostgresStore

from .harness import ADMIN, Harness, request

GRACE = 10.0
HOUR = 3600.0


def test_a_late_beat_is_a_pause_noticed_once() -> None:
    elapsed = FakeClock(100.0)
    pauses = Pauses(2.0, elapsed.now)
    elapsed.advance(30)
    assert pauses.resumed() == 0.0  # no heartbeat yet: a quiet spell is no pause
    pauses.beat()
    elapsed.advance(1.9)
    pauses.beat()
    assert pauses.resumed() == 0.0  # on time, near enough
    elapsed.advance(15)
    assert pauses.resumed() == 15.0  # a transaction that runs before the heartbeat notices it ...
    assert pauses.resumed() == 0.0  # ... once
    elapsed.advance(8)
    pauses.beat()  # the heartbeat came first: the next transaction still learns of it
    assert pauses.resumed() == 8.0
    pauses.stop()
    elapsed.advance(30)
    assert pauses.resumed() == 0.0


def test_a_reading_that_jumps_beyond_the_elapsed_time_is_a_step() -> None:
    steps = Steps(tolerance=0.5)
    assert steps.step(1000.0, 10.0, 10.01) == 0.0
    assert steps.step(1000.25, 10.25, 10.26) == 0.0
    assert steps.step(1000.6, 10.3, 10.31) == 0.0  # within the tolerance
    assert steps.step(4600.9, 10.6, 10.61) == pytest.approx(3600, abs=0.01)
    assert steps.step(1000.95, 10.65, 10.66) == 0.0  # the step was not taken as the reference
    assert steps.step(1001.0, 10.4, 12.5) == 0.0  # a slow reading: its span widens the tolerance
    assert steps.step(-2599.0, 10.7, 10.71) == pytest.approx(-3600, abs=0.1)


def test_the_clock_continues_from_a_later_time_and_never_goes_back() -> None:
    clock = Clock()
    start = clock.now()
    assert clock.not_before(start - 100) == 0.0
    assert clock.not_before(start + HOUR) == pytest.approx(HOUR, abs=1)
    assert clock.now() >= start + HOUR


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path / "db.sqlite", grace=GRACE)
    harness.clock.advance(1)
    try:
        yield harness
    finally:
        harness.close()


def _pause(h: Harness, seconds: float) -> None:
    """The whole process stops for `seconds`, then runs on: the heartbeat's next beat comes that late. (Then the
    heartbeat stops: between the steps of a test nothing beats, and a quiet spell is no pause.)"""
    h.svc.pauses.beat()
    h.clock.advance(seconds)
    h.svc.pauses.beat()
    h.svc.pauses.stop()


def test_after_a_pause_nothing_ends_before_the_grace_after_the_resume(h: Harness) -> None:
    held = h.acquire(request("uat", ttl=5))
    assert isinstance(held, Granted)
    waiter = h.acquire(request("uat"))
    assert isinstance(waiter, Queued)
    _pause(h, 15)  # longer than the lease's TTL and the waiter's grace
    h.run(h.svc.sweep())
    resumed = h.clock.now()
    assert [lease.id for lease in h.live_leases()] == [held.lease.id]
    assert [t.seq for t in h.waiting()] == [waiter.ticket.seq]
    h.clock.advance(GRACE - 0.1)
    renewed = h.run(h.svc.renew(held.lease.id, held.token, None))
    assert renewed.lease.expires_at == pytest.approx(h.clock.now() + 5)
    h.clock.advance(5)
    h.run(h.svc.sweep())
    # Once the holder stops renewing, the lease ends at its own deadline; the waiter that never came back ends
    # a grace after the resume, and gets nothing.
    ends = {e.kind: e.at for e in h.events() if e.kind in ("expired", "abandoned")}
    assert ends == {"expired": pytest.approx(resumed + GRACE - 0.1 + 5), "abandoned": pytest.approx(h.clock.now())}
    assert h.clock.now() >= resumed + GRACE


def test_a_short_hold_up_is_no_pause(h: Harness) -> None:
    held = h.acquire(request("uat", ttl=1))
    assert isinstance(held, Granted)
    _pause(h, PAUSE_THRESHOLD - 0.1)
    h.run(h.svc.sweep())
    assert h.live_leases() == []


def test_a_server_started_behind_its_history_continues_from_it(h: Harness) -> None:
    held = h.acquire(request("uat", ttl=30))
    assert isinstance(held, Granted)
    h.clock.advance(20)
    h.run(h.svc.renew(held.lease.id, held.token, None))
    newest = h.clock.now()
    h.stop()
    h.clock.advance(-HOUR)  # the system clock set back an hour while the server was stopped
    h.start()
    assert h.clock.now() == newest  # and not an hour earlier: the lease gets no hour more
    h.clock.advance(30)
    h.run(h.svc.sweep())
    assert h.live_leases() == []
    times = [e.at for e in h.events()]
    assert times == sorted(times)


# -- PostgreSQL: its clock stepped, with the fake clock standing for the database's ----------------------------


class _Replica:
    """A Harness on PostgreSQL whose store reads `db_clock` as the database's clock and checks it for steps
    against `elapsed`, the replica's own elapsed time."""

    def __init__(self, url: str, db_clock: FakeClock, elapsed: FakeClock) -> None:
        self.h = Harness(
            url, grace=GRACE, clock=db_clock,
            make_store=lambda clock: PostgresStore(url, listen=False, clock=clock, elapsed=elapsed.now),
        )  # fmt: skip


def _offset(url: str) -> float:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT value FROM meta WHERE key = 'clock_offset'").fetchone()
    return float(row[0]) if row else 0.0


@pytest.mark.parametrize("step", [HOUR, -HOUR])
def test_a_step_of_the_database_clock_is_taken_out_once_by_every_replica(pg_url: str, step: float) -> None:
    db_clock, elapsed = FakeClock(), FakeClock(50.0)
    one, two = _Replica(pg_url, db_clock, elapsed), _Replica(pg_url, db_clock, elapsed)
    try:
        held = one.h.acquire(request("uat", ttl=60))
        assert isinstance(held, Granted)
        waiter = one.h.acquire(request("uat"))
        assert isinstance(waiter, Queued)
        two.h.run(two.h.svc.sweep())
        db_clock.advance(1)
        elapsed.advance(1)
        db_clock.advance(step)  # the database's clock steps; the replicas' elapsed time does not
        for replica in (one, two, one):
            replica.h.run(replica.h.svc.sweep())
        assert [lease.id for lease in one.h.live_leases()] == [held.lease.id]
        assert [t.seq for t in one.h.waiting()] == [waiter.ticket.seq]
        lease = two.h.run(two.h.svc.lease(held.lease.id)).lease
        assert lease.expires_at == held.lease.expires_at  # not a second more, nor less
        db_clock.advance(59)
        elapsed.advance(59)
        two.h.run(two.h.svc.sweep())
        ended = [e for e in two.h.events() if e.kind == "expired"]
        assert [e.lease for e in ended] == [held.lease.id]
        times = [e.at for e in two.h.events()]
        assert times == sorted(times)
        assert ended[0].at == pytest.approx(held.lease.expires_at)  # on time, not an hour early or late
        assert _offset(pg_url) == pytest.approx(-step)  # taken out once, by whichever replica saw it first
    finally:
        one.h.close()
        two.h.close()


def test_a_step_first_seen_by_a_read_is_taken_out_by_the_next_write(pg_url: str) -> None:
    """A read runs in a read-only transaction (Store.read), which cannot move the shared offset: it answers all the
    same, and the next operation that writes takes the step out."""
    db_clock, elapsed = FakeClock(), FakeClock(50.0)
    one = _Replica(pg_url, db_clock, elapsed)
    try:
        held = one.h.acquire(request("uat", ttl=60))
        assert isinstance(held, Granted)
        db_clock.advance(1)
        elapsed.advance(1)
        db_clock.advance(HOUR)
        assert one.h.run(one.h.svc.lease(held.lease.id)).lease.state == "active"
        assert _offset(pg_url) == 0.0
        one.h.run(one.h.svc.sweep())
        assert _offset(pg_url) == pytest.approx(-HOUR)
        assert [lease.id for lease in one.h.live_leases()] == [held.lease.id]
    finally:
        one.h.close()


def test_a_replica_never_starts_behind_the_history(pg_url: str) -> None:
    db_clock, elapsed = FakeClock(), FakeClock(50.0)
    first = _Replica(pg_url, db_clock, elapsed)
    held = first.h.acquire(request("uat", ttl=60))
    assert isinstance(held, Granted)
    first.h.close()
    db_clock.advance(-HOUR)  # set back while no replica ran
    second = _Replica(pg_url, db_clock, elapsed)
    try:
        db_clock.advance(60 + CLOCK_STEP_TOLERANCE)
        elapsed.advance(60 + CLOCK_STEP_TOLERANCE)
        second.h.run(second.h.svc.sweep())
        assert second.h.live_leases() == []  # ended on time, not an hour late
        times = [e.at for e in second.h.events()]
        assert times == sorted(times)
        assert _offset(pg_url) == pytest.approx(HOUR)
    finally:
        second.h.close()


def test_the_history_never_runs_backwards_on_postgres(pg_url: str) -> None:
    """A step back too small to be taken out (or another thread's earlier reading) does not reorder the history."""
    db_clock, elapsed = FakeClock(), FakeClock(50.0)
    replica = _Replica(pg_url, db_clock, elapsed)
    try:
        held = replica.h.acquire(request("uat", ttl=60))
        assert isinstance(held, Granted)
        db_clock.advance(-CLOCK_STEP_TOLERANCE / 2)
        replica.h.run(replica.h.svc.release(ADMIN, held.lease.id, held.token))
        times = [e.at for e in replica.h.events()]
        assert times == sorted(times)
        assert _offset(pg_url) == 0.0
    finally:
        replica.h.close()
