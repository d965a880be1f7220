"""Leases and tickets: acquire (with its long-poll), poll, leave, renew, release, and the background sweep."""

from __future__ import annotations

import asyncio
import functools
import secrets
import time
from collections.abc import Awaitable, Callable

from . import rules
from .constants import ALERT_BATCH, AUTO_CREATED, WEBHOOK_ALERT_INTERVAL
from .errors import Busy, Forbidden, Invalid, LeaseGone, Maintenance, NotFound, TicketGone, Unavailable, WrongToken
from .model import Environment, Lease, Principal, Ticket, request_digest
from .outcomes import Granted, GrantedGroup, Queued
from .secret import new_ticket_row_id
from .service_core import Core, Op, labels, must, names, target_note
from .store.base import Tx
from .validation import AcquireRequest
from .waiters import Parked
from .webhooks import lease_notice, ticket_notice

HangUp = Callable[[], Awaitable[object]]
Outcome = Granted | GrantedGroup | Queued


async def _watch(hung_up: HangUp, parked: Parked) -> None:
    await hung_up()
    parked.hang_up()


class Leasing:
    """The operations of a lease's and a ticket's life."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self._next_alerts = 0.0  # when the sweep next looks for leases held and tickets waiting too long

    # -- acquire ----------------------------------------------------------------------------------------

    async def acquire(
        self, principal: Principal, req: AcquireRequest, hung_up: HangUp | None = None
    ) -> Granted | GrantedGroup | Queued:
        """Acquire, or queue and hold the request open up to `wait` (capped at max_wait) for a grant.

        `hung_up` returns when the request's client has gone (the ASGI `http.disconnect`): a parked request then
        stops waiting and its ticket counts as last seen now, so that it is abandoned a grace later; a grant it
        was handed or found meanwhile is left to be collected within the grace (revoked after it) rather than
        held by a client that is not there.
        """
        core = self.core
        started = time.monotonic()
        hold = min(req.wait, core.settings.max_wait)
        deadline = started + hold
        outcome = await core.run(lambda tx, op: self._acquire(tx, op, principal, req, hold))
        if not isinstance(outcome, Queued) or hold <= 0 or core.waiters.closed:
            return self._waited(outcome, started)
        ticket_id = outcome.ticket.id
        parked = core.waiters.park(ticket_id)
        watch = asyncio.ensure_future(_watch(hung_up, parked)) if hung_up is not None else None
        try:
            while isinstance(outcome, Queued):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                outcome = outcome.compact()
                # Wake-ups from other replicas are hints: on a shared store, look again now and then anyway.
                await core.waiters.wait(parked, min(remaining, core.store.recheck_interval or remaining))
                # Shutting down, every held long-poll is answered at once with its place, without another
                # transaction each (thousands of them would hold up the exit); a grant made a moment ago is
                # durable, and the ticket finds it when its client comes back.
                if parked.gone or parked.handed is not None or core.waiters.shutting_down():
                    break
                left = max(0.0, deadline - time.monotonic())
                outcome = await core.run(functools.partial(self._poll_fn, ticket_id, left))
        finally:
            core.waiters.unpark(ticket_id, parked)
            if watch is not None:
                watch.cancel()
        if parked.gone:  # nobody reads the answer
            found = isinstance(outcome, (Granted, GrantedGroup)) or parked.handed is not None
            await core.run(functools.partial(self._gone_fn, ticket_id, found))
        elif isinstance(parked.handed, (Granted, GrantedGroup)):
            # From the granting commit itself, which collected it: also a grant that came as the wait ran out.
            outcome = parked.handed
        return self._waited(outcome, started)

    @staticmethod
    def _waited(outcome: Outcome, started: float) -> Outcome:
        if isinstance(outcome, Queued):
            outcome.waited = round(time.monotonic() - started, 3)
        return outcome

    def _gone_fn(self, ticket_id: str, found: bool, tx: Tx, op: Op) -> None:
        """The client of a parked request hung up: its ticket was last seen now, not at the end of its wait, and
        a grant the request `found` (and collected) must be collected again, by the client coming back."""
        ticket = tx.ticket(ticket_id)
        if ticket is None:
            return
        if ticket.state == "waiting" and ticket.seen_at > op.now:
            ticket.seen_at = op.now
            tx.update_ticket(ticket)
        elif found and ticket.state == "granted":
            self.core.uncollect(tx, op, ticket)

    def _acquire(self, tx: Tx, op: Op, principal: Principal, req: AcquireRequest, hold: float) -> Outcome:
        if req.priority > principal.max_priority and principal.role != "admin":
            raise Invalid("priority", f"is above this key's max_priority ({principal.max_priority})")
        holder = req.holder if req.holder is not None else principal.name
        ttl = req.ttl if req.ttl is not None else self.core.settings.default_ttl
        # The ticket's row, once the MAC of the id presented checks out (secret.py): a row id alone names none.
        ticket_row = self.core.secret.ticket_row_id(req.ticket) if req.ticket is not None else None
        existing: Ticket | None = None
        if req.request_id is not None:
            existing = tx.ticket_by_request(principal.name, request_digest(req.request_id))
            if existing is not None:
                _check_repeat(tx, existing, req, holder, ttl, ticket_row)
        if existing is None and req.ticket is not None:
            existing = tx.ticket(ticket_row) if ticket_row is not None else None
            if existing is None:
                raise TicketGone("this ticket is unknown (or long gone); post again without it to join the queue")
            _check_same_target(tx, existing, req)
        if existing is not None:
            return self._poll(tx, op, existing.id, hold)
        if req.parts is not None:
            return self.new_group(tx, op, principal, req, holder, ttl, hold)
        return self.new_ticket(tx, op, principal, req, holder, ttl, hold)

    def _check_target(
        self, tx: Tx, op: Op, principal: Principal, environment: str | None, label: str | None, *, lock: bool = True
    ) -> None:
        """The environment exists (created now if auto-create is on), or some environment carries the label."""
        core = self.core
        if environment is not None:
            env = tx.environment(environment)
            if env is None:
                if not core.settings.auto_create:
                    raise NotFound(
                        f'environment "{environment}" does not exist and auto-create is off; '
                        f"an admin can create it with PUT /v1/environments/{environment}"
                    )
                env = Environment(name=environment, auto=True, created_at=op.now, updated_at=op.now)
                tx.save_environment(env)
                core.event(op, "environment_changed", env.name, actor=principal.name, detail=AUTO_CREATED)
        elif not (tx.group if lock else tx.peek_group)([], [label or ""]):
            raise NotFound(f'no environment carries the label "{label}"')

    def new_ticket(
        self, tx: Tx, op: Op, principal: Principal, req: AcquireRequest, holder: str, ttl: int, hold: float
    ) -> Granted | Queued:
        """Take a new place in the queue and grant it at once if it may be; with `queue` false, Busy instead."""
        core = self.core
        self._check_target(tx, op, principal, req.environment, req.label)
        ticket = Ticket(
            id=new_ticket_row_id(),
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
            request_id=request_digest(req.request_id) if req.request_id is not None else None,
        )
        tx.insert_ticket(ticket)
        group = core.settle(tx, op, names(ticket), labels(ticket), immediate=ticket.id)
        if req.environment is not None:
            target = group.env(req.environment)
            if target is None:
                # PostgreSQL: deleted (or forgotten) by another replica since it was read above, before it was
                # locked. Nothing of this attempt stays; the client's retry finds or creates it anew.
                raise Unavailable(f'environment "{req.environment}" was deleted meanwhile; retry')
            if target.auto:
                tx.touch_environment(target.name, op.now)  # in use: not forgotten (service_history.py)
        mine = next((lease for lease in group.live if lease.ticket_id == ticket.id), None)
        if mine is not None:
            return Granted(mine, must(group.env(mine.environment)), token=core.secret.token(mine))
        usable = [e for e in group.envs if rules.can_serve(e, ticket)]
        if not req.queue:
            if usable and all(e.maintenance for e in usable):
                notes = "; ".join(f"{e.name}: {e.note}" for e in usable if e.note)
                raise Maintenance(f"{_what(ticket)} is in maintenance" + (f" ({notes})" if notes else ""))
            holders = group.holders(ticket)
            raise Busy(_busy_detail(ticket, holders), holders=holders, envs=group.envs)
        core.event(op, "queued", ticket.environment, seq=ticket.seq, holder=holder, actor=principal.name,
                   detail=target_note(ticket).strip(" ()") or None)  # fmt: skip
        return core.queued(group, ticket)

    def new_group(
        self, tx: Tx, op: Op, principal: Principal, req: AcquireRequest, holder: str, ttl: int, hold: float
    ) -> Outcome:
        """Take one new place in the queue for every part of `all` at once, and grant them all at once if they may
        be; with `queue` false, Busy instead. Nothing of it is granted, or kept, while another part waits."""
        core = self.core
        targets = req.targets
        for environment, label in targets:
            # Nothing locked yet: the settle below locks every part's environments at once, in name order.
            self._check_target(tx, op, principal, environment, label, lock=False)
        group_id = "g_" + secrets.token_hex(10)
        parts: list[Ticket] = []
        for environment, label in targets:
            seq = tx.next_seq()
            first = not parts
            ticket = Ticket(
                id=new_ticket_row_id(),
                seq=seq,
                key_name=principal.name,
                environment=environment,
                label=label,
                holder=holder,
                ttl=ttl,
                priority=req.priority,
                metadata=req.metadata,
                enqueued_at=op.now,
                seen_at=op.now + hold,
                # Kept on the first part only: a repeat finds the group by it.
                request_id=request_digest(req.request_id) if req.request_id is not None and first else None,
                group_id=group_id,
                group_seq=seq if first else parts[0].seq,
            )
            parts.append(ticket)
            tx.insert_ticket(parts[-1])
        names = [t.environment for t in parts if t.environment is not None]
        if not rules.servable(tx.peek_group(names, [t.label for t in parts if t.label is not None]), parts):
            raise Invalid(
                "all", "no environments could serve every part at once, each on an environment of its own; "
                "a label part needs an environment with that label that no other part names",
            )  # fmt: skip
        group = core.settle(tx, op, names, [t.label for t in parts if t.label is not None], immediate=group_id)
        for name in names:
            target = group.env(name)
            if target is None:
                raise Unavailable(f'environment "{name}" was deleted meanwhile; retry')
            if target.auto:
                tx.touch_environment(target.name, op.now)
        mine = {lease.ticket_id: lease for lease in group.live if lease.group_id == group_id}
        if len(mine) == len(parts):
            leases = [mine[t.id] for t in parts]
            return self._granted_group(group_id, leases, group.envs)
        if not req.queue:
            for ticket in parts:
                usable = [e for e in group.envs if rules.can_serve(e, ticket)]
                if usable and all(e.maintenance for e in usable):
                    notes = "; ".join(f"{e.name}: {e.note}" for e in usable if e.note)
                    raise Maintenance(f"{_what(ticket)} is in maintenance" + (f" ({notes})" if notes else ""))
            holders = group.holders(parts[0], parts)
            raise Busy(_busy_detail(parts[0], holders, parts), holders=holders, envs=group.envs)
        for ticket in parts:
            core.event(
                op, "queued", ticket.environment, seq=ticket.seq, holder=holder, actor=principal.name,
                detail=_part_note(ticket, parts),
            )  # fmt: skip
        return core.queued(group, parts[0], parts)

    def _granted_group(
        self, group_id: str, leases: list[Lease], envs: list[Environment], *, queued_since: float | None = None
    ) -> GrantedGroup:
        """The group's 201; `queued_since`, when its request joined the queue (None: granted at once)."""
        by_name = {e.name: e for e in envs}
        granted = [
            Granted(
                lease, by_name[lease.environment], token=self.core.secret.token(lease),
                queued_for=0.0 if queued_since is None else max(0.0, lease.acquired_at - queued_since),
            )
            for lease in leases
        ]  # fmt: skip
        return GrantedGroup(group_id, granted, token=self.core.secret.group_token(group_id))

    def _poll_fn(self, ticket_id: str, hold: float, tx: Tx, op: Op) -> Outcome:
        """A parked request looks again (woken, or now and then)."""
        return self._poll(tx, op, ticket_id, hold)

    def _poll(self, tx: Tx, op: Op, ticket_id: str, hold: float) -> Outcome:
        ticket = tx.ticket(ticket_id)
        if ticket is None or ticket.state in ("left", "abandoned"):
            raise TicketGone("this ticket left the queue or was abandoned; post again without it")
        if ticket.group_id is not None:
            return self._poll_group(tx, op, ticket.group_id, hold)
        group = self.core.settle(tx, op, names(ticket), labels(ticket))
        ticket = must(tx.ticket(ticket_id))
        if ticket.state == "abandoned":
            # Rolls this transaction back; the background sweep records the abandonment a moment later.
            raise TicketGone(f"this ticket was abandoned after {self.core.settings.ticket_grace:g} s without a poll")
        if ticket.state == "granted":
            lease = tx.lease(must(ticket.lease_id))
            if lease is None or not lease.live:  # a pruned lease ended long ago (service_history.py)
                state = lease.state if lease is not None else "long ago"
                raise TicketGone(f"the lease granted to this ticket has ended ({state}); post again without it")
            if lease.collect_by is not None:  # the client came back for it: collected before its 201 goes out
                lease.collect_by = None
                tx.update_lease(lease)
            # The token again, as often as asked (API.md): derived anew, since the lease's row holds none.
            env = must(tx.environment(lease.environment))
            queued_for = max(0.0, lease.acquired_at - ticket.enqueued_at)
            return Granted(lease, env, token=self.core.secret.token(lease), queued_for=queued_for)
        ticket.seen_at = op.now + hold
        tx.update_ticket(ticket)
        return self.core.queued(group, ticket)

    def _poll_group(self, tx: Tx, op: Op, group_id: str, hold: float) -> Outcome:
        """The client of a group comes back with its (first part's) ticket: every lease, or its place."""
        parts = tx.group_tickets(group_id)
        if any(t.state in ("left", "abandoned") for t in parts):
            raise TicketGone("this ticket left the queue or was abandoned; post again without it")
        group = self.core.settle(
            tx, op, [t.environment for t in parts if t.environment is not None],
            [t.label for t in parts if t.label is not None],
        )  # fmt: skip
        parts = tx.group_tickets(group_id)
        if any(t.state == "abandoned" for t in parts):
            raise TicketGone(f"this ticket was abandoned after {self.core.settings.ticket_grace:g} s without a poll")
        if all(t.state == "granted" for t in parts):
            leases = [tx.lease(must(t.lease_id)) for t in parts]
            ended = [lease for lease in leases if lease is None or not lease.live]
            if ended:
                raise TicketGone(
                    "a lease granted to this group has ended; release the group and post again without the ticket"
                )
            live = [must(lease) for lease in leases]
            for lease in live:
                if lease.collect_by is not None:  # collected before its 201 goes out
                    lease.collect_by = None
                    tx.update_lease(lease)
            envs = [must(tx.environment(lease.environment)) for lease in live]
            return self._granted_group(group_id, live, envs, queued_since=parts[0].enqueued_at)
        for part in parts:
            part.seen_at = op.now + hold
            tx.update_ticket(part)
        return self.core.queued(group, parts[0], parts)

    async def leave(self, principal: Principal, ticket_id: str) -> None:
        """Leave the queue, releasing a lease granted to the ticket meanwhile."""
        core = self.core
        row_id = core.secret.ticket_row_id(ticket_id)
        if row_id is None:
            return  # names no ticket (a row id read from a copy of the database among them): as if already gone

        def fn(tx: Tx, op: Op) -> None:
            first = tx.ticket(row_id)
            if first is None:
                return
            parts = tx.group_tickets(first.group_id) if first.group_id is not None else [first]
            if any(t.state in ("left", "abandoned") for t in parts):
                return
            for ticket in parts:
                if ticket.state == "granted":
                    lease = tx.lease(must(ticket.lease_id))
                    if lease is not None and lease.live:
                        core.end(tx, op, lease, "released", principal.name, "its ticket left the queue")
                ticket.state = "left"
                ticket.ended_at = op.now
                tx.update_ticket(ticket)
                core.event(op, "left", ticket.environment, seq=ticket.seq, holder=ticket.holder,
                           actor=principal.name, detail=_part_note(ticket, parts))  # fmt: skip
            core.settle(
                tx, op, [n for t in parts for n in names(t)], [lb for t in parts for lb in labels(t)]
            )  # fmt: skip

        await core.run(fn)

    # -- renew and release ------------------------------------------------------------------------------

    def _lease_for(self, tx: Tx, lease_id: str, token: str | None, *, force: bool = False) -> Lease:
        """The lease, once its token is checked (the token first: nothing about a lease without it)."""
        lease = tx.lease(lease_id)
        if lease is None:
            raise NotFound(f"lease {lease_id} does not exist")
        if not force and not self.core.secret.token_matches(lease, token):
            raise WrongToken(
                f"the token does not match lease {lease_id}; send the token of the 201 answer in X-Lease-Token"
            )
        return lease

    def _settled_lease_for(self, tx: Tx, op: Op, lease_id: str, token: str | None) -> Lease:
        """Check the token, settle the lease's environment, and read the lease again: it may have ended."""
        lease = self._lease_for(tx, lease_id, token)
        self.core.settle(tx, op, [lease.environment], [])
        return must(tx.lease(lease_id))

    async def renew(self, lease_id: str, token: str | None, ttl: int | None) -> Granted:
        """Extend a live lease to now + ttl (its own ttl when None)."""

        def fn(tx: Tx, op: Op) -> Granted:
            lease = self._settled_lease_for(tx, op, lease_id, token)
            if not lease.live:
                op.error = LeaseGone(f"lease {lease_id} has ended ({lease.state}); acquire the environment again")
            else:
                lease.ttl = ttl if ttl is not None else lease.ttl
                lease.expires_at = op.now + lease.ttl
                lease.touched_at = op.now
                lease.collect_by = None
                tx.update_lease(lease)
            return Granted(lease, must(tx.environment(lease.environment)))

        return await self.core.run(fn)

    async def release(self, principal: Principal, lease_id: str, token: str | None, *, force: bool = False) -> None:
        """Release a lease with its token, or revoke it with `force` (admin); the freed slot is granted."""
        if force and not principal.allows("admin"):
            raise Forbidden("a forced release needs an admin key")
        core = self.core

        def fn(tx: Tx, op: Op) -> None:
            lease = self._lease_for(tx, lease_id, token, force=force)
            if not lease.live or rules.lease_ending(lease, op.now, core.floor) is not None:
                # Ended, or ending now: settle first (which ends it, and grants what that frees), then say so.
                core.settle(tx, op, [lease.environment], [])
                lease = must(tx.lease(lease_id))
                if lease.state != "released":
                    op.error = LeaseGone(f"lease {lease_id} had already ended ({lease.state})")
                return
            # Live: end it, then one settle applies the group's other deadlines and grants every freed slot.
            if force:
                core.end(tx, op, lease, "revoked", principal.name, "forced release by an admin")
            else:
                core.end(tx, op, lease, "released", principal.name, None)
            core.settle(tx, op, [lease.environment], [])

        await core.run(fn)

    # -- groups of leases as a whole --------------------------------------------------------------------

    def _group_for(self, tx: Tx, group_id: str, token: str | None, *, force: bool = False) -> list[Lease]:
        """The group's leases, once its token is checked (the token first: nothing about a group without it)."""
        leases = tx.group_leases(group_id)
        if not leases:
            raise NotFound(f"group {group_id} does not exist")
        if not force and not self.core.secret.group_token_matches(group_id, token):
            raise WrongToken(
                f"the token does not match group {group_id}; send the group's token of the 201 answer in X-Lease-Token"
            )
        return leases

    async def group(self, group_id: str) -> GrantedGroup:
        """A group's leases (without tokens)."""

        def fn(tx: Tx) -> GrantedGroup:
            leases = tx.group_leases(group_id)
            if not leases:
                raise NotFound(f"group {group_id} does not exist")
            envs = [e for e in (tx.environment(lease.environment) for lease in leases) if e is not None]
            gone = {lease.environment for lease in leases} - {e.name for e in envs}
            envs += [Environment(name=name) for name in gone]  # deleted since: shown by name
            by_name = {e.name: e for e in envs}
            return GrantedGroup(group_id, [Granted(lease, by_name[lease.environment]) for lease in leases])

        return await self.core.read(fn)

    async def renew_group(self, group_id: str, token: str | None, ttl: int | None) -> GrantedGroup:
        """Renew every lease of a group to now + ttl (each its own ttl when None): all of them, or none when one has
        ended (410)."""

        def fn(tx: Tx, op: Op) -> GrantedGroup:
            leases = self._group_for(tx, group_id, token)
            self.core.settle(tx, op, sorted({lease.environment for lease in leases}), [])
            leases = tx.group_leases(group_id)
            ended = [lease for lease in leases if not lease.live]
            if ended:
                op.error = LeaseGone(
                    f"lease {ended[0].id} of group {group_id} has ended ({ended[0].state}); release the group and "
                    "acquire again"
                )
            else:
                for lease in leases:
                    lease.ttl = ttl if ttl is not None else lease.ttl
                    lease.expires_at = op.now + lease.ttl
                    lease.touched_at = op.now
                    lease.collect_by = None
                    tx.update_lease(lease)
            envs = [e for e in (tx.environment(lease.environment) for lease in leases) if e is not None]
            by_name = {e.name: e for e in envs}
            return GrantedGroup(
                group_id,
                [Granted(lease, by_name.get(lease.environment) or Environment(lease.environment)) for lease in leases],
            )

        return await self.core.run(fn)

    async def release_group(
        self, principal: Principal, group_id: str, token: str | None, *, force: bool = False
    ) -> None:
        """Release every live lease of a group with its token, or revoke them with `force` (admin); the freed slots
        are granted in the same transaction. 410 when one of them had expired or been revoked before."""
        if force and not principal.allows("admin"):
            raise Forbidden("a forced release needs an admin key")
        core = self.core

        def fn(tx: Tx, op: Op) -> None:
            leases = self._group_for(tx, group_id, token, force=force)
            ended = [lease for lease in leases if not lease.live or rules.lease_ending(lease, op.now, core.floor)]
            for lease in leases:
                if lease not in ended:
                    if force:
                        core.end(tx, op, lease, "revoked", principal.name, "forced release by an admin")
                    else:
                        core.end(tx, op, lease, "released", principal.name, None)
            core.settle(tx, op, sorted({lease.environment for lease in leases}), [])
            for lease in ended:
                now = must(tx.lease(lease.id))
                if now.state != "released":
                    op.error = LeaseGone(f"lease {now.id} of group {group_id} had already ended ({now.state})")

        await core.run(fn)

    # -- the background sweep ---------------------------------------------------------------------------

    async def sweep(self) -> None:
        """Expire leases and abandon tickets past their deadlines, and grant what they free. (Old history is
        pruned by a task of its own, in small batches: service_history.py.)"""
        core = self.core
        alerts = time.monotonic() >= self._next_alerts
        if alerts:
            self._next_alerts = time.monotonic() + WEBHOOK_ALERT_INTERVAL

        def fn(tx: Tx, op: Op) -> None:
            due_names, due_labels = tx.due(op.now, core.settings.ticket_grace)
            if due_names or due_labels:
                core.settle(tx, op, due_names, due_labels)
            if alerts:
                self._alerts(tx, op)

        await core.run(fn)

    def _alerts(self, tx: Tx, op: Op) -> None:
        """Announce, once each, the leases held and the tickets waiting longer than their environment allows; only
        when a hook wants to hear of it (until then they are not marked, and a hook added later hears of them)."""
        wanted = {event for hook in tx.webhooks() for event in hook.events}
        settings = self.core.settings
        if "lease.held_too_long" in wanted:
            for lease in tx.overdue_leases(op.now, settings.held_too_long, ALERT_BATCH):
                if tx.mark_alerted(lease.id, None, op.now):
                    op.notices.append(lease_notice("lease.held_too_long", lease, op.now))
        if "queue.waiting_too_long" in wanted:
            for ticket in tx.overdue_tickets(op.now, settings.waiting_too_long, ALERT_BATCH):
                if tx.mark_alerted(None, ticket.id, op.now):
                    op.notices.append(ticket_notice("queue.waiting_too_long", ticket, op.now))


def _what(ticket: Ticket) -> str:
    if ticket.environment is not None:
        return f'environment "{ticket.environment}"'
    return f'every environment labelled "{ticket.label}"'


def _part_note(ticket: Ticket, parts: list[Ticket]) -> str | None:
    """An event's detail for a ticket: the label it named, and for a part of a group, which part of which."""
    note = target_note(ticket).strip(" ()") or None
    if ticket.group_id is None:
        return note
    where = f"group {ticket.group_id}, part {parts.index(ticket) + 1} of {len(parts)}"
    return f"{note}; {where}" if note else where


def _busy_detail(ticket: Ticket, holders: list[Lease], parts: list[Ticket] | None = None) -> str:
    if parts:
        what = ", ".join(_what(t) for t in parts)
        if not holders:
            return f"not all of {what} are free at once; retry later or join the queue"
        held = ", ".join(f"{lease.environment} by {lease.holder}" for lease in holders[:3])
        return f"not all of {what} are free at once (held: {held}); retry later or join the queue"
    if not holders:
        return f"{_what(ticket)} has no free slot; retry later or join the queue"
    first = holders[0]
    until = time.strftime("%H:%M UTC", time.gmtime(first.expires_at))
    more = f" and {len(holders) - 1} more" if len(holders) > 1 else ""
    return f"{_what(ticket)} is held by {first.holder}{more} until {until}; retry later or join the queue"


def _check_same_target(tx: Tx, ticket: Ticket, req: AcquireRequest) -> None:
    if ticket.group_id is not None:
        parts = [(t.environment, t.label) for t in tx.group_tickets(ticket.group_id)]
        if req.parts is None or list(req.parts) != parts:
            raise Invalid("ticket", "belongs to a request for several environments (all); name the same parts")
    elif req.parts is not None or (ticket.environment, ticket.label) != (req.environment, req.label):
        raise Invalid("ticket", f"belongs to a request for {_what(ticket)}; name the same target")
    if ticket.priority != req.priority:
        raise Invalid("priority", f"differs from the ticket's priority {ticket.priority}")


def _check_repeat(tx: Tx, ticket: Ticket, req: AcquireRequest, holder: str, ttl: int, ticket_row: str | None) -> None:
    _check_same_target(tx, ticket, req)
    for field_name, before, now in (
        ("holder", ticket.holder, holder),
        ("ttl", ticket.ttl, ttl),
        ("metadata", ticket.metadata, req.metadata),
    ):
        if before != now:
            raise Invalid(field_name, "differs from the first request with this request_id; use a new request_id")
    if req.ticket is not None and ticket_row != ticket.id:
        raise Invalid("ticket", "does not belong to the request with this request_id")
