"""The routes that watch: `GET /v1/events`, `GET /metrics` and the dashboard's; and their start-up."""

from __future__ import annotations

import asyncio
import logging

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from . import dashboard, events
from .csrf import FormTokens
from .errors import CallMeError
from .events import EventHub
from .http import parts, route
from .live import Live, live, require_viewer
from .metrics import Metrics
from .service import Service
from .sessions import Sessions
from .settings import Settings

log = logging.getLogger("callme.live")


async def event_stream(request: Request) -> Response:
    require_viewer(request, "read")  # a key, or the dashboard's session cookie (EventSource sends no headers)
    found = live(request)
    return events.response(found.hub, parts(request).service, request, found.heartbeat)


async def metrics(request: Request) -> Response:
    parts(request).keyring.require(request.headers, "read")
    found = live(request)
    found.metrics.refresh(await parts(request).service.environments(), found.hub.clients)
    return found.metrics.exposition()


def attach(app: Starlette, service: Service, settings: Settings, metrics: Metrics) -> asyncio.Task[None]:
    """Wire the hub and the metrics to the service; the task returned ends every stream at shutdown."""
    hub = EventHub()
    app.state.live = Live(
        hub=hub, sessions=Sessions(), forms=FormTokens(), metrics=metrics, heartbeat=settings.sse_heartbeat
    )
    service.listeners.extend([hub.publish, metrics.record])

    async def run() -> None:
        try:
            metrics.refresh(await service.environments(), 0)  # which environments are declared, from the start
        except CallMeError:
            log.warning("event=metrics_refresh_failed; declared environments are learnt at the first scrape")
        await hub.close_with(service.waiters)

    return asyncio.create_task(run(), name="callme-live")


routes = [
    route("/v1/events", GET=event_stream),
    route("/metrics", GET=metrics),
    *dashboard.routes,
]
