"""Connections that try to exhaust the server before they authenticate (issue 12, item 2), against a real
`call-me-server` on real sockets: oversized and slow headers, idle and surplus connections, too few open files.
Every test holds a bounded number of sockets for a few seconds; timeouts are set small through the settings."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from callme.server.connections import connection_cap
from callme.server.constants import MAX_HEAD_BYTES, MAX_HEAD_FIELDS, RESERVED_FILES
from callme.server.logfilter import RepeatLimit

from .serverproc import ADMIN_KEY, CLIENT_KEY, ServerProcess

MIB = 1024 * 1024


@contextmanager
def _running(server: ServerProcess) -> Iterator[ServerProcess]:
    server.start()
    try:
        yield server
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.kill()


def _connect(server: ServerProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=5)


def _request(method: str, path: str, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers)]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _read_answer(sock: socket.socket, timeout: float) -> bytes:
    """Whatever arrives until the server closes, `timeout` passes, or one whole answer with a body is in."""
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = [line for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")]
            if length and len(body) >= int(length[0].split(b":")[1]):
                break
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def _body(answer: bytes) -> dict[str, object]:
    parsed: dict[str, object] = json.loads(answer.partition(b"\r\n\r\n")[2])
    return parsed


def _ask(server: ServerProcess, raw: bytes) -> bytes:
    with _connect(server) as sock:
        sock.sendall(raw)
        return _read_answer(sock, 5)


def _drain(sock: socket.socket) -> tuple[bytes, bool]:
    """What the server has sent so far without waiting, and whether it has closed its end."""
    sock.setblocking(False)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data, True
            data += chunk
    except BlockingIOError:
        return data, False
    except OSError:
        return data, True


def _gone(sock: socket.socket) -> bool:
    return _drain(sock)[1]


def _rss_bytes(server: ServerProcess) -> int:
    assert server.proc is not None
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_an_oversized_header_block_gets_431_and_costs_the_server_no_memory(tmp_path: Path) -> None:
    with _running(ServerProcess(tmp_path)) as server:
        key = [("X-API-KEY", ADMIN_KEY)]
        big = _ask(server, _request("GET", "/v1/environments", [*key, ("X-Big", "a" * MAX_HEAD_BYTES)]))
        assert _status(big) == 431
        assert _body(big)["code"] == "too_large"
        fields = [(f"X-Field-{i}", "v") for i in range(MAX_HEAD_FIELDS)]  # with Host and the key: two too many
        assert _status(_ask(server, _request("GET", "/v1/environments", [*key, *fields]))) == 431
        # Just under both limits is an ordinary request.
        fill = [("X-Fill", "a" * (MAX_HEAD_BYTES - 1024))]
        assert _status(_ask(server, _request("GET", "/v1/environments", [*key, *fill]))) == 200
        assert _status(_ask(server, _request("GET", "/v1/environments", [*key, *fields[:-2]]))) == 200

        # Ten clients without a key each push 8 MiB into one header field that never ends. Before the limit the
        # server kept every byte (ten times 32 MiB took it from 53 MB to 457 MB).
        before = _rss_bytes(server)
        pushed = []
        for _ in range(10):
            sock = _connect(server)
            sock.sendall(b"GET /v1/environments HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
            sent = 0
            try:
                while sent < 8 * MIB:
                    sent += sock.send(b"a" * (256 * 1024))
            except OSError:
                pass  # the server closed the connection: what a client that does not stop deserves
            pushed.append(sock)
        grown = _rss_bytes(server) - before
        answers = [_read_answer(sock, 3) for sock in pushed]
        for sock in pushed:
            sock.close()
        assert grown < 16 * MIB, f"the server grew by {grown / MIB:.0f} MiB"
        assert all(_status(a) in (431, 0) for a in answers), [a[:40] for a in answers]
        assert server.proc is not None
        assert server.proc.poll() is None, "the server died"


def test_a_request_sent_too_slowly_is_cut_after_the_read_timeout(tmp_path: Path) -> None:
    env = {"CALL_ME_READ_TIMEOUT": "1", "CALL_ME_IDLE_TIMEOUT": "30"}
    with _running(ServerProcess(tmp_path, env=env)) as server:
        # Slowloris: a header line now and then, never the blank line that ends the headers.
        slow = [_connect(server) for _ in range(20)]
        for sock in slow:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        # And a body that trickles in after complete headers.
        trickle = _connect(server)
        trickle.sendall(_request("POST", "/v1/leases", [("X-API-KEY", CLIENT_KEY), ("Content-Length", "100")]))
        answers = {sock: b"" for sock in slow}
        closed: set[socket.socket] = set()
        started = time.monotonic()
        open_at_half = None
        while time.monotonic() - started < 6 and len(closed) < len(slow) + 1:
            for sock in [*slow, trickle]:
                if sock in closed:
                    continue
                try:
                    sock.setblocking(True)
                    sock.sendall(b"X-Again: yes\r\n" if sock in answers else b"{")
                except OSError:
                    pass
                data, gone = _drain(sock)
                answers[sock] = answers.get(sock, b"") + data
                if gone:
                    closed.add(sock)
            if open_at_half is None and time.monotonic() - started >= 0.5:
                open_at_half = len(slow) - len(closed & set(slow))
            time.sleep(0.2)
        assert open_at_half == len(slow), "cut before the read timeout"
        assert len(closed) == len(slow) + 1, "a slow request was still open after 6 s"
        assert all(_status(answers[sock]) == 408 for sock in slow), [answers[s][:40] for s in slow]
        assert "Traceback" not in server.log(), "a request cut off mid-body was logged as the server's failure"
        for sock in [*slow, trickle]:
            sock.close()


def test_idle_connections_are_closed_but_a_parked_long_poll_and_an_event_stream_are_not(tmp_path: Path) -> None:
    env = {"CALL_ME_READ_TIMEOUT": "1", "CALL_ME_IDLE_TIMEOUT": "1", "CALL_ME_SSE_HEARTBEAT": "0.5"}
    with _running(ServerProcess(tmp_path, env=env)) as server:
        with server.client() as admin:
            assert admin.post("/v1/leases", json={"environment": "uat", "holder": "first"}).status_code == 201
        silent = [_connect(server) for _ in range(50)]
        kept_alive = _connect(server)
        kept_alive.sendall(_request("GET", "/healthz", []))
        assert _status(_read_answer(kept_alive, 5)) == 200
        # A long-poll parked for 3 s and an event stream, both longer than either timeout.
        waiter = _connect(server)
        body = json.dumps({"environment": "uat", "holder": "second", "wait": 3}).encode()
        waiter.sendall(
            _request("POST", "/v1/leases", [("X-API-KEY", CLIENT_KEY), ("Content-Type", "application/json")], body)
        )
        stream = _connect(server)
        stream.sendall(_request("GET", "/v1/events", [("X-API-KEY", ADMIN_KEY)]))
        started = time.monotonic()
        idle = [*silent, kept_alive]
        while time.monotonic() - started < 4 and not all(_gone(sock) for sock in idle):
            time.sleep(0.1)
        assert all(_gone(sock) for sock in idle), "an idle connection was still open after 4 s"
        parked = _read_answer(waiter, 5)
        assert _status(parked) == 202, parked[:200]
        assert time.monotonic() - started >= 2.5, "the long-poll was not held for its wait"
        stream.setblocking(True)
        stream.settimeout(2)
        assert b": heartbeat" in stream.recv(65536), "the event stream was cut"
        assert not _gone(stream)
        for sock in [*idle, waiter, stream]:
            sock.close()


def test_beyond_the_connection_cap_a_new_connection_gets_503_at_once_and_a_parked_long_poll_its_lease(
    tmp_path: Path,
) -> None:
    with _running(ServerProcess(tmp_path, env={"CALL_ME_MAX_CONNECTIONS": "2"})) as server:
        with server.client() as admin:  # one connection, kept alive
            lease = admin.post("/v1/leases", json={"environment": "uat", "holder": "first"}).json()
            waiter = _connect(server)  # the second
            body = json.dumps({"environment": "uat", "holder": "second", "wait": 10}).encode()
            waiter.sendall(
                _request("POST", "/v1/leases", [("X-API-KEY", CLIENT_KEY), ("Content-Type", "application/json")], body)
            )
            deadline = time.monotonic() + 5
            while not admin.get("/v1/environments/uat").json()["queue"]:
                assert time.monotonic() < deadline, "the waiter did not park"
                time.sleep(0.05)

            refused = _ask(server, _request("GET", "/healthz", []))
            assert _status(refused) == 503
            assert _body(refused)["code"] == "unavailable"
            assert b"\r\nretry-after: 1\r\n" in refused.lower()
            assert httpx.get(server.url + "/healthz", timeout=5).status_code == 503

            assert admin.delete(f"/v1/leases/{lease['id']}", headers={"X-Lease-Token": lease["token"]}).status_code
        granted = _read_answer(waiter, 5)
        waiter.close()
        assert _status(granted) == 201, granted[:200]
        assert _body(granted)["holder"] == "second"


def _max_open_files(server: ServerProcess) -> tuple[int, int]:
    assert server.proc is not None
    line = next(
        line for line in Path(f"/proc/{server.proc.pid}/limits").read_text().splitlines() if "open files" in line
    )
    soft, hard = line.split()[3:5]
    return int(soft), int(hard)


def test_the_soft_open_file_limit_is_raised_to_the_hard_one(tmp_path: Path) -> None:
    with _running(ServerProcess(tmp_path, open_files=(256, 2048))) as server:
        assert _max_open_files(server) == (2048, 2048)
        assert "event=file_limit_raised from=256 to=2048" in server.log()
        # More idle connections than the soft limit the server was started with: it still answers a new one.
        idle = [_connect(server) for _ in range(400)]
        try:
            assert httpx.get(server.url + "/healthz", timeout=5).status_code == 200
        finally:
            for sock in idle:
                sock.close()


def test_out_of_open_files_the_log_stays_short_and_the_server_serves_again(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, open_files=(128, 128), env={"CALL_ME_IDLE_TIMEOUT": "30"})
    with _running(server):
        assert _max_open_files(server) == (128, 128)
        assert f"at most {128 - RESERVED_FILES} connections are admitted" in server.log()
        logged = len(server.log().splitlines())
        # More connections than files: the kernel queues them, the server admits 64, answers some 503 and
        # fails to accept the rest (EMFILE) while they stay open.
        crowd = [_connect(server) for _ in range(400)]
        most = 0
        for _ in range(30):  # 3 s
            most = max(most, len(os.listdir(f"/proc/{server.proc.pid}/fd")))
            time.sleep(0.1)
        lines = server.log().splitlines()[logged:]
        text = "\n".join(lines)
        # asyncio's loop logs each failed accept; uvloop (libuv) closes what it cannot accept and logs nothing.
        # Either way the server held every file it may open.
        assert "out of system resource" in text or most >= 128 - 2, f"the server never ran out of files ({most})"
        assert "event=connection_refused reason=at_capacity" in text
        # Measured: about 60 lines in 3 s (tracebacks included); before the limit, 400,000 in 8 s.
        assert len(lines) < 200, f"{len(lines)} log lines in 3 s"
        for sock in crowd:
            sock.close()
        deadline = time.monotonic() + 10
        while True:
            try:
                if httpx.get(server.url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not serve again once the connections closed"
            time.sleep(0.2)


def test_the_connection_cap_leaves_room_for_the_files_the_server_needs() -> None:
    assert connection_cap(16_384, 1_048_576) == 16_384
    assert connection_cap(16_384, 1024) == 1024 - RESERVED_FILES
    assert connection_cap(100, 1024) == 100
    assert connection_cap(100, 10) == 1


def _record(message: str, level: int = logging.ERROR, name: str = "asyncio") -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


def test_the_same_warning_passes_a_few_times_a_second_and_the_rest_are_counted() -> None:
    now = [100.0]
    limit = RepeatLimit(repeats=3, window=1.0, clock=lambda: now[0])
    flood = [_record("socket.accept() out of system resource\nsocket: <fd=10>") for _ in range(1000)]
    assert sum(limit.filter(r) for r in flood) == 3
    # Another message, another logger, and everything below WARNING are not held back by that flood.
    assert limit.filter(_record("event=store_error error=%s"))
    assert limit.filter(_record("socket.accept() out of system resource", name="uvicorn.error"))
    assert all(limit.filter(_record("event=acquired lease=%s", logging.INFO)) for _ in range(100))
    now[0] += 1.0
    after = _record("socket.accept() out of system resource\nsocket: <fd=10>")
    assert limit.filter(after)
    assert after.getMessage() == (
        "socket.accept() out of system resource [997 more like this were not logged]\nsocket: <fd=10>"
    )
    following = _record("socket.accept() out of system resource\nsocket: <fd=10>")
    assert limit.filter(following)
    assert "more like this" not in following.getMessage()
