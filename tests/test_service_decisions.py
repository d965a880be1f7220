"""Decisions of the service that docs/api.md states and the model-based machine (test_model_queue) does not reach
or does not compare: keys' priority limits, tokens, auto-create, repeats of a `request_id` and of a `ticket`,
long-polls (woken by a grant, and keeping their ticket live), and what an `acquired` event's detail says.

Each test is a few steps on SQLite with a fake clock: scripts/mutation runs them once per mutant.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from callme.server.constants import REQUEST_ID_RETENTION
from callme.server.errors import Forbidden, Invalid, LeaseGone, NotFound, TicketGone, WrongToken
from callme.server.model import Principal, Ticket
from callme.server.outcomes import Granted, Queued
from callme.server.settings import Settings

from .harness import ADMIN, Harness, request

GRACE = 10.0
CLIENT = Principal("ci", "client", 1)


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path / "db.sqlite", grace=GRACE)
    try:
        yield harness
    finally:
        harness.close()


def granted(h: Harness, environment: str = "uat", **fields: Any) -> Granted:
    answer = h.acquire(request(environment, **fields))
    assert isinstance(answer, Granted)
    return answer


def queued(h: Harness, environment: str = "uat", **fields: Any) -> Queued:
    answer = h.acquire(request(environment, **fields))
    assert isinstance(answer, Queued)
    return answer


# -- keys and tokens ----------------------------------------------------------------------------------------


def test_a_priority_above_the_keys_max_priority_is_invalid_except_for_an_admin_key(h: Harness) -> None:
    with pytest.raises(Invalid) as refused:
        h.acquire(request("uat", priority=2), CLIENT)
    assert refused.value.field == "priority"
    assert isinstance(h.acquire(request("uat", priority=1), CLIENT), Granted)  # at the limit
    assert isinstance(h.acquire(request("dev", priority=5), Principal("ops", "admin", 0)), Granted)


def test_renew_and_release_check_the_token_first_whatever_the_leases_state(h: Harness) -> None:
    answer = granted(h)
    lease, token = answer.lease, answer.token
    with pytest.raises(WrongToken):
        h.run(h.svc.renew(lease.id, "k_wrong", None))
    with pytest.raises(WrongToken):
        h.run(h.svc.release(ADMIN, lease.id, None))  # an admin key without force is like any other
    h.run(h.svc.release(ADMIN, lease.id, token))
    with pytest.raises(WrongToken):
        h.run(h.svc.renew(lease.id, "k_wrong", None))
    with pytest.raises(LeaseGone):
        h.run(h.svc.renew(lease.id, token, None))
    with pytest.raises(NotFound):
        h.run(h.svc.renew("l_unknown", token, None))


def test_a_forced_release_needs_an_admin_key(h: Harness) -> None:
    lease = granted(h).lease
    with pytest.raises(Forbidden):
        h.run(h.svc.release(CLIENT, lease.id, None, force=True))
    h.run(h.svc.release(ADMIN, lease.id, None, force=True))
    assert [(e.kind, e.actor) for e in h.events() if e.lease == lease.id][-1] == ("revoked", ADMIN.name)


# -- what a request names -----------------------------------------------------------------------------------


def test_an_unknown_environment_is_created_with_one_slot_or_is_404_when_auto_create_is_off(tmp_path: Path) -> None:
    on = Harness(tmp_path / "on.sqlite", grace=GRACE)
    try:
        assert granted(on, "new").environment.auto
        assert [(e.name, e.slots, e.auto) for e in on.environments()] == [("new", 1, True)]
        with pytest.raises(NotFound):
            on.acquire(request(None, "nowhere"))  # a label that no environment carries
    finally:
        on.close()
    off = Harness(tmp_path / "off.sqlite", settings=Settings(ticket_grace=GRACE, auto_create=False))
    try:
        with pytest.raises(NotFound):
            off.acquire(request("new"))
        assert off.environments() == []
    finally:
        off.close()


def test_coming_back_with_a_ticket_must_name_the_same_target_and_priority(h: Harness) -> None:
    h.put("uat", labels=["staging"])
    granted(h)
    ticket = queued(h).ticket_id
    for other in (request("dev", ticket=ticket), request(None, "staging", ticket=ticket)):
        with pytest.raises(Invalid) as refused:
            h.acquire(other)
        assert refused.value.field == "ticket"
    for priority in (-1, 1):
        with pytest.raises(Invalid) as refused:
            h.acquire(request("uat", ticket=ticket, priority=priority))
        assert refused.value.field == "priority"
    assert isinstance(h.acquire(request("uat", ticket=ticket)), Queued)
    # Any priority the key may use, compared by value (ints above 256 are distinct objects in CPython).
    high = queued(h, priority=100_000).ticket_id
    assert isinstance(h.acquire(request("uat", ticket=high, priority=int("100000"))), Queued)


def test_a_ticket_that_is_unknown_left_or_abandoned_is_gone(h: Harness) -> None:
    granted(h)
    left, abandoned = queued(h).ticket_id, queued(h).ticket_id
    with pytest.raises(TicketGone):
        h.acquire(request("uat", ticket="t_unknown"))
    h.run(h.svc.leave(ADMIN, left))
    with pytest.raises(TicketGone):
        h.acquire(request("uat", ticket=left))
    h.clock.advance(GRACE)
    h.run(h.svc.sweep())
    with pytest.raises(TicketGone):
        h.acquire(request("uat", ticket=abandoned))


def test_polling_keeps_a_ticket_live_for_a_grace_from_each_poll(h: Harness) -> None:
    granted(h, ttl=3600)
    ticket = queued(h).ticket_id
    for _ in range(3):  # three graces in all, never one without a poll
        h.clock.advance(GRACE - 1)
        h.run(h.svc.sweep())
        assert isinstance(h.acquire(request("uat", ticket=ticket)), Queued)
    h.clock.advance(GRACE)
    h.run(h.svc.sweep())
    assert h.waiting() == []


# -- request_id ---------------------------------------------------------------------------------------------


def test_a_repeated_request_id_returns_what_the_first_request_made(h: Harness) -> None:
    lease = granted(h, request_id="a")
    again = granted(h, request_id="a")
    assert (again.lease.id, again.token) == (lease.lease.id, lease.token)
    waiting = queued(h, request_id="b")
    assert queued(h, request_id="b", queue=True).ticket_id == waiting.ticket_id
    assert [t.id for t in h.waiting()] == [waiting.ticket.id]  # no second place in the queue
    other_key = h.acquire(request("uat", request_id="b"), CLIENT)  # a request_id belongs to one key
    assert isinstance(other_key, Queued)
    assert other_key.ticket_id != waiting.ticket_id


@pytest.mark.parametrize(
    ("field", "change"),
    [
        ("ticket", {"environment": "dev"}),
        ("priority", {"priority": 1}),
        ("holder", {"holder": "someone else"}),
        ("ttl", {"ttl": 61}),
        ("metadata", {"metadata": {"run": 2}}),
        ("ticket", {"ticket": "t_!"}),  # another request's ticket, sorting before and after any ticket id
        ("ticket", {"ticket": "t_~"}),
    ],
)
def test_a_repeated_request_id_with_a_different_request_is_invalid(
    h: Harness, field: str, change: dict[str, Any]
) -> None:
    first = {"environment": "uat", "holder": "me", "ttl": 60, "metadata": {"run": 1}, "request_id": "r"}
    granted(h, "other")
    h.acquire(request(**first))
    with pytest.raises(Invalid) as refused:
        h.acquire(request(**(first | change)))
    assert refused.value.field == field
    h.acquire(request(**first))  # the same again is no error


def test_a_repeated_request_id_may_bring_the_ticket_it_was_given(h: Harness) -> None:
    granted(h)
    ticket = queued(h, request_id="r").ticket_id
    assert queued(h, request_id="r", ticket=ticket).ticket_id == ticket


def test_a_request_id_finds_its_ended_lease_then_is_forgotten_after_the_retention(h: Harness) -> None:
    first = granted(h, request_id="r1")
    h.run(h.svc.release(ADMIN, first.lease.id, first.token))
    h.run(h.svc.sweep())
    with pytest.raises(TicketGone):
        h.acquire(request("uat", request_id="r1"))
    # api.md keeps a request_id at least 24 h; the server forgets it (its ended ticket) with the rest of the history
    # after history_days, so that the store does not grow for ever: the same request_id is then a new request.
    h.clock.advance(REQUEST_ID_RETENTION + 1)
    h.run(h.svc.prune())
    with pytest.raises(TicketGone):
        h.acquire(request("uat", request_id="r1"))
    h.clock.advance(h.settings.history_days * 86400)
    h.run(h.svc.prune())
    again = granted(h, request_id="r1")
    assert again.lease.id != first.lease.id


# -- grants to a client between polls ----------------------------------------------------------------------


def test_a_grant_collected_by_the_next_poll_is_no_longer_revoked_after_the_grace(h: Harness) -> None:
    first = granted(h)
    ticket = queued(h).ticket_id
    h.run(h.svc.release(ADMIN, first.lease.id, first.token))  # granted while its client is away
    h.clock.advance(GRACE - 1)
    lease = h.acquire(request("uat", ticket=ticket))
    assert isinstance(lease, Granted)
    h.clock.advance(GRACE)  # past the grace of the grant, well within the lease's TTL
    h.run(h.svc.sweep())
    assert [live.id for live in h.live_leases()] == [lease.lease.id]


def test_leaving_releases_a_lease_granted_to_the_ticket_meanwhile(h: Harness) -> None:
    first = granted(h)
    ticket = queued(h).ticket_id
    h.run(h.svc.release(ADMIN, first.lease.id, first.token))
    [lease] = h.live_leases()
    h.run(h.svc.leave(CLIENT, ticket))
    assert h.live_leases() == []
    assert [(e.kind, e.actor) for e in h.events() if e.lease == lease.id][-1] == ("released", CLIENT.name)


# -- long-polls ---------------------------------------------------------------------------------------------


def test_a_held_long_poll_is_answered_as_soon_as_its_ticket_is_granted(h: Harness) -> None:
    first = granted(h)

    async def scenario() -> object:
        waiter = asyncio.create_task(h.svc.acquire(ADMIN, replace(request("uat"), wait=20.0)))
        await _until(h, bool)  # its ticket is queued
        await h.svc.release(ADMIN, first.lease.id, first.token)
        # Far less than the 20 s the request may be held: the grant itself ends the wait.
        return await asyncio.wait_for(waiter, 3.0)

    assert isinstance(h.run(scenario()), Granted)


@pytest.mark.parametrize("come_back", [False, True])
def test_a_request_held_open_keeps_its_ticket_live(h: Harness, come_back: bool) -> None:
    """The grace runs from when the server last finished answering, so a long-poll counts until it ends."""
    granted(h)
    ticket = queued(h).ticket_id if come_back else None

    async def scenario() -> int:
        waiter = asyncio.create_task(h.svc.acquire(ADMIN, replace(request("uat", ticket=ticket), wait=20.0)))
        await _until(h, lambda waiting: any(abs(t.seen_at - h.clock.now()) > 1 for t in waiting))  # it is held
        h.clock.advance(GRACE + 1)
        await h.svc.sweep()
        live = len(await _waiting(h))
        h.svc.waiters.close()  # answers the held request at once, as at shutdown
        with contextlib.suppress(TicketGone):
            await waiter
        return live

    assert h.run(scenario()) == 1


async def _waiting(h: Harness) -> list[Ticket]:
    assert h.store is not None
    return await h.store.transact(lambda tx: tx.waiting_tickets(["uat"], []))


async def _until(h: Harness, done: Callable[[list[Ticket]], bool]) -> None:
    """Until the waiting tickets show that a held request has got as far as `done` says."""
    for _ in range(300):
        if done(await _waiting(h)):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the held request never got there")


# -- audit events -------------------------------------------------------------------------------------------


def test_an_acquired_event_says_how_long_its_ticket_waited_and_only_when_it_waited(h: Harness) -> None:
    first = granted(h)
    queued(h)
    h.clock.advance(0.25)
    h.run(h.svc.release(ADMIN, first.lease.id, first.token))
    details = [e.detail for e in h.events() if e.kind == "acquired"]
    assert details == [None, "waited 0.250 s in the queue"]
