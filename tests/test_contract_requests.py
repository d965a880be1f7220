"""Requests of docs/api.md over HTTP, against real servers: `request_id` (repeats, per key, across a restart),
coming back with a `ticket`, the `max_wait` cap and `waited`, ended leases, `/maybe`'s `maybe_ttl`, keys
configured by their SHA-256, and running without authentication."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .contract import (
    at,
    ended_lease,
    environment,
    granted,
    lease_state,
    post,
    problem,
    queued,
    release,
    running,
    wait_for,
)
from .serverproc import ADMIN_KEY, CLIENT_KEY, DEFAULT_CONFIG, ServerProcess

OTHER_CLIENT_KEY = "other-client-key-for-tests"
HASHED_KEY = "hashed-read-key-for-tests"
HASHED_KEY_SHA256 = hashlib.sha256(HASHED_KEY.encode()).hexdigest()
CONFIG = (
    DEFAULT_CONFIG
    + f"""
[[keys]]
name = "ci-2"
key = "{OTHER_CLIENT_KEY}"
role = "client"
max_priority = 5

[[keys]]
name = "hashed"
key_sha256 = "{HASHED_KEY_SHA256}"
role = "read"
"""
)
MAX_WAIT = 1.0
MAYBE_TTL = 2
MS = 0.001


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"CALL_ME_MAX_WAIT": str(MAX_WAIT), "CALL_ME_MAYBE_TTL": str(MAYBE_TTL)}
    with running(tmp_path_factory.mktemp("requests"), config=CONFIG, env=env) as proc:
        yield proc


def _timed(http: httpx.Client, **body: Any) -> tuple[float, httpx.Response]:
    started = time.monotonic()
    answer = http.post("/v1/leases", json=body, timeout=10)
    return time.monotonic() - started, answer


def test_max_wait_caps_a_long_poll_and_waited_says_how_long(admin: httpx.Client, client: httpx.Client) -> None:
    granted(admin, environment="capped")
    took, capped = _timed(client, environment="capped", wait=60)
    assert capped.status_code == 202, capped.text
    assert MAX_WAIT <= took < MAX_WAIT + 3
    assert MAX_WAIT - MS <= capped.json()["waited"] < MAX_WAIT + 1
    # A wait below max_wait is honoured, not stretched to it.
    took, shorter = _timed(client, environment="capped", ticket=capped.json()["ticket"], wait=0.4)
    assert shorter.status_code == 202, shorter.text
    assert took >= 0.4
    assert 0.4 - MS <= shorter.json()["waited"] < MAX_WAIT - 0.05
    _, at_once = _timed(client, environment="capped", ticket=capped.json()["ticket"])
    assert at_once.json()["waited"] < 0.4


def test_coming_back_with_a_ticket_for_another_target_or_priority_is_422_and_changes_nothing(
    admin: httpx.Client, client: httpx.Client
) -> None:
    granted(admin, environment="tk-a")
    assert admin.put("/v1/environments/tk-b", json={"labels": ["tk"]}).status_code == 201
    ticket = queued(client, environment="tk-a", priority=1)["ticket"]
    for wrong in (
        {"environment": "tk-b"},
        {"label": "tk"},
        {"environment": "tk-a"},
        {"environment": "tk-a", "priority": 2},
    ):
        answer = post(client, ticket=ticket, **wrong)
        assert problem(answer) == (422, "invalid"), (wrong, answer.text)
    assert environment(admin, "tk-b")["leases"] == [], "the wrong target was served"
    same = post(client, environment="tk-a", priority=1, ticket=ticket)
    assert (same.status_code, same.json()["ticket"], same.json()["position"]) == (202, ticket, 1)


def test_a_repeated_request_id_must_repeat_the_first_request(admin: httpx.Client, client: httpx.Client) -> None:
    assert admin.put("/v1/environments/rid-labelled", json={"labels": ["rid"]}).status_code == 201
    first = {"environment": "rid-same", "holder": "h", "ttl": 60, "priority": 1, "metadata": {"run": 1}}
    lease = granted(client, **first, request_id="r-same")
    changes: list[tuple[dict[str, Any], str | None]] = [
        ({"environment": "rid-other"}, None),
        ({"environment": None, "label": "rid"}, None),
        ({"holder": "someone else"}, "holder"),
        ({"holder": None}, "holder"),  # the default holder, the key's name, is another holder
        ({"ttl": 61}, "ttl"),
        ({"priority": 2}, "priority"),
        ({"metadata": {"run": 2}}, "metadata"),
    ]
    for change, field in changes:
        body = {k: v for k, v in {**first, **change}.items() if v is not None}
        answer = post(client, **body, request_id="r-same")
        assert problem(answer) == (422, "invalid"), (change, answer.text)
        if field is not None:
            assert answer.json()["field"] == field
    again = granted(client, **first, request_id="r-same")
    assert (again["id"], again["token"]) == (lease["id"], lease["token"])


def test_a_repeated_request_id_may_change_wait_queue_and_ticket(admin: httpx.Client, client: httpx.Client) -> None:
    held = granted(admin, environment="rid-free")
    first = queued(client, environment="rid-free", request_id="r-free")
    took, waited = _timed(client, environment="rid-free", request_id="r-free", wait=0.5)
    assert (waited.status_code, waited.json().get("ticket")) == (202, first["ticket"]), waited.text
    assert took >= 0.5
    assert waited.json()["waited"] >= 0.5 - MS, "the repeat's wait was not honoured"
    for change in ({"queue": False}, {"ticket": first["ticket"]}):
        again = post(client, environment="rid-free", request_id="r-free", **change)
        assert (again.status_code, again.json().get("ticket")) == (202, first["ticket"]), (change, again.text)
    assert [q["seq"] for q in environment(admin, "rid-free")["queue"]] == [first["seq"]], "it took another place"
    release(admin, held)
    lease = granted(client, environment="rid-free", request_id="r-free", queue=False)
    repeated = granted(client, environment="rid-free", request_id="r-free", ticket=first["ticket"], wait=0.2)
    assert (repeated["id"], repeated["token"]) == (lease["id"], lease["token"])


def test_a_request_id_whose_lease_ended_is_ticket_gone(admin: httpx.Client, client: httpx.Client) -> None:
    lease = granted(client, environment="rid-gone", request_id="r-gone")
    release(client, lease)
    gone = post(client, environment="rid-gone", request_id="r-gone")
    assert problem(gone) == (410, "ticket_gone"), gone.text
    forced = granted(client, environment="rid-gone", request_id="r-forced")
    assert admin.delete(f"/v1/leases/{forced['id']}?force=true").status_code == 204
    gone = post(client, environment="rid-gone", request_id="r-forced", wait=0.2)
    assert problem(gone) == (410, "ticket_gone"), gone.text


def test_request_ids_are_scoped_per_key(server: ServerProcess, client: httpx.Client) -> None:
    body = {"environment": "rid-key", "holder": "shared-holder", "request_id": "r-shared"}
    mine = granted(client, **body)
    with server.client(OTHER_CLIENT_KEY) as other:
        theirs = queued(other, **body)
        assert "token" not in theirs
        assert post(other, **body).json()["ticket"] == theirs["ticket"]
    assert granted(client, **body)["token"] == mine["token"]


def test_a_request_id_is_kept_across_a_restart(tmp_path: Path) -> None:
    with running(tmp_path) as server:
        with server.client(CLIENT_KEY) as client:
            lease = granted(client, environment="rid-restart", request_id="r-lease", metadata={"run": 7})
            ticket = queued(client, environment="rid-restart", request_id="r-ticket", priority=2)
        server.stop()
        server.start()
        with server.client(CLIENT_KEY) as client:
            again = granted(client, environment="rid-restart", request_id="r-lease", metadata={"run": 7})
            assert (again["id"], again["token"], again["fence"]) == (lease["id"], lease["token"], lease["fence"])
            waiting = post(client, environment="rid-restart", request_id="r-ticket", priority=2)
            assert waiting.status_code == 202, waiting.text
            assert (waiting.json()["ticket"], waiting.json()["seq"]) == (ticket["ticket"], ticket["seq"])
            assert len(environment(client, "rid-restart")["queue"]) == 1


def test_releasing_or_renewing_an_ended_lease_checks_the_token_first(admin: httpx.Client, client: httpx.Client) -> None:
    expired = granted(client, environment="ended", ttl=1)
    revoked = granted(client, environment="ended-2")
    assert admin.delete(f"/v1/leases/{revoked['id']}?force=true").status_code == 204
    wait_for("the lease's expiry", lambda: lease_state(client, expired["id"])["state"] == "expired", timeout=5)
    for lease in (expired, revoked):
        path = f"/v1/leases/{lease['id']}"
        for method, suffix in (("DELETE", ""), ("POST", "/renew")):
            wrong = client.request(method, path + suffix, headers={"X-Lease-Token": "k_not-the-token"})
            assert problem(wrong) == (403, "wrong_token"), wrong.text
            right = client.request(method, path + suffix, headers={"X-Lease-Token": lease["token"]})
            assert problem(right) == (410, "lease_gone"), right.text


def test_maybe_leases_get_maybe_ttl_and_expire_at_it(server: ServerProcess, admin: httpx.Client) -> None:
    url = server.url + "/maybe?environment=maybe-ttl"
    before = time.monotonic()
    assert httpx.post(url, headers={"X-API-KEY": ADMIN_KEY}).status_code == 201
    [lease] = environment(admin, "maybe-ttl")["leases"]
    assert lease["ttl"] == MAYBE_TTL
    assert at(lease["expires_at"]) - at(lease["acquired_at"]) == pytest.approx(MAYBE_TTL, abs=MS)
    free_again = wait_for(
        "the /maybe lease to expire",
        lambda: httpx.get(url, headers={"X-API-KEY": ADMIN_KEY}).status_code == 200 and time.monotonic(),
        timeout=MAYBE_TTL + 3,
    )
    assert free_again - before >= MAYBE_TTL, "the /maybe lease ended before maybe_ttl"
    # (GET /maybe decides in a transaction it rolls back; the expiry is recorded by the next sweep.)
    ended = wait_for("the expiry on record", lambda: ended_lease(admin, lease["id"]), timeout=2)
    assert ended["state"] == "expired"
    assert at(ended["ended_at"]) >= at(lease["expires_at"]) - MS


def test_a_key_configured_by_its_sha256_authenticates(server: ServerProcess) -> None:
    path = server.url + "/v1/environments"
    assert httpx.get(path, headers={"X-API-KEY": HASHED_KEY}).status_code == 200
    assert httpx.get(path, headers={"Authorization": f"Bearer {HASHED_KEY}"}).status_code == 200
    for wrong in (HASHED_KEY_SHA256, HASHED_KEY + "x", HASHED_KEY.upper()):
        refused = httpx.get(path, headers={"X-API-KEY": wrong})
        assert problem(refused) == (401, "unauthorized"), wrong
    role = httpx.post(server.url + "/v1/leases", headers={"X-API-KEY": HASHED_KEY}, json={"environment": "h"})
    assert problem(role) == (403, "forbidden")


def test_without_keys_the_server_starts_only_when_told_to_run_without_authentication(tmp_path: Path) -> None:
    (tmp_path / "refused").mkdir()
    refused = ServerProcess(tmp_path / "refused", env={"API_KEY": ""}, config=None)
    done = subprocess.run(
        [sys.executable, "-m", "callme.server.main"], env=refused.env, capture_output=True, text=True, timeout=20
    )
    assert done.returncode != 0
    assert "CALL_ME_NO_AUTH" in done.stderr
    assert not Path(refused.database).exists(), "it opened its store before refusing"

    with running(tmp_path / "open", env={"API_KEY": "", "CALL_ME_NO_AUTH": "true"}, config=None) as server:
        anyone = httpx.Client(base_url=server.url, timeout=10)
        with anyone:
            assert anyone.get("/v1/environments").status_code == 200
            lease = granted(anyone, environment="open")
            assert anyone.put("/v1/environments/open", json={"description": "by anyone"}).status_code == 200
            release(anyone, lease)
        warnings = [line for line in server.log().splitlines() if " WARNING " in line and "CALL_ME_NO_AUTH" in line]
        assert warnings, f"no loud warning at start-up:\n{server.log()}"
