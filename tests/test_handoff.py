"""The hand-off to a waiter parked in a long-poll, and what happens when a waiter's client has gone.

- A waiter parked on this process is handed its lease by the release's own commit: no transaction runs between
  that commit and its answer.
- That commit also collects the grant: a 201 never acknowledges a lease that a crash of the server right after
  it would leave to be revoked (tests/test_pg_kill.py kills the server at that moment). A grant handed to a
  request whose client has hung up by then goes back to waiting to be collected, so a client that hung up
  never keeps a slot longer than the grace.
- A parked request whose client hangs up stops waiting at once, and its ticket is abandoned a grace after the
  hang-up, not a grace after the end of the wait it had asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from callme.server.clock import Clock
from callme.server.outcomes import Granted, Queued
from callme.server.service import Service
from callme.server.settings import Settings
from callme.server.store.sqlite import SQLiteStore

from .harness import ADMIN, request
from .serverproc import ADMIN_KEY, ServerProcess


@contextlib.asynccontextmanager
async def _service(path: Path) -> AsyncIterator[tuple[SQLiteStore, Service]]:
    """A service on its own SQLite file, as the server runs it (a grace of 60 s, long-polls held up to 25 s)."""
    store = SQLiteStore(str(path), Clock())
    await store.open()
    try:
        yield store, Service(store, Settings(ticket_grace=60, max_wait=25))
    finally:
        await store.close()


def _collect_by(path: Path, lease_id: str) -> float | None:
    with sqlite3.connect(path) as db:
        row = db.execute("SELECT collect_by FROM leases WHERE id = ?", (lease_id,)).fetchone()
    return row[0] if row else None


def test_a_parked_waiter_is_handed_its_lease_by_the_release_commit_which_collects_it(tmp_path: Path) -> None:
    async def main() -> None:
        path = tmp_path / "db.sqlite"
        async with _service(path) as (store, service):
            held = await service.acquire(ADMIN, request("uat"))
            assert isinstance(held, Granted)
            parked = asyncio.ensure_future(service.acquire(ADMIN, replace(request("uat"), wait=20.0)))
            while service.waiters.parked < 1:
                await asyncio.sleep(0.01)

            operations: list[int] = []
            service.listeners.append(lambda events: operations.append(store._commits.operations))
            await service.release(ADMIN, held.lease.id, held.token)
            # Collected by the release's own commit, before the 201 is written: not revocable after it.
            assert _collect_by(path, parked_lease(path)) is None
            got = await asyncio.wait_for(parked, 5)
            assert isinstance(got, Granted)
            assert store._commits.operations == operations[0], "a transaction ran between the release and the 201"
            assert _collect_by(path, got.lease.id) is None

    asyncio.run(main())


def parked_lease(path: Path) -> str:
    with sqlite3.connect(path) as db:
        (lease_id,) = db.execute("SELECT id FROM leases WHERE state = 'active'").fetchone()
    return str(lease_id)


@pytest.mark.parametrize("when", ["after the grant was decided", "before the commit"])
def test_a_grant_handed_to_a_request_whose_client_hung_up_must_be_collected_within_the_grace(
    tmp_path: Path, when: str
) -> None:
    """The request does not answer with the grant it was handed: its client must come for it, as for a grant made
    between polls. Either the request hangs up after the commit handed it the grant, or it was gone by the time
    the commit came back (a grant decided while it was parked): nobody takes the grant, and it is re-armed."""

    async def main() -> None:
        path = tmp_path / "db.sqlite"
        async with _service(path) as (_store, service):
            held = await service.acquire(ADMIN, request("uat"))
            assert isinstance(held, Granted)
            gone = asyncio.Event()
            parked = asyncio.ensure_future(service.acquire(ADMIN, replace(request("uat"), wait=20.0), gone.wait))
            while service.waiters.parked < 1:
                await asyncio.sleep(0.01)
            [ticket_id] = list(service.waiters._parked)
            if when == "before the commit":
                # As if it had hung up while the release ran: gone by the time the release's commit hands it out.
                service.waiters.parked_here = lambda ticket: True  # type: ignore[method-assign]
                service.waiters._parked[ticket_id][0].hang_up()
            await service.release(ADMIN, held.lease.id, held.token)
            if when == "after the grant was decided":
                service.waiters._parked[ticket_id][0].hang_up()  # before the request reads what it was handed
            got = await asyncio.wait_for(parked, 5)
            assert isinstance(got, Queued), "nobody reads this answer"
            for _ in range(100):  # re-armed by a transaction of its own, after the release's
                if _collect_by(path, parked_lease(path)) is not None:
                    break
                await asyncio.sleep(0.01)
            collect_by = _collect_by(path, parked_lease(path))
            assert collect_by is not None
            assert time.time() + 55 < collect_by < time.time() + 61

    asyncio.run(main())


def test_a_parked_request_whose_client_hangs_up_stops_waiting_and_its_ticket_is_last_seen_then(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        path = tmp_path / "db.sqlite"
        async with _service(path) as (_store, service):
            held = await service.acquire(ADMIN, request("uat"))
            assert isinstance(held, Granted)
            gone = asyncio.Event()
            parked = asyncio.ensure_future(service.acquire(ADMIN, replace(request("uat"), wait=20.0), gone.wait))
            while service.waiters.parked < 1:
                await asyncio.sleep(0.01)
            hung_up_at = time.time()
            gone.set()
            got = await asyncio.wait_for(parked, 5)
            assert isinstance(got, Queued)
            assert service.waiters.parked == 0
            with sqlite3.connect(path) as db:
                (seen_at,) = db.execute("SELECT seen_at FROM tickets WHERE id = ?", (got.ticket.id,)).fetchone()
            # Last seen at the hang-up, not 20 s later at the end of the wait it had asked for.
            assert hung_up_at - 1 < seen_at < hung_up_at + 1

    asyncio.run(main())


def _park(port: int, environment: str, wait: int) -> socket.socket:
    body = json.dumps({"environment": environment, "wait": wait}).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(
        b"POST /v1/leases HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"X-API-KEY: {ADMIN_KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return sock


def _events(admin: httpx.Client, environment: str) -> list[dict[str, object]]:
    got = admin.get("/v1/history", params={"environment": environment, "limit": 100})
    got.raise_for_status()
    body = got.json()
    events: list[dict[str, object]] = body["events"] if isinstance(body, dict) else body
    return events


def test_a_waiter_that_hung_up_never_keeps_the_slot_or_its_place_longer_than_the_grace(tmp_path: Path) -> None:
    grace = 2
    server = ServerProcess(tmp_path, env={"CALL_ME_TICKET_GRACE": str(grace), "CALL_ME_MAX_WAIT": "25"})
    server.start()
    sockets: list[socket.socket] = []
    try:
        with server.client() as admin:
            held = admin.post("/v1/leases", json={"environment": "uat", "ttl": 3600}).json()
            # Two waiters parked for 25 s; the first one's client dies (its socket closes).
            dead = _park(server.port, "uat", 25)
            time.sleep(0.3)
            alive = _park(server.port, "uat", 25)
            sockets += [dead, alive]
            time.sleep(0.3)
            dead.close()
            time.sleep(0.3)
            released = admin.delete(f"/v1/leases/{held['id']}", headers={"X-Lease-Token": held["token"]})
            assert released.status_code == 204
            # The dead waiter's ticket comes first: it may be granted, but never kept past the grace.
            deadline = time.monotonic() + grace + 5
            alive.settimeout(grace + 5)
            answer = b""
            while b"\r\n\r\n" not in answer and time.monotonic() < deadline:
                answer += alive.recv(65536)
            assert answer.startswith(b"HTTP/1.1 201"), answer[:200]
            alive.close()
            listed = admin.get("/v1/environments/uat").json()
            holders = [lease["holder"] for lease in listed["leases"]]
            assert len(holders) == 1
            kinds = [e["kind"] for e in _events(admin, "uat")]
            # Either its grant was revoked after the grace, or its place abandoned: it never held the slot on.
            assert "revoked" in kinds or "abandoned" in kinds, kinds
    finally:
        for sock in sockets:
            sock.close()
        server.stop()


def _answer(sock: socket.socket, timeout: float) -> tuple[int, dict[str, object]]:
    """The status and JSON body of one HTTP answer read from a raw socket."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection without an answer"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    while len(rest) < length:
        rest += sock.recv(65536)
    return int(head.split(b" ", 2)[1]), json.loads(rest[:length])


def test_a_crowd_with_a_tenth_killed_serves_the_survivors_in_order_and_grants_the_dead_nothing(
    tmp_path: Path,
) -> None:
    crowd, grace = 1000, 2
    server = ServerProcess(tmp_path, env={"CALL_ME_TICKET_GRACE": str(grace), "CALL_ME_MAX_WAIT": "120"})
    server.start()
    sockets: list[socket.socket] = []
    try:
        with server.client() as admin:
            held = admin.post("/v1/leases", json={"environment": "uat", "ttl": 3600}).json()
            for _ in range(crowd):
                sockets.append(_park(server.port, "uat", 120))
            deadline = time.monotonic() + 60
            while admin.get("/v1/environments/uat").json()["queue"].__len__() < crowd:
                assert time.monotonic() < deadline, "the crowd did not park"
                time.sleep(0.2)
            queue = admin.get("/v1/environments/uat").json()["queue"]
            order = [entry["seq"] for entry in queue]  # seq of socket i, in the order they were parked
            dead = set(range(5, crowd, 10))  # every tenth, spread over the queue
            for i in sorted(dead):
                sockets[i].close()
            time.sleep(grace + 1)  # a grace after the hang-ups, every dead ticket is abandoned

            lease = held
            served: list[int] = []
            for i, sock in enumerate(sockets):
                if i in dead:
                    continue
                released = admin.delete(f"/v1/leases/{lease['id']}", headers={"X-Lease-Token": lease["token"]})
                assert released.status_code == 204
                status, lease = _answer(sock, 10)
                assert status == 201, (i, status, lease)
                served.append(int(str(lease["seq"])))
            assert served == [seq for i, seq in enumerate(order) if i not in dead], "survivors out of order"
            with sqlite3.connect(server.database) as db:
                kinds = dict(db.execute("SELECT kind, count(*) FROM events GROUP BY kind").fetchall())
            assert kinds.get("abandoned") == len(dead), kinds
            assert kinds.get("revoked", 0) == 0, "a dead waiter was granted the slot"
    finally:
        for sock in sockets:
            sock.close()
        server.stop()
