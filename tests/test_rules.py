from __future__ import annotations

from callme.server import rules
from callme.server.model import Environment, Lease, Ticket

FLOOR = rules.Floor(started_at=1000.0, grace=60.0)


def ticket(seq: int, environment: str | None = None, label: str | None = None, priority: int = 0) -> Ticket:
    return Ticket(
        id=f"t{seq}", seq=seq, key_name="k", environment=environment, label=label, holder=f"h{seq}", ttl=60,
        priority=priority, metadata={}, enqueued_at=0.0, seen_at=2000.0,
    )  # fmt: skip


def lease(expires_at: float, touched_at: float = 1500.0, collect_by: float | None = None) -> Lease:
    return Lease(
        id="l", environment="uat", token="x", holder="h", metadata={}, fence=1, ttl=60, acquired_at=touched_at,
        expires_at=expires_at, touched_at=touched_at, key_name="k", collect_by=collect_by,
    )  # fmt: skip


def test_first_come_first_served_and_priority_first() -> None:
    uat = Environment("uat")
    waiting = [ticket(3), ticket(1, "uat"), ticket(2, "uat", priority=5)]
    waiting[0].environment = "uat"
    grants = rules.schedule([uat], {}, waiting)
    assert [(t.id, env) for t, env in grants] == [("t2", "uat")]


def test_a_ticket_that_cannot_use_a_slot_never_blocks_it() -> None:
    envs = [Environment("a"), Environment("b")]
    grants = rules.schedule(envs, {"a": 1}, [ticket(1, "a"), ticket(2, "b")])
    assert [(t.id, env) for t, env in grants] == [("t2", "b")]


def test_label_ticket_takes_the_environment_fewer_later_tickets_need() -> None:
    envs = [Environment("s1", labels=("staging",)), Environment("s2", labels=("staging",))]
    grants = rules.schedule(envs, {}, [ticket(1, label="staging"), ticket(2, "s1")])
    assert [(t.id, env) for t, env in grants] == [("t1", "s2"), ("t2", "s1")]


def test_maintenance_grants_nothing_and_slots_count() -> None:
    envs = [Environment("a", slots=2), Environment("m", maintenance=True, labels=("x",))]
    grants = rules.schedule(envs, {"a": 1}, [ticket(1, "a"), ticket(2, "a"), ticket(3, label="x")])
    assert [(t.id, env) for t, env in grants] == [("t1", "a")]


def test_positions_count_the_fewest_competitors_for_one_environment() -> None:
    envs = [Environment("s1", labels=("staging",)), Environment("s2", labels=("staging",))]
    waiting = [ticket(1, "s1"), ticket(2, "s1"), ticket(3, label="staging"), ticket(4, "s2")]
    assert rules.positions(envs, waiting) == {"t1": 1, "t2": 2, "t3": 1, "t4": 2}
    assert [rules.position(envs, waiting, t) for t in waiting] == [1, 2, 1, 2]


def test_floor_holds_what_existed_before_start_up() -> None:
    old = lease(expires_at=1010.0, touched_at=900.0)
    assert rules.lease_ending(old, 1059.0, FLOOR) is None
    assert rules.lease_ending(old, 1060.0, FLOOR) == "expired"
    new = lease(expires_at=1010.0, touched_at=1005.0)
    assert rules.lease_ending(new, 1010.0, FLOOR) == "expired"


def test_uncollected_grant_is_revoked_and_abandonment_follows_grace() -> None:
    assert rules.lease_ending(lease(expires_at=5000.0, collect_by=1600.0), 1600.0, FLOOR) == "revoked"
    t = ticket(1, "uat")
    t.seen_at = 1500.0
    assert not rules.abandoned(t, 1559.9, FLOOR)
    assert rules.abandoned(t, 1560.0, FLOOR)
    for state in ("granted", "left", "abandoned"):  # only a ticket still in the queue is abandoned
        t.state = state  # type: ignore[assignment]
        assert not rules.abandoned(t, 1560.0, FLOOR)


def test_label_ticket_weighs_only_the_tickets_behind_it() -> None:
    # s2 has two slots and t1, ahead, takes one. t2 (a label) then weighs only the tickets behind it: t3 needs
    # s1, so t2 takes s2's other slot and t3 still gets s1.
    envs = [Environment("s1", labels=("staging",)), Environment("s2", slots=2, labels=("staging",))]
    grants = rules.schedule(envs, {}, [ticket(1, "s2"), ticket(2, label="staging"), ticket(3, "s1")])
    assert [(t.id, env) for t, env in grants] == [("t1", "s2"), ("t2", "s2"), ("t3", "s1")]
