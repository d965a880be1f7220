"""The hand-off to a waiter parked in a long-poll on this process: its lease is collected by the release's own
commit (nothing more to write before its 201), while a grant to a client between polls stays revocable."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from callme.server.clock import Clock
from callme.server.model import Event
from callme.server.outcomes import Granted, Queued
from callme.server.service import Service
from callme.server.settings import Settings
from callme.server.store.sqlite import SQLiteStore

from .harness import ADMIN, request


def test_a_parked_waiter_gets_a_collected_lease_from_the_release_commit(tmp_path: Path) -> None:
    async def main() -> None:
        store = SQLiteStore(str(tmp_path / "db.sqlite"), Clock())
        await store.open()
        service = Service(store, Settings(ticket_grace=60, max_wait=25))
        try:
            held = await service.acquire(ADMIN, request("uat"))
            assert isinstance(held, Granted)
            parked = asyncio.ensure_future(service.acquire(ADMIN, replace(request("uat"), wait=20.0)))
            away = await service.acquire(ADMIN, request("other"))
            assert isinstance(away, Granted)
            between = await service.acquire(ADMIN, request("other"))  # queued, then gone between polls
            assert isinstance(between, Queued)
            while service.waiters.parked < 1:
                await asyncio.sleep(0.01)

            # Read the file the moment each release has committed, before any waiter runs again.
            seen: dict[str, float | None] = {}

            def at_commit(events: Sequence[Event]) -> None:
                with sqlite3.connect(tmp_path / "db.sqlite") as db:
                    for e in events:
                        if e.kind == "acquired":
                            row = db.execute("SELECT collect_by FROM leases WHERE id = ?", (e.lease,)).fetchone()
                            seen[e.environment or ""] = row[0]

            service.listeners.append(at_commit)
            await service.release(ADMIN, held.lease.id, held.lease.token)
            await service.release(ADMIN, away.lease.id, away.lease.token)
            assert seen["uat"] is None, "the parked waiter's grant waits for a second commit"
            assert seen["other"] is not None, "a grant to a client between polls must stay revocable"
            got = await asyncio.wait_for(parked, 5)
            assert isinstance(got, Granted)
            assert got.lease.collect_by is None
        finally:
            await store.close()

    asyncio.run(main())
