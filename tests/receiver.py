"""A real HTTP receiver of webhooks on 127.0.0.1: records every POST, and answers as the test says (a status per
request in turn, or hang until released)."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float  # time.time() when it arrived whole

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    def signed_with(self, secret: str) -> bool:
        """Whether X-Call-Me-Signature is the HMAC-SHA256 of the raw body with `secret` (as a receiver checks)."""
        expected = "sha256=" + hmac.new(secret.encode(), self.body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(self.headers.get("x-call-me-signature", ""), expected)


@dataclass
class Receiver:
    port: int = 0
    # Answered in turn to the requests that arrive; then `otherwise`. "hang" holds the request until `release()`.
    answers: list[int | str] = field(default_factory=list)
    otherwise: int | str = 200
    received: list[Received] = field(default_factory=list)
    hanging: int = 0  # requests held open right now

    def __post_init__(self) -> None:
        self._lock = threading.Condition()
        self._released = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                with receiver._lock:
                    receiver.received.append(
                        Received({k.lower(): v for k, v in self.headers.items()}, raw, time.time())
                    )
                    answer = receiver.answers.pop(0) if receiver.answers else receiver.otherwise
                    receiver._lock.notify_all()
                if answer == "hang":
                    with receiver._lock:
                        receiver.hanging += 1
                        receiver._lock.notify_all()
                    receiver._released.wait(60)
                    with receiver._lock:
                        receiver.hanging -= 1
                    answer = 200
                try:
                    self.send_response(int(answer))
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the server gave up on this attempt (its timeout) before the answer came

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def release(self) -> None:
        """Let every hanging request (and any later one meant to hang) answer 200."""
        self._released.set()

    def wait_for(self, count: int, timeout: float = 30.0, *, kind: str | None = None) -> list[Received]:
        """The first `count` requests received (of event `kind`, if given); fails after `timeout` s."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                got = [r for r in self.received if kind is None or r.headers.get("x-call-me-event") == kind]
                if len(got) >= count:
                    return got[:count]
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [r.headers.get("x-call-me-event") for r in self.received]
                    raise AssertionError(f"expected {count} deliveries of {kind or 'any event'}; received {seen}")
                self._lock.wait(left)

    def wait_hanging(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        with self._lock:
            while self.hanging == 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("no request is hanging")
                self._lock.wait(left)

    def close(self) -> None:
        self._released.set()
        self._server.shutdown()
        self._server.server_close()
