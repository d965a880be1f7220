"""Group commit on SQLite: operations that arrive together share one durable commit, each keeps its own
outcome, and a commit that fails acknowledges nothing of its batch (server/store/batch.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from callme.server.clock import Clock
from callme.server.model import Event
from callme.server.store.base import StoreError
from callme.server.store.sqlite import SQLiteStore, SQLiteTx


def _event(detail: str) -> Callable[[SQLiteTx], int]:
    return lambda tx: tx.add_event(Event(at=tx.now(), kind="environment_changed", environment="e", detail=detail))


def _details(path: Path) -> list[str]:
    async def read() -> list[str]:
        store = SQLiteStore(str(path), Clock())
        await store.open()
        try:
            events = await store.transact(lambda tx: tx.events(None, 1_000_000))
        finally:
            await store.close()
        return sorted(e.detail or "" for e in events)

    return asyncio.run(read())


async def _in_one_batch(store: SQLiteStore, fns: list[Callable[[SQLiteTx], Any]]) -> list[Any]:
    """Run `fns` so that they share one batch: a first operation holds the worker until all are queued."""
    queued = threading.Event()
    holder = asyncio.ensure_future(store.transact(lambda tx: queued.wait(10)))
    await asyncio.sleep(0.05)  # the holder is on the worker now
    rest = [asyncio.ensure_future(store.transact(fn)) for fn in fns]
    await asyncio.sleep(0)  # every one is in the queue
    before = store._commits.batches
    queued.set()
    assert await holder
    answers = await asyncio.gather(*rest, return_exceptions=True)
    assert store._commits.batches == before + 1, "the operations did not share one batch"
    return answers


def test_concurrent_operations_share_one_commit_and_all_are_durable(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"

    async def main() -> None:
        store = SQLiteStore(str(path), Clock())
        await store.open()
        try:
            ids = await _in_one_batch(store, [_event(f"op{i}") for i in range(64)])
            assert sorted(ids) == ids, "operations of a batch ran out of order"
            assert store._commits.operations - store._commits.batches >= 63
        finally:
            await store.close()

    asyncio.run(main())
    assert _details(path) == sorted(f"op{i}" for i in range(64))


def test_an_operation_that_fails_is_rolled_back_alone(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"

    def fails(tx: SQLiteTx) -> None:
        _event("b")(tx)
        raise ValueError("b changes its mind")

    async def main() -> list[Any]:
        store = SQLiteStore(str(path), Clock())
        await store.open()
        try:
            return await _in_one_batch(store, [_event("a"), fails, _event("c")])
        finally:
            await store.close()

    a, b, c = asyncio.run(main())
    assert isinstance(a, int)
    assert isinstance(b, ValueError)
    assert isinstance(c, int)
    assert _details(path) == ["a", "c"]


def test_a_commit_that_fails_acknowledges_nothing_of_its_batch(small_disk: Path) -> None:
    path = small_disk / "db.sqlite"
    filler = small_disk / "filler"

    async def main() -> tuple[list[Any], int]:
        store = SQLiteStore(str(path), Clock())
        await store.open()
        try:
            await store.transact(_event("before"))
            free = os.statvfs(small_disk)
            filler.write_bytes(b"\0" * max(0, free.f_bavail * free.f_frsize - 64 * 1024))
            # Each operation alone is fine; the batch's commit needs more than the disk has left.
            answers = await _in_one_batch(store, [_event("small"), _event("x" * 200_000), _event("tiny")])
            filler.unlink()
            # The store recovers by itself once there is room again.
            after = await store.transact(_event("after"))
            return answers, after
        finally:
            with contextlib.suppress(StoreError):
                await store.close()

    answers, _ = asyncio.run(main())
    assert all(isinstance(a, StoreError) for a in answers), answers
    assert _details(path) == ["after", "before"]
