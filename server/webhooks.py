"""Webhooks: what a hook is told, in which shape, and how it is signed.

A hook names a URL, the events it wants, a secret and a format. An operation that causes one of those events
leaves a `Notice` on its `Op`; the transaction core (service_core.py) writes one outbox row per hook that wants it
in the operation's own transaction, and the deliverer (delivery.py) posts it afterwards, retried until the
receiver answers 2xx or the attempts run out.

The body is JSON (`format = "json"`): the delivery's id, the event, when it happened and when this attempt was
sent (both signed with the body), the environment, and the lease or ticket with its holder and metadata. Or, with
`format = "slack"`, `{"text": ...}`: one line that both Slack's and Microsoft Teams' incoming webhooks show as it
is. Either way `X-Call-Me-Signature: sha256=<hex>` is the HMAC-SHA256 of the raw body with the hook's secret.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from . import validation
from .constants import (
    MAX_WEBHOOK_SECRET_LENGTH,
    MAX_WEBHOOK_URL_LENGTH,
    MIN_WEBHOOK_SECRET_LENGTH,
    WEBHOOK_EVENTS,
    WEBHOOK_FORMATS,
)
from .errors import Invalid
from .model import Delivery, Environment, JSONObject, Lease, Ticket

SIGNATURE_HEADER = "X-Call-Me-Signature"
TIMESTAMP_HEADER = "X-Call-Me-Timestamp"
EVENT_HEADER = "X-Call-Me-Event"
DELIVERY_HEADER = "X-Call-Me-Delivery"


@dataclass(frozen=True)
class WebhookChange:
    """A hook as an admin (PUT /v1/webhooks/{name}) or the configuration file declares it; the secret in clear,
    to be sealed before it is stored."""

    url: str
    events: tuple[str, ...]
    secret: str = field(repr=False)
    format: str = "json"


@dataclass(frozen=True)
class Notice:
    """An event a hook may want, left by an operation for the core to put in the outbox with its commit."""

    kind: str
    environment: str | None
    payload: JSONObject


_FIELDS = frozenset({"url", "events", "secret", "format"})
_HOOK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def hook_name(value: Any) -> str:
    """A webhook's name: 1 to 100 letters, digits, `.`, `_` or `-`, starting with a letter or digit."""
    if not isinstance(value, str) or not _HOOK_NAME.fullmatch(value):
        raise Invalid("name", "must be 1 to 100 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return value


def change(body: JSONObject) -> WebhookChange:
    """Check a hook's declaration; raises Invalid naming the field."""
    validation.reject_unknown(body, _FIELDS)
    if "url" not in body:
        raise Invalid("url", "is required: the http:// or https:// address to post to")
    if "events" not in body:
        raise Invalid("events", f"is required: a list of some of {', '.join(WEBHOOK_EVENTS)}")
    if "secret" not in body:
        raise Invalid("secret", f"is required: at least {MIN_WEBHOOK_SECRET_LENGTH} characters to sign with")
    events = body["events"]
    if not isinstance(events, list) or not events:
        raise Invalid("events", f"must be a non-empty list of some of {', '.join(WEBHOOK_EVENTS)}")
    for event in events:
        if event not in WEBHOOK_EVENTS:
            raise Invalid("events", f"{str(event)[:60]!r} is not an event; use some of {', '.join(WEBHOOK_EVENTS)}")
    if len(set(events)) != len(events):
        raise Invalid("events", "lists an event twice")
    fmt = body.get("format", "json")
    if fmt not in WEBHOOK_FORMATS:
        raise Invalid("format", f"must be one of {', '.join(WEBHOOK_FORMATS)}, got {str(fmt)[:40]!r}")
    return WebhookChange(
        url=url(body["url"]),
        events=tuple(sorted(events)),
        secret=validation.text(
            "secret", body["secret"], MAX_WEBHOOK_SECRET_LENGTH, min_length=MIN_WEBHOOK_SECRET_LENGTH
        ),
        format=fmt,
    )


def url(value: Any) -> str:
    """An http or https URL with a host; anything else is refused with what was wrong."""
    text = validation.text("url", value, MAX_WEBHOOK_URL_LENGTH, min_length=1)
    if any(c.isspace() or ord(c) < 32 for c in text):
        raise Invalid("url", "must not contain spaces or control characters")
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        raise Invalid("url", f"is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        # Not the URL itself in the message: a chat's webhook URL is a secret of its own.
        got = f", not {parts.scheme}:" if parts.scheme.isalnum() and len(parts.scheme) <= 10 else ""
        raise Invalid("url", f"must start with http:// or https://{got}")
    if not parts.hostname:
        raise Invalid("url", "must name a host, e.g. https://hooks.example.com/call-me")
    if parts.username is not None or parts.password is not None:
        raise Invalid("url", "must not carry a user or password; the secret signs every delivery")
    try:
        # What the deliverer will send to, parsed as httpx parses it: a host that is no valid IDNA name (a bad
        # A-label, a zero-width space) is refused here, not found out at every attempt for ever.
        httpx.URL(text).host  # noqa: B018 - decoding the host is what raises, as building the request would
    except (httpx.InvalidURL, ValueError):
        raise Invalid("url", "has a host name that cannot be sent to (not a valid internationalised name)") from None
    return text


# -- what a notice says ------------------------------------------------------------------------------------


def _at(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def lease_notice(kind: str, lease: Lease, now: float, *, actor: str | None = None, detail: str | None = None) -> Notice:
    return Notice(
        kind,
        lease.environment,
        {
            "event": kind,
            "at": _at(now),
            "environment": lease.environment,
            "holder": lease.holder,
            "metadata": lease.metadata,
            "lease": {
                "id": lease.id,
                "holder": lease.holder,
                "fence": lease.fence,
                "acquired_at": _at(lease.acquired_at),
                "expires_at": _at(lease.expires_at),
                "held_for": round(now - lease.acquired_at, 3),
                "metadata": lease.metadata,
            },
            "actor": actor,
            "detail": detail,
        },
    )


def ticket_notice(kind: str, ticket: Ticket, now: float, *, detail: str | None = None) -> Notice:
    return Notice(
        kind,
        ticket.environment,
        {
            "event": kind,
            "at": _at(now),
            "environment": ticket.environment,
            "label": ticket.label,
            "holder": ticket.holder,
            "metadata": ticket.metadata,
            "ticket": {
                "seq": ticket.seq,
                "holder": ticket.holder,
                "priority": ticket.priority,
                "enqueued_at": _at(ticket.enqueued_at),
                "waited": round(now - ticket.enqueued_at, 3),
                "metadata": ticket.metadata,
            },
            "detail": detail,
        },
    )


def maintenance_notice(env: Environment, now: float, actor: str) -> Notice:
    return Notice(
        "environment.maintenance",
        env.name,
        {
            "event": "environment.maintenance",
            "at": _at(now),
            "environment": env.name,
            "maintenance": env.maintenance,
            "note": env.note,
            "actor": actor,
        },
    )


# -- what is sent ------------------------------------------------------------------------------------------


def body(delivery: Delivery, fmt: str, sent_at: float) -> bytes:
    """The bytes of one attempt: the notice's payload with the delivery's id and the attempt's time, or the
    Slack/Teams message that tells the same."""
    payload: JSONObject = json.loads(delivery.payload)
    if fmt == "slack":
        return json.dumps({"text": chat_escape(text(payload))}, separators=(",", ":"), ensure_ascii=False).encode()
    full = {"id": f"d_{delivery.id}", **payload, "sent_at": int(sent_at)}
    return json.dumps(full, separators=(",", ":"), ensure_ascii=False).encode()


def chat_escape(line: str) -> str:
    """Slack reads `<...>` as a link or a mention (`<!channel>` pings everyone) and wants `&`, `<` and `>` escaped
    as HTML entities: a holder's name, which any client chooses, must stay plain text."""
    return line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def signature(secret: str, raw: bytes) -> str:
    """The X-Call-Me-Signature of a body: `sha256=` and the hex HMAC-SHA256 of the raw bytes with the secret."""
    return "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


def headers(delivery: Delivery, secret: str, raw: bytes, sent_at: float) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": "call-me-webhook/1",
        SIGNATURE_HEADER: signature(secret, raw),
        TIMESTAMP_HEADER: str(int(sent_at)),
        EVENT_HEADER: delivery.event,
        DELIVERY_HEADER: f"d_{delivery.id}",
    }


def _run(metadata: Any) -> str:
    if isinstance(metadata, dict):
        for key in ("run_url", "url", "pipeline_url", "job_url"):
            value = metadata.get(key)
            if isinstance(value, str) and value.startswith(("http://", "https://")):
                return f" — {value}"
    return ""


def _duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes < 1:
        return f"{seconds:.0f} s"
    if minutes < 120:
        return f"{minutes} min"
    return f"{minutes / 60:.1f} h"


def text(payload: JSONObject) -> str:
    """The one line a chat shows: what happened, to what, by whom, and the run's link when its metadata has one."""
    kind, env = payload.get("event"), payload.get("environment")
    where = f'"{env}"' if env is not None else f'label "{payload.get("label")}"'
    holder = payload.get("holder")
    run = _run(payload.get("metadata"))
    lease = payload.get("lease") or {}
    ticket = payload.get("ticket") or {}
    if kind == "lease.held_too_long":
        line = f"{where} has been held by {holder} for {_duration(lease.get('held_for', 0))}; is it stuck?"
    elif kind == "queue.waiting_too_long":
        line = f"{holder} has been waiting for {where} for {_duration(ticket.get('waited', 0))}"
    elif kind == "lease.forced":
        line = f"the lease of {holder} on {where} was forcibly ended by {payload.get('actor')}"
    elif kind == "lease.expired":
        line = f"the lease of {holder} on {where} expired: its holder stopped renewing it (the job died?)"
    elif kind == "environment.maintenance":
        state = "is now in maintenance" if payload.get("maintenance") else "is out of maintenance"
        note = f" ({payload['note']})" if payload.get("note") else ""
        line = f"{where} {state}{note}, by {payload.get('actor')}"
    else:
        line = f"{kind} on {where}"
    return f"call-me: {line}{run}"
