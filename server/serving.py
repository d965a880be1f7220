"""Serving: the store, the application and uvicorn, until a stop signal (what `call-me-server` runs once its
arguments and settings are read; apart from main.py so that `--help` imports none of it)."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import sys
from collections.abc import Callable
from types import FrameType

import uvicorn

from .app import create_app
from .clock import Clock
from .connections import ConnectionLimits, connection_cap, http_protocol, raise_file_limit
from .secret import ServerSecret
from .settings import Settings
from .store import for_database
from .store.base import StoreError

log = logging.getLogger("callme.server")


class _Server(uvicorn.Server):
    """Answers every held long-poll the moment a stop signal arrives, then shuts down as uvicorn does."""

    def __init__(self, config: uvicorn.Config, on_exit: list[object]) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        loop = asyncio.get_event_loop()
        for callback in self._on_exit:
            loop.call_soon_threadsafe(callback)  # type: ignore[arg-type]
        super().handle_exit(sig, frame)


async def serve(settings: Settings, secret: ServerSecret, listener: socket.socket) -> int:
    """Serve on `listener` (bound by main.py before anything is written: see `listen`) until a stop signal."""
    store = for_database(
        settings.database, Clock(), listen=settings.pg_listen, allow_new_database=settings.allow_new_database
    )
    try:
        await store.open()
    except StoreError as exc:
        print(f"call-me-server: {exc}", file=sys.stderr)
        listener.close()
        return 1
    log.info(
        "listening on http://%s:%d", f"[{settings.host}]" if ":" in settings.host else settings.host, settings.port
    )
    # Closed at the application's shutdown: after a stop signal uvicorn raises the signal again once it has shut
    # down, and the process ends there, before the `finally` below (a clean close checkpoints the WAL, releases
    # the lock and writes the exact high-water mark).
    app = create_app(settings, store, secret, close_store=True)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=http_protocol(_connection_limits(settings)),
        ws="none",  # no route speaks WebSocket: one protocol fewer to bound
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=10,
        lifespan="on",
    )

    def wake_waiters() -> None:
        state = getattr(app.state, "parts", None)
        if state is not None:
            state.service.waiters.close()

    server = _Server(config, [wake_waiters])
    try:
        await server.serve(sockets=[listener])
    finally:
        listener.close()
        await store.close()  # when the application never started (closing twice is harmless)
    return 0 if server.started else 1


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the application starts, as uvicorn would bind it (SO_REUSEADDR; IPv6
    for a host with a colon); an OSError whose `strerror` is one line saying what to do. uvicorn's own bind logs
    the bare errno among its start-up lines, after the application has started."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        where = f"{host}:{port}"
        if exc.errno == errno.EADDRINUSE:
            why = f"port {port} is in use on {host} (another call-me-server?); stop what holds it or set PORT"
        elif exc.errno == errno.EACCES:
            why = f"port {port} needs privileges this user lacks; set PORT to 1024 or above"
        elif exc.errno == errno.EADDRNOTAVAIL:
            why = f"{host} is not an address of this machine; set CALL_ME_HOST (0.0.0.0 for all)"
        elif isinstance(exc, socket.gaierror):
            why = f"the host {host!r} does not resolve; set CALL_ME_HOST to an address of this machine"
        else:
            why = f"cannot listen on {where}: {exc.strerror or exc}"
        raise OSError(exc.errno, why) from None
    sock.set_inheritable(True)
    return sock


def _connection_limits(settings: Settings) -> ConnectionLimits:
    before, open_files = raise_file_limit()
    if open_files != before:
        log.info("event=file_limit_raised from=%d to=%d", before, open_files)
    cap = connection_cap(settings.max_connections, open_files)
    if cap < settings.max_connections:
        log.warning(
            "CALL_ME_MAX_CONNECTIONS=%d is more than the open-file limit of %d allows: at most %d connections are "
            "admitted; raise the hard limit (ulimit -Hn, LimitNOFILE=, --ulimit nofile=) to admit more",
            settings.max_connections,
            open_files,
            cap,
        )
    return ConnectionLimits(max_connections=cap, read_timeout=settings.read_timeout, idle_timeout=settings.idle_timeout)


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when it is installed (it comes with uvicorn[standard], a dependency), as `uvicorn.run` would pick:
    its transports and wake-ups cost about half of asyncio's own loop per request. `asyncio.run` would make
    asyncio's loop before uvicorn is asked, so the loop is chosen here."""
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory
