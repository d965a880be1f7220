"""Three server replicas on one PostgreSQL, a crowd of clients through random replicas, PostgreSQL restarted
mid-run; then the history checker (tests/history.py) over every event of the database."""

from __future__ import annotations

import contextlib
import random
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .history import Record, check_history
from .pgserver import PostgresServer
from .serverproc import CLIENT_KEY, DEFAULT_CONFIG, ServerProcess, started_together

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

REPLICAS = 3
CLIENTS = 48
RUN_SECONDS = 20.0
DOWN_AT, DOWN_FOR = 7.0, 3.0
GRACE = 2.0
ENVIRONMENTS = {  # name: (slots, labels); s1, s2 and g1 form one group through their labels
    "solo": (1, ()),
    "pair": (2, ()),
    "trio": (3, ()),
    "s1": (1, ("staging",)),
    "s2": (2, ("staging", "gpu")),
    "g1": (1, ("gpu",)),
}
TARGETS = [
    *({"environment": name} for name in ENVIRONMENTS),
    {"label": "staging"},
    {"label": "gpu"},
    {"environment": "auto-1"},  # created on first request, by whichever replica comes first
    {"environment": "auto-2"},
]
# PostgreSQL needs the server secret, the same on every replica: a token or ticket id made by one works on all.
SECRET = "replicas-share-this-secret-" + uuid.uuid4().hex
CONFIG = DEFAULT_CONFIG + "".join(
    f'\n[[environments]]\nname = "{name}"\nslots = {slots}\nlabels = {list(labels)!r}\n'.replace("'", '"')
    for name, (slots, labels) in ENVIRONMENTS.items()
)


@contextlib.contextmanager
def running(
    postgres: PostgresServer, workdir: Path, count: int, env: dict[str, str]
) -> Iterator[tuple[list[ServerProcess], str]]:
    """`count` replicas on a new database, started all at once (they migrate and apply the file concurrently)."""
    url = postgres.create_database(empty=True)
    env = {"CALL_ME_SECRET": SECRET, **env}
    procs = [ServerProcess(workdir, database=url, config=CONFIG, env=env) for _ in range(count)]
    try:
        with started_together(procs):
            yield procs, url
    finally:
        postgres.drop_database(url)


@pytest.fixture
def replicas(postgres: PostgresServer, tmp_path: Path) -> Iterator[tuple[list[ServerProcess], str]]:
    env = {"CALL_ME_TICKET_GRACE": str(GRACE), "CALL_ME_MAX_WAIT": "2", "CALL_ME_DEFAULT_TTL": "3"}
    with running(postgres, tmp_path, REPLICAS, env) as started:
        yield started


@pytest.mark.parametrize("listen", ["true", "false"])
def test_a_release_on_one_replica_wakes_a_waiter_parked_on_another(
    postgres: PostgresServer, tmp_path: Path, listen: str
) -> None:
    env = {"CALL_ME_MAX_WAIT": "20", "CALL_ME_PG_LISTEN": listen}
    with running(postgres, tmp_path, 2, env) as (procs, _), procs[0].client(CLIENT_KEY) as a:
        b = procs[1].client(CLIENT_KEY)
        held = a.post("/v1/leases", json={"environment": "solo"})
        assert held.status_code == 201
        answer: list[tuple[httpx.Response, float]] = []
        waiter = threading.Thread(
            target=lambda: answer.append((b.post("/v1/leases", json={"environment": "solo", "wait": 15}), 0.0))
        )
        waiter.start()
        time.sleep(1.25)  # parked on b, off the 0.5 s grid of the poll-only re-checks
        assert not answer
        released = a.delete(f"/v1/leases/{held.json()['id']}", headers={"X-Lease-Token": held.json()["token"]})
        assert released.status_code == 204
        at = time.monotonic()
        waiter.join(15)
        took = time.monotonic() - at
        assert answer[0][0].status_code == 201
        # LISTEN/NOTIFY answers at once; the poll-only mode within its 0.5 s re-check (the 2 s one is not hit).
        print(f"\nlisten={listen}: the waiter on the other replica got its 201 {took:.3f} s after the release")
        b.close()
        assert took < (0.5 if listen == "true" else 1.0)


class Crowd:
    def __init__(self, procs: list[ServerProcess], record: Record, until: float) -> None:
        self.procs = procs
        self.record = record
        self.until = until

    def call(
        self, http: dict[str, httpx.Client], what: str, method: str, path: str, **kw: Any
    ) -> httpx.Response | None:
        """One request through a random replica; None when it could not be answered (server or store down)."""
        url = random.choice(self.procs).url
        self.record.count(what)
        try:
            response = http[url].request(method, url + path, **kw)
        except httpx.TransportError:
            self.record.count("transport error")
            return None
        if response.status_code == 503:
            self.record.count("503")
            return None
        return response

    def client(self, seed: int) -> None:
        rng = random.Random(seed)
        with contextlib.ExitStack() as stack:
            http = {
                proc.url: stack.enter_context(httpx.Client(headers={"X-API-KEY": CLIENT_KEY}, timeout=15))
                for proc in self.procs
            }
            while time.monotonic() < self.until:
                self.one_pipeline(rng, http)

    def one_pipeline(self, rng: random.Random, http: dict[str, httpx.Client]) -> None:
        body = {
            **rng.choice(TARGETS),
            "ttl": rng.randint(2, 4),
            "priority": rng.choice([0, 0, 0, 1]),
            "request_id": str(uuid.uuid4()),
            "holder": f"pipeline-{rng.randint(1, 10**6)}",
        }
        patience = time.monotonic() + rng.uniform(0.5, 6)
        ticket: str | None = None
        lease: dict[str, Any] | None = None
        while time.monotonic() < self.until:
            asked = time.monotonic()
            answer = self.call(http, "acquire", "POST", "/v1/leases", json={**body, "wait": rng.uniform(0, 2)})
            if answer is None:
                time.sleep(0.2)
                continue
            if answer.status_code == 201:
                lease = answer.json()
                self.record.grant(lease, asked=asked, answered=time.monotonic())
                break
            if answer.status_code == 410:  # the ticket was abandoned, or its grant revoked, while we were away
                return
            assert answer.status_code == 202, answer.text
            ticket = answer.json()["ticket"]
            body["ticket"] = ticket
            if time.monotonic() > patience:
                if rng.random() < 0.5:
                    self.call(http, "leave", "DELETE", f"/v1/tickets/{ticket}")  # gives up and says so
                else:
                    time.sleep(GRACE * rng.uniform(0, 2))  # gives up silently: abandoned, or its grant revoked
                return
        if lease is None:
            return
        headers = {"X-Lease-Token": lease["token"]}
        for _ in range(rng.randint(0, 2)):
            time.sleep(rng.uniform(0, 0.6))
            renewed = self.call(
                http, "renew", "POST", f"/v1/leases/{lease['id']}/renew", headers=headers, json={"ttl": 3}
            )
            if renewed is not None and renewed.status_code == 410:
                return
        time.sleep(rng.uniform(0, 0.3))
        if rng.random() < 0.85:
            for _ in range(20):
                released = self.call(http, "release", "DELETE", f"/v1/leases/{lease['id']}", headers=headers)
                if released is not None:
                    assert released.status_code in (204, 410), released.text
                    return
                time.sleep(0.2)
        # else: abandoned while holding it; it expires after its TTL


def _restart_postgres(postgres: PostgresServer, procs: list[ServerProcess], record: Record) -> dict[str, Any]:
    """Stop PostgreSQL, check that every replica says so, start it again and wait for them to recover."""
    seen: dict[str, Any] = {}
    postgres.stop()
    seen["stopped"] = time.monotonic()
    readyz = [httpx.get(p.url + "/readyz", timeout=10).status_code for p in procs]
    acquire = [
        httpx.post(
            p.url + "/v1/leases", json={"environment": "solo", "queue": False}, headers={"X-API-KEY": CLIENT_KEY}
        ).status_code
        for p in procs
    ]
    seen["readyz while down"], seen["acquire while down"] = readyz, acquire
    time.sleep(DOWN_FOR)
    seen["starting"] = time.monotonic()
    postgres.start()
    deadline = time.monotonic() + 30
    pending = list(procs)
    while pending and time.monotonic() < deadline:
        pending = [p for p in pending if httpx.get(p.url + "/readyz", timeout=10).status_code != 200]
        time.sleep(0.1)
    seen["recovered in"] = round(time.monotonic() - seen["starting"], 2)
    seen["not recovered"] = [p.url for p in pending]
    return seen


def test_replicas_keep_every_invariant_across_a_postgres_restart(
    replicas: tuple[list[ServerProcess], str], postgres: PostgresServer
) -> None:
    procs, url = replicas
    record = Record()
    started = time.monotonic()
    crowd = Crowd(procs, record, started + RUN_SECONDS)
    threads = [threading.Thread(target=crowd.client, args=(i,), daemon=True) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    outage: dict[str, Any] = {}
    if postgres.external is None:
        time.sleep(DOWN_AT)
        outage = _restart_postgres(postgres, procs, record)
    for thread in threads:
        thread.join(RUN_SECONDS + 60)
    assert not any(t.is_alive() for t in threads)
    time.sleep(GRACE + 1)  # let the sweepers end what the crowd left behind
    checked, violations = check_history(url, record)
    operations = sum(v for k, v in record.operations.items() if k not in ("503", "transport error"))
    print(
        f"\nreplicas={REPLICAS} clients={CLIENTS} seconds={RUN_SECONDS:g} operations={operations} "
        f"grants_seen_by_clients={len(record.granted)} events_checked={checked} violations={len(violations)}"
        f"\noperations: {dict(sorted(record.operations.items()))}\npostgres restart: {outage or 'skipped (external)'}"
    )
    assert violations == [], "\n".join(violations[:20])
    assert len(record.granted) > 50  # the run did real work
    assert checked > 200
    if outage:
        assert outage["readyz while down"] == [503] * REPLICAS
        assert outage["acquire while down"] == [503] * REPLICAS
        assert outage["not recovered"] == [], outage
        # Nothing was granted while the database was down: every 201 asked before it stopped or after it started.
        during = [g for g in record.granted if g["asked"] > outage["stopped"] and g["answered"] < outage["starting"]]
        assert during == []
        assert record.operations["503"] > 0
        after = [g for g in record.granted if g["asked"] > outage["starting"]]
        assert after, "no grant after PostgreSQL came back"
