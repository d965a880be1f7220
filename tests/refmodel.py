"""A reference model of the queue of docs/api.md, written from the contract and nothing else.

It imports nothing from the server: the property tests drive the real service and this model side by
side and compare them after every step, so a rule broken in the server shows up as a disagreement,
never as the same mistake made twice.

What it models, each line a sentence of docs/api.md:
- An environment has `slots`, `labels` and a `maintenance` flag; in maintenance it grants nothing.
- All waiting tickets form one order: higher priority first, then lower seq.
- A free slot of E goes to the first ticket in that order that E can serve; a ticket E cannot serve
  never blocks it. A new request is granted at once only if no live ticket ahead of it could use the
  slot. Which of several free environments a label ticket lands on is not fixed by the contract: the
  model accepts the server's choice when it is one of the environments the rule allows.
- position = 1 + the fewest tickets ahead of it that compete for any one environment it could use.
- A ticket is abandoned `grace` after its client was last answered; a lease expires at `expires_at`;
  a grant made while its client was away is revoked if not collected within `grace`, and the slot
  passes on. A collected grant is never revoked.
- After a start-up at S, nothing that existed at S ends before S + grace; the same after a pause the server
  noticed, with S the time it resumed at.
- Fences strictly increase in the order of grant.
- Decisions are taken per connected set of environments (environments sharing labels, docs/api.md
  "Stores"), at the time of the operation that decides them: an operation first applies every
  ending that is due in its set, then grants what can be granted. A background sweep does the same
  for every set with something due. An operation that fails changes nothing, except that renew and
  release still apply the endings they found (their 410 says the lease has ended).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field


class Refused(Exception):
    """The model's answer is an error with this contract code; the model's state is left unchanged."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass
class Env:
    name: str
    slots: int = 1
    labels: tuple[str, ...] = ()
    maintenance: bool = False


@dataclass
class Lease:
    id: str
    environment: str
    seq: int
    fence: int
    ttl: int
    acquired_at: float
    expires_at: float
    touched_at: float
    collect_by: float | None  # set while a grant made between polls waits to be collected
    key: str
    state: str = "active"

    @property
    def live(self) -> bool:
        return self.state == "active"


@dataclass
class Ticket:
    seq: int
    environment: str | None
    label: str | None
    priority: int
    ttl: int
    seen_at: float
    key: str
    state: str = "waiting"  # waiting, granted, left, abandoned
    lease: str | None = None


@dataclass(frozen=True)
class Grants:
    """What the server did in the step the model replays: seq -> (environment, lease id, fence) for each ticket
    it granted, and whether it refused the request (then nothing it decided was kept, grants included).

    The model checks each grant's environment against the rule and takes the server's names for it."""

    given: dict[int, tuple[str, str, int]]
    refused: bool = False


@dataclass
class Happened:
    """What one operation did, in the words of the audit log: (kind, environment, seq or lease id)."""

    server: Grants
    events: list[tuple[str, str | None, object]] = field(default_factory=list)

    def choice(self, seq: int, options: list[str]) -> str | None:
        if seq in self.server.given:
            return self.server.given[seq][0]
        # A refused request rolled back whatever it granted: any allowed choice will do, it is undone too.
        return options[0] if self.server.refused else None

    def named(self, seq: int, fence: int) -> tuple[str, int]:
        if seq in self.server.given:
            return self.server.given[seq][1:]
        return f"unseen-{seq}", fence


class QueueModel:
    def __init__(self, grace: float, started_at: float) -> None:
        self.grace = grace
        self.started_at = started_at
        self.envs: dict[str, Env] = {}
        self.leases: dict[str, Lease] = {}
        self.tickets: dict[int, Ticket] = {}
        self.last_fence = 0
        self.last_seq = 0

    # -- time ----------------------------------------------------------------------------------------

    def _ending(self, now: float, lease: Lease) -> str | None:
        """How a live lease ends at `now`, if it does: its grant was not collected, or its TTL ran out."""
        if lease.collect_by is not None and now >= self._deadline(lease.collect_by, lease.touched_at):
            return "revoked"
        if now >= self._deadline(lease.expires_at, lease.touched_at):
            return "expired"
        return None

    def _deadline(self, deadline: float, touched_at: float) -> float:
        if touched_at <= self.started_at:
            return max(deadline, self.started_at + self.grace)
        return deadline

    def restart(self, at: float) -> None:
        self.started_at = at

    def resume(self, at: float) -> None:
        """A pause the server noticed, resumed at `at`: as after a start-up at `at`."""
        self.started_at = at

    # -- who may use what ----------------------------------------------------------------------------

    @staticmethod
    def _order(t: Ticket) -> tuple[int, int]:
        return (-t.priority, t.seq)

    @staticmethod
    def serves(env: Env, t: Ticket) -> bool:
        return t.environment == env.name if t.environment is not None else t.label in env.labels

    def connected(self, names: Iterable[str], labels: Iterable[str]) -> list[str]:
        todo = [n for n in names if n in self.envs]
        wanted = set(labels)
        todo += [e.name for e in self.envs.values() if wanted & set(e.labels)]
        seen: set[str] = set()
        while todo:
            name = todo.pop()
            if name not in seen:
                seen.add(name)
                mine = set(self.envs[name].labels)
                todo += [e.name for e in self.envs.values() if mine & set(e.labels)]
        return sorted(seen)

    def live_on(self, env: str) -> list[Lease]:
        return [lease for lease in self.leases.values() if lease.live and lease.environment == env]

    def waiting(self) -> list[Ticket]:
        return sorted((t for t in self.tickets.values() if t.state == "waiting"), key=self._order)

    def position(self, t: Ticket) -> int:
        ahead = [o for o in self.waiting() if self._order(o) < self._order(t)]
        counts = [sum(1 for o in ahead if self.serves(e, o)) for e in self.envs.values() if self.serves(e, t)]
        return 1 + (min(counts) if counts else 0)

    # -- the one decision ----------------------------------------------------------------------------

    def _settle(
        self, now: float, names: Iterable[str], labels: Iterable[str], done: Happened,
        immediate: int | None = None,
    ) -> None:  # fmt: skip
        labels = list(labels)
        group = self.connected(names, labels)
        for name in group:
            for lease in self.live_on(name):
                ending = self._ending(now, lease)
                if ending is not None:
                    self._end(lease, ending, done)
        group_labels = set(labels) | {label for n in group for label in self.envs[n].labels}
        for t in self.waiting():
            mine = t.environment in group if t.environment is not None else t.label in group_labels
            if mine and now >= self._deadline(t.seen_at + self.grace, t.seen_at):
                t.state = "abandoned"
                done.events.append(("abandoned", t.environment, t.seq))
        free = {n: max(0, self.envs[n].slots - len(self.live_on(n))) for n in group if not self.envs[n].maintenance}
        for t in self.waiting():
            options = [n for n in group if free.get(n, 0) > 0 and self.serves(self.envs[n], t)]
            if not options:
                continue
            chosen = done.choice(t.seq, options)
            if chosen is None:
                raise AssertionError(f"ticket {t.seq} should have been granted one of {options}")
            if chosen not in options:
                raise AssertionError(f"ticket {t.seq} was given {chosen}, but the rule allows only {options}")
            free[chosen] -= 1
            self._grant(now, t, chosen, done, collect=t.seq != immediate)

    def _grant(self, now: float, t: Ticket, env: str, done: Happened, *, collect: bool) -> None:
        lease_id, fence = done.named(t.seq, self.last_fence + 1)
        assert fence > self.last_fence, f"fence {fence} of seq {t.seq} is not above {self.last_fence}"
        self.last_fence = fence
        self.leases[lease_id] = Lease(
            id=lease_id, environment=env, seq=t.seq, fence=fence, ttl=t.ttl, acquired_at=now,
            expires_at=now + t.ttl, touched_at=now, collect_by=now + self.grace if collect else None, key=t.key,
        )  # fmt: skip
        t.state = "granted"
        t.lease = lease_id
        done.events.append(("acquired", env, t.seq))

    def _end(self, lease: Lease, state: str, done: Happened) -> None:
        lease.state = state
        lease.collect_by = None
        done.events.append((state, lease.environment, lease.id))

    # -- operations: each returns what happened, or raises Refused with the state unchanged ----------

    def _transaction(
        self, grants: Grants, fn: Callable[[Happened], object], keep_on: tuple[str, ...] = ()
    ) -> tuple[object, Happened]:
        saved = copy.deepcopy((self.envs, self.leases, self.tickets, self.last_fence, self.last_seq))
        done = Happened(grants)
        try:
            return fn(done), done
        except Refused as refused:
            if refused.code not in keep_on:
                self.envs, self.leases, self.tickets, self.last_fence, self.last_seq = saved
                done.events.clear()
            refused.done = done  # type: ignore[attr-defined]
            raise

    def put(self, now: float, name: str, grants: Grants, **change: object) -> Happened:
        def fn(done: Happened) -> None:
            old = self.envs.get(name)
            env = copy.copy(old) if old else Env(name)
            for key, value in change.items():
                if value is not None:
                    setattr(env, key, value)
            self.envs[name] = env
            done.events.append(("environment_changed", name, None))
            self._settle(now, [name], [*(old.labels if old else ()), *env.labels], done)

        return self._transaction(grants, fn)[1]

    def acquire(
        self, now: float, seq: int | None, environment: str | None, label: str | None, *, priority: int, ttl: int,
        queue: bool, key: str, grants: Grants,
    ) -> tuple[object, Happened]:  # fmt: skip
        """A new request. `seq` is the one the server gave it (None when the server refused it)."""

        def fn(done: Happened) -> object:
            if environment is not None and environment not in self.envs:
                self.envs[environment] = Env(environment)
                done.events.append(("environment_changed", environment, None))
            if label is not None and not any(label in e.labels for e in self.envs.values()):
                raise Refused("not_found")
            number = seq if seq is not None else self.last_seq + 1
            assert number > self.last_seq, f"seq {number} is not above {self.last_seq}"
            t = Ticket(number, environment, label, priority, ttl, seen_at=now, key=key)
            self.tickets[number] = t
            self._settle(now, [environment] if environment else [], [label] if label else [], done, number)
            if t.state == "granted":
                self.last_seq = number
                return "granted"
            if not queue:
                usable = [e for e in self.envs.values() if self.serves(e, t)]
                raise Refused("maintenance" if usable and all(e.maintenance for e in usable) else "busy")
            self.last_seq = number
            done.events.append(("queued", environment, number))
            return self.position(t)

        return self._transaction(grants, fn)

    def poll(self, now: float, seq: int, grants: Grants) -> tuple[object, Happened]:
        """Coming back with a ticket: its lease, or its position."""

        def fn(done: Happened) -> object:
            t = self.tickets[seq]
            if t.state in ("left", "abandoned"):
                raise Refused("ticket_gone")
            self._settle(now, [t.environment] if t.environment else [], [t.label] if t.label else [], done)
            if t.state == "abandoned":
                raise Refused("ticket_gone")
            if t.state == "granted":
                lease = self.leases[t.lease]
                if not lease.live:
                    raise Refused("ticket_gone")
                lease.collect_by = None
                return "granted"
            t.seen_at = now
            return self.position(t)

        return self._transaction(grants, fn)

    def renew(self, now: float, lease_id: str, ttl: int | None, grants: Grants) -> Happened:
        def fn(done: Happened) -> None:
            lease = self.leases[lease_id]
            self._settle(now, [lease.environment], [], done)
            if not lease.live:
                raise Refused("lease_gone")
            lease.ttl = ttl if ttl is not None else lease.ttl
            lease.expires_at = now + lease.ttl
            lease.touched_at = now
            lease.collect_by = None

        return self._transaction(grants, fn, keep_on=("lease_gone",))[1]

    def release(self, now: float, lease_id: str, grants: Grants, *, force: bool = False) -> Happened:
        def fn(done: Happened) -> None:
            lease = self.leases[lease_id]
            if lease.live and not self._ending(now, lease):
                self._end(lease, "revoked" if force else "released", done)
                self._settle(now, [lease.environment], [], done)
                return
            self._settle(now, [lease.environment], [], done)
            if lease.state != "released":
                raise Refused("lease_gone")

        return self._transaction(grants, fn, keep_on=("lease_gone",))[1]

    def leave(self, now: float, seq: int, grants: Grants) -> Happened:
        def fn(done: Happened) -> None:
            t = self.tickets[seq]
            if t.state in ("left", "abandoned"):
                return
            if t.state == "granted" and t.lease is not None and self.leases[t.lease].live:
                self._end(self.leases[t.lease], "released", done)
            t.state = "left"
            done.events.append(("left", t.environment, seq))
            self._settle(now, [t.environment] if t.environment else [], [t.label] if t.label else [], done)

        return self._transaction(grants, fn)[1]

    def maybe_release(self, now: float, name: str, key: str | None, grants: Grants) -> Happened:
        """`DELETE /maybe`: the oldest live lease on `name` taken with `key` (any key for an admin)."""

        def fn(done: Happened) -> None:
            self._settle(now, [name], [], done)
            mine = [lease for lease in self.live_on(name) if key is None or lease.key == key]
            if mine:
                self._end(min(mine, key=lambda lease: (lease.acquired_at, lease.fence)), "released", done)
                self._settle(now, [name], [], done)

        return self._transaction(grants, fn)[1]

    def sweep(self, now: float, grants: Grants) -> Happened:
        """The background task: settle every connected set that has something due."""

        def fn(done: Happened) -> None:
            for name in sorted(self.envs):
                self._settle(now, [name], [], done)
            for label in sorted({t.label for t in self.waiting() if t.label is not None}):
                self._settle(now, [], [label], done)

        return self._transaction(grants, fn)[1]
