"""The transaction core of the service: run an operation as one store transaction, settle a group (expiry,
abandonment, then every grant that has become possible), and deliver what happened after the commit.

An operation is a function of `(Tx, Op)`. The store may run it more than once (PostgreSQL runs it again after
a conflict), so it changes nothing but the transaction and its own `Op`: wake-ups, log lines and listeners
are delivered from the `Op` of the attempt that committed, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import threading
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

from . import rules
from .clock import Pauses, Seconds, elapsed
from .constants import PAUSE_BEAT, PAUSE_THRESHOLD, WAITED
from .errors import CallMeError, Unavailable
from .model import Environment, Event, Lease, Ticket
from .outcomes import Granted, GrantedGroup, Group, Queued
from .secret import ServerSecret
from .settings import Settings
from .store.base import Store, StoreBroken, StoreError, Tx
from .waiters import Waiters
from .webhooks import Notice, lease_notice

log = logging.getLogger("callme.service")
T = TypeVar("T")


@dataclass
class Op:
    """What one attempt of an operation did, delivered after its commit."""

    now: float
    events: list[Event] = field(default_factory=list)
    granted: list[str] = field(default_factory=list)
    # Grants to requests parked on this process, handed to them after the commit: their 201 needs no transaction.
    handed: dict[str, Granted | GrantedGroup] = field(default_factory=dict)
    # Raised after the commit: the operation's changes (such as expiry) stand although it answers an error.
    error: CallMeError | None = None
    # What webhooks may want to hear; written to the outbox with the operation's other changes.
    notices: list[Notice] = field(default_factory=list)
    outboxed: int = 0  # deliveries put in the outbox by the attempt that committed


Operation = Callable[[Tx, Op], T]
Listener = Callable[[Sequence[Event]], None]


class Core:
    """What every group of operations shares: the store, the settings, the server secret, the start-up floor and
    the wake-ups."""

    def __init__(
        self, store: Store, settings: Settings, secret: ServerSecret | None = None, *, elapsed: Seconds = elapsed
    ) -> None:
        self.store = store
        self.settings = settings
        # Derives and checks lease tokens and ticket ids; the server passes the one it opened at start-up.
        self.secret = secret if secret is not None else ServerSecret.generate()
        self.floor = rules.Floor(store.started_at, settings.ticket_grace)
        # A pause the process notices raises the floor as a start-up does (API.md invariant 5).
        self.pauses = Pauses(PAUSE_THRESHOLD, elapsed)
        self._latest = store.started_at  # the latest time an operation of this process started with
        self._time_lock = threading.Lock()  # operations start on the store's worker threads
        self.waiters = Waiters()
        self.listeners: list[Listener] = []
        self._tasks: set[asyncio.Task[None]] = set()
        # Called after a commit that put deliveries in the outbox (the deliverer wakes up: delivery.py).
        self.outbox_filled: Callable[[], None] = _nothing
        store.subscribe(self._committed_elsewhere)

    async def run(self, fn: Operation[T]) -> T:
        """Run `fn` in one transaction; after its commit wake the waiters it granted and publish its events."""

        def body(tx: Tx) -> tuple[Op, T]:
            op = Op(now=self._begin(tx))  # afresh for each attempt, so a retried attempt starts from nothing
            result = fn(tx, op)
            op.events = [replace(event, id=tx.add_event(event)) for event in op.events]
            if op.notices:
                op.outboxed = _outbox(tx, op)
            return op, result

        with _unavailable():
            op, result = await self.store.transact(body)
        if op.granted:
            untaken = self.waiters.notify(op.granted, op.handed)
            if untaken:
                # Handed to requests that ended (or whose clients hung up) while this commit was on its way.
                self._later(self.rearm(untaken))
        for event in op.events:
            log.info("%s", LogLine(event))
        if op.events:
            for listener in self.listeners:
                listener(op.events)
        if op.outboxed:
            self.outbox_filled()
        if op.error is not None:
            raise op.error
        return result

    def _begin(self, tx: Tx) -> float:
        """The operation's time; first, if the process was not running for a while, raise the floor to it."""
        now = tx.now()
        with self._time_lock:
            gap = self.pauses.resumed()
            if gap:
                # Everything this process did before the pause was done by the latest time an operation started
                # with: the floor covers it, even if this operation read the clock just before the pause.
                at = max(now, self._latest)
                if at > self.floor.started_at:
                    self.floor = replace(self.floor, started_at=at)
                log.warning(
                    "event=resumed paused_for=%.1fs: the server was not running; no lease or ticket that existed "
                    "ends before %.0f s from now (ticket_grace), so that its client can come back",
                    gap, self.floor.started_at + self.floor.grace - now,
                )  # fmt: skip
            self._latest = max(self._latest, now)
        return now

    async def heartbeat(self) -> None:
        """Beat until cancelled, so that a pause of the whole process is noticed (clock.Pauses)."""
        try:
            while True:
                self.pauses.beat()
                await asyncio.sleep(PAUSE_BEAT)
        finally:
            self.pauses.stop()

    async def read(self, fn: Callable[[Tx], T]) -> T:
        """Run `fn`, which changes nothing, in a transaction that only reads (Store.read)."""

        def body(tx: Tx) -> T:
            self._begin(tx)  # a read is an operation too: the first after a pause notices it
            return fn(tx)

        with _unavailable():
            return await self.store.read(body)

    async def rearm(self, ticket_ids: Sequence[str]) -> None:
        """Grants collected by their commit for requests that will not answer with them: their clients must now
        come for them within the grace, as for a grant made between polls."""

        def fn(tx: Tx, op: Op) -> None:
            for ticket_id in ticket_ids:
                ticket = tx.ticket(ticket_id)
                if ticket is not None:
                    self.uncollect(tx, op, ticket)

        await self.run(fn)

    def uncollect(self, tx: Tx, op: Op, ticket: Ticket) -> None:
        """The live lease granted to `ticket` (every part's, for a group), collected, must be collected again within
        the grace."""
        parts = tx.group_tickets(ticket.group_id) if ticket.group_id is not None else [ticket]
        for part in parts:
            lease = tx.lease(part.lease_id) if part.lease_id is not None else None
            if lease is not None and lease.live and lease.collect_by is None:
                lease.collect_by = op.now + self.settings.ticket_grace
                tx.update_lease(lease)

    def _later(self, work: Coroutine[object, object, None]) -> None:
        """Run `work` after the operation that asked for it has answered; a failure is logged, never raised."""

        async def run() -> None:
            try:
                await work
            except CallMeError as exc:
                log.warning("event=rearm_failed error=%s", exc.detail)

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _committed_elsewhere(self, granted: Sequence[str], events: Sequence[Event]) -> None:
        """Another replica committed: wake the waiters it granted, and tell the listeners what happened."""
        self.waiters.notify(granted)
        if events:
            for listener in self.listeners:
                listener(events)

    def event(self, op: Op, kind: str, env: str | None, **fields: object) -> None:
        """Record an audit event, written with the operation's other changes."""
        op.events.append(Event(at=op.now, kind=kind, environment=env, **fields))  # type: ignore[arg-type]

    def end(self, tx: Tx, op: Op, lease: Lease, state: str, actor: str | None, detail: str | None) -> None:
        """End a live lease (released, expired or revoked), and the ticket it served with it."""
        assert state in ("released", "expired", "revoked")
        lease.state = state  # type: ignore[assignment]
        lease.ended_at = op.now
        lease.collect_by = None
        tx.update_lease(lease)
        # The ticket ends with its lease, so that prune forgets it (and its request_id) a retention period
        # later; until then a repeat of its request_id finds the ended lease and is answered 410 ticket_gone.
        ticket = tx.ticket(lease.ticket_id) if lease.ticket_id is not None else None
        if ticket is not None and ticket.ended_at is None:
            ticket.ended_at = op.now
            tx.update_ticket(ticket)
        self.event(
            op, state, lease.environment, lease=lease.id, seq=lease.seq, fence=lease.fence,
            holder=lease.holder, actor=actor, detail=detail,
        )  # fmt: skip
        if state != "released":
            # Revoked by someone is forced; expired, or revoked by nobody (granted to a client that never came
            # back for it), means its holder is gone.
            kind = "lease.forced" if state == "revoked" and actor is not None else "lease.expired"
            op.notices.append(lease_notice(kind, lease, op.now, actor=actor, detail=detail))

    def grant(self, tx: Tx, op: Op, ticket: Ticket, env: str, *, collect: bool) -> Lease:
        """Grant `env` to a waiting ticket; `collect` when its client must come for it (and is woken to, unless it
        is a part of a group, whose client the caller wakes by its first part)."""
        lease = Lease(
            id="l_" + secrets.token_hex(10),
            environment=env,
            token=None,  # derived from the server secret when it is given out, never stored (secret.py)
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
            group_id=ticket.group_id,
        )
        tx.insert_lease(lease)
        ticket.state = "granted"
        ticket.lease_id = lease.id
        tx.update_ticket(ticket)
        waited = op.now - ticket.enqueued_at  # 0 for a grant made at once; metrics read it back (WAITED)
        self.event(
            op, "acquired", env, lease=lease.id, seq=ticket.seq, fence=lease.fence, holder=lease.holder,
            actor=ticket.key_name, detail=WAITED.format(waited) if waited > 0 else None,
        )  # fmt: skip
        if collect and ticket.group_id is None:
            op.granted.append(ticket.id)
        return lease

    def reach(
        self, tx: Tx, names: Sequence[str], labels: Sequence[str]
    ) -> tuple[list[Environment], list[str], list[Ticket]]:
        """The environments a decision about `names` and `labels` covers, every label among them, and the waiting
        tickets they could serve. A group waiting there joins what each of its parts could use, since it is
        granted all at once: the walk goes on from its parts until it reaches no new environment or label.

        On a store with row locks (PostgreSQL) the walk is made first on what is committed, locking nothing
        (`peek_group`), then the whole of it is locked at once (`group`, in name order) and checked again: locking
        it part by part, as the walk goes, would take locks out of name order, and two decisions could each wait
        for the other. SQLite holds the whole database anyway, so it walks once."""
        names, labels = list(names), list(labels)
        if tx.row_locks:
            names, labels = self._closure(tx, tx.peek_group, names, labels)
        while True:
            envs = tx.group(names, labels)
            all_labels = sorted(set(labels) | {label for e in envs for label in e.labels})
            waiting = tx.waiting_tickets([e.name for e in envs], all_labels)
            more_names, more_labels = self._parts_beyond(tx, envs, all_labels, waiting)
            if not more_names and not more_labels:
                return envs, all_labels, waiting
            # Joined since the walk (a group queued meanwhile): walk on from what is locked now.
            names, labels = self._closure(tx, tx.group, names + more_names, labels + more_labels)

    def _closure(
        self, tx: Tx, walk: Callable[[list[str], list[str]], list[Environment]], names: list[str], labels: list[str]
    ) -> tuple[list[str], list[str]]:
        while True:
            envs = walk(names, labels)
            all_labels = sorted(set(labels) | {label for e in envs for label in e.labels})
            waiting = tx.waiting_tickets([e.name for e in envs], all_labels)
            more_names, more_labels = self._parts_beyond(tx, envs, all_labels, waiting)
            if not more_names and not more_labels:
                return names, labels
            names, labels = names + more_names, labels + more_labels

    @staticmethod
    def _parts_beyond(
        tx: Tx, envs: list[Environment], all_labels: list[str], waiting: list[Ticket]
    ) -> tuple[list[str], list[str]]:
        """The targets of the parts of groups waiting among `waiting` that lie beyond `envs` and `all_labels`."""
        env_names = {e.name for e in envs}
        found = {t.id for t in waiting}
        more_names: set[str] = set()
        more_labels: set[str] = set()
        for group_id in sorted({t.group_id for t in waiting if t.group_id is not None}):
            for part in tx.group_tickets(group_id):
                if part.state != "waiting" or part.id in found:
                    continue
                if part.environment is not None and part.environment not in env_names:
                    more_names.add(part.environment)
                elif part.label is not None and part.label not in all_labels:
                    more_labels.add(part.label)
        return sorted(more_names), sorted(more_labels)

    def settle(
        self, tx: Tx, op: Op, names: Sequence[str], labels: Sequence[str], *, immediate: str | None = None
    ) -> Group:
        """Apply expiry and abandonment to the group, then grant every slot that can be granted. `immediate` is
        the request (a ticket's id, or a group's) answered by this very operation."""
        envs, _, found = self.reach(tx, names, labels)
        env_names = [e.name for e in envs]
        live: list[Lease] = []
        for lease in tx.live_leases(env_names):
            ending = rules.lease_ending(lease, op.now, self.floor)
            if ending == "revoked":
                self.end(tx, op, lease, ending, None, "granted while its client was away; not collected in time")
            elif ending == "expired":
                self.end(tx, op, lease, ending, None, "not renewed before its TTL ran out")
            else:
                live.append(lease)
        waiting: list[Ticket] = []
        for request in rules.requests(found):
            # The parts of a group are seen together (its first part's client polls for all), so they are
            # abandoned together.
            if rules.abandoned(request[0], op.now, self.floor):
                for ticket in request:
                    ticket.state = "abandoned"
                    ticket.ended_at = op.now
                    tx.update_ticket(ticket)
                    self.event(
                        op, "abandoned", ticket.environment, seq=ticket.seq, holder=ticket.holder,
                        detail=f"no poll for {self.settings.ticket_grace:g} s" + target_note(ticket),
                    )  # fmt: skip
            else:
                waiting.extend(request)
        counts = Counter(lease.environment for lease in live)
        grants = rules.schedule(envs, counts, waiting)
        by_request: dict[str, list[tuple[Ticket, str]]] = {}
        for ticket, env in grants:
            by_request.setdefault(ticket.request, []).append((ticket, env))
        for request_id, parts in by_request.items():
            # A grant answered by this very request, or handed to a request of its ticket parked on this process
            # (its 201 follows this commit, with no transaction between), is collected by this commit: a 201 must
            # never acknowledge a grant that a crash a moment later would leave to be revoked. Should the parked
            # request not answer with it after all (its client hung up), the grace is set again then
            # (Leasing.acquire, Core.rearm). Any other grant goes to a client between polls, or parked on another
            # replica: it is collected when a request of its ticket comes for it, else revoked after the grace.
            head = parts[0][0]  # the part whose ticket id its client holds (the first, by seq)
            handed = request_id != immediate and self.waiters.parked_here(head.id)
            collect = request_id != immediate and not handed
            granted: list[Granted] = []
            for ticket, env in parts:
                lease = self.grant(tx, op, ticket, env, collect=collect)
                live.append(lease)
                waiting.remove(ticket)
                env_of = must(next((e for e in envs if e.name == env), None))
                queued_for = max(0.0, op.now - ticket.enqueued_at)
                granted.append(Granted(lease, env_of, token=self.secret.token(lease), queued_for=queued_for))
            if collect and head.group_id is not None:
                op.granted.append(head.id)
            if handed:
                op.handed[head.id] = (
                    granted[0]
                    if head.group_id is None
                    else GrantedGroup(head.group_id, granted, token=self.secret.group_token(head.group_id))
                )
                op.granted.append(head.id)
        return Group(envs, live, waiting)

    def queued(self, group: Group, ticket: Ticket, parts: list[Ticket] | None = None) -> Queued:
        """The answer for a ticket (the first of a group's `parts`) still waiting in `group`."""
        return Queued(
            ticket=ticket,
            ticket_id=self.secret.ticket_id(ticket),
            position=rules.position(group.envs, group.waiting, ticket),
            group=group,
            parts=parts or [],
        )


def _nothing() -> None:
    pass


def _outbox(tx: Tx, op: Op) -> int:
    """Put each notice in the outbox once for every hook that wants it, in the operation's transaction; the
    number of deliveries put there. Only an operation that left a notice reads the hooks."""
    hooks = tx.webhooks()
    count = 0
    for notice in op.notices:
        payload = json.dumps(notice.payload, separators=(",", ":"), ensure_ascii=False)
        for hook in hooks:
            if notice.kind in hook.events:
                tx.add_delivery(hook.name, notice.kind, notice.environment, payload, op.now)
                count += 1
    return count


@contextlib.contextmanager
def _unavailable() -> Iterator[None]:
    """A store error as the 503 that answers it."""
    try:
        yield
    except StoreBroken as exc:  # the store has said it in the log once; not again for every request
        raise Unavailable(str(exc)) from exc
    except StoreError as exc:
        log.error("event=store_error error=%s", exc)
        raise Unavailable("the store cannot be reached; retry shortly") from exc


def must(value: T | None) -> T:
    """A value the operation's own reads guarantee (a row it just wrote or locked)."""
    assert value is not None
    return value


def names(ticket: Ticket) -> list[str]:
    """The environment a ticket names, as the `names` of a group."""
    return [ticket.environment] if ticket.environment is not None else []


def labels(ticket: Ticket) -> list[str]:
    """The label a ticket names, as the `labels` of a group."""
    return [ticket.label] if ticket.label is not None else []


def target_note(ticket: Ticket) -> str:
    """` (label L)` for a ticket that named a label, for event details."""
    return f" (label {ticket.label})" if ticket.label is not None else ""


class LogLine:
    """An event as one log line, `key=value` for what it has (no `lease=None` on a queue event); formatted only
    if a handler writes it."""

    __slots__ = ("event",)

    def __init__(self, event: Event) -> None:
        self.event = event

    def __str__(self) -> str:
        e = self.event
        parts = [f"event={e.kind}"]
        for name, value in (("environment", e.environment), ("lease", e.lease), ("seq", e.seq), ("fence", e.fence)):
            if value is not None:
                text = str(value)  # quoted when a name could be misread (any name is allowed: spaces, quotes)
                parts.append(f"{name}={text!r}" if any(c.isspace() or c in "='\"" for c in text) else f"{name}={text}")
        if e.holder is not None:
            parts.append(f"holder={e.holder!r}")
        if e.actor is not None:
            parts.append(f"actor={e.actor}")
        return " ".join(parts)
