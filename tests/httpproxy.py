"""`LossyProxy`: an HTTP/1.1 proxy on 127.0.0.1 in front of a real server, for end-to-end tests.

It speaks just enough HTTP/1.1 to see every exchange whole, records each one, and lets a test
play the network's and the gateway's part: `answer` may answer a request in the server's
stead (a 502 from a load balancer) or say nothing at all, and `drop` may lose the server's
answer on the way back. Either hook may block, which holds the request or the answer for as
long as the test needs (to kill the client meanwhile, say).
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

__all__ = ["SAY_NOTHING", "Exchange", "LossyProxy", "Request", "gateway_error"]

# What `answer` returns to close the connection without any answer.
SAY_NOTHING = b""

_REASONS = {502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


@dataclass(frozen=True)
class Request:
    """A request as the proxy read it from the client."""

    method: str
    path: str
    body: bytes


@dataclass
class Exchange:
    """One request the proxy took and the answer to it (the server's, or the proxy's own)."""

    method: str
    path: str
    request_body: bytes
    status: int
    response_body: bytes
    delivered: bool = True
    forwarded: bool = True  # False: `answer` answered (or said nothing); the server never saw it

    def request_json(self) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(self.request_body)
        return body

    def response_json(self) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(self.response_body)
        return body


def gateway_error(status: int) -> bytes:
    """A gateway's own error answer, as nginx writes one: HTML, and the connection closed."""
    reason = _REASONS.get(status, "Error")
    body = f"<html><head><title>{status} {reason}</title></head><body><h1>{status} {reason}</h1></body></html>\n"
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/html\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return (head + body).encode()


def _read_message(stream: BinaryIO) -> tuple[bytes, bytes] | None:
    """One HTTP/1.1 message whole, as (head, body); None when the peer closed between messages."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = stream.readline(65536)
        if not line:
            if head:
                raise ConnectionError("the stream ended inside a message head")
            return None
        head += line
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
        # Every answer of the routes used here has a Content-Length; anything else is a surprise.
        assert name.strip().lower() != b"transfer-encoding", head
    body = stream.read(length) if length else b""
    if len(body) != length:
        raise ConnectionError("the stream ended inside a message body")
    return head, body


def _status(head: bytes) -> int:
    return int(head.split(b" ", 2)[1])


class LossyProxy:
    """127.0.0.1:<port> -> the server.

    `answer(request)`: None forwards it; bytes are sent back instead (the server never sees the
    request), then the connection is closed; `SAY_NOTHING` closes it without an answer.
    `drop(exchange)` True: the server's answer is lost, the connection closed.
    """

    def __init__(
        self,
        upstream_port: int,
        drop: Callable[[Exchange], bool] = lambda exchange: False,
        *,
        answer: Callable[[Request], bytes | None] = lambda request: None,
    ) -> None:
        self.upstream_port = upstream_port
        self.drop = drop
        self.answer = answer
        self.exchanges: list[Exchange] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)  # so that the accept loop sees `close` soon
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._threads = [threading.Thread(target=self._accept, name="proxy-accept", daemon=True)]

    def __enter__(self) -> LossyProxy:
        self._threads[0].start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopped.set()
        for thread in list(self._threads):
            thread.join(5)
        self._listener.close()

    def posts(self, path: str = "/v1/leases") -> list[Exchange]:
        with self._lock:
            return [exchange for exchange in self.exchanges if exchange.method == "POST" and exchange.path == path]

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                downstream, _ = self._listener.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=self._serve, args=(downstream,), name="proxy-connection", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _record(self, exchange: Exchange) -> None:
        with self._lock:
            self.exchanges.append(exchange)

    def _serve(self, downstream: socket.socket) -> None:
        try:
            with (
                downstream,
                socket.create_connection(("127.0.0.1", self.upstream_port)) as upstream,
                downstream.makefile("rb") as from_client,
                upstream.makefile("rb") as from_server,
            ):
                while (request := _read_message(from_client)) is not None:
                    method, path, _ = request[0].split(b" ", 2)
                    own = self.answer(Request(method.decode(), path.decode(), request[1]))
                    if own is not None:
                        own_head, _, own_body = own.partition(b"\r\n\r\n")
                        status = _status(own_head) if own else 0
                        self._record(Exchange(method.decode(), path.decode(), request[1], status, own_body,
                                              delivered=bool(own), forwarded=False))  # fmt: skip
                        downstream.sendall(own)
                        return  # Closing: the gateway's answers say `Connection: close`.
                    upstream.sendall(request[0] + request[1])
                    response = _read_message(from_server)
                    assert response is not None, "the server closed the connection without an answer"
                    exchange = Exchange(
                        method=method.decode(),
                        path=path.decode(),
                        request_body=request[1],
                        status=_status(response[0]),
                        response_body=response[1],
                    )
                    self._record(exchange)  # before `drop`, which may hold it: the test sees it now
                    exchange.delivered = not self.drop(exchange)
                    if not exchange.delivered:
                        return  # Closing both ends: the answer is lost on the way back.
                    downstream.sendall(response[0] + response[1])
        except OSError:
            return  # The client went away (it closes its pool at the end); nothing to forward to.
