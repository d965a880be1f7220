"""The figures of `bench/run.py`, each measuring call-me beside its peer in the same run.

Each figure is an async function of a `Context`; it appends table rows (`ctx.row(...)`) and returns its raw
numbers for the JSON. Counts and durations come from `Plan` (full or `--quick`).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pg
from cli_cold_start import interleaved
from loadgen import (
    Http,
    HttpError,
    Prepare,
    Redis,
    Response,
    Window,
    closed_loop,
    cpu_of_all,
    percentile,
    repeated,
    rss_kib,
    summary,
)
from peers import API_KEY, CALLME_DURABILITY, GENERATOR_CORE, Proc, Processes, b64, pin, wait_http

HOST = "127.0.0.1"
PG_SECRET = "bench-secret-shared-by-every-replica-0123456789"  # replicas on one PostgreSQL share one (CALL_ME_SECRET)
KEY = {"X-API-KEY": API_KEY}


@dataclass(frozen=True)
class Plan:
    clients: tuple[int, ...] = (1, 16, 64)
    environments: int = 512
    warmup: float = 1.0
    duration: float = 5.0
    reps: int = 3
    handoff_samples: int = 60
    park_before_release: float = 0.2
    scale_environments: int = 2000
    scale_labels: int = 50
    scale_waiters: int = 2000
    history_events: int = 1_000_000
    sequential_duration: float = 3.0
    parked: int = 10_000
    parked_per_environment: int = 20
    park_cap: float = 90.0
    healthz_samples: int = 500
    cli_runs: int = 20
    pg_clients: int = 64
    pg_replicas: tuple[int, ...] = (1, 3)

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            clients=(1, 4),
            environments=8,
            warmup=0.2,
            duration=0.5,
            reps=1,
            handoff_samples=5,
            park_before_release=0.15,
            scale_environments=20,
            scale_labels=5,
            scale_waiters=20,
            history_events=2000,
            sequential_duration=0.3,
            parked=40,
            parked_per_environment=10,
            park_cap=15.0,
            healthz_samples=20,
            cli_runs=2,
            pg_clients=4,
        )


@dataclass
class Context:
    plan: Plan
    procs: Processes
    peers: set[str]  # the peers installed: etcd, redis, wrk
    cli_venvs: list[Path] = field(default_factory=list)  # more installs whose `call-me` the cli figure times
    rows: list[dict[str, Any]] = field(default_factory=list)
    durability: dict[str, str] = field(default_factory=lambda: {"call-me": CALLME_DURABILITY})

    def row(
        self,
        figure: str,
        what: str,
        callme: float | None,
        unit: str,
        peer: str,
        peer_value: float | None,
        peer_unit: str = "",
        *,
        ratio: float | None = None,
        target: str = "",
        note: str = "",
    ) -> None:
        if ratio is None and callme is not None and peer_value:
            ratio = callme / peer_value
        self.rows.append(
            {
                "figure": figure,
                "what": what,
                "callme": callme,
                "unit": unit,
                "peer": peer,
                "peer_value": peer_value,
                "peer_unit": peer_unit or unit,
                "ratio": ratio,
                "target": target,
                "note": note,
            }
        )

    def say(self, text: str) -> None:
        print(f"bench: {text}", file=sys.stderr, flush=True)


# -- workers ----------------------------------------------------------------------------------------------


def callme_pairs(proc: Proc | Sequence[Proc], environments: list[str], workers: int) -> Prepare:
    """Worker i acquires and releases its own environments (i, i + workers, ...) in turn; with several replicas,
    on replica i mod their number."""
    replicas = [proc] if isinstance(proc, Proc) else list(proc)

    async def prepare(i: int) -> tuple[Any, Any]:
        conn = await Http(HOST, replicas[i % len(replicas)].port).connect()
        mine = environments[i::workers] or [environments[i % len(environments)]]
        acquires = itertools.cycle([conn.build("POST", "/v1/leases", {"environment": e}, KEY) for e in mine])

        async def one() -> None:
            got = await conn.raw(next(acquires))
            if got.status != 201:
                raise HttpError(f"acquire: {got.status} {got.body[:200]!r}")
            lease = got.json()
            headers = {**KEY, "X-Lease-Token": lease["token"]}
            done = await conn.request("DELETE", f"/v1/leases/{lease['id']}", headers=headers)
            if done.status != 204:
                raise HttpError(f"release: {done.status} {done.body[:200]!r}")

        return one, conn.close

    return prepare


def http_get(port: int, path: str) -> Prepare:
    async def prepare(i: int) -> tuple[Any, Any]:
        conn = await Http(HOST, port).connect()
        raw = conn.build("GET", path)

        async def one() -> None:
            got = await conn.raw(raw)
            if got.status != 200:
                raise HttpError(f"GET {path}: {got.status}")

        return one, conn.close

    return prepare


async def etcd_lease(conn: Http, ttl: int = 120) -> str:
    got = await conn.request("POST", "/v3/lease/grant", {"TTL": ttl})
    return str(got.json()["ID"])


def etcd_pairs(proc: Proc, names: list[str], workers: int) -> Prepare:
    """etcd's v3 lock API through its HTTP/JSON gateway: one lease per client (as a concurrency.Session)."""

    async def prepare(i: int) -> tuple[Any, Any]:
        conn = await Http(HOST, proc.port).connect()
        lease = await etcd_lease(conn)
        mine = names[i::workers] or [names[i % len(names)]]
        locks = itertools.cycle([conn.build("POST", "/v3/lock/lock", {"name": b64(n), "lease": lease}) for n in mine])

        async def one() -> None:
            got = await conn.raw(next(locks))
            if got.status != 200 or "key" not in got.json():
                raise HttpError(f"etcd lock: {got.status} {got.body[:200]!r}")
            done = await conn.request("POST", "/v3/lock/unlock", {"key": got.json()["key"]})
            if done.status != 200:
                raise HttpError(f"etcd unlock: {done.status} {done.body[:200]!r}")

        return one, conn.close

    return prepare


RELEASE_LUA = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"


def redis_pairs(proc: Proc, names: list[str], workers: int) -> Prepare:
    """SET key token NX PX 60000, then the compare-and-delete script (EVALSHA): two round trips, as call-me."""

    async def prepare(i: int) -> tuple[Any, Any]:
        conn = await Redis(HOST, proc.port).connect()
        sha = await conn.command(Redis.encode("SCRIPT", "LOAD", RELEASE_LUA))
        mine = names[i::workers] or [names[i % len(names)]]
        token = f"token-{i}"
        steps = itertools.cycle(
            [
                (Redis.encode("SET", n, token, "NX", "PX", 60000), Redis.encode("EVALSHA", sha, 1, n, token))
                for n in mine
            ]
        )

        async def one() -> None:
            take, give = next(steps)
            if await conn.command(take) != "OK":
                raise HttpError("redis SET NX refused")
            if await conn.command(give) != 1:
                raise HttpError("redis release found another token")

        return one, conn.close

    return prepare


async def declare(proc: Proc, names: list[str], labels: Callable[[int], list[str]], workers: int = 16) -> float:
    """PUT every environment (concurrently); returns the seconds it took."""
    queue = list(enumerate(names))
    started = time.perf_counter()

    async def worker() -> None:
        conn = await Http(HOST, proc.port).connect()
        try:
            while queue:
                i, name = queue.pop()
                got = await conn.request("PUT", f"/v1/environments/{name}", {"slots": 1, "labels": labels(i)}, KEY)
                if got.status not in (200, 201):
                    raise HttpError(f"PUT {name}: {got.status} {got.body[:200]!r}")
        finally:
            conn.close()

    await asyncio.gather(*(worker() for _ in range(min(workers, len(names)))))
    return time.perf_counter() - started


def wrk(port: int, path: str, connections: int, seconds: float) -> dict[str, float] | None:
    """wrk on the generator's core: requests/s and its own latency percentiles."""
    command = [*pin(GENERATOR_CORE), "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"]
    done = subprocess.run([*command, f"http://{HOST}:{port}{path}"], capture_output=True, text=True, timeout=120)
    found = re.search(r"Requests/sec:\s+([\d.]+)", done.stdout)
    if done.returncode != 0 or not found:
        return None
    return {"rate": float(found.group(1))}


# -- figure 1: durable pairs/s ------------------------------------------------------------------------------


async def fig_pairs(ctx: Context) -> dict[str, Any]:
    plan = ctx.plan
    count = max(plan.environments, max(plan.clients))
    names = [f"env-{i:04d}" for i in range(count)]
    callme = ctx.procs.callme()
    ctx.durability["call-me"] = callme.durability
    took = await declare(callme, names, lambda i: [])
    ctx.say(f"pairs: declared {count} environments in {took:.1f} s")
    etcd = ctx.procs.etcd() if "etcd" in ctx.peers else None
    redis = ctx.procs.redis() if "redis" in ctx.peers else None
    for peer in (etcd, redis):
        if peer is not None:
            ctx.durability[peer.name] = peer.durability
    out: dict[str, Any] = {"environments": count, "by_clients": {}}
    try:
        for n in plan.clients:
            ctx.say(f"pairs: {n} clients")
            run = {
                "callme_pairs": await repeated(
                    callme_pairs(callme, names, n), n, plan.warmup, plan.duration, plan.reps, callme.pid
                ),
                "callme_healthz": await repeated(
                    http_get(callme.port, "/healthz"), n, plan.warmup, plan.duration, plan.reps, callme.pid
                ),
            }
            if etcd is not None:
                run["etcd_pairs"] = await repeated(
                    etcd_pairs(etcd, names, n), n, plan.warmup, plan.duration, plan.reps, etcd.pid
                )
            if redis is not None:
                run["redis_pairs"] = await repeated(
                    redis_pairs(redis, names, n), n, plan.warmup, plan.duration, plan.reps, redis.pid
                )
            if "wrk" in ctx.peers:
                run["callme_healthz_wrk"] = wrk(callme.port, "/healthz", n, plan.duration)
            out["by_clients"][n] = run
            pairs = run["callme_pairs"]
            note = f"p50 {pairs['p50_ms']:.1f} ms; server CPU {pairs['peer_cpu']:.0%}"
            note += f", gen CPU {pairs['generator_cpu']:.0%}"
            hz = run["callme_healthz"]
            ctx.row(
                "pairs/s",
                f"{n} clients",
                pairs["rate"],
                "pairs/s",
                "same server GET /healthz (same generator)",
                hz["rate"],
                "req/s",
                target="≥ 0.5×" if n == max(plan.clients) else "",
                note=note + f"; healthz: server CPU {hz['peer_cpu']:.0%}, gen CPU {hz['generator_cpu']:.0%}",
            )
            if run.get("callme_healthz_wrk"):
                ctx.row(
                    "pairs/s",
                    f"{n} clients",
                    pairs["rate"],
                    "pairs/s",
                    "same server GET /healthz (wrk)",
                    run["callme_healthz_wrk"]["rate"],
                    "req/s",
                )
            for peer_name, label, target in (
                ("etcd_pairs", "etcd lock+unlock (gateway)", "≥ 2×"),
                ("redis_pairs", "Redis SET NX + Lua del", ""),
            ):
                if peer_name in run:
                    peer_run = run[peer_name]
                    ctx.row(
                        "pairs/s",
                        f"{n} clients",
                        pairs["rate"],
                        "pairs/s",
                        label,
                        peer_run["rate"],
                        target=target if n == max(plan.clients) else "",
                        note=f"peer p50 {peer_run['p50_ms']:.1f} ms, peer CPU {peer_run['peer_cpu']:.0%}",
                    )
                else:
                    ctx.row("pairs/s", f"{n} clients", pairs["rate"], "pairs/s", label + ": not installed", None)
    finally:
        for proc in (callme, etcd, redis):
            if proc is not None:
                ctx.procs.stop(proc)
    return out


# -- figure 2: hand-off latency -----------------------------------------------------------------------------


async def handoff_callme(proc: Proc, samples: int, park: float) -> list[float]:
    holder, waiter = await Http(HOST, proc.port).connect(), await Http(HOST, proc.port).connect()
    latencies = []
    try:
        for _ in range(samples):
            got = await holder.request("POST", "/v1/leases", {"environment": "handoff"}, KEY)
            if got.status != 201:
                raise HttpError(f"hand-off acquire: {got.status} {got.body[:200]!r}")
            lease = got.json()
            await waiter.send(waiter.build("POST", "/v1/leases", {"environment": "handoff", "wait": 20}, KEY))
            parked = asyncio.create_task(waiter.receive())
            await asyncio.sleep(park)
            if parked.done():
                raise HttpError(f"the waiter was answered before the release: {parked.result().status}")
            sent = time.perf_counter()
            done = await holder.request(
                "DELETE", f"/v1/leases/{lease['id']}", headers={**KEY, "X-Lease-Token": lease["token"]}
            )
            if done.status != 204:
                raise HttpError(f"hand-off release: {done.status}")
            answer: Response = await asyncio.wait_for(parked, 30)
            if answer.status != 201:
                raise HttpError(f"the waiter got {answer.status}, not its lease: {answer.body[:200]!r}")
            latencies.append(answer.at - sent)
            second = answer.json()
            headers = {**KEY, "X-Lease-Token": second["token"]}
            if (await waiter.request("DELETE", f"/v1/leases/{second['id']}", headers=headers)).status != 204:
                raise HttpError("hand-off: the waiter's release failed")
    finally:
        holder.close()
        waiter.close()
    return latencies


async def handoff_etcd(proc: Proc, samples: int, park: float) -> list[float]:
    holder, waiter = await Http(HOST, proc.port).connect(), await Http(HOST, proc.port).connect()
    holder_lease, waiter_lease = await etcd_lease(holder), await etcd_lease(waiter)
    name = b64("handoff")
    latencies = []
    try:
        for _ in range(samples):
            got = await holder.request("POST", "/v3/lock/lock", {"name": name, "lease": holder_lease})
            key = got.json()["key"]
            await waiter.send(waiter.build("POST", "/v3/lock/lock", {"name": name, "lease": waiter_lease}))
            parked = asyncio.create_task(waiter.receive())
            await asyncio.sleep(park)
            if parked.done():
                raise HttpError("etcd: the waiter got the lock before the release")
            sent = time.perf_counter()
            if (await holder.request("POST", "/v3/lock/unlock", {"key": key})).status != 200:
                raise HttpError("etcd unlock failed")
            answer = await asyncio.wait_for(parked, 30)
            if answer.status != 200:
                raise HttpError(f"etcd waiter got {answer.status}")
            latencies.append(answer.at - sent)
            await waiter.request("POST", "/v3/lock/unlock", {"key": answer.json()["key"]})
    finally:
        holder.close()
        waiter.close()
    return latencies


def summary_ms(latencies: list[float]) -> dict[str, float]:
    return {
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "max_ms": max(latencies) * 1000 if latencies else float("nan"),
        "samples": len(latencies),
    }


async def fig_handoff(ctx: Context) -> dict[str, Any]:
    plan = ctx.plan
    callme = ctx.procs.callme()
    ctx.durability["call-me"] = callme.durability
    try:
        await handoff_callme(callme, 2, plan.park_before_release)  # warm-up
        ours = summary_ms(await handoff_callme(callme, plan.handoff_samples, plan.park_before_release))
    finally:
        ctx.procs.stop(callme)
    out: dict[str, Any] = {"callme": ours, "park_before_release_s": plan.park_before_release}
    if "etcd" in ctx.peers:
        etcd = ctx.procs.etcd()
        ctx.durability["etcd"] = etcd.durability
        try:
            await handoff_etcd(etcd, 2, plan.park_before_release)
            out["etcd"] = summary_ms(await handoff_etcd(etcd, plan.handoff_samples, plan.park_before_release))
        finally:
            ctx.procs.stop(etcd)
    theirs = out.get("etcd", {})
    label = "etcd lock hand-off (gateway)" if theirs else "etcd: not installed"
    for q, target in (("p50_ms", "≤ 1.5 ms, < etcd"), ("p99_ms", "≤ 4 ms, < etcd")):
        ctx.row(
            "hand-off",
            q.split("_")[0],
            ours[q],
            "ms",
            label,
            theirs.get(q),
            target=target,
            note=f"{ours['samples']} samples, waiter parked {plan.park_before_release * 1000:.0f} ms before the DELETE",
        )
    return out


# -- figure 3: pair latency at size -------------------------------------------------------------------------


async def sequential_pairs(ctx: Context, proc: Proc, names: list[str]) -> dict[str, Any]:
    plan = ctx.plan
    return await repeated(callme_pairs(proc, names, 1), 1, plan.warmup, plan.sequential_duration, plan.reps, proc.pid)


def write_history(database: Path, events: int, environments: list[str]) -> dict[str, Any]:
    """`events` audit events (acquired/released pairs) and their ended leases, written straight into the file."""
    started = time.perf_counter()
    now = time.time()
    span = 60 * 86400.0  # inside the default 90 days that pruning keeps
    pairs = events // 2
    conn = sqlite3.connect(database)
    try:
        conn.execute("PRAGMA synchronous = OFF")
        fence = int(conn.execute("SELECT value FROM counters WHERE name = 'fence'").fetchone()[0])

        def event_rows() -> Any:
            for k in range(pairs):
                at = now - span + span * k / pairs
                env = environments[k % len(environments)] if k % 2 else f"branch-{k % 5000}"
                lease = f"l_hist{k:09d}"
                yield (at, "acquired", env, lease, None, fence + k + 1, "bench", "bench", None)
                yield (at + 30, "released", env, lease, None, fence + k + 1, "bench", "bench", None)

        with conn:
            conn.executemany(
                "INSERT INTO events (at, kind, environment, lease, seq, fence, holder, actor, detail)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                event_rows(),
            )
        leases = "events only"
        try:
            with conn:
                conn.executemany(
                    "INSERT INTO leases (id, environment, token, holder, metadata, fence, ttl, acquired_at,"
                    " expires_at, touched_at, key_name, state, ended_at) VALUES"
                    " (?, ?, 'k_x', 'bench', '{}', ?, 3600, ?, ?, ?, 'admin', 'released', ?)",
                    (
                        (
                            f"l_hist{k:09d}",
                            environments[k % len(environments)] if k % 2 else f"branch-{k % 5000}",
                            fence + k + 1,
                            now - span + span * k / pairs,
                            now - span + span * k / pairs + 3600,
                            now - span + span * k / pairs,
                            now - span + span * k / pairs + 30,
                        )
                        for k in range(pairs)
                    ),
                )
                conn.execute("UPDATE counters SET value = ? WHERE name = 'fence'", (fence + pairs,))
            leases = f"{pairs} ended leases"
        except sqlite3.Error as exc:
            leases = f"events only (leases not written: {exc})"
    finally:
        conn.close()
    return {"events": pairs * 2, "also": leases, "seconds": round(time.perf_counter() - started, 2)}


async def park_waiters(proc: Proc, targets: list[str], wait: float) -> tuple[list[Http], list[asyncio.Task[Response]]]:
    """One connection per waiter, each a long-poll on its target; returns them with their pending answers."""
    conns: list[Http] = []
    tasks: list[asyncio.Task[Response]] = []
    gate = asyncio.Semaphore(256)

    async def one(target: str) -> None:
        async with gate:
            conn = await Http(HOST, proc.port).connect()
        conns.append(conn)
        await conn.send(conn.build("POST", "/v1/leases", {"environment": target, "wait": wait}, KEY))
        task = asyncio.create_task(conn.receive())
        task.add_done_callback(_consume)  # a waiter cut off when its server stops is no error of the run
        tasks.append(task)

    await asyncio.gather(*(one(t) for t in targets))
    return conns, tasks


def _consume(task: asyncio.Task[Response]) -> None:
    if not task.cancelled():
        task.exception()


async def waiting_tickets(proc: Proc, conn: Http) -> int:
    """Tickets waiting on the server, from /metrics (callme_waiters, summed over environments)."""
    got = await conn.request("GET", "/metrics", headers=KEY)
    total = 0.0
    for line in got.body.decode().splitlines():
        if line.startswith("callme_waiters{") or line.startswith("callme_waiters "):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


async def until_parked(proc: Proc, expected: int, cap: float) -> tuple[float, int]:
    """Seconds until `expected` tickets wait (or the cap), and how many did."""
    started = time.perf_counter()
    conn = await Http(HOST, proc.port).connect()
    try:
        while True:
            seen = await waiting_tickets(proc, conn)
            if seen >= expected or time.perf_counter() - started > cap:
                return time.perf_counter() - started, seen
            await asyncio.sleep(0.1)
    finally:
        conn.close()


async def hold(proc: Proc, names: list[str], workers: int = 16) -> None:
    queue = list(names)

    async def worker() -> None:
        conn = await Http(HOST, proc.port).connect()
        try:
            while queue:
                name = queue.pop()
                got = await conn.request("POST", "/v1/leases", {"environment": name, "ttl": 3600}, KEY)
                if got.status != 201:
                    raise HttpError(f"hold {name}: {got.status}")
        finally:
            conn.close()

    await asyncio.gather(*(worker() for _ in range(min(workers, len(names)))))


async def fig_scale(ctx: Context) -> dict[str, Any]:
    plan = ctx.plan
    out: dict[str, Any] = {}
    small = [f"env-{i}" for i in range(4)]

    # The reference: 4 environments, empty history.
    base = ctx.procs.callme()
    try:
        await declare(base, small, lambda i: [])
        out["base"] = await sequential_pairs(ctx, base, small)
    finally:
        ctx.procs.stop(base)
    reference = out["base"]["p50_ms"]
    ctx.say(f"scale: base p50 {reference:.2f} ms")

    # Many declared environments with labels, then the same server with parked waiters beside.
    many = [f"env-{i:05d}" for i in range(plan.scale_environments)]
    big = ctx.procs.callme(env={"CALL_ME_MAX_WAIT": "300"})
    conns: list[Http] = []
    try:
        took = await declare(big, many, lambda i: [f"label-{i % plan.scale_labels}"])
        out["declare"] = {"seconds": round(took, 2), "puts_per_s": round(len(many) / took, 1)}
        ctx.say(f"scale: declared {len(many)} environments in {took:.1f} s")
        out["many"] = await sequential_pairs(ctx, big, many)
        held = many[: len(many) // 2]
        await hold(big, held)
        per = max(1, plan.scale_waiters // len(held))
        started = time.perf_counter()
        conns, tasks = await park_waiters(big, [e for e in held for _ in range(per)], 300)
        parked_in, parked = await until_parked(big, len(tasks), plan.park_cap)
        out["waiters"] = {
            "count": len(tasks),
            "parked": parked,
            "park_seconds": round(time.perf_counter() - started, 2),
        }
        ctx.say(f"scale: {parked} waiters parked in {parked_in:.1f} s")
        out["beside_waiters"] = await sequential_pairs(ctx, big, many[len(many) // 2 :])
        early = sum(1 for t in tasks if t.done())
        out["waiters"]["answered_before_the_end"] = early
    finally:
        for conn in conns:
            conn.close()
        ctx.procs.stop(big)

    # A large history, written into the file before the server starts.
    seeded = ctx.procs.callme()
    database = Path(seeded.extra["database"])
    ctx.procs.stop(seeded)
    out["history"] = write_history(database, plan.history_events, small)
    ctx.say(f"scale: wrote {out['history']['events']} events in {out['history']['seconds']} s")
    aged = ctx.procs.callme(database=database)
    try:
        await declare(aged, small, lambda i: [])
        out["with_history"] = await sequential_pairs(ctx, aged, small)
    finally:
        ctx.procs.stop(aged)

    for key, what in (
        ("many", f"{plan.scale_environments:,} environments, {plan.scale_labels} labels"),
        ("beside_waiters", f"beside {out['waiters']['parked']:,} parked waiters"),
        ("with_history", f"{out['history']['events']:,} history events"),
    ):
        note = f"p99 {out[key]['p99_ms']:.1f} ms"
        if key == "many":
            note += f"; declared at {out['declare']['puts_per_s']} PUT/s"
        if key == "beside_waiters":
            note += f"; parked in {out['waiters']['park_seconds']} s"
        if key == "with_history":
            note += f"; generated in {out['history']['seconds']} s ({out['history']['also']})"
        ctx.row(
            "pair p50",
            what,
            out[key]["p50_ms"],
            "ms",
            "4 environments, empty history",
            reference,
            target="≤ 1.2×",
            note=note,
        )
    return out


# -- figure 4: many parked long-polls ------------------------------------------------------------------------


async def fig_parked(ctx: Context) -> dict[str, Any]:
    plan = ctx.plan
    n = plan.parked
    targets_count = max(1, n // plan.parked_per_environment)
    names = [f"busy-{i:05d}" for i in range(targets_count)]
    proc = ctx.procs.callme(env={"CALL_ME_MAX_WAIT": "300"})
    out: dict[str, Any] = {"waiters": n, "environments": targets_count}
    conns: list[Http] = []
    try:
        await hold(proc, names)
        await handoff_callme(proc, 2, 0.05)  # the long-poll path warmed up
        before = rss_kib(proc.pid)
        started = time.perf_counter()
        conns, tasks = await park_waiters(proc, [names[i % targets_count] for i in range(n)], 300)
        _, parked = await until_parked(proc, n, plan.park_cap)
        out["park_seconds"] = round(time.perf_counter() - started, 2)
        out["parked"] = parked
        await asyncio.sleep(0.5)
        after = rss_kib(proc.pid)
        out["rss_before_kib"], out["rss_after_kib"] = before, after
        out["kib_per_waiter"] = (after - before) / max(1, parked)
        ctx.say(f"parked: {parked}/{n} in {out['park_seconds']} s, {out['kib_per_waiter']:.1f} KiB each")

        probe = await Http(HOST, proc.port).connect()
        latencies = []
        try:
            for _ in range(plan.healthz_samples):
                sent = time.perf_counter()
                got = await probe.request("GET", "/healthz")
                latencies.append(got.at - sent)
        finally:
            probe.close()
        out["healthz"] = summary_ms(latencies)
        out["answered_before_sigterm"] = sum(1 for t in tasks if t.done())

        assert proc.popen is not None
        exited = asyncio.create_task(asyncio.to_thread(proc.popen.wait, 60))
        sent = time.perf_counter()
        proc.popen.send_signal(signal.SIGTERM)
        done, pending = await asyncio.wait(tasks, timeout=60)
        answers = [t.result() for t in done if not t.exception()]
        out["answered_after_sigterm"] = sum(1 for a in answers if a.status in (201, 202))
        out["statuses"] = dict(collections.Counter(str(a.status) for a in answers))
        out["unanswered"] = len(pending) + sum(1 for t in done if t.exception())
        out["all_answered_s"] = max((a.at for a in answers), default=sent) - sent
        await exited
        out["exit_s"] = time.perf_counter() - sent
        out["exit_code"] = proc.popen.returncode
        for task in pending:
            task.cancel()
    finally:
        for conn in conns:
            conn.close()
        ctx.procs.stop(proc)

    ctx.row(
        "parked",
        f"{n:,} long-polls: memory",
        out["kib_per_waiter"],
        "KiB/waiter",
        "",
        None,
        target="≤ 12 KB",
        note=f"VmRSS {out['rss_before_kib'] / 1024:.0f} → {out['rss_after_kib'] / 1024:.0f} MiB",
    )
    ctx.row(
        "parked",
        "time to park them all",
        out["park_seconds"],
        "s",
        "",
        None,
        target="≤ 5 s",
        note=f"{out['parked']}/{n} parked (/metrics callme_waiters)",
    )
    ctx.row(
        "parked",
        "/healthz while parked",
        out["healthz"]["p99_ms"],
        "ms p99",
        "",
        None,
        target="≤ 5 ms",
        note=f"p50 {out['healthz']['p50_ms']:.2f} ms, {out['healthz']['samples']} sequential GETs",
    )
    ctx.row(
        "parked",
        "SIGTERM → all answered",
        out["all_answered_s"],
        "s",
        "",
        None,
        target="≤ 3 s",
        note=f"{out['answered_after_sigterm']} answered 201/202 {out['statuses']}, {out['unanswered']} cut off"
        f" ({out['answered_before_sigterm']} had been answered before it)",
    )
    ctx.row(
        "parked", "SIGTERM → exit", out["exit_s"], "s", "", None, target="≤ 3 s", note=f"exit code {out['exit_code']}"
    )
    return out


# -- figure 5: the CLI ------------------------------------------------------------------------------------


async def fig_cli(ctx: Context) -> dict[str, Any]:
    plan = ctx.plan
    proc = ctx.procs.callme()
    # This venv's call-me (the dev install), then each --cli-venv's (a plain `pip install .` has no dev tools).
    installs = {
        "": Path(proc.command[-1]).parent,
        **{f" ({venv.parent.name}/{venv.name})": venv / "bin" for venv in ctx.cli_venvs},
    }
    for bin_dir in installs.values():
        if not (bin_dir / "call-me").exists():
            raise FileNotFoundError(f"no call-me in {bin_dir}")
    state = proc.workdir / "cli-state.json"
    env = dict(
        os.environ, CALL_ME_URL=f"http://{HOST}:{proc.port}", CALL_ME_API_KEY=API_KEY, CALL_ME_STATE_FILE=str(state)
    )
    counter = itertools.count()

    def help_of(call_me: str) -> Callable[[], list[str]]:
        return lambda: [call_me, "--help"]

    def request_of(call_me: str) -> Callable[[], list[str]]:
        return lambda: [call_me, "request", f"cli-{next(counter)}", "--no-wait"]

    commands: dict[str, Callable[[], list[str]]] = {"python -c pass": lambda: [sys.executable, "-c", "pass"]}
    for suffix, bin_dir in installs.items():
        commands[f"call-me --help{suffix}"] = help_of(str(bin_dir / "call-me"))
        commands[f"call-me request ENV{suffix}"] = request_of(str(bin_dir / "call-me"))
    try:
        times = await asyncio.to_thread(interleaved, commands, plan.cli_runs, env)
    finally:
        ctx.procs.stop(proc)
    out = {name: {"median_ms": statistics.median(s) * 1000, "best_ms": min(s) * 1000} for name, s in times.items()}
    base = out["python -c pass"]["median_ms"]
    for suffix in installs:
        for what, target in (("call-me --help", "≤ 50 ms"), ("call-me request ENV", "≤ 250 ms")):
            name = what + suffix
            ctx.row(
                "CLI",
                name,
                out[name]["median_ms"],
                "ms",
                "python -c pass",
                base,
                target=target,
                note=f"best {out[name]['best_ms']:.1f} ms, {plan.cli_runs} interleaved runs",
            )
    return out


# -- figure 6: PostgreSQL, replicas beside pgbench ------------------------------------------------------------


async def fig_pg(ctx: Context) -> dict[str, Any]:
    """Pairs/s of 1 and 3 replicas on one durable PostgreSQL and pgbench's equivalent script on the same
    database (the replicas stopped), with the same clients; the cluster on core 0 beside the replicas. The three
    are interleaved, one window each per repetition, so that a change of the machine's load meets them alike."""
    plan = ctx.plan
    clients = plan.pg_clients
    label = f"pgbench, same SQL, {clients} clients"
    if "postgres" not in ctx.peers or (reason := pg.why_not()) is not None:
        reason = "not installed" if "postgres" not in ctx.peers else reason
        ctx.row("pg pairs/s", f"PostgreSQL: {reason}", None, "pairs/s", "", None)
        return {"skipped": reason}
    cluster = ctx.procs.postgres()
    assert cluster.dir is not None
    ctx.durability["postgres"] = pg.DURABILITY
    url = cluster.create_database(empty=True)
    postgres_cpu = pg.cluster_cpu(cluster.dir / "data")
    count = max(plan.environments, clients)
    names = [f"env-{i:04d}" for i in range(count)]
    durability = "PostgreSQL store: COMMIT (WAL flushed) before every 2xx"
    ctx.durability["call-me on PostgreSQL"] = durability
    parts = {"host": HOST, "port": str(cluster.port), "user": "postgres", "database": url.rpartition("/")[2]}
    variables = {
        "clients": str(clients),
        "per_client": str(count // clients),
        "events_lock": str(pg.EVENTS_LOCK),
        "channel": pg.CHANNEL,
    }
    declared = False
    windows: dict[int, list[Window]] = {n: [] for n in plan.pg_replicas}
    runs: list[dict[str, Any]] = []
    for rep in range(plan.reps):
        for n in plan.pg_replicas:
            ctx.say(f"pg: repetition {rep + 1}, {n} replica(s), {clients} clients")
            replicas = [
                ctx.procs.callme(database=url, start=False, durability=durability, env={"CALL_ME_SECRET": PG_SECRET})
                for _ in range(n)
            ]
            try:
                for proc in replicas:
                    ctx.procs.add(proc.start())  # at once: they migrate one after the other (an advisory lock)
                for proc in replicas:
                    wait_http(proc, "/readyz")
                if not declared:
                    took = await declare(replicas[0], names, lambda i: [])
                    ctx.say(f"pg: declared {count} environments in {took:.1f} s")
                    declared = True
                meters = {"call-me": cpu_of_all([p.pid for p in replicas]), "postgres": postgres_cpu}
                windows[n].append(
                    await closed_loop(
                        callme_pairs(replicas, names, clients), clients, plan.warmup, plan.duration, None, meters
                    )
                )
            finally:
                for proc in replicas:
                    ctx.procs.stop(proc)
        ctx.say(f"pg: repetition {rep + 1}, pgbench, {clients} clients")
        bench = [*pin(GENERATOR_CORE)]
        warmup, duration = max(1, round(plan.warmup)), max(1, round(plan.duration))
        await asyncio.to_thread(pg.pgbench, parts, clients, warmup, variables, bench, postgres_cpu)
        runs.append(await asyncio.to_thread(pg.pgbench, parts, clients, duration, variables, bench, postgres_cpu))
    out: dict[str, Any] = {"environments": count, "clients": clients}
    out["replicas"] = {n: summary(w) for n, w in windows.items()}
    rates = [r["rate"] for r in runs]
    chosen = min(runs, key=lambda r: abs(r["rate"] - statistics.median(rates)))
    out["pgbench"] = {**chosen, "rate": statistics.median(rates), "rates": [round(r, 1) for r in rates]}
    # Each repetition's own ratio: its windows ran side by side, so their spread shows the machine's noise.
    out["ratios"] = {n: [round(w.rate / r, 3) for w, r in zip(ws, rates, strict=True)] for n, ws in windows.items()}

    peer = out["pgbench"]
    for n, run in out["replicas"].items():
        cpu = run["cpu"]
        each = out["ratios"][n]
        ctx.row(
            "pg pairs/s",
            f"{n} replica{'s' if n > 1 else ''}, {clients} clients",
            run["rate"],
            "pairs/s",
            label,
            peer["rate"],
            target="≥ 0.7×" if n == max(plan.pg_replicas) else "",
            note=f"per repetition {min(each):.2f}-{max(each):.2f}×; p50 {run['p50_ms']:.1f} ms; "
            f"CPU call-me {cpu['call-me']:.0%}, postgres {cpu['postgres']:.0%}, "
            f"gen {run['generator_cpu']:.0%}; pgbench: {peer['latency_avg_ms']:.1f} ms avg, "
            f"postgres {peer['postgres_cpu']:.0%}, pgbench {peer['generator_cpu']:.0%}",
        )
    return out


FIGURES = {
    "pairs": fig_pairs,
    "handoff": fig_handoff,
    "scale": fig_scale,
    "parked": fig_parked,
    "cli": fig_cli,
    "pg": fig_pg,
}
