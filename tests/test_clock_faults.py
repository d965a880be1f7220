"""Pauses and clock steps done to real processes (API.md invariant 5; issue 12, item 3).

A server process is stopped with SIGSTOP, or its wall clock (or its PostgreSQL's) is stepped an hour either
way with libfaketime, while holders renew short leases every second and a waiter long-polls for a slot, as
pipelines do. What must hold: no lease ends and no waiter is abandoned for it; renewals held up by a pause
succeed when it ends; once the holders stop renewing, their leases do end, on time by the server's clock and
not an hour early or late; and times in the history never go backwards. The same rules on fake clocks, with
every edge, are in tests/test_clock.py.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from .pgserver import BIN, PostgresServer
from .serverproc import CLIENT_KEY, ServerProcess
from .tooling import tool_missing

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

GRACE = 3  # short, so that a pause or a step longer than it would end what it must not
TTL = 6
RENEW_EVERY = 1.0  # 5 s to spare: a loaded test machine may hold up a renewal a few seconds
WAIT = 2  # the server holds a long-poll at most this long (CALL_ME_MAX_WAIT): a waiter comes back as often
PAUSE = 8.0
HOUR = 3600
TRANSPORT_ERROR = "no answer"  # the server restarting
SETTINGS = {"CALL_ME_TICKET_GRACE": str(GRACE), "CALL_ME_MAX_WAIT": str(WAIT)}


def _at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


class Holders:
    """Renews each lease in `keep` every RENEW_EVERY s, as the pipeline holding it does (a thread each, so that
    one held-up renewal does not hold up the other's); keeps every answer."""

    def __init__(self, url: str, leases: list[dict[str, Any]]) -> None:
        self.url = url
        self.keep = {lease["id"] for lease in leases}
        self.answers: list[tuple[str, int | str, float]] = []  # lease id, status or error, when
        self.expires: dict[str, float] = {lease["id"]: _at(lease["expires_at"]) for lease in leases}
        self.done = threading.Event()
        self.threads = [threading.Thread(target=self._renew, args=(lease,), daemon=True) for lease in leases]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def _renew(self, lease: dict[str, Any]) -> None:
        with httpx.Client(base_url=self.url, headers={"X-API-KEY": CLIENT_KEY}, timeout=40) as http:
            while not self.done.wait(RENEW_EVERY) and lease["id"] in self.keep:
                try:
                    answer = http.post(f"/v1/leases/{lease['id']}/renew", headers={"X-Lease-Token": lease["token"]})
                except httpx.TransportError:
                    self.answers.append((lease["id"], TRANSPORT_ERROR, time.time()))  # the server restarting
                    continue
                self.answers.append((lease["id"], answer.status_code, time.time()))
                if answer.status_code == 200:
                    self.expires[lease["id"]] = _at(answer.json()["expires_at"])

    def statuses(self) -> set[int | str]:
        return {status for _, status, _ in self.answers}


class Waiter(threading.Thread):
    """Waits for `environment` in long-polls with its ticket, until granted or told its place is gone."""

    def __init__(self, url: str, environment: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.environment = environment
        self.statuses: list[int] = []
        self.granted: dict[str, Any] | None = None
        self.done = threading.Event()

    def run(self) -> None:
        body: dict[str, Any] = {"environment": self.environment, "holder": "waiter", "ttl": TTL, "wait": WAIT}
        with httpx.Client(base_url=self.url, headers={"X-API-KEY": CLIENT_KEY}, timeout=40) as http:
            while not self.done.is_set():
                try:
                    answer = http.post("/v1/leases", json=body)
                except httpx.TransportError:
                    time.sleep(0.2)  # the server restarting: come back with the same ticket
                    continue
                self.statuses.append(answer.status_code)
                if answer.status_code == 202:
                    body["ticket"] = answer.json()["ticket"]
                    continue
                if answer.status_code == 201:
                    self.granted = answer.json()
                return


def _history(server: ServerProcess) -> list[dict[str, Any]]:
    """Every event, in the order recorded."""
    with server.client() as http:
        events: list[dict[str, Any]] = http.get("/v1/history", params={"limit": 1000}).json()["events"]
    return sorted(events, key=lambda e: e["id"])


def _ended(server: ServerProcess) -> list[dict[str, Any]]:
    return [e for e in _history(server) if e["kind"] in ("expired", "revoked", "abandoned")]


def _wait_for(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        time.sleep(0.2)


class Scene:
    """Two leases held and renewed (on uat and qa), and a waiter parked for uat, on `server`."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        with server.client(CLIENT_KEY) as http:
            leases = [
                http.post("/v1/leases", json={"environment": env, "holder": f"holder-{env}", "ttl": TTL}).json()
                for env in ("uat", "qa")
            ]
        self.holders = Holders(server.url, leases)
        self.waiter = Waiter(server.url, "uat")
        self.holders.start()
        self.waiter.start()
        _wait_for("the waiter parked", lambda: 202 in self.waiter.statuses, 10)  # and is back in its next poll
        self.uat, self.qa = leases

    def nothing_ended(self) -> None:
        assert _ended(self.server) == [], self.holders.answers
        assert self.holders.statuses() <= {200, TRANSPORT_ERROR}, self.holders.answers
        assert 200 in self.holders.statuses()
        assert set(self.waiter.statuses) == {202}, self.waiter.statuses

    def holder_stops(self, lease: dict[str, Any], *, late: float = 1.5) -> None:
        """The holder of `lease` stops renewing: it ends at its last deadline by the server's clock, give or take
        the sweep's `late`ness (or the floor's, after a start-up), not an hour early or late."""
        self.holders.keep.discard(lease["id"])
        _wait_for(
            "the lease that is no longer renewed ended",
            lambda: [e["lease"] for e in _ended(self.server)] == [lease["id"]],
            TTL + GRACE + 3,
        )
        event = _ended(self.server)[0]
        assert event["kind"] == "expired"
        assert 0 <= _at(event["at"]) - self.holders.expires[lease["id"]] < late

    def history_in_order(self) -> None:
        times = [_at(e["at"]) for e in _history(self.server)]
        assert times == sorted(times)

    def close(self) -> None:
        self.holders.done.set()
        self.waiter.done.set()


@pytest.fixture
def scene_of() -> Iterator[Callable[[ServerProcess], Scene]]:
    scenes: list[Scene] = []

    def make(server: ServerProcess) -> Scene:
        scenes.append(Scene(server))
        return scenes[-1]

    yield make
    for scene in scenes:
        scene.close()
        if scene.server.proc is not None and scene.server.proc.poll() is None:
            scene.server.proc.send_signal(signal.SIGCONT)
            scene.server.kill()


def test_a_paused_server_ends_nothing_before_its_clients_can_come_back(
    tmp_path: Path, scene_of: Callable[[ServerProcess], Scene]
) -> None:
    server = ServerProcess(tmp_path, env=SETTINGS)
    server.start()
    scene = scene_of(server)
    assert server.proc is not None
    server.proc.send_signal(signal.SIGSTOP)  # longer than the leases' TTL, and than the waiter's grace
    time.sleep(PAUSE)
    server.proc.send_signal(signal.SIGCONT)
    time.sleep(GRACE + 1)  # past the floor: only the holders' renewals keep their leases now
    scene.nothing_ended()
    assert "event=resumed" in server.log()
    scene.holder_stops(scene.uat)
    _wait_for("the waiter was granted the freed slot", lambda: scene.waiter.granted is not None, 5)
    scene.history_in_order()


@pytest.fixture
def libfaketime() -> str:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))
    if not found:
        tool_missing("libfaketime is not installed (Debian's faketime; scripts/faketime-setup installs it)")
    return found[0]


class WallClock:
    """The wall clock of the processes started with `env`, stepped at will (libfaketime reading a file).

    Only the wall clock: FAKETIME_DONT_FAKE_MONOTONIC leaves the monotonic clocks alone, as an NTP step does."""

    def __init__(self, library: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="callme-faketime-"))
        self.dir.chmod(0o755)  # PostgreSQL's processes, another user, read it too
        self.file = self.dir / "offset"
        self.env = {
            "LD_PRELOAD": library,
            "FAKETIME_TIMESTAMP_FILE": str(self.file),
            "FAKETIME_CACHE_DURATION": "1",  # a step takes effect within a second; reading the file at every
            # call (FAKETIME_NO_CACHE) slows the server down so much that its sweeps come late
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }
        self.step_to(0)

    def step_to(self, offset: int) -> None:
        """The wall clock is `offset` seconds off the true time from now on."""
        staged = self.dir / "offset.new"
        staged.write_text(f"{offset:+d}\n")
        staged.chmod(0o644)
        os.replace(staged, self.file)  # never half written when read

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def wall_clock(libfaketime: str) -> Iterator[WallClock]:
    clock = WallClock(libfaketime)
    yield clock
    clock.cleanup()


def test_wall_clock_steps_move_no_deadline_on_sqlite_nor_across_a_restart(
    tmp_path: Path, wall_clock: WallClock, scene_of: Callable[[ServerProcess], Scene]
) -> None:
    server = ServerProcess(tmp_path, env={**SETTINGS, **wall_clock.env})
    server.start()
    scene = scene_of(server)
    wall_clock.step_to(+HOUR)
    time.sleep(2)
    wall_clock.step_to(-HOUR)
    time.sleep(2)
    scene.nothing_ended()
    # A holder stops renewing, and the server restarts with its system clock an hour behind what its database
    # holds: the lease must still end at its deadline (or the start-up floor's), not an hour later.
    scene.holders.keep.discard(scene.qa["id"])
    server.stop()
    server.start()
    scene.holder_stops(scene.qa, late=GRACE + 1.5)
    assert "event=clock_behind" in server.log()
    scene.history_in_order()
    assert set(scene.waiter.statuses) == {202}, scene.waiter.statuses
    assert scene.holders.statuses() <= {200, TRANSPORT_ERROR}, scene.holders.answers


def test_steps_of_the_database_clock_move_no_deadline_on_postgres(
    tmp_path: Path, wall_clock: WallClock, scene_of: Callable[[ServerProcess], Scene]
) -> None:
    if not (BIN / "initdb").exists():
        tool_missing(f"no PostgreSQL binaries in {BIN} (scripts/postgres-setup installs them)")
    postgres = PostgresServer(env=wall_clock.env, own=True)  # only PostgreSQL's clock is stepped
    postgres.start()
    try:
        server = ServerProcess(tmp_path, env=SETTINGS, database=postgres.create_database())
        server.start()
        scene = scene_of(server)
        wall_clock.step_to(+HOUR)
        time.sleep(2)
        wall_clock.step_to(-HOUR)
        time.sleep(2)
        scene.nothing_ended()
        assert "event=clock_step" in server.log()
        scene.holder_stops(scene.qa)
        scene.history_in_order()
        assert set(scene.waiter.statuses) == {202}, scene.waiter.statuses
        scene.close()
        server.stop()
    finally:
        postgres.cleanup()
