"""One method per operation. Each runs as one store transaction: expiry first, then the change, then the
grants the change makes possible; waiters are woken and events published only after the commit."""

from __future__ import annotations

import functools
import hmac
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

from . import rules
from .constants import MIN_PRIORITY, REQUEST_ID_RETENTION
from .errors import (
    Busy,
    CallMeError,
    Conflict,
    Forbidden,
    Invalid,
    LeaseGone,
    Maintenance,
    NotFound,
    TicketGone,
    Unavailable,
    WrongToken,
)
from .model import Environment, Event, Lease, Principal, Ticket
from .settings import Settings
from .store.base import Store, StoreError, Tx
from .validation import AcquireRequest, EnvironmentChange
from .waiters import Waiters

log = logging.getLogger("callme.service")
T = TypeVar("T")
# The detail of an `acquired` event that served a ticket after it waited in the queue.
WAITED = "waited {:.3f} s in the queue"


@dataclass
class _Op:
    """What one operation did, delivered after its commit."""

    now: float
    events: list[Event] = field(default_factory=list)
    granted: list[str] = field(default_factory=list)
    error: CallMeError | None = None


@dataclass
class Group:
    """A group of environments after expiry and grants: what a decision and an answer are based on."""

    envs: list[Environment]
    live: list[Lease]
    waiting: list[Ticket]

    def env(self, name: str) -> Environment | None:
        return next((e for e in self.envs if e.name == name), None)

    def holders(self, ticket: Ticket) -> list[Lease]:
        usable = {e.name for e in self.envs if rules.can_serve(e, ticket)}
        return [lease for lease in self.live if lease.environment in usable]


@dataclass
class Granted:
    lease: Lease
    environment: Environment


@dataclass
class Queued:
    ticket: Ticket
    position: int
    group: Group
    waited: float = 0.0


@dataclass
class EnvironmentView:
    env: Environment
    leases: list[Lease]
    queue: list[tuple[Ticket, int]]


class _DryRun(Exception):  # control flow: rolls a transaction back on purpose
    def __init__(self, granted: bool) -> None:
        self.granted = granted


def _new_lease_id() -> str:
    return "l_" + secrets.token_hex(10)


def _new_ticket_id() -> str:
    return "t_" + secrets.token_urlsafe(24)


class Service:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.floor = rules.Floor(store.started_at, settings.ticket_grace)
        self.waiters = Waiters()
        self.listeners: list[Callable[[Sequence[Event]], None]] = []
        self._last_prune = 0.0
        store.subscribe(self._committed_elsewhere)

    # -- plumbing -------------------------------------------------------------------------------------

    async def _run(self, fn: Callable[[Tx, _Op], T]) -> T:
        def body(tx: Tx) -> tuple[_Op, T]:
            op = _Op(now=tx.now())
            result = fn(tx, op)
            op.events = [replace(event, id=tx.add_event(event)) for event in op.events]
            return op, result

        try:
            op, result = await self.store.transact(body)
        except StoreError as exc:
            log.error("event=store_error error=%s", exc)
            raise Unavailable("the store cannot be reached; retry shortly") from exc
        if op.granted:
            self.waiters.notify(op.granted)
        for event in op.events:
            log.info(
                "event=%s environment=%s lease=%s seq=%s fence=%s holder=%r actor=%s",
                event.kind, event.environment, event.lease, event.seq, event.fence, event.holder, event.actor,
            )  # fmt: skip
        if op.events:
            for listener in self.listeners:
                listener(op.events)
        if op.error is not None:
            raise op.error
        return result

    def _committed_elsewhere(self, granted: Sequence[str], events: Sequence[Event]) -> None:
        """Another replica committed: wake the waiters it granted, and tell the listeners what happened."""
        self.waiters.notify(granted)
        if events:
            for listener in self.listeners:
                listener(events)

    def _event(self, op: _Op, kind: str, env: str | None, **fields: object) -> None:
        op.events.append(Event(at=op.now, kind=kind, environment=env, **fields))  # type: ignore[arg-type]

    def _end(self, tx: Tx, op: _Op, lease: Lease, state: str, actor: str | None, detail: str | None) -> None:
        assert state in ("released", "expired", "revoked")
        lease.state = state  # type: ignore[assignment]
        lease.ended_at = op.now
        lease.collect_by = None
        tx.update_lease(lease)
        self._event(
            op, state, lease.environment, lease=lease.id, seq=lease.seq, fence=lease.fence,
            holder=lease.holder, actor=actor, detail=detail,
        )  # fmt: skip

    def _grant(self, tx: Tx, op: _Op, ticket: Ticket, env: str, *, collect: bool) -> Lease:
        lease = Lease(
            id=_new_lease_id(),
            environment=env,
            token="k_" + secrets.token_urlsafe(24),  # a prefix: never starts with "-", which CLIs take for a flag
            holder=ticket.holder,
            metadata=ticket.metadata,
            fence=tx.next_fence(),
            ttl=ticket.ttl,
            acquired_at=op.now,
            expires_at=op.now + ticket.ttl,
            touched_at=op.now,
            key_name=ticket.key_name,
            ticket_id=ticket.id,
            seq=ticket.seq,
            collect_by=op.now + self.settings.ticket_grace if collect else None,
        )
        tx.insert_lease(lease)
        ticket.state = "granted"
        ticket.lease_id = lease.id
        tx.update_ticket(ticket)
        waited = op.now - ticket.enqueued_at  # 0 for a grant made at once; metrics read it back (WAITED)
        self._event(
            op, "acquired", env, lease=lease.id, seq=ticket.seq, fence=lease.fence, holder=lease.holder,
            actor=ticket.key_name, detail=WAITED.format(waited) if waited > 0 else None,
        )  # fmt: skip
        if collect:
            op.granted.append(ticket.id)
        return lease

    def _settle(
        self, tx: Tx, op: _Op, names: Sequence[str], labels: Sequence[str], *, immediate: str | None = None
    ) -> Group:
        """Apply expiry and abandonment to the group, then grant every slot that can be granted."""
        envs = tx.group(names, labels)
        env_names = [e.name for e in envs]
        all_labels = sorted(set(labels) | {label for e in envs for label in e.labels})
        live: list[Lease] = []
        for lease in tx.live_leases(env_names):
            ending = rules.lease_ending(lease, op.now, self.floor)
            if ending == "revoked":
                self._end(tx, op, lease, ending, None, "granted while its client was away; not collected in time")
            elif ending == "expired":
                self._end(tx, op, lease, ending, None, "not renewed before its TTL ran out")
            else:
                live.append(lease)
        waiting: list[Ticket] = []
        for ticket in tx.waiting_tickets(env_names, all_labels):
            if rules.abandoned(ticket, op.now, self.floor):
                ticket.state = "abandoned"
                ticket.ended_at = op.now
                tx.update_ticket(ticket)
                self._event(
                    op, "abandoned", ticket.environment, seq=ticket.seq, holder=ticket.holder,
                    detail=f"no poll for {self.settings.ticket_grace:g} s" + _target_note(ticket),
                )  # fmt: skip
            else:
                waiting.append(ticket)
        counts = Counter(lease.environment for lease in live)
        for ticket, env in rules.schedule(envs, counts, waiting):
            live.append(self._grant(tx, op, ticket, env, collect=ticket.id != immediate))
            waiting.remove(ticket)
        return Group(envs, live, waiting)

    def _queued(self, group: Group, ticket: Ticket) -> Queued:
        return Queued(ticket=ticket, position=rules.position(group.envs, group.waiting, ticket), group=group)

    # -- acquire --------------------------------------------------------------------------------------

    async def acquire(self, principal: Principal, req: AcquireRequest) -> Granted | Queued:
        """Acquire, or queue and hold the request open up to `wait` (capped at max_wait) for a grant."""
        started = time.monotonic()
        hold = min(req.wait, self.settings.max_wait)
        deadline = started + hold
        outcome = await self._run(lambda tx, op: self._acquire(tx, op, principal, req, hold))
        while isinstance(outcome, Queued) and not self.waiters.closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            # Wake-ups from other replicas are hints: on a shared store, look again now and then anyway.
            await self.waiters.wait(outcome.ticket.id, min(remaining, self.store.recheck_interval or remaining))
            ticket_id = outcome.ticket.id
            left = max(0.0, deadline - time.monotonic())
            outcome = await self._run(functools.partial(self._poll_fn, ticket_id, left))
        if isinstance(outcome, Queued):
            outcome.waited = round(time.monotonic() - started, 3)
        return outcome

    def _acquire(self, tx: Tx, op: _Op, principal: Principal, req: AcquireRequest, hold: float) -> Granted | Queued:
        if req.priority > principal.max_priority and principal.role != "admin":
            raise Invalid("priority", f"is above this key's max_priority ({principal.max_priority})")
        holder = req.holder if req.holder is not None else principal.name
        ttl = req.ttl if req.ttl is not None else self.settings.default_ttl
        existing: Ticket | None = None
        if req.request_id is not None:
            existing = tx.ticket_by_request(principal.name, req.request_id)
            if existing is not None:
                _check_repeat(existing, req, holder, ttl)
        if existing is None and req.ticket is not None:
            existing = tx.ticket(req.ticket)
            if existing is None:
                raise TicketGone("this ticket is unknown (or long gone); post again without it to join the queue")
            _check_same_target(existing, req)
        if existing is not None:
            return self._poll(tx, op, existing.id, hold)
        return self._new_ticket(tx, op, principal, req, holder, ttl, hold)

    def _new_ticket(
        self, tx: Tx, op: _Op, principal: Principal, req: AcquireRequest, holder: str, ttl: int, hold: float
    ) -> Granted | Queued:
        if req.environment is not None:
            env = tx.environment(req.environment)
            if env is None:
                if not self.settings.auto_create:
                    raise NotFound(
                        f'environment "{req.environment}" does not exist and auto-create is off; '
                        f"an admin can create it with PUT /v1/environments/{req.environment}"
                    )
                env = Environment(name=req.environment, auto=True, created_at=op.now, updated_at=op.now)
                tx.save_environment(env)
                self._event(
                    op,
                    "environment_changed",
                    env.name,
                    actor=principal.name,
                    detail="created on first request",
                )
        elif not tx.group([], [req.label or ""]):
            raise NotFound(f'no environment carries the label "{req.label}"')
        ticket = Ticket(
            id=_new_ticket_id(),
            seq=tx.next_seq(),
            key_name=principal.name,
            environment=req.environment,
            label=req.label,
            holder=holder,
            ttl=ttl,
            priority=req.priority,
            metadata=req.metadata,
            enqueued_at=op.now,
            seen_at=op.now + hold,
            request_id=req.request_id,
        )
        tx.insert_ticket(ticket)
        group = self._settle(tx, op, _names(ticket), _labels(ticket), immediate=ticket.id)
        mine = next((lease for lease in group.live if lease.ticket_id == ticket.id), None)
        if mine is not None:
            return Granted(mine, _must(group.env(mine.environment)))
        usable = [e for e in group.envs if rules.can_serve(e, ticket)]
        if not req.queue:
            if usable and all(e.maintenance for e in usable):
                notes = "; ".join(f"{e.name}: {e.note}" for e in usable if e.note)
                raise Maintenance(f"{_what(ticket)} is in maintenance" + (f" ({notes})" if notes else ""))
            holders = group.holders(ticket)
            raise Busy(_busy_detail(ticket, holders), holders=holders, envs=group.envs)
        self._event(op, "queued", ticket.environment, seq=ticket.seq, holder=holder, actor=principal.name,
                    detail=_target_note(ticket).strip(" ()") or None)  # fmt: skip
        return self._queued(group, ticket)

    def _poll_fn(self, ticket_id: str, hold: float, tx: Tx, op: _Op) -> Granted | Queued:
        return self._poll(tx, op, ticket_id, hold)

    def _poll(self, tx: Tx, op: _Op, ticket_id: str, hold: float) -> Granted | Queued:
        ticket = tx.ticket(ticket_id)
        if ticket is None or ticket.state in ("left", "abandoned"):
            raise TicketGone("this ticket left the queue or was abandoned; post again without it")
        group = self._settle(tx, op, _names(ticket), _labels(ticket))
        ticket = _must(tx.ticket(ticket_id))
        if ticket.state == "abandoned":
            # Rolls this transaction back; the background sweep records the abandonment a moment later.
            raise TicketGone(f"this ticket was abandoned after {self.settings.ticket_grace:g} s without a poll")
        if ticket.state == "granted":
            lease = _must(tx.lease(_must(ticket.lease_id)))
            if not lease.live:
                raise TicketGone(f"the lease granted to this ticket has ended ({lease.state}); post again without it")
            if lease.collect_by is not None:
                lease.collect_by = None
                tx.update_lease(lease)
            return Granted(lease, _must(tx.environment(lease.environment)))
        ticket.seen_at = op.now + hold
        tx.update_ticket(ticket)
        return self._queued(group, ticket)

    async def leave(self, principal: Principal, ticket_id: str) -> None:
        def fn(tx: Tx, op: _Op) -> None:
            ticket = tx.ticket(ticket_id)
            if ticket is None or ticket.state in ("left", "abandoned"):
                return
            if ticket.state == "granted":
                lease = tx.lease(_must(ticket.lease_id))
                if lease is not None and lease.live:
                    self._end(tx, op, lease, "released", principal.name, "its ticket left the queue")
            ticket.state = "left"
            ticket.ended_at = op.now
            tx.update_ticket(ticket)
            self._event(op, "left", ticket.environment, seq=ticket.seq, holder=ticket.holder, actor=principal.name,
                        detail=_target_note(ticket).strip(" ()") or None)  # fmt: skip
            self._settle(tx, op, _names(ticket), _labels(ticket))

        await self._run(fn)

    # -- renew and release ----------------------------------------------------------------------------

    def _live_lease(self, tx: Tx, op: _Op, lease_id: str, token: str | None, *, force: bool = False) -> Lease:
        lease = tx.lease(lease_id)
        if lease is None:
            raise NotFound(f"lease {lease_id} does not exist")
        if not force and (token is None or not hmac.compare_digest(token.encode(), lease.token.encode())):
            raise WrongToken(
                f"the token does not match lease {lease_id}; send the token of the 201 answer in X-Lease-Token"
            )
        self._settle(tx, op, [lease.environment], [])
        return _must(tx.lease(lease_id))

    async def renew(self, lease_id: str, token: str | None, ttl: int | None) -> Granted:
        def fn(tx: Tx, op: _Op) -> Granted:
            lease = self._live_lease(tx, op, lease_id, token)
            if not lease.live:
                op.error = LeaseGone(f"lease {lease_id} has ended ({lease.state}); acquire the environment again")
            else:
                lease.ttl = ttl if ttl is not None else lease.ttl
                lease.expires_at = op.now + lease.ttl
                lease.touched_at = op.now
                lease.collect_by = None
                tx.update_lease(lease)
            return Granted(lease, _must(tx.environment(lease.environment)))

        return await self._run(fn)

    async def release(self, principal: Principal, lease_id: str, token: str | None, *, force: bool = False) -> None:
        if force and not principal.allows("admin"):
            raise Forbidden("a forced release needs an admin key")

        def fn(tx: Tx, op: _Op) -> None:
            lease = self._live_lease(tx, op, lease_id, token, force=force)
            if lease.state == "released":
                return
            if not lease.live:
                op.error = LeaseGone(f"lease {lease_id} had already ended ({lease.state})")
                return
            if force:
                self._end(tx, op, lease, "revoked", principal.name, "forced release by an admin")
            else:
                self._end(tx, op, lease, "released", principal.name, None)
            self._settle(tx, op, [lease.environment], [])

        await self._run(fn)

    # -- the original /maybe routes -------------------------------------------------------------------

    def _maybe_request(self, name: str, principal: Principal) -> AcquireRequest:
        # Below every v1 priority: a /maybe request never overtakes a waiter of the queue.
        return AcquireRequest(
            environment=name, label=None, holder=principal.name, ttl=self.settings.maybe_ttl, wait=0.0,
            queue=False, ticket=None, priority=MIN_PRIORITY - 1, metadata={"via": "maybe"}, request_id=None,
        )  # fmt: skip

    async def maybe_check(self, principal: Principal, name: str) -> bool:
        """Would a /maybe POST get its slot now? Decided by doing it and rolling back."""

        def fn(tx: Tx, op: _Op) -> None:
            try:
                self._new_ticket(tx, op, principal, self._maybe_request(name, principal), principal.name,
                                 self.settings.maybe_ttl, 0.0)  # fmt: skip
            except (Busy, Maintenance, NotFound):
                raise _DryRun(False) from None
            raise _DryRun(True)

        try:
            await self._run(fn)
        except _DryRun as answer:
            return answer.granted
        raise AssertionError("unreachable")

    async def maybe_acquire(self, principal: Principal, name: str) -> Granted:
        req = self._maybe_request(name, principal)
        return await self._run(
            lambda tx, op: _as_granted(
                self._new_ticket(tx, op, principal, req, principal.name, self.settings.maybe_ttl, 0.0)
            )
        )

    async def maybe_release(self, principal: Principal, name: str) -> None:
        def fn(tx: Tx, op: _Op) -> None:
            self._settle(tx, op, [name], [])
            key = None if principal.allows("admin") else principal.name
            lease = tx.oldest_live_lease(name, key)
            if lease is not None:
                self._end(tx, op, lease, "released", principal.name, "released through /maybe")
                self._settle(tx, op, [name], [])

        await self._run(fn)

    # -- environments -----------------------------------------------------------------------------------

    async def put_environment(
        self, principal: Principal, name: str, change: EnvironmentChange
    ) -> tuple[Environment, bool]:
        def fn(tx: Tx, op: _Op) -> tuple[Environment, bool]:
            old = tx.environment(name)
            base = old or Environment(name=name, created_at=op.now)
            env = Environment(
                name=name,
                slots=change.slots if change.slots is not None else base.slots,
                labels=change.labels if change.labels is not None else base.labels,
                description=change.description if change.description is not None else base.description,
                properties=change.properties if change.properties is not None else base.properties,
                maintenance=change.maintenance if change.maintenance is not None else base.maintenance,
                note=change.note if change.note_given else base.note,
                auto=False,
                created_at=base.created_at,
                updated_at=op.now,
            )
            tx.save_environment(env)
            detail = "created" if old is None else _changes(old, env)
            self._event(op, "environment_changed", name, actor=principal.name, detail=detail)
            self._settle(tx, op, [name], [*(old.labels if old else ()), *env.labels])
            return env, old is None

        return await self._run(fn)

    async def delete_environment(self, principal: Principal, name: str, *, force: bool) -> None:
        def fn(tx: Tx, op: _Op) -> None:
            if tx.environment(name) is None:
                raise NotFound(f'environment "{name}" does not exist')
            group = self._settle(tx, op, [name], [])
            leases = [lease for lease in group.live if lease.environment == name]
            tickets = [t for t in group.waiting if t.environment == name]
            if (leases or tickets) and not force:
                raise Conflict(
                    f'environment "{name}" has {len(leases)} live lease(s) and {len(tickets)} waiter(s); '
                    "wait for them, or delete with ?force=true to revoke and drop them"
                )
            for lease in leases:
                self._end(tx, op, lease, "revoked", principal.name, "environment deleted")
            for ticket in tickets:
                ticket.state = "left"
                ticket.ended_at = op.now
                tx.update_ticket(ticket)
                self._event(op, "left", name, seq=ticket.seq, holder=ticket.holder, actor=principal.name,
                            detail="environment deleted")  # fmt: skip
            tx.delete_environment(name)
            self._event(op, "environment_deleted", name, actor=principal.name)

        await self._run(fn)

    async def apply_declared(self, declared: Sequence[tuple[str, EnvironmentChange]]) -> None:
        """Create or update the environments of the configuration file (start-up)."""
        system = Principal(name="config", role="admin")
        for name, change in declared:
            await self.put_environment(system, name, change)

    # -- reads ------------------------------------------------------------------------------------------

    async def environments(self, name: str | None = None) -> list[EnvironmentView]:
        def fn(tx: Tx, op: _Op) -> list[EnvironmentView]:
            if name is None:
                envs = tx.environments()
            else:
                envs = tx.group([name], [])
                if not envs:
                    raise NotFound(f'environment "{name}" does not exist')
            names = [e.name for e in envs]
            leases = tx.live_leases(names)
            waiting = tx.waiting_tickets(names, sorted({label for e in envs for label in e.labels}))
            places = rules.positions(envs, waiting)
            ordered = sorted(waiting, key=rules.order_key)
            return [
                EnvironmentView(
                    env=e,
                    leases=[lease for lease in leases if lease.environment == e.name],
                    queue=[(t, places[t.id]) for t in ordered if rules.can_serve(e, t)],
                )
                for e in envs
                if name is None or e.name == name
            ]

        return await self._run(fn)

    async def lease(self, lease_id: str) -> Granted:
        def fn(tx: Tx, op: _Op) -> Granted:
            lease = tx.lease(lease_id)
            if lease is None:
                raise NotFound(f"lease {lease_id} does not exist")
            env = tx.environment(lease.environment) or Environment(name=lease.environment)
            return Granted(lease, env)

        return await self._run(fn)

    async def history(self, environment: str | None, limit: int) -> list[Event]:
        return await self._run(lambda tx, op: tx.events(environment, limit))

    async def events_after(self, after: int, limit: int) -> list[Event]:
        return await self._run(lambda tx, op: tx.events_after(after, limit))

    async def sweep(self) -> None:
        """Expire leases and abandon tickets past their deadlines, and grant what they free."""

        def fn(tx: Tx, op: _Op) -> None:
            names, labels = tx.due(op.now, self.settings.ticket_grace)
            if names or labels:
                self._settle(tx, op, names, labels)
            if op.now - self._last_prune > 3600:
                tx.prune(op.now - REQUEST_ID_RETENTION)
                self._last_prune = op.now

        await self._run(fn)

    async def ready(self) -> bool:
        return await self.store.ping()


def _must(value: T | None) -> T:
    assert value is not None
    return value


def _as_granted(outcome: Granted | Queued) -> Granted:
    assert isinstance(outcome, Granted)  # a request with queue=false is granted or raises
    return outcome


def _names(ticket: Ticket) -> list[str]:
    return [ticket.environment] if ticket.environment is not None else []


def _labels(ticket: Ticket) -> list[str]:
    return [ticket.label] if ticket.label is not None else []


def _what(ticket: Ticket) -> str:
    if ticket.environment is not None:
        return f'environment "{ticket.environment}"'
    return f'every environment labelled "{ticket.label}"'


def _target_note(ticket: Ticket) -> str:
    return f" (label {ticket.label})" if ticket.label is not None else ""


def _busy_detail(ticket: Ticket, holders: list[Lease]) -> str:
    if not holders:
        return f"{_what(ticket)} has no free slot; retry later or join the queue"
    first = holders[0]
    until = time.strftime("%H:%M UTC", time.gmtime(first.expires_at))
    more = f" and {len(holders) - 1} more" if len(holders) > 1 else ""
    return f"{_what(ticket)} is held by {first.holder}{more} until {until}; retry later or join the queue"


def _check_same_target(ticket: Ticket, req: AcquireRequest) -> None:
    if (ticket.environment, ticket.label) != (req.environment, req.label):
        raise Invalid("ticket", f"belongs to a request for {_what(ticket)}; name the same target")
    if ticket.priority != req.priority:
        raise Invalid("priority", f"differs from the ticket's priority {ticket.priority}")


def _check_repeat(ticket: Ticket, req: AcquireRequest, holder: str, ttl: int) -> None:
    _check_same_target(ticket, req)
    for field_name, before, now in (
        ("holder", ticket.holder, holder),
        ("ttl", ticket.ttl, ttl),
        ("metadata", ticket.metadata, req.metadata),
    ):
        if before != now:
            raise Invalid(field_name, "differs from the first request with this request_id; use a new request_id")
    if req.ticket is not None and req.ticket != ticket.id:
        raise Invalid("ticket", "does not belong to the request with this request_id")


def _changes(old: Environment, new: Environment) -> str:
    parts = []
    for name in ("slots", "labels", "description", "properties", "maintenance", "note"):
        if getattr(old, name) != getattr(new, name):
            parts.append(f"{name}: {getattr(old, name)!r} -> {getattr(new, name)!r}")
    if old.auto:
        parts.append("declared by an admin")
    return "; ".join(parts) or "unchanged"
