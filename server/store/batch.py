"""Group commit: operations that arrive while a commit is on its way to disk share the next one.

One worker thread drains a queue of operations in batches. A batch is one transaction; each operation in
it runs inside its own SAVEPOINT, one after another, so each sees what the ones before it did: the same
serial order as one transaction per operation, at the cost of one fsync per batch instead of one per
operation.

Why nothing acknowledged is lost, and nothing unacknowledged is kept:
- no operation of a batch is answered before the batch's COMMIT has returned (with `synchronous=FULL`,
  the batch is on disk by then), so a 2xx is never sent for a change that is not durable;
- an operation that raises is rolled back to its savepoint alone and answered with its own error; the
  others of the batch go on;
- if the COMMIT fails, or a storage error ends the transaction part-way (SQLite may roll a whole
  transaction back on a full disk or an I/O error), every operation of the batch is answered with a
  `StoreError`: none of them was acknowledged, and none of their changes stays.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

from .base import StoreError

T = TypeVar("T")


class Job:
    """One operation waiting for its batch: the function to run, and where to answer."""

    __slots__ = ("error", "fn", "future", "loop", "result")

    def __init__(self, fn: Callable[[Any], Any], loop: asyncio.AbstractEventLoop) -> None:
        self.fn = fn
        self.loop = loop
        self.future: asyncio.Future[Any] = loop.create_future()
        self.result: Any = None
        self.error: BaseException | None = None

    def answer(self) -> None:
        """On the job's event loop, once the batch is decided."""
        if self.future.done():  # its caller was cancelled; the change stands or not as the batch decided
            return
        if self.error is not None:
            self.future.set_exception(self.error)
        else:
            self.future.set_result(self.result)


class GroupCommit:
    """A queue of operations drained by one worker thread, `max_batch` at most per transaction.

    `run_batch(jobs)` runs the jobs in one transaction and sets each job's `result` or `error`; it is
    called only on the worker thread.
    """

    def __init__(self, executor: Executor, run_batch: Callable[[list[Job]], None], max_batch: int) -> None:
        self._executor = executor
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._pending: collections.deque[Job] = collections.deque()
        self._lock = threading.Lock()
        self.batches = 0  # transactions committed or tried; with `operations`, shows how much was shared
        self.operations = 0

    async def submit(self, fn: Callable[[Any], T]) -> T:
        job = Job(fn, asyncio.get_running_loop())
        with self._lock:
            self._pending.append(job)
        try:
            # One drain per job: a drain that finds the queue emptied by an earlier one costs nothing.
            self._executor.submit(self._drain)
        except RuntimeError as exc:  # the executor was shut down: the store is closed
            with self._lock:
                if job in self._pending:
                    self._pending.remove(job)
            raise StoreError("the store is closed") from exc
        result: T = await job.future
        return result

    def _drain(self) -> None:
        with self._lock:
            jobs = [self._pending.popleft() for _ in range(min(len(self._pending), self._max_batch))]
        if not jobs:
            return
        self.batches += 1
        self.operations += len(jobs)
        try:
            self._run_batch(jobs)
        except BaseException as exc:  # run_batch answers every job itself; this is a last resort
            for job in jobs:
                job.error = StoreError(f"database error: {exc}")
        finally:
            for job in jobs:
                with contextlib.suppress(RuntimeError):  # its event loop has closed: nobody waits any more
                    job.loop.call_soon_threadsafe(job.answer)
