"""Long-poll wake-ups: a held request for a ticket is answered the moment its ticket is granted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

# A grant made while nobody is parked on its ticket is remembered this long, so a poll that starts a
# moment later does not sleep through it.
_EARLY_GRANT_MEMORY = 120.0


class Waiters:
    def __init__(self) -> None:
        self._events: dict[str, set[asyncio.Event]] = {}
        self._early: dict[str, float] = {}
        self.closed = False

    def notify(self, ticket_ids: Iterable[str]) -> None:
        now = time.monotonic()
        for ticket_id in ticket_ids:
            events = self._events.get(ticket_id)
            if events:
                for event in events:
                    event.set()
            else:
                self._early[ticket_id] = now
        if len(self._early) > 1000:
            self._early = {k: t for k, t in self._early.items() if now - t < _EARLY_GRANT_MEMORY}

    async def wait(self, ticket_id: str, seconds: float) -> bool:
        """Wait until the ticket is granted (True), the server shuts down or `seconds` pass (False)."""
        if self._early.pop(ticket_id, None) is not None:
            return True
        if self.closed or seconds <= 0:
            return False
        event = asyncio.Event()
        self._events.setdefault(ticket_id, set()).add(event)
        try:
            async with asyncio.timeout(seconds):
                await event.wait()
            return not self.closed
        except TimeoutError:
            return False
        finally:
            events = self._events.get(ticket_id)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._events[ticket_id]

    def parked_here(self, ticket_id: str) -> bool:
        """Whether a request of this ticket is held open on this process now (safe from the store's thread)."""
        return ticket_id in self._events

    def shutting_down(self) -> bool:
        """Whether `close` has been called (a method, so that a check after an await is not narrowed away)."""
        return self.closed

    def close(self) -> None:
        """Shutting down: every held long-poll is answered now."""
        self.closed = True
        for events in self._events.values():
            for event in events:
                event.set()

    @property
    def parked(self) -> int:
        return sum(len(events) for events in self._events.values())
