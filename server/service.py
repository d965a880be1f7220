"""One method per operation. Each runs as one store transaction: expiry first, then the change, then the
grants the change makes possible; waiters are woken and events published only after the commit.

`Service` is the one entry point the routes, the app and the tests use. The work is done by small
collaborators that share one `Core` (the store, the settings, the start-up floor, the waiters and the
listeners), one module per concern:

    service_core.py     the transaction core: run an operation, settle a group, grant, end, record events
    service_leases.py   acquire (with its long-poll), poll, leave, renew, release, and the background sweep
    service_maybe.py    the original /maybe routes, translated into v1 operations
    service_admin.py    create, change and delete environments; apply the configuration file's
    service_reads.py    environments, one lease, the audit log
    service_history.py  the background prune of old history and of auto-created environments nobody uses
    service_webhooks.py create, change, read and delete webhooks, their delivery log; apply the file's hooks
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .clock import Pauses, Seconds, elapsed
from .model import Delivery, Environment, Event, Principal
from .outcomes import EnvironmentView, Granted, GrantedGroup, Queued
from .rules import Floor
from .secret import ServerSecret
from .service_admin import Administration
from .service_core import Core, Listener
from .service_history import Housekeeping, Pruned
from .service_leases import HangUp, Leasing
from .service_maybe import MaybeTranslation
from .service_reads import Queries
from .service_webhooks import WebhookAdministration, WebhookView
from .settings import Settings
from .store.base import Store
from .validation import AcquireRequest, EnvironmentChange
from .waiters import Waiters
from .webhooks import WebhookChange


class Service:
    """The lock server's operations, on one store."""

    def __init__(
        self, store: Store, settings: Settings, secret: ServerSecret | None = None, *, elapsed: Seconds = elapsed
    ) -> None:
        """`secret` derives and checks lease tokens and ticket ids (secret.py); without one, a random one of its own.
        `elapsed` is the clock pauses are measured on (clock.Pauses)."""
        self._core = core = Core(store, settings, secret, elapsed=elapsed)
        # The core's own objects: the app adds listeners, closes the waiters at shutdown, and reads the rest.
        self.store: Store = core.store
        self.settings: Settings = core.settings
        self.pauses: Pauses = core.pauses
        self.waiters: Waiters = core.waiters
        self.listeners: list[Listener] = core.listeners  # called with the events of every commit, any replica's
        self._leases = Leasing(core)
        self._maybe = MaybeTranslation(core, self._leases)
        self._admin = Administration(core)
        self._queries = Queries(core)
        self._housekeeping = Housekeeping(core)
        self._webhooks = WebhookAdministration(core)

    def on_outbox(self, wake: Callable[[], None]) -> None:
        """Have `wake()` called after every commit of this process that put deliveries in the outbox."""
        self._core.outbox_filled = wake

    @property
    def floor(self) -> Floor:
        """The start-up floor as it stands: raised again after a pause the server noticed."""
        return self._core.floor

    async def heartbeat(self) -> None:
        """Beat until cancelled, so that a pause of the whole process is noticed and the floor raised."""
        await self._core.heartbeat()

    # -- leases and tickets -----------------------------------------------------------------------------

    async def acquire(
        self, principal: Principal, req: AcquireRequest, hung_up: HangUp | None = None
    ) -> Granted | GrantedGroup | Queued:
        """Acquire, or queue and hold the request open up to `wait` (capped at max_wait) for a grant; `hung_up`
        returns when the request's client has gone."""
        return await self._leases.acquire(principal, req, hung_up)

    async def leave(self, principal: Principal, ticket_id: str) -> None:
        """Leave the queue, releasing a lease granted to the ticket meanwhile."""
        await self._leases.leave(principal, ticket_id)

    async def renew(self, lease_id: str, token: str | None, ttl: int | None) -> Granted:
        """Extend a live lease to now + ttl (its own ttl when None)."""
        return await self._leases.renew(lease_id, token, ttl)

    async def release(self, principal: Principal, lease_id: str, token: str | None, *, force: bool = False) -> None:
        """Release a lease with its token, or revoke it with `force` (admin)."""
        await self._leases.release(principal, lease_id, token, force=force)

    async def group(self, group_id: str) -> GrantedGroup:
        """A group of leases granted together (without tokens)."""
        return await self._leases.group(group_id)

    async def renew_group(self, group_id: str, token: str | None, ttl: int | None) -> GrantedGroup:
        """Extend every lease of a group at once, or none when one has ended."""
        return await self._leases.renew_group(group_id, token, ttl)

    async def release_group(
        self, principal: Principal, group_id: str, token: str | None, *, force: bool = False
    ) -> None:
        """Release every lease of a group with its token, or revoke them with `force` (admin)."""
        await self._leases.release_group(principal, group_id, token, force=force)

    async def sweep(self) -> None:
        """Expire leases and abandon tickets past their deadlines, and grant what they free."""
        await self._leases.sweep()

    async def prune(self) -> Pruned:
        """Delete history older than history_days and forget idle auto-created environments, in small batches."""
        return await self._housekeeping.prune()

    # -- the original /maybe routes ---------------------------------------------------------------------

    async def maybe_check(self, principal: Principal, name: str) -> bool:
        """Would a /maybe POST get its slot now?"""
        return await self._maybe.check(principal, name)

    async def maybe_acquire(self, principal: Principal, name: str) -> Granted:
        """A /maybe POST: a slot now, or Busy / Maintenance."""
        return await self._maybe.acquire(principal, name)

    async def maybe_release(self, principal: Principal, name: str) -> None:
        """A /maybe DELETE: release the oldest live lease on `name` taken with this key."""
        await self._maybe.release(principal, name)

    # -- environments -----------------------------------------------------------------------------------

    async def put_environment(
        self, principal: Principal, name: str, change: EnvironmentChange
    ) -> tuple[Environment, bool]:
        """Create or change an environment; True when it was created."""
        return await self._admin.put_environment(principal, name, change)

    async def delete_environment(self, principal: Principal, name: str, *, force: bool) -> None:
        """Delete an environment; with `force`, revoke its leases and drop its waiters."""
        await self._admin.delete_environment(principal, name, force=force)

    async def apply_declared(self, declared: Sequence[tuple[str, EnvironmentChange]]) -> None:
        """Create or update the environments of the configuration file (start-up)."""
        await self._admin.apply_declared(declared)

    # -- webhooks ---------------------------------------------------------------------------------------

    async def put_webhook(self, principal: Principal, name: str, change: WebhookChange) -> tuple[WebhookView, bool]:
        """Create or change a webhook; True when it was created."""
        return await self._webhooks.put(principal, name, change)

    async def webhook(self, name: str) -> WebhookView:
        return await self._webhooks.get(name)

    async def webhooks(self) -> list[WebhookView]:
        return await self._webhooks.all()

    async def delete_webhook(self, principal: Principal, name: str) -> None:
        await self._webhooks.delete(principal, name)

    async def deliveries(self, name: str, limit: int) -> list[Delivery]:
        """The hook's delivery log, newest first."""
        return await self._webhooks.deliveries(name, limit)

    async def apply_declared_webhooks(self, declared: Sequence[tuple[str, WebhookChange]]) -> None:
        """Set the configuration file's webhooks (start-up)."""
        await self._webhooks.apply_declared(declared)

    # -- reads ------------------------------------------------------------------------------------------

    async def environments(self, name: str | None = None) -> list[EnvironmentView]:
        """Every environment (or the one named) with its live leases and queue."""
        return await self._queries.environments(name)

    async def lease(self, lease_id: str) -> Granted:
        """One lease, live or ended, with its environment."""
        return await self._queries.lease(lease_id)

    async def history(self, environment: str | None, limit: int) -> list[Event]:
        """The audit log, newest first."""
        return await self._queries.history(environment, limit)

    async def events_after(self, after: int, limit: int) -> list[Event]:
        """Up to `limit` events with an id above `after`, oldest first."""
        return await self._queries.events_after(after, limit)

    async def readiness(self) -> str | None:
        """None when the store answers and accepts writes, else why not."""
        return await self._core.store.readiness()
