"""What the dashboard shows, computed from the environments and the recent history: per environment its
holders and queue, and above them utilisation over the last 24 h, the longest current wait and the most
contended environments. Plain data; the templates only lay it out."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlsplit

from .constants import UTILISATION_WINDOW
from .model import Event, JSONObject, Lease
from .outcomes import EnvironmentView
from .render import timestamp

_RUN_KEYS = ("run_url", "url", "job_url")
_ENDED = ("released", "expired", "revoked")


def duration(seconds: float) -> str:
    """A short human duration: 42s, 3m 12s, 1h 04m, 2d 3h."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def clock(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def run_link(metadata: JSONObject) -> str | None:
    """The run's URL from the metadata, only when it is an absolute http(s) URL (never javascript: ...)."""
    for key in _RUN_KEYS:
        value = metadata.get(key)
        if isinstance(value, str):
            parts = urlsplit(value.strip())
            if parts.scheme.lower() in ("http", "https") and parts.netloc:
                return value.strip()
    return None


@dataclass
class Moment:
    """A point in time for the page: readable text, and machine-readable for <time datetime>."""

    text: str
    iso: str
    relative: str


def moment(t: float, now: float) -> Moment:
    delta = t - now
    relative = f"in {duration(delta)}" if delta >= 0 else f"{duration(-delta)} ago"
    return Moment(text=clock(t), iso=timestamp(t) or "", relative=relative)


@dataclass
class HolderRow:
    lease: str
    holder: str
    link: str | None
    since: Moment
    expires: Moment
    fence: int
    reason: str | None


@dataclass
class WaiterRow:
    position: int
    seq: int
    holder: str
    target: str
    priority: int
    since: Moment
    waiting: str


@dataclass
class Card:
    name: str
    slots: int
    in_use: int
    labels: list[str]
    properties: list[tuple[str, str]]
    description: str
    maintenance: bool
    note: str | None
    auto: bool
    holders: list[HolderRow]
    queue: list[WaiterRow]
    utilisation: float


@dataclass
class Summary:
    utilisation: list[tuple[str, float]] = field(default_factory=list)
    longest_wait: WaiterRow | None = None
    contended: list[tuple[str, int, int]] = field(default_factory=list)  # name, waiting now, queued in 24 h


def _holder(lease: Lease, now: float) -> HolderRow:
    reason = lease.metadata.get("reason")
    return HolderRow(
        lease=lease.id,
        holder=lease.holder,
        link=run_link(lease.metadata),
        since=moment(lease.acquired_at, now),
        expires=moment(lease.expires_at, now),
        fence=lease.fence,
        reason=reason if isinstance(reason, str) else None,
    )


def utilisation(views: Sequence[EnvironmentView], events: Sequence[Event], now: float) -> dict[str, float]:
    """Share of slot-time held over the window, per environment, from the lease events in it."""
    start = now - UTILISATION_WINDOW
    began: dict[str, float] = {}
    held: dict[str, float] = {}
    for event in sorted((e for e in events if e.at >= start), key=lambda e: (e.at, e.id or 0)):
        if event.lease is None or event.environment is None:
            continue
        if event.kind == "acquired":
            began[event.lease] = event.at
        elif event.kind in _ENDED:
            held[event.environment] = held.get(event.environment, 0.0) + event.at - began.pop(event.lease, start)
    for view in views:
        for lease in view.leases:
            held[view.env.name] = (
                held.get(view.env.name, 0.0) + now - max(start, began.pop(lease.id, lease.acquired_at))
            )
    shares = {}
    for view in views:
        span = now - max(start, view.env.created_at)
        capacity = span * view.env.slots
        shares[view.env.name] = min(1.0, held.get(view.env.name, 0.0) / capacity) if capacity > 0 else 0.0
    return shares


def build(
    views: Sequence[EnvironmentView], events: Sequence[Event], now: float | None = None
) -> tuple[list[Card], Summary]:
    now = time.time() if now is None else now
    shares = utilisation(views, events, now)
    cards: list[Card] = []
    waiting: dict[int, WaiterRow] = {}
    for view in views:
        env = view.env
        queue = [
            WaiterRow(
                position=position,
                seq=t.seq,
                holder=t.holder,
                target=t.environment if t.environment is not None else f"label {t.label}",
                priority=t.priority,
                since=moment(t.enqueued_at, now),
                waiting=duration(now - t.enqueued_at),
            )
            for t, position in view.queue
        ]
        for t, row in zip(view.queue, queue, strict=True):
            waiting[t[0].seq] = row
        cards.append(
            Card(
                name=env.name, slots=env.slots, in_use=len(view.leases), labels=list(env.labels),
                properties=sorted(env.properties.items()), description=env.description,
                maintenance=env.maintenance, note=env.note, auto=env.auto,
                holders=[_holder(lease, now) for lease in view.leases], queue=queue,
                utilisation=shares.get(env.name, 0.0),
            )
        )  # fmt: skip
    recent = [e for e in events if e.at >= now - UTILISATION_WINDOW]
    queued = Counter(e.environment for e in recent if e.kind == "queued" and e.environment is not None)
    now_waiting = {c.name: len(c.queue) for c in cards}
    contended = sorted(
        ((name, now_waiting.get(name, 0), queued[name]) for name in set(queued) | set(now_waiting)),
        key=lambda row: (-row[1], -row[2], row[0]),
    )
    summary = Summary(
        utilisation=sorted(((c.name, c.utilisation) for c in cards), key=lambda x: (-x[1], x[0])),
        longest_wait=min(waiting.values(), key=lambda w: w.since.iso) if waiting else None,
        contended=[row for row in contended if row[1] or row[2]][:5],
    )
    return cards, summary
