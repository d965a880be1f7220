"""Hold a lease for the length of a `with` block: acquire, renew in the background, release.

    with client.lease("uat", ttl=300) as held:
        deploy(held.lease.properties["url"])
        held.check()              # raises LeaseLost if a renewal failed

Renewal runs in a daemon thread every ttl/3. A renewal that fails for a passing reason (no
answer, 502/503/504, each already retried by the client) is tried again soon, until the
lease's own expiry has passed; one the server refuses for good (410 lease_gone, 403, 404) ends
it at once. Either way the lease is *lost*: logged at ERROR on "callme.client", `held.lost`
set, `on_lost` called, and LeaseLost raised when the block ends without an error of its own
(an error of the block is never masked). The lease is released on every way out of the block.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .constants import RENEW_FRACTION
from .errors import CallMeError, LeaseGone, LeaseLost
from .releasing import release_or_report
from .retry import is_retryable

if TYPE_CHECKING:
    from .client import Client
    from .models import Group, Lease

logger = logging.getLogger("callme.client")

# After a failed renewal, try again after this share of the usual interval.
_RETRY_SHARE = 0.25


class HeldLease:
    """A lease kept alive by a background thread; read `lease` for its latest state."""

    def __init__(
        self,
        client: Client,
        lease: Lease | Group,
        *,
        every: float,
        on_lost: Callable[[CallMeError], None] | None,
    ) -> None:
        self.client = client
        self.lease: Lease | Group = lease
        self.every = every
        self.on_lost = on_lost
        self.lost: LeaseLost | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_until_stopped, name=f"callme-renew-{lease.id}", daemon=True)
        self._valid_until = client.clock() + lease.ttl

    def __repr__(self) -> str:
        return f"HeldLease({self.lease!r}, lost={self.lost is not None})"

    def check(self) -> None:
        """Raise LeaseLost if the lease could not be kept."""
        if self.lost is not None:
            raise self.lost

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _renew_until_stopped(self) -> None:
        delay = self.every
        while not self._stop.wait(delay):
            delay = self._renew_once()
            if self.lost is not None:
                return

    def _renew_once(self) -> float:
        """Renew; returns the delay before the next try."""
        started = self.client.clock()
        try:
            self.lease = self.client.renew(self.lease)
        except CallMeError as exc:
            if not is_retryable(exc):
                self._lose(exc)
            elif self.client.clock() >= self._valid_until:
                self._lose(exc, expired=True)
            else:
                logger.warning(
                    "event=renew_failed environment=%s lease=%s: %s; trying again",
                    self.lease.environment,
                    self.lease.id,
                    exc,
                )
            return self.every * _RETRY_SHARE
        self._valid_until = started + self.lease.ttl
        logger.debug("event=renewed environment=%s lease=%s", self.lease.environment, self.lease.id)
        return self.every

    def _lose(self, cause: CallMeError, *, expired: bool = False) -> None:
        how = "expired while the server was out of reach" if expired else "could not be renewed"
        self.lost = LeaseLost(
            f"lease {self.lease.id} on environment {self.lease.environment!r} {how}: {cause}",
            context={"environment": self.lease.environment, "lease": self.lease.id},
        )
        self.lost.__cause__ = cause
        logger.error(
            "event=lease_lost environment=%s lease=%s holder=%s: %s",
            self.lease.environment,
            self.lease.id,
            self.lease.holder,
            cause,
        )
        if self.on_lost is not None:
            self.on_lost(self.lost)


@contextmanager
def hold(
    client: Client,
    environment: str | None = None,
    *,
    renew_every: float | None = None,
    on_lost: Callable[[CallMeError], None] | None = None,
    **acquire_options: Any,
) -> Iterator[HeldLease]:
    """Acquire with `client.acquire(environment, **acquire_options)`, keep, release on exit.

    `renew_every` defaults to a third of the lease's TTL.
    """
    lease = client.acquire(environment, **acquire_options)
    every = renew_every if renew_every is not None else max(lease.ttl * RENEW_FRACTION, 0.1)
    held = HeldLease(client, lease, every=every, on_lost=on_lost)
    body_failed = True
    try:
        held.start()
        yield held
        body_failed = False
    finally:
        held.stop()
        release(client, held.lease)
    if held.lost is not None and not body_failed:
        raise held.lost


def release(client: Client, lease: Lease | Group) -> bool:
    """Release, saying why not instead of raising: this runs on the way out of something else."""

    def ended(_: LeaseGone) -> None:
        logger.error("event=release_failed environment=%s lease=%s: it had already ended", lease.environment, lease.id)

    def failed(exc: CallMeError) -> None:
        logger.error(
            "event=release_failed environment=%s lease=%s: %s; it expires by itself at %s",
            lease.environment,
            lease.id,
            exc,
            lease.expires_at,
        )

    if not release_or_report(client, lease, on_ended=ended, on_error=failed):
        return False
    logger.info("event=released environment=%s lease=%s holder=%s", lease.environment, lease.id, lease.holder)
    return True
