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


def order_key(ticket: Ticket) -> tuple[int, int, int]:
    """The one global queue order: higher priority first, then first come, first served; the parts of a group
    stand together at the place of its first part."""
    return (-ticket.priority, ticket.group_seq if ticket.group_seq is not None else ticket.seq, ticket.seq)


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


def requests(waiting: Sequence[Ticket]) -> list[list[Ticket]]:
    """The waiting tickets as the requests the queue orders, in queue order: a single ticket alone, the parts of
    a group together. A group's parts have consecutive seqs, so each part stands where the group stands."""
    by_request: dict[str, list[Ticket]] = {}
    for ticket in sorted(waiting, key=order_key):
        by_request.setdefault(ticket.request, []).append(ticket)
    return list(by_request.values())


def schedule(
    envs: Sequence[Environment], live_counts: Mapping[str, int], waiting: Sequence[Ticket]
) -> list[tuple[Ticket, str]]:
    """Grant free slots to waiting requests in queue order; returns (ticket, environment) pairs in grant order
    (the parts of a group one after the other).

    Each request in order takes what it can use among the slots left, all of its parts at once or none, each
    part on an environment of its own; a request that cannot use a slot never blocks it. A request that waits
    while it is first in the queue of every environment it could use (no waiting request ahead of it could use
    any of them) holds back, on each of them, a slot per part that could use it: what frees up there waits for
    it rather than going to a request behind it. It does so only while the environments it could use, out of
    maintenance, could serve all its parts at once (else it could hold them back for ever). For a single ticket
    that changes nothing (it waits only when none of its environments has a slot left); a group is thus never
    starved, and never reserves anything while a request ahead of it still waits for one of its environments.
    Among several environments a label part could take, it takes the one the fewest later tickets could use.
    """
    free = free_slots(envs, live_counts)
    left = sum(free.values())
    grants: list[tuple[Ticket, str]] = []
    if left == 0:
        return grants  # the common case of a busy group: every slot held, however long its queue
    ordered = requests(waiting)
    usable = _usable(envs)
    held: dict[str, int] = {}  # slots held back for a group first in line
    behind: set[str] = set()  # environments with a request still waiting ahead of the current one
    for i, request in enumerate(ordered):
        options = [[e for e in usable(part) if free.get(e.name, 0) - held.get(e.name, 0) > 0] for part in request]
        if all(options):
            if any(len(o) > 1 for o in options):
                later = [t for r in ordered[i + 1 :] for t in r]
                for o in options:
                    o.sort(key=lambda e: (sum(1 for t in later if can_serve(e, t)), e.name))
            chosen = _match(options)
            if chosen is not None:
                for part, env in zip(request, chosen, strict=True):
                    free[env] -= 1
                    grants.append((part, env))
                left -= len(chosen)
                if left == 0:
                    break
                continue
        needed = [[e for e in usable(part)] for part in request]
        names = {e.name for n in needed for e in n}
        if not names & behind and _match([[e for e in n if not e.maintenance] for n in needed]) is not None:
            for n in needed:
                for e in n:
                    held[e.name] = held.get(e.name, 0) + 1
        behind |= names
    return grants


def servable(envs: Sequence[Environment], parts: Sequence[Ticket]) -> bool:
    """Whether `envs` could ever serve all of `parts` at once (each on an environment of its own), slots and
    maintenance aside: a request of several parts that they could not is refused."""
    usable = _usable(envs)
    return _match([usable(part) for part in parts]) is not None


def _match(options: Sequence[Sequence[Environment]]) -> list[str] | None:
    """One environment per part, each a different one, taking each part's options in their order (the first
    such choice in that order: part 1 the first option that leaves the others a choice, then part 2 ...); None
    when there is none.

    In polynomial time, whatever the caller puts in (a plain backtracking search took N^k steps on k label parts
    of N environments each, with one part that cannot be placed last: seconds on the writer, for any client key).
    Each part keeps only its first k options (k parts): a part with k options always finds one the other k - 1 did
    not take, so that neither whether there is a choice nor which is the first one changes (the first option
    that leaves the others a choice is among any k: at most k - 1 environments are in every choice of the
    others). Then each part in turn takes its first option after which the others can still be placed, as a
    bipartite matching (augmenting paths) says.
    """
    k = len(options)
    names = [[env.name for env in part[:k]] for part in options]
    if not _placeable(names, frozenset()):
        return None
    chosen: list[str] = []
    for i, part in enumerate(names):
        for name in part:
            if name not in chosen and _placeable(names[i + 1 :], frozenset([*chosen, name])):
                chosen.append(name)
                break
        else:  # pragma: no cover - the whole was placeable, so each step has a choice
            return None
    return chosen


def _placeable(parts: Sequence[Sequence[str]], taken: frozenset[str]) -> bool:
    """Whether every part can have an environment of its own, none of `taken` (Kuhn's augmenting paths)."""
    owner: dict[str, int] = {}

    def augment(i: int, seen: set[str]) -> bool:
        for name in parts[i]:
            if name in taken or name in seen:
                continue
            seen.add(name)
            if name not in owner or augment(owner[name], seen):
                owner[name] = i
                return True
        return False

    return all(augment(i, set()) for i in range(len(parts)))


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
    """For each environment, the waiting requests that could use it, in queue order (each once: a group by the
    first of its parts that could use it).

    One pass over the tickets (a label ticket is listed under each environment carrying its label), so that
    a listing of thousands of environments and waiters costs what it lists, not their product.
    """
    by_env: dict[str, list[Ticket]] = {e.name: [] for e in envs}
    usable = _usable(envs)
    listed: set[tuple[str, str]] = set()
    for ticket in sorted(waiting, key=order_key):
        for env in usable(ticket):
            if ticket.group_id is not None:
                if (env.name, ticket.group_id) in listed:
                    continue
                listed.add((env.name, ticket.group_id))
            by_env[env.name].append(ticket)
    return by_env


def position(envs: Sequence[Environment], waiting: Sequence[Ticket], ticket: Ticket) -> int:
    """A request's position: for each of its parts, 1 + the fewest requests ahead of it competing for one
    environment that part could use; a group's is that of its part furthest back."""
    key = order_key(ticket)
    parts = [t for t in waiting if t.request == ticket.request] or [ticket]
    ahead = [r for r in requests(waiting) if r[0].request != ticket.request and order_key(r[0]) < key]
    places = []
    for part in parts:
        counts = [sum(1 for r in ahead if any(can_serve(e, t) for t in r)) for e in envs if can_serve(e, part)]
        places.append(1 + (min(counts) if counts else 0))
    return max(places)


def positions(envs: Sequence[Environment], waiting: Sequence[Ticket]) -> dict[str, int]:
    """Every waiting ticket's position (as `position` would give it): in each environment's queue, the requests
    ahead of one are its rank there; a part's place is 1 + its lowest rank, a request's that of its part
    furthest back, and every part of a group shows its group's."""
    usable = _usable(envs)
    parts: dict[str, list[Ticket]] = {}
    for ticket in waiting:
        parts.setdefault(ticket.request, []).append(ticket)
    best: dict[str, int] = {}  # ticket id -> its lowest rank
    for name, queue in queues(envs, waiting).items():
        for rank, listed in enumerate(queue):
            # A group is listed once per queue; each of its parts that could use this environment ranks so here.
            for part in parts[listed.request]:
                if rank < best.get(part.id, rank + 1) and (part is listed or any(e.name == name for e in usable(part))):
                    best[part.id] = rank
    place: dict[str, int] = {}
    for members in parts.values():
        worst = max(1 + best.get(t.id, 0) for t in members)
        for t in members:
            place[t.id] = worst
    return place
