"""`call-me request ENV --and ENV2 --and-label LABEL` and `call-me run` with several environments at once
(issue 14): the real CLI as a subprocess against a real server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .serverproc import CLIENT_KEY, ServerProcess
from .test_cli_e2e import BOUND, Spawner, call, cli_env, first_line, live_leases, start

__all__ = ["start"]  # the fixture, used by name


def declare(server: ServerProcess) -> None:
    with server.client() as http:
        http.put("/v1/environments/uat", json={"properties": {"url": "https://uat.example"}}).raise_for_status()
        body = {"properties": {"url": "https://pay.example", "merchant-id": "m-1"}}
        http.put("/v1/environments/payments-sandbox", json=body).raise_for_status()
        http.put("/v1/environments/db-1", json={"labels": ["db-small"]}).raise_for_status()


def test_request_with_and_holds_every_part_and_each_is_released_alone(server: ServerProcess, tmp_path: Path) -> None:
    declare(server)
    env = cli_env(server, tmp_path / "state.json", key=CLIENT_KEY)
    got = call(["request", "uat", "--and", "payments-sandbox", "--and-label", "db-small", "-o", "env"], env)
    assert got.returncode == 0, got.stderr
    for name in ("uat", "payments-sandbox", "db-1"):
        assert f"acquired slot for environment: {name}" in got.stderr
    script = got.stdout + (
        'printf "%s\\n" "$CALL_ME_UAT_PROPERTY_URL" "$CALL_ME_PAYMENTS_SANDBOX_PROPERTY_MERCHANT_ID" '
        '"$CALL_ME_DB_1_ENVIRONMENT" "${CALL_ME_GROUP_ID%%_*}" "${CALL_ME_UAT_LEASE_TOKEN:+set}"'
    )
    shown = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout.split("\n")
    assert shown[:5] == ["https://uat.example", "m-1", "db-1", "g", "set"]
    assert [len(live_leases(server, n)) for n in ("uat", "payments-sandbox", "db-1")] == [1, 1, 1]
    # Each lease of the group still works alone: release one by name, the others stay held.
    assert call(["release", "payments-sandbox"], env).returncode == 0
    assert [len(live_leases(server, n)) for n in ("uat", "payments-sandbox", "db-1")] == [1, 0, 1]
    assert call(["release", "uat"], env).returncode == 0
    assert call(["release", "db-1"], env).returncode == 0
    assert [len(live_leases(server, n)) for n in ("uat", "payments-sandbox", "db-1")] == [0, 0, 0]


def test_a_waiting_group_holds_nothing_until_it_gets_everything(
    server: ServerProcess, tmp_path: Path, start: Spawner
) -> None:
    declare(server)
    holder = cli_env(server, tmp_path / "holder.json")
    assert call(["request", "uat"], holder).returncode == 0
    waiter = start(["request", "uat", "--and", "payments-sandbox", "--holder", "both"], cli_env(server, tmp_path / "w"))
    line = first_line(waiter)
    assert "waiting for free slot on all at once of environment uat, environment payments-sandbox" in line, line
    assert live_leases(server, "payments-sandbox") == []  # free, yet not held by the waiting group
    assert call(["release", "uat"], holder).returncode == 0
    waiter.wait(BOUND)
    assert waiter.returncode == 0
    assert [lease["holder"] for n in ("uat", "payments-sandbox") for lease in live_leases(server, n)] == ["both"] * 2


def test_run_exports_one_set_of_variables_per_part_and_releases_them_all(server: ServerProcess, tmp_path: Path) -> None:
    declare(server)
    env = cli_env(server, tmp_path / "state.json", key=CLIENT_KEY)
    script = (
        "import os, sys; e = os.environ; "
        "print(e['CALL_ME_UAT_PROPERTY_URL'], e['CALL_ME_PAYMENTS_SANDBOX_PROPERTY_URL'], e['CALL_ME_UAT_FENCE'], "
        "'CALL_ME_UAT_LEASE_TOKEN' in e, 'CALL_ME_GROUP_TOKEN' in e, e['CALL_ME_GROUP_ID'][:2]); "
        "sys.exit(5)"
    )
    got = call(["run", "uat", "--and", "payments-sandbox", "--", sys.executable, "-c", script], env)
    assert got.returncode == 5, got.stderr
    uat, pay, fence, lease_token, group_token, group = got.stdout.split()
    assert (uat, pay, lease_token, group_token, group) == (
        "https://uat.example", "https://pay.example", "False", "False", "g_"
    )  # fmt: skip
    assert int(fence) > 0
    assert live_leases(server, "uat") == live_leases(server, "payments-sandbox") == []


def test_run_renews_the_group_while_the_command_outlives_the_ttl(server: ServerProcess, tmp_path: Path) -> None:
    declare(server)
    env = cli_env(server, tmp_path / "state.json", key=CLIENT_KEY)
    got = call(["run", "uat", "--and", "payments-sandbox", "--ttl", "1", "--", "sleep", "2.5"], env)
    assert got.returncode == 0, got.stderr
    with server.client() as http:
        events = http.get("/v1/history", params={"limit": 20}).json()["events"]
    ended = sorted((e["environment"], e["kind"]) for e in events if e["kind"] in ("released", "expired", "revoked"))
    assert ended == [("payments-sandbox", "released"), ("uat", "released")]  # renewed by the group, never expired
