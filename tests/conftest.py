from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .pgserver import PostgresServer, available
from .serverproc import ServerProcess
from .tooling import tool_missing


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
