"""The store interface: the service runs each operation as one function inside one transaction.

An operation is a plain function of a `Tx`; `Store.transact` runs it atomically (all of its writes are
durable before `transact` returns, or none happened) and serialises it against every other operation
that may touch the same environments. Keeping operations as functions lets a backend run several in one
commit later (group commit) without the service knowing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol, TypeVar
from urllib.parse import urlsplit

from ..model import Delivery, Environment, Event, Lease, Ticket, Webhook

T = TypeVar("T")


class StoreError(Exception):
    """The store cannot be reached or failed; answered as 503 `unavailable`."""


class StoreLocked(StoreError):
    """Another server process uses the same SQLite database file."""


class StoreBroken(StoreError):
    """The database is no longer the one this process opened (its file removed or replaced, another database
    behind the URL): no change is acknowledged any more until an operator restarts the server. Said once in the
    log and on /readyz, not per request."""


class Tx(Protocol):
    """What an operation may do inside its transaction. Synchronous: it runs on the store's worker."""

    # True when `group` takes row locks that concurrent decisions wait for (PostgreSQL); then a decision that may
    # grow (a group's parts) finds its extent with `peek_group` first and locks it all at once.
    row_locks: bool

    def now(self) -> float: ...

    def environments(self) -> list[Environment]: ...
    def environment(self, name: str) -> Environment | None: ...
    def group(self, names: Iterable[str], labels: Iterable[str]) -> list[Environment]:
        """The named environments, those carrying `labels`, and all that share labels with them."""
        ...

    def peek_group(self, names: Iterable[str], labels: Iterable[str]) -> list[Environment]:
        """The group as `group` finds it, as committed now, locking nothing: a hint of what a decision will lock
        (so that it can lock all of it at once, in name order), never what it decides on."""
        ...

    def save_environment(self, env: Environment) -> None: ...
    def delete_environment(self, name: str) -> None: ...
    def touch_environment(self, name: str, at: float) -> None:
        """Record that an auto-created environment is in use at `at` (no-op for a declared one)."""
        ...

    def idle_auto_environments(self, before: float, limit: int) -> list[str]:
        """Up to `limit` auto-created environments last used before `before`, least recently used first."""
        ...

    def lease(self, lease_id: str) -> Lease | None: ...
    def live_leases(self, environments: Sequence[str]) -> list[Lease]: ...
    def oldest_live_lease(self, environment: str, key_name: str | None) -> Lease | None: ...
    def insert_lease(self, lease: Lease) -> None: ...
    def update_lease(self, lease: Lease) -> None: ...

    def ticket(self, ticket_id: str) -> Ticket | None: ...
    def ticket_by_request(self, key_name: str, request_id: str) -> Ticket | None: ...
    def waiting_tickets(self, environments: Sequence[str], labels: Sequence[str]) -> list[Ticket]: ...
    def group_tickets(self, group_id: str) -> list[Ticket]:
        """Every part of a group, in seq order (the order of its parts)."""
        ...

    def group_leases(self, group_id: str) -> list[Lease]:
        """Every lease granted to a group, live or ended, in the order of its parts."""
        ...

    def insert_ticket(self, ticket: Ticket) -> None: ...
    def update_ticket(self, ticket: Ticket) -> None: ...

    def next_fence(self) -> int: ...
    def next_seq(self) -> int: ...

    def add_event(self, event: Event) -> int:
        """Record an audit event; returns its id (ids only grow, so they order the log)."""
        ...

    def events(self, environment: str | None, limit: int) -> list[Event]: ...
    def events_after(self, after: int, limit: int) -> list[Event]:
        """Up to `limit` events with an id above `after`, oldest first (an SSE client's resume)."""
        ...

    def due(self, now: float, grace: float) -> tuple[list[str], list[str]]:
        """Environments and labels with a lease or ticket past its own deadline (before any floor)."""
        ...

    # Webhooks (webhooks.py, delivery.py).
    def webhooks(self) -> list[Webhook]: ...
    def webhook(self, name: str) -> Webhook | None: ...
    def save_webhook(self, hook: Webhook) -> None: ...
    def delete_webhook(self, name: str) -> bool:
        """Delete the hook and its deliveries (pending or logged); False when there was none."""
        ...

    def add_delivery(self, hook: str, event: str, environment: str | None, payload: str, at: float) -> int:
        """Put a delivery in the outbox, due at `at`; returns its id."""
        ...

    def claim_deliveries(
        self, now: float, until: float, limit: int, lapsed: float, skip_hooks: Sequence[str] = ()
    ) -> list[Delivery]:
        """Up to `limit` pending deliveries due by `now`, not to `skip_hooks`, and claimed by nobody (or by a claim
        that ended before `lapsed`), oldest due first, now claimed until `until`; a delivery claimed by another
        replica's transaction meanwhile is skipped, not waited for."""
        ...

    def due_deliveries(
        self, now: float, limit: int, skip_ids: Sequence[int] = (), skip_hooks: Sequence[str] = ()
    ) -> list[Delivery]:
        """Up to `limit` pending deliveries due by `now`, oldest due first, but `skip_ids` and those to `skip_hooks`,
        claimed or not (a single-process store keeps its claims in memory: delivery.py)."""
        ...

    def finish_attempt(self, delivery: Delivery) -> None:
        """Record an attempt's outcome: the delivery's state, attempts, next_at, last_status, last_error and
        delivered_at as given, and its claim released."""
        ...

    def deliveries(self, hook: str, limit: int) -> list[Delivery]:
        """The hook's newest `limit` deliveries, newest first."""
        ...

    def overdue_leases(self, now: float, default: float, limit: int) -> list[Lease]:
        """Live leases held longer than their environment's held_too_long (else `default`) and not yet alerted."""
        ...

    def overdue_tickets(self, now: float, default: float, limit: int) -> list[Ticket]:
        """Waiting tickets older than their environment's waiting_too_long (else `default`; a ticket for a label:
        `default`) and not yet alerted."""
        ...

    def mark_alerted(self, lease_id: str | None, ticket_id: str | None, at: float) -> bool:
        """Note that a lease (or a ticket) is announced as held (waiting) too long, so that it is announced once:
        False when it was noted already (by another replica's sweep meanwhile)."""
        ...

    # History, pruned in batches: each deletes at most `limit` rows and returns how many it deleted.
    def prune_tickets(self, before: float, limit: int) -> int:
        """Forget tickets that ended before `before` (their request_ids with them); a granted ticket ends
        with its lease."""
        ...

    def prune_leases(self, before: float, limit: int) -> int:
        """Forget leases that ended before `before`; a live lease is never forgotten."""
        ...

    def prune_events(self, before: float, limit: int) -> int:
        """Forget the oldest events, in id order, up to the first one at or after `before`."""
        ...

    def prune_deliveries(self, before: float, limit: int) -> int:
        """Forget deliveries made before `before` that are no longer pending."""
        ...


class Store(Protocol):
    started_at: float
    # None when this process makes every change, so its wake-ups are exact; else how often a parked long-poll
    # looks again by itself, since wake-ups from other replicas are only hints.
    recheck_interval: float | None

    def subscribe(self, hook: Callable[[Sequence[str], Sequence[Event]], None]) -> None:
        """Have `hook(granted_ticket_ids, events)` called on the event loop for what other processes commit."""
        ...

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def transact(self, fn: Callable[[Tx], T]) -> T: ...
    async def read(self, fn: Callable[[Tx], T]) -> T:
        """`fn` in a transaction that only reads, from one consistent state of the database; it locks nothing,
        and a database that accepts no writes (a standby after a fail-over) still serves it."""
        ...

    async def readiness(self) -> str | None:
        """None when the store answers and accepts writes (as its last write attempts showed; see health.py),
        else why not, in one line that names no secret."""
        ...


def connected(start: Iterable[str], labels: Iterable[str], envs: Mapping[str, Environment]) -> list[str]:
    """Names of the environments reachable from `start` and `labels` through shared labels, sorted.

    A decision about any of them may depend on the tickets of the others, so they are decided together
    (and a store that locks rows locks exactly these, in this order).
    """
    by_label: dict[str, list[str]] = {}
    for env in envs.values():
        for label in env.labels:
            by_label.setdefault(label, []).append(env.name)
    todo = [name for name in start if name in envs]
    for label in labels:
        todo.extend(by_label.get(label, ()))
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for label in envs[name].labels:
            todo.extend(by_label[label])
    return sorted(seen)


def redact(url: str) -> str:
    """The database URL without its password, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is not None:
        user, _, host = parts.netloc.rpartition("@")
        url = url.replace(parts.netloc, f"{user.split(':', 1)[0]}:***@{host}", 1)
    return re.sub(r"(password=)[^&]*", r"\1***", url)
