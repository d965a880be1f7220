"""The lock server end to end: a real `call-me-server` process on a real socket and a real SQLite file."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from callme.server.settings import load

from .contract import LongPoller, at
from .serverproc import ADMIN_KEY, CLIENT_KEY, ServerProcess

ORIGINAL = {"X-API-KEY": ADMIN_KEY}


def acquire(server: ServerProcess, key: str = ADMIN_KEY, **body: Any) -> httpx.Response:
    with server.client(key) as c:
        return c.post("/v1/leases", json=body)


def test_the_original_transcript(server: ServerProcess) -> None:
    url = server.url + "/maybe?environment=uat"
    steps = [("GET", 200), ("POST", 201), ("GET", 403), ("POST", 403), ("DELETE", 204), ("GET", 200)]
    for method, status in steps:
        answer = httpx.request(method, url, headers=ORIGINAL)
        assert (method, answer.status_code, answer.content) == (method, status, b"")


def test_maybe_never_overtakes_a_v1_waiter_and_releases_by_key(server: ServerProcess) -> None:
    first = acquire(server, environment="uat", holder="a")
    assert first.status_code == 201
    queued = acquire(server, environment="uat", holder="b")
    assert queued.status_code == 202
    with server.client() as c:
        c.delete(f"/v1/leases/{first.json()['id']}", headers={"X-Lease-Token": first.json()["token"]})
        # The slot went to the waiter, so the original route finds it taken.
        assert httpx.post(server.url + "/maybe?environment=uat", headers=ORIGINAL).status_code == 403
        # A client key's DELETE /maybe releases only what that key took: nothing here.
        assert httpx.delete(server.url + "/maybe?environment=uat", headers={"X-API-KEY": CLIENT_KEY}).status_code == 204
        assert c.get("/v1/environments/uat").json()["free"] == 0
        # The admin key's releases the oldest live lease, whoever took it.
        assert httpx.delete(server.url + "/maybe?environment=uat", headers=ORIGINAL).status_code == 204
        assert c.get("/v1/environments/uat").json()["free"] == 1


def test_long_poll_hand_off_between_two_clients(server: ServerProcess) -> None:
    held = acquire(server, environment="uat", holder="first").json()
    answers: list[httpx.Response] = []
    started = time.monotonic()

    def wait_for_it() -> None:
        answers.append(acquire(server, CLIENT_KEY, environment="uat", holder="second", wait=20))

    waiter = threading.Thread(target=wait_for_it)
    waiter.start()
    time.sleep(0.5)
    with server.client() as c:
        assert c.get("/v1/environments/uat").json()["queue"][0]["holder"] == "second"
        released_at = time.monotonic()
        c.delete(f"/v1/leases/{held['id']}", headers={"X-Lease-Token": held["token"]})
    waiter.join(10)
    got = answers[0]
    assert got.status_code == 201
    assert got.json()["holder"] == "second"
    assert got.json()["fence"] > held["fence"]
    # The held request was answered on release, not at the end of its wait.
    assert time.monotonic() - released_at < 2
    assert time.monotonic() - started < 10


def test_ttl_expiry_hands_the_slot_to_the_waiter(server: ServerProcess) -> None:
    first = acquire(server, environment="uat", ttl=1).json()
    second = acquire(server, CLIENT_KEY, environment="uat", wait=10)
    assert second.status_code == 201, second.text
    with server.client() as c:
        assert c.get(f"/v1/leases/{first['id']}").json()["state"] == "expired"
        kinds = [e["kind"] for e in c.get("/v1/history?environment=uat").json()["events"]]
    assert kinds[:3] == ["acquired", "expired", "queued"]


def test_wrong_token_and_idempotent_release(server: ServerProcess) -> None:
    lease = acquire(server, environment="uat").json()
    path = f"/v1/leases/{lease['id']}"
    with server.client(CLIENT_KEY) as c:
        wrong = c.delete(path, headers={"X-Lease-Token": "k_not-the-token"})
        assert (wrong.status_code, wrong.json()["code"]) == (403, "wrong_token")
        assert c.get(path).json()["state"] == "active"
        assert c.post(path + "/renew", headers={"X-Lease-Token": "nope"}).json()["code"] == "wrong_token"
        for _ in range(2):
            assert c.delete(path, headers={"X-Lease-Token": lease["token"]}).status_code == 204
        gone = c.post(path + "/renew", headers={"X-Lease-Token": lease["token"]})
        assert (gone.status_code, gone.json()["code"]) == (410, "lease_gone")
        assert "token" not in c.get(path).json()


def test_request_id_repeats_return_what_the_first_made(server: ServerProcess) -> None:
    first = acquire(server, environment="uat", request_id="r-1")
    again = acquire(server, environment="uat", request_id="r-1")
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["token"] == first.json()["token"]
    queued = acquire(server, environment="uat", request_id="r-2")
    queued_again = acquire(server, environment="uat", request_id="r-2")
    assert queued.json()["ticket"] == queued_again.json()["ticket"]
    assert queued_again.json()["position"] == 1
    changed = acquire(server, environment="uat", request_id="r-2", ttl=5)
    assert (changed.status_code, changed.json()["field"]) == (422, "ttl")


def test_a_ticket_coming_back_gets_the_same_lease_and_leaving_gives_it_back(server: ServerProcess) -> None:
    held = acquire(server, environment="uat").json()
    ticket = acquire(server, environment="uat").json()["ticket"]
    with server.client() as c:
        c.delete(f"/v1/leases/{held['id']}", headers={"X-Lease-Token": held["token"]})
        granted = [c.post("/v1/leases", json={"environment": "uat", "ticket": ticket}).json() for _ in range(2)]
        assert granted[0]["id"] == granted[1]["id"]
        assert granted[0]["token"] == granted[1]["token"]
        assert c.delete(f"/v1/tickets/{ticket}").status_code == 204
        assert c.get(f"/v1/leases/{granted[0]['id']}").json()["state"] == "released"
        assert c.get("/v1/environments/uat").json()["free"] == 1
        gone = c.post("/v1/leases", json={"environment": "uat", "ticket": ticket})
        assert (gone.status_code, gone.json()["code"]) == (410, "ticket_gone")
        assert c.delete(f"/v1/tickets/{ticket}").status_code == 204


def test_labels_hand_out_different_environments_and_skip_maintenance(server: ServerProcess) -> None:
    with server.client() as c:
        for name in ("staging-1", "staging-2", "staging-3"):
            body = {"labels": ["staging"], "properties": {"url": f"https://{name}.example"}}
            assert c.put(f"/v1/environments/{name}", json=body).status_code == 201
        c.put("/v1/environments/staging-3", json={"maintenance": True, "note": "rebuilding"})
    got = [acquire(server, label="staging").json() for _ in range(2)]
    assert {g["environment"] for g in got} == {"staging-1", "staging-2"}
    assert got[0]["properties"]["url"] == f"https://{got[0]['environment']}.example"
    third = acquire(server, label="staging", queue=False)
    assert (third.status_code, third.json()["code"]) == (409, "busy")
    assert len(third.json()["holders"]) == 2
    with server.client() as c:
        c.put("/v1/environments/staging-3", json={"maintenance": False})
    assert acquire(server, label="staging").json()["environment"] == "staging-3"


def test_text_plain_answers_can_be_sourced_by_a_shell(server: ServerProcess) -> None:
    with server.client() as c:
        c.put("/v1/environments/uat", json={"properties": {"url": "https://uat.example/it's", "db-host": "db"}})
        answer = c.post("/v1/leases", json={"environment": "uat"}, headers={"Accept": "text/plain"})
        queued = c.post("/v1/leases", json={"environment": "uat"}, headers={"Accept": "text/plain, */*"})
    assert answer.status_code == 201
    assert answer.headers["content-type"].startswith("text/plain")
    script = (
        answer.text + 'printf "%s|%s|%s" "$CALL_ME_ENVIRONMENT" "$CALL_ME_PROPERTY_URL" "$CALL_ME_PROPERTY_DB_HOST"'
    )
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout
    assert out == "uat|https://uat.example/it's|db"
    assert queued.status_code == 202
    assert "CALL_ME_TICKET='t_" in queued.text
    assert "CALL_ME_POSITION='1'" in queued.text


def test_forced_release_needs_admin_and_is_recorded(server: ServerProcess) -> None:
    lease = acquire(server, CLIENT_KEY, environment="uat").json()
    path = f"/v1/leases/{lease['id']}?force=true"
    with server.client(CLIENT_KEY) as c:
        assert c.delete(path).json()["code"] == "forbidden"
    with server.client() as c:
        assert c.delete(path).status_code == 204
        assert c.get(f"/v1/leases/{lease['id']}").json()["state"] == "revoked"
        event = c.get("/v1/history?environment=uat&limit=1").json()["events"][0]
        assert (event["kind"], event["actor"], event["holder"]) == ("revoked", "admin", "ci")


def test_environment_admin_routes(server: ServerProcess) -> None:
    with server.client() as c:
        created = c.put("/v1/environments/uat", json={"slots": 2, "labels": ["qa"], "description": "UAT"})
        assert created.status_code == 201
        assert created.json()["auto"] is False
        assert c.put("/v1/environments/uat", json={"slots": 1}).status_code == 200
        lease = c.post("/v1/leases", json={"environment": "uat"}).json()
        refused = c.delete("/v1/environments/uat")
        assert (refused.status_code, refused.json()["code"]) == (409, "conflict")
        assert c.delete("/v1/environments/uat?force=true").status_code == 204
        assert c.get("/v1/environments/uat").status_code == 404
        assert c.get(f"/v1/leases/{lease['id']}").json()["state"] == "revoked"
        again = c.post("/v1/leases", json={"environment": "uat"}).json()
        assert again["fence"] > lease["fence"]
        names = [e["name"] for e in c.get("/v1/environments").json()["environments"]]
        assert names == ["uat"]


def test_auto_create_off_is_404(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, env={"CALL_ME_AUTO_CREATE": "false"})
    server.start()
    try:
        answer = acquire(server, environment="nowhere")
        assert (answer.status_code, answer.json()["code"]) == (404, "not_found")
        label = acquire(server, label="nothing")
        assert label.status_code == 404
    finally:
        server.kill()


def test_kill_9_loses_nothing_and_the_queue_keeps_its_order(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path)
    server.start()
    lease = acquire(server, environment="uat", ttl=600).json()
    tickets = [acquire(server, environment="uat", holder=f"w{i}").json() for i in range(3)]
    server.kill()
    server.start()
    try:
        with server.client() as c:
            env = c.get("/v1/environments/uat").json()
            assert [x["id"] for x in env["leases"]] == [lease["id"]]
            assert [q["holder"] for q in env["queue"]] == ["w0", "w1", "w2"]
            assert [q["position"] for q in env["queue"]] == [1, 2, 3]
            renewed = c.post(f"/v1/leases/{lease['id']}/renew", headers={"X-Lease-Token": lease["token"]})
            assert renewed.status_code == 200
            c.delete(f"/v1/leases/{lease['id']}", headers={"X-Lease-Token": lease["token"]})
            first = c.post("/v1/leases", json={"environment": "uat", "ticket": tickets[0]["ticket"]}).json()
            assert first["holder"] == "w0"
            assert first["fence"] > lease["fence"]
            other = c.post("/v1/leases", json={"environment": "other"}).json()
            assert other["fence"] > first["fence"]
    finally:
        server.kill()


def test_after_a_restart_nothing_ends_before_the_grace_time(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, env={"CALL_ME_TICKET_GRACE": "3"})
    server.start()
    lease = acquire(server, environment="uat", ttl=1).json()
    server.kill()
    time.sleep(1.5)  # the lease's TTL runs out while the server is down
    server.start()
    started = time.monotonic()
    try:
        with server.client() as c:
            assert c.get(f"/v1/leases/{lease['id']}").json()["state"] == "active"
            renewed = c.post(f"/v1/leases/{lease['id']}/renew", headers={"X-Lease-Token": lease["token"]})
            assert renewed.status_code == 200, "the holder gets its chance to come back"
            c.post(f"/v1/leases/{lease['id']}/renew", json={"ttl": 1}, headers={"X-Lease-Token": lease["token"]})
            while c.get(f"/v1/leases/{lease['id']}").json()["state"] == "active":
                assert time.monotonic() - started < 6
                time.sleep(0.1)
    finally:
        server.kill()


def test_sigterm_answers_held_long_polls_at_once_and_exits(server: ServerProcess) -> None:
    acquire(server, environment="uat")
    answers: list[httpx.Response] = []

    def wait() -> None:
        answers.append(acquire(server, CLIENT_KEY, environment="uat", wait=25))

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.5)
    stopped = time.monotonic()
    # A graceful stop, then uvicorn re-raises the signal, so the exit status says "stopped by SIGTERM".
    assert server.stop(timeout=10) == -signal.SIGTERM
    waiter.join(5)
    assert time.monotonic() - stopped < 5
    assert answers[0].status_code == 202
    ticket = answers[0].json()["ticket"]
    server.start()
    again = acquire(server, CLIENT_KEY, environment="uat", ticket=ticket)
    assert (again.status_code, again.json()["position"]) == (202, 1)


def test_an_uncollected_grant_is_revoked_and_an_absent_waiter_abandoned(tmp_path: Path) -> None:
    grace = 1.5
    server = ServerProcess(tmp_path, env={"CALL_ME_TICKET_GRACE": str(grace)})
    server.start()
    try:
        held = acquire(server, environment="uat").json()
        ticket = acquire(server, environment="uat", holder="away").json()["ticket"]
        behind = acquire(server, environment="uat", holder="behind", wait=0).json()["ticket"]
        # A third waiter keeps coming back by long-polls: the slot must reach it once the two others are gone.
        patient = LongPoller(server, CLIENT_KEY, wait=5.0, environment="uat", holder="patient")
        patient.start()
        patient.queued()
        released = time.monotonic()
        with server.client() as c:
            c.delete(f"/v1/leases/{held['id']}", headers={"X-Lease-Token": held["token"]})
            came, status, body = patient.outcome(timeout=grace + 6)
            assert (status, body["holder"]) == (201, "patient"), body
            assert came - released >= grace, "the grant was revoked before ticket_grace"
            gone = c.post("/v1/leases", json={"environment": "uat", "ticket": ticket})
            assert (gone.status_code, gone.json()["code"]) == (410, "ticket_gone")
            assert c.post("/v1/leases", json={"environment": "uat", "ticket": behind}).status_code == 410
            history = c.get("/v1/history?environment=uat").json()["events"]
        times = {(e["kind"], e["holder"]): at(e["at"]) for e in history}
        assert times[("revoked", "away")] - times[("acquired", "away")] >= grace - 0.001
        assert times[("abandoned", "behind")] - times[("queued", "behind")] >= grace - 0.001
        assert times[("acquired", "patient")] - times[("revoked", "away")] < 1.0, "the slot did not pass on"
    finally:
        server.kill()


def test_a_second_process_on_the_same_file_refuses_to_start(server: ServerProcess, tmp_path: Path) -> None:
    other = ServerProcess(tmp_path, database=server.database)
    other.start(wait=False)
    assert other.proc is not None
    assert other.proc.wait(15) == 1
    log = other.log()
    assert "in use by another call-me-server process" in log
    assert "Traceback" not in log


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"API_KEY": ""}, "API_KEY: no key is configured"),
        ({"PORT": "eighty"}, "PORT: expected a whole number"),
        ({"CALL_ME_MAX_WAIT": "-1"}, "CALL_ME_MAX_WAIT: must be from 0"),
        ({"CALL_ME_AUTO_CREATE": "maybe"}, "CALL_ME_AUTO_CREATE: expected true or false"),
        ({"CALL_ME_CONFIG": "/nonexistent.toml"}, "CALL_ME_CONFIG: cannot read"),
        ({"CALL_ME_HISTORY_DAYS": "0"}, "CALL_ME_HISTORY_DAYS: must be from 1 to 36500, got 0"),
        ({"CALL_ME_HISTORY_DAYS": "90d"}, "CALL_ME_HISTORY_DAYS: expected a whole number"),
        ({"CALL_ME_AUTO_FORGET_DAYS": "-1"}, "CALL_ME_AUTO_FORGET_DAYS: must be from 1 to 36500, got -1"),
        ({"CALL_ME_AUTO_FORGET_DAYS": "1.5"}, "CALL_ME_AUTO_FORGET_DAYS: expected a whole number"),
        ({"CALL_ME_MAX_CONNECTIONS": "0"}, "CALL_ME_MAX_CONNECTIONS: must be from 1 to 1000000, got 0"),
        ({"CALL_ME_MAX_CONNECTIONS": "many"}, "CALL_ME_MAX_CONNECTIONS: expected a whole number"),
        ({"CALL_ME_READ_TIMEOUT": "soon"}, "CALL_ME_READ_TIMEOUT: expected a number of seconds"),
        ({"CALL_ME_IDLE_TIMEOUT": "0"}, "CALL_ME_IDLE_TIMEOUT: must be from 0.1 to 86400, got 0"),
    ],
)
def test_bad_configuration_stops_start_up_with_one_line(tmp_path: Path, env: dict[str, str], message: str) -> None:
    server = ServerProcess(tmp_path, env=env, config=None)
    done = subprocess.run(
        [sys.executable, "-m", "callme.server.main"], env=server.env, capture_output=True, text=True, timeout=20
    )
    assert done.returncode == 2
    assert done.stderr.startswith("call-me-server: " + message)
    assert done.stderr.count("\n") == 1


def test_history_settings_default_to_90_and_30_days() -> None:
    defaults = load({"CALL_ME_NO_AUTH": "true"})
    assert (defaults.history_days, defaults.auto_forget_days) == (90, 30)
    given = load({"CALL_ME_NO_AUTH": "true", "CALL_ME_HISTORY_DAYS": " 7 ", "CALL_ME_AUTO_FORGET_DAYS": "1"})
    assert (given.history_days, given.auto_forget_days) == (7, 1)


def test_bad_config_file_names_the_setting(tmp_path: Path) -> None:
    config = '[[keys]]\nname = "ci"\nkey = "0123456789"\nrole = "boss"\n'
    server = ServerProcess(tmp_path, config=config)
    done = subprocess.run(
        [sys.executable, "-m", "callme.server.main"], env=server.env, capture_output=True, text=True, timeout=20
    )
    assert done.returncode == 2
    assert done.stderr.strip() == "call-me-server: keys[0].role: expected one of read, client, admin, got 'boss'"


def test_declared_environments_are_applied_at_start_up(tmp_path: Path) -> None:
    config = (
        '[[environments]]\nname = "staging-1"\nslots = 2\nlabels = ["staging"]\n'
        'description = "shop staging, EU"\nproperties = { url = "https://staging-1.example.com" }\n'
    )
    server = ServerProcess(tmp_path, config=config)
    server.start()
    try:
        with server.client() as c:
            env = c.get("/v1/environments/staging-1").json()
        assert (env["slots"], env["labels"], env["auto"]) == (2, ["staging"], False)
        assert env["properties"] == {"url": "https://staging-1.example.com"}
    finally:
        server.kill()


def test_healthz_and_readyz_need_no_key(server: ServerProcess) -> None:
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(server.url + "/readyz").status_code == 200


def test_server_help_lists_the_settings_and_a_stray_argument_is_refused(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "callme.server.main"]
    shown = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=20, cwd=tmp_path)
    assert shown.returncode == 0
    for setting in ("PORT", "API_KEY", "CALL_ME_DATABASE", "CALL_ME_TICKET_GRACE", "CALL_ME_HISTORY_DAYS"):
        assert setting in shown.stdout
    assert "CALL_ME_AUTO_FORGET_DAYS" in shown.stdout
    for setting in ("CALL_ME_MAX_CONNECTIONS", "CALL_ME_READ_TIMEOUT", "CALL_ME_IDLE_TIMEOUT"):
        assert setting in shown.stdout
    refused = subprocess.run([*command, "--port", "80"], capture_output=True, text=True, timeout=20, cwd=tmp_path)
    assert refused.returncode == 2
    assert "unrecognized arguments: --port" in refused.stderr
    assert not (tmp_path / "call-me.db").exists(), "nothing starts, nothing is created"
