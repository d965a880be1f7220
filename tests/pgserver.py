"""A throwaway PostgreSQL for tests: its own cluster in a temporary folder, on a free 127.0.0.1 port.

initdb and pg_ctl refuse to run as root, so as root they run as the `postgres` user (runuser) in a folder
given to it. `CALL_ME_TEST_POSTGRES=postgresql://...` uses that server instead (it must allow CREATE DATABASE).
Tests run it without fsync (nothing they check needs a power cut survived); `bench/` starts it `durable`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import psycopg

from .serverproc import free_port

BIN = Path(os.environ.get("CALL_ME_PG_BIN", "/usr/lib/postgresql/15/bin"))


def available(*, external: bool = True) -> str | None:
    """None when a throwaway server can be started here (or CALL_ME_TEST_POSTGRES names one), else why not."""
    if external and os.environ.get("CALL_ME_TEST_POSTGRES"):
        return None
    if not (BIN / "initdb").exists():
        return f"no PostgreSQL binaries in {BIN} (install postgresql-15, or set CALL_ME_TEST_POSTGRES)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser"
    return None


class PostgresServer:
    """A cluster of its own (`start`, `stop`, `restart`), or the external one of CALL_ME_TEST_POSTGRES."""

    def __init__(
        self,
        *,
        durable: bool = False,
        launcher: Sequence[str] = (),
        external: bool = True,
        env: dict[str, str] | None = None,
        own: bool = False,
    ) -> None:
        """`durable`: PostgreSQL's own defaults (fsync, synchronous_commit, full_page_writes on) instead of
        none of them; `launcher`: a prefix for the command that starts the server (`taskset -c 0`), which its
        processes inherit; `external=False` or `own` ignores CALL_ME_TEST_POSTGRES (a cluster of its own);
        `env`: more environment variables for the server processes (libfaketime's)."""
        self.external = None if (own or not external) else (os.environ.get("CALL_ME_TEST_POSTGRES") or None)
        self.durable = durable
        self.launcher = list(launcher)
        self.env = env
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
            if not self.durable:
                initdb.append("--no-sync")
            subprocess.run(self._as_owner(*initdb, "-E", "UTF8", "--locale=C"), check=True, capture_output=True)
            with (self.dir / "data" / "postgresql.conf").open("a") as conf:
                conf.write(
                    f"listen_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{self.dir}'\n"
                    "max_connections = 300\n"
                )
                if not self.durable:
                    conf.write("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n")
            self.admin_url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._pg_ctl("start", "-w", "-t", "30", "-l", str(self.dir / "log"), launcher=self.launcher)

    def _pg_ctl(self, *args: str, launcher: Sequence[str] = ()) -> None:
        assert self.dir is not None
        subprocess.run(
            [*launcher, *self._as_owner(str(BIN / "pg_ctl"), "-D", str(self.dir / "data"), *args)],
            check=True,
            capture_output=True,
            timeout=60,
            env={**os.environ, **self.env} if self.env else None,
        )

    def stop(self, mode: str = "fast") -> None:
        """`pg_ctl stop`: `fast` ends the open sessions cleanly, `immediate` stops as a crash would (recovery at
        the next start)."""
        if not self.external and self.dir is not None:
            self._pg_ctl("stop", "-m", mode, "-w")

    def restart(self, mode: str = "fast") -> None:
        """`pg_ctl restart`: stopped in `mode` and started again at once, on the same port."""
        if not self.external and self.dir is not None:
            # -l as for start: the new postmaster must not inherit the pipes that capture pg_ctl's output.
            self._pg_ctl("restart", "-m", mode, "-w", "-t", "30", "-l", str(self.dir / "log"), launcher=self.launcher)

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
