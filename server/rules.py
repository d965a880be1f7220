"""Pure decisions over one group of environments at a given time: expiry, abandonment, grants, positions.

No I/O and no clock: the service reads the time once per operation and passes it in. The invariants of
API.md live here: never more live leases than slots, grants in queue order, and the start-up floor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from .model import Environment, Lease, Ticket


@dataclass(frozen=True)
class Floor:
    """After a start-up, nothing that existed before it ends before `started_at + grace` (invariant 5); a pause the
    server noticed raises `started_at` to the time it resumed, as a start-up would."""

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
    left = sum(free.values())
    grants: list[tuple[Ticket, str]] = []
    if left == 0:
        return grants  # the common case of a busy group: every slot held, however long its queue
    ordered = sorted(waiting, key=order_key)
    usable = _usable(envs)
    for i, ticket in enumerate(ordered):
        options = [e for e in usable(ticket) if free.get(e.name, 0) > 0]
        if not options:
            continue
        if len(options) > 1:
            later = ordered[i + 1 :]
            options.sort(key=lambda e: (sum(1 for t in later if can_serve(e, t)), e.name))
        chosen = options[0].name
        free[chosen] -= 1
        grants.append((ticket, chosen))
        left -= 1
        if left == 0:
            break
    return grants


def _usable(envs: Sequence[Environment]) -> Callable[[Ticket], Sequence[Environment]]:
    """The environments of `envs` a ticket could use (as `can_serve` says), in the order of `envs`, by lookup."""
    by_name = {e.name: e for e in envs}
    by_label: dict[str, list[Environment]] = {}
    for e in envs:
        for label in e.labels:
            by_label.setdefault(label, []).append(e)

    def usable(ticket: Ticket) -> Sequence[Environment]:
        if ticket.environment is not None:
            env = by_name.get(ticket.environment)
            return [env] if env is not None else []
        return by_label.get(ticket.label or "", [])

    return usable


def queues(envs: Sequence[Environment], waiting: Sequence[Ticket]) -> dict[str, list[Ticket]]:
    """For each environment, the waiting tickets that could use it, in queue order.

    One pass over the tickets (a label ticket is listed under each environment carrying its label), so that
    a listing of thousands of environments and waiters costs what it lists, not their product.
    """
    by_env: dict[str, list[Ticket]] = {e.name: [] for e in envs}
    usable = _usable(envs)
    for ticket in sorted(waiting, key=order_key):
        for env in usable(ticket):
            by_env[env.name].append(ticket)
    return by_env


def position(envs: Sequence[Environment], waiting: Sequence[Ticket], ticket: Ticket) -> int:
    """One ticket's position: 1 + the fewest tickets ahead of it competing for one environment it could use."""
    key = order_key(ticket)
    ahead = [t for t in waiting if order_key(t) < key]
    counts = [sum(1 for t in ahead if can_serve(e, t)) for e in envs if can_serve(e, ticket)]
    return 1 + (min(counts) if counts else 0)


def positions(envs: Sequence[Environment], waiting: Sequence[Ticket]) -> dict[str, int]:
    """Every waiting ticket's position (as `position` would give it): in each environment's queue, the
    tickets ahead of one are its rank there; its position is 1 + its lowest rank."""
    best: dict[str, int] = {}
    for queue in queues(envs, waiting).values():
        for rank, ticket in enumerate(queue):
            if rank < best.get(ticket.id, rank + 1):
                best[ticket.id] = rank
    return {ticket.id: 1 + best.get(ticket.id, 0) for ticket in waiting}
