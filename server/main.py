"""`call-me-server`: read the settings, open the store, serve until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import sys
from types import FrameType

import uvicorn

from .app import create_app
from .clock import Clock
from .errors import ConfigError
from .settings import Settings, load
from .store import for_database
from .store.base import StoreError, redact

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


async def _serve(settings: Settings) -> int:
    store = for_database(settings.database, Clock(), listen=settings.pg_listen)
    try:
        await store.open()
    except StoreError as exc:
        print(f"call-me-server: {exc}", file=sys.stderr)
        return 1
    app = create_app(settings, store)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
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
        await server.serve()
    finally:
        await store.close()
    return 0 if server.started else 1


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = load()
    except ConfigError as exc:
        print(f"call-me-server: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if settings.no_auth:
        log.warning("AUTHENTICATION IS OFF (CALL_ME_NO_AUTH): anyone who reaches this port is an admin")
    log.info("starting on %s:%s with database %s", settings.host, settings.port, redact(settings.database))
    raise SystemExit(asyncio.run(_serve(settings)))


if __name__ == "__main__":
    main()
