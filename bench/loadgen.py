"""The load generator: raw asyncio sockets, one keep-alive connection per worker, closed loop.

Why raw sockets and not httpx: httpx costs ~150 µs of client CPU per request, which on one core caps a
generator at a few thousand requests/s, below the no-op route we compare against. A request here is one
`write` of prebuilt bytes and a `readuntil`/`readexactly` of the answer (HTTP/1.1, Content-Length or chunked;
RESP for Redis). Every measurement also records the generator's own CPU time, so the table can say whether
the generator had idle time (it is not the bottleneck when its CPU share of its core is well below 100 %).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


class HttpError(RuntimeError):
    pass


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    at: float  # perf_counter() when the status line arrived

    def json(self) -> Any:
        return json.loads(self.body)


class Http:
    """One HTTP/1.1 keep-alive connection to host:port."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> Http:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
        return self

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def build(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> bytes:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        payload = b""
        if body is not None:
            payload = body if isinstance(body, bytes) else json.dumps(body).encode()
            lines.append("Content-Type: application/json")
        if body is not None or method in ("POST", "PUT"):
            lines.append(f"Content-Length: {len(payload)}")
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload

    async def send(self, raw: bytes) -> None:
        if self.writer is None:
            await self.connect()
        assert self.writer is not None
        self.writer.write(raw)

    async def receive(self) -> Response:
        assert self.reader is not None
        head = await self.reader.readuntil(b"\r\n\r\n")
        at = time.perf_counter()
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise HttpError(f"bad status line {status_line!r}")
        headers = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                chunks.append(chunk[:-2])
            body = b"".join(chunks)
        else:
            body = b""
        if headers.get("connection", "").lower() == "close":
            self.close()
        return Response(int(parts[1]), headers, body, at)

    async def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> Response:
        await self.send(self.build(method, path, body, headers))
        return await self.receive()

    async def raw(self, raw: bytes) -> Response:
        await self.send(raw)
        return await self.receive()


class Redis:
    """One RESP connection; commands as lists of bytes, answers parsed just enough to check them."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> Redis:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    @staticmethod
    def encode(*args: str | bytes | int) -> bytes:
        out = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
        return b"".join(out)

    async def command(self, raw: bytes) -> Any:
        assert self.writer is not None
        self.writer.write(raw)
        return await self._read()

    async def _read(self) -> Any:
        assert self.reader is not None
        line = await self.reader.readuntil(b"\r\n")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise HttpError(f"redis: {rest.decode()}")
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            return (await self.reader.readexactly(size + 2))[:-2]
        if kind == b"*":
            return [await self._read() for _ in range(int(rest))]
        raise HttpError(f"redis: unexpected {line!r}")


def cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) that process `pid` has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def percentile(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


# Cumulative CPU seconds of something measured (several processes, a process tree), read before and after a window.
CpuMeter = Callable[[], float]


def cpu_of_all(pids: Sequence[int]) -> CpuMeter:
    """The CPU seconds used so far by all of `pids` (three replicas, say)."""
    return lambda: sum(cpu_of(pid) for pid in pids)


@dataclass
class Window:
    """One closed-loop measurement: `ops` operations completed in `seconds`."""

    ops: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    generator_cpu: float = 0.0  # share of one core the generator used in the window
    peer_cpu: float = 0.0  # share of one core the measured process used in the window
    cpu: dict[str, float] = field(default_factory=dict)  # share of one core of each of the `meters`

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0


# A worker: `prepare()` opens its connection and returns `one()`, which does one operation (a pair, a GET...).
Op = Callable[[], Awaitable[None]]
Prepare = Callable[[int], Awaitable[tuple[Op, Callable[[], None]]]]


async def closed_loop(
    prepare: Prepare,
    workers: int,
    warmup: float,
    duration: float,
    pid: int | None,
    meters: Mapping[str, CpuMeter] | None = None,
) -> Window:
    """`workers` tasks doing operations back to back; counts only what completes inside the measured window."""
    meters = meters or {}
    ops = await asyncio.gather(*(prepare(i) for i in range(workers)))
    state = {"measuring": False, "stop": False}
    count = [0]
    latencies: list[float] = []

    async def run(one: Op) -> None:
        while not state["stop"]:
            started = time.perf_counter()
            await one()
            if state["measuring"]:
                count[0] += 1
                latencies.append(time.perf_counter() - started)

    tasks = [asyncio.create_task(run(one)) for one, _ in ops]
    try:
        await _sleep_or_fail(tasks, warmup)
        peer_before = cpu_of(pid) if pid else 0.0
        meters_before = {name: meter() for name, meter in meters.items()}
        cpu_before, started = cpu_self(), time.perf_counter()
        state["measuring"] = True
        await _sleep_or_fail(tasks, duration)
        state["measuring"] = False
        elapsed = time.perf_counter() - started
        generator = (cpu_self() - cpu_before) / elapsed
        peer = (cpu_of(pid) - peer_before) / elapsed if pid else 0.0
        shares = {name: (meter() - meters_before[name]) / elapsed for name, meter in meters.items()}
        state["stop"] = True
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)
    finally:
        for task in tasks:
            task.cancel()
        for _, close in ops:
            close()
    return Window(count[0], elapsed, latencies, generator, peer, shares)


async def _sleep_or_fail(tasks: list[asyncio.Task[None]], seconds: float) -> None:
    done, _ = await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_EXCEPTION)
    for task in done:
        task.result()  # a worker that failed stops the measurement with its error


async def repeated(
    prepare: Prepare,
    workers: int,
    warmup: float,
    duration: float,
    reps: int,
    pid: int | None,
    meters: Mapping[str, CpuMeter] | None = None,
) -> dict:
    """`reps` closed-loop windows; the median rate and the window that had it (CPU shares: medians)."""
    return summary([await closed_loop(prepare, workers, warmup, duration, pid, meters) for _ in range(reps)])


def summary(windows: Sequence[Window]) -> dict:
    """The median rate of `windows`, the latencies of the window that had it, the median CPU shares."""
    rates = [w.rate for w in windows]
    median = statistics.median(rates)
    chosen = min(windows, key=lambda w: abs(w.rate - median))
    return {
        "rate": median,
        "rates": [round(r, 1) for r in rates],
        "p50_ms": percentile(chosen.latencies, 50) * 1000,
        "p99_ms": percentile(chosen.latencies, 99) * 1000,
        "generator_cpu": round(statistics.median(w.generator_cpu for w in windows), 3),
        "peer_cpu": round(statistics.median(w.peer_cpu for w in windows), 3),
        "cpu": {name: round(statistics.median(w.cpu[name] for w in windows), 3) for name in windows[0].cpu},
        "ops": sum(w.ops for w in windows),
    }
