"""`GET /metrics`: Prometheus metrics of the pool, the queue, the HTTP routes and the store.

Label values stay bounded: an environment is named only when an operator declared it (in the
configuration file or with PUT); every auto-created environment is counted under `_auto`, and a ticket
that named a label rather than an environment under `_label`. Waiters by label use only the labels that
declared environments carry. Routes are their templates (`/v1/leases/{lease}`), never raw paths.
"""

from __future__ import annotations

import re
import time
from collections import Counter as Tally
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .constants import AUTO_CREATED, AUTO_ENVIRONMENTS, LABEL_TICKETS, WAITED
from .events import RecentIds
from .model import Event
from .outcomes import EnvironmentView
from .store.base import Store, Tx

T = TypeVar("T")

_WAITED = re.compile(re.escape(WAITED).replace(r"\{:\.3f\}", r"([0-9.]+)"))
_WAIT_BUCKETS = (0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, float("inf"))
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, float("inf"))
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
_ENDINGS = {"released": "releases", "expired": "expiries", "revoked": "revocations"}


def waited(event: Event) -> float:
    """How long the ticket of an `acquired` event waited in the queue (0 for a grant made at once)."""
    found = _WAITED.fullmatch(event.detail or "")
    return float(found.group(1)) if found else 0.0


class Metrics:
    """One registry per application, so that several apps (tests) never share series."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        env = ["environment"]
        self.slots = Gauge("callme_environment_slots", "Slots of the environment", env, registry=r)
        self.held = Gauge("callme_leases_held", "Live leases on the environment", env, registry=r)
        self.waiters = Gauge("callme_waiters", "Tickets waiting that name the environment", env, registry=r)
        self.label_waiters = Gauge("callme_label_waiters", "Tickets waiting that name the label", ["label"], registry=r)
        self.maintenance = Gauge("callme_environment_maintenance", "1 while in maintenance", env, registry=r)
        self.grants = Counter("callme_grants", "Leases granted", env, registry=r)
        self.endings = {
            kind: Counter(f"callme_{name}", f"Leases {kind}", env, registry=r) for kind, name in _ENDINGS.items()
        }
        self.abandonments = Counter("callme_abandonments", "Tickets abandoned by their client", env, registry=r)
        self.events = Counter("callme_events", "Audit events recorded", ["kind"], registry=r)
        self.wait = Histogram(
            "callme_wait_seconds", "Time from joining the queue to the grant (0: granted at once)", env,
            buckets=_WAIT_BUCKETS, registry=r,
        )  # fmt: skip
        self.requests = Histogram(
            "callme_http_request_duration_seconds", "Time to the response's first byte, by route template",
            ["method", "route"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.transactions = Histogram(
            "callme_store_transaction_seconds", "Time of one store transaction", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.sse_clients = Gauge("callme_sse_clients", "Open /v1/events streams", registry=r)
        self.declared: set[str] = set()
        self._labels: set[str] = set()
        self._recent = RecentIds()

    def _env(self, name: str | None) -> str:
        if name is None:
            return LABEL_TICKETS
        return name if name in self.declared else AUTO_ENVIRONMENTS

    def record(self, events: Sequence[Event]) -> None:
        """A Service listener: counts what each committed operation did."""
        for event in filter(self._recent.first_time, events):
            self.events.labels(event.kind).inc()
            if event.kind == "environment_changed" and event.environment is not None:
                if event.detail != AUTO_CREATED:  # any other change is a PUT, which leaves it declared
                    self.declared.add(event.environment)
                continue
            env = self._env(event.environment)
            if event.kind == "acquired":
                self.grants.labels(env).inc()
                self.wait.labels(env).observe(waited(event))
            elif event.kind in self.endings:
                self.endings[event.kind].labels(env).inc()
            elif event.kind == "abandoned":
                self.abandonments.labels(env).inc()
            if event.kind == "environment_deleted" and event.environment is not None:
                self.declared.discard(event.environment)

    def refresh(self, views: Sequence[EnvironmentView], sse_clients: int) -> None:
        """Set the gauges from the environments as they are now."""
        self.declared = {v.env.name for v in views if not v.env.auto}
        labels = {label for v in views if not v.env.auto for label in v.env.labels}
        for gauge in (self.slots, self.held, self.waiters, self.maintenance):
            gauge.clear()
        for label in self._labels - labels:
            self.label_waiters.remove(label)
        self._labels = labels
        slots: Tally[str] = Tally()
        held: Tally[str] = Tally()
        tickets: dict[int, tuple[str | None, str | None]] = {}
        for view in views:
            env = self._env(view.env.name)
            slots[env] += view.env.slots
            held[env] += len(view.leases)
            self.maintenance.labels(env).inc(1 if view.env.maintenance else 0)
            for ticket, _ in view.queue:
                tickets[ticket.seq] = (ticket.environment, ticket.label)
        for env in sorted(slots):
            self.slots.labels(env).set(slots[env])
            self.held.labels(env).set(held[env])
            self.waiters.labels(env).set(0)
            for counter in (self.grants, *self.endings.values(), self.abandonments):
                counter.labels(env)  # every series exists from the start, at 0
        by_env = Tally(self._env(e) for e, label in tickets.values() if label is None)
        by_label = Tally(label for _, label in tickets.values() if label is not None and label in labels)
        for env, count in by_env.items():
            self.waiters.labels(env).set(count)
        for label in labels:
            self.label_waiters.labels(label).set(by_label[label])
        self.sse_clients.set(sse_clients)

    def exposition(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class TimedStore:
    """The store, with each transaction's time observed; everything else passes straight through."""

    def __init__(self, store: Store, histogram: Histogram) -> None:
        self._store = store
        self._histogram = histogram

    # Properties with setters: the Store protocol declares these as plain (settable) attributes.
    @property
    def started_at(self) -> float:
        return self._store.started_at

    @started_at.setter
    def started_at(self, value: float) -> None:
        self._store.started_at = value

    @property
    def recheck_interval(self) -> float | None:
        return self._store.recheck_interval

    @recheck_interval.setter
    def recheck_interval(self, value: float | None) -> None:
        self._store.recheck_interval = value

    def subscribe(self, hook: Callable[[Sequence[str], Sequence[Event]], None]) -> None:
        self._store.subscribe(hook)

    async def open(self) -> None:
        await self._store.open()

    async def close(self) -> None:
        await self._store.close()

    async def readiness(self) -> str | None:
        return await self._store.readiness()

    async def transact(self, fn: Callable[[Tx], T]) -> T:
        started = time.perf_counter()
        try:
            return await self._store.transact(fn)
        finally:
            self._histogram.observe(time.perf_counter() - started)

    async def read(self, fn: Callable[[Tx], T]) -> T:
        started = time.perf_counter()
        try:
            return await self._store.read(fn)
        finally:
            self._histogram.observe(time.perf_counter() - started)

    def __getattr__(self, name: str) -> Any:  # a backend's own extras (such as a listen hook)
        return getattr(self._store, name)


class RequestTimer:
    """ASGI middleware: observes each request's time to its first byte under its route's template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        observed = False

        def observe() -> None:
            nonlocal observed
            if not observed:
                observed = True
                route = scope.get("route")
                # path_format: the template without its convertors (`{name}`, not `{name:path}`), as documented.
                template = getattr(route, "path_format", None) or "unmatched"
                method = scope["method"] if scope["method"] in _METHODS else "other"  # clients choose it
                self.metrics.requests.labels(method, template).observe(time.perf_counter() - started)

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                observe()
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            observe()
