"""What a start-up itself writes and where it listens: a restart that re-applies an unchanged config file
records nothing, a changed field is recorded once, and a server without keys listens on loopback only."""

from __future__ import annotations

from pathlib import Path

from callme.server.settings import load

from .serverproc import DEFAULT_CONFIG, ServerProcess

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
