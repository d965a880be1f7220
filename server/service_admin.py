"""Environment administration: create or change, delete, and apply the configuration file's declarations."""

from __future__ import annotations

from collections.abc import Sequence

from .errors import Conflict, NotFound
from .model import Environment, Principal
from .service_core import Core, Op
from .store.base import Tx
from .validation import EnvironmentChange
from .webhooks import maintenance_notice


class Administration:
    """The admin's operations on environments; each also settles what the change makes possible."""

    def __init__(self, core: Core) -> None:
        self.core = core

    async def put_environment(
        self, principal: Principal, name: str, change: EnvironmentChange, *, skip_unchanged: bool = False
    ) -> tuple[Environment, bool]:
        """Create or change an environment (no longer `auto`); True when it was created. With `skip_unchanged`
        (the config file at start-up), a declaration that changes nothing writes nothing and records no event."""
        core = self.core

        def fn(tx: Tx, op: Op) -> tuple[Environment, bool]:
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
                held_too_long=change.held_too_long if change.held_too_long_given else base.held_too_long,
                waiting_too_long=(change.waiting_too_long if change.waiting_too_long_given else base.waiting_too_long),
            )
            detail = "created" if old is None else _changes(old, env)
            if old is not None and not detail and skip_unchanged:
                return old, False
            tx.save_environment(env)
            core.event(op, "environment_changed", name, actor=principal.name, detail=detail or "unchanged")
            if env.maintenance != (old.maintenance if old is not None else False):
                op.notices.append(maintenance_notice(env, op.now, principal.name))
            core.settle(tx, op, [name], [*(old.labels if old else ()), *env.labels])
            return env, old is None

        return await core.run(fn)

    async def delete_environment(self, principal: Principal, name: str, *, force: bool) -> None:
        """Delete an environment; with `force`, revoke its leases and drop the tickets that named it."""
        core = self.core

        def fn(tx: Tx, op: Op) -> None:
            if tx.environment(name) is None:
                raise NotFound(f'environment "{name}" does not exist')
            group = core.settle(tx, op, [name], [])
            leases = [lease for lease in group.live if lease.environment == name]
            tickets = [t for t in group.waiting if t.environment == name]
            if (leases or tickets) and not force:
                raise Conflict(
                    f'environment "{name}" has {len(leases)} live lease(s) and {len(tickets)} waiter(s); '
                    "wait for them, or delete with ?force=true to revoke and drop them"
                )
            for lease in leases:
                core.end(tx, op, lease, "revoked", principal.name, "environment deleted")
            # A group that named it can never be served whole: every part of it is dropped with it.
            groups = {t.group_id for t in tickets if t.group_id is not None}
            dropped = [t for t in group.waiting if t.environment == name or t.group_id in groups]
            for ticket in dropped:
                ticket.state = "left"
                ticket.ended_at = op.now
                tx.update_ticket(ticket)
                detail = "environment deleted" if ticket.environment == name else f"environment {name} deleted"
                core.event(op, "left", ticket.environment, seq=ticket.seq, holder=ticket.holder, actor=principal.name,
                           detail=detail)  # fmt: skip
            tx.delete_environment(name)
            core.event(op, "environment_deleted", name, actor=principal.name)
            others = sorted({t.environment for t in dropped if t.environment not in (None, name)})
            labels = sorted({t.label for t in dropped if t.label is not None})
            if others or labels:
                core.settle(tx, op, others, labels)  # what the dropped groups held back there is free again

        await core.run(fn)

    async def apply_declared(self, declared: Sequence[tuple[str, EnvironmentChange]]) -> None:
        """Create or update the environments of the configuration file (start-up)."""
        system = Principal(name="config", role="admin")
        for name, change in declared:
            await self.put_environment(system, name, change, skip_unchanged=True)


def _changes(old: Environment, new: Environment) -> str:
    parts = []
    for name in (
        "slots", "labels", "description", "properties", "maintenance", "note", "held_too_long", "waiting_too_long"
    ):  # fmt: skip
        if getattr(old, name) != getattr(new, name):
            parts.append(f"{name}: {getattr(old, name)!r} -> {getattr(new, name)!r}")
    if old.auto:
        parts.append("declared by an admin")
    return "; ".join(parts)
