"""What docs/api.md promises of /v1/events and /metrics, over a real socket: a client that falls more than 256
events behind is disconnected and resumes by Last-Event-ID missing nothing; expiries are counted; the
maintenance gauge follows each environment."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .contract import ended_lease, granted, running, wait_for
from .serverproc import CLIENT_KEY, DEFAULT_CONFIG, READ_KEY, ServerProcess
from .sse import EventStream

CONFIG = DEFAULT_CONFIG + '\n[[environments]]\nname = "m-exp"\n\n[[environments]]\nname = "m-maint"\n'
# A PUT that swaps ~60 KB of properties records an event whose detail holds both maps: ~120 KB on the wire.
BIG = [{f"p{i:02d}": letter * 2000 for i in range(30)} for letter in "ab"]
BIG_EVENT_BYTES = 120_000


def _big_events() -> int:
    """Enough big events to fill every buffer between the server's writer and a reader that reads nothing: the
    kernel's send buffer (at most tcp_wmem's maximum) and the reader's receive buffer (tcp_rmem's default; it
    grows only as the reader reads), twice over. Then the server's writer blocks and its queue fills."""
    try:
        wmem = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
        rmem = int(Path("/proc/sys/net/ipv4/tcp_rmem").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        wmem, rmem = 4 << 20, 128 << 10  # Linux's defaults
    return 2 * (wmem + rmem) // BIG_EVENT_BYTES + 8


BUFFER = 256  # docs/api.md: "a client that falls more than 256 events behind is disconnected"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running(tmp_path_factory.mktemp("events"), config=CONFIG, env={"CALL_ME_SSE_HEARTBEAT": "0.5"}) as proc:
        yield proc


def _history_ids(read: httpx.Client, name: str, after: int) -> list[int]:
    events = read.get("/v1/history", params={"environment": name, "limit": 1000}).json()["events"]
    return sorted(e["id"] for e in events if e["id"] > after)


def _read(stream: EventStream, until: int | None = None) -> tuple[list[int], bool]:
    """The event ids the stream delivers until the server ends it (then True), or until a heartbeat (which
    the server sends only when it has nothing more to send) after event `until`, if given, was delivered."""
    ids: list[int] = []
    try:
        while True:
            frame = stream.frame()
            if frame.id is not None:
                ids.append(frame.id)
            elif "heartbeat" in frame.comments and (until is None or until in ids):
                return ids, False
    except (EOFError, httpx.RemoteProtocolError):
        return ids, True


def test_a_client_more_than_256_events_behind_is_disconnected_and_resumes_missing_nothing(
    server: ServerProcess,
) -> None:
    with server.client() as admin, server.client(READ_KEY) as read, server.client(READ_KEY) as slow_http:
        assert admin.put("/v1/environments/sse-big", json={}).status_code == 201
        start = max([0, *_history_ids(read, "sse-big", 0)])
        with EventStream(slow_http, timeout=5) as slow:
            slow.frame()  # the stream has begun: the server subscribed it before its first frame
            # The slow client reads nothing while the server records far more than its buffer holds.
            for i in range(_big_events()):
                assert admin.put("/v1/environments/sse-big", json={"properties": BIG[i % 2]}).status_code == 200
            for i in range(BUFFER + 50):
                assert admin.put("/v1/environments/sse-big", json={"note": f"n{i}"}).status_code == 200
            recorded = _history_ids(read, "sse-big", start)
            received, ended = _read(slow, until=recorded[-1])
        assert ended, "the server kept streaming to a client far behind (or never ended its stream)"
        assert received, "not even the first events arrived"
        assert received == recorded[: len(received)], "the stream skipped or reordered events before it ended"
        assert len(received) < len(recorded) - BUFFER, "disconnected although it was not more than 256 behind"

        with EventStream(read, last_event_id=received[-1], timeout=5) as resumed:
            replayed, ended = _read(resumed)
        assert not ended
        assert replayed == recorded[len(received) :], "the resumed stream missed or repeated events"


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _scrape(read: httpx.Client) -> Samples:
    answer = read.get("/metrics")
    assert answer.status_code == 200, answer.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def _value(samples: Samples, name: str, environment: str) -> float | None:
    return samples.get((name, frozenset({("environment", environment)})))


def test_expiries_are_counted_once_a_lease_expires(server: ServerProcess) -> None:
    with server.client(CLIENT_KEY) as client, server.client(READ_KEY) as read:
        lease = granted(client, environment="m-exp", ttl=1)
        assert _value(_scrape(read), "callme_expiries_total", "m-exp") == 0
        wait_for("the lease's expiry", lambda: ended_lease(read, lease["id"]), timeout=5)
        samples = _scrape(read)
        assert _value(samples, "callme_expiries_total", "m-exp") == 1
        assert _value(samples, "callme_leases_held", "m-exp") == 0
        assert _value(samples, "callme_releases_total", "m-exp") == 0


def test_the_maintenance_gauge_follows_each_environment(server: ServerProcess) -> None:
    with server.client() as admin, server.client(READ_KEY) as read:
        for flag, expected in ((True, 1), (False, 0)):
            assert admin.put("/v1/environments/m-maint", json={"maintenance": flag}).status_code == 200
            samples = _scrape(read)
            assert _value(samples, "callme_environment_maintenance", "m-maint") == expected
            assert _value(samples, "callme_environment_maintenance", "m-exp") == 0
