"""Webhook administration: create or change, read, delete, the delivery log, and the configuration file's hooks.

Which wins, the file or the API: as for environments, the file's hooks are created or set again at every
start-up, and the API may change them until the next one. A hook the file declared and no longer declares is
removed at start-up, unless an admin has set it through the API since (it is then the API's, and stays).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from .constants import MAX_WEBHOOKS
from .errors import Conflict, NotFound
from .model import Delivery, Principal, Webhook
from .service_core import Core, Op
from .store.base import Tx
from .webhooks import WebhookChange

log = logging.getLogger("callme.webhooks")


@dataclass(frozen=True)
class WebhookView:
    """A hook as it is shown: never its secret, only whether one is set (and still opens with this server's)."""

    hook: Webhook
    secret_ok: bool


class WebhookAdministration:
    def __init__(self, core: Core) -> None:
        self.core = core

    def _view(self, hook: Webhook) -> WebhookView:
        return WebhookView(hook, self.core.secret.unseal(hook.sealed_secret) is not None)

    async def put(
        self, principal: Principal, name: str, change: WebhookChange, *, declared: bool = False
    ) -> tuple[WebhookView, bool]:
        """Create or change a hook; True when it was created."""
        core = self.core
        sealed = core.secret.seal(change.secret)

        def fn(tx: Tx, op: Op) -> tuple[Webhook, bool]:
            old = tx.webhook(name)
            if old is None and len(tx.webhooks()) >= MAX_WEBHOOKS:
                raise Conflict(f"{MAX_WEBHOOKS} webhooks exist already; delete one first")
            hook = Webhook(
                name=name,
                url=change.url,
                events=change.events,
                sealed_secret=sealed,
                format=change.format,
                declared=declared,
                created_at=old.created_at if old is not None else op.now,
                updated_at=op.now,
            )
            tx.save_webhook(hook)
            return hook, old is None

        hook, created = await core.run(fn)
        log.info(
            "event=webhook_%s name=%s events=%s format=%s actor=%s",
            "created" if created else "changed",
            name,
            ",".join(hook.events),
            hook.format,
            principal.name,
        )  # fmt: skip  (never the secret, nor the URL, which may carry a token of the receiver's)
        return self._view(hook), created

    async def get(self, name: str) -> WebhookView:
        hook = await self.core.read(lambda tx: tx.webhook(name))
        if hook is None:
            raise NotFound(f'webhook "{name}" does not exist; PUT /v1/webhooks/{name} creates it')
        return self._view(hook)

    async def all(self) -> list[WebhookView]:
        return [self._view(hook) for hook in await self.core.read(lambda tx: tx.webhooks())]

    async def delete(self, principal: Principal, name: str) -> None:
        def fn(tx: Tx, op: Op) -> bool:
            return tx.delete_webhook(name)

        if not await self.core.run(fn):
            raise NotFound(f'webhook "{name}" does not exist')
        log.info("event=webhook_deleted name=%s actor=%s", name, principal.name)

    async def deliveries(self, name: str, limit: int) -> list[Delivery]:
        def fn(tx: Tx) -> list[Delivery] | None:
            return tx.deliveries(name, limit) if tx.webhook(name) is not None else None

        found = await self.core.read(fn)
        if found is None:
            raise NotFound(f'webhook "{name}" does not exist')
        return found

    async def apply_declared(self, declared: Sequence[tuple[str, WebhookChange]]) -> None:
        """Set the configuration file's hooks (start-up), and remove those it declared before and no longer does."""
        system = Principal(name="config", role="admin")
        names = {name for name, _ in declared}
        for name, change in declared:
            await self.put(system, name, change, declared=True)

        def gone(tx: Tx, op: Op) -> list[str]:
            removed = [h.name for h in tx.webhooks() if h.declared and h.name not in names]
            for name in removed:
                tx.delete_webhook(name)
            return removed

        for name in await self.core.run(gone):
            log.info("event=webhook_deleted name=%s actor=config reason=no_longer_declared", name)
