"""kill -9 of a replica during a hand-off, on PostgreSQL (issue 12): two replicas on one database, a holder
releasing on one while a waiter is parked in a long-poll on the other (or on the same one), and one replica
SIGKILLed at a chosen moment: before the release, a few milliseconds into it, the moment the holder has its 204,
the moment the waiter has its 201.

Each client does what a real one does: a request cut off is sent again to the other replica (the holder's
release with its token, the waiter's acquire with its request_id, then its ticket). Then:

- never two live leases on one environment: sampled in the database every few milliseconds while it runs,
  and replayed from the events (tests/history.py);
- the waiter always gets its lease, from the survivor if need be, with a fence above the holder's;
- nothing acknowledged is lost: every 201 is a stored lease with its fence, every 204 a released lease, and a
  lease whose 201 reached the waiter is still live a grace later although the waiter never came back (as a
  GitHub Action's holder, which does not renew, would not).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from .history import Record, check_history, load
from .serverproc import CLIENT_KEY, ServerProcess, started_together

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

GRACE = 2.0
SECRET = "replicas-share-this-secret-" + uuid.uuid4().hex
HOLDER, WAITER = "holder", "waiter"


@dataclass(frozen=True)
class Moment:
    """Who holds and who waits on which replica, which replica dies, and when."""

    holder_on: int
    waiter_on: int
    victim: str  # HOLDER or WAITER: the replica of that client dies
    at: str | float  # "parked" (before the release), seconds after the release is sent, "204" or "201"

    def __str__(self) -> str:
        where = "same replica" if self.holder_on == self.waiter_on else "two replicas"
        if isinstance(self.at, float):
            return f"{where}, the {self.victim}'s killed {self.at * 1000:g} ms into the release"
        at = {"parked": "while the waiter is parked", "204": "at the holder's 204", "201": "at the waiter's 201"}
        return f"{where}, the {self.victim}'s killed {at[self.at]}"


MOMENTS = [
    Moment(0, 1, WAITER, "parked"),
    Moment(0, 1, HOLDER, 0.0),
    Moment(1, 0, HOLDER, 0.002),
    Moment(0, 1, HOLDER, 0.005),
    Moment(1, 0, HOLDER, "204"),
    Moment(0, 1, WAITER, 0.002),
    Moment(1, 0, WAITER, 0.006),
    Moment(0, 1, WAITER, "201"),
    Moment(1, 0, WAITER, "201"),
    Moment(0, 0, HOLDER, 0.003),
    Moment(1, 1, WAITER, "201"),
]


class Sampler(threading.Thread):
    """Looks in the database every few milliseconds for an environment with two live leases."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stop = threading.Event()
        self.samples = 0
        self.seen: list[tuple[str, int]] = []

    def run(self) -> None:
        query = (
            "SELECT environment, count(*) FROM leases WHERE state = 'active' GROUP BY environment HAVING count(*) > 1"
        )
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stop.is_set():
                self.seen += [(str(env), int(n)) for env, n in conn.execute(query).fetchall()]
                self.samples += 1
                time.sleep(0.003)


class Client(threading.Thread):
    """A client that sends its request again to the other replica when one cuts it off."""

    def __init__(self, procs: list[ServerProcess], on: int, kill: ServerProcess | None) -> None:
        super().__init__(daemon=True)
        self.procs = procs
        self.on = on
        self.kill = kill  # killed the moment this client has its answer
        self.http = httpx.Client(headers={"X-API-KEY": CLIENT_KEY}, timeout=20)
        self.cut_off = 0
        self.answer: httpx.Response | None = None

    def send(self, method: str, path: str, **kw: Any) -> httpx.Response | None:
        try:
            answer = self.http.request(method, self.procs[self.on].url + path, **kw)
        except httpx.TransportError:
            self.cut_off += 1
            self.on = 1 - self.on
            time.sleep(0.05)
            return None
        if answer.status_code == 503:  # a replica not yet ready
            time.sleep(0.05)
            return None
        return answer


class Waiter(Client):
    def __init__(self, procs: list[ServerProcess], on: int, kill: ServerProcess | None, environment: str) -> None:
        super().__init__(procs, on, kill)
        self.body: dict[str, Any] = {
            "environment": environment,
            "holder": f"{WAITER}-{environment}",
            "ttl": 600,
            "wait": 10,
            "request_id": str(uuid.uuid4()),
        }

    def run(self) -> None:
        with self.http:
            self.wait()

    def wait(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            answer = self.send("POST", "/v1/leases", json=self.body)
            if answer is None:
                continue
            if answer.status_code == 202:
                self.body["ticket"] = answer.json()["ticket"]
                continue
            if answer.status_code == 201 and self.kill is not None and self.kill.proc is not None:
                self.kill.proc.kill()
            self.answer = answer
            return


class Releaser(Client):
    def __init__(self, procs: list[ServerProcess], on: int, kill: ServerProcess | None, lease: dict[str, Any]) -> None:
        super().__init__(procs, on, kill)
        self.lease = lease

    def run(self) -> None:
        with self.http:
            self.release()

    def release(self) -> None:
        for _ in range(200):
            answer = self.send(
                "DELETE", f"/v1/leases/{self.lease['id']}", headers={"X-Lease-Token": self.lease["token"]}
            )
            if answer is None:
                continue
            if answer.status_code == 204 and self.kill is not None and self.kill.proc is not None:
                self.kill.proc.kill()
            self.answer = answer
            return


@pytest.fixture
def replicas(pg_url: str, tmp_path: Path) -> Iterator[list[ServerProcess]]:
    env = {"CALL_ME_SECRET": SECRET, "CALL_ME_TICKET_GRACE": str(GRACE), "CALL_ME_MAX_WAIT": "10"}
    procs = []
    for n in range(2):
        (tmp_path / str(n)).mkdir()
        procs.append(ServerProcess(tmp_path / str(n), database=pg_url, env=env))
    with started_together(procs):
        yield procs


def _queued(proc: ServerProcess, environment: str) -> bool:
    with proc.client(CLIENT_KEY) as c:
        listed = c.get(f"/v1/environments/{environment}")
    return listed.status_code == 200 and bool(listed.json()["queue"])


def _hand_off(procs: list[ServerProcess], moment: Moment, environment: str, record: Record) -> dict[str, Any]:
    """One hand-off with one replica killed; returns what each client saw."""
    holder_proc, waiter_proc = procs[moment.holder_on], procs[moment.waiter_on]
    victim = holder_proc if moment.victim == HOLDER else waiter_proc
    with holder_proc.client(CLIENT_KEY) as c:
        held = c.post("/v1/leases", json={"environment": environment, "holder": f"{HOLDER}-{environment}", "ttl": 600})
    assert held.status_code == 201, held.text
    record.grant(held.json())
    waiter = Waiter(procs, moment.waiter_on, victim if moment.at == "201" else None, environment)
    waiter.start()
    deadline = time.monotonic() + 10
    while not _queued(holder_proc, environment):
        assert time.monotonic() < deadline, "the waiter never queued"
        time.sleep(0.02)
    time.sleep(0.2)  # its request is parked once its ticket is committed: give it the moment to be
    assert victim.proc is not None
    if moment.at == "parked":
        victim.proc.kill()
        time.sleep(0.2)
    releaser = Releaser(procs, moment.holder_on, victim if moment.at == "204" else None, held.json())
    timer = threading.Timer(moment.at, victim.proc.kill) if isinstance(moment.at, float) else None
    releaser.start()
    if timer is not None:
        timer.start()
    releaser.join(30)
    waiter.join(30)
    if timer is not None:
        timer.join()
    victim.proc.wait(10)  # killed: the moment came in every case
    assert releaser.answer is not None, f"{moment}: the release was never answered"
    assert releaser.answer.status_code == 204, releaser.answer.text
    record.release(held.json()["id"])
    assert waiter.answer is not None, f"{moment}: the waiter never got its lease"
    assert waiter.answer.status_code == 201, waiter.answer.text
    got = waiter.answer.json()
    record.grant(got)
    assert got["environment"] == environment
    assert got["fence"] > held.json()["fence"]
    victim.start(wait=False)  # for the next round
    victim.wait_ready(30)
    return {"holder cut off": releaser.cut_off, "waiter cut off": waiter.cut_off, "lease": got["id"]}


def test_a_replica_killed_during_a_hand_off_loses_nothing_and_never_grants_twice(
    replicas: list[ServerProcess], pg_url: str
) -> None:
    record = Record()
    sampler = Sampler(pg_url)
    sampler.start()
    seen: dict[str, dict[str, Any]] = {}
    try:
        for n, moment in enumerate(MOMENTS):
            seen[f"{n}: {moment}"] = _hand_off(replicas, moment, f"k{n}", record)
        # Every waiter has its 201 and never comes back: not one of those leases may be revoked as uncollected.
        time.sleep(GRACE + 1.5)
    finally:
        sampler.stop.set()
        sampler.join(5)
    print("\n" + "\n".join(f"{k}: {v}" for k, v in seen.items()) + f"\nsamples of the leases table: {sampler.samples}")
    assert sampler.seen == []
    assert sampler.samples > 100
    leases = load(pg_url).leases
    lost = {k: leases[v["lease"]]["state"] for k, v in seen.items() if leases[v["lease"]]["state"] != "active"}
    assert lost == {}, "a waiter's lease whose 201 it had ended"
    checked, violations = check_history(pg_url, record)
    assert violations == [], "\n".join(violations)
    assert checked >= 4 * len(MOMENTS)
    # The rounds did cut clients off, on both sides: the moments were not all missed.
    assert sum(v["holder cut off"] for v in seen.values()) > 0
    assert sum(v["waiter cut off"] for v in seen.values()) > 0
