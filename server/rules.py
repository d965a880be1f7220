"""Pure decisions over one group of environments at a given time: expiry, abandonment, grants, positions.

No I/O and no clock: the service reads the time once per operation and passes it in. The invariants of
API.md live here: never more live leases than slots, grants in queue order, and the start-up floor.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from .model import Environment, Lease, Ticket


@dataclass(frozen=True)
class Floor:
    """After a start-up, nothing that existed before it ends before `started_at + grace` (invariant 5)."""

    started_at: float
    grace: float

    def deadline(self, deadline: float, touched_at: float) -> float:
        if touched_at <= self.started_at:
            return max(deadline, self.started_at + self.grace)
        return deadline


def order_key(ticket: Ticket) -> tuple[int, int]:
    """The one global queue order: higher priority first, then first come, first served."""
    return (-ticket.priority, ticket.seq)


def can_serve(env: Environment, ticket: Ticket) -> bool:
    if ticket.environment is not None:
        return ticket.environment == env.name
    return ticket.label in env.labels


def lease_ending(lease: Lease, now: float, floor: Floor) -> Literal["expired", "revoked"] | None:
    """How a live lease ends at `now`, if it does: its TTL ran out, or its grant was never collected."""
    if not lease.live:
        return None
    if lease.collect_by is not None and now >= floor.deadline(lease.collect_by, lease.touched_at):
        return "revoked"
    if now >= floor.deadline(lease.expires_at, lease.touched_at):
        return "expired"
    return None


def abandoned(ticket: Ticket, now: float, floor: Floor) -> bool:
    """A waiting ticket whose client has not been back within the grace time."""
    return ticket.state == "waiting" and now >= floor.deadline(ticket.seen_at + floor.grace, ticket.seen_at)


def free_slots(envs: Iterable[Environment], live_counts: Mapping[str, int]) -> dict[str, int]:
    """Slots that may be granted now; an environment in maintenance grants none."""
    return {e.name: max(0, e.slots - live_counts.get(e.name, 0)) for e in envs if not e.maintenance}


def schedule(
    envs: Sequence[Environment], live_counts: Mapping[str, int], waiting: Sequence[Ticket]
) -> list[tuple[Ticket, str]]:
    """Grant free slots to waiting tickets in queue order; returns (ticket, environment) pairs in grant order.

    Each ticket in order takes a free slot it can use, so no ticket is ever granted while one ahead of it
    could have used the same slot, and a ticket that cannot use a slot never blocks it. Among several
    environments a label ticket could take, it takes the one the fewest later tickets could use.
    """
    free = free_slots(envs, live_counts)
    ordered = sorted(waiting, key=order_key)
    grants: list[tuple[Ticket, str]] = []
    for i, ticket in enumerate(ordered):
        options = [e for e in envs if free.get(e.name, 0) > 0 and can_serve(e, ticket)]
        if not options:
            continue
        if len(options) > 1:
            later = ordered[i + 1 :]
            options.sort(key=lambda e: (sum(1 for t in later if can_serve(e, t)), e.name))
        chosen = options[0].name
        free[chosen] -= 1
        grants.append((ticket, chosen))
    return grants


def position(envs: Sequence[Environment], waiting: Sequence[Ticket], ticket: Ticket) -> int:
    """One ticket's position: 1 + the fewest tickets ahead of it competing for one environment it could use."""
    key = order_key(ticket)
    ahead = [t for t in waiting if order_key(t) < key]
    counts = [sum(1 for t in ahead if can_serve(e, t)) for e in envs if can_serve(e, ticket)]
    return 1 + (min(counts) if counts else 0)


def positions(envs: Sequence[Environment], waiting: Sequence[Ticket]) -> dict[str, int]:
    """Every waiting ticket's position (see `position`)."""
    return {ticket.id: position(envs, waiting, ticket) for ticket in waiting}
