"""What a start-up itself writes and where it listens: a restart that re-applies an unchanged config file
records nothing, a changed field is recorded once, and a server without keys listens on loopback only."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from callme.server.settings import load

from .serverproc import DEFAULT_CONFIG, ServerProcess
from .tooling import tool_missing

DECLARED = """
[[environments]]
name = "uat"
slots = 2
labels = ["staging"]

[[environments]]
name = "perf"
"""


def _changes(server: ServerProcess) -> list[tuple[str, str]]:
    with server.client() as admin:
        events = admin.get("/v1/history", params={"limit": 100}).json()["events"]
    return [(e["environment"], e.get("detail") or "") for e in events if e["kind"] == "environment_changed"]


def test_a_restart_with_the_same_config_file_records_nothing_and_a_change_once(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, config=DEFAULT_CONFIG + DECLARED)
    server.start()
    try:
        assert sorted(_changes(server)) == [("perf", "created"), ("uat", "created")]
        server.stop()
        server.start()
        assert sorted(_changes(server)) == [("perf", "created"), ("uat", "created")], "a restart wrote events"
        server.stop()
        (tmp_path / "call-me.toml").write_text(DEFAULT_CONFIG + DECLARED.replace("slots = 2", "slots = 3"))
        server.start()
        changed = [c for c in _changes(server) if c[1] != "created"]
        assert changed == [("uat", "slots: 2 -> 3")]
    finally:
        server.stop()


def test_without_keys_the_server_listens_on_loopback_unless_a_host_is_set() -> None:
    assert load({"CALL_ME_NO_AUTH": "true"}).host == "127.0.0.1"
    assert load({"CALL_ME_NO_AUTH": "true", "CALL_ME_HOST": "0.0.0.0"}).host == "0.0.0.0"
    assert load({"API_KEY": "change-me-please"}).host == "0.0.0.0"


def test_a_short_api_key_still_works_as_the_originals_did_but_is_warned_about(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, env={"API_KEY": "crj"})
    server.start()
    try:
        with server.client(key="crj") as short:
            assert short.get("/maybe", params={"environment": "uat"}).status_code == 200
        assert "API_KEY is shorter than 8 characters" in server.log()
    finally:
        server.stop()


def test_a_database_the_server_may_not_write_stops_it_with_one_line_saying_what_to_do(tmp_path: Path) -> None:
    """The README's switch from the root image to `--target server` on the same volume: files it may not
    write. One line naming the cause and the fix, never a traceback. As root, the server runs without the
    capability that lets root write any file (setpriv), so that file modes bind it as they bind a user."""
    server = ServerProcess(tmp_path)
    server.start()
    server.stop()
    files = [p for p in tmp_path.iterdir() if p.name.startswith(("call-me.db", ".call-me.db"))]
    assert any(p.name == "call-me.db.lock" for p in files)
    for path in files:
        path.chmod(0o400)
    tmp_path.chmod(0o500)
    command = [sys.executable, "-m", "callme.server.main"]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            tool_missing("setpriv (util-linux) is not installed")
        command = ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search", *command]
    try:
        got = subprocess.run(command, env=server.env, capture_output=True, text=True, timeout=60)
    finally:
        tmp_path.chmod(0o700)
    assert got.returncode != 0
    assert "Traceback" not in got.stderr, got.stderr
    said = [line for line in got.stderr.splitlines() if line.startswith("call-me-server:")]
    assert len(said) == 1, got.stderr
    assert "permission denied" in said[0] or "read-only" in said[0], said
    assert f"chown -R {os.getuid()}" in said[0], said


def test_a_port_in_use_stops_the_server_with_one_line_saying_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "first").mkdir()
    first = ServerProcess(tmp_path / "first")
    first.start()
    try:
        (tmp_path / "second").mkdir()
        second = ServerProcess(tmp_path / "second", port=first.port)
        got = subprocess.run(
            [sys.executable, "-m", "callme.server.main"], env=second.env, capture_output=True, text=True, timeout=60
        )
        assert got.returncode == 1
        assert "Traceback" not in got.stderr, got.stderr
        said = [line for line in got.stderr.splitlines() if line.startswith("call-me-server:")]
        assert said == [f"call-me-server: port {first.port} is in use on 127.0.0.1 (another call-me-server?); "
                        "stop what holds it or set PORT"], got.stderr  # fmt: skip
        assert "Application startup complete" not in got.stderr  # refused before anything started
        assert not list((tmp_path / "second").glob("*call-me.db*")), "files left behind by a start that failed"
        with first.client() as admin:
            assert admin.get("/readyz").status_code == 200  # the first one serves on
    finally:
        first.stop()
