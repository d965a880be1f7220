"""The Starlette application: routes, the error table, and the life of the store and the sweeper."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import openapi, render, routes_live, routes_maybe, routes_v1, routes_webhooks
from .auth import Keyring
from .clock import Clock
from .constants import PRUNE_FIRST_DELAY, PRUNE_INTERVAL, SWEEP_INTERVAL
from .delivery import Deliverer
from .errors import CallMeError, MethodNotAllowed, NotFound, Unavailable
from .http import Parts, parts, route
from .metrics import Metrics, RequestTimer, TimedStore
from .secret import ServerSecret, open_secret
from .service import Service
from .settings import Settings
from .store import for_database
from .store.base import Store

log = logging.getLogger("callme.app")


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    reason = await parts(request).service.readiness()
    if reason is None:
        return JSONResponse({"status": "ok"})
    return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)


async def openapi_json(request: Request) -> Response:
    parts(request).keyring.require(request.headers, "read")
    return JSONResponse(openapi.document())


async def _callme_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CallMeError)
    return render.problem(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return render.problem(NotFound(f"no route {request.url.path}; see /openapi.json"))
    if exc.status_code == 405:
        # One route per path (http.route), so Starlette's Allow names every method of the path.
        allowed = ", ".join(sorted(m.strip() for m in (exc.headers or {}).get("Allow", "").split(",") if m.strip()))
        response = render.problem(
            MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}; use {allowed}")
        )
        response.headers["Allow"] = allowed
        return response
    error = CallMeError(str(exc.detail))
    error.status, error.title = exc.status_code, str(exc.detail)
    return render.problem(error)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("event=internal_error path=%s", request.url.path)
    error = CallMeError("an unexpected error happened in the server; it has been logged")
    return render.problem(error)


async def _sweeper(service: Service) -> None:
    while True:
        try:
            await service.sweep()
        except Unavailable:
            pass  # already logged; the next round tries again
        except Exception:
            log.exception("event=sweep_failed")
        await asyncio.sleep(SWEEP_INTERVAL)


async def _pruner(service: Service) -> None:
    """Prune old history now and then; apart from the sweeper, so that deadlines never wait for a prune."""
    await asyncio.sleep(PRUNE_FIRST_DELAY)
    while True:
        try:
            await service.prune()
        except Unavailable:
            pass  # already logged; what was not pruned is pruned next time
        except Exception:
            log.exception("event=prune_failed")
        await asyncio.sleep(PRUNE_INTERVAL)


def create_app(
    settings: Settings, store: Store | None = None, secret: ServerSecret | None = None, *, close_store: bool = False
) -> Starlette:
    """The application; it opens `store` (or the configured database) on start-up unless already open, and closes
    what it opened (or, with `close_store`, the store it was given) at shutdown; and the server secret the
    settings name unless given one."""
    owned = store is None
    the_store: Store = (
        store
        if store is not None
        else for_database(
            settings.database, Clock(), listen=settings.pg_listen, allow_new_database=settings.allow_new_database
        )
    )
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        the_secret = secret if secret is not None else open_secret(settings)
        if owned:
            await the_store.open()
        service = Service(TimedStore(the_store, metrics.transactions), settings, the_secret)
        app.state.parts = Parts(settings, service, Keyring(settings.keys, no_auth=settings.no_auth))
        watcher = routes_live.attach(app, service, settings, metrics)
        await service.apply_declared([(e.name, e.change) for e in settings.environments])
        await service.apply_declared_webhooks([(h.name, h.change) for h in settings.webhooks])
        deliverer = Deliverer(the_store, the_secret, settings)
        service.on_outbox(deliverer.wake)
        delivering = asyncio.create_task(deliverer.run(), name="callme-webhooks")
        heartbeat = asyncio.create_task(service.heartbeat(), name="callme-heartbeat")
        sweeper = asyncio.create_task(_sweeper(service), name="callme-sweeper")
        pruner = asyncio.create_task(_pruner(service), name="callme-pruner")
        try:
            yield
        finally:
            service.waiters.close()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher  # ends the event streams; it sees the waiters closed within 0.1 s
            for task in (heartbeat, sweeper, pruner, delivering):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if owned or close_store:
                await the_store.close()

    routes = [
        route("/healthz", GET=healthz),
        route("/readyz", GET=readyz),
        route("/openapi.json", GET=openapi_json),
        *routes_v1.routes,
        *routes_webhooks.routes,
        *routes_maybe.routes,
        *routes_live.routes,
    ]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(RequestTimer, metrics=metrics)],
        exception_handlers={
            CallMeError: _callme_error,
            HTTPException: _http_error,
            Exception: _unexpected,
        },
    )
