"""Storage faults under a real `call-me-server` (issue 12, items 4 and 5): a database removed or replaced while
the server runs is noticed before any write is acknowledged; a database that starts empty where one existed
before stops start-up, and fences never go backwards; /readyz follows whether writes succeed (a full disk, a
read-only PostgreSQL) and recovers without a restart."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from callme.server.clock import Clock, FakeClock
from callme.server.constants import READY_PROBE_INTERVAL
from callme.server.model import Event
from callme.server.store.base import StoreBroken, StoreError
from callme.server.store.health import WriteHealth
from callme.server.store.postgres import PostgresStore
from callme.server.store.sqlite import SQLiteStore, SQLiteTx

from .pgserver import PostgresServer
from .serverproc import CLIENT_KEY, ServerProcess

pytestmark = pytest.mark.timeout(120)

DATABASE = "call-me.db"


@pytest.fixture
def procs() -> Iterator[list[ServerProcess]]:
    """Servers a test starts; each is killed at the end if it still runs."""
    started: list[ServerProcess] = []
    try:
        yield started
    finally:
        for proc in started:
            if proc.proc is not None and proc.proc.poll() is None:
                proc.kill()


def _acquire(c: httpx.Client, environment: str) -> httpx.Response:
    return c.post("/v1/leases", json={"environment": environment, "holder": "faults", "ttl": 600})


def _fence(c: httpx.Client, environment: str) -> int:
    got = _acquire(c, environment)
    assert got.status_code == 201, got.text
    return int(got.json()["fence"])


def _readyz(server: ServerProcess) -> httpx.Response:
    return httpx.get(server.url + "/readyz", timeout=10)


def _until_ready(server: ServerProcess, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while (answer := _readyz(server)).status_code != 200:
        assert time.monotonic() < deadline, f"not ready again after {within} s: {answer.text}"
        time.sleep(0.2)


def _lines(log: str, text: str) -> list[str]:
    return [line for line in log.splitlines() if text in line]


def _refused(server: ServerProcess) -> str:
    """Start `server`, which must stop at once with a status other than 0; what it said."""
    before = len(server.log())
    server.start(wait=False)
    assert server.proc is not None
    assert server.proc.wait(30) != 0
    return server.log()[before:]


# -- SQLite: the database file ------------------------------------------------------------------------------


def test_a_database_removed_while_running_is_noticed_before_any_write_is_acknowledged(
    tmp_path: Path, procs: list[ServerProcess]
) -> None:
    server = ServerProcess(tmp_path)
    procs.append(server)
    server.start()
    with server.client(CLIENT_KEY) as c:
        fences = [_fence(c, f"env{i}") for i in range(6)]
        removed = sorted(p.name for p in tmp_path.glob(f"{DATABASE}*"))
        for name in removed:  # rm call-me.db*
            (tmp_path / name).unlink()
        assert {DATABASE, f"{DATABASE}-wal"} <= set(removed)

        answers = [_acquire(c, f"late{i}") for i in range(5)]
        assert [a.status_code for a in answers] == [503] * 5, [a.text for a in answers]
        assert {a.json()["code"] for a in answers} == {"unavailable"}
        assert f"{DATABASE} was removed" in answers[0].json()["detail"]
        ready = _readyz(server)
        assert ready.status_code == 503
        assert f"{DATABASE} was removed" in ready.json()["reason"]
        assert c.get("/v1/environments").status_code == 200, "reads go on from what the server had"
    said = _lines(server.log(), "removed or replaced")
    assert len(said) == 1, server.log()
    assert "event=store_broken" in said[0]
    server.stop()

    # A new, empty database where the old one was: start-up stops with one line, and creates nothing.
    refusal = _refused(server)
    assert len(_lines(refusal, "is not the one this server used")) == 1, refusal
    assert "CALL_ME_ALLOW_NEW_DATABASE=true" in refusal
    assert not (tmp_path / DATABASE).exists()
    # Told to start afresh, it hands out fences above every one the old database handed out.
    server.env["CALL_ME_ALLOW_NEW_DATABASE"] = "true"
    server.start()
    with server.client(CLIENT_KEY) as c:
        assert _fence(c, "env0") > max(fences)


def test_fences_never_go_backwards_after_a_crash_and_a_restored_backup(
    tmp_path: Path, procs: list[ServerProcess]
) -> None:
    server = ServerProcess(tmp_path)
    procs.append(server)
    server.start()
    with server.client(CLIENT_KEY) as c:
        fences = [_fence(c, f"env{i}") for i in range(2)]
    server.stop()
    backup = tmp_path / "backup.db"
    shutil.copy(tmp_path / DATABASE, backup)  # stopped cleanly: the database is the one file

    server.start()
    with server.client(CLIENT_KEY) as c:
        fences += [_fence(c, f"more{i}") for i in range(3)]
    server.kill()  # no clean close: nothing but what was written before each commit says how far it went
    for p in tmp_path.glob(f"{DATABASE}*"):
        p.unlink()
    shutil.copy(backup, tmp_path / DATABASE)  # the backup is that database, older: it starts

    server.start()
    with server.client(CLIENT_KEY) as c:
        assert _fence(c, "again") > max(fences)
    server.stop()

    # Another database (a copy of an unrelated one) is no more welcome than an empty one.
    (tmp_path / "other").mkdir()
    other = ServerProcess(tmp_path / "other", config=None, env={"CALL_ME_NO_AUTH": "true"})
    procs.append(other)
    other.start()
    other.stop()
    os.replace(tmp_path / "other" / DATABASE, tmp_path / DATABASE)
    refusal = _refused(server)
    assert len(_lines(refusal, "is not the one this server used")) == 1, refusal


def _event(tx: SQLiteTx) -> int:
    return tx.add_event(Event(at=tx.now(), kind="environment_changed", environment="e", detail="a change"))


@pytest.mark.parametrize("fault", ["wal removed", "database moved over"])
def test_the_wal_removed_or_another_file_moved_over_the_database_is_noticed(tmp_path: Path, fault: str) -> None:
    path = tmp_path / DATABASE

    async def main() -> None:
        store = SQLiteStore(str(path), Clock())
        await store.open()
        try:
            await store.transact(_event)
            if fault == "wal removed":
                (tmp_path / f"{DATABASE}-wal").unlink()
            else:
                (tmp_path / "other.db").write_bytes(path.read_bytes())
                os.replace(tmp_path / "other.db", path)
            with pytest.raises(StoreBroken):
                await store.transact(_event)
            assert await store.transact(lambda tx: tx.events(None, 10)), "reads go on"
            reason = await store.readiness()
            assert reason is not None
            assert "was removed" in reason if fault == "wal removed" else "was replaced" in reason
        finally:
            await store.close()

    asyncio.run(main())


def test_readiness_probes_at_most_once_per_interval_and_one_at_a_time() -> None:
    """/readyz needs no key: asking it often must not make the server write as often."""
    clock = FakeClock(0.0)
    health = WriteHealth(clock=clock.now, interval=1.0)
    probes: list[float] = []

    async def probe() -> None:
        probes.append(clock.now())
        await asyncio.sleep(0)
        health.succeeded()

    async def ask(times: int) -> list[str | None]:
        return list(await asyncio.gather(*(health.readiness(probe) for _ in range(times))))

    assert asyncio.run(ask(50)) == [None] * 50
    assert probes == [0.0]
    clock.advance(0.5)
    asyncio.run(ask(50))
    assert probes == [0.0], "what a probe showed half a second ago is still news"
    health.failed("database or disk is full")
    full = "the last write failed (database or disk is full); ready again once a write succeeds"
    clock.advance(0.9)
    assert asyncio.run(ask(1)) == [full]
    assert probes == [0.0], "a failure just seen needs no probe"
    clock.advance(1.0)
    # The first asks the probe; the others, meanwhile, answer what is known rather than write too.
    assert asyncio.run(ask(20)) == [None] + [full] * 19
    assert asyncio.run(ask(5)) == [None] * 5, "the probe's write succeeded: ready again"
    assert probes == [0.0, 2.4]

    async def failing() -> None:
        raise StoreError("database error: disk I/O error")

    clock.advance(5)
    assert asyncio.run(health.readiness(failing)) is not None
    health.break_("the database file was removed")
    clock.advance(5)
    assert asyncio.run(health.readiness(probe)) == "the database file was removed"
    assert probes == [0.0, 2.4], "a broken store is not probed: nothing would make it ready"


def _fill(folder: Path) -> Path:
    """Fill the file system of `folder` to the last byte; the file that does it."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (1 << 16, 1 << 12, 1):
            try:
                while os.write(fd, b"\0" * size):
                    pass
            except OSError:
                pass  # full at this size; go on with smaller writes
    finally:
        os.close(fd)
    assert os.statvfs(folder).f_bavail == 0
    return filler


def test_readiness_follows_the_writes_on_a_full_disk_and_recovers_when_freed(
    tmp_path: Path, small_disk: Path, procs: list[ServerProcess]
) -> None:
    server = ServerProcess(tmp_path, database=str(small_disk / DATABASE))
    procs.append(server)
    server.start()
    with server.client(CLIENT_KEY) as c:
        _fence(c, "before")
        assert _readyz(server).status_code == 200
        filler = _fill(small_disk)

        # Nobody writes: what /readyz knows grows old, and it tries a write of its own.
        time.sleep(READY_PROBE_INTERVAL + 0.2)
        ready = _readyz(server)
        assert ready.status_code == 503
        assert "full" in ready.json()["reason"]
        failed = _acquire(c, "during")
        assert failed.status_code == 503
        assert failed.json()["code"] == "unavailable"
        assert _readyz(server).status_code == 503
        assert httpx.get(server.url + "/healthz").status_code == 200

        filler.unlink()
        _until_ready(server)
        assert _acquire(c, "after").status_code == 201
    log = server.log()
    assert len(_lines(log, "event=writes_failing")) == 1, log
    assert len(_lines(log, "event=writes_recovered")) == 1, log


# -- PostgreSQL ---------------------------------------------------------------------------------------------


def _database_name(url: str) -> str:
    return url.rpartition("/")[2]


def _terminate(admin: psycopg.Connection[tuple[object, ...]], name: str) -> None:
    admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
        (name,),
    )


def test_postgres_readiness_follows_the_writes(
    tmp_path: Path, postgres: PostgresServer, pg_url: str, procs: list[ServerProcess]
) -> None:
    name = _database_name(pg_url)

    def read_only(on: bool) -> None:
        with psycopg.connect(postgres.admin_url, autocommit=True) as admin:
            admin.execute(f"ALTER DATABASE {name} SET default_transaction_read_only = {'on' if on else 'off'}")
            _terminate(admin, name)  # the setting holds for connections made after

    server = ServerProcess(
        tmp_path, database=pg_url, env={"CALL_ME_SECRET": "a-secret-shared-by-every-replica-0123456789"}
    )
    procs.append(server)
    server.start()
    with server.client(CLIENT_KEY) as c:
        _fence(c, "before")
        read_only(True)  # as after a fail-over to a standby: every read works, every write fails
        failed = _acquire(c, "during")
        assert failed.status_code == 503, failed.text
        for path in ("/v1/environments", "/v1/environments/before", "/v1/history"):
            assert c.get(path).status_code == 200, path
        ready = _readyz(server)
        assert ready.status_code == 503
        assert "read-only" in ready.json()["reason"]
        time.sleep(READY_PROBE_INTERVAL + 0.2)
        assert _readyz(server).status_code == 503, "a probe that writes fails as well"

        read_only(False)
        _until_ready(server)
        assert _acquire(c, "after").status_code == 201
    log = server.log()
    assert len(_lines(log, "event=writes_failing")) == 1, log


def test_a_postgres_database_replaced_under_the_server_is_noticed(
    tmp_path: Path, postgres: PostgresServer, pg_url: str, procs: list[ServerProcess]
) -> None:
    server = ServerProcess(
        tmp_path, database=pg_url, env={"CALL_ME_SECRET": "a-secret-shared-by-every-replica-0123456789"}
    )
    procs.append(server)
    server.start()
    with server.client(CLIENT_KEY) as c:
        fences = [_fence(c, f"env{i}") for i in range(3)]
        # Dropped and created again, then migrated by another replica's start: fences would start at 1.
        postgres.drop_database(pg_url)
        with psycopg.connect(postgres.admin_url, autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {_database_name(pg_url)}")

        async def migrate() -> None:
            other = PostgresStore(pg_url, listen=False)
            await other.open()
            await other.close()

        asyncio.run(migrate())
        answers = [_acquire(c, f"env{i}") for i in range(3)]
        assert [a.status_code for a in answers] == [503] * 3, (fences, [a.text for a in answers])
        assert "not the one this server opened" in answers[0].json()["detail"]
        ready = _readyz(server)
        assert ready.status_code == 503
        assert "not the one this server opened" in ready.json()["reason"]
    said = _lines(server.log(), "not the one this server opened")
    assert len(said) == 1, server.log()
    assert "event=store_broken" in said[0]
