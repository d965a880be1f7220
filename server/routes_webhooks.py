"""The webhook routes (admin only): declare, read and delete hooks, and read a hook's delivery log."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import validation, webhooks
from .constants import DEFAULT_DELIVERY_LOG, MAX_DELIVERY_LOG
from .errors import Invalid
from .http import body, parts, route
from .model import Delivery
from .render import timestamp
from .service_webhooks import WebhookView


def webhook_json(view: WebhookView) -> dict[str, Any]:
    hook = view.hook
    return {
        "name": hook.name,
        "url": hook.url,
        "events": list(hook.events),
        "format": hook.format,
        # Never the secret: only that one is set, or that this server's secret no longer opens it.
        "secret": "set" if view.secret_ok else "unreadable",
        "declared_by": "config" if hook.declared else "api",
        "created_at": timestamp(hook.created_at),
        "updated_at": timestamp(hook.updated_at),
    }


def delivery_json(d: Delivery) -> dict[str, Any]:
    return {
        "id": f"d_{d.id}",
        "event": d.event,
        "environment": d.environment,
        "created_at": timestamp(d.created_at),
        "state": d.state,
        "attempts": d.attempts,
        "last_status": d.last_status,
        "last_error": d.last_error,
        "next_attempt_at": timestamp(d.next_at) if d.state == "pending" else None,
        "delivered_at": timestamp(d.delivered_at),
    }


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return DEFAULT_DELIVERY_LOG
    if not (raw.isascii() and raw.isdigit()) or len(raw) > len(str(MAX_DELIVERY_LOG)):
        raise Invalid("limit", f"must be a whole number from 1 to {MAX_DELIVERY_LOG}")
    return validation.integer("limit", int(raw), 1, MAX_DELIVERY_LOG)


async def list_webhooks(request: Request) -> Response:
    p = parts(request)
    p.keyring.require(request.headers, "admin")
    return JSONResponse({"webhooks": [webhook_json(v) for v in await p.service.webhooks()]})


async def get_webhook(request: Request) -> Response:
    p = parts(request)
    p.keyring.require(request.headers, "admin")
    name = webhooks.hook_name(request.path_params["name"])
    return JSONResponse(webhook_json(await p.service.webhook(name)))


async def put_webhook(request: Request) -> Response:
    p = parts(request)
    principal = p.keyring.require(request.headers, "admin")
    name = webhooks.hook_name(request.path_params["name"])
    change = webhooks.change(validation.parse_object(await body(request)))
    view, created = await p.service.put_webhook(principal, name, change)
    return JSONResponse(webhook_json(view), status_code=201 if created else 200)


async def delete_webhook(request: Request) -> Response:
    p = parts(request)
    principal = p.keyring.require(request.headers, "admin")
    name = webhooks.hook_name(request.path_params["name"])
    await p.service.delete_webhook(principal, name)
    return Response(status_code=204)


async def deliveries(request: Request) -> Response:
    p = parts(request)
    p.keyring.require(request.headers, "admin")
    name = webhooks.hook_name(request.path_params["name"])
    found = await p.service.deliveries(name, _limit(request))
    return JSONResponse({"webhook": name, "deliveries": [delivery_json(d) for d in found]})


routes = [
    route("/v1/webhooks", GET=list_webhooks),
    route("/v1/webhooks/{name}", GET=get_webhook, PUT=put_webhook, DELETE=delete_webhook),
    route("/v1/webhooks/{name}/deliveries", GET=deliveries),
]
