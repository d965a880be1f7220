"""PostgreSQL failing under load (issue 12): the database made read-only (as after a fail-over to a standby),
stopped as by a crash (`pg_ctl stop -m immediate`, then started), and restarted (`pg_ctl restart`), while two
replicas serve clients doing acquire/release pairs on environments of one slot.

The clients do what real ones do: an answer 503 is asked again (the acquire with its request_id, a waiter with
its ticket, the release with its token). Then:

- every 5xx is a 503, and answers a request that overlapped the outage (sent before PostgreSQL was back, plus
  a moment to reconnect); no connection is refused or cut: call-me itself never stops;
- reads go on while the database is read-only;
- both replicas recover by themselves (/readyz 200, pairs done by every client after), without a restart;
- the history checker (tests/history.py) finds no second holder (on these one-slot environments, acquired and
  ended alternate), fences strictly increasing per environment, and every 201 stored with its fence, every 204
  a released lease: nothing acknowledged was lost.

The throwaway cluster runs with `synchronous_commit = off` for speed, which lets PostgreSQL itself lose the
last commits it acknowledged in a crash: these tests turn it on for their database, as a production server has
it.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from .history import Record, check_history
from .pgserver import PostgresServer
from .serverproc import CLIENT_KEY, ServerProcess, started_together

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

SECRET = "replicas-share-this-secret-" + uuid.uuid4().hex
CLIENTS = 8
ENVIRONMENTS = [f"o{i}" for i in range(3)]  # one slot each: every second client waits
RECONNECT = 1.0  # seconds after PostgreSQL is back within which a 503 may still be answered
WARM_UP, AFTER = 2.0, 3.0


@dataclass
class Call:
    kind: str
    sent: float
    answered: float
    status: int  # 0: no answer (the connection was refused or cut)


@dataclass
class Load:
    """Clients doing acquire/release pairs, and one reader, through both replicas."""

    procs: list[ServerProcess]
    record: Record = field(default_factory=Record)
    calls: list[Call] = field(default_factory=list)
    pairs: dict[int, list[float]] = field(default_factory=dict)  # per client, when each pair ended
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    leases: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)  # answers no client should get: the client gives up

    def start(self) -> None:
        self.threads = [threading.Thread(target=self._client, args=(n,), daemon=True) for n in range(CLIENTS)]
        self.threads.append(threading.Thread(target=self._reader, daemon=True))
        for thread in self.threads:
            thread.start()

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)
        assert not any(t.is_alive() for t in self.threads)

    def _call(self, http: httpx.Client, kind: str, method: str, path: str, **kw: Any) -> httpx.Response | None:
        url = random.choice(self.procs).url
        sent = time.monotonic()
        try:
            answer = http.request(method, url + path, **kw)
        except httpx.TransportError:
            self.calls.append(Call(kind, sent, time.monotonic(), 0))
            return None
        self.calls.append(Call(kind, sent, time.monotonic(), answer.status_code))
        return None if answer.status_code >= 500 else answer

    def _client(self, n: int) -> None:
        rng = random.Random(n)
        self.pairs[n] = []
        with httpx.Client(headers={"X-API-KEY": CLIENT_KEY}, timeout=30) as http:
            while not self.stop.is_set():
                lease = self._acquire(http, rng, n)
                if lease is None:
                    continue
                time.sleep(rng.uniform(0, 0.05))
                while True:  # a pipeline always releases, however long it takes
                    path = f"/v1/leases/{lease['id']}"
                    answer = self._call(http, "release", "DELETE", path, headers={"X-Lease-Token": lease["token"]})
                    if answer is not None:
                        if answer.status_code != 204:
                            self.unexpected.append(f"release of {lease['id']}: {answer.status_code} {answer.text}")
                            return
                        self.record.release(lease["id"])
                        self.pairs[n].append(time.monotonic())
                        break
                    time.sleep(0.1)

    def _acquire(self, http: httpx.Client, rng: random.Random, n: int) -> dict[str, Any] | None:
        body: dict[str, Any] = {
            "environment": rng.choice(ENVIRONMENTS),
            "holder": f"client-{n}",
            "ttl": 60,
            "wait": 1.5,
            "request_id": str(uuid.uuid4()),
        }
        while not self.stop.is_set():
            asked = time.monotonic()
            answer = self._call(http, "acquire", "POST", "/v1/leases", json=body)
            if answer is None:
                time.sleep(0.1)
                continue
            if answer.status_code == 201:
                self.record.grant(answer.json(), asked=asked)
                self.leases.append(answer.json()["id"])
                return dict(answer.json())
            if answer.status_code != 202:
                self.unexpected.append(f"acquire: {answer.status_code} {answer.text}")
                self.stop.wait()
                return None
            body["ticket"] = answer.json()["ticket"]
        if "ticket" in body:
            self._call(http, "leave", "DELETE", f"/v1/tickets/{body['ticket']}")
        return None

    def _reader(self) -> None:
        with httpx.Client(headers={"X-API-KEY": CLIENT_KEY}, timeout=30) as http:
            while not self.stop.is_set():
                self._call(http, "read environments", "GET", "/v1/environments")
                self._call(http, "read environment", "GET", f"/v1/environments/{random.choice(ENVIRONMENTS)}")
                self._call(http, "read history", "GET", "/v1/history?limit=20")
                if self.leases:
                    self._call(http, "read lease", "GET", f"/v1/leases/{random.choice(self.leases[-20:])}")
                time.sleep(0.02)


@pytest.fixture
def replicas(postgres: PostgresServer, pg_url: str, tmp_path: Path) -> Iterator[list[ServerProcess]]:
    if postgres.external is not None:
        pytest.skip("stops and restarts PostgreSQL: only the throwaway server of tests/pgserver.py")
    with psycopg.connect(postgres.admin_url, autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE {_name(pg_url)} SET synchronous_commit = on")
    env = {"CALL_ME_SECRET": SECRET, "CALL_ME_TICKET_GRACE": "20", "CALL_ME_MAX_WAIT": "5"}
    procs = []
    for n in range(2):
        (tmp_path / str(n)).mkdir()
        procs.append(ServerProcess(tmp_path / str(n), database=pg_url, env=env))
    with started_together(procs):
        with procs[0].client() as admin:
            for name in ENVIRONMENTS:
                assert admin.put(f"/v1/environments/{name}", json={"slots": 1}).status_code == 201
        yield procs


def _name(url: str) -> str:
    return url.rpartition("/")[2]


def _read_only(postgres: PostgresServer, url: str, on: bool) -> None:
    with psycopg.connect(postgres.admin_url, autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE {_name(url)} SET default_transaction_read_only = {'on' if on else 'off'}")
        # The setting holds for sessions started after it: end the replicas' own, as a fail-over would.
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (_name(url),),
        )


def _until_ready(procs: list[ServerProcess], within: float = 15) -> float:
    """Seconds until every replica's /readyz is 200."""
    started = time.monotonic()
    for proc in procs:
        while httpx.get(proc.url + "/readyz", timeout=10).status_code != 200:
            assert time.monotonic() - started < within, f"{proc.url} not ready {within} s after the outage"
            time.sleep(0.1)
    return time.monotonic() - started


def _under_load(procs: list[ServerProcess], pg_url: str, fault: Any, down_for: float) -> tuple[Load, float, float]:
    """Run the load, inject `fault` (which returns once PostgreSQL is back), and check what the clients saw."""
    load = Load(procs)
    load.start()
    try:
        time.sleep(WARM_UP)
        began = time.monotonic()
        fault(down_for)
        back = time.monotonic()
        recovered = _until_ready(procs)
        time.sleep(AFTER)
    finally:
        load.finish()
    statuses = sorted({c.status for c in load.calls})
    print(
        f"\ncalls={len(load.calls)} statuses={statuses} 503s={sum(c.status == 503 for c in load.calls)} "
        f"pairs={sum(len(p) for p in load.pairs.values())} outage={back - began:.2f} s, ready {recovered:.2f} s after"
    )
    assert load.unexpected == []
    assert [c for c in load.calls if c.status in (0, 500, 502, 504)] == [], "a connection failed, or another 5xx"
    outside = [c for c in load.calls if c.status == 503 and not (c.answered >= began and c.sent <= back + RECONNECT)]
    assert outside == [], f"503s outside the outage ({began:.2f} to {back:.2f} + {RECONNECT} s)"
    assert any(c.status == 503 for c in load.calls), "the outage was not seen"
    # Every client keeps going: pairs done before the outage and after it.
    for n, ended in load.pairs.items():
        assert any(t < began for t in ended), f"client {n} did nothing before the outage"
        assert any(t > back + 0.5 for t in ended), f"client {n} did nothing after PostgreSQL came back"
    checked, violations = check_history(pg_url, load.record)
    assert violations == [], "\n".join(violations)
    assert checked > 50
    return load, began, back


def test_a_read_only_database_answers_writes_503_and_reads_on_and_recovers_without_a_restart(
    replicas: list[ServerProcess], postgres: PostgresServer, pg_url: str
) -> None:
    def read_only(seconds: float) -> None:
        _read_only(postgres, pg_url, True)
        time.sleep(seconds)
        _read_only(postgres, pg_url, False)

    load, began, back = _under_load(replicas, pg_url, read_only, 3.0)
    during = [c for c in load.calls if c.sent > began + 0.2 and c.answered < back]
    writes = {c.status for c in during if not c.kind.startswith("read")}
    reads = {c.kind: {x.status for x in during if x.kind == c.kind} for c in during if c.kind.startswith("read")}
    assert writes == {503}, writes
    assert reads == {kind: {200} for kind in ("read environments", "read environment", "read history", "read lease")}


@pytest.mark.parametrize("how", ["stop -m immediate, then start", "restart -m fast"])
def test_postgres_stopped_or_restarted_under_load_loses_nothing_and_grants_nothing_twice(
    replicas: list[ServerProcess], postgres: PostgresServer, pg_url: str, how: str
) -> None:
    def outage(seconds: float) -> None:
        if how.startswith("restart"):
            postgres.restart("fast")
        else:
            postgres.stop("immediate")
            time.sleep(seconds)
            postgres.start()

    _under_load(replicas, pg_url, outage, 2.0)
