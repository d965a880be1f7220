"""PostgreSQL's clock as the server's, with its steps taken out (API.md invariant 5).

Every replica reads the database's clock, `clock_timestamp()`, in the first statement of each transaction: one
clock for all of them. A step of that clock (NTP, an operator's `date -s`, a VM restored) would move every
deadline at once: +1 h expires every lease and abandons every waiter, -1 h gives every lease an hour more, and
the history runs backwards. So the server's time is the database's clock plus an offset kept in the database
(`meta.clock_offset`, absent while 0), read in the same statement, so that every replica applies the same one.

How a step is taken out once, whichever replicas see it: each replica compares every reading with its own
elapsed time (`clock.Steps`). One that sees a step moves the offset by it, compare-and-set on the value it read,
commits that alone, and reads again. Another replica that saw the same step finds the value changed (its UPDATE
waits for the first one's and then matches nothing), reads again, and, with the new offset in its reading, sees
no step. No operation decides with a reading that jumped.

At start-up a replica never starts behind the newest time the database holds (a step back while no replica
ran, or the database restored on a host whose clock is behind): the offset is raised to that time.

What this leaves: a step forward while no replica runs looks like downtime, and the start-up floor is what
protects holders then. The offset stays once taken: the server's times stay continuous, and differ from the
database's clock by it (logged with each step). With every replica stopped, an operator may clear it
(`DELETE FROM meta WHERE key = 'clock_offset'`); the next start-up still never starts behind the history.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg.rows import DictRow

from ..clock import Clock, Seconds, Steps
from ..constants import CLOCK_STEP_TOLERANCE

log = logging.getLogger("callme.store")
Connection = psycopg.Connection[DictRow]

_READ = (
    "SELECT extract(epoch FROM clock_timestamp())::float8 AS now, "
    "(SELECT value FROM meta WHERE key = 'clock_offset') AS clock_offset"
)
BEGIN = _READ + ", set_config('lock_timeout', %s, true), set_config('idle_in_transaction_session_timeout', %s, true)"
# The newest time the database holds: its last event, or the last renewal of a live lease (a renewal records none).
_NEWEST = (
    "SELECT GREATEST((SELECT at FROM events ORDER BY id DESC LIMIT 1),"
    " (SELECT max(touched_at) FROM leases WHERE state = 'active')) AS newest"
)


class DatabaseClock:
    """The server's time on PostgreSQL: `clock_timestamp()` plus the offset all replicas share."""

    def __init__(self, elapsed: Seconds, fake: Clock | None = None) -> None:
        self._elapsed = elapsed
        self._fake = fake  # tests only: a FakeClock instead of the database's clock
        self._steps = Steps(CLOCK_STEP_TOLERANCE)

    def begin(self, conn: Connection, timeouts: tuple[str, str], *, read_only: bool = False) -> float | None:
        """The first statement of a transaction: its time, or None when a step was just taken out and committed
        (the transaction is over: run it again). A transaction that only reads cannot take a step out: it goes on
        with its reading as the offset would make it, and the next transaction that writes takes the step out."""
        before = self._elapsed()
        row = conn.execute(BEGIN, timeouts).fetchone()
        after = self._elapsed()
        assert row is not None
        reading = self._reading(row)
        jump = self._steps.step(reading, before, after)
        if jump and read_only:
            return reading - jump
        if jump:
            self._move(conn, row["clock_offset"], -jump, f"the database's clock stepped by {jump:+.1f} s")
            conn.commit()
            return None
        return reading

    def open(self, conn: Connection) -> float:
        """At start-up, inside the migration's transaction: the time to start from, never behind the history."""
        row = conn.execute(_READ).fetchone()
        newest = conn.execute(_NEWEST).fetchone()
        assert row is not None
        assert newest is not None
        reading = self._reading(row)
        if newest["newest"] is None:
            return reading
        behind = float(newest["newest"]) - reading
        if behind > CLOCK_STEP_TOLERANCE:
            self._move(conn, row["clock_offset"], behind, f"the database's clock is {behind:.1f} s behind its history")
        return max(reading, float(newest["newest"]))

    def _reading(self, row: dict[str, Any]) -> float:
        now = self._fake.now() if self._fake is not None else float(row["now"])
        return now + float(row["clock_offset"] or 0.0)

    @staticmethod
    def _move(conn: Connection, offset: str | None, by: float, why: str) -> None:
        """Move the shared offset by `by`, unless another replica moved it since it was read as `offset`."""
        value = repr(float(offset or 0.0) + by)
        if offset is None:
            cursor = conn.execute("INSERT INTO meta VALUES ('clock_offset', %s) ON CONFLICT (key) DO NOTHING", (value,))
        else:
            cursor = conn.execute(
                "UPDATE meta SET value = %s WHERE key = 'clock_offset' AND value = %s", (value, offset)
            )
        if cursor.rowcount == 1:
            log.warning(
                "event=clock_step offset=%s: %s; the server's clock does not follow it (its times stay continuous, "
                "and differ from the database's clock by the offset)",
                value, why,
            )  # fmt: skip
