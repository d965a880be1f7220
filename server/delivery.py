"""The deliverer: posts the outbox's deliveries to their hooks, in the background, apart from every lock operation.

At least once: a delivery is in the outbox from the commit of the operation that caused it (service_core.py), and
leaves the pending state only when its receiver answered 2xx or its attempts ran out. To post one, the deliverer
claims it (on PostgreSQL in a short transaction: claimed_until, the attempt's timeout and a margin, and SKIP LOCKED
so that replicas claiming at once take different rows; a SQLite server, the only process on its file, in memory),
posts it with no transaction open, then records the outcome in another. A process that dies in between leaves
the claim to lapse and the delivery to be claimed again by any replica (on SQLite at once, at its next start).
A receiver may therefore see a delivery twice: the `id` of the body (and X-Call-Me-Delivery) tells it so.

Lock operations never wait for it: an operation's commit only wakes the deliverer (an asyncio.Event), and the
deliverer's transactions are as small as the sweep's. Each attempt is bounded by the timeout as a whole; at most
WEBHOOK_CONCURRENCY are in flight, and at most WEBHOOK_PER_HOOK for one hook, so a receiver that hangs holds up
only its own deliveries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from dataclasses import replace

import httpx

from . import webhooks
from .constants import (
    MAX_WEBHOOK_ERROR_LENGTH,
    WEBHOOK_CLAIM_MARGIN,
    WEBHOOK_CONCURRENCY,
    WEBHOOK_PER_HOOK,
    WEBHOOK_POLL_INTERVAL,
)
from .model import Delivery, Webhook
from .secret import ServerSecret
from .settings import Settings
from .store.base import Store, StoreError, Tx

log = logging.getLogger("callme.webhooks")


def backoff(attempts: int, first: float, most: float) -> float:
    """Seconds before the next attempt after `attempts` failed ones: first, doubled after each, capped."""
    return float(min(most, first * 2 ** min(attempts - 1, 60)))


class Deliverer:
    def __init__(
        self,
        store: Store,
        secret: ServerSecret,
        settings: Settings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._store = store
        self._secret = secret
        self._settings = settings
        self._wake = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._transport = transport
        # A single-process store (SQLite): nobody else posts its deliveries, so it claims them in memory
        # (`_claimed`); on PostgreSQL the claim is a row's claimed_until, which another replica's attempt respects.
        self._single = store.recheck_interval is None
        self._claimed: set[int] = set()
        self._of: dict[asyncio.Task[None], Delivery] = {}  # the delivery each attempt in flight posts
        self._per_hook: Counter[str] = Counter()  # attempts in flight per hook

    def wake(self) -> None:
        """Deliveries were put in the outbox: look now rather than at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        """Deliver until cancelled; attempts in flight are cancelled with it (their claims lapse, and the
        deliveries are claimed again after a restart)."""
        settings = self._settings
        timeout = httpx.Timeout(settings.webhook_timeout)
        async with httpx.AsyncClient(timeout=timeout, transport=self._transport, follow_redirects=False) as client:
            try:
                while True:
                    self._wake.clear()
                    try:
                        await self._start_attempts(client)
                    except Exception:  # a bug must not stop every later delivery: said, and the next look goes on
                        log.exception("event=webhook_look_failed")
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(WEBHOOK_POLL_INTERVAL):
                            await self._wake.wait()
            finally:
                for task in list(self._inflight):
                    task.cancel()
                for task in list(self._inflight):
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    async def _start_attempts(self, client: httpx.AsyncClient) -> None:
        room = WEBHOOK_CONCURRENCY - len(self._inflight)
        if room > 0:
            for delivery, hook in await self._claim(room):
                task = asyncio.ensure_future(self._attempt(client, delivery, hook))
                self._inflight.add(task)
                self._of[task] = delivery
                self._per_hook[delivery.hook] += 1
                task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        delivery = self._of.pop(task)
        self._claimed.discard(delivery.id)
        self._per_hook[delivery.hook] -= 1
        if self._per_hook[delivery.hook] <= 0:
            del self._per_hook[delivery.hook]
        if not task.cancelled() and task.exception() is not None:
            log.error("event=webhook_attempt_failed", exc_info=task.exception())  # recorded nothing: tried again
        self._wake.set()  # a slot is free

    async def _claim(self, room: int) -> list[tuple[Delivery, Webhook | None]]:
        hold = self._settings.webhook_timeout + WEBHOOK_CLAIM_MARGIN
        busy = sorted(self._claimed)
        # A hook with WEBHOOK_PER_HOOK attempts in flight (a receiver that hangs, say) gets no more until one ends,
        # so that it never holds up every other hook's deliveries.
        full = sorted(hook for hook, count in self._per_hook.items() if count >= WEBHOOK_PER_HOOK)

        def claim(tx: Tx) -> list[tuple[Delivery, Webhook | None]]:
            now = tx.now()
            claimed = tx.claim_deliveries(now, now + hold, room, now, full)
            hooks = {h.name: h for h in tx.webhooks()} if claimed else {}
            return [(d, hooks.get(d.hook)) for d in claimed]

        def look(tx: Tx) -> list[tuple[Delivery, Webhook | None]]:
            due = tx.due_deliveries(tx.now(), room * WEBHOOK_PER_HOOK, busy, full)
            hooks = {h.name: h for h in tx.webhooks()} if due else {}
            return [(d, hooks.get(d.hook)) for d in due]

        try:
            # A single-process store (SQLite) keeps its claims in memory: a read, and no commit to wait for; a
            # process that dies takes them with it, and its next start finds the deliveries due again.
            found = await (self._store.read(look) if self._single else self._store.transact(claim))
        except StoreError as exc:
            log.warning("event=webhook_claim_failed error=%s", exc)  # the next look tries again
            return []
        if self._single:  # at most room, and at most WEBHOOK_PER_HOOK per hook (a claim on PostgreSQL is taken)
            taking: Counter[str] = Counter(self._per_hook)
            kept: list[tuple[Delivery, Webhook | None]] = []
            for delivery, hook in found:
                if len(kept) < room and taking[delivery.hook] < WEBHOOK_PER_HOOK:
                    taking[delivery.hook] += 1
                    kept.append((delivery, hook))
            found = kept
        self._claimed.update(d.id for d, _ in found)
        return found

    async def _attempt(self, client: httpx.AsyncClient, delivery: Delivery, hook: Webhook | None) -> None:
        status: int | None = None
        error: str | None = None
        started = time.monotonic()
        secret = self._secret.unseal(hook.sealed_secret) if hook is not None else None
        if hook is None:
            error = "the webhook no longer exists"
        elif secret is None:
            error = "the hook's secret was sealed with another server secret; set the webhook again (PUT)"
        else:
            sent_at = time.time()
            raw = webhooks.body(delivery, hook.format, sent_at)
            try:
                async with asyncio.timeout(self._settings.webhook_timeout):
                    request = client.build_request(
                        "POST", hook.url, content=raw, headers=webhooks.headers(delivery, secret, raw, sent_at)
                    )
                    response = await client.send(request, stream=True)
                    await response.aclose()  # the status is all that counts; the body is not read
                status = response.status_code
                if not 200 <= status < 300:
                    error = f"answered HTTP {status}" + (" (redirects are not followed)" if 300 <= status < 400 else "")
            except TimeoutError:
                error = f"no answer within {self._settings.webhook_timeout:g} s"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"[:MAX_WEBHOOK_ERROR_LENGTH]
            except Exception as exc:
                # (An exception escaping here recorded nothing: the delivery was due again at once, for ever.) Its
                # type only: the message of an URL error names the hook's host, which may be a secret of its own.
                error = f"could not send: {type(exc).__name__}"
        await self._record(delivery, status, error, time.monotonic() - started)

    async def _record(self, delivery: Delivery, status: int | None, error: str | None, took: float) -> None:
        settings = self._settings
        attempts = delivery.attempts + 1

        def fn(tx: Tx) -> Delivery:
            now = tx.now()
            if error is None:
                done = replace(delivery, state="delivered", delivered_at=now, next_at=None)
            elif attempts >= settings.webhook_attempts:
                done = replace(delivery, state="failed", next_at=None)
            else:
                wait = backoff(attempts, settings.webhook_backoff, settings.webhook_backoff_max)
                done = replace(delivery, next_at=now + wait)
            done = replace(done, attempts=attempts, last_status=status, last_error=error)
            tx.finish_attempt(done)
            return done

        try:
            done = await self._store.transact(fn)
        except StoreError as exc:
            # Not recorded: the claim lapses and it is tried again (a receiver may see it twice: at least once).
            log.warning("event=webhook_record_failed delivery=d_%s error=%s", delivery.id, exc)
            return
        if done.state == "delivered":
            log.info(
                "event=webhook_delivered hook=%s delivery=d_%s kind=%s attempt=%d status=%s took=%.3fs",
                delivery.hook, delivery.id, delivery.event, attempts, status, took,
            )  # fmt: skip
        elif done.state == "failed":
            log.warning(
                "event=webhook_gave_up hook=%s delivery=d_%s kind=%s attempts=%d error=%r",
                delivery.hook, delivery.id, delivery.event, attempts, error,
            )  # fmt: skip
        else:
            log.info(
                "event=webhook_retry hook=%s delivery=d_%s kind=%s attempt=%d error=%r next_in=%.1fs",
                delivery.hook, delivery.id, delivery.event, attempts, error, (done.next_at or 0) - time.time(),
            )  # fmt: skip
