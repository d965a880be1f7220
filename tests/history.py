"""The history checker: replays every event of a database (PostgreSQL or SQLite) in id order and checks the
invariants of docs/api.md against it, and against what the clients were told.

Every event about an environment is written by a transaction that holds that environment's row lock (on
SQLite, the one writer), so per environment (and per label group) id order is commit order, which is what the
invariants speak of. It checks:

1. never more live leases on an environment than its slots (with one slot: acquired and ended alternate), and
   nothing ends that was not live;
2. grants follow the queue order: no ticket still waiting that the environment could serve was ahead;
3. fences strictly increase per environment;
4. nothing acknowledged is lost: every 201 a client saw is a stored lease with that fence and environment and
   one `acquired` event, every 204 to a release is a lease ended `released`;
and that the leases live in the replay are the table's active rows.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row

Row = dict[str, Any]


@dataclass
class Record:
    """What the clients were told."""

    operations: Counter[str] = field(default_factory=Counter)
    granted: list[dict[str, Any]] = field(default_factory=list)  # every 201: the lease, and when it was asked
    released: list[str] = field(default_factory=list)  # every lease a release of which was answered 204
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, what: str) -> None:
        with self.lock:
            self.operations[what] += 1

    def grant(self, lease: dict[str, Any], **when: float) -> None:
        with self.lock:
            self.granted.append({**lease, **when})

    def release(self, lease_id: str) -> None:
        with self.lock:
            self.released.append(lease_id)


@dataclass
class Tables:
    events: list[Row]
    tickets: dict[int, Row]  # by seq
    leases: dict[str, Row]  # by id
    environments: dict[str, Row]  # by name


def load(database: str) -> Tables:
    """Every row the checker reads, from a `postgresql://` URL or a SQLite file (read while its server runs)."""
    queries = (
        "SELECT * FROM events ORDER BY id",
        "SELECT * FROM tickets",
        "SELECT * FROM leases",
        "SELECT name, slots, labels FROM environments",
    )
    if database.startswith("postgresql://"):
        with psycopg.connect(database, row_factory=dict_row) as conn:
            rows = [conn.execute(q).fetchall() for q in queries]
    else:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)) as conn:
            conn.row_factory = sqlite3.Row
            rows = [[dict(r) for r in conn.execute(q).fetchall()] for q in queries]
    events, tickets, leases, envs = rows
    return Tables(
        events=[dict(e) for e in events],
        tickets={t["seq"]: dict(t) for t in tickets},
        leases={x["id"]: dict(x) for x in leases},
        environments={e["name"]: dict(e) for e in envs},
    )


def check_history(database: str, record: Record) -> tuple[int, list[str]]:
    """Replay every event; returns the number checked and the violations found."""
    t = load(database)
    envs = t.environments
    labels = {name: set(json.loads(e["labels"])) for name, e in envs.items()}
    violations: list[str] = []
    live: dict[str, set[str]] = defaultdict(set)
    last_fence: dict[str, int] = {}
    waiting: dict[int, Row] = {}
    acquired_leases: Counter[str] = Counter()

    def order(seq: int) -> tuple[int, int]:
        return (-t.tickets[seq]["priority"], seq)

    def serves(env: str, ticket: Row) -> bool:
        if ticket["environment"] is not None:
            return bool(ticket["environment"] == env)
        return ticket["label"] in labels.get(env, set())

    for e in t.events:
        kind, env = e["kind"], e["environment"]
        if kind == "queued":
            waiting[e["seq"]] = t.tickets[e["seq"]]
        elif kind in ("left", "abandoned"):
            waiting.pop(e["seq"], None)
        elif kind == "acquired":
            acquired_leases[e["lease"]] += 1
            waiting.pop(e["seq"], None)
            ahead = [s for s, ticket in waiting.items() if serves(env, ticket) and order(s) < order(e["seq"])]
            if ahead:
                violations.append(f"event {e['id']}: #{e['seq']} granted {env} while #{ahead} waited ahead")
            if e["fence"] <= last_fence.get(env, 0):
                violations.append(f"event {e['id']}: fence {e['fence']} on {env} after {last_fence[env]}")
            last_fence[env] = e["fence"]
            live[env].add(e["lease"])
            if env not in envs:
                violations.append(f"event {e['id']}: acquired {env}, which is not in the table")
            elif len(live[env]) > envs[env]["slots"]:
                violations.append(f"event {e['id']}: {len(live[env])} holders on {env} of {envs[env]['slots']} slots")
        elif kind in ("released", "expired", "revoked"):
            if e["lease"] not in live[env]:
                violations.append(f"event {e['id']}: {kind} {e['lease']} on {env}, which was not live")
            live[env].discard(e["lease"])
    for got in record.granted:
        row = t.leases.get(got["id"])
        if row is None or (row["fence"], row["environment"]) != (got["fence"], got["environment"]):
            violations.append(f"201 for lease {got['id']} ({got['environment']}, fence {got['fence']}) not as stored")
        elif acquired_leases[got["id"]] != 1:
            violations.append(f"lease {got['id']} has {acquired_leases[got['id']]} acquired events")
    for lease_id in record.released:
        row = t.leases.get(lease_id)
        if row is None or row["state"] != "released":
            violations.append(f"204 for releasing {lease_id}, which is {row['state'] if row else 'not stored'}")
    active = {x["id"] for x in t.leases.values() if x["state"] == "active"}
    replayed = set().union(*live.values())
    if active != replayed:
        violations.append(f"replayed live leases differ from the table: {sorted(active ^ replayed)}")
    return len(t.events), violations
