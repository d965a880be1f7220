"""Helpers for the contract tests (tests/test_contract_*.py): requests as a user sends them to a real server,
times as the server states them, and bounded waits."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx

from .serverproc import ServerProcess

T = TypeVar("T")


@contextmanager
def running(workdir: Path, **options: Any) -> Iterator[ServerProcess]:
    """A started server (options as for ServerProcess), killed at the end whatever happened."""
    workdir.mkdir(parents=True, exist_ok=True)
    server = ServerProcess(workdir, **options)
    server.start()
    try:
        yield server
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.kill()


def at(stamp: str) -> float:
    """An RFC 3339 time of an answer, as seconds since the epoch."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def post(http: httpx.Client, **body: Any) -> httpx.Response:
    return http.post("/v1/leases", json=body)


def granted(http: httpx.Client, **body: Any) -> dict[str, Any]:
    answer = post(http, **body)
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def queued(http: httpx.Client, **body: Any) -> dict[str, Any]:
    answer = post(http, **body)
    assert answer.status_code == 202, answer.text
    return dict(answer.json())


def problem(answer: httpx.Response) -> tuple[int, str | None]:
    """The status and, for a problem document, its code."""
    is_problem = answer.headers.get("content-type", "").startswith("application/problem+json")
    return answer.status_code, answer.json().get("code") if is_problem else None


def release(http: httpx.Client, lease: dict[str, Any]) -> None:
    answer = http.delete(f"/v1/leases/{lease['id']}", headers={"X-Lease-Token": lease["token"]})
    assert answer.status_code == 204, answer.text


def lease_state(http: httpx.Client, lease_id: str) -> dict[str, Any]:
    answer = http.get(f"/v1/leases/{lease_id}")
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def environment(http: httpx.Client, name: str) -> dict[str, Any]:
    answer = http.get(f"/v1/environments/{name}")
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def queue_seqs(http: httpx.Client, name: str) -> list[int]:
    return [entry["seq"] for entry in environment(http, name)["queue"]]


def events(http: httpx.Client, name: str) -> list[dict[str, Any]]:
    """The audit events of one environment, oldest first."""
    answer = http.get("/v1/history", params={"environment": name, "limit": 1000})
    assert answer.status_code == 200, answer.text
    return list(reversed(answer.json()["events"]))


def event(http: httpx.Client, name: str, kind: str, **match: Any) -> dict[str, Any]:
    """The one event of this kind (and these fields) in the environment's history."""
    found = [e for e in events(http, name) if e["kind"] == kind and all(e[k] == v for k, v in match.items())]
    assert len(found) == 1, f"expected one {kind} event with {match}, got {found}"
    return found[0]


def wait_for(what: str, check: Callable[[], T | None], timeout: float, interval: float = 0.05) -> T:
    """Poll `check` until it returns something other than None (or False); fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None and result is not False:
            return result
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(interval)


class LongPoller(threading.Thread):
    """A waiter that keeps its place by long-polls of `wait` seconds until it is granted or told its ticket is
    gone; `answers` holds (monotonic time, status, body) of each answer."""

    def __init__(self, server: ServerProcess, key: str, wait: float, **body: Any) -> None:
        super().__init__(daemon=True)
        self.server, self.key, self.wait, self.body = server, key, wait, body
        self.answers: list[tuple[float, int, dict[str, Any]]] = []
        self.ticket: str | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        with self.server.client(self.key) as http:
            while not self._halt.is_set():
                # The first request joins at once (wait 0), so that the test learns the ticket; then long-polls.
                extra = {"ticket": self.ticket, "wait": self.wait} if self.ticket else {}
                try:
                    answer = post(http, **self.body, **extra)
                except httpx.HTTPError as exc:  # the server went away (a failed test's teardown): stop
                    self.answers.append((time.monotonic(), 0, {"error": repr(exc)}))
                    return
                self.answers.append((time.monotonic(), answer.status_code, answer.json()))
                if answer.status_code != 202:
                    return
                self.ticket = answer.json()["ticket"]

    def queued(self, timeout: float = 5) -> str:
        """The ticket, once the waiter has joined the queue."""
        return wait_for("the long-polling waiter's ticket", lambda: self.ticket, timeout)

    def outcome(self, timeout: float) -> tuple[float, int, dict[str, Any]]:
        """The answer that ended the polling: when it came, its status and body."""
        self.join(timeout)
        assert not self.is_alive(), f"still waiting after {timeout} s; answers so far: {self.answers}"
        return self.answers[-1]

    def stop(self) -> None:
        self._halt.set()


def ended_lease(http: httpx.Client, lease_id: str) -> dict[str, Any] | None:
    """The lease once it has ended (None while it is active)."""
    lease = lease_state(http, lease_id)
    return lease if lease["state"] != "active" else None
