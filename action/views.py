"""What the CLI and the Action print about environments, queues, leases, history and errors."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from .errors import APIError, CallMeError, NotGranted, WaitTimeout
from .format import clock_time, rfc3339, table
from .models import Environment, Event, Lease, Waiting

_MAX_HOLDERS_SHOWN = 3


def holders_text(holders: Sequence[Lease]) -> str:
    """`held by ci since 14:02:05 UTC until 20:02:05 UTC, bob since ...`, or "" when none."""
    if not holders:
        return ""
    shown = [
        f"{lease.holder or lease.id} since {clock_time(lease.acquired_at)} until {clock_time(lease.expires_at)}"
        for lease in holders[:_MAX_HOLDERS_SHOWN]
    ]
    more = len(holders) - _MAX_HOLDERS_SHOWN
    if more > 0:
        shown.append(f"{more} more")
    return "held by " + ", ".join(shown)


def waiting_line(waiting: Waiting) -> str:
    """The original's `waiting for free slot on environment: uat`, with where we are and why."""
    if waiting.parts:
        target = "all at once of " + ", ".join(waiting.parts)
    elif waiting.label is not None and waiting.environment is None:
        target = f"label: {waiting.label}"
    else:
        target = f"environment: {waiting.environment}"
    details = [f"position {waiting.position} in queue"] if waiting.position else []
    if waiting.maintenance:
        details.append(
            "in maintenance: " + ", ".join(f"{name} ({note})" if note else name for name, note in waiting.maintenance)
        )
    if waiting.holders:
        details.append(holders_text(waiting.holders))
    suffix = f" ({'; '.join(details)})" if details else ""
    return f"waiting for free slot on {target}{suffix}"


def describe(error: CallMeError, *, hint: Callable[[CallMeError], str] | None = None) -> str:
    """One line: what happened, what it means (and who holds the slot), what to do.

    What to do is the error's own hint unless `hint` gives the caller's (the Action names its inputs). A server's
    detail often ends with advice for HTTP callers (`?force=true`, "join the queue"): where there is advice of our
    own, only the detail's first clause (the fact) is kept, so that a line never gives two pieces of advice.
    """
    advice = error.hint if hint is None else hint(error)
    holders = error.holders if isinstance(error, NotGranted | WaitTimeout) else ()
    if isinstance(error, APIError):
        if isinstance(error, NotGranted) and holders:
            # The detail names the first holder too: say who holds it once, with since/until for each.
            text = error.describe(f"{error.meaning}: {holders_text(holders)}", meaning=False)
        else:
            fact = error.detail.split("; ", 1)[0] if advice else error.detail
            text = error.describe(fact)
    else:
        text = str(error)
        if holders:
            text += f"; {holders_text(holders)}"
    return f"{text}; {advice}" if advice else text


def environments_table(environments: Sequence[Environment]) -> str:
    if not environments:
        return "no environments yet: a first request creates one, or an admin runs `call-me env set`\n"
    rows = [
        (
            env.name,
            str(env.slots),
            str(env.free),
            ",".join(env.labels) or "-",
            str(len(env.queue)),
            _state(env),
        )
        for env in environments
    ]
    return table(("ENVIRONMENT", "SLOTS", "FREE", "LABELS", "WAITING", "STATE"), rows)


def environment_detail(env: Environment) -> str:
    lines = [
        f"environment: {env.name}{' (created by a first request)' if env.auto else ''}",
        f"slots: {env.slots}, free: {env.free}",
        f"state: {_state(env)}",
    ]
    if env.labels:
        lines.append(f"labels: {', '.join(env.labels)}")
    if env.description:
        lines.append(f"description: {env.description}")
    lines.extend(f"property {key}: {value}" for key, value in sorted(env.properties.items()))
    out = "\n".join(lines) + "\n\n"
    if env.leases:
        out += table(
            ("HOLDER", "LEASE", "FENCE", "SINCE", "UNTIL"),
            (
                (lease.holder, lease.id, str(lease.fence), clock_time(lease.acquired_at), clock_time(lease.expires_at))
                for lease in env.leases
            ),
        )
    else:
        out += "no holders\n"
    if env.queue:
        out += "\n" + table(
            ("POSITION", "SEQ", "HOLDER", "PRIORITY", "WAITING SINCE", "FOR"),
            (
                (
                    str(entry.position),
                    str(entry.seq),
                    entry.holder,
                    str(entry.priority),
                    clock_time(entry.enqueued_at),
                    f"label {entry.label}" if entry.label else f"environment {entry.environment}",
                )
                for entry in env.queue
            ),
        )
    else:
        out += "nobody waiting\n"
    return out


def history_table(events: Sequence[Event]) -> str:
    if not events:
        return "no events\n"
    rows = [
        (
            clock_time(event.at),
            event.kind,
            event.environment or "-",
            event.holder or "-",
            "-" if event.fence is None else str(event.fence),
            event.actor or "-",
            event.detail or "",
        )
        for event in events
    ]
    return table(("AT", "KIND", "ENVIRONMENT", "HOLDER", "FENCE", "ACTOR", "DETAIL"), rows)


def environment_summary(env: Environment) -> str:
    slots = f"{env.slots} slot{'s' if env.slots != 1 else ''}"
    labels = f", labels {', '.join(env.labels)}" if env.labels else ""
    return f"environment {env.name}: {slots}{labels}, {_state(env)}"


def to_json(value: object) -> str:
    return json.dumps(_plain(value), indent=2, sort_keys=True)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: _plain(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, datetime):
        return rfc3339(value)
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _state(env: Environment) -> str:
    if env.maintenance:
        return f"maintenance: {env.note}" if env.note else "maintenance"
    return "free" if env.free > 0 else "in use"
