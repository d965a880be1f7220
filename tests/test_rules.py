from __future__ import annotations

from callme.server import rules
from callme.server.model import Environment, Lease, Ticket
from hypothesis import given, settings
from hypothesis import strategies as st

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


def part(seq: int, group: str, environment: str | None = None, label: str | None = None) -> Ticket:
    t = ticket(seq, environment, label)
    t.group_id = group
    return t


def granted(grants: list[tuple[Ticket, str]]) -> list[tuple[str, str]]:
    return [(t.id, env) for t, env in grants]


def test_a_group_is_granted_all_its_parts_at_once_or_nothing() -> None:
    envs = [Environment("uat"), Environment("sbx")]
    group = [part(1, "g", "uat"), part(2, "g", "sbx")]
    assert granted(rules.schedule(envs, {}, group)) == [("t1", "uat"), ("t2", "sbx")]
    # One part cannot be served: the other is not granted alone.
    assert granted(rules.schedule(envs, {"sbx": 1}, group)) == []


def test_a_group_first_in_every_queue_it_needs_holds_back_what_frees_up() -> None:
    envs = [Environment("uat"), Environment("sbx")]
    waiting = [part(1, "g", "uat"), part(2, "g", "sbx"), ticket(3, "uat")]
    # Nothing ahead of the group: uat is kept for it, not given to the single behind it.
    assert granted(rules.schedule(envs, {"sbx": 1}, waiting)) == []


def test_a_group_not_yet_first_everywhere_blocks_no_single_behind_it() -> None:
    envs = [Environment("uat"), Environment("sbx")]
    waiting = [ticket(1, "sbx"), part(2, "g", "uat"), part(3, "g", "sbx"), ticket(4, "uat")]
    # t1 waits for sbx ahead of the group: the group reserves nothing yet, so uat goes to t4.
    assert granted(rules.schedule(envs, {"sbx": 1}, waiting)) == [("t4", "uat")]


def test_crossing_groups_do_not_deadlock_the_first_takes_both() -> None:
    envs = [Environment("uat"), Environment("sbx")]
    waiting = [part(1, "a", "uat"), part(2, "a", "sbx"), part(3, "b", "sbx"), part(4, "b", "uat")]
    assert granted(rules.schedule(envs, {}, waiting)) == [("t1", "uat"), ("t2", "sbx")]


def test_label_parts_land_on_different_environments() -> None:
    envs = [Environment("s1", labels=("db",)), Environment("s2", labels=("db",)), Environment("uat", labels=("db",))]
    two = [part(1, "g", label="db"), part(2, "g", "s1")]
    # The label part avoids s1, which the other part names.
    assert granted(rules.schedule(envs, {"s2": 1}, two)) == [("t1", "uat"), ("t2", "s1")]
    both = [part(1, "g", label="db"), part(2, "g", label="db")]
    assert granted(rules.schedule(envs, {"s2": 1, "uat": 1}, both)) == []


def test_a_group_in_maintenance_holds_nothing_back() -> None:
    envs = [Environment("uat"), Environment("sbx", maintenance=True)]
    waiting = [part(1, "g", "uat"), part(2, "g", "sbx"), ticket(3, "uat")]
    assert granted(rules.schedule(envs, {}, waiting)) == [("t3", "uat")]


def test_a_groups_position_is_that_of_its_part_furthest_back() -> None:
    envs = [Environment("uat"), Environment("sbx")]
    waiting = [ticket(1, "sbx"), ticket(2, "sbx"), part(3, "g", "uat"), part(4, "g", "sbx"), ticket(5, "uat")]
    assert rules.position(envs, waiting, waiting[2]) == 3
    assert rules.positions(envs, waiting) == {"t1": 1, "t2": 2, "t3": 3, "t4": 3, "t5": 2}
    assert rules.position(envs, waiting, waiting[4]) == 2


def _first_choice_by_search(options: list[list[Environment]]) -> list[str] | None:
    """The reference: every choice in the parts' order of options, by exhaustive search (fine at this size)."""
    chosen: list[str] = []

    def place(i: int) -> bool:
        if i == len(options):
            return True
        for env in options[i]:
            if env.name not in chosen:
                chosen.append(env.name)
                if place(i + 1):
                    return True
                chosen.pop()
        return False

    return chosen if place(0) else None


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_a_groups_choice_is_the_first_in_the_order_of_options(data: st.DataObject) -> None:
    """rules._match (polynomial, whatever the input) chooses what an exhaustive search in the same order would."""
    pool = [Environment(f"e{i}") for i in range(data.draw(st.integers(1, 9)))]
    parts = data.draw(st.integers(1, 6))
    options = []
    for _ in range(parts):
        order = data.draw(st.permutations(pool))
        options.append(list(order[: data.draw(st.integers(0, len(pool)))]))
    assert rules._match(options) == _first_choice_by_search(options)


def test_a_group_no_environments_can_serve_is_decided_without_trying_every_choice() -> None:
    # Three parts of 300 environments each first, then five parts over four: no choice. A search of every choice
    # takes 300 * 299 * 298 * (4! ...) steps (hours); the matching answers at once, and the test's timeout would
    # catch the search.
    wide = [Environment(f"p{i}") for i in range(300)]
    narrow = [Environment(f"d{i}") for i in range(4)]
    assert rules._match([wide, wide, wide, *[narrow] * 5]) is None
    assert rules._match([wide, wide, wide, *[narrow] * 4]) == ["p0", "p1", "p2", "d0", "d1", "d2", "d3"]
