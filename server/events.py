"""`GET /v1/events`: the audit events as server-sent events, as they are committed.

Each event goes out as `id: <event id>`, `event: <kind>` and `data: <the history's JSON>`. A client that
reconnects with `Last-Event-ID` first gets every event after that id from the store, then the live ones.
Each client has a bounded buffer: one that falls behind by more than SSE_BUFFER events is disconnected
(and may resume by id) rather than let the server's memory grow. A comment line goes out every heartbeat
so that proxies keep an idle stream open. Every stream ends when the server begins to shut down.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import AsyncIterator, Sequence

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from . import render
from .constants import SSE_BUFFER, SSE_MAX_CLIENTS, SSE_REPLAY_PAGE, SSE_RETRY_MS
from .errors import Invalid, Unavailable
from .model import Event
from .service import Service
from .waiters import Waiters

log = logging.getLogger("callme.events")


class RecentIds:
    """The ids of the last `size` events: an event heard twice (committed here, and again through the store's
    notice to every replica) is passed on once."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._order: deque[int] = deque()
        self._seen: set[int] = set()

    def first_time(self, event: Event) -> bool:
        if event.id is None:
            return True
        if event.id in self._seen:
            return False
        self._seen.add(event.id)
        self._order.append(event.id)
        if len(self._order) > self._size:
            self._seen.discard(self._order.popleft())
        return True


class _End:
    """Put in a subscriber's queue to end its stream (server shutdown, or the client fell behind)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class Subscriber:
    def __init__(self, size: int) -> None:
        self.queue: asyncio.Queue[Event | _End] = asyncio.Queue(maxsize=size)
        self.ended = False

    def offer(self, event: Event) -> None:
        if self.ended:
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.end("fell behind by more than its buffer")

    def end(self, reason: str) -> None:
        if self.ended:
            return
        self.ended = True
        while not self.queue.empty():  # room for the end marker, and the undelivered events are let go
            self.queue.get_nowait()
        self.queue.put_nowait(_End(reason))

    async def next(self, within: float) -> Event | _End | None:
        """The next event, the end marker, or None when `within` seconds passed first (time for a heartbeat)."""
        try:
            async with asyncio.timeout(within):
                return await self.queue.get()
        except TimeoutError:
            return None


class EventHub:
    """Fans the events of every committed operation out to the connected streams (a Service listener)."""

    def __init__(self, *, buffer: int = SSE_BUFFER, max_clients: int = SSE_MAX_CLIENTS) -> None:
        self._buffer = buffer
        self._max_clients = max_clients
        self._subscribers: set[Subscriber] = set()
        self._recent = RecentIds()
        self.closed = False

    def publish(self, events: Sequence[Event]) -> None:
        events = [event for event in events if self._recent.first_time(event)]
        for subscriber in list(self._subscribers):
            for event in events:
                subscriber.offer(event)

    def check_room(self) -> None:
        if len(self._subscribers) >= self._max_clients:
            raise Unavailable(f"{self._max_clients} event streams are open already; retry later")

    def subscribe(self) -> Subscriber:
        subscriber = Subscriber(self._buffer)
        if self.closed:
            subscriber.end("the server is shutting down")
        self._subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)

    def close(self) -> None:
        """The server is shutting down: every stream ends now, so that uvicorn need not wait for them."""
        self.closed = True
        for subscriber in list(self._subscribers):
            subscriber.end("the server is shutting down")

    async def close_with(self, waiters: Waiters, interval: float = 0.1) -> None:
        """Close when the service's shutdown begins (main.py closes the waiters at the stop signal)."""
        while not waiters.closed:  # noqa: ASYNC110 - Waiters has no event to await, and main.py owns its close
            await asyncio.sleep(interval)
        self.close()

    @property
    def clients(self) -> int:
        return len(self._subscribers)


def frame(event: Event) -> bytes:
    data = json.dumps(render.event_json(event), separators=(",", ":"))  # one line: newlines are escaped
    return f"id: {event.id}\nevent: {event.kind}\ndata: {data}\n\n".encode()


def last_event_id(request: Request) -> int | None:
    raw = request.headers.get("last-event-id", "").strip()
    if not raw:
        return None
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise Invalid("Last-Event-ID", f"must be the id of an event this server sent, got {raw[:40]!r}")
    return int(raw)


async def stream(hub: EventHub, service: Service, after: int | None, heartbeat: float) -> AsyncIterator[bytes]:
    subscriber = hub.subscribe()  # here rather than before: a stream never started leaves nothing behind
    try:
        yield f"retry: {SSE_RETRY_MS}\n\n".encode()
        replayed_up_to = 0
        while after is not None:  # subscribed first, so nothing committed meanwhile is missed
            batch = await service.events_after(after, SSE_REPLAY_PAGE)
            for event in batch:
                yield frame(event)
            if batch:
                replayed_up_to = after = max(after, *(e.id or 0 for e in batch))
            if len(batch) < SSE_REPLAY_PAGE:
                break
        while True:
            item = await subscriber.next(heartbeat)
            if item is None:
                yield b": heartbeat\n\n"
            elif isinstance(item, _End):
                log.info("event=sse_closed reason=%r", item.reason)
                return
            elif item.id is not None and item.id > replayed_up_to:  # the replay sent those already
                # (Assumes ids are committed in order, as on SQLite; a store whose ids may commit out of
                # order could let a late lower id slip past here, to be seen again only in /v1/history.)
                yield frame(item)
    finally:
        hub.unsubscribe(subscriber)


def response(hub: EventHub, service: Service, request: Request, heartbeat: float) -> Response:
    after = last_event_id(request)
    hub.check_room()
    return StreamingResponse(
        stream(hub, service, after, heartbeat),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
