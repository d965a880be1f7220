"""What one connection may cost before it has sent a whole request: the HTTP protocol uvicorn runs for us.

uvicorn (0.54, read in uvicorn/protocols/http/httptools_impl.py) with httptools, which `uvicorn[standard]`
selects, bounds none of it: httptools keeps an unfinished header field in memory however long it grows
(a 16 MiB header was answered 200), no timer runs while a request arrives, the keep-alive timer starts only
after a first response and any byte cancels it, and `limit_concurrency` answers 503 only once a request's
headers have come, so a silent connection beyond it keeps its file open. h11 bounds the header block
(`h11_max_incomplete_event_size`, 16 KiB, a 400) but has the same timers, and parses in pure Python. So
this is uvicorn's httptools protocol with:

- at most MAX_HEAD_BYTES of request line and header fields and at most MAX_HEAD_FIELDS fields: 431;
- a request arrives whole, headers and body, within `read_timeout` of its first byte: else 408 and close;
- a connection with no request on it, from its opening on, is closed after `idle_timeout`;
- beyond `max_connections` a new connection is answered 503 at once and closed within REFUSAL_LINGER;
- a method httptools does not know (it knows a fixed list) reaches the app, which answers 405 with `Allow`,
  rather than the parser's bare 400.

A request in flight, such as a parked long-poll or a /v1/events stream, runs under none of these timers:
it was read whole before the app saw it, and the idle timer starts when its response is complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import resource
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, cast

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from . import render
from .constants import MAX_HEAD_BYTES, MAX_HEAD_FIELDS, MAX_METHOD_LENGTH, REFUSAL_LINGER, RESERVED_FILES
from .errors import AtCapacity, HeadersTooLarge, RequestTimeout

if TYPE_CHECKING:
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from .errors import CallMeError

log = logging.getLogger("callme.connections")


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int
    read_timeout: float
    idle_timeout: float
    max_head_bytes: int = MAX_HEAD_BYTES
    max_head_fields: int = MAX_HEAD_FIELDS


def raise_file_limit() -> tuple[int, int]:
    """Raises the soft limit on open files to the hard one, as a service manager would; returns it before and
    after. Every connection is a file: at Linux's usual soft limit of 1,024 a thousand idle sockets stop the
    server from accepting anyone."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        # macOS, for one, refuses an unlimited soft limit; then the limit in force is the one used.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return soft, resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def connection_cap(wanted: int, open_files: int) -> int:
    """The connections admitted at once: `wanted`, or fewer when the open-file limit leaves no room for them,
    so that the server never runs out of files only to fail at accepting (and at answering 503)."""
    if open_files == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, open_files - RESERVED_FILES))


def http_protocol(limits: ConnectionLimits) -> type[asyncio.Protocol]:
    """The protocol class to give uvicorn.Config(http=...)."""
    return type("BoundedHttpToolsProtocol", (_BoundedProtocol,), {"limits": limits})


# RFC 9110's token: what a method may be.
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Given to httptools in place of a method it does not know; the app sees the real one. Any method it knows with no
# meaning of its own to the parser (unlike CONNECT) would do.
_STAND_IN = b"PROPFIND"
# A byte httptools refuses in a request target, which a client sending UTF-8 unencoded means percent-encoded.
_RAW = re.compile(rb"[\x80-\xff]")


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop httptools; it comes back as the context of HttpParserCallbackError."""


def _answer(error: CallMeError, extra: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
    response = render.problem(error)
    lines = [STATUS_LINE[error.status]]
    for name, value in (*response.raw_headers, *extra, (b"connection", b"close")):
        lines.append(name + b": " + value + b"\r\n")
    return b"".join([*lines, b"\r\n", response.body])


class _Answered(asyncio.Protocol):
    """A connection given its last answer: written, the sending side shut, and whatever the client still sends
    read and dropped until it hangs up or REFUSAL_LINGER has passed. Closing with unread data would make the
    kernel send a reset, which can destroy the answer before the client reads it (nginx's lingering close)."""

    def __init__(self, answer: bytes, loop: asyncio.AbstractEventLoop) -> None:
        self._answer = answer
        self._loop = loop
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport has a Transport's methods but is no subclass of asyncio.Transport: no isinstance.
        transport = cast(asyncio.Transport, transport)
        transport.write(self._answer)
        try:
            transport.write_eof()
        except OSError:  # the client is gone already
            transport.close()
            return
        if not transport.is_reading():
            transport.resume_reading()
        self._timer = self._loop.call_later(REFUSAL_LINGER, transport.close)

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        return False  # the transport closes

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()


class _BoundedProtocol(HttpToolsProtocol):
    limits: ClassVar[ConnectionLimits]

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        # uvicorn arms this after each response and cancels it on any byte; it is typed int, call_later takes a
        # float.
        self.timeout_keep_alive = self.limits.idle_timeout  # type: ignore[assignment]
        self._reading_head = True  # from the opening, and from the end of each request, until headers are complete
        self._head_bytes = 0
        self._head_fields = 0
        self._read_timer: asyncio.TimerHandle | None = None
        # Every byte of the request head fed so far, from its first; None when that request began inside a piece
        # after the previous one ended (then where it begins is not known).
        self._head: bytearray | None = bytearray()
        self._ended_in_feed = False
        self._odd: bytearray | None = None  # a request with a method httptools refused, until the method ends
        self._raw: bytearray | None = None  # a request whose target has raw bytes over 0x7F, until its line ends
        self._odd_method: str | None = None  # that method, for the request's scope

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        cap = self.limits.max_connections
        if len(self.connections) >= cap:
            log.warning("event=connection_refused reason=at_capacity max_connections=%d", cap)
            error = AtCapacity(
                f"the server holds its limit of {cap} connections (CALL_ME_MAX_CONNECTIONS); try again in a moment"
            )
            self._hand_over(transport, _answer(error, ((b"retry-after", b"1"),)))
            return
        super().connection_made(transport)
        # uvicorn starts the keep-alive timer only after a first response: a connection that never sends a
        # byte would be held for ever.
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_read_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # uvicorn's data_received, with the header block fed at most up to its limit: httptools buffers an
        # unfinished field in full, so what it is given is what it holds.
        self._unset_keepalive_if_required()
        if self._reading_head and not self._responding():
            # Any byte starts the clock, even the blank lines httptools skips before a request. While a response
            # is on its way (a parked long-poll), only the start of a pipelined request does (on_message_begin):
            # an old client's stray CRLF after a body must not cut the request it waits for.
            self._start_read_timer()
        while data:
            if self._reading_head:
                room = self.limits.max_head_bytes - self._head_bytes
                piece, data = (data, b"") if len(data) <= room else (data[:room], data[room:])
                self._head_bytes += len(piece)
            else:
                piece, data = data, b""
            if not self._feed(piece):
                return
            if self._reading_head and self._head_bytes >= self.limits.max_head_bytes:
                self._too_large(f"the request line and header fields exceed {self.limits.max_head_bytes} bytes")
                return

    def _feed(self, piece: bytes) -> bool:
        """Feeds the parser; False once the connection was answered, closed or handed over (as uvicorn does)."""
        if self._odd is not None:
            self._odd += piece
            return self._odd_request()
        if self._raw is not None:
            self._raw += piece
            return self._raw_request()
        if self._reading_head and self._head is not None:
            self._head += piece
        self._ended_in_feed = False
        try:
            self.parser.feed_data(piece)
        except httptools.HttpParserInvalidMethodError:
            if self._head is None:
                return self._invalid()
            self._odd = self._head
            return self._odd_request()
        except httptools.HttpParserInvalidURLError:
            if self._head is None or not _RAW.search(self._head):
                return self._invalid()
            self._raw = self._head
            return self._raw_request()
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):  # raised by on_header below
                self._too_large(str(exc.__context__))
                return False
            return self._invalid()
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return False
        return True

    def _invalid(self) -> bool:
        msg = "Invalid HTTP request received."
        self.logger.warning(msg)
        self.send_400_response(msg)
        return False

    def _odd_request(self) -> bool:
        """A request whose method httptools refused: once the method has come whole, a fresh parser reads the request
        with a stand-in method, and on_headers_complete puts the real one back for the app."""
        assert self._odd is not None
        data = bytes(self._odd).lstrip(b"\r\n")  # httptools skips blank lines before a request
        end = data.find(b" ")
        method = data if end < 0 else data[:end]
        if end == 0 or len(method) > MAX_METHOD_LENGTH or (method and not _TOKEN.fullmatch(method)):
            return self._invalid()
        if end < 0:
            return True  # the method goes on in the next piece
        self._odd, self._head = None, None
        self._odd_method = method.decode("ascii")
        self.parser = httptools.HttpRequestParser(self)
        with contextlib.suppress(AttributeError):  # as uvicorn does; httptools < 0.6.3 has no leniencies
            self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        return self._feed(_STAND_IN + data[end:])

    def _raw_request(self) -> bool:
        """A request target with raw bytes over 0x7F, as `curl "$URL/maybe?environment=été"` sends it (curl does
        not encode a URL; the original's Go server took it): once the request line has come whole, those bytes are
        percent-encoded, which is what they mean (RFC 3986 reads a URI's non-ASCII as its UTF-8, percent-encoded),
        and a fresh parser reads the request. Bytes that are no UTF-8 then get the app's own 400."""
        assert self._raw is not None
        data = bytes(self._raw).lstrip(b"\r\n")
        end = data.find(b"\n")
        if end < 0:
            return True  # the request line goes on in the next piece (the head's limit still bounds it)
        line = _RAW.sub(lambda byte: b"%%%02X" % byte.group()[0], data[:end])
        self._raw, self._head = None, None
        self.parser = httptools.HttpRequestParser(self)
        with contextlib.suppress(AttributeError):  # as uvicorn does; httptools < 0.6.3 has no leniencies
            self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        return self._feed(line + data[end:])

    def on_message_begin(self) -> None:
        if self._ended_in_feed:
            self._head = None
        self._start_read_timer()
        self._head_fields = 0
        super().on_message_begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_fields += 1
        if self._head_fields > self.limits.max_head_fields:
            raise _HeadTooLarge(f"the request has more than {self.limits.max_head_fields} header fields")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._head = None  # not kept while a long-poll is parked; on_message_complete starts the next
        super().on_headers_complete()
        if self._odd_method is not None:
            self.scope["method"] = self._odd_method  # before the app's task first runs
            self._odd_method = None

    def on_message_complete(self) -> None:
        self._stop_read_timer()
        self._reading_head = True
        self._head_bytes = 0
        self._head = bytearray()
        self._ended_in_feed = True
        super().on_message_complete()

    def _start_read_timer(self) -> None:
        if self._read_timer is None:
            self._read_timer = self.loop.call_later(self.limits.read_timeout, self._read_timed_out)

    def _stop_read_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        if not self._reading_head or self._responding():
            self.transport.close()  # a body too slow, or a request pipelined behind a response: no room to answer
            return
        log.warning("event=connection_closed reason=read_timeout read_timeout=%g", self.limits.read_timeout)
        error = RequestTimeout(
            f"the request did not arrive whole within {self.limits.read_timeout:g} s (CALL_ME_READ_TIMEOUT)"
        )
        self._hand_over(self.transport, _answer(error))

    def _too_large(self, why: str) -> None:
        if self._responding():
            self.transport.close()
            return
        log.warning("event=connection_closed reason=headers_too_large")
        self._hand_over(self.transport, _answer(HeadersTooLarge(f"{why}; send less")))

    def _responding(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _hand_over(self, transport: asyncio.Transport, answer: bytes) -> None:
        self.connections.discard(self)
        self._unset_keepalive_if_required()
        self._stop_read_timer()
        answered = _Answered(answer, self.loop)
        transport.set_protocol(answered)
        answered.connection_made(transport)
