"""Drive the real Service on a real SQLite file with a fake clock, synchronously, for rule-level tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from callme.server.clock import FakeClock
from callme.server.model import Environment, Event, Lease, Principal, Ticket
from callme.server.outcomes import Granted, GrantedGroup, Queued
from callme.server.secret import ServerSecret
from callme.server.service import Service
from callme.server.settings import Settings
from callme.server.store.base import Store, Tx
from callme.server.store.sqlite import SQLiteStore
from callme.server.validation import AcquireRequest, EnvironmentChange

T = TypeVar("T")
ADMIN = Principal("tester", "admin", 1000)


def request(
    environment: str | None = None,
    label: str | None = None,
    *,
    ttl: int | None = 60,
    priority: int = 0,
    queue: bool = True,
    ticket: str | None = None,
    holder: str | None = None,
    request_id: str | None = None,
    metadata: dict[str, Any] | None = None,
    parts: list[tuple[str | None, str | None]] | None = None,
) -> AcquireRequest:
    return AcquireRequest(
        environment=environment,
        label=label,
        holder=holder,
        ttl=ttl,
        wait=0.0,
        queue=queue,
        ticket=ticket,
        priority=priority,
        metadata=metadata or {},
        request_id=request_id,
        parts=tuple(parts) if parts is not None else None,
    )


class Harness:
    def __init__(
        self,
        path: Path | str,
        *,
        grace: float = 10.0,
        settings: Settings | None = None,
        make_store: Callable[[FakeClock], Store] | None = None,
        clock: FakeClock | None = None,
    ) -> None:
        """On the SQLite file `path`, or on the store that `make_store` makes (a PostgreSQL database)."""
        self.path = str(path)
        self.clock = clock or FakeClock()
        self.settings = settings or Settings(ticket_grace=grace, default_ttl=60, max_ttl=3600)
        self.secret = ServerSecret.generate()  # one for every start: tokens and ticket ids outlive a restart
        self.loop = asyncio.new_event_loop()
        self.make_store = make_store or (lambda clock: SQLiteStore(self.path, clock))
        self.store: Store | None = None
        self.service: Service | None = None
        self.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def start(self) -> None:
        self.store = self.make_store(self.clock)
        self.run(self.store.open())
        # Pauses are measured on the fake clock too; they are noticed only between beats (clock.Pauses).
        self.service = Service(self.store, self.settings, self.secret, elapsed=self.clock.now)

    def stop(self) -> None:
        assert self.store is not None
        self.run(self.store.close())
        self.store = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        if self.store is not None:
            self.stop()
        self.loop.close()

    @property
    def svc(self) -> Service:
        assert self.service is not None
        return self.service

    def read(self, fn: Callable[[Tx], T]) -> T:
        assert self.store is not None
        return self.run(self.store.transact(fn))

    def acquire(self, req: AcquireRequest, principal: Principal = ADMIN) -> Granted | GrantedGroup | Queued:
        return self.run(self.svc.acquire(principal, req))

    def put(self, name: str, **change: Any) -> Environment:
        env, _ = self.run(self.svc.put_environment(ADMIN, name, EnvironmentChange(**change)))
        return env

    def environments(self) -> list[Environment]:
        return self.read(lambda tx: tx.environments())

    def live_leases(self) -> list[Lease]:
        return self.read(lambda tx: tx.live_leases([e.name for e in tx.environments()]))

    def waiting(self) -> list[Ticket]:
        def fn(tx: Tx) -> list[Ticket]:
            envs = tx.environments()
            labels = sorted({label for e in envs for label in e.labels})
            return tx.waiting_tickets([e.name for e in envs], labels)

        return self.read(fn)

    def events(self, after: int = 0) -> list[Event]:
        events = self.read(lambda tx: tx.events(None, 1_000_000))
        return sorted((e for e in events if (e.id or 0) > after), key=lambda e: e.id or 0)
