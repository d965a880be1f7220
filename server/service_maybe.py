"""The original `/maybe` operations, translated into v1 ones: an acquire with `queue: false` below every v1
priority, a dry run of it, and a release of the oldest lease the key holds on the environment."""

from __future__ import annotations

from .constants import MIN_PRIORITY
from .errors import Busy, Maintenance, NotFound
from .model import Principal
from .outcomes import Granted, Queued
from .service_core import Core, Op
from .service_leases import Leasing
from .store.base import Tx
from .validation import AcquireRequest


class _DryRun(Exception):  # control flow: rolls a transaction back on purpose
    def __init__(self, granted: bool) -> None:
        self.granted = granted


class MaybeTranslation:
    """`GET`, `POST` and `DELETE /maybe?environment=NAME` as operations of the v1 queue."""

    def __init__(self, core: Core, leasing: Leasing) -> None:
        self.core = core
        self.leasing = leasing

    def _request(self, name: str, principal: Principal) -> AcquireRequest:
        # Below every v1 priority: a /maybe request never overtakes a waiter of the queue.
        return AcquireRequest(
            environment=name, label=None, holder=principal.name, ttl=self.core.settings.maybe_ttl, wait=0.0,
            queue=False, ticket=None, priority=MIN_PRIORITY - 1, metadata={"via": "maybe"}, request_id=None,
        )  # fmt: skip

    def _acquire(self, tx: Tx, op: Op, principal: Principal, name: str) -> Granted | Queued:
        req = self._request(name, principal)
        return self.leasing.new_ticket(tx, op, principal, req, principal.name, self.core.settings.maybe_ttl, 0.0)

    async def check(self, principal: Principal, name: str) -> bool:
        """Would a /maybe POST get its slot now? Decided by doing it and rolling back."""

        def fn(tx: Tx, op: Op) -> None:
            try:
                self._acquire(tx, op, principal, name)
            except (Busy, Maintenance, NotFound):
                raise _DryRun(False) from None
            raise _DryRun(True)

        try:
            await self.core.run(fn)
        except _DryRun as answer:
            return answer.granted
        raise AssertionError("unreachable")

    async def acquire(self, principal: Principal, name: str) -> Granted:
        """Take a slot now, or raise Busy / Maintenance; never queues."""
        return await self.core.run(lambda tx, op: _as_granted(self._acquire(tx, op, principal, name)))

    async def release(self, principal: Principal, name: str) -> None:
        """Release the oldest live lease on `name` taken with this key (any key's, for an admin)."""
        core = self.core

        def fn(tx: Tx, op: Op) -> None:
            core.settle(tx, op, [name], [])
            key = None if principal.allows("admin") else principal.name
            lease = tx.oldest_live_lease(name, key)
            if lease is not None:
                core.end(tx, op, lease, "released", principal.name, "released through /maybe")
                core.settle(tx, op, [name], [])

        await core.run(fn)


def _as_granted(outcome: Granted | Queued) -> Granted:
    assert isinstance(outcome, Granted)  # a request with queue=false is granted or raises
    return outcome
