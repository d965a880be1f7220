"""Run the real `call-me-server` as a subprocess on a free 127.0.0.1 port, for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

ADMIN_KEY = "admin-key-for-tests"
CLIENT_KEY = "client-key-for-tests"
READ_KEY = "read-key-for-tests"

DEFAULT_CONFIG = f"""
[[keys]]
name = "ci"
key = "{CLIENT_KEY}"
role = "client"
max_priority = 5

[[keys]]
name = "viewer"
key = "{READ_KEY}"
role = "read"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """One server process; `start()` may be called again after `stop()`/`kill()` on the same database."""

    def __init__(
        self,
        workdir: Path,
        *,
        env: dict[str, str] | None = None,
        config: str | None = DEFAULT_CONFIG,
        port: int | None = None,
        database: str | None = None,
        open_files: tuple[int, int] | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.database = database or str(workdir / "call-me.db")
        self.log_path = workdir / f"server-{self.port}.log"
        self.env = dict(os.environ)
        self.env.update(
            {
                "PORT": str(self.port),
                "CALL_ME_HOST": "127.0.0.1",
                "API_KEY": ADMIN_KEY,
                "CALL_ME_DATABASE": self.database,
            }
        )
        if config is not None:
            config_path = workdir / "call-me.toml"
            config_path.write_text(config)
            self.env["CALL_ME_CONFIG"] = str(config_path)
        self.env.update(env or {})
        if self.database.startswith(("postgres://", "postgresql://")):
            # PostgreSQL refuses to start without a secret its replicas share (secret.py); a test that wants the
            # refusal takes it out again.
            self.env.setdefault("CALL_ME_SECRET", "a-secret-shared-by-every-test-replica-0123456789")
        self.open_files = open_files  # the (soft, hard) RLIMIT_NOFILE the server starts with
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, wait: bool = True) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self._command(),
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        log.close()
        if wait:
            self.wait_ready()

    def _command(self) -> list[str]:
        if self.open_files is None:
            return [sys.executable, "-m", "callme.server.main"]
        # Set in the child's own interpreter rather than with preexec_fn, which is unsafe in a threaded test run.
        start = (
            "import resource, runpy; "
            f"resource.setrlimit(resource.RLIMIT_NOFILE, {self.open_files!r}); "
            "runpy.run_module('callme.server.main', run_name='__main__')"
        )
        return [sys.executable, "-c", start]

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server did not become ready:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then wait; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def client(self, key: str = ADMIN_KEY) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"X-API-KEY": key}, timeout=40)


@contextlib.contextmanager
def started_together(procs: list[ServerProcess], timeout: float = 30) -> Iterator[list[ServerProcess]]:
    """Replicas started all at once (they migrate and apply the config file concurrently), each then waited for;
    at the end, every one still running is killed."""
    try:
        for proc in procs:
            proc.start(wait=False)
        for proc in procs:
            proc.wait_ready(timeout)
        yield procs
    finally:
        for proc in procs:
            if proc.proc is not None and proc.proc.poll() is None:
                proc.kill()
