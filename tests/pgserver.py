"""A throwaway PostgreSQL for tests: its own cluster in a temporary folder, on a free 127.0.0.1 port.

initdb and pg_ctl refuse to run as root, so as root they run as the `postgres` user (runuser) in a folder
given to it. `CALL_ME_TEST_POSTGRES=postgresql://...` uses that server instead (it must allow CREATE DATABASE).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from .serverproc import free_port

BIN = Path(os.environ.get("CALL_ME_PG_BIN", "/usr/lib/postgresql/15/bin"))


def available() -> str | None:
    """None when a throwaway server can be started here, else why not."""
    if os.environ.get("CALL_ME_TEST_POSTGRES"):
        return None
    if not (BIN / "initdb").exists():
        return f"no PostgreSQL binaries in {BIN} (install postgresql-15, or set CALL_ME_TEST_POSTGRES)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser"
    return None


class PostgresServer:
    """A cluster of its own (`start`, `stop`, `restart`), or the external one of CALL_ME_TEST_POSTGRES."""

    def __init__(self) -> None:
        self.external = os.environ.get("CALL_ME_TEST_POSTGRES") or None
        self.dir: Path | None = None
        self.port = 0
        self.admin_url = self.external or ""
        self.template: str | None = None

    def _as_owner(self, *args: str) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *args]
        return list(args)

    def start(self) -> None:
        if self.external:
            return
        if self.dir is None:
            self.dir = Path(tempfile.mkdtemp(prefix="callme-pg-"))
            if os.geteuid() == 0:
                shutil.chown(self.dir, "postgres", "postgres")
            self.port = free_port()
            initdb = [str(BIN / "initdb"), "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres"]
            subprocess.run(
                self._as_owner(*initdb, "--no-sync", "-E", "UTF8", "--locale=C"), check=True, capture_output=True
            )
            with (self.dir / "data" / "postgresql.conf").open("a") as conf:
                conf.write(
                    f"listen_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{self.dir}'\n"
                    "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 300\n"
                )
            self.admin_url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._pg_ctl("start", "-w", "-t", "30", "-l", str(self.dir / "log"))

    def _pg_ctl(self, *args: str) -> None:
        assert self.dir is not None
        subprocess.run(
            self._as_owner(str(BIN / "pg_ctl"), "-D", str(self.dir / "data"), *args),
            check=True,
            capture_output=True,
            timeout=60,
        )

    def stop(self) -> None:
        if not self.external and self.dir is not None:
            self._pg_ctl("stop", "-m", "fast", "-w")

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        if self.dir is not None:
            with contextlib.suppress(subprocess.SubprocessError):
                self.stop()
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def url(self, database: str) -> str:
        base, _, _ = self.admin_url.rpartition("/")
        return f"{base}/{database}"

    def create_database(self, *, empty: bool = False) -> str:
        """A new database of its own; a copy of a migrated template unless `empty`."""
        name = "callme_" + secrets.token_hex(6)
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            if empty:
                conn.execute(f"CREATE DATABASE {name}")
            else:
                if self.template is None:
                    self.template = self._make_template(conn)
                conn.execute(f"CREATE DATABASE {name} TEMPLATE {self.template}")
        return self.url(name)

    def _make_template(self, conn: psycopg.Connection[tuple[object, ...]]) -> str:
        import asyncio

        from callme.server.store.postgres import PostgresStore

        name = "callme_template_" + secrets.token_hex(4)
        conn.execute(f"CREATE DATABASE {name}")

        async def migrate() -> None:
            store = PostgresStore(self.url(name), listen=False)
            await store.open()
            await store.close()

        asyncio.run(migrate())
        return name

    def drop_database(self, url: str) -> None:
        name = url.rpartition("/")[2]
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            for _ in range(50):
                try:
                    conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
                    return
                except psycopg.errors.ObjectInUse:
                    time.sleep(0.1)
