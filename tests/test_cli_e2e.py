"""The real `call-me` CLI as a subprocess against a real server, as a pipeline runs it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from .serverproc import ADMIN_KEY, CLIENT_KEY, ServerProcess

CLI = [sys.executable, "-m", "callme.client.cli"]
WAITED = re.compile(r"^waited (\d+(\.\d+)?(ms|s)|(\d+h)?\d+m\d+(\.\d+)?s)$")
BOUND = 15.0  # seconds any one step may take


def cli_env(server: ServerProcess, state: Path, *, key: str = ADMIN_KEY) -> dict[str, str]:
    """The original client's configuration: HOST as host:port, API_KEY."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALL_ME_") and k not in _PIPELINE_VARIABLES}
    env.update({"HOST": server.url.removeprefix("http://"), "API_KEY": key, "CALL_ME_STATE_FILE": str(state)})
    return env


# What names a CI pipeline (action/pipeline.py): never inherited from the machine running the tests.
_PIPELINE_VARIABLES = (
    "GITHUB_ACTIONS",
    "GITHUB_REPOSITORY",
    "GITHUB_RUN_ID",
    "GITLAB_CI",
    "CI_PROJECT_PATH",
    "CI_PIPELINE_ID",
)


def github_run(env: dict[str, str], run_id: str) -> dict[str, str]:
    return {**env, "GITHUB_ACTIONS": "true", "GITHUB_REPOSITORY": "shop/app", "GITHUB_RUN_ID": run_id}


def call(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=BOUND)


class Spawner:
    """Starts CLI processes and, whatever the test did, kills and reaps them at its end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def __call__(self, args: list[str], env: dict[str, str], *, new_session: bool = False) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [*CLI, *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=new_session,
        )
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=BOUND)


@pytest.fixture
def start() -> Iterator[Spawner]:
    spawner = Spawner()
    try:
        yield spawner
    finally:
        spawner.close()


def until(predicate: Callable[[], bool], *, timeout: float = BOUND) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def live_leases(server: ServerProcess, name: str) -> list[dict[str, object]]:
    with server.client() as http:
        response = http.get(f"/v1/environments/{'%2E%2E' if name == '..' else quote(name, safe='')}")
    if response.status_code == 404:
        return []
    response.raise_for_status()
    return list(response.json()["leases"])


def first_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    return proc.stdout.readline().rstrip("\n")


# The original accepted any name; branch-named environments are common.
@pytest.mark.parametrize("name", ["uat", "feature/login"])
def test_the_original_transcript(server: ServerProcess, tmp_path: Path, start: Spawner, name: str) -> None:
    first = cli_env(server, tmp_path / "first.json")
    second = cli_env(server, tmp_path / "second.json")

    got = call(["request", name], first)
    assert got.returncode == 0, got.stderr
    lines = got.stdout.splitlines()
    assert lines[0] == f"acquired slot for environment: {name}"
    assert WAITED.match(lines[1]), lines[1]

    waiter = start(["request", name], second)
    line = first_line(waiter)
    assert line.startswith(f"waiting for free slot on environment: {name} (position 1 in queue; held by admin since ")

    freed = call(["release", name], first)
    assert freed.returncode == 0, freed.stderr
    assert freed.stdout == f"slot has been freed for environment: {name}\n"

    out, err = waiter.communicate(timeout=BOUND)
    assert waiter.returncode == 0, err
    rest = [line for line in out.splitlines() if not line.startswith("waiting for free slot")]
    assert rest[0] == f"acquired slot for environment: {name}"
    assert WAITED.match(rest[1]), rest[1]
    assert [lease["holder"] for lease in live_leases(server, name)] == ["admin"]

    # Released by name from a shell that took nothing there: nothing of its own to free, and it says so. (The
    # original freed the oldest lease, whoever held it; with a shared key, another pipeline's while it deploys.)
    elsewhere = call(["release", name], cli_env(server, tmp_path / "elsewhere.json"))
    assert elsewhere.returncode == 7, elsewhere.stderr
    assert elsewhere.stdout == ""
    assert f"nothing to release: no lease on {name} was taken from here" in elsewhere.stderr
    assert [lease["holder"] for lease in live_leases(server, name)] == ["admin"]
    forced = call(["release", name, "--force"], cli_env(server, tmp_path / "elsewhere.json"))
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout == f"slot has been freed for environment: {name}\n"
    assert live_leases(server, name) == []


def test_release_by_name_frees_only_what_this_pipeline_took(server: ServerProcess, tmp_path: Path) -> None:
    """A later job of the same run may release what an earlier job took (its token stayed on another runner);
    another run with the same admin key never can, and a client key is told what to pass instead."""
    run_one = github_run(cli_env(server, tmp_path / "job-1.json"), "1001")
    got = call(["request", "uat"], run_one)
    assert got.returncode == 0, got.stderr
    (held,) = live_leases(server, "uat")
    assert held["metadata"]["pipeline"] == "github:shop/app/1001"

    other_run = call(["release", "uat"], github_run(cli_env(server, tmp_path / "other.json"), "2002"))
    assert other_run.returncode == 7, other_run.stderr
    assert "nothing to release: pipeline github:shop/app/2002 holds no lease on uat" in other_run.stderr
    assert [lease["id"] for lease in live_leases(server, "uat")] == [held["id"]]

    client_key = call(["release", "uat"], github_run(cli_env(server, tmp_path / "job-2.json", key=CLIENT_KEY), "1001"))
    assert client_key.returncode == 6, client_key.stderr
    assert f"--lease {held['id']} --token TOKEN" in client_key.stderr
    assert [lease["id"] for lease in live_leases(server, "uat")] == [held["id"]]

    later_job = call(["release", "uat"], github_run(cli_env(server, tmp_path / "job-3.json"), "1001"))
    assert later_job.returncode == 0, later_job.stderr
    assert later_job.stdout == "slot has been freed for environment: uat\n"
    assert live_leases(server, "uat") == []


def test_the_console_script_alias_keeps_the_original_words(server: ServerProcess, tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("call-me-client")
    if not script.exists():
        pytest.skip("console scripts are not installed next to this interpreter")
    env = cli_env(server, tmp_path / "state.json")
    got = subprocess.run([str(script), "request", "uat"], env=env, capture_output=True, text=True, timeout=BOUND)
    assert got.stdout.startswith("acquired slot for environment: uat\nwaited ")
    got = subprocess.run([str(script), "release", "uat"], env=env, capture_output=True, text=True, timeout=BOUND)
    assert got.stdout == "slot has been freed for environment: uat\n"


def test_run_passes_the_exit_code_exports_the_lease_and_releases(server: ServerProcess, tmp_path: Path) -> None:
    env = cli_env(server, tmp_path / "state.json", key=CLIENT_KEY)
    with server.client() as http:
        http.put("/v1/environments/uat", json={"properties": {"base-url": "https://uat.example.com"}})
    script = (
        "import os, sys; "
        "print(os.environ['CALL_ME_ENVIRONMENT'], os.environ['CALL_ME_FENCE'], "
        "os.environ['CALL_ME_PROPERTY_BASE_URL'], 'CALL_ME_LEASE_TOKEN' in os.environ); "
        "sys.exit(3)"
    )
    got = call(["run", "uat", "--", sys.executable, "-c", script], env)
    assert got.returncode == 3, got.stderr
    environment, fence, url, token_shown = got.stdout.split()
    assert (environment, url, token_shown) == ("uat", "https://uat.example.com", "False")
    assert int(fence) > 0
    assert "acquired slot for environment: uat" in got.stderr
    assert live_leases(server, "uat") == []


def test_run_stopped_by_sigterm_passes_it_on_and_releases(
    server: ServerProcess, tmp_path: Path, start: Spawner
) -> None:
    env = cli_env(server, tmp_path / "state.json", key=CLIENT_KEY)
    marker = tmp_path / "started"
    script = f"import pathlib, time; pathlib.Path({str(marker)!r}).touch(); time.sleep(60)"
    proc = start(["run", "uat", "--", sys.executable, "-c", script], env)
    until(marker.exists)
    assert len(live_leases(server, "uat")) == 1
    proc.send_signal(signal.SIGTERM)
    proc.wait(BOUND)
    assert proc.returncode == 128 + signal.SIGTERM  # the command died of the SIGTERM it was passed
    assert live_leases(server, "uat") == []


def test_run_killed_by_sigkill_leaves_a_lease_that_expires_by_its_ttl(
    server: ServerProcess, tmp_path: Path, start: Spawner
) -> None:
    env = cli_env(server, tmp_path / "state.json", key=CLIENT_KEY)
    marker = tmp_path / "started"
    script = f"import pathlib, time; pathlib.Path({str(marker)!r}).touch(); time.sleep(60)"
    proc = start(["run", "uat", "--ttl", "2", "--", sys.executable, "-c", script], env, new_session=True)
    until(marker.exists)
    os.killpg(proc.pid, signal.SIGKILL)  # call-me and its command: nothing gets to clean up
    proc.wait(BOUND)
    assert len(live_leases(server, "uat")) == 1
    until(lambda: live_leases(server, "uat") == [], timeout=8)


def test_two_waiters_are_served_first_come_first_served(server: ServerProcess, tmp_path: Path, start: Spawner) -> None:
    holder = cli_env(server, tmp_path / "holder.json")
    assert call(["request", "uat"], holder).returncode == 0
    first = start(["request", "uat", "--holder", "first"], cli_env(server, tmp_path / "a.json"))
    assert "(position 1 in queue" in first_line(first)
    second = start(["request", "uat", "--holder", "second"], cli_env(server, tmp_path / "b.json"))
    assert "(position 2 in queue" in first_line(second)

    call(["release", "uat"], holder)
    first.wait(BOUND)
    assert first.returncode == 0
    assert second.poll() is None
    assert [lease["holder"] for lease in live_leases(server, "uat")] == ["first"]

    call(["release", "uat"], cli_env(server, tmp_path / "a.json"))
    second.wait(BOUND)
    assert second.returncode == 0
    assert [lease["holder"] for lease in live_leases(server, "uat")] == ["second"]


def test_no_wait_fails_fast_with_one_line(server: ServerProcess, tmp_path: Path) -> None:
    assert call(["request", "uat"], cli_env(server, tmp_path / "a.json")).returncode == 0
    got = call(["request", "uat", "--no-wait"], cli_env(server, tmp_path / "b.json"))
    assert got.returncode == 3
    assert got.stdout == ""
    assert len(got.stderr.splitlines()) == 1
    assert "busy" in got.stderr
    assert "held by admin" in got.stderr
    assert "Traceback" not in got.stderr


def test_timeout_gives_up_and_leaves_the_queue(server: ServerProcess, tmp_path: Path) -> None:
    assert call(["request", "uat"], cli_env(server, tmp_path / "a.json")).returncode == 0
    got = call(["request", "uat", "--timeout", "1"], cli_env(server, tmp_path / "b.json"))
    assert got.returncode == 4, got.stderr
    with server.client() as http:
        assert http.get("/v1/environments/uat").json()["queue"] == []


def test_env_output_can_be_sourced_and_released_by_lease_and_token(server: ServerProcess, tmp_path: Path) -> None:
    env = cli_env(server, tmp_path / "state.json", key=CLIENT_KEY)
    got = call(["request", "uat", "--output", "env", "--ttl", "60"], env)
    assert got.returncode == 0, got.stderr
    shell = subprocess.run(
        ["sh", "-c", 'eval "$0"; printf "%s %s\\n" "$CALL_ME_LEASE_ID" "$CALL_ME_LEASE_TOKEN"', got.stdout],
        capture_output=True,
        text=True,
        timeout=BOUND,
        check=True,
    )
    lease_id, token = shell.stdout.split()
    assert [lease["id"] for lease in live_leases(server, "uat")] == [lease_id]
    freed = call(
        ["release", "--lease", lease_id, "--token", token], cli_env(server, tmp_path / "other.json", key=CLIENT_KEY)
    )
    assert freed.stdout == "slot has been freed for environment: uat\n", freed.stderr
    assert live_leases(server, "uat") == []


# Quotes, `$`, backquotes and spaces survive --output env; ".." reaches its own environment, not /v1/; after
# `--` a name may begin with a dash.
@pytest.mark.parametrize("name", ["it's $HOME `id`", "..", "a b/été:1", "-dash"])
def test_any_name_as_argument_flag_and_env_output(server: ServerProcess, tmp_path: Path, name: str) -> None:
    admin = cli_env(server, tmp_path / "admin.json")
    env = cli_env(server, tmp_path / "state.json", key=CLIENT_KEY)
    label = f"pool of {name}"
    made = call(["env", "set", "--slots", "2", "--label", label, "--", name], admin)
    assert made.stdout == f"environment {name}: 2 slots, labels {label}, free\n", made.stderr

    got = call(["request", "--output", "env", "--no-wait", "--", name], env)
    assert got.returncode == 0, got.stderr
    shell = subprocess.run(
        ["sh", "-c", 'eval "$0"; printf "%s" "$CALL_ME_ENVIRONMENT"', got.stdout],
        capture_output=True,
        text=True,
        timeout=BOUND,
        check=True,
    )
    assert shell.stdout == name
    by_label = call(["request", f"--label={label}", "--no-wait"], env)
    assert by_label.stdout.startswith(f"acquired slot for environment: {name}\n"), by_label.stderr

    status = call(["status", "--output", "json", "--", name], admin)
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    assert (shown["name"], len(shown["leases"])) == (name, 2)
    for _ in range(2):
        freed = call(["release", "--", name], env)
        assert freed.stdout == f"slot has been freed for environment: {name}\n", freed.stderr
    assert live_leases(server, name) == []
    assert call(["env", "delete", "--", name], admin).stdout == f"environment {name} deleted\n"


@pytest.mark.parametrize(
    ("args", "key", "code", "words"),
    [
        (["status"], "not-a-key", 6, "unauthorized"),
        (["env", "set", "uat", "--slots", "2"], CLIENT_KEY, 6, "forbidden"),
        (["request", "bad\tname", "--no-wait"], CLIENT_KEY, 2, "invalid"),
        (["status", "nowhere"], CLIENT_KEY, 7, "not_found"),
    ],
)
def test_errors_are_one_line_and_an_exit_code(
    server: ServerProcess, tmp_path: Path, args: list[str], key: str, code: int, words: str
) -> None:
    got = call(args, cli_env(server, tmp_path / "state.json", key=key))
    assert got.returncode == code, got.stderr
    assert len(got.stderr.splitlines()) == 1, got.stderr
    assert words in got.stderr
    assert "Traceback" not in got.stderr
    assert key not in got.stderr


def test_an_unreachable_server_is_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALL_ME_")}
    env.update({"CALL_ME_URL": "http://127.0.0.1:9", "CALL_ME_API_KEY": "k", "CALL_ME_RETRY_FOR": "0.5"})
    got = call(["--quiet", "status"], env)
    assert got.returncode == 5
    assert len(got.stderr.splitlines()) == 1, got.stderr
    assert "could not connect to http://127.0.0.1:9" in got.stderr


def test_status_and_admin_commands(server: ServerProcess, tmp_path: Path) -> None:
    env = cli_env(server, tmp_path / "state.json")
    got = call(["env", "set", "staging-1", "--slots", "2", "--label", "staging"], env)
    assert got.stdout == "environment staging-1: 2 slots, labels staging, free\n", got.stderr
    assert call(["env", "maintenance", "staging-1", "on", "--note", "db upgrade"], env).returncode == 0
    table = call(["status"], env).stdout.splitlines()
    assert table[0].split() == ["ENVIRONMENT", "SLOTS", "FREE", "LABELS", "WAITING", "STATE"]
    assert table[1].split() == ["staging-1", "2", "2", "staging", "0", "maintenance:", "db", "upgrade"]
    got = call(["request", "--label", "staging", "--no-wait"], env)
    assert got.returncode == 3, got.stderr  # the only "staging" is in maintenance: 409 maintenance
    assert call(["env", "maintenance", "staging-1", "off"], env).returncode == 0
    got = call(["request", "--label", "staging"], env)
    assert got.stdout.startswith("acquired slot for environment: staging-1\n"), got.stderr
    assert call(["env", "delete", "staging-1"], env).returncode == 1  # conflict: someone holds it
    assert call(["env", "delete", "staging-1", "--force"], env).stdout == "environment staging-1 deleted\n"
    history = call(["history", "--limit", "50"], env)
    assert "acquired" in history.stdout
    assert "environment_deleted" in history.stdout


# What a path must not import: httpx's own CLI (click, rich, pygments), and on the way to a granted
# lease tenacity (loaded only at a first failure worth retrying), nor anything of the server.
_HEAVY = ("httpx", "httpcore", "tenacity", "click", "rich", "pygments", "importlib.metadata", "callme.server")
_PROBE = """
import sys
from callme.client import cli
try:
    cli.main({argv!r})
except SystemExit:
    pass
print(sorted(m for m in {heavy!r} if m in sys.modules))
"""


def loaded_by(argv: list[str], env: dict[str, str] | None = None, *, watched: tuple[str, ...] = _HEAVY) -> list[str]:
    """Which of `watched` `call-me ARGV` imported, in a fresh interpreter."""
    code = _PROBE.format(argv=argv, heavy=watched)
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=BOUND)
    assert got.returncode == 0, got.stderr
    return eval(got.stdout.splitlines()[-1])  # noqa: S307 - the repr of a list of names, printed above


def test_help_loads_no_http_library() -> None:
    assert loaded_by(["--help"], watched=(*_HEAVY, "typing")) == []
    assert loaded_by(["request", "--help"]) == []


def test_a_granted_request_loads_neither_tenacity_nor_httpx_cli(server: ServerProcess, tmp_path: Path) -> None:
    env = cli_env(server, tmp_path / "state.json")
    assert loaded_by(["request", "uat", "--no-wait"], env) == ["httpcore", "httpx"]
    assert live_leases(server, "uat")  # it did take the lease


def test_the_waiting_line_is_printed_when_it_changes_not_at_every_answer() -> None:
    import io

    from callme.client.commands import wait_printer
    from callme.client.models import Waiting

    out = io.StringIO()
    printer = wait_printer(out)
    first = Waiting(seq=3, position=2, environment="uat", label=None, waited=0.0, holders=())
    for _ in range(14):  # a server restarting under the waiter: the same answer again and again
        printer(first)
    printer(Waiting(seq=3, position=1, environment="uat", label=None, waited=0.0, holders=()))
    assert out.getvalue().splitlines() == [
        "waiting for free slot on environment: uat (position 2 in queue)",
        "waiting for free slot on environment: uat (position 1 in queue)",
    ]


def test_run_without_the_double_dash_says_how_to_write_it(tmp_path: Path) -> None:
    got = subprocess.run([*CLI, "run", "qa", "echo", "hi"], capture_output=True, text=True, timeout=BOUND)
    assert got.returncode == 2
    assert "run: give the command to run after --, as in: run qa -- echo hi" in got.stderr


def test_what_retrying_cannot_heal_fails_at_once_with_what_to_check(server: ServerProcess, tmp_path: Path) -> None:
    """An unknown host name and https:// against a plain-http server are not retried for the whole
    --retry-for: one clear line and exit 5 at once."""
    https = server.url.replace("http://", "https://")
    for url, says in (
        ("http://no-such-host.invalid:8000", "the server's host name is unknown"),
        (https, "the TLS handshake with the server failed; check the scheme of CALL_ME_URL"),
    ):
        env = {**cli_env(server, tmp_path / "state.json"), "CALL_ME_URL": url, "CALL_ME_API_KEY": ADMIN_KEY}
        started = time.monotonic()
        got = call(["request", "uat", "--no-wait", "--retry-for", "60"], env)
        assert got.returncode == 5, got.stderr
        assert says in got.stderr, got.stderr
        assert time.monotonic() - started < 30, "retried what cannot heal"


def test_no_wait_names_the_holder_once_with_one_piece_of_advice(server: ServerProcess, tmp_path: Path) -> None:
    assert call(["request", "uat", "--holder", "deployer"], cli_env(server, tmp_path / "a.json")).returncode == 0
    got = call(["request", "uat", "--no-wait"], cli_env(server, tmp_path / "b.json"))
    assert got.returncode == 3
    assert got.stderr.count("deployer") == 1, got.stderr
    assert "join the queue" not in got.stderr, got.stderr  # the server's advice to HTTP callers
    assert got.stderr.rstrip().endswith("wait for it (leave out --no-wait) or pick another environment"), got.stderr


def test_env_delete_in_use_advises_the_flag_not_the_query(server: ServerProcess, tmp_path: Path) -> None:
    env = cli_env(server, tmp_path / "state.json")
    assert call(["request", "uat"], env).returncode == 0
    got = call(["env", "delete", "uat"], env)
    assert got.returncode == 1
    assert "?force=true" not in got.stderr, got.stderr
    assert "--force" in got.stderr
    assert "1 live lease" in got.stderr  # the fact stays


def test_a_url_with_a_wrong_path_says_to_fix_the_url(server: ServerProcess, tmp_path: Path) -> None:
    env = {**cli_env(server, tmp_path / "state.json"), "CALL_ME_URL": server.url + "/call-me"}
    got = call(["request", "uat", "--no-wait"], env)
    assert got.returncode == 2, got.stderr
    assert len(got.stderr.splitlines()) == 1, got.stderr
    assert "call-me status" not in got.stderr  # not a wrong name
    assert "check CALL_ME_URL" in got.stderr, got.stderr


def test_the_waiting_line_says_which_environment_is_in_maintenance(
    server: ServerProcess, tmp_path: Path, start: Spawner
) -> None:
    env = cli_env(server, tmp_path / "admin.json")
    assert call(["env", "set", "uat", "--slots", "1"], env).returncode == 0
    assert call(["env", "maintenance", "uat", "on", "--note", "db upgrade"], env).returncode == 0
    waiter = start(["request", "uat", "--holder", "w"], cli_env(server, tmp_path / "w.json"))
    line = first_line(waiter)
    assert "in maintenance: uat (db upgrade)" in line, line
    assert call(["env", "maintenance", "uat", "off"], env).returncode == 0
    waiter.wait(BOUND)
    assert waiter.returncode == 0


def test_waited_is_the_queue_time_the_server_measured(server: ServerProcess, tmp_path: Path, start: Spawner) -> None:
    """An instant grant waited 0s (not the client's start-up and round trip); a queued one waited what the server
    counted from its first request to the grant."""
    got = call(["request", "qa"], cli_env(server, tmp_path / "a.json"))
    assert got.stdout.splitlines()[1] == "waited 0s", got.stdout
    waiter = start(["request", "qa", "--output", "json"], cli_env(server, tmp_path / "b.json"))
    with server.client() as http:  # its waiting line goes to stderr: watch the queue instead
        while not http.get("/v1/environments/qa").json()["queue"]:
            assert waiter.poll() is None
            time.sleep(0.05)
    time.sleep(1.0)
    assert call(["release", "qa"], cli_env(server, tmp_path / "a.json")).returncode == 0
    out, _ = waiter.communicate(timeout=BOUND)
    lease = json.loads(out)
    assert lease["waited"] == lease["queued_for"]
    assert lease["queued_for"] >= 1.0


def test_a_key_with_stray_whitespace_works_and_one_no_header_can_carry_is_one_line(
    server: ServerProcess, tmp_path: Path
) -> None:
    """A key file saved with CRLF, or a pasted space: the key still works. A key no header can carry: one line,
    exit 2, at once, and the key is never printed (httpx put it in each retry's warning, or raised a traceback)."""
    for stray in (f" {ADMIN_KEY}", f"{ADMIN_KEY}\r", f"{ADMIN_KEY}\n"):
        got = call(["status"], cli_env(server, tmp_path / "state.json", key=stray))
        assert got.returncode == 0, got.stderr
    for bad in ("héllo-secret-key", "tab\tinside-secret"):
        got = call(["status"], cli_env(server, tmp_path / "state.json", key=bad))
        assert got.returncode == 2, got.stderr
        assert len(got.stderr.splitlines()) == 1, got.stderr
        assert "HTTP header cannot carry" in got.stderr
        assert "secret" not in got.stderr
        assert "Traceback" not in got.stderr


def test_releasing_a_lease_that_had_expired_says_the_slot_was_already_free(
    server: ServerProcess, tmp_path: Path
) -> None:
    env = cli_env(server, tmp_path / "state.json")
    assert call(["request", "zz", "--ttl", "1"], env).returncode == 0
    with server.client() as http:
        while http.get("/v1/environments/zz").json()["leases"]:
            time.sleep(0.2)  # the sweep ends it after its TTL
    got = call(["release", "zz"], env)
    assert got.returncode == 0, got.stderr  # a cleanup step succeeds: the slot is free either way
    assert got.stdout == "slot was already free for environment: zz (the lease had ended before this release)\n"
    assert "had already ended (expired or revoked)" in got.stderr


def test_renew_with_nothing_kept_and_force_without_an_admin_key_say_what_they_need(
    server: ServerProcess, tmp_path: Path
) -> None:
    got = call(["renew", "uat"], cli_env(server, tmp_path / "a.json"))
    assert got.returncode == 7, got.stderr  # as `release ENV` with nothing of its own there
    assert got.stderr.startswith("call-me: nothing to renew: no lease on uat was taken here"), got.stderr
    assert call(["request", "uat", "--holder", "deployer"], cli_env(server, tmp_path / "a.json")).returncode == 0
    got = call(["release", "uat", "--force"], cli_env(server, tmp_path / "b.json", key=CLIENT_KEY))
    assert got.returncode == 6, got.stderr
    assert len(got.stderr.splitlines()) == 1, got.stderr
    assert "held by deployer: --force frees another's lease with an admin key only" in got.stderr
    assert [lease["holder"] for lease in live_leases(server, "uat")] == ["deployer"]
