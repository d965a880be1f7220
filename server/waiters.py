"""Long-poll wake-ups: a held request for a ticket is answered the moment its ticket is granted, and one whose
client has gone is noticed at once.

A request holding its ticket open is `Parked` here for as long as it waits. A grant committed on this process
hands the parked request its lease directly (`notify` with `handed`), so its 201 needs no transaction of its
own (the grant was collected by its commit); a grant from another replica, or one made before the request
parked, only wakes it to look.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping

# A grant made while nobody is parked on its ticket is remembered this long, so a poll that starts a
# moment later does not sleep through it.
_EARLY_GRANT_MEMORY = 120.0


class Parked:
    """One request holding its ticket open: woken by a grant, by its client going away, or by shutdown."""

    __slots__ = ("event", "gone", "handed")

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.handed: object | None = None  # the grant this process's commit made to it, ready to answer
        self.gone = False  # its client hung up: nobody will read an answer

    def hang_up(self) -> None:
        self.gone = True
        self.event.set()


class Waiters:
    def __init__(self) -> None:
        self._parked: dict[str, list[Parked]] = {}
        self._early: dict[str, float] = {}
        self.closed = False

    def notify(self, ticket_ids: Iterable[str], handed: Mapping[str, object] | None = None) -> list[str]:
        """Wake the requests parked on these tickets; the first live request parked on a ticket in `handed` gets
        that grant to answer with (any other request of the same ticket looks it up). Returns the tickets of
        `handed` whose grant no request took: each ended, or its client hung up, since the grant was decided."""
        now = time.monotonic()
        untaken: list[str] = []
        for ticket_id in ticket_ids:
            parked = self._parked.get(ticket_id)
            grant = handed.get(ticket_id) if handed else None
            if parked:
                for one in parked:
                    if grant is not None and not one.gone and one.handed is None:
                        one.handed, grant = grant, None
                    one.event.set()
            else:
                self._early[ticket_id] = now
            if grant is not None:
                untaken.append(ticket_id)
        if len(self._early) > 1000:
            self._early = {k: t for k, t in self._early.items() if now - t < _EARLY_GRANT_MEMORY}
        return untaken

    def park(self, ticket_id: str) -> Parked:
        """Register a request holding `ticket_id` open; `unpark` it when it answers."""
        parked = Parked()
        if self._early.pop(ticket_id, None) is not None or self.closed:
            parked.event.set()  # granted a moment ago (or shutting down): look at once
        self._parked.setdefault(ticket_id, []).append(parked)
        return parked

    def unpark(self, ticket_id: str, parked: Parked) -> None:
        others = self._parked.get(ticket_id)
        if others is not None:
            if parked in others:
                others.remove(parked)
            if not others:
                del self._parked[ticket_id]

    @staticmethod
    async def wait(parked: Parked, seconds: float) -> None:
        """Until `parked` is woken (granted, its client gone, shutdown) or `seconds` pass."""
        if seconds > 0 and not parked.event.is_set():
            try:
                async with asyncio.timeout(seconds):
                    await parked.event.wait()
            except TimeoutError:
                pass
        parked.event.clear()

    def parked_here(self, ticket_id: str) -> bool:
        """Whether a live request of this ticket is held open on this process now (safe from the store's thread:
        a read of one dict entry)."""
        return any(not one.gone for one in self._parked.get(ticket_id, ()))

    def shutting_down(self) -> bool:
        """Whether `close` has been called (a method, so that a check after an await is not narrowed away)."""
        return self.closed

    def close(self) -> None:
        """Shutting down: every held long-poll is answered now."""
        self.closed = True
        for parked in self._parked.values():
            for one in parked:
                one.event.set()

    @property
    def parked(self) -> int:
        return sum(len(parked) for parked in self._parked.values())
