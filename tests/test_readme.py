"""README's blocks run as written against a real server, so that they cannot rot: the original call-me's
transcript (each command's status line as README shows it) and the v1 curl section pasted in order.

The only substitutions are the ones README tells its reader to make: the server's address and the key.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx

from .serverproc import ADMIN_KEY, ServerProcess, free_port
from .tooling import tool_missing

README = Path(__file__).resolve().parent.parent / "README.md"
BOUND = 60


def _block_after(heading: str, fence: str) -> str:
    """The first fenced block of kind `fence` after the `## heading` line."""
    text = README.read_text()
    start = text.index(f"\n## {heading}\n")
    opening = text.index(f"```{fence}\n", start) + len(fence) + 4
    return text[opening : text.index("```\n", opening)]


def _substituted(text: str, server: ServerProcess) -> str:
    host = server.url.removeprefix("http://")
    return text.replace("change-me-please", ADMIN_KEY).replace("localhost:8000", host)


def test_the_original_transcript_answers_as_readme_shows(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, env={"API_KEY": ADMIN_KEY})
    server.start()
    try:
        lines = _substituted(_block_after("The original call-me, unchanged", "console"), server).splitlines()
        commands = [(i, line[2:]) for i, line in enumerate(lines) if line.startswith("$ ")]
        assert len(commands) >= 6, lines
        environment = dict(os.environ)
        for i, command in commands:
            got = subprocess.run(
                ["bash", "-c", command], env=environment, capture_output=True, text=True, timeout=BOUND
            )
            assert got.returncode == 0, (command, got.stderr)
            if command.startswith("export "):
                name, _, value = command.removeprefix("export ").partition("=")
                environment[name] = value
                continue
            shown = lines[i + 1]
            assert got.stdout.splitlines()[0].strip() == shown.strip(), (command, got.stdout)
    finally:
        server.stop()


def test_the_curl_section_runs_pasted_in_order(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, env={"API_KEY": ADMIN_KEY, "CALL_ME_DATABASE": str(tmp_path / "fresh.db")})
    server.start()
    try:
        # curl as the reader has it, plus a record of every answer's status (README's lines are unchanged).
        shims = tmp_path / "bin"
        shims.mkdir()
        statuses = tmp_path / "statuses"
        real = subprocess.run(["bash", "-c", "command -v curl"], capture_output=True, text=True).stdout.strip()
        shim = shims / "curl"
        shim.write_text(
            "#!/bin/bash\n"
            f'out=$({real} -w "\\n%{{http_code}}" "$@")\n'
            f"echo \"${{out##*$'\\n'}}\" >> {statuses}\n"
            'printf "%s\\n" "${out%$\'\\n\'*}"\n'
        )
        shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
        block = _substituted(_block_after("The v1 API with curl", "sh"), server)
        env = {**os.environ, "PATH": f"{shims}:{os.environ['PATH']}"}
        got = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", block], env=env, capture_output=True, text=True, timeout=BOUND
        )
        assert got.returncode == 0, (got.stdout, got.stderr)
        codes = statuses.read_text().split()
        # Three declarations, the acquire, the waiter's place, a listing, renew, release, the waiter's lease,
        # a label's lease, leaving (which releases the waiter's lease), the history.
        assert codes == ["201", "201", "201", "201", "202", "200", "200", "204", "201", "201", "204", "200"], (
            codes,
            got.stdout,
        )
        assert re.search(r"holding uat: lease l_\S+, fence 1\b", got.stdout), got.stdout
        assert re.search(r"waiting with ticket t_\S+", got.stdout), got.stdout
        assert '"holder":"shop#42"' in got.stdout.replace(" ", ""), got.stdout
        assert "https://staging-" in got.stdout, got.stdout
    finally:
        server.stop()


def test_the_quick_start_installs_and_serves_pasted_in_order(tmp_path: Path) -> None:
    """Quick start's lines as a newcomer pastes them, in a fresh folder: the clone (of this checkout, the one
    substitution README names: your mirror's URL), a virtual environment of its own, `pip install .` from the
    package index, and the server, which then answers the original's route with the key it was given."""
    lines = [line for line in _block_after("Quick start", "sh").splitlines() if line.strip()]
    assert lines[0].startswith("git clone https://github.com/call-me/call-me.git"), lines
    assert lines[-1] == "API_KEY=change-me-please CALL_ME_HOST=127.0.0.1 call-me-server", lines
    root = str(README.parent)
    setup = "\n".join([lines[0].replace("https://github.com/call-me/call-me.git", f"{root} call-me"), *lines[1:-1]])
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PORT"] = str(port)
    # The rest of the session's PATH, without this test run's own virtual environment.
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not p.startswith(root))
    script = f"set -e\n{setup}\n{lines[-1]}\n"
    server = subprocess.Popen(
        ["bash", "-c", script], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # the shell and the server it starts: stopped together below
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 600  # pip install from the index: a minute or two
        while True:
            assert server.poll() is None, server.communicate()[0][-3000:]
            try:
                answer = httpx.get(
                    f"http://127.0.0.1:{port}/maybe", params={"environment": "uat"},
                    headers={"X-API-KEY": "change-me-please"}, timeout=5,
                )  # fmt: skip
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the quick start's server never answered"
                time.sleep(0.5)
        assert answer.status_code == 200
        assert (tmp_path / "call-me" / ".venv" / "bin" / "call-me").exists()
        assert (tmp_path / "call-me" / "call-me.db").exists()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.communicate(timeout=60)


def _block_under(heading: str, fence: str) -> str:
    """The first fenced block of kind `fence` after the heading line `heading` (any level)."""
    text = README.read_text()
    start = text.index(f"\n{heading}\n")
    opening = text.index(f"```{fence}\n", start) + len(fence) + 4
    return text[opening : text.index("```\n", opening)]


def test_the_systemd_unit_passes_systemd_analyze(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        tool_missing("systemd-analyze (systemd) is not installed")
    unit = _block_under("### As a service (systemd)", "ini")
    assert "ExecStart=/opt/call-me/.venv/bin/call-me-server" in unit
    # The one substitution: where this machine has the server installed.
    installed = str(Path(sys.executable).parent / "call-me-server")
    (tmp_path / "call-me.service").write_text(unit.replace("/opt/call-me/.venv/bin/call-me-server", installed))
    got = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "call-me.service")], capture_output=True, text=True, timeout=60
    )
    assert got.returncode == 0, got.stderr
    said = [line for line in got.stderr.splitlines() if "call-me.service" in line]
    assert said == [], said  # an unknown key, a bad value: systemd names the unit file


def test_the_backup_command_copies_a_running_server_and_the_copy_restores(tmp_path: Path) -> None:
    command = _block_under("### Backups", "sh").strip()
    database, copy = tmp_path / "call-me.db", tmp_path / "backup" / "call-me.db"
    copy.parent.mkdir()
    command = command.replace("/var/lib/call-me/call-me.db", str(database)).replace(
        "/var/backups/call-me.db", str(copy)
    )
    server = ServerProcess(tmp_path, env={"CALL_ME_DATABASE": str(database)})
    server.start()
    try:
        with server.client() as admin:
            kept = admin.post("/v1/leases", json={"environment": "uat", "holder": "in the copy"}).json()
            got = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=BOUND)
            assert got.returncode == 0, got.stderr
            assert stat.S_IMODE(copy.stat().st_mode) == 0o600  # as private as the database (tokens' secrets aside)
            # After the copy: that lease ends, another is granted with a higher fence.
            assert admin.delete(f"/v1/leases/{kept['id']}", headers={"X-Lease-Token": kept["token"]}).status_code == 204
            later = admin.post("/v1/leases", json={"environment": "uat", "holder": "after the copy"}).json()
            assert later["fence"] > kept["fence"]
        server.stop()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{database}{suffix}").unlink(missing_ok=True)
        shutil.copy(copy, database)
        server.start()
        with server.client() as admin:
            held = admin.get("/v1/environments/uat").json()["leases"]
            assert [(lease["id"], lease["holder"]) for lease in held] == [(kept["id"], "in the copy")]
            # Fences go on above everything handed out since the copy, never back to a number in use.
            admin.delete(f"/v1/leases/{kept['id']}", headers={"X-Lease-Token": kept["token"]})
            again = admin.post("/v1/leases", json={"environment": "uat"}).json()
            assert again["fence"] > later["fence"]
    finally:
        server.stop()


def test_the_table_of_contents_is_current_and_every_link_leads_to_a_heading() -> None:
    got = subprocess.run(
        [sys.executable, str(README.parent / "scripts" / "readme-toc"), "--check"],
        capture_output=True, text=True, timeout=BOUND,
    )  # fmt: skip
    assert got.returncode == 0, got.stderr
    contents = README.read_text().split("<!-- toc -->", 1)[1].split("<!-- /toc -->", 1)[0]
    assert "- [Quick start](#quick-start)" in contents
    assert "- [Reliability](#reliability)" in contents
