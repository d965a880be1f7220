"""What the server answers, as frozen dataclasses parsed from API.md's JSON shapes.

Parsing is strict about the fields the client relies on (a missing `id` is an error) and
lenient about the rest, so a newer server that adds fields does not break an older client.
Secrets (a lease's token, a ticket's id) are kept out of every repr.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime
from typing import Any, TypeVar

JSON = dict[str, Any]
_T = TypeVar("_T")


class MalformedAnswer(ValueError):
    """An answer lacks a field the contract promises; the client turns it into UnexpectedResponse."""


@dataclasses.dataclass(frozen=True)
class Lease:
    """One pipeline's hold on one slot; `token` is set only for the one who acquired it."""

    id: str
    environment: str
    holder: str
    fence: int
    state: str
    ttl: int
    acquired_at: datetime | None
    expires_at: datetime | None
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    properties: Mapping[str, str] = dataclasses.field(default_factory=dict)
    token: str | None = dataclasses.field(default=None, repr=False)
    # Only in an acquire's answer: how long its request waited in the queue, as the server measured it.
    queued_for: float | None = None

    @classmethod
    def from_json(cls, data: JSON) -> Lease:
        return cls(
            id=_required(data, "id", str),
            environment=_required(data, "environment", str),
            holder=str(data.get("holder") or ""),
            fence=int(data.get("fence") or 0),
            state=str(data.get("state") or "active"),
            ttl=int(data.get("ttl") or 0),
            acquired_at=parse_time(data.get("acquired_at")),
            expires_at=parse_time(data.get("expires_at")),
            metadata=dict(data.get("metadata") or {}),
            properties={str(k): str(v) for k, v in (data.get("properties") or {}).items()},
            token=data.get("token"),
            queued_for=_seconds(data.get("queued_for")),
        )

    def waited(self, measured_here: float) -> float:
        """The queue time the server measured (a grant at once: 0), else what the client measured."""
        return self.queued_for if self.queued_for is not None else measured_here

    def with_token(self, token: str | None) -> Lease:
        return dataclasses.replace(self, token=token)


@dataclasses.dataclass(frozen=True)
class Group:
    """Several environments granted at once (`all`): one lease per part, in their order, and the group's id and
    token, which renew and release them all. Read like one lease where that is enough (`environment`, `ttl`...)."""

    id: str
    leases: tuple[Lease, ...]
    token: str | None = dataclasses.field(default=None, repr=False)

    @classmethod
    def from_json(cls, data: JSON) -> Group:
        leases = tuple(Lease.from_json(lease) for lease in _required(data, "leases", list))
        if not leases:
            raise MalformedAnswer("a group without leases")
        return cls(id=_required(data, "group", str), leases=leases, token=data.get("token"))

    def with_tokens(self, earlier: Group) -> Group:
        """This group (a renewal's answer, which carries no token) with the tokens of `earlier`."""
        tokens = {lease.id: lease.token for lease in earlier.leases}
        leases = tuple(lease.with_token(tokens.get(lease.id)) for lease in self.leases)
        return dataclasses.replace(self, leases=leases, token=earlier.token)

    @property
    def environment(self) -> str:
        return ", ".join(lease.environment for lease in self.leases)

    def waited(self, measured_here: float) -> float:
        """The queue time the server measured for the group (its parts were granted at once), else the client's."""
        measured = [lease.queued_for for lease in self.leases]
        return max(m for m in measured if m is not None) if measured and None not in measured else measured_here

    @property
    def holder(self) -> str:
        return self.leases[0].holder

    @property
    def ttl(self) -> int:
        return min(lease.ttl for lease in self.leases)

    @property
    def expires_at(self) -> datetime | None:
        times = [lease.expires_at for lease in self.leases if lease.expires_at is not None]
        return min(times) if times else None


@dataclasses.dataclass(frozen=True)
class Waiting:
    """A 202: not granted yet, still in the queue at `position` (1 = next)."""

    seq: int
    position: int
    environment: str | None
    label: str | None
    waited: float
    holders: tuple[Lease, ...]
    ticket: str = dataclasses.field(repr=False, default="")
    # The environments it could use that are in maintenance, each with its note: why a free slot is not granted.
    maintenance: tuple[tuple[str, str | None], ...] = ()
    # A group's parts (`all`), each `environment ...` or `label ...` for messages; empty for one target.
    parts: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, data: JSON) -> Waiting:
        return cls(
            seq=int(data.get("seq") or 0),
            position=int(data.get("position") or 0),
            environment=data.get("environment"),
            label=data.get("label"),
            waited=float(data.get("waited") or 0.0),
            holders=tuple(Lease.from_json(h) for h in data.get("holders") or ()),
            ticket=_required(data, "ticket", str),
            maintenance=tuple(
                (str(m["environment"]), str(m["note"]) if m.get("note") else None)
                for m in data.get("maintenance") or ()
                if isinstance(m, dict) and isinstance(m.get("environment"), str)
            ),
            parts=tuple(
                f"environment {p['environment']}" if "environment" in p else f"label {p.get('label')}"
                for p in data.get("all") or ()
                if isinstance(p, dict)
            ),
        )


@dataclasses.dataclass(frozen=True)
class QueueEntry:
    """A waiter as the environment view shows it (ticket ids are never shown)."""

    seq: int
    position: int
    holder: str
    priority: int
    enqueued_at: datetime | None
    environment: str | None
    label: str | None

    @classmethod
    def from_json(cls, data: JSON) -> QueueEntry:
        return cls(
            seq=int(data.get("seq") or 0),
            position=int(data.get("position") or 0),
            holder=str(data.get("holder") or ""),
            priority=int(data.get("priority") or 0),
            enqueued_at=parse_time(data.get("enqueued_at")),
            environment=data.get("environment"),
            label=data.get("label"),
        )


@dataclasses.dataclass(frozen=True)
class Environment:
    name: str
    slots: int
    free: int
    labels: tuple[str, ...]
    description: str
    properties: Mapping[str, str]
    maintenance: bool
    note: str
    auto: bool
    leases: tuple[Lease, ...]
    queue: tuple[QueueEntry, ...]

    @classmethod
    def from_json(cls, data: JSON) -> Environment:
        return cls(
            name=_required(data, "name", str),
            slots=int(data.get("slots") or 0),
            free=int(data.get("free") or 0),
            labels=tuple(str(label) for label in data.get("labels") or ()),
            description=str(data.get("description") or ""),
            properties={str(k): str(v) for k, v in (data.get("properties") or {}).items()},
            maintenance=bool(data.get("maintenance")),
            note=str(data.get("note") or ""),
            auto=bool(data.get("auto")),
            leases=tuple(Lease.from_json(lease) for lease in data.get("leases") or ()),
            queue=tuple(QueueEntry.from_json(entry) for entry in data.get("queue") or ()),
        )


@dataclasses.dataclass(frozen=True)
class Event:
    """One entry of the audit log."""

    at: datetime | None
    kind: str
    environment: str | None
    lease: str | None
    seq: int | None
    fence: int | None
    holder: str | None
    actor: str | None
    detail: str | None

    @classmethod
    def from_json(cls, data: JSON) -> Event:
        return cls(
            at=parse_time(data.get("at")),
            kind=_required(data, "kind", str),
            environment=data.get("environment"),
            lease=data.get("lease"),
            seq=data.get("seq"),
            fence=data.get("fence"),
            holder=data.get("holder"),
            actor=data.get("actor"),
            detail=None if data.get("detail") is None else str(data.get("detail")),
        )


def parse_time(value: object) -> datetime | None:
    """An RFC 3339 time from the server, or None when absent."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise MalformedAnswer(f"expected an RFC 3339 time, got {value!r}")
    try:
        return datetime.fromisoformat(value)
    except ValueError as exc:
        raise MalformedAnswer(f"expected an RFC 3339 time, got {value!r}") from exc


def _required(data: JSON, key: str, kind: type[_T]) -> _T:
    value = data.get(key)
    if not isinstance(value, kind):
        raise MalformedAnswer(f"the answer has no {kind.__name__} {key!r}")
    return value


def _seconds(value: object) -> float | None:
    """A duration the server sent (a number), or None when it sent none (an older server)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return max(0.0, float(value))
