"""The OpenAPI 3.1 document of the routes that exist (API.md), built from the limits of constants.py.

The document is static: per-deployment settings (max_ttl, max_wait) are shown with their defaults.
"""

from __future__ import annotations

from typing import Any

from .constants import (
    DEFAULT_DELIVERY_LOG,
    DEFAULT_HISTORY_LIMIT,
    DEFAULT_MAX_TTL,
    DEFAULT_MAX_WAIT,
    MAX_BODY_BYTES,
    MAX_DELIVERY_LOG,
    MAX_DESCRIPTION_LENGTH,
    MAX_HISTORY_LIMIT,
    MAX_HOLDER_LENGTH,
    MAX_LABELS,
    MAX_METADATA_BYTES,
    MAX_NAME_LENGTH,
    MAX_NOTE_LENGTH,
    MAX_PARTS,
    MAX_PRIORITY,
    MAX_PROPERTIES,
    MAX_PROPERTY_VALUE_LENGTH,
    MAX_REQUEST_ID_LENGTH,
    MAX_SLOTS,
    MAX_WEBHOOK_SECRET_LENGTH,
    MAX_WEBHOOK_URL_LENGTH,
    MIN_ALERT_THRESHOLD,
    MIN_PARTS,
    MIN_PRIORITY,
    MIN_WEBHOOK_SECRET_LENGTH,
    NAME_CONTROL_CHARACTERS,
    WEBHOOK_EVENTS,
    WEBHOOK_FORMATS,
)

Schema = dict[str, Any]

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_CODES = (
    "unauthorized", "forbidden", "wrong_token", "not_found", "busy", "maintenance", "conflict",
    "ticket_gone", "lease_gone", "too_large", "invalid", "unavailable",
)  # fmt: skip
EVENT_KINDS = (
    "acquired", "released", "expired", "revoked", "queued", "abandoned", "left",
    "environment_changed", "environment_deleted",
)  # fmt: skip

_ERRORS = {
    400: "the body is not JSON (`invalid`)",
    401: "missing or unknown key (`unauthorized`)",
    403: "the key's role does not allow this (`forbidden`), or the lease token is wrong (`wrong_token`)",
    404: "not found (`not_found`)",
    409: "not granted and `queue` was false (`busy`, with `holders`, or `maintenance`), or `conflict`",
    410: "the ticket (`ticket_gone`) or the lease (`lease_gone`) has ended",
    413: f"the body is over {MAX_BODY_BYTES // 1024} KiB (`too_large`)",
    422: "the request breaks a rule; `field` names the field (`invalid`)",
    503: "the store cannot be reached (`unavailable`)",
}


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _or_null(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def _object(properties: dict[str, Schema], required: tuple[str, ...] | None = None, **extra: Any) -> Schema:
    """A closed object; every property is required unless `required` says otherwise."""
    names = list(properties) if required is None else list(required)
    return {"type": "object", "properties": properties, "required": names, "additionalProperties": False, **extra}


def _typed(kind: str, **keywords: Any) -> Schema:
    return {"type": kind, **{k: v for k, v in keywords.items() if v is not None}}


def _string(low: int | None = None, high: int | None = None, **extra: Any) -> Schema:
    return _typed("string", minLength=low, maxLength=high, **extra)


def _integer(low: int | None = None, high: int | None = None, **extra: Any) -> Schema:
    return _typed("integer", minimum=low, maximum=high, **extra)


_TIME: Schema = {"type": "string", "format": "date-time", "description": "RFC 3339, UTC"}
_NAME: Schema = _ref("Name")
_STRING_MAP: Schema = {"type": "object", "additionalProperties": {"type": "string"}}


def _bare(description: str) -> Schema:
    return {"description": description}


def _json(description: str, schema: Schema, **extra: Any) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}, **extra}


def _errors(*statuses: int) -> dict[str, Schema]:
    problem = {PROBLEM_MEDIA_TYPE: {"schema": _ref("Problem")}}
    return {str(s): {"description": _ERRORS[s], "content": problem} for s in statuses}


def _parameter(name: str, where: str, schema: Schema, description: str, *, required: bool = False) -> Schema:
    required = required or where == "path"
    return {"name": name, "in": where, "required": required, "schema": schema, "description": description}


def _body(schema: Schema, *, required: bool = True) -> Schema:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _op(op_id: str, summary: str, responses: dict[str, Schema], *, role: str | None = "read", **extra: Any) -> Schema:
    operation: Schema = {"operationId": op_id, "summary": summary, "responses": responses, **extra}
    if role is None:
        operation["security"] = []
    else:
        operation["description"] = f"Needs a key with the role `{role}` or above."
    return operation


def _param_ref(name: str) -> Schema:
    return {"$ref": f"#/components/parameters/{name}"}


_HOOK_NAME: Schema = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"}


def _threshold(event: str, what: str) -> Schema:
    return {
        "type": "number",
        "minimum": MIN_ALERT_THRESHOLD,
        "description": f"seconds {what} before webhooks hear `{event}`; null: the server's default",
    }


def _schemas() -> dict[str, Schema]:
    lease_fields: dict[str, Schema] = {
        "id": _string(1),
        "environment": _NAME,
        "holder": _string(1, MAX_HOLDER_LENGTH),
        "metadata": {"type": "object"},
        "fence": _integer(1, description="grows with every grant; a deploy tool can refuse a stale holder"),
        "acquired_at": _TIME,
        "expires_at": _TIME,
        "ttl": _integer(1),
        "state": {"enum": ["active", "released", "expired", "revoked"]},
        "ended_at": _or_null(_TIME),
        "seq": _or_null(_integer(1)),
        "properties": _STRING_MAP,
        "group": _or_null(_string(1, description="the group it was granted with (`all`), renewed and released by")),
        "token": _string(1, description="the secret of the lease; only in the 201 answer to its acquirer"),
        "queued_for": {
            "type": "number",
            "minimum": 0,
            "description": "only in a 201: seconds its request waited in the queue, server-measured (0: at once)",
        },
    }
    lease = _object(lease_fields, required=tuple(f for f in lease_fields if f not in ("token", "queued_for")))
    queue_entry = _object(
        {
            "seq": _integer(1),
            "position": _integer(1),
            "holder": _string(1),
            "priority": _integer(MIN_PRIORITY, MAX_PRIORITY),
            "enqueued_at": _TIME,
            "environment": _or_null(_NAME),
            "label": _or_null(_NAME),
        }
    )
    properties: Schema = {
        "type": "object",
        "maxProperties": MAX_PROPERTIES,
        "propertyNames": _string(1, 100),
        "additionalProperties": _string(0, MAX_PROPERTY_VALUE_LENGTH),
        "description": "names that would become the same CALL_ME_PROPERTY_<NAME> (a-b, a_b) are refused",
    }
    return {
        "Name": _string(
            1,
            MAX_NAME_LENGTH,
            pattern=f"^[^{NAME_CONTROL_CHARACTERS}\\ufffd]*$",
            description="an environment name or a label: any characters but control characters, compared exactly; "
            "percent-encoded in a path (`/` as %2F, a name `.` or `..` as %2E or %2E%2E)",
        ),
        "Lease": lease,
        "PublicLease": {"allOf": [_ref("Lease"), {"not": {"required": ["token"]}}]},
        "GrantedLease": {"allOf": [_ref("Lease"), {"required": ["token", "queued_for"]}]},
        "Queued": _object(
            {
                "ticket": _string(1, description="secret; come back with it in `ticket`"),
                "seq": _integer(1),
                "position": _integer(1, description="1 = next"),
                "environment": _or_null(_NAME),
                "label": _or_null(_NAME),
                "waited": {"type": "number", "minimum": 0},
                "holders": {"type": "array", "items": _ref("PublicLease")},
                "maintenance": {
                    "type": "array",
                    "description": "the environments this request could use that are in maintenance (grant nothing)",
                    "items": _object({"environment": _NAME, "note": _or_null(_string())}),
                },
                "group": _string(1, description="a request of several parts (`all`): the group's id"),
                "all": {"type": "array", "items": _ref("Part"), "description": "a group's parts"},
            },
            required=("ticket", "seq", "position", "environment", "label", "waited", "holders", "maintenance"),
        ),
        "Part": _object(
            {"environment": _NAME, "label": _NAME},
            required=(),
            oneOf=[{"required": ["environment"]}, {"required": ["label"]}],
        ),
        "Group": _object(
            {
                "group": _string(1, description="renew and release every lease of the group by it"),
                "token": _string(1, description="the group's secret; only in the 201 answer to its acquirer"),
                "leases": {"type": "array", "items": _ref("Lease"), "description": "one per part, in their order"},
            },
            required=("group", "leases"),
        ),
        "QueueEntry": queue_entry,
        "Environment": _object(
            {
                "name": _NAME,
                "slots": _integer(1, MAX_SLOTS),
                "labels": {"type": "array", "items": _NAME, "uniqueItems": True},
                "description": _string(),
                "properties": _STRING_MAP,
                "maintenance": {"type": "boolean"},
                "note": _or_null(_string()),
                "auto": {"type": "boolean"},
                "held_too_long": _or_null({"type": "number"}),
                "waiting_too_long": _or_null({"type": "number"}),
                "free": _integer(0),
                "leases": {"type": "array", "items": _ref("PublicLease")},
                "queue": {"type": "array", "items": _ref("QueueEntry")},
            }
        ),
        "EnvironmentChange": _object(
            {
                "slots": _integer(1, MAX_SLOTS),
                "labels": {"type": "array", "items": _NAME, "maxItems": MAX_LABELS, "uniqueItems": True},
                "description": _string(0, MAX_DESCRIPTION_LENGTH),
                "properties": properties,
                "maintenance": {"type": "boolean"},
                "note": _or_null(_string(0, MAX_NOTE_LENGTH)),
                "held_too_long": _or_null(_threshold("lease.held_too_long", "a lease held")),
                "waiting_too_long": _or_null(_threshold("queue.waiting_too_long", "a ticket waiting")),
            },
            required=(),
        ),
        "Webhook": _object(
            {
                "name": _HOOK_NAME,
                "url": _string(1, MAX_WEBHOOK_URL_LENGTH),
                "events": {"type": "array", "items": {"enum": list(WEBHOOK_EVENTS)}},
                "format": {"enum": list(WEBHOOK_FORMATS)},
                "secret": {"enum": ["set", "unreadable"], "description": "never the secret itself"},
                "declared_by": {"enum": ["config", "api"]},
                "created_at": _TIME,
                "updated_at": _TIME,
            }
        ),
        "WebhookChange": _object(
            {
                "url": _string(1, MAX_WEBHOOK_URL_LENGTH, description="http:// or https:// only"),
                "events": {
                    "type": "array",
                    "items": {"enum": list(WEBHOOK_EVENTS)},
                    "minItems": 1,
                    "uniqueItems": True,
                },
                "secret": _string(MIN_WEBHOOK_SECRET_LENGTH, MAX_WEBHOOK_SECRET_LENGTH),
                "format": {"enum": list(WEBHOOK_FORMATS), "default": "json"},
            },
            required=("url", "events", "secret"),
        ),
        "Delivery": _object(
            {
                "id": _string(1),
                "event": {"enum": list(WEBHOOK_EVENTS)},
                "environment": _or_null(_NAME),
                "created_at": _TIME,
                "state": {"enum": ["pending", "delivered", "failed"]},
                "attempts": _integer(0),
                "last_status": _or_null(_integer()),
                "last_error": _or_null(_string()),
                "next_attempt_at": _or_null(_TIME),
                "delivered_at": _or_null(_TIME),
            }
        ),
        "AcquireRequest": _object(
            {
                "environment": _NAME,
                "label": _NAME,
                "holder": _string(1, MAX_HOLDER_LENGTH, description="default: the key's name"),
                "ttl": _integer(1, DEFAULT_MAX_TTL, description="seconds; 1..max_ttl (86400 unless configured)"),
                "wait": {"type": "number", "minimum": 0, "description": f"seconds; held at most {DEFAULT_MAX_WAIT:g}"},
                "queue": {"type": "boolean", "default": True, "description": "false with wait > 0 is 422"},
                "ticket": _string(1, 200),
                "priority": _integer(
                    MIN_PRIORITY, MAX_PRIORITY, default=0, description="at most the key's max_priority"
                ),
                "metadata": {"type": "object", "description": f"at most {MAX_METADATA_BYTES} bytes once encoded"},
                "request_id": _string(1, MAX_REQUEST_ID_LENGTH),
                "all": {
                    "type": "array",
                    "items": _ref("Part"),
                    "minItems": MIN_PARTS,
                    "maxItems": MAX_PARTS,
                    "description": "several environments at once: one grant of every part, or a place in the queue",
                },
            },
            required=(),
            oneOf=[{"required": ["environment"]}, {"required": ["label"]}, {"required": ["all"]}],
        ),
        "RenewRequest": _object(
            {"ttl": _integer(1, DEFAULT_MAX_TTL), "token": _string(0, 200, description="or X-Lease-Token")}, required=()
        ),
        "Event": _object(
            {
                "id": _integer(1),
                "at": _TIME,
                "kind": {"enum": list(EVENT_KINDS)},
                "environment": _or_null(_NAME),
                "lease": _or_null(_string()),
                "seq": _or_null(_integer(1)),
                "fence": _or_null(_integer(1)),
                "holder": _or_null(_string()),
                "actor": _or_null(_string()),
                "detail": _or_null(_string()),
            }
        ),
        "Problem": _object(
            {
                "type": {"type": "string", "format": "uri"},
                "title": _string(1),
                "status": _integer(400, 599),
                "detail": _string(),
                "code": {"enum": list(PROBLEM_CODES)},
                "field": _string(description='the field a 422 is about, as sent (an unknown key may be "")'),
                "holders": {"type": "array", "items": _ref("PublicLease"), "description": "with `busy`"},
            },
            required=("type", "title", "status", "detail", "code"),
        ),
        "Status": _object(
            {"status": {"enum": ["ok", "unavailable"]}, "reason": _string(description="why not ready (503 only)")},
            required=("status",),
        ),
    }


def _text(description: str, example: str) -> Schema:
    return {"schema": {"type": "string", "description": description}, "example": example}


def _v1_paths() -> dict[str, Schema]:
    public_lease = _json("the lease, never its token", _ref("PublicLease"))
    environment = _json("the environment", _ref("Environment"))
    lease, ticket, name = _param_ref("LeaseId"), _param_ref("TicketId"), _param_ref("EnvironmentName")
    hook, webhook = _param_ref("WebhookName"), _json("the webhook", _ref("Webhook"))
    group = _param_ref("GroupId")
    return {
        "/v1/leases": {
            "post": _op(
                "acquireLease",
                "Acquire a slot of an environment (or of any environment with a label), or join the queue",
                {
                    "201": {
                        "description": "granted; the lease with its token (for `all`: the group, every lease with "
                        "its token, and the group's token)",
                        "headers": {
                            "Location": {
                                "schema": {"type": "string"},
                                "description": "/v1/leases/{id}, or /v1/groups/{id} for `all`",
                            }
                        },
                        "content": {
                            "application/json": {"schema": {"oneOf": [_ref("GrantedLease"), _ref("Group")]}},
                            "text/plain": _text(
                                "KEY='value' lines for a POSIX shell, when Accept starts with text/plain",
                                "CALL_ME_LEASE_ID='l_1'\nCALL_ME_LEASE_TOKEN='s3cret'\nCALL_ME_ENVIRONMENT='uat'\n"
                                "CALL_ME_FENCE='7'\nCALL_ME_EXPIRES_AT='2025-01-01T12:00:00.000Z'\n",
                            ),
                        },
                    },
                    "202": {
                        "description": "not granted yet; queued (come back with `ticket`)",
                        "content": {
                            "application/json": {"schema": _ref("Queued")},
                            "text/plain": _text("KEY='value' lines", "CALL_ME_TICKET='t_1'\nCALL_ME_POSITION='1'\n"),
                        },
                    },
                    **_errors(400, 401, 403, 404, 409, 410, 413, 422, 503),
                },
                role="client",
                requestBody=_body(_ref("AcquireRequest")),
            ),
        },
        "/v1/leases/{lease}": {
            "parameters": [lease],
            "get": _op("getLease", "A lease, also once ended", {"200": public_lease, **_errors(401, 404, 503)}),
            "delete": _op(
                "releaseLease",
                "Release a lease with its token (204 again when already released), or force it (admin)",
                {"204": _bare("released"), **_errors(401, 403, 404, 410, 422, 503)},
                role="client",
                parameters=[_param_ref("LeaseToken"), _param_ref("Force")],
            ),
        },
        "/v1/leases/{lease}/renew": {
            "parameters": [lease],
            "post": _op(
                "renewLease",
                "Extend a live lease to now + ttl",
                {"200": public_lease, **_errors(400, 401, 403, 404, 410, 413, 422, 503)},
                role="client",
                parameters=[_param_ref("LeaseToken")],
                requestBody=_body(_ref("RenewRequest"), required=False),
            ),
        },
        "/v1/groups/{group}": {
            "parameters": [group],
            "get": _op(
                "getGroup",
                "The leases of a group granted at once (`all`), also once ended",
                {"200": _json("the group, never a token", _ref("Group")), **_errors(401, 404, 503)},
            ),
            "delete": _op(
                "releaseGroup",
                "Release every lease of a group with the group's token, or force it (admin)",
                {"204": _bare("released"), **_errors(401, 403, 404, 410, 422, 503)},
                role="client",
                parameters=[_param_ref("LeaseToken"), _param_ref("Force")],
            ),
        },
        "/v1/groups/{group}/renew": {
            "parameters": [group],
            "post": _op(
                "renewGroup",
                "Extend every lease of a group to now + ttl, or none when one has ended (410)",
                {
                    "200": _json("the group, never a token", _ref("Group")),
                    **_errors(400, 401, 403, 404, 410, 413, 422, 503),
                },
                role="client",
                parameters=[_param_ref("LeaseToken")],
                requestBody=_body(_ref("RenewRequest"), required=False),
            ),
        },
        "/v1/tickets/{ticket}": {
            "parameters": [ticket],
            "delete": _op(
                "leaveQueue",
                "Leave the queue, releasing a lease granted to the ticket meanwhile",
                {"204": _bare("left, or already gone"), **_errors(401, 403, 503)},
                role="client",
            ),
        },
        "/v1/environments": {
            "get": _op(
                "listEnvironments",
                "Every environment, in name order",
                {
                    "200": _json(
                        "the environments",
                        _object({"environments": {"type": "array", "items": _ref("Environment")}}),
                    ),
                    **_errors(401, 503),
                },
            ),
        },
        "/v1/environments/{name}": {
            "parameters": [name],
            "get": _op("getEnvironment", "One environment", {"200": environment, **_errors(401, 404, 422, 503)}),
            "put": _op(
                "putEnvironment",
                "Create or change an environment; it is no longer `auto`",
                {
                    "200": environment,
                    "201": _json("created", _ref("Environment")),
                    **_errors(400, 401, 403, 413, 422, 503),
                },
                role="admin",
                requestBody=_body(_ref("EnvironmentChange")),
            ),
            "delete": _op(
                "deleteEnvironment",
                "Delete an environment; with force, revoke its leases and drop its waiters",
                {"204": _bare("deleted"), **_errors(401, 403, 404, 409, 422, 503)},
                role="admin",
                parameters=[_param_ref("Force")],
            ),
        },
        "/v1/webhooks": {
            "get": _op(
                "listWebhooks",
                "Every webhook, in name order (never their secrets)",
                {
                    "200": _json("the webhooks", _object({"webhooks": {"type": "array", "items": _ref("Webhook")}})),
                    **_errors(401, 403, 503),
                },
                role="admin",
            ),
        },
        "/v1/webhooks/{name}": {
            "parameters": [hook],
            "get": _op("getWebhook", "One webhook", {"200": webhook, **_errors(401, 403, 404, 422, 503)}, role="admin"),
            "put": _op(
                "putWebhook",
                "Create or change a webhook (the file's hooks are set again at start-up)",
                {
                    "200": webhook,
                    "201": _json("created", _ref("Webhook")),
                    **_errors(400, 401, 403, 409, 413, 422, 503),
                },
                role="admin",
                requestBody=_body(_ref("WebhookChange")),
            ),
            "delete": _op(
                "deleteWebhook",
                "Delete a webhook with its pending deliveries and its log",
                {"204": _bare("deleted"), **_errors(401, 403, 404, 422, 503)},
                role="admin",
            ),
        },
        "/v1/webhooks/{name}/deliveries": {
            "parameters": [hook],
            "get": _op(
                "getWebhookDeliveries",
                "The webhook's delivery log, newest first",
                {
                    "200": _json(
                        "the deliveries",
                        _object({"webhook": _HOOK_NAME, "deliveries": {"type": "array", "items": _ref("Delivery")}}),
                    ),
                    **_errors(401, 403, 404, 422, 503),
                },
                role="admin",
                parameters=[
                    _parameter(
                        "limit", "query", _integer(1, MAX_DELIVERY_LOG, default=DEFAULT_DELIVERY_LOG), "at most"
                    ),
                ],
            ),
        },
        "/v1/history": {
            "get": _op(
                "getHistory",
                "The audit log, newest first",
                {
                    "200": _json("the events", _object({"events": {"type": "array", "items": _ref("Event")}})),
                    **_errors(401, 422, 503),
                },
                parameters=[
                    _parameter("environment", "query", _NAME, "only the events of this environment"),
                    _parameter(
                        "limit", "query", _integer(1, MAX_HISTORY_LIMIT, default=DEFAULT_HISTORY_LIMIT), "at most"
                    ),
                ],
            ),
        },
    }


def _maybe(op_id: str, summary: str, role: str, answers: dict[int, str]) -> Schema:
    bodiless = {**answers, 400: "missing or invalid environment", 401: "missing or wrong key, or no role for it"}
    bodiless[503] = "the store cannot be reached"
    responses = {str(s): _bare(d) for s, d in sorted(bodiless.items())}
    return _op(op_id, summary + " (the original call-me route; bodies are empty)", responses, role=role)


def _other_paths() -> dict[str, Schema]:
    status = _ref("Status")
    return {
        "/healthz": {"get": _op("healthz", "The process runs", {"200": _json("ok", status)}, role=None)},
        "/readyz": {
            "get": _op(
                "readyz",
                "The store answers and accepts writes",
                {"200": _json("ready", status), "503": _json("not ready, with the reason", status)},
                role=None,
            )
        },
        "/openapi.json": {
            "get": _op("openapi", "This document", {"200": _json("OpenAPI 3.1", {"type": "object"}), **_errors(401)})
        },
        "/maybe": {
            "parameters": [_parameter("environment", "query", _NAME, "the environment", required=True)],
            "get": _maybe("maybeCheck", "Would a POST get its slot now?", "read", {200: "yes", 403: "no"}),
            "post": _maybe(
                "maybeAcquire",
                "Take a free slot; never queues",
                "client",
                {201: "held", 403: "no free slot, or in maintenance", 404: "unknown and auto-create is off"},
            ),
            "delete": _maybe(
                "maybeRelease",
                "Release the oldest live lease taken with this key",
                "client",
                {204: "released, or none"},
            ),
        },
    }


def _html(description: str) -> Schema:
    return {"description": description, "content": {"text/html": {"schema": {"type": "string"}}}}


def _page_errors(*statuses: int) -> dict[str, Schema]:
    # The dashboard answers a browser: its errors are HTML pages that say what went wrong, never JSON.
    return {str(s): _bare(f"{_ERRORS[s].split(' (')[0]}; an HTML page says so") for s in statuses}


def _form(*fields: str, required: tuple[str, ...] = ("csrf",)) -> Schema:
    schema = _object({f: {"type": "string"} for f in fields}, required=required)
    return {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": schema}}}


def _live_paths() -> dict[str, Schema]:
    """The event stream, the metrics, and the dashboard (HTML for browsers; the session cookie is enough)."""
    session: list[Schema] = [{"ApiKey": []}, {"Bearer": []}, {"Session": []}]
    see_other = {"303": _bare("done; see the dashboard (Location)")}
    admin_form = {**see_other, **_page_errors(401, 403, 404, 409, 413, 422, 503)}
    return {
        "/v1/events": {
            "get": _op(
                "streamEvents",
                "The audit events as server-sent events (`id:` the event id, `event:` its kind, `data:` an Event)",
                {
                    "200": {
                        "description": "an endless stream; resume with Last-Event-ID; comment lines as heartbeats",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **_errors(401, 403, 422, 503),
                },
                security=session,
                parameters=[
                    _parameter("Last-Event-ID", "header", _string(1, 18), "send every event after this id first")
                ],
            )
        },
        "/metrics": {
            "get": _op(
                "metrics",
                "Prometheus metrics (text exposition format)",
                {
                    "200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}},
                    **_errors(401, 403, 503),
                },
            )
        },
        "/": {
            "get": _op(
                "dashboard",
                "The dashboard (redirects to /signin without a key or session)",
                {"200": _html("the dashboard"), "303": _bare("sign in first"), **_page_errors(503)},
                security=session,
            )
        },
        "/ui/live": {
            "get": _op(
                "dashboardLive",
                "The dashboard's live part alone",
                {"200": _html("an HTML fragment"), **_errors(401, 503)},
                security=session,
            )
        },
        "/ui/history": {
            "get": _op(
                "dashboardHistory",
                "The history page, filterable by environment",
                {"200": _html("the history"), "303": _bare("sign in first"), **_page_errors(422, 503)},
                security=session,
                parameters=[
                    _parameter("environment", "query", _NAME, "only the events of this environment"),
                    _parameter("limit", "query", _integer(1, MAX_HISTORY_LIMIT), "at most"),
                    _parameter("fragment", "query", {"enum": ["1"]}, "the table alone"),
                ],
            )
        },
        "/ui/webhooks": {
            "get": _op(
                "dashboardWebhooks",
                "The webhooks and their recent deliveries (admin)",
                {"200": _html("the webhooks"), "303": _bare("sign in first"), **_page_errors(403, 503)},
                security=session,
            )
        },
        "/ui/static/{file}": {
            "parameters": [_parameter("file", "path", {"enum": ["dashboard.js", "dashboard.css"]}, "the file")],
            "get": _op(
                "dashboardStatic",
                "The dashboard's script and style sheet",
                {"200": _bare("the file"), **_errors(404)},
                role=None,
            ),
        },
        "/signin": {
            "get": _op("signinPage", "The sign-in page", {"200": _html("the form")}, role=None),
            "post": _op(
                "signin",
                "Turn a key into a session cookie (HttpOnly, SameSite=Strict; Secure and __Host- prefixed over https)",
                {"303": _bare("signed in; to the dashboard"), **_page_errors(401, 403, 413)},
                role=None,
                requestBody=_form("csrf", "key"),
            ),
        },
        "/signout": {
            "post": _op(
                "signout",
                "End the session",
                {"303": _bare("signed out"), **_page_errors(403, 413)},
                security=session,
                requestBody=_form("csrf"),
            )
        },
        "/ui/leases/{lease}/release": {
            "parameters": [_param_ref("LeaseId")],
            "post": _op(
                "dashboardForceRelease",
                "Force-release a lease",
                admin_form,
                role="admin",
                security=session,
                requestBody=_form("csrf"),
            ),
        },
        # The environment is a form field: a browser would turn a path ending in `..` (even %2E%2E) into another.
        "/ui/environment": {
            "post": _op(
                "dashboardChangeEnvironment",
                "Maintenance on or off with a note, or slots and labels (one a line)",
                admin_form,
                role="admin",
                security=session,
                requestBody=_form(
                    "csrf", "environment", "maintenance", "note", "slots", "labels", required=("csrf", "environment")
                ),
            ),
        },
        "/ui/environment/hold": {
            "post": _op(
                "dashboardHold",
                "Hold the environment for a person (an ordinary lease, granted at once or not)",
                admin_form,
                role="admin",
                security=session,
                requestBody=_form(
                    "csrf", "environment", "holder", "minutes", "reason", required=("csrf", "environment")
                ),
            ),
        },
    }


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document served at /openapi.json."""
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {
            "title": "call-me",
            "version": "1",
            "description": "A lock server for shared test environments: fair queues, leases that expire, fencing.",
        },
        "security": [{"ApiKey": []}, {"Bearer": []}],
        "paths": {**_other_paths(), **_v1_paths(), **_live_paths()},
        "components": {
            "schemas": _schemas(),
            "parameters": {
                "LeaseId": _parameter("lease", "path", _string(1), "the lease id"),
                "TicketId": _parameter("ticket", "path", _string(1), "the ticket id (secret)"),
                "GroupId": _parameter("group", "path", _string(1), "the id of a group of leases"),
                "EnvironmentName": _parameter("name", "path", _NAME, "the environment"),
                "WebhookName": _parameter("name", "path", _HOOK_NAME, "the webhook"),
                "LeaseToken": _parameter("X-Lease-Token", "header", _string(1), "the lease's token"),
                "Force": _parameter(
                    "force",
                    "query",
                    {"enum": ["true", "false", "1", "0"], "default": "false"},
                    "admin only: act without the token (the lease ends revoked) or despite live leases",
                ),
            },
            "securitySchemes": {
                "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-KEY"},
                "Bearer": {"type": "http", "scheme": "bearer"},
                "Session": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "callme_session",
                    "description": "named __Host-callme_session over https",
                },
            },
        },
    }
