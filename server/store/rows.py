"""How records map to table rows, shared by every store so a column is named in one place."""

from __future__ import annotations

import json
from typing import Any

from ..model import Delivery, Environment, Event, Lease, Ticket, Webhook

LEASE_COLUMNS = (
    "id, environment, token, holder, metadata, fence, ttl, acquired_at, expires_at, touched_at, "
    "key_name, state, ended_at, ticket_id, seq, collect_by, group_id"
)
TICKET_COLUMNS = (
    "id, seq, key_name, environment, label, holder, ttl, priority, metadata, enqueued_at, seen_at, "
    "request_id, state, lease_id, ended_at, group_id, group_seq"
)
ENV_COLUMNS = (
    "name, slots, labels, description, properties, maintenance, note, auto, created_at, updated_at, "
    "held_too_long, waiting_too_long"
)
WEBHOOK_COLUMNS = "name, url, events, secret, format, declared, created_at, updated_at"
DELIVERY_COLUMNS = (
    "id, hook, event, environment, payload, created_at, state, attempts, next_at, claimed_until, last_status, "
    "last_error, delivered_at"
)
# The columns an INSERT of a delivery names (its id is the store's to give).
DELIVERY_INSERT_COLUMNS = "hook, event, environment, payload, created_at, state, attempts, next_at"
EVENT_COLUMNS = "id, at, kind, environment, lease, seq, fence, holder, actor, detail"
# The columns an INSERT of an event names (its id is the store's to give).
EVENT_INSERT_COLUMNS = "at, kind, environment, lease, seq, fence, holder, actor, detail"


def dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def env_from(row: Any) -> Environment:
    """An environment from a row (any mapping of column names: sqlite3.Row, a psycopg dict row)."""
    values = dict(row)
    return Environment(
        **{
            **values,
            "labels": tuple(json.loads(values["labels"])),
            "properties": json.loads(values["properties"]),
            "maintenance": bool(values["maintenance"]),
            "auto": bool(values["auto"]),
        }
    )


# A lease granted since schema 5 stores no token (secret.py). The column is NOT NULL since schema 1, which SQLite
# cannot drop without rebuilding the table, so an empty string stands for "none": no token is ever empty.
_NO_TOKEN = ""


def lease_from(row: Any) -> Lease:
    values = dict(row)
    token = values["token"] or None
    return Lease(**{**values, "token": token, "metadata": json.loads(values["metadata"])})


def ticket_from(row: Any) -> Ticket:
    values = dict(row)
    return Ticket(**{**values, "metadata": json.loads(values["metadata"])})


def event_from(row: Any) -> Event:
    return Event(**dict(row))


def env_values(env: Environment, *, flags: type = bool) -> tuple[Any, ...]:
    """The values of ENV_COLUMNS; `flags` is how the store keeps booleans (SQLite: int)."""
    return (
        env.name,
        env.slots,
        dump(list(env.labels)),
        env.description,
        dump(env.properties),
        flags(env.maintenance),
        env.note,
        flags(env.auto),
        env.created_at,
        env.updated_at,
        env.held_too_long,
        env.waiting_too_long,
    )


def lease_values(lease: Lease) -> tuple[Any, ...]:
    """The values of LEASE_COLUMNS."""
    return (
        lease.id,
        lease.environment,
        lease.token if lease.token is not None else _NO_TOKEN,
        lease.holder,
        dump(lease.metadata),
        lease.fence,
        lease.ttl,
        lease.acquired_at,
        lease.expires_at,
        lease.touched_at,
        lease.key_name,
        lease.state,
        lease.ended_at,
        lease.ticket_id,
        lease.seq,
        lease.collect_by,
        lease.group_id,
    )


def ticket_values(ticket: Ticket) -> tuple[Any, ...]:
    """The values of TICKET_COLUMNS."""
    return (
        ticket.id,
        ticket.seq,
        ticket.key_name,
        ticket.environment,
        ticket.label,
        ticket.holder,
        ticket.ttl,
        ticket.priority,
        dump(ticket.metadata),
        ticket.enqueued_at,
        ticket.seen_at,
        ticket.request_id,
        ticket.state,
        ticket.lease_id,
        ticket.ended_at,
        ticket.group_id,
        ticket.group_seq,
    )


def event_values(event: Event) -> tuple[Any, ...]:
    """The values of EVENT_INSERT_COLUMNS."""
    return (
        event.at,
        event.kind,
        event.environment,
        event.lease,
        event.seq,
        event.fence,
        event.holder,
        event.actor,
        event.detail,
    )


def webhook_from(row: Any) -> Webhook:
    values = dict(row)
    return Webhook(
        name=values["name"],
        url=values["url"],
        events=tuple(json.loads(values["events"])),
        sealed_secret=values["secret"],
        format=values["format"],
        declared=bool(values["declared"]),
        created_at=values["created_at"],
        updated_at=values["updated_at"],
    )


def webhook_values(hook: Webhook, *, flags: type = bool) -> tuple[Any, ...]:
    """The values of WEBHOOK_COLUMNS."""
    return (
        hook.name,
        hook.url,
        dump(list(hook.events)),
        hook.sealed_secret,
        hook.format,
        flags(hook.declared),
        hook.created_at,
        hook.updated_at,
    )


def delivery_from(row: Any) -> Delivery:
    return Delivery(**dict(row))
