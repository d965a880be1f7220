"""The records the server keeps: environments, leases, tickets, audit events, webhooks and their deliveries."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

JSONObject = dict[str, Any]
LeaseState = Literal["active", "released", "expired", "revoked"]
TicketState = Literal["waiting", "granted", "left", "abandoned"]
Role = Literal["read", "client", "admin"]


@dataclass(frozen=True)
class Environment:
    name: str
    slots: int = 1
    labels: tuple[str, ...] = ()
    description: str = ""
    properties: dict[str, str] = field(default_factory=dict)
    maintenance: bool = False
    note: str | None = None
    auto: bool = False
    created_at: float = 0.0
    updated_at: float = 0.0
    # Seconds a lease may be held, and a ticket wait, before a webhook hears of it; None: the server's default.
    held_too_long: float | None = None
    waiting_too_long: float | None = None


@dataclass
class Lease:
    id: str
    environment: str
    # The token of a lease granted before schema 5, which was stored and is still checked and given back; None for
    # every lease since, whose token is derived from the server secret and never stored (secret.py). Never in a
    # repr, a log line or an error.
    token: str | None = field(repr=False)
    holder: str
    metadata: JSONObject
    fence: int
    ttl: int
    acquired_at: float
    expires_at: float
    # When the lease was last granted or renewed: the start-up floor applies to leases touched by then.
    touched_at: float
    key_name: str
    state: LeaseState = "active"
    ended_at: float | None = None
    ticket_id: str | None = None
    seq: int | None = None
    # Set while a grant made to a ticket between polls waits for its client to come back for it.
    collect_by: float | None = None
    # The group of leases granted together to one request of several parts (`all`), None for a single one.
    group_id: str | None = None

    @property
    def live(self) -> bool:
        return self.state == "active"


@dataclass
class Ticket:
    # The row id: the public part of the id its requester holds (secret.py), or the whole of one made before
    # schema 5. Either way not shown: only `seq` is public.
    id: str = field(repr=False)
    seq: int
    key_name: str
    environment: str | None
    label: str | None
    holder: str
    ttl: int
    priority: int
    metadata: JSONObject
    enqueued_at: float
    # The last moment the server was (or, for a held long-poll, will be) answering this ticket's client.
    seen_at: float
    request_id: str | None = None  # its request_digest, never the request_id itself
    state: TicketState = "waiting"
    lease_id: str | None = None
    ended_at: float | None = None
    # One part of a request for several environments at once (`all`): every part has a row of its own, with
    # consecutive seqs, all carrying the group's id; the requester holds the id of the first part's ticket.
    group_id: str | None = None
    # The group's place in the queue order: the seq of its first part (its parts' seqs need not be consecutive
    # on PostgreSQL, where other requests take seqs meanwhile).
    group_seq: int | None = None

    @property
    def request(self) -> str:
        """What the queue orders and grants as one: the group of a part, else the ticket itself."""
        return self.group_id if self.group_id is not None else self.id

    @property
    def target(self) -> str:
        return self.environment if self.environment is not None else f"label:{self.label}"


def request_digest(request_id: str) -> str:
    """How a ticket keeps its request_id, and is found by it again: its SHA-256, so that a copy of the database
    gives no request_id to replay (with the key, a request_id returns the lease's token). Unkeyed, so that a
    change of the server secret never makes a repeat take a second place. Also an SQL function on SQLite, for
    the migration that hashed the request_ids stored before (store/migrations.py)."""
    return "sha256:" + hashlib.sha256(request_id.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Event:
    at: float
    kind: str
    environment: str | None
    lease: str | None = None
    seq: int | None = None
    fence: int | None = None
    holder: str | None = None
    actor: str | None = None
    detail: str | None = None
    id: int | None = None


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's name (never the key), its role and its priority limit."""

    name: str
    role: Role
    max_priority: int = 0

    def allows(self, role: Role) -> bool:
        order = ("read", "client", "admin")
        return order.index(self.role) >= order.index(role)


@dataclass(frozen=True)
class Webhook:
    """A hook as stored: its secret sealed with the server secret (secret.py), never in clear."""

    name: str
    url: str
    events: tuple[str, ...]
    sealed_secret: str = field(repr=False)
    format: str = "json"
    declared: bool = False  # from the configuration file
    created_at: float = 0.0
    updated_at: float = 0.0


DeliveryState = Literal["pending", "delivered", "failed"]


@dataclass(frozen=True)
class Delivery:
    """One event for one hook: an outbox row until it is delivered or given up, then a line of the hook's log."""

    id: int
    hook: str
    event: str
    environment: str | None
    payload: str  # the JSON of the event, without the per-attempt fields (webhooks.body adds them)
    created_at: float
    state: DeliveryState = "pending"
    attempts: int = 0
    next_at: float | None = None
    claimed_until: float | None = None
    last_status: int | None = None
    last_error: str | None = None
    delivered_at: float | None = None
