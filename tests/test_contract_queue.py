"""The queue of docs/api.md over HTTP, against one real server: grant order (no overtaking, priority, labels),
`ticket_grace` (waiters that come back stay, absent ones are abandoned, uncollected grants are revoked, and
each freed place passes on), and lowering `slots`.

Lower time bounds are exact (the server must not act early); upper bounds are generous."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .contract import (
    LongPoller,
    at,
    ended_lease,
    environment,
    event,
    events,
    granted,
    lease_state,
    post,
    problem,
    queue_seqs,
    queued,
    release,
    running,
    wait_for,
)
from .serverproc import CLIENT_KEY, ServerProcess

GRACE = 2.0
MAX_WAIT = 4.0  # above the grace: a long-poll held open must keep its ticket live by itself
MS = 0.001  # the answers' times are to the millisecond


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"CALL_ME_TICKET_GRACE": str(GRACE), "CALL_ME_MAX_WAIT": str(MAX_WAIT)}
    with running(tmp_path_factory.mktemp("queue"), env=env) as proc:
        yield proc


def test_a_newcomer_never_overtakes_a_waiter_when_a_lease_expires_between_sweeps(
    admin: httpx.Client, client: httpx.Client
) -> None:
    # The background sweep runs every SWEEP_INTERVAL (0.25 s). A newcomer that arrives just after a lease's
    # deadline usually finds the lease expired itself, before any sweep: its own request frees the slot, and
    # the slot must still go to the waiter. History tells which rounds were like that (the expiry and the
    # newcomer's `queued` share their transaction's time); at least one must be.
    found_the_expiry = 0
    for round_ in range(8):
        name = f"overtake-{round_}"
        sent = time.time()
        held = granted(admin, environment=name, ttl=1)
        offset = at(held["acquired_at"]) - (sent + time.time()) / 2  # the server's clock against ours
        waiter = queued(client, environment=name, holder="waiter")
        time.sleep(max(0.0, at(held["expires_at"]) - offset - time.time() + 0.003))
        newcomer = post(client, environment=name, holder="newcomer")
        assert newcomer.status_code == 202, f"the newcomer took the slot owed to the waiter: {newcomer.text}"
        served = post(client, environment=name, holder="waiter", ticket=waiter["ticket"], wait=2)
        assert (served.status_code, served.json()["holder"]) == (201, "waiter"), served.text
        expired = event(admin, name, "expired", lease=held["id"])
        joined = event(admin, name, "queued", seq=newcomer.json()["seq"])
        found_the_expiry += expired["at"] == joined["at"]
        if found_the_expiry == 2:
            break
    assert found_the_expiry, "in no round did the newcomer's own request find the lease expired"


def test_a_higher_priority_waiter_is_served_before_an_earlier_lower_one(
    admin: httpx.Client, client: httpx.Client
) -> None:
    held = granted(admin, environment="prio")
    low = queued(client, environment="prio", holder="low")
    high = queued(client, environment="prio", holder="high", priority=3)
    assert high["position"] == 1
    assert post(client, environment="prio", ticket=low["ticket"]).json()["position"] == 2
    release(admin, held)
    assert post(client, environment="prio", ticket=low["ticket"]).status_code == 202
    got = post(client, environment="prio", priority=3, ticket=high["ticket"])
    assert (got.status_code, got.json()["holder"]) == (201, "high"), got.text
    assert post(client, environment="prio", ticket=low["ticket"]).json()["position"] == 1


def test_priority_orders_label_and_environment_waiters_across_environments(
    admin: httpx.Client, client: httpx.Client
) -> None:
    for name in ("lp-1", "lp-2"):
        assert admin.put(f"/v1/environments/{name}", json={"labels": ["lp"]}).status_code == 201
    held = [granted(admin, environment=name) for name in ("lp-1", "lp-2")]
    early = queued(client, environment="lp-1", holder="early")
    label_high = queued(client, label="lp", holder="label-high", priority=2)
    label_low = queued(client, label="lp", holder="label-low")
    env_high = queued(client, environment="lp-2", holder="env-high", priority=1)

    def poll(ticket: dict[str, Any], **body: Any) -> httpx.Response:
        return post(client, ticket=ticket["ticket"], **body)

    # lp-1 frees: the label waiter of priority 2 comes before the earlier waiter for lp-1 itself.
    release(admin, held[0])
    got = poll(label_high, label="lp", priority=2)
    assert (got.status_code, got.json()["environment"]) == (201, "lp-1"), got.text
    assert poll(early, environment="lp-1").status_code == 202
    # lp-2 frees: the environment waiter of priority 1 comes before the earlier label waiter of priority 0.
    release(admin, held[1])
    got = poll(env_high, environment="lp-2", priority=1)
    assert (got.status_code, got.json()["environment"]) == (201, "lp-2"), got.text
    assert poll(label_low, label="lp").status_code == 202
    assert poll(early, environment="lp-1").json()["position"] == 1


def test_a_waiter_that_keeps_coming_back_is_never_abandoned(
    server: ServerProcess, admin: httpx.Client, client: httpx.Client
) -> None:
    held = granted(admin, environment="live")
    # Two waiters are each held open by one long-poll for MAX_WAIT, twice the grace: one as it joins, ...
    holding: dict[str, httpx.Response] = {}
    rejoined = queued(client, environment="live", holder="rejoined")
    started = time.monotonic()

    def long_poll(holder: str, **body: Any) -> None:
        with server.client(CLIENT_KEY) as http, contextlib.suppress(httpx.HTTPError):  # HTTPError: torn down
            holding[holder] = post(http, environment="live", holder=holder, wait=MAX_WAIT, **body)

    threads = [
        threading.Thread(target=long_poll, args=("joined",)),
        threading.Thread(target=long_poll, args=("rejoined",), kwargs={"ticket": rejoined["ticket"]}),
    ]
    for thread in threads:
        thread.start()
    # ... the other with its ticket; a third comes back every second (half the grace), for twice the grace.
    polling = queued(client, environment="live", holder="polling")
    while time.monotonic() - started < MAX_WAIT:
        time.sleep(1.0)
        again = post(client, environment="live", ticket=polling["ticket"])
        assert again.status_code == 202, f"abandoned although it came back every second: {again.text}"
        if GRACE + 0.5 < time.monotonic() - started < MAX_WAIT - 0.5:
            holders = {q["holder"] for q in environment(admin, "live")["queue"]}
            assert holders == {"joined", "rejoined", "polling"}, "abandoned while its long-poll was held open"
    for thread in threads:
        thread.join(MAX_WAIT + 5)
    for holder in ("joined", "rejoined"):
        answer = holding[holder]
        assert answer.status_code == 202, answer.text
        assert answer.json()["waited"] >= MAX_WAIT - MS
        assert post(client, environment="live", ticket=answer.json()["ticket"]).status_code == 202
    assert [e for e in events(admin, "live") if e["kind"] == "abandoned"] == []
    release(admin, held)


def test_an_uncollected_grant_is_revoked_after_the_grace_and_a_collected_one_lives_to_its_ttl(
    server: ServerProcess, admin: httpx.Client, client: httpx.Client
) -> None:
    # "away": its waiter is granted between polls and never comes back; "next" waits behind it by long-polls.
    away_holder = granted(admin, environment="away")
    away = queued(client, environment="away", holder="away")
    behind = LongPoller(server, CLIENT_KEY, wait=MAX_WAIT, environment="away", holder="next")
    behind.start()
    behind.queued()
    # "kept": its waiter collects the grant at once, then is silent; its TTL is longer than the grace.
    kept_holder = granted(admin, environment="kept")
    kept = queued(client, environment="kept", holder="kept", ttl=3)

    released = time.monotonic()
    release(admin, away_holder)
    release(admin, kept_holder)
    collected = granted(client, environment="kept", ttl=3, ticket=kept["ticket"])
    [uncollected] = environment(admin, "away")["leases"]
    assert (uncollected["holder"], uncollected["state"]) == ("away", "active")

    came, status, body = behind.outcome(timeout=GRACE + MAX_WAIT + 5)
    assert (status, body["holder"]) == (201, "next"), body
    assert came - released >= GRACE, "the uncollected grant was revoked before ticket_grace"
    revoked = lease_state(admin, uncollected["id"])
    assert revoked["state"] == "revoked"
    assert at(revoked["ended_at"]) - at(revoked["acquired_at"]) >= GRACE - MS
    assert at(body["acquired_at"]) - at(revoked["acquired_at"]) >= GRACE - MS
    assert at(body["acquired_at"]) - at(revoked["ended_at"]) < 1.0, "the revoked slot did not pass on at once"
    gone = post(client, environment="away", ticket=away["ticket"])
    assert problem(gone) == (410, "ticket_gone")

    time.sleep(max(0.0, released + GRACE + 0.5 - time.monotonic()))
    assert lease_state(admin, collected["id"])["state"] == "active", "a collected grant was revoked"
    ended = wait_for("the collected lease's TTL", lambda: ended_lease(admin, collected["id"]), timeout=6)
    assert ended["state"] == "expired"
    assert at(ended["ended_at"]) >= at(collected["expires_at"]) - MS


def test_an_absent_waiter_is_abandoned_after_the_grace_and_its_place_passes_on(
    server: ServerProcess, admin: httpx.Client, client: httpx.Client
) -> None:
    held = granted(admin, environment="gone")
    before = time.monotonic()
    silent = queued(client, environment="gone", holder="silent")
    patient = LongPoller(server, CLIENT_KEY, wait=1.0, environment="gone", holder="patient")
    patient.start()
    patient.queued()
    assert queue_seqs(admin, "gone")[0] == silent["seq"]

    left = wait_for(
        "the silent waiter's abandonment",
        lambda: silent["seq"] not in queue_seqs(admin, "gone") and time.monotonic(),
        timeout=GRACE + 5,
    )
    assert left - before >= GRACE, "abandoned before ticket_grace"
    abandoned = event(admin, "gone", "abandoned", seq=silent["seq"])
    joined = event(admin, "gone", "queued", seq=silent["seq"])
    assert at(abandoned["at"]) - at(joined["at"]) >= GRACE - MS
    assert [q["position"] for q in environment(admin, "gone")["queue"]] == [1]

    released = time.monotonic()
    release(admin, held)
    came, status, body = patient.outcome(timeout=5)
    assert (status, body["holder"]) == (201, "patient"), body
    assert came - released < 2.0
    gone = post(client, environment="gone", ticket=silent["ticket"])
    assert problem(gone) == (410, "ticket_gone")


def test_lowering_slots_revokes_nothing_and_new_grants_wait_for_enough_releases(
    admin: httpx.Client, client: httpx.Client
) -> None:
    assert admin.put("/v1/environments/shrink", json={"slots": 2}).status_code == 201
    first, second = granted(admin, environment="shrink"), granted(admin, environment="shrink")
    assert admin.put("/v1/environments/shrink", json={"slots": 1}).status_code == 200
    env = environment(admin, "shrink")
    assert sorted(lease["id"] for lease in env["leases"]) == sorted([first["id"], second["id"]])
    assert env["free"] == 0
    assert {lease_state(admin, lease["id"])["state"] for lease in (first, second)} == {"active"}
    renewed = admin.post(f"/v1/leases/{first['id']}/renew", headers={"X-Lease-Token": first["token"]})
    assert renewed.status_code == 200

    waiter = queued(client, environment="shrink", holder="waiter")
    release(admin, first)
    assert post(client, environment="shrink", ticket=waiter["ticket"]).status_code == 202, "granted over slots"
    assert [lease["id"] for lease in environment(admin, "shrink")["leases"]] == [second["id"]]
    release(admin, second)
    got = post(client, environment="shrink", ticket=waiter["ticket"])
    assert (got.status_code, got.json()["holder"]) == (201, "waiter"), got.text


def test_after_a_restart_no_waiter_is_abandoned_before_the_grace(tmp_path: Path) -> None:
    grace = 3.0  # above the time a restart takes on a loaded machine, so that the waiter can make it back
    with running(tmp_path, env={"CALL_ME_TICKET_GRACE": str(grace)}) as server:
        with server.client() as admin, server.client(CLIENT_KEY) as client:
            granted(admin, environment="floor", ttl=600)
            back = queued(client, environment="floor", holder="back")
            silent = queued(client, environment="floor", holder="silent")
        server.kill()
        time.sleep(grace + 0.2)  # longer than the grace without a poll, across the downtime
        restarted = time.monotonic()
        server.start()
        with server.client() as admin, server.client(CLIENT_KEY) as client:
            again = post(client, environment="floor", ticket=back["ticket"])
            assert (again.status_code, again.json().get("position")) == (202, 1), again.text
            left = wait_for(
                "the silent waiter's abandonment",
                lambda: silent["seq"] not in queue_seqs(admin, "floor") and time.monotonic(),
                timeout=grace + 5,
            )
            assert left - restarted >= grace, "abandoned before ticket_grace had passed since the start-up"
            assert event(admin, "floor", "abandoned", seq=silent["seq"])["holder"] == "silent"
            assert queue_seqs(admin, "floor") == [back["seq"]]
