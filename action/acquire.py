"""One acquire: a loop of long-poll rounds that keeps its place in the queue.

Every POST of one acquire carries the same `request_id`, so a POST whose answer was lost and
is sent again returns what the first one created (its lease, or its ticket's 202) instead of
taking a second place. Once a 202 gave a ticket, every round comes back with it. Outages are
retried inside a round (see retry.py) and the ticket survives them: the server keeps tickets
alive across its own restarts (API.md, invariant 5).

A 410 `ticket_gone` means the place was lost (abandoned while the server was out of reach for
longer than `ticket_grace`, or the lease granted to it meanwhile was revoked). The loop first
asks again with the same `request_id` and no ticket, which returns whatever the server still
has for it; only when that is gone too does it queue again under a fresh `request_id`, at the
back, and says so. A fresh id is only ever taken after the server said the old one holds
nothing, so this never holds two leases.

On giving up (timeout, KeyboardInterrupt, cancellation, any error) the loop leaves the queue
at once, so that a grant does not sit unused for `ticket_grace`.

A process that may die without giving up (SIGKILL) hands each request to `on_request` before
its first POST, to keep it somewhere; whoever comes after gives back what it made with
`withdraw`, which needs nothing but that request.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .errors import APIError, CallMeError, ConnectError, NotFound, NotGranted, TicketGone, WaitTimeout
from .format import go_duration
from .models import JSON, Group, Lease, Waiting

if TYPE_CHECKING:
    from .client import Client

logger = logging.getLogger("callme.client")

_GATEWAY_STATUSES = frozenset({502, 504})
# What may differ between repeats of one request_id (API.md); withdraw sets its own.
_PER_ATTEMPT_FIELDS = frozenset({"wait", "queue", "ticket"})


def withdraw(client: Client, request: Mapping[str, Any], *, deadline: float) -> Lease | Group | Waiting | None:
    """Give back whatever `request` (an acquire's body, request_id included) made; None: nothing.

    It is sent again as a repeat (same request_id and fields, so the server finds what the first
    one made: a 422 if they differ) with `queue: false` and `wait: 0`, so that a request the server
    never saw takes no place in the queue now. Then the lease it answers with is released (one
    the first request got, or one granted to this repeat just now) or the place is left: nothing
    is held after it. Busy or Maintenance: the first request made nothing and neither did this.
    A 410 `ticket_gone`: what it made has ended already.
    """
    body = {key: value for key, value in request.items() if key not in _PER_ATTEMPT_FIELDS}
    try:
        outcome = client._acquire_once({**body, "wait": 0, "queue": False}, deadline=deadline, shown=_shown(body))
    except (NotGranted, TicketGone, NotFound):
        return None
    if isinstance(outcome, (Lease, Group)):
        client.release(outcome)
    else:
        client.leave(outcome.ticket, retry_for=max(0.0, deadline - client.clock()))
    return outcome


def _shown(body: Mapping[str, Any]) -> dict[str, object]:
    """The target of a request, for messages."""
    if "all" in body:
        return {"environments": ", ".join(str(p.get("environment") or f"label {p.get('label')}") for p in body["all"])}
    target = "environment" if "environment" in body else "label"
    return {target: body.get(target)}


class Acquisition:
    def __init__(
        self,
        client: Client,
        body: JSON,
        *,
        wait: bool,
        timeout: float | None,
        on_wait: Callable[[Waiting], None] | None,
        on_request: Callable[[JSON], None] | None = None,
    ) -> None:
        self.client = client
        self.body = body
        self.wait = wait
        self.on_wait = on_wait
        self.on_request = on_request
        # The request_id last handed to on_request.
        self.announced: str | None = None
        self.started = client.clock()
        self.deadline = None if timeout is None else self.started + max(0.0, timeout)
        self.ticket: str | None = None
        # Whether the current request_id ever got a place (a 202) from the server.
        self.placed = False
        self.last: Waiting | None = None
        # True while a POST may have reached the server but its answer did not reach us.
        self.in_doubt = False
        self.shown = _shown(body)

    def run(self) -> Lease | Group:
        if not self.wait:
            return self._once_without_queue()
        try:
            return self._loop()
        except BaseException:
            self._give_up()
            raise

    def _once_without_queue(self) -> Lease | Group:
        outcome = self._post(wait=0.0, extra={"queue": False})
        if isinstance(outcome, Waiting):
            # A server that queued us although we said not to: take the place back at once.
            self.ticket = outcome.ticket
            self._give_up()
            raise CallMeError("the server queued a request that asked not to be queued", context=self.shown)
        return outcome

    def _loop(self) -> Lease | Group:
        wait = 0.0  # The first round answers at once, so the caller can say it waits.
        while True:
            try:
                outcome = self._post(wait=wait, extra={"ticket": self.ticket} if self.ticket else {})
            except TicketGone as gone:
                self._recover_place(gone)
                continue
            if isinstance(outcome, (Lease, Group)):
                return outcome
            self.ticket, self.last, self.placed = outcome.ticket, outcome, True
            if self.on_wait is not None:
                self.on_wait(outcome)
            remaining = self._remaining()
            if remaining is not None and remaining <= 0:
                self._give_up()
                raise self._timeout()
            wait = self.client.long_poll if remaining is None else min(self.client.long_poll, remaining)

    def _recover_place(self, gone: TicketGone) -> None:
        if self.ticket is not None:
            logger.warning("the place in the queue is gone; asking the server what is left of this request")
            self.ticket = None
            return
        if not self.placed:
            raise gone  # A request that never had a place cannot have lost one: do not loop.
        logger.warning("the place in the queue was lost; queueing again at the back")
        self.body = {**self.body, "request_id": str(uuid.uuid4())}
        self.placed = False

    def _post(self, *, wait: float, extra: JSON) -> Lease | Group | Waiting:
        now = self.client.clock()
        deadline = now + self.client.retry_for
        if self.deadline is not None:
            # Retries stop at the caller's deadline, but the first try always happens.
            deadline = min(deadline, max(self.deadline, now))
        if self.on_request is not None and self.body["request_id"] != self.announced:
            # Before the POST: once it is out, the caller must be able to find what it made.
            self.on_request(dict(self.body))
            self.announced = self.body["request_id"]
        self.in_doubt = True
        try:
            outcome = self.client._acquire_once(
                {**self.body, "wait": wait, **extra}, deadline=deadline, shown=self.shown
            )
        except APIError as exc:
            # The server answered and so did nothing, unless a gateway answered for it.
            self.in_doubt = exc.status in _GATEWAY_STATUSES
            raise
        except ConnectError:
            # The last try never reached the server. (One before it may have: then the server
            # drops what it made after ticket_grace, as it does for any client that vanished.)
            self.in_doubt = False
            raise
        self.in_doubt = False
        return outcome

    def _give_up(self) -> None:
        """Leave the queue, or undo what a request that may have reached the server created."""
        ticket, self.ticket = self.ticket, None
        try:
            if ticket is not None:
                self.client.leave(ticket, retry_for=self._cleanup_budget())
            elif self.in_doubt and self.wait:
                # The answer never came: undo whatever the request made, if it reached the server.
                withdraw(self.client, self.body, deadline=self.client.cleanup_deadline())
        except CallMeError as exc:
            # The server abandons the ticket by itself after ticket_grace; say so, carry on.
            logger.warning("could not leave the queue (%s); the server drops the place within its grace time", exc)

    def _cleanup_budget(self) -> float:
        return self.client.cleanup_deadline() - self.client.clock()

    def _remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - self.client.clock()

    def _timeout(self) -> WaitTimeout:
        waited = go_duration(self.client.clock() - self.started)
        position = self.last.position if self.last else None
        where = f" at position {position} in the queue" if position else ""
        return WaitTimeout(
            f"still not granted after {waited}{where}",
            context=self.shown,
            position=position,
            holders=self.last.holders if self.last else (),
        )
