"""The client's request_id and its recovery from a lost place, against a real server on a real socket.

tests/test_client_retry.py checks the same promises against a fake transport; here the server
decides. Between the client and the server sits `LossyProxy` (tests/httpproxy.py), a TCP proxy
that speaks just enough HTTP/1.1 to see every exchange whole: it records each one and can lose an
answer on the way back (the server did the work, the client never hears of it), which is the case
request_id exists for.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from callme.client import Client, Lease, Waiting

from .httpproxy import Exchange, LossyProxy
from .serverproc import CLIENT_KEY, ServerProcess

GRACE = 1.5  # CALL_ME_TICKET_GRACE of the server in the place-lost tests, seconds
BOUND = 30.0  # no acquire here may take longer


@pytest.fixture
def graceful_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server that abandons a ticket (and revokes a grant nobody collects) after GRACE seconds."""
    proc = ServerProcess(tmp_path, env={"CALL_ME_TICKET_GRACE": str(GRACE)})
    proc.start()
    try:
        yield proc
    finally:
        proc.kill()


def hold(server: ServerProcess, holder: str) -> dict[str, Any]:
    with server.client(CLIENT_KEY) as http:
        response = http.post("/v1/leases", json={"environment": "uat", "holder": holder, "ttl": 120})
    assert response.status_code == 201, response.text
    lease: dict[str, Any] = response.json()
    return lease


def release(server: ServerProcess, lease: dict[str, Any]) -> None:
    with server.client(CLIENT_KEY) as http:
        response = http.delete(f"/v1/leases/{lease['id']}", headers={"X-Lease-Token": lease["token"]})
    assert response.status_code == 204, response.text


def live_leases(server: ServerProcess) -> list[str]:
    with server.client() as http:
        return [lease["id"] for lease in http.get("/v1/environments/uat").json()["leases"]]


def events(server: ServerProcess) -> list[dict[str, Any]]:
    """The audit log of uat, oldest first, without the environment's own changes."""
    with server.client() as http:
        answer = http.get("/v1/history", params={"environment": "uat", "limit": 100})
    found: list[dict[str, Any]] = answer.json()["events"]
    return [event for event in reversed(found) if not event["kind"].startswith("environment_")]


def test_a_lost_answer_is_asked_again_and_returns_the_same_lease(server: ServerProcess) -> None:
    with server.client() as admin:
        # Two slots: a repeat that the server took for a new request would get the second one at once.
        assert admin.put("/v1/environments/uat", json={"slots": 2}).status_code == 201
    lost: list[Exchange] = []

    def lose_the_first_acquire(exchange: Exchange) -> bool:
        if exchange.method == "POST" and exchange.path == "/v1/leases" and not lost:
            lost.append(exchange)
            return True
        return False

    with (
        LossyProxy(server.port, drop=lose_the_first_acquire) as proxy,
        Client(proxy.url, CLIENT_KEY, retry_for=BOUND) as client,
    ):
        lease = client.acquire("uat", holder="org/app#1", ttl=120, timeout=BOUND)
        posts = proxy.posts()
        assert [(post.status, post.delivered) for post in posts] == [(201, False), (201, True)]
        # What the server made for the lost answer is what the client holds, token and all, and nothing more.
        made = posts[0].response_json()
        assert (made["id"], made["token"], made["fence"]) == (lease.id, lease.token, lease.fence)
        assert live_leases(server) == [lease.id]
        assert [event["kind"] for event in events(server)] == ["acquired"]
        assert posts[0].request_json()["request_id"] == posts[1].request_json()["request_id"]
        client.release(lease)
    assert live_leases(server) == []


@pytest.mark.slow
@pytest.mark.parametrize("meanwhile", ["still queued", "granted"])
def test_a_place_lost_between_polls_is_asked_for_again_then_queued_at_the_back(
    graceful_server: ServerProcess, caplog: pytest.LogCaptureFixture, meanwhile: str
) -> None:
    """acquire.py: after a 410 ticket_gone the client asks once more with the same request_id and no
    ticket; only when that is gone too does it queue again under a fresh request_id, and says so."""
    server = graceful_server
    other = hold(server, "someone-else")
    seen: list[Waiting] = []

    def on_wait(waiting: Waiting) -> None:
        seen.append(waiting)
        if len(seen) == 1:
            if meanwhile == "granted":
                release(server, other)  # The slot is granted to the ticket while the client is away.
            # As a client stopped (kill -STOP, a stuck runner) between two polls for longer than the grace.
            time.sleep(GRACE + 1.5)
        elif len(seen) == 2 and meanwhile == "still queued":
            release(server, other)  # The fresh place is first in the queue: it gets the slot.

    with (
        caplog.at_level(logging.WARNING, logger="callme.client"),
        LossyProxy(server.port) as proxy,
        Client(proxy.url, CLIENT_KEY, retry_for=BOUND, long_poll=2) as client,
    ):
        lease = client.acquire("uat", holder="org/app#2", ttl=120, timeout=BOUND, on_wait=on_wait)
        posts = [
            (post.status, post.request_json()["request_id"], "ticket" in post.request_json()) for post in proxy.posts()
        ]

    first_id, fresh_id = posts[0][1], posts[-1][1]
    assert fresh_id != first_id
    expected = [(202, first_id, False), (410, first_id, True), (410, first_id, False)]
    if meanwhile == "granted":
        expected.append((201, fresh_id, False))  # The revoked grant freed the slot: granted at once.
    else:
        expected.append((202, fresh_id, False))
        assert posts[-1] == (201, fresh_id, True), posts
    assert posts[:4] == expected, posts
    assert "queueing again at the back" in caplog.text

    assert live_leases(server) == [lease.id]
    assert (lease.environment, lease.holder) == ("uat", "org/app#2")
    log = [(event["kind"], event["seq"], event["lease"]) for event in events(server)]
    first_seq = seen[0].seq
    if meanwhile == "granted":
        revoked_lease = next(lease_id for kind, seq, lease_id in log if kind == "acquired" and seq == first_seq)
        assert ("revoked", first_seq, revoked_lease) in log
        assert revoked_lease != lease.id
    else:
        assert ("abandoned", first_seq) in [(kind, seq) for kind, seq, _ in log]
        assert seen[-1].seq > first_seq  # the fresh place is behind the lost one
    # The lease the client holds was granted to a later ticket than the lost one.
    mine = next((kind, seq) for kind, seq, lease_id in log if lease_id == lease.id)
    assert mine[0] == "acquired"
    assert mine[1] > first_seq
    release(server, {"id": lease.id, "token": lease.token})


def _request(**fields: Any) -> dict[str, Any]:
    """An acquire's body as `on_request` hands it out: request_id and the fields a repeat must match."""
    return {"request_id": str(uuid.uuid4()), "environment": "uat", "holder": "org/app#3", "ttl": 120, **fields}


@pytest.mark.parametrize(
    "first",
    ["granted", "queued", "never sent, free", "never sent, busy", "granted and released"],
)
def test_withdraw_gives_back_what_the_request_made_and_keeps_nothing(server: ServerProcess, first: str) -> None:
    """Client.withdraw, as the Action's post step uses it with nothing but the saved request."""
    other = hold(server, "someone-else") if first in ("queued", "never sent, busy") else None
    request = _request(metadata={"run_url": "https://ci.example.com/1"})
    made: dict[str, Any] = {}
    if not first.startswith("never sent"):
        with server.client(CLIENT_KEY) as http:
            answer = http.post("/v1/leases", json={**request, "wait": 0})
        assert answer.status_code == (202 if first == "queued" else 201), answer.text
        made = answer.json()
        if first == "granted and released":
            release(server, made)
    before = [event["kind"] for event in events(server)]

    with Client(server.url, CLIENT_KEY, retry_for=BOUND) as client:
        outcome = client.withdraw(request)

    after = [event["kind"] for event in events(server)][len(before) :]
    if first == "granted":
        assert isinstance(outcome, Lease)
        assert outcome.id == made["id"]
        assert after == ["released"]
    elif first == "queued":
        assert isinstance(outcome, Waiting)
        assert outcome.seq == made["seq"]
        assert after == ["left"]
    elif first == "never sent, free":
        # The repeat was granted a lease of its own: released at once.
        assert isinstance(outcome, Lease)
        assert after == ["acquired", "released"]
    else:
        # Busy: the repeat does not queue. Released before: what the request made has ended.
        assert outcome is None
        assert after == []
    assert live_leases(server) == ([other["id"]] if other else [])
    with server.client() as http:
        assert http.get("/v1/environments/uat").json()["queue"] == []
