"""How records become answers: JSON bodies, problem documents and shell-friendly text."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from . import rules
from .errors import CallMeError
from .model import Environment, Event, Lease
from .outcomes import EnvironmentView, Granted, GrantedGroup, Queued
from .validation import part_prefixes, property_variable


def timestamp(t: float | None) -> str | None:
    """RFC 3339 in UTC, to the millisecond."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def lease_json(lease: Lease, env: Environment | None, *, token: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": lease.id,
        "environment": lease.environment,
        "holder": lease.holder,
        "metadata": lease.metadata,
        "fence": lease.fence,
        "acquired_at": timestamp(lease.acquired_at),
        "expires_at": timestamp(lease.expires_at),
        "ttl": lease.ttl,
        "state": lease.state,
        "ended_at": timestamp(lease.ended_at),
        "seq": lease.seq,
        "properties": env.properties if env is not None else {},
        "group": lease.group_id,
    }
    if token is not None:
        body["token"] = token
    return body


def _envs(envs: list[Environment]) -> dict[str, Environment]:
    return {e.name: e for e in envs}


def holders_json(holders: list[Lease], envs: list[Environment]) -> list[dict[str, Any]]:
    by_name = _envs(envs)
    return [lease_json(lease, by_name.get(lease.environment)) for lease in holders]


def queued_json(queued: Queued) -> dict[str, Any]:
    ticket = queued.ticket
    body = {
        "ticket": queued.ticket_id,
        "seq": ticket.seq,
        "position": queued.position,
        "environment": ticket.environment,
        "label": ticket.label,
        "waited": queued.waited,
        "holders": holders_json(queued.group.holders(ticket, queued.parts), queued.group.envs),
        # Why a slot that is free may still not be granted: the usable environments in maintenance, with notes.
        "maintenance": [
            {"environment": e.name, "note": e.note}
            for e in queued.group.envs
            if e.maintenance and any(rules.can_serve(e, part) for part in (queued.parts or [ticket]))
        ],
    }
    if queued.parts:
        # A group: one ticket for all its parts; environment and label are those of its first part.
        body["group"] = ticket.group_id
        body["all"] = [_part_json(t.environment, t.label) for t in queued.parts]
    return body


def _part_json(environment: str | None, label: str | None) -> dict[str, str]:
    return {"environment": environment} if environment is not None else {"label": label or ""}


def group_json(group: GrantedGroup, *, with_tokens: bool = False) -> dict[str, Any]:
    leases = [lease_json(g.lease, g.environment, token=g.token if with_tokens else None) for g in group.leases]
    if with_tokens:  # the acquirer's 201: how long its request waited, as for one lease
        for body_of, granted in zip(leases, group.leases, strict=True):
            body_of["queued_for"] = round(granted.queued_for, 3)
    body: dict[str, Any] = {"group": group.group_id, "leases": leases}
    if with_tokens and group.token is not None:
        body["token"] = group.token
    return body


def group_response(request: Request, group: GrantedGroup) -> Response:
    assert group.token is not None  # an acquire's grant carries its tokens
    headers = {"Location": f"/v1/groups/{group.group_id}"}
    if wants_text(request):
        pairs: list[tuple[str, object]] = [("CALL_ME_GROUP_ID", group.group_id), ("CALL_ME_GROUP_TOKEN", group.token)]
        prefixes = part_prefixes([g.lease.environment for g in group.leases])
        for prefix, granted in zip(prefixes, group.leases, strict=True):
            lease = granted.lease
            pairs += [
                (prefix + "LEASE_ID", lease.id),
                (prefix + "LEASE_TOKEN", granted.token),
                (prefix + "ENVIRONMENT", lease.environment),
                (prefix + "FENCE", lease.fence),
                (prefix + "EXPIRES_AT", timestamp(lease.expires_at)),
            ]
            pairs += [(property_variable(k, prefix), v) for k, v in sorted(granted.environment.properties.items())]
        return PlainTextResponse(_lines(pairs), status_code=201, headers=headers)
    return JSONResponse(group_json(group, with_tokens=True), status_code=201, headers=headers)


def environment_json(view: EnvironmentView) -> dict[str, Any]:
    env = view.env
    return {
        "name": env.name,
        "slots": env.slots,
        "labels": list(env.labels),
        "description": env.description,
        "properties": env.properties,
        "maintenance": env.maintenance,
        "note": env.note,
        "auto": env.auto,
        "held_too_long": env.held_too_long,
        "waiting_too_long": env.waiting_too_long,
        "free": max(0, env.slots - len(view.leases)),
        "leases": [lease_json(lease, env) for lease in view.leases],
        "queue": [
            {
                "seq": t.seq,
                "position": position,
                "holder": t.holder,
                "priority": t.priority,
                "enqueued_at": timestamp(t.enqueued_at),
                "environment": t.environment,
                "label": t.label,
            }
            for t, position in view.queue
        ],
    }


def event_json(event: Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "at": timestamp(event.at),
        "kind": event.kind,
        "environment": event.environment,
        "lease": event.lease,
        "seq": event.seq,
        "fence": event.fence,
        "holder": event.holder,
        "actor": event.actor,
        "detail": event.detail,
    }


def problem(exc: CallMeError) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"https://call-me.dev/problems/{exc.code}",
        "title": exc.title,
        "status": exc.status,
        "detail": exc.detail,
        "code": exc.code,
    }
    if "field" in exc.extra:
        body["field"] = exc.extra["field"]
    if "holders" in exc.extra:
        body["holders"] = holders_json(exc.extra["holders"], exc.extra.get("envs", []))
    return JSONResponse(body, status_code=exc.status, media_type="application/problem+json")


def wants_text(request: Request) -> bool:
    """True when text/plain is the only or the first media type the client accepts."""
    first = request.headers.get("accept", "").split(",")[0]
    return first.split(";")[0].strip().lower() == "text/plain"


def _shell(value: object) -> str:
    return "'" + str(value).replace("'", "'\\''") + "'"


def _lines(pairs: list[tuple[str, object]]) -> str:
    return "".join(f"{key}={_shell(value)}\n" for key, value in pairs)


def granted_response(request: Request, granted: Granted) -> Response:
    lease, env, token = granted.lease, granted.environment, granted.token
    assert token is not None  # an acquire's grant carries its token
    headers = {"Location": f"/v1/leases/{lease.id}"}
    if wants_text(request):
        pairs: list[tuple[str, object]] = [
            ("CALL_ME_LEASE_ID", lease.id),
            ("CALL_ME_LEASE_TOKEN", token),
            ("CALL_ME_ENVIRONMENT", lease.environment),
            ("CALL_ME_FENCE", lease.fence),
            ("CALL_ME_EXPIRES_AT", timestamp(lease.expires_at)),
        ]
        pairs += [(property_variable(k), v) for k, v in sorted(env.properties.items())]
        return PlainTextResponse(_lines(pairs), status_code=201, headers=headers)
    body = lease_json(lease, env, token=token)
    body["queued_for"] = round(granted.queued_for, 3)
    return JSONResponse(body, status_code=201, headers=headers)


def queued_response(request: Request, queued: Queued) -> Response:
    if wants_text(request):
        pairs: list[tuple[str, object]] = [
            ("CALL_ME_TICKET", queued.ticket_id),
            ("CALL_ME_POSITION", queued.position),
        ]
        return PlainTextResponse(_lines(pairs), status_code=202)
    return JSONResponse(queued_json(queued), status_code=202)
