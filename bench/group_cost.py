"""What a group grant (`all`, issue 14) costs next to a single one.

In-process, without HTTP: the real Service on a temporary SQLite file (WAL, synchronous=FULL, the real clock), or
on PostgreSQL with `--database postgresql://...`, so what is timed is the store's queries and the commit. For each
case, sequentially, after a warm-up: the p50 wall time and the mean CPU time (all threads) of

- `single`: acquire one environment, release it (the baseline);
- `two singles`: acquire two environments one after the other, release both (what a pipeline does without groups,
  with the deadlock risk);
- `group of 2`, `group of 4`, `group of 8`: one acquire of every part at once, one release of the group;
- `hand-off single`, `hand-off group of 2`: a release that grants a waiting single (a group of 2) in the same
  transaction, and the waiter's poll that collects it.

    .venv/bin/python bench/group_cost.py                 # SQLite, 300 rounds per case
    .venv/bin/python bench/group_cost.py --rounds 50     # a quick smoke
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from callme.server.clock import Clock
from callme.server.model import Principal
from callme.server.outcomes import Granted, GrantedGroup, Queued
from callme.server.service import Service
from callme.server.settings import Settings
from callme.server.store.base import Store
from callme.server.validation import AcquireRequest

WHO = Principal("bench", "admin", 1000)
NAMES = [f"env-{i}" for i in range(8)]


def request(*names: str, ticket: str | None = None) -> AcquireRequest:
    parts = tuple((name, None) for name in names) if len(names) > 1 else None
    return AcquireRequest(
        environment=names[0] if parts is None else None, label=None, holder="bench", ttl=600, wait=0.0,
        queue=True, ticket=ticket, priority=0, metadata={"run": 1}, request_id=None, parts=parts,
    )  # fmt: skip


async def measure(rounds: int, step: Callable[[], Awaitable[None]]) -> tuple[float, float]:
    for _ in range(max(5, rounds // 10)):
        await step()
    walls, cpu_start = [], time.process_time()
    for _ in range(rounds):
        started = time.perf_counter()
        await step()
        walls.append(time.perf_counter() - started)
    return statistics.median(walls) * 1000, (time.process_time() - cpu_start) / rounds * 1000


async def bench(store: Store, rounds: int) -> list[tuple[str, float, float]]:
    await store.open()
    svc = Service(store, Settings(ticket_grace=60, default_ttl=600, max_ttl=3600))
    for name in NAMES:
        await svc.acquire(WHO, request(name))  # auto-creates it
        await svc.maybe_release(WHO, name)

    async def release(outcome: Granted | GrantedGroup | Queued) -> None:
        if isinstance(outcome, GrantedGroup):
            await svc.release_group(WHO, outcome.group_id, outcome.token)
        elif isinstance(outcome, Granted):
            await svc.release(WHO, outcome.lease.id, outcome.token)

    async def single() -> None:
        await release(await svc.acquire(WHO, request(NAMES[0])))

    async def two_singles() -> None:
        first = await svc.acquire(WHO, request(NAMES[0]))
        second = await svc.acquire(WHO, request(NAMES[1]))
        await release(first)
        await release(second)

    def group(size: int) -> Callable[[], Awaitable[None]]:
        async def step() -> None:
            await release(await svc.acquire(WHO, request(*NAMES[:size])))

        return step

    def hand_off(size: int) -> Callable[[], Awaitable[None]]:
        async def step() -> None:
            held = await svc.acquire(WHO, request(*NAMES[:size]))
            waiting = await svc.acquire(WHO, request(*NAMES[:size]))
            assert isinstance(waiting, Queued)
            await release(held)  # grants the waiter in the same transaction
            got = await svc.acquire(WHO, request(*NAMES[:size], ticket=waiting.ticket_id))
            assert not isinstance(got, Queued)
            await release(got)

        return step

    cases: list[tuple[str, Callable[[], Awaitable[None]]]] = [
        ("single", single),
        ("two singles", two_singles),
        ("group of 2", group(2)),
        ("group of 4", group(4)),
        ("group of 8", group(8)),
        ("hand-off single", hand_off(1)),
        ("hand-off group of 2", hand_off(2)),
    ]
    results = []
    for name, step in cases:
        wall, cpu = await measure(rounds, step)
        results.append((name, wall, cpu))
    await store.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--database", help="a postgresql:// URL (default: a temporary SQLite file)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        if args.database:
            from callme.server.store.postgres import PostgresStore

            store: Store = PostgresStore(args.database, listen=False)
        else:
            from callme.server.store.sqlite import SQLiteStore

            store = SQLiteStore(str(Path(folder) / "bench.db"), Clock(), allow_new_database=True)
        results = asyncio.run(bench(store, args.rounds))
    print(f"{'case':<22} {'p50 wall ms':>12} {'mean CPU ms':>12}   (one acquire and one release; hand-off: 2 + poll)")
    for name, wall, cpu in results:
        print(f"{name:<22} {wall:>12.2f} {cpu:>12.2f}")


if __name__ == "__main__":
    main()
