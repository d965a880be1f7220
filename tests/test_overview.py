"""The dashboard's summary, computed from plain records with a fixed `now`."""

from __future__ import annotations

from callme.server import overview
from callme.server.model import Environment, Event, Lease, Ticket
from callme.server.outcomes import EnvironmentView

DAY = 24 * 3600.0
NOW = 10 * DAY


def lease(lease_id: str, env: str, acquired_at: float) -> Lease:
    return Lease(
        id=lease_id, environment=env, token="k", holder=f"holder-{lease_id}", metadata={}, fence=1, ttl=3600,
        acquired_at=acquired_at, expires_at=acquired_at + 3600, touched_at=acquired_at, key_name="ci",
    )  # fmt: skip


def ticket(seq: int, env: str, enqueued_at: float) -> Ticket:
    return Ticket(
        id=f"t{seq}", seq=seq, key_name="ci", environment=env, label=None, holder=f"waiter-{seq}", ttl=60,
        priority=0, metadata={}, enqueued_at=enqueued_at, seen_at=NOW,
    )  # fmt: skip


def event(i: int, kind: str, env: str, at: float, lease_id: str | None = None) -> Event:
    return Event(at=at, kind=kind, environment=env, lease=lease_id, id=i)


def test_utilisation_counts_slot_time_held_within_the_last_day() -> None:
    uat = Environment(name="uat", slots=1, created_at=0)
    pool = Environment(name="pool", slots=2, created_at=0)
    young = Environment(name="young", slots=1, created_at=NOW - 100)
    events = [
        event(1, "acquired", "uat", NOW - 2 * DAY, "old"),  # before the window: only its end counts
        event(2, "released", "uat", NOW - DAY + 3600, "old"),
        event(3, "acquired", "uat", NOW - 6 * 3600, "a"),
        event(4, "expired", "uat", NOW - 3 * 3600, "a"),
        event(5, "acquired", "pool", NOW - 12 * 3600, "p"),
    ]
    views = [
        EnvironmentView(env=uat, leases=[], queue=[]),
        EnvironmentView(env=pool, leases=[lease("p", "pool", NOW - 12 * 3600)], queue=[]),
        EnvironmentView(env=young, leases=[lease("y", "young", NOW - 50)], queue=[]),
    ]
    shares = overview.utilisation(views, events, NOW)
    assert abs(shares["uat"] - 4 / 24) < 1e-9  # 1 h of the old lease, 3 h of "a"
    assert abs(shares["pool"] - 12 / 48) < 1e-9  # one of two slots for half the day
    assert abs(shares["young"] - 0.5) < 1e-9  # measured since it exists


def test_the_summary_names_the_longest_wait_and_the_most_contended() -> None:
    uat = Environment(name="uat", created_at=0)
    qa = Environment(name="qa", created_at=0)
    views = [
        EnvironmentView(uat, [lease("u", "uat", NOW - 60)], [(ticket(7, "uat", NOW - 90), 1)]),
        EnvironmentView(qa, [lease("q", "qa", NOW - 60)], [(ticket(8, "qa", NOW - 30), 1), (ticket(9, "qa", NOW), 2)]),
    ]
    events = [event(i, "queued", "uat", NOW - 100 - i) for i in range(5)]
    cards, summary = overview.build(views, events, NOW)
    assert [c.name for c in cards] == ["uat", "qa"]
    assert summary.longest_wait is not None
    assert (summary.longest_wait.holder, summary.longest_wait.waiting) == ("waiter-7", "1m 30s")
    assert summary.contended == [("qa", 2, 0), ("uat", 1, 5)]
    assert [w.position for w in cards[1].queue] == [1, 2]


def test_only_http_links_are_run_links() -> None:
    assert overview.run_link({"run_url": "https://ci.example.com/1"}) == "https://ci.example.com/1"
    assert overview.run_link({"url": "HTTP://ci.example.com/2"}) == "HTTP://ci.example.com/2"
    assert overview.run_link({"run_url": "javascript:alert(1)", "job_url": "https://ci/3"}) == "https://ci/3"
    for bad in ("javascript:alert(1)", "data:text/html,x", "//evil.example", "https://", 42, None):
        assert overview.run_link({"run_url": bad}) is None


def test_durations_read_as_people_say_them() -> None:
    assert [overview.duration(s) for s in (0, 42, 192, 3840, 2 * DAY + 3 * 3600, -5)] == [
        "0s", "42s", "3m 12s", "1h 04m", "2d 3h", "0s",
    ]  # fmt: skip
