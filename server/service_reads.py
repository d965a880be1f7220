"""Read-only queries: environments with their holders and queues, one lease, the audit log."""

from __future__ import annotations

from . import rules
from .errors import NotFound
from .model import Environment, Event, Lease
from .outcomes import EnvironmentView, Granted
from .service_core import Core
from .store.base import Tx


class Queries:
    """What the routes, the dashboard and the metrics read; none of these changes anything, so each runs in a
    transaction that only reads (Store.read): it waits for no decision, and a read-only database serves it."""

    def __init__(self, core: Core) -> None:
        self.core = core

    async def environments(self, name: str | None = None) -> list[EnvironmentView]:
        """Every environment (or the one named) with its live leases and the queue it could serve."""

        def fn(tx: Tx) -> list[EnvironmentView]:
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
            queues = rules.queues(envs, waiting)
            held: dict[str, list[Lease]] = {}
            for lease in leases:
                held.setdefault(lease.environment, []).append(lease)
            return [
                EnvironmentView(
                    env=e,
                    leases=held.get(e.name, []),
                    queue=[(t, places[t.id]) for t in queues[e.name]],
                )
                for e in envs
                if name is None or e.name == name
            ]

        return await self.core.read(fn)

    async def lease(self, lease_id: str) -> Granted:
        """One lease, live or ended, with its environment (a bare one if that was deleted since)."""

        def fn(tx: Tx) -> Granted:
            lease = tx.lease(lease_id)
            if lease is None:
                raise NotFound(f"lease {lease_id} does not exist")
            env = tx.environment(lease.environment) or Environment(name=lease.environment)
            return Granted(lease, env)

        return await self.core.read(fn)

    async def history(self, environment: str | None, limit: int) -> list[Event]:
        """The audit log, newest first."""
        return await self.core.read(lambda tx: tx.events(environment, limit))

    async def events_after(self, after: int, limit: int) -> list[Event]:
        """Up to `limit` events with an id above `after`, oldest first."""
        return await self.core.read(lambda tx: tx.events_after(after, limit))
