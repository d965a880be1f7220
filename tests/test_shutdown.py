"""SIGTERM with a crowd parked in long-polls: every one is answered at once with its place, the server exits
promptly, and every place is still there after the restart (API.md: 202 on shutdown)."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import httpx
from callme.server.clock import Clock
from callme.server.outcomes import Queued
from callme.server.service import Service
from callme.server.settings import Settings
from callme.server.store.sqlite import SQLiteStore

from .harness import ADMIN, request
from .serverproc import CLIENT_KEY, ServerProcess

WAITERS = 200


async def _park(base: str, answers: list[httpx.Response | BaseException]) -> None:
    limits = httpx.Limits(max_connections=WAITERS + 10)
    async with httpx.AsyncClient(base_url=base, headers={"X-API-KEY": CLIENT_KEY}, limits=limits, timeout=30) as c:

        async def one(i: int) -> httpx.Response:
            return await c.post("/v1/leases", json={"environment": f"e{i % 20}", "holder": f"w{i}", "wait": 25})

        answers.extend(await asyncio.gather(*(one(i) for i in range(WAITERS)), return_exceptions=True))


def test_sigterm_answers_a_crowd_of_long_polls_at_once_and_keeps_their_places(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path)
    server.start()
    try:
        with server.client() as c:
            for i in range(20):
                assert c.post("/v1/leases", json={"environment": f"e{i}", "holder": "holder"}).status_code == 201
        answers: list[httpx.Response | BaseException] = []
        crowd = threading.Thread(target=lambda: asyncio.run(_park(server.url, answers)))
        crowd.start()
        with server.client() as c:
            deadline = time.monotonic() + 30
            while sum(len(e["queue"]) for e in c.get("/v1/environments").json()["environments"]) < WAITERS:
                assert time.monotonic() < deadline, "the crowd did not park"
                time.sleep(0.2)
        time.sleep(0.3)  # the last ones are parked in their long-polls, not only queued
        stopped = time.monotonic()
        assert server.stop(timeout=10) == -signal.SIGTERM
        exited = time.monotonic() - stopped
        crowd.join(10)
        assert exited < 3, f"the server took {exited:.1f} s to exit"
        statuses = [a.status_code if isinstance(a, httpx.Response) else repr(a) for a in answers]
        assert statuses == [202] * WAITERS, statuses
        tickets = [a.json()["ticket"] for a in answers if isinstance(a, httpx.Response)]
        server.start()
        with server.client(CLIENT_KEY) as c:
            for i, ticket in enumerate(tickets):
                again = c.post("/v1/leases", json={"environment": f"e{i % 20}", "holder": f"w{i}", "ticket": ticket})
                assert again.status_code == 202, again.text
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.kill()


def test_at_shutdown_parked_long_polls_are_answered_without_a_transaction_each(tmp_path: Path) -> None:
    """Thousands of parked waiters must not each queue a store transaction while the server exits."""

    async def main() -> None:
        store = SQLiteStore(str(tmp_path / "db.sqlite"), Clock())
        await store.open()
        service = Service(store, Settings(ticket_grace=60, max_wait=25))
        try:
            await service.acquire(ADMIN, replace(request("uat"), holder="holder"))
            parked = [
                asyncio.ensure_future(service.acquire(ADMIN, replace(request("uat"), wait=25.0))) for _ in range(50)
            ]
            while service.waiters.parked < len(parked):
                await asyncio.sleep(0.01)
            before = store._commits.operations
            service.waiters.close()
            answers = await asyncio.wait_for(asyncio.gather(*parked), timeout=5)
            assert all(isinstance(a, Queued) for a in answers)
            assert store._commits.operations == before, "each parked waiter went back to the store at shutdown"
        finally:
            await store.close()

    asyncio.run(main())
