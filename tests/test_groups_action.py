"""The GitHub Action with input `environments` (issue 14): several environments in one grant, driven as a runner
drives the Docker action (tests/test_action.py), against a real server."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from .serverproc import ServerProcess
from .test_action import kinds, make_job, run_main, run_post


def test_environments_are_granted_together_and_the_post_step_releases_them_all(
    server: ServerProcess, admin: httpx.Client, tmp_path: Path
) -> None:
    for name in ("uat", "payments-sandbox"):
        admin.put(
            f"/v1/environments/{name}", json={"properties": {"url": f"https://{name}.example"}}
        ).raise_for_status()
    job = make_job(server, tmp_path, environments="uat, payments-sandbox")
    main = run_main(job)
    assert main.returncode == 0, main.stdout + main.stderr
    outputs = main.files.outputs()
    assert outputs["environment"] == "uat, payments-sandbox"
    assert outputs["lease-id"].startswith("g_")
    leases = json.loads(outputs["leases"])
    assert [lease["environment"] for lease in leases] == ["uat", "payments-sandbox"]
    assert json.loads(outputs["properties"]) == {
        "uat": {"url": "https://uat.example"},
        "payments-sandbox": {"url": "https://payments-sandbox.example"},
    }
    assert outputs["fence"] == ",".join(str(lease["fence"]) for lease in leases)
    state = main.files.saved_state()
    assert f"::add-mask::{state['lease_token']}" in main.stdout.splitlines()
    for lease in leases:
        assert admin.get(f"/v1/leases/{lease['id']}").json()["state"] == "active"

    post = run_post(job, main.files)
    assert post.returncode == 0, post.stdout + post.stderr
    assert post.warnings == []
    for name in ("uat", "payments-sandbox"):
        assert f"slot has been freed for environment: {name}" in post.stdout
        assert kinds(admin, name) == ["acquired", "released"]
    assert [admin.get(f"/v1/leases/{lease['id']}").json()["state"] for lease in leases] == ["released"] * 2


def test_a_job_waiting_for_environments_holds_none_and_a_bad_list_is_refused(
    server: ServerProcess, admin: httpx.Client, tmp_path: Path
) -> None:
    admin.put("/v1/environments/uat", json={}).raise_for_status()
    held = admin.post("/v1/leases", json={"environment": "payments-sandbox"}).json()
    job = make_job(server, tmp_path, environments="uat\npayments-sandbox", **{"no-wait": "true"})
    main = run_main(job)
    assert main.returncode == 3, main.stdout + main.stderr  # not granted, and nothing held meanwhile
    assert admin.get("/v1/environments/uat").json()["leases"] == []
    admin.delete(f"/v1/leases/{held['id']}", headers={"X-Lease-Token": held["token"]}).raise_for_status()
    for given, extra in (("uat, uat", {}), ("uat, payments-sandbox", {"environment": "uat"})):
        bad = run_main(make_job(server, tmp_path, f"bad-{len(extra)}", environments=given, **extra))
        assert bad.returncode == 2
        assert any('input "environments"' in line for line in bad.errors), bad.stdout
    assert admin.get("/v1/environments/uat").json()["leases"] == []
