"""A smoke of `bench/run.py --quick`: every figure runs with tiny counts and lands in the table and the JSON.

Benchmarks are not timed tests: nothing here asserts a speed. Under CI=true the peers (etcd, Redis, wrk,
PostgreSQL with pgbench) are installed from Debian's packages when missing and must be measured; elsewhere the run
does not install anything and rows of a missing peer say so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from . import pgserver

ROOT = Path(__file__).resolve().parent.parent
FIGURES = {
    "pairs": "pairs/s",
    "handoff": "hand-off",
    "scale": "pair p50",
    "parked": "parked",
    "cli": "CLI",
    "pg": "pg pairs/s",
}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quick_run_prints_every_figure_and_writes_json(tmp_path: Path) -> None:
    on_ci = os.environ.get("CI") == "true"
    results = tmp_path / "last.json"
    command = [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--json", str(results)]
    if not on_ci:
        command.append("--no-install")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALL_ME_")}
    # Installing the peers (CI, first run on a fresh machine) may take minutes; the quick run itself ~30 s.
    done = subprocess.run(command, capture_output=True, text=True, timeout=840, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr

    for label in FIGURES.values():
        assert any(line.startswith(label) for line in done.stdout.splitlines()), (label, done.stdout)
    data = json.loads(results.read_text())
    assert data["mode"] == "quick"
    assert set(data["figures"]) == set(FIGURES)
    for name, figure in data["figures"].items():
        assert "error" not in figure, (name, figure)
    rows = data["rows"]
    assert {row["figure"] for row in rows} == set(FIGURES.values())
    # Without PostgreSQL's binaries (never on CI) figure pg can measure nothing, and its one row says why.
    skipped = data["figures"]["pg"].get("skipped")
    measured = [row for row in rows if not (skipped and row["figure"] == "pg pairs/s")]
    assert all(row["callme"] is not None and row["callme"] > 0 for row in measured), rows
    if not on_ci and skipped:
        assert pgserver.available(external=False) is not None or "postgres" in data["peers_skipped"], skipped
    if on_ci:
        assert data["peers_skipped"] == [], done.stderr
        assert not skipped
        peers = {row["peer"] for row in rows if row["peer_value"] is not None}
        assert {"etcd lock+unlock (gateway)", "Redis SET NX + Lua del", "etcd lock hand-off (gateway)"} <= peers
        assert {row["what"] for row in rows if row["figure"] == "pg pairs/s"} == {
            "1 replica, 4 clients",
            "3 replicas, 4 clients",
        }
        assert all(row["peer"].startswith("pgbench") for row in rows if row["figure"] == "pg pairs/s")
