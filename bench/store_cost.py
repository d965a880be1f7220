"""Per-operation cost against the size of the pool and of the history (issue 11, "flat cost").

In-process, without HTTP: the real Service on a temporary SQLite file (WAL, synchronous=FULL, the real clock),
so what is timed is the store's queries and the commit. Four states of the same database:

- `4 envs`: four declared environments, empty history (the baseline);
- `2,000 envs`: 2,000 environments in 50 labels (40 per label; each carries one), empty history;
- `4 envs + history`: 20,000 ended tickets (with their 20,000 ended leases) and 1,000,000 events;
- `2,000 envs + history`: both.

Rows are written straight into the file before the store opens (declaring 2,000 environments through the
service is itself the slow path being measured); an unlabelled environment `solo` is added to each state.
For each state, sequentially, after a warm-up: the p50 wall time and the mean CPU time (all threads) of an
acquire+release pair on `solo` (its group is itself: what the pool and the history cost an operation), the
same on `e0001` (label L1: alone at 4 environments, in a group of 40 at 2,000, which a decision on it reads
and decides about, by the API's rules), the p50 of a read of `e0001` with its leases and queue (`GET
/v1/environments/{name}`), and of a background sweep with nothing due. On a busy machine the CPU times
still say what the work costs when the wall times say who else ran; `--no-sync` leaves out the fsyncs.

Runs against whichever tree imports as `callme.server`; to compare with an older commit, run this file with
the interpreter of a checkout of it:

    .venv/bin/python bench/store_cost.py                       # this tree
    /work/flat-before/.venv/bin/python bench/store_cost.py     # a clone of HEAD with its own venv
    .venv/bin/python bench/store_cost.py --pairs 50 --events 20000   # a quick smoke
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from callme.server.clock import Clock
from callme.server.model import Principal
from callme.server.outcomes import Granted
from callme.server.service import Service
from callme.server.settings import Settings
from callme.server.store.sqlite import SQLiteStore
from callme.server.validation import AcquireRequest

WHO = Principal("bench", "admin", 1000)
LABELS = 50
SOLO = "solo"  # an environment without labels, in every state: its group is itself
GROUPED = "e0001"  # label L1: alone in its group at 4 environments, one of 40 at 2,000
DAY = 86400.0


def request(environment: str) -> AcquireRequest:
    return AcquireRequest(
        environment=environment, label=None, holder="bench", ttl=600, wait=0.0, queue=True, ticket=None,
        priority=0, metadata={"run": 1}, request_id=None,
    )  # fmt: skip


def fill(path: str, environments: int, tickets: int, events: int) -> None:
    """Write the environments and the history straight into a migrated file, in one fast transaction."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("BEGIN")
    now = time.time()
    names = [f"e{i:04}" for i in range(environments)]
    conn.executemany(
        "INSERT INTO environments (name, slots, labels, description, properties, maintenance, note, auto, "
        "created_at, updated_at) VALUES (?, 1, ?, '', '{}', 0, NULL, 0, ?, ?)",
        [(name, json.dumps([f"L{i % LABELS}"]), now, now) for i, name in enumerate(names)] + [(SOLO, "[]", now, now)],
    )
    has_labels_table = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'environment_labels'"
    ).fetchone()
    if has_labels_table:  # the schema of the flat-cost change: the labels table is kept by the store
        conn.executemany(
            "INSERT INTO environment_labels (label, environment) VALUES (?, ?)",
            [(f"L{i % LABELS}", name) for i, name in enumerate(names)],
        )
    # Ended history on the same environments, dated within the last day: nothing in it is old enough to be
    # pruned while the benchmark runs.
    lease_rows, ticket_rows = [], []
    for i in range(tickets):
        at = now - DAY + i * (DAY / max(tickets, 1)) / 2
        env = names[i % len(names)]
        state = ("granted", "left", "abandoned")[i % 3]
        lease_id = f"l_old{i}" if state == "granted" else None
        if lease_id is not None:
            lease_rows.append(
                (lease_id, env, "k_x", "h", "{}", i + 1, 600, at, at + 600, at, "bench", "released", at + 60,
                 f"t_old{i}", i + 1, None)
            )  # fmt: skip
        ticket_rows.append(
            (f"t_old{i}", i + 1, "bench", env, None, "h", 600, 0, "{}", at, at, f"r{i}", state, lease_id, at + 60)
        )
    conn.executemany(
        "INSERT INTO leases (id, environment, token, holder, metadata, fence, ttl, acquired_at, expires_at, "
        "touched_at, key_name, state, ended_at, ticket_id, seq, collect_by) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        lease_rows,
    )
    conn.executemany(
        "INSERT INTO tickets (id, seq, key_name, environment, label, holder, ttl, priority, metadata, enqueued_at, "
        "seen_at, request_id, state, lease_id, ended_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        ticket_rows,
    )
    conn.execute("UPDATE counters SET value = ? WHERE name IN ('fence', 'seq')", (tickets + 1,))
    batch = 100_000
    for start in range(0, events, batch):
        conn.executemany(
            "INSERT INTO events (at, kind, environment, lease, seq, fence, holder, actor, detail) "
            "VALUES (?, ?, ?, NULL, ?, ?, 'h', 'bench', NULL)",
            (
                (now - DAY + j * (DAY / events), ("acquired", "released")[j % 2], names[j % len(names)], j, j)
                for j in range(start, min(start + batch, events))
            ),
        )
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()


async def timed(fn: Callable[[], Awaitable[object]], runs: int, warmup: int) -> dict[str, float]:
    """p50 and p90 of the wall time of one run, and the mean CPU time of the process (every thread) per run:
    on a busy machine the CPU time still says what the work costs, when the wall time says who else ran."""
    for _ in range(warmup):
        await fn()
    samples = []
    cpu = time.process_time()
    for _ in range(runs):
        start = time.perf_counter()
        await fn()
        samples.append((time.perf_counter() - start) * 1000)
    cpu = (time.process_time() - cpu) * 1000 / runs
    return {"p50": percentile(samples, 50), "p90": percentile(samples, 90), "cpu": cpu}


async def measure(path: str, pairs: int, sync: bool) -> dict[str, dict[str, float]]:
    store = SQLiteStore(path, Clock())
    await store.open()
    if not sync:  # the queries' own cost, without the fsync of each commit (never do this in a server)
        store._conn.execute("PRAGMA synchronous = OFF")  # type: ignore[union-attr]  # idle: no transaction open
    try:
        svc = Service(store, Settings(default_ttl=600, max_ttl=3600))

        def pair(name: str) -> Callable[[], Awaitable[None]]:
            async def fn() -> None:
                granted = await svc.acquire(WHO, request(name))
                assert isinstance(granted, Granted)
                await svc.release(WHO, granted.lease.id, granted.token)

            return fn

        async def read_one() -> None:
            await svc.environments(GROUPED)

        return {
            "pair": await timed(pair(SOLO), pairs, warmup=20),
            "group_pair": await timed(pair(GROUPED), pairs, warmup=20),
            "get_one": await timed(read_one, pairs, warmup=5),
            "sweep": await timed(svc.sweep, pairs, warmup=5),
        }
    finally:
        await store.close()


def percentile(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1] if len(samples) > 1 else samples[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=300, help="timed operations of each kind per state")
    parser.add_argument("--environments", type=int, default=2000)
    parser.add_argument("--tickets", type=int, default=20_000, help="ended tickets in the history")
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the history")
    parser.add_argument("--no-sync", action="store_true", help="synchronous=OFF: time the queries, not the disk")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    import callme.server

    print(f"tree: {Path(callme.server.__file__).parent.parent}; synchronous={'OFF' if args.no_sync else 'FULL'}")
    states = [
        ("4 envs", 4, 0, 0),
        (f"{args.environments:,} envs", args.environments, 0, 0),
        ("4 envs + history", 4, args.tickets, args.events),
        (f"{args.environments:,} envs + history", args.environments, args.tickets, args.events),
    ]
    results: dict[str, dict[str, dict[str, float]]] = {}
    print(
        f"{'state':<22} {'pair p50':>9} {'cpu':>5} {'in group':>9} {'cpu':>5} {'get p50':>8} {'sweep p50':>10}"
        "   (ms; ratio of the p50s to 4 envs)"
    )
    for name, environments, tickets, events in states:
        with tempfile.TemporaryDirectory(prefix="callme-cost-") as tmp:
            path = str(Path(tmp) / "cost.db")

            async def migrate(path: str = path) -> None:
                store = SQLiteStore(path, Clock())
                await store.open()
                await store.close()

            asyncio.run(migrate())
            started = time.perf_counter()
            fill(path, environments, tickets, events)
            filled = time.perf_counter() - started
            figures = asyncio.run(measure(path, args.pairs, not args.no_sync))
        results[name] = figures
        pair, group, base = figures["pair"], figures["group_pair"], results[states[0][0]]
        print(
            f"{name:<22} {pair['p50']:9.2f} {pair['cpu']:5.2f} {group['p50']:9.2f} {group['cpu']:5.2f} "
            f"{figures['get_one']['p50']:8.2f} {figures['sweep']['p50']:10.2f}   "
            f"x{pair['p50'] / base['pair']['p50']:.2f} x{group['p50'] / base['group_pair']['p50']:.2f}"
            f"  (filled in {filled:.1f} s)",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
