"""GET /v1/events against a real server: live events, resume by Last-Event-ID, heartbeats, roles, shutdown;
and the hub's bounded buffers in-process."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from callme.server.events import EventHub, _End
from callme.server.model import Event

from .serverproc import ADMIN_KEY, CLIENT_KEY, READ_KEY, ServerProcess
from .sse import EventStream


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path, env={"CALL_ME_SSE_HEARTBEAT": "0.2"})
    proc.start()
    try:
        yield proc
    finally:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.kill()


def _history_ids(read: httpx.Client) -> list[int]:
    return sorted(e["id"] for e in read.get("/v1/history", params={"limit": 1000}).json()["events"])


def test_events_arrive_live_and_a_reconnect_gets_exactly_the_missed_ones(server: ServerProcess) -> None:
    with server.client(ADMIN_KEY) as admin, server.client(CLIENT_KEY) as client, server.client(READ_KEY) as read:
        with EventStream(read) as stream:
            assert stream.response.status_code == 200
            assert stream.response.headers["content-type"].startswith("text/event-stream")
            assert stream.response.headers["cache-control"] == "no-cache"
            admin.put("/v1/environments/sse-uat", json={"slots": 1}).raise_for_status()
            lease = client.post("/v1/leases", json={"environment": "sse-uat", "holder": "org/app#1"}).json()
            first = stream.events(2)
        assert [f.event for f in first] == ["environment_changed", "acquired"]
        assert [f.data["kind"] for f in first] == ["environment_changed", "acquired"]
        assert first[1].data["lease"] == lease["id"]
        assert first[1].data["holder"] == "org/app#1"
        assert [f.id for f in first] == [f.data["id"] for f in first]
        seen = first[-1].id
        assert seen is not None

        # Missed while disconnected: a release, a change, a queued ticket's grant.
        client.delete(f"/v1/leases/{lease['id']}", headers={"X-Lease-Token": lease["token"]}).raise_for_status()
        admin.put("/v1/environments/sse-uat", json={"note": "missed"}).raise_for_status()
        client.post("/v1/leases", json={"environment": "sse-uat", "holder": "org/app#2"}).raise_for_status()
        missed = [i for i in _history_ids(read) if i > seen]
        assert len(missed) == 3

        with EventStream(read, last_event_id=seen) as stream:
            replayed = stream.events(3)
            assert [f.id for f in replayed] == missed
            assert [f.event for f in replayed] == ["released", "environment_changed", "acquired"]
            # Nothing more than the missed ones: the next frame is a heartbeat, then a new event comes once.
            assert stream.frame().comments == ["heartbeat"]
            admin.put("/v1/environments/sse-uat", json={"note": "live again"}).raise_for_status()
            after = stream.events(1)[0]
        assert after.event == "environment_changed"
        assert after.id == max(_history_ids(read))


def test_the_stream_sends_heartbeats(server: ServerProcess) -> None:
    with server.client(READ_KEY) as read, EventStream(read, timeout=2) as stream:
        started = time.monotonic()
        frames = [stream.frame()]
        while len([f for f in frames if f.comments == ["heartbeat"]]) < 2:
            frames.append(stream.frame())
        assert time.monotonic() - started < 1.5
        # Nothing but heartbeats (and, as the server chooses, a reconnection hint) on an idle stream.
        assert all(f.id is None and f.event is None for f in frames)


def test_the_stream_needs_a_read_key(server: ServerProcess) -> None:
    assert httpx.get(server.url + "/v1/events").status_code == 401
    assert httpx.get(server.url + "/v1/events", headers={"X-API-KEY": "wrong-key-123"}).status_code == 401
    with server.client(READ_KEY) as read:
        assert read.get("/v1/events", headers={"Last-Event-ID": "-1"}).json()["code"] == "invalid"


def test_shutdown_ends_open_streams_at_once(server: ServerProcess) -> None:
    with server.client(READ_KEY) as read:
        streams = [EventStream(read, timeout=10) for _ in range(3)]
        for stream in streams:
            stream.frame()  # the stream has begun (the server subscribes it before its first frame)
        started = time.monotonic()
        assert server.stop(timeout=8) == -signal.SIGTERM  # uvicorn re-raises the signal once it has shut down
        assert time.monotonic() - started < 3, "uvicorn waited for the open streams"
        for stream in streams:
            with pytest.raises((EOFError, httpx.RemoteProtocolError)):
                _read_to_the_end(stream)
            stream.close()


def _read_to_the_end(stream: EventStream) -> None:
    while True:
        stream.frame()


def _event(i: int) -> Event:
    return Event(at=float(i), kind="acquired", environment="uat", id=i)


def test_a_client_that_falls_behind_is_dropped_not_buffered() -> None:
    async def run() -> None:
        hub = EventHub(buffer=3)
        slow, fast = hub.subscribe(), hub.subscribe()
        hub.publish([_event(1), _event(2)])
        assert [await fast.next(1) for _ in range(2)] == [_event(1), _event(2)]
        hub.publish([_event(3), _event(4)])
        assert [await fast.next(1) for _ in range(2)] == [_event(3), _event(4)]
        ended = await slow.next(1)  # four events for a buffer of three: it was let go
        assert isinstance(ended, _End)
        assert "behind" in ended.reason
        assert slow.queue.qsize() == 0
        hub.publish([_event(5)])
        assert slow.queue.qsize() == 0
        assert await fast.next(1) == _event(5)
        assert await fast.next(0.05) is None  # a heartbeat's turn
        hub.close()
        assert isinstance(await fast.next(1), _End)
        late = hub.subscribe()
        assert isinstance(await late.next(1), _End)

    asyncio.run(run())


def test_an_event_heard_twice_is_sent_once() -> None:
    async def run() -> None:
        hub = EventHub()
        subscriber = hub.subscribe()
        hub.publish([_event(1), _event(2)])
        hub.publish([_event(2), _event(3)])  # 2 again: committed here, then the store's notice of it
        assert [await subscriber.next(1) for _ in range(3)] == [_event(1), _event(2), _event(3)]
        assert await subscriber.next(0.05) is None

    asyncio.run(run())


def test_the_hub_refuses_streams_beyond_its_limit() -> None:
    from callme.server.errors import Unavailable

    hub = EventHub(max_clients=1)
    hub.check_room()

    async def run() -> None:
        hub.subscribe()
        with pytest.raises(Unavailable):
            hub.check_room()

    asyncio.run(run())
