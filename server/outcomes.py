"""What an operation answers with: a grant, a place in the queue, an environment with its holders and queue.

Shared by the service that produces them and the routes, metrics and dashboard that render them, so that
rendering never depends on the service.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import rules
from .model import Environment, Lease, Ticket


@dataclass
class Group:
    """A group of environments after expiry and grants: what a decision and an answer are based on."""

    envs: list[Environment]
    live: list[Lease]
    waiting: list[Ticket]

    def env(self, name: str) -> Environment | None:
        return next((e for e in self.envs if e.name == name), None)

    def holders(self, ticket: Ticket, parts: list[Ticket] | None = None) -> list[Lease]:
        """The live leases on the environments the ticket (or any of a group's `parts`) could use."""
        usable = {e.name for e in self.envs for t in parts or [ticket] if rules.can_serve(e, t)}
        return [lease for lease in self.live if lease.environment in usable]


@dataclass
class Granted:
    """A lease and the environment it holds, with the lease's token when the answer goes to its acquirer."""

    lease: Lease
    environment: Environment
    token: str | None = field(default=None, repr=False)  # derived (secret.py): the lease row holds none
    # Seconds its ticket waited in the queue before this grant, as the server measured it (0 for a grant at once).
    queued_for: float = 0.0


@dataclass
class GrantedGroup:
    """Every part of a request for several environments, granted at once: one lease per part, in the order of
    the parts, and the group's id and token (which renew and release them all)."""

    group_id: str
    leases: list[Granted]
    token: str | None = field(default=None, repr=False)


@dataclass
class Queued:
    """A ticket still waiting: its position, the group it waits in, and how long this request was held. For a
    request of several parts, `ticket` is its first part and `parts` all of them."""

    ticket: Ticket
    ticket_id: str = field(repr=False)  # what the requester holds (secret.py): the ticket row's id is only part of it
    position: int
    group: Group
    waited: float = 0.0
    parts: list[Ticket] = field(default_factory=list)

    def compact(self) -> Queued:
        """The same answer without the rest of its group (the other waiters, environments it cannot use):
        what a parked long-poll keeps while it waits, so that thousands of them stay small."""
        mine = self.parts or [self.ticket]
        usable = [e for e in self.group.envs if any(rules.can_serve(e, t) for t in mine)]
        group = Group(usable, self.group.holders(self.ticket, self.parts), [])
        return Queued(self.ticket, self.ticket_id, self.position, group, self.waited, self.parts)


@dataclass
class EnvironmentView:
    """One environment with its live leases and the tickets it could serve, each with its position."""

    env: Environment
    leases: list[Lease]
    queue: list[tuple[Ticket, int]]
