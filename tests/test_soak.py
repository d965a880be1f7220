"""Long mode (`./scripts/test --long`, never in CI): a soak of mixed operations with faults injected at random,
on each store, checked by the invariants and with the server's memory watched.

- SQLite: one server. Faults: SIGSTOP for a moment then SIGCONT; kill -9 and a restart on the same file (only in
  the first half of the run, so that the last server process lives through the second half, whose memory is
  watched).
- PostgreSQL: two replicas on one database. Faults: SIGSTOP/SIGCONT of either; kill -9 of the second and a
  restart; PostgreSQL restarted (`pg_ctl restart -m fast`) or stopped as by a crash (`-m immediate`) and started.
  The first replica is never killed: its memory is watched.

Clients run pipelines as CI does (acquire an environment or a label with long-polls, renew, release, or give up
and leave, or vanish), plus the original `/maybe` routes and reads; every request cut off or answered 503 is
sent again, as the clients of this project do. Then: no answer a client should not get (no other 5xx, no 4xx
that the contract does not allow there), the history checker (tests/history.py) over every event, every
server ready, and the watched process's resident memory in the last part of the run no more than a little
above what it was early on.

CALL_ME_SOAK_SECONDS (default 1800) is the length of the whole soak, shared by the two stores.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import statistics
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from .history import Record, check_history
from .pgserver import PostgresServer
from .serverproc import CLIENT_KEY, DEFAULT_CONFIG, ServerProcess

SOAK_SECONDS = float(os.environ.get("CALL_ME_SOAK_SECONDS", "1800"))
PER_STORE = SOAK_SECONDS / 2
pytestmark = [pytest.mark.long, pytest.mark.timeout(int(PER_STORE) + 300)]

SECRET = "replicas-share-this-secret-" + uuid.uuid4().hex
ORIGINAL_KEY = "original-client-key-for-the-soak"
CONFIG = (
    DEFAULT_CONFIG
    + f'\n[[keys]]\nname = "original"\nkey = "{ORIGINAL_KEY}"\nrole = "client"\n'
    + "".join(
        f'\n[[environments]]\nname = "{name}"\nslots = {slots}\nlabels = [{", ".join(repr(x) for x in labels)}]\n'
        for name, slots, labels in [
            ("solo", 1, ()),
            ("pair", 2, ()),
            ("s1", 1, ("staging",)),
            ("s2", 2, ("staging", "gpu")),
            ("g1", 1, ("gpu",)),
        ]
    ).replace("'", '"')
)
TARGETS: list[dict[str, str]] = [
    {"environment": "solo"},
    {"environment": "pair"},
    {"environment": "s1"},
    {"environment": "g1"},
    {"label": "staging"},
    {"label": "gpu"},
    {"environment": "auto-soak"},
]
GRACE = 3.0
CLIENTS = 16
FAULT_EVERY = min(20.0, PER_STORE / 8)  # mean seconds between faults
RSS_EVERY = 1.0
# What "flat" allows: the median resident size of the last fifth of the watched process's life against that of
# its second fifth (after start-up and the first allocations), with room for the allocator's noise.
RSS_GROWTH, RSS_SLACK_KB = 1.15, 8 * 1024

# The statuses each kind of request may get, beyond 503 and a cut connection (which are asked again).
EXPECTED = {
    "acquire": {201, 202, 409, 410},
    "renew": {200, 410},
    "release": {204, 410},
    "leave": {204},
    "maybe post": {201, 403},
    "maybe delete": {204},
    "read": {200},
}


@dataclass
class Soak:
    procs: list[ServerProcess]
    until: float
    record: Record = field(default_factory=Record)
    unexpected: list[str] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)

    def call(self, http: httpx.Client, kind: str, method: str, path: str, **kw: Any) -> httpx.Response:
        """Send until answered other than 503 (a server stopped, killed or restarting, or PostgreSQL away)."""
        while True:
            url = random.choice(self.procs).url
            try:
                answer = http.request(method, url + path, **kw)
            except httpx.TransportError:
                self.statuses["cut off"] += 1
                time.sleep(0.2)
                continue
            self.statuses[str(answer.status_code)] += 1
            if answer.status_code == 503:
                time.sleep(0.2)
                continue
            if answer.status_code not in EXPECTED[kind]:
                self.unexpected.append(f"{kind} {method} {path}: {answer.status_code} {answer.text[:300]}")
            return answer

    def client(self, seed: int) -> None:
        rng = random.Random(seed)
        with (
            httpx.Client(headers={"X-API-KEY": CLIENT_KEY}, timeout=30) as http,
            httpx.Client(headers={"X-API-KEY": ORIGINAL_KEY}, timeout=30) as original,
        ):
            while time.monotonic() < self.until:
                roll = rng.random()
                if roll < 0.06:
                    self.maybe(original, rng)
                elif roll < 0.12:
                    self.call(http, "read", "GET", rng.choice(["/v1/environments", "/v1/history?limit=50"]))
                else:
                    self.pipeline(http, rng)

    def maybe(self, http: httpx.Client, rng: random.Random) -> None:
        path = f"/maybe?environment={rng.choice(['solo', 'pair'])}"
        if self.call(http, "maybe post", "POST", path).status_code == 201:
            time.sleep(rng.uniform(0, 0.3))
            self.call(http, "maybe delete", "DELETE", path)

    def pipeline(self, http: httpx.Client, rng: random.Random) -> None:
        body: dict[str, Any] = {
            **rng.choice(TARGETS),
            "ttl": rng.randint(3, 6),
            "priority": rng.choice([0, 0, 0, 1]),
            "request_id": str(uuid.uuid4()),
            "holder": f"pipeline-{rng.randint(1, 10**6)}",
        }
        if rng.random() < 0.1:
            body["queue"] = False
        patience = time.monotonic() + rng.uniform(0.5, 8)
        lease: dict[str, Any] | None = None
        while lease is None:
            asked = time.monotonic()
            wait = 0 if body.get("queue") is False else rng.uniform(0, 2)
            answer = self.call(http, "acquire", "POST", "/v1/leases", json={**body, "wait": wait})
            if answer.status_code == 201:
                lease = answer.json()
                self.record.grant(answer.json(), asked=asked)
            elif answer.status_code == 202:
                body["ticket"] = answer.json()["ticket"]
                if time.monotonic() > patience or time.monotonic() > self.until:
                    if rng.random() < 0.6:
                        self.call(http, "leave", "DELETE", f"/v1/tickets/{body['ticket']}")
                    return  # or vanishes: abandoned a grace later, a grant made meanwhile revoked
            else:
                return  # 409 busy (queue: false), or 410: its ticket was abandoned while a server was stopped
        headers = {"X-Lease-Token": lease["token"]}
        for _ in range(rng.randint(0, 3)):
            time.sleep(rng.uniform(0.2, 1.0))
            renewed = self.call(http, "renew", "POST", f"/v1/leases/{lease['id']}/renew", headers=headers, json={})
            if renewed.status_code == 410:
                return
        if rng.random() < 0.9:
            released = self.call(http, "release", "DELETE", f"/v1/leases/{lease['id']}", headers=headers)
            if released.status_code == 204:
                self.record.release(lease["id"])
        # else: vanishes while holding it; it expires after its TTL


class Memory(threading.Thread):
    """Samples the resident memory of the process `pid()` names, every RSS_EVERY seconds."""

    def __init__(self, pid: Callable[[], int | None]) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: dict[int, list[tuple[float, int]]] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(RSS_EVERY):
            pid = self.pid()
            if pid is None:
                continue
            with contextlib.suppress(OSError, StopIteration, ValueError):
                status = Path(f"/proc/{pid}/status").read_text()
                kb = int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])
                self.samples.setdefault(pid, []).append((time.monotonic(), kb))

    def check(self, pid: int) -> str:
        samples = [kb for _, kb in self.samples.get(pid, [])]
        assert len(samples) >= 10, f"too few samples of {pid}'s memory: {len(samples)}"
        fifth = len(samples) // 5
        early, late = statistics.median(samples[fifth : 2 * fifth]), statistics.median(samples[-fifth:])
        said = f"pid {pid}: {len(samples)} samples, early {early / 1024:.1f} MiB, late {late / 1024:.1f} MiB"
        assert late <= early * RSS_GROWTH + RSS_SLACK_KB, f"memory grew: {said}"
        return said


class Faults(threading.Thread):
    """Injects a fault from `kinds` at random moments; the first round goes through every kind once. Each kind
    returns what it did, which is counted."""

    def __init__(self, until: float, kinds: dict[str, Callable[[random.Random], str]], seed: int) -> None:
        super().__init__(daemon=True)
        self.until = until
        self.kinds = kinds
        self.rng = random.Random(seed)
        self.done: Counter[str] = Counter()
        self.error: BaseException | None = None

    def run(self) -> None:
        first = list(self.kinds)
        self.rng.shuffle(first)
        try:
            while True:
                pause = self.rng.expovariate(1 / FAULT_EVERY)
                if time.monotonic() + pause > self.until - 2 * FAULT_EVERY:
                    return
                time.sleep(pause)
                kind = first.pop() if first else self.rng.choice(list(self.kinds))
                self.done[self.kinds[kind](self.rng)] += 1
        except BaseException as exc:
            self.error = exc


def _pause(proc: ServerProcess, rng: random.Random) -> str:
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGSTOP)
    try:
        time.sleep(rng.uniform(0.3, 2.5))
    finally:
        proc.proc.send_signal(signal.SIGCONT)
    return "SIGSTOP, SIGCONT"


def _kill_and_restart(proc: ServerProcess) -> str:
    proc.kill()
    proc.start(wait=False)
    proc.wait_ready(30)
    return "kill -9, restart"


def _run(procs: list[ServerProcess], database: str, kinds: dict[str, Callable[[random.Random], str]]) -> Memory:
    """The soak on running servers: load, faults, then the checks. Returns the memory samples."""
    started = time.monotonic()
    soak = Soak(procs, started + PER_STORE)
    memory = Memory(lambda: procs[0].proc.pid if procs[0].proc is not None else None)
    memory.start()
    faults = Faults(soak.until, kinds, seed=int(started))
    faults.start()
    clients = [threading.Thread(target=soak.client, args=(n,), daemon=True) for n in range(CLIENTS)]
    for thread in clients:
        thread.start()
    try:
        for thread in [*clients, faults]:
            thread.join(max(1.0, soak.until - time.monotonic() + 120))
        assert not any(t.is_alive() for t in [*clients, faults]), "the soak did not finish"
    finally:
        memory.stop.set()
    time.sleep(GRACE + 2)  # the sweep ends what the clients left behind
    print(
        f"\n{PER_STORE:g} s: faults {dict(faults.done)}; answers {dict(sorted(soak.statuses.items()))}; "
        f"grants seen {len(soak.record.granted)}, releases {len(soak.record.released)}"
    )
    assert faults.error is None, faults.error
    assert soak.unexpected == [], "\n".join(soak.unexpected[:20])
    for proc in procs:
        assert httpx.get(proc.url + "/readyz", timeout=10).status_code == 200
    checked, violations = check_history(database, soak.record)
    print(f"events checked {checked}")
    assert violations == [], "\n".join(violations[:20])
    assert len(soak.record.granted) > PER_STORE, "the soak did little work"
    assert sum(faults.done.values()) >= min(len(kinds), 3)
    return memory


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[ServerProcess]]:
    """Stopped or not, every server is killed at the end."""
    procs: list[ServerProcess] = []
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.proc is not None and proc.proc.poll() is None:
                proc.proc.send_signal(signal.SIGCONT)
                proc.kill()


def test_soak_on_sqlite(tmp_path: Path, servers: list[ServerProcess]) -> None:
    env = {"CALL_ME_TICKET_GRACE": str(GRACE), "CALL_ME_MAX_WAIT": "2"}
    server = ServerProcess(tmp_path, config=CONFIG, env=env)
    servers.append(server)
    server.start()
    half = time.monotonic() + PER_STORE / 2

    def kill(rng: random.Random) -> str:
        if time.monotonic() < half:  # the second half's process is the one whose memory is watched
            return _kill_and_restart(server)
        return _pause(server, rng)

    memory = _run(servers, server.database, {"pause": lambda rng: _pause(server, rng), "kill -9": kill})
    assert server.proc is not None
    print(memory.check(server.proc.pid))


def test_soak_on_postgres(tmp_path: Path, postgres: PostgresServer, pg_url: str, servers: list[ServerProcess]) -> None:
    if postgres.external is not None:
        pytest.skip("restarts PostgreSQL: only the throwaway server of tests/pgserver.py")
    with psycopg.connect(postgres.admin_url, autocommit=True) as admin:  # as production has it (test_pg_outage.py)
        admin.execute(f"ALTER DATABASE {pg_url.rpartition('/')[2]} SET synchronous_commit = on")
    env = {"CALL_ME_SECRET": SECRET, "CALL_ME_TICKET_GRACE": str(GRACE), "CALL_ME_MAX_WAIT": "2"}
    for n in range(2):
        (tmp_path / str(n)).mkdir()
        servers.append(ServerProcess(tmp_path / str(n), database=pg_url, config=CONFIG, env=env))
    for proc in servers:
        proc.start(wait=False)
    for proc in servers:
        proc.wait_ready(30)
    watched, other = servers

    def postgres_down(rng: random.Random) -> str:
        if rng.random() < 0.5:
            postgres.restart("fast")
            return "pg_ctl restart -m fast"
        postgres.stop("immediate")
        time.sleep(rng.uniform(0.5, 3))
        postgres.start()
        return "pg_ctl stop -m immediate, start"

    kinds = {
        "pause": lambda rng: _pause(rng.choice(servers), rng),
        "kill -9": lambda rng: _kill_and_restart(other),
        "postgres down": postgres_down,
    }
    memory = _run(servers, pg_url, kinds)
    assert watched.proc is not None
    print(memory.check(watched.proc.pid))
