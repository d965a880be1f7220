from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import Phase, settings

from .pgserver import PostgresServer, available
from .serverproc import CLIENT_KEY, ServerProcess
from .tooling import tool_missing

# scripts/mutation runs with `--hypothesis-profile=mutation`: every mutant meets the same examples, no failure of
# one mutant is replayed into the next from the example database, and a failing example is not shrunk, since
# only whether a mutant fails counts.
settings.register_profile("mutation", database=None, derandomize=True, phases=[Phase.explicit, Phase.generate])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A real call-me server on a free 127.0.0.1 port with the admin, client and read keys of serverproc."""
    proc = ServerProcess(tmp_path)
    proc.start()
    try:
        yield proc
    finally:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.kill()


@pytest.fixture
def admin(server: ServerProcess) -> Iterator[httpx.Client]:
    """An HTTP client of `server` (whichever `server` fixture the test module has) with the admin key."""
    with server.client() as http:
        yield http


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    """An HTTP client of `server` with the client key."""
    with server.client(CLIENT_KEY) as http:
        yield http


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL for the session (or CALL_ME_TEST_POSTGRES); under CI=true it never skips."""
    why_not = available()
    if why_not is not None:
        tool_missing(f"PostgreSQL: {why_not}")
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def pg_url(postgres: PostgresServer) -> Iterator[str]:
    """A fresh, migrated database of its own for one test."""
    url = postgres.create_database()
    try:
        yield url
    finally:
        postgres.drop_database(url)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs: a full disk that the test can free again. Unmounted whatever happens."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        tool_missing("mounting a tmpfs for a full disk needs root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
