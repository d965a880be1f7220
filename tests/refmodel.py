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
- A request may name several parts (`all`): it is one place in the order (its parts take consecutive seqs),
  granted all at once or not at all, each part on an environment of its own. A request that waits while no
  waiting request ahead of it could use any environment it could use holds back, on each of them, a slot per
  part that could use it (unless the environments it could use, out of maintenance, could not serve all its
  parts at once); that slot is then free only for it and the requests ahead of it. The decision covers every
  environment its parts could use. A request of parts that no environments could ever serve at once (slots and
  maintenance aside) is refused (422).
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
    group: int | None = None

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
    group: int | None = None  # the seq of the first part, for each part of a request of several


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
                # A waiting request of several parts joins what each of its parts could use.
                for t in self.waiting():
                    if t.group is not None and self.serves(self.envs[name], t):
                        for p in self.parts(t):
                            todo += [e.name for e in self.envs.values() if self.serves(e, p)]
        return sorted(seen)

    def parts(self, t: Ticket) -> list[Ticket]:
        if t.group is None:
            return [t]
        return sorted((o for o in self.tickets.values() if o.group == t.group), key=lambda o: o.seq)

    def requests(self) -> list[list[Ticket]]:
        """The waiting requests in queue order, each as its parts."""
        heads = [t for t in self.waiting() if t.group is None or t.group == t.seq]
        return [self.parts(t) for t in heads]

    def live_on(self, env: str) -> list[Lease]:
        return [lease for lease in self.leases.values() if lease.live and lease.environment == env]

    def waiting(self) -> list[Ticket]:
        return sorted((t for t in self.tickets.values() if t.state == "waiting"), key=self._order)

    def position(self, t: Ticket) -> int:
        mine = self.parts(t)
        head = mine[0]
        ahead = [r for r in self.requests() if self._order(r[0]) < self._order(head)]
        places = []
        for p in mine:
            counts = [
                sum(1 for r in ahead if any(self.serves(e, o) for o in r))
                for e in self.envs.values()
                if self.serves(e, p)
            ]
            places.append(1 + (min(counts) if counts else 0))
        return max(places)

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
        held: dict[str, int] = {}
        behind: set[str] = set()
        for request in self.requests():
            if not any(r.environment in group or r.label in group_labels for r in request):
                continue
            options = [
                [n for n in group if free.get(n, 0) - held.get(n, 0) > 0 and self.serves(self.envs[n], p)]
                for p in request
            ]
            possible = _assignments(options)
            if possible:
                if done.server.refused:
                    chosen = possible[0]
                else:
                    chosen = [done.choice(p.seq, o) for p, o in zip(request, options, strict=True)]
                    if None in chosen:
                        raise AssertionError(f"request {request[0].seq} should have been granted one of {possible}")
                    if chosen not in possible:
                        raise AssertionError(f"request {request[0].seq} was given {chosen}, the rule allows {possible}")
                for p, name in zip(request, chosen, strict=True):
                    free[name] -= 1  # type: ignore[index]
                    self._grant(now, p, name, done, collect=request[0].seq != immediate)  # type: ignore[arg-type]
                continue
            needed = [[n for n in group if self.serves(self.envs[n], p)] for p in request]
            names_needed = {n for ns in needed for n in ns}
            out_of_maintenance = [[n for n in ns if not self.envs[n].maintenance] for ns in needed]
            if not names_needed & behind and _assignments(out_of_maintenance):
                for ns in needed:
                    for n in ns:
                        held[n] = held.get(n, 0) + 1
            behind |= names_needed

    def _grant(self, now: float, t: Ticket, env: str, done: Happened, *, collect: bool) -> None:
        lease_id, fence = done.named(t.seq, self.last_fence + 1)
        assert fence > self.last_fence, f"fence {fence} of seq {t.seq} is not above {self.last_fence}"
        self.last_fence = fence
        self.leases[lease_id] = Lease(
            id=lease_id, environment=env, seq=t.seq, fence=fence, ttl=t.ttl, acquired_at=now,
            expires_at=now + t.ttl, touched_at=now, collect_by=now + self.grace if collect else None, key=t.key,
            group=t.group,
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
        queue: bool, key: str, grants: Grants, parts: list[tuple[str | None, str | None]] | None = None,
    ) -> tuple[object, Happened]:  # fmt: skip
        """A new request, of one target or of several `parts`. `seq` is the one the server gave it (None when the
        server refused it); the parts of a group take it and the seqs after it."""
        targets = parts if parts is not None else [(environment, label)]

        def fn(done: Happened) -> object:
            for env_name, label_name in targets:
                if env_name is not None and env_name not in self.envs:
                    self.envs[env_name] = Env(env_name)
                    done.events.append(("environment_changed", env_name, None))
                if label_name is not None and not any(label_name in e.labels for e in self.envs.values()):
                    raise Refused("not_found")
            if parts is not None:
                every = [[e.name for e in self.envs.values() if self.serves(e, Ticket(0, n, lb, 0, 0, 0, ""))]
                         for n, lb in targets]  # fmt: skip
                if not _assignments(every):
                    raise Refused("invalid")  # no environments could ever serve every part at once
            number = seq if seq is not None else self.last_seq + 1
            assert number > self.last_seq, f"seq {number} is not above {self.last_seq}"
            made = []
            for i, (env_name, label_name) in enumerate(targets):
                t = Ticket(number + i, env_name, label_name, priority, ttl, seen_at=now, key=key)
                t.group = number if parts is not None else None
                self.tickets[t.seq] = t
                made.append(t)
            self._settle(
                now, [e for e, _ in targets if e], [lb for _, lb in targets if lb], done, number
            )  # fmt: skip
            last = number + len(targets) - 1
            if all(t.state == "granted" for t in made):
                self.last_seq = last
                return "granted"
            if not queue:
                for t in made:
                    usable = [e for e in self.envs.values() if self.serves(e, t)]
                    if usable and all(e.maintenance for e in usable):
                        raise Refused("maintenance")
                raise Refused("busy")
            self.last_seq = last
            for t in made:
                done.events.append(("queued", t.environment, t.seq))
            return self.position(made[0])

        return self._transaction(grants, fn)

    def poll(self, now: float, seq: int, grants: Grants) -> tuple[object, Happened]:
        """Coming back with a ticket: its lease (every lease of a group), or its position."""

        def fn(done: Happened) -> object:
            mine = self.parts(self.tickets[seq])
            if any(t.state in ("left", "abandoned") for t in mine):
                raise Refused("ticket_gone")
            self._settle(
                now, [t.environment for t in mine if t.environment], [t.label for t in mine if t.label], done
            )  # fmt: skip
            if any(t.state == "abandoned" for t in mine):
                raise Refused("ticket_gone")
            if all(t.state == "granted" for t in mine):
                leases = [self.leases[t.lease] for t in mine]  # type: ignore[index]
                if not all(lease.live for lease in leases):
                    raise Refused("ticket_gone")
                for lease in leases:
                    lease.collect_by = None
                return "granted"
            for t in mine:
                t.seen_at = now
            return self.position(mine[0])

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
            mine = self.parts(self.tickets[seq])
            if any(t.state in ("left", "abandoned") for t in mine):
                return
            for t in mine:
                if t.state == "granted" and t.lease is not None and self.leases[t.lease].live:
                    self._end(self.leases[t.lease], "released", done)
                t.state = "left"
                done.events.append(("left", t.environment, t.seq))
            self._settle(
                now, [t.environment for t in mine if t.environment], [t.label for t in mine if t.label], done
            )  # fmt: skip

        return self._transaction(grants, fn)[1]

    def group_leases(self, group: int) -> list[Lease]:
        return sorted((lease for lease in self.leases.values() if lease.group == group), key=lambda x: x.seq)

    def renew_group(self, now: float, group: int, ttl: int | None, grants: Grants) -> Happened:
        """Renew every lease of a group at once: all of them, or none when one has ended (410)."""

        def fn(done: Happened) -> None:
            mine = self.group_leases(group)
            self._settle(now, [lease.environment for lease in mine], [], done)
            if not all(lease.live for lease in mine):
                raise Refused("lease_gone")
            for lease in mine:
                lease.ttl = ttl if ttl is not None else lease.ttl
                lease.expires_at = now + lease.ttl
                lease.touched_at = now
                lease.collect_by = None

        return self._transaction(grants, fn, keep_on=("lease_gone",))[1]

    def release_group(self, now: float, group: int, grants: Grants, *, force: bool = False) -> Happened:
        """Release every live lease of a group; 410 when one of them had expired or been revoked before."""

        def fn(done: Happened) -> None:
            mine = self.group_leases(group)
            ended = [lease for lease in mine if not lease.live or self._ending(now, lease)]
            for lease in mine:
                if lease not in ended:
                    self._end(lease, "revoked" if force else "released", done)
            self._settle(now, [lease.environment for lease in mine], [], done)
            if any(lease.state != "released" for lease in ended):
                raise Refused("lease_gone")

        return self._transaction(grants, fn, keep_on=("lease_gone",))[1]

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


def _assignments(options: list[list[str]]) -> list[list[str]]:
    """Every choice of one environment per part from its options, each a different one."""
    found: list[list[str]] = [[]]
    for choices in options:
        found = [[*f, c] for f in found for c in choices if c not in f]
    return found
