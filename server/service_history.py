"""Bounded history: the background prune of old events, ended leases and ended tickets, and the forgetting of
auto-created environments that nobody uses any more.

Everything older than `history_days` (never less than REQUEST_ID_RETENTION) goes: ended tickets first, then
ended leases, then events, all by one cut fixed when the prune begins, so that a ticket never outlives the
lease it was granted. A live lease, and a waiting ticket or one whose lease is live, have not ended and are
never pruned. A lease's page (`GET /v1/leases/{id}`) answers 404 once it is pruned; an SSE client resuming
from an event that is gone gets what remains after it.

Each step runs as many small transactions as it needs, and pauses between two PRUNE_PAUSE times as long as the
last one took: an operation waits behind one batch at most, and the prune takes about a quarter of the writer's
time at most (plus the checkpoints of later commits, which copy what it wrote from the WAL into the database).
A batch deletes at most PRUNE_BATCH rows (FORGET_BATCH environments), and fewer when that would take longer
than PRUNE_TARGET: the first batch of a step takes PRUNE_FIRST_BATCH rows, and each next one is sized by how
long the last one took (a row of events costs a page of their index by environment, and a commit's cost
depends on the disk). A batch is a plain operation that only deletes what is old by the cut: run again
(PostgreSQL, after a conflict) it does the same, and one that failed is done by the next prune. Nothing is
remembered between batches but what they committed.

An auto-created environment is in use while a ticket is made for it (`Tx.touch_environment`) or while it has
a live lease or a waiting ticket (each prune touches those it finds so); it is forgotten, with an
`environment_deleted` event that says why, once it has not been in use for `auto_forget_days`. Declared
environments are never forgotten.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from .constants import (
    FORGET_BATCH,
    FORGOTTEN,
    PRUNE_BATCH,
    PRUNE_FIRST_BATCH,
    PRUNE_MIN_BATCH,
    PRUNE_PAUSE,
    PRUNE_TARGET,
    REQUEST_ID_RETENTION,
)
from .service_core import Core, Op
from .store.base import Tx

log = logging.getLogger("callme.service")
DAY = 86400
Step = Callable[[Tx, Op, int], tuple[int, int]]  # one batch: (tx, op, limit) -> (rows looked at, rows deleted)


@dataclass
class Pruned:
    """What one prune did: rows deleted per kind, environments forgotten, and its transactions."""

    tickets: int = 0
    leases: int = 0
    events: int = 0
    deliveries: int = 0
    forgotten: int = 0
    batches: int = 0
    largest: int = 0  # the most rows (or environments) one batch looked at
    longest: float = 0.0  # seconds: the longest batch, queueing for the writer included


class Housekeeping:
    """The background prune (Service.prune), run by the app every PRUNE_INTERVAL."""

    def __init__(self, core: Core) -> None:
        self.core = core

    async def prune(self) -> Pruned:
        core, settings = self.core, self.core.settings
        done = Pruned()
        now = await core.run(lambda tx, op: op.now)
        cut = now - max(settings.history_days * DAY, REQUEST_ID_RETENTION)

        def tickets(tx: Tx, op: Op, limit: int) -> tuple[int, int]:
            return _both(tx.prune_tickets(cut, limit))

        def leases(tx: Tx, op: Op, limit: int) -> tuple[int, int]:
            return _both(tx.prune_leases(cut, limit))

        def events(tx: Tx, op: Op, limit: int) -> tuple[int, int]:
            return _both(tx.prune_events(cut, limit))

        def deliveries(tx: Tx, op: Op, limit: int) -> tuple[int, int]:
            return _both(tx.prune_deliveries(cut, limit))

        # Tickets before leases: a granted ticket ends with its lease, at the same moment.
        done.tickets = await self._batches(done, PRUNE_BATCH, tickets)
        done.leases = await self._batches(done, PRUNE_BATCH, leases)
        done.events = await self._batches(done, PRUNE_BATCH, events)
        done.deliveries = await self._batches(done, PRUNE_BATCH, deliveries)  # a webhook's log: as long as events
        done.forgotten = await self._batches(done, FORGET_BATCH, self._forget)
        log.info(
            "event=pruned tickets=%d leases=%d events=%d forgotten=%d batches=%d longest_ms=%.1f",
            done.tickets, done.leases, done.events, done.forgotten, done.batches, done.longest * 1000,
        )  # fmt: skip
        return done

    async def _batches(self, done: Pruned, most: int, step: Step) -> int:
        """Run `step` in batches of at most `most` rows until one finds fewer than it may take; how many rows
        it deleted in all. `step(tx, op, limit)` answers how many rows it looked at (at most `limit`) and how
        many of them it deleted."""
        total, limit = 0, min(most, PRUNE_FIRST_BATCH)
        while True:
            started = time.monotonic()
            looked, deleted = await self.core.run(_sized(step, limit))
            took = time.monotonic() - started
            done.batches += 1
            done.largest = max(done.largest, looked)
            done.longest = max(done.longest, took)
            total += deleted
            if looked < limit:
                return total
            # The next batch as large as would take PRUNE_TARGET at this one's pace, growing at most twofold.
            limit = int(max(PRUNE_MIN_BATCH, min(most, 2 * limit, limit * PRUNE_TARGET / max(took, 1e-6))))
            await asyncio.sleep(PRUNE_PAUSE * took)  # the writer is the others' for a while

    def _forget(self, tx: Tx, op: Op, limit: int) -> tuple[int, int]:
        """Forget up to `limit` idle auto-created environments: how many it looked at, how many went."""
        core, days = self.core, self.core.settings.auto_forget_days
        before = op.now - days * DAY
        names = tx.idle_auto_environments(before, limit)
        if not names:
            return 0, 0
        # Locks them (PostgreSQL) and ends what is due; an event for one of them now means it was in use.
        mark = len(op.events)
        group = core.settle(tx, op, names, [])
        in_use = {lease.environment for lease in group.live} | {t.environment for t in group.waiting}
        in_use |= {event.environment for event in op.events[mark:]}
        # Read again now that they are locked: a ticket may have been made for one since the first read.
        still_idle = set(tx.idle_auto_environments(before, limit))
        forgotten = 0
        for name in names:
            if name not in still_idle:
                continue
            if name in in_use:
                tx.touch_environment(name, op.now)  # not idle: no candidate again for `days`
                continue
            tx.delete_environment(name)
            core.event(op, "environment_deleted", name, detail=FORGOTTEN.format(days))
            forgotten += 1
        return len(names), forgotten


def _sized(step: Step, limit: int) -> Callable[[Tx, Op], tuple[int, int]]:
    """`step` as an operation of one batch of `limit` rows."""
    return lambda tx, op: step(tx, op, limit)


def _both(deleted: int) -> tuple[int, int]:
    """A prune step looked at what it deleted."""
    return deleted, deleted
