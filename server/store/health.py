"""Whether a store accepts writes, as its last attempts showed: what /readyz answers (API.md: 200 when the store
answers and accepts writes, else 503 with the reason).

Why writes and not a ping: with a full disk, a read-only file system or a PostgreSQL that became a read-only
standby, every read still works while every change fails; a readiness that only reads says 200 for a server
that can grant nothing.

    ready ──a write fails──► failing (reason) ──a write succeeds──► ready
      └──────── the database is not the one this process opened ────────► broken (reason), until a restart

- The store reports the outcome of its write attempts (`failed`, `succeeded`). SQLite knows which of its
  commits wrote something; PostgreSQL reports its failures, and the success of its own probes only (a read that
  succeeds says nothing about writes, and counting it would make a read-only standby flap).
- `readiness(probe)` answers from that. When no outcome is newer than READY_PROBE_INTERVAL (an idle server, or
  one whose last write failed and that nobody has written to since), it first runs `probe`, a small write of the
  store's own: a disk that filled up while the server was idle is noticed, and so is one that was freed, without
  a restart. One probe at a time and at most one per interval: /readyz needs no key, and must not become a way to
  make the server write as fast as anyone can ask.
- Broken is latched: what was acknowledged after the database went away is not in the database now, and what
  would be acknowledged next would not be either. Only a restart ends it (and looks again: sqlite_file.py).
- Each change of state is logged once, not once per request.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable

from ..constants import READY_PROBE_INTERVAL
from .base import StoreBroken, StoreError

log = logging.getLogger("callme.store")


class WriteHealth:
    """Ready, failing or broken; called from the store's worker threads and from the event loop."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, interval: float = READY_PROBE_INTERVAL) -> None:
        self._clock = clock
        self._interval = interval
        self._lock = threading.Lock()
        self._failure: str | None = None
        self._broken: str | None = None
        self._known_at = -math.inf  # when the last write outcome (a store's own, or a probe's) was known
        self._probed_at = -math.inf
        self._probing = False

    @property
    def broken(self) -> str | None:
        return self._broken

    def reason(self) -> str | None:
        """None when ready, else why not."""
        if self._broken is not None:
            return self._broken
        if self._failure is not None:
            return f"the last write failed ({self._failure}); ready again once a write succeeds"
        return None

    def succeeded(self) -> None:
        with self._lock:
            self._known_at = self._clock()
            was, self._failure = self._failure, None
        if was is not None:
            log.info("event=writes_recovered was=%r", was)

    def failed(self, reason: str) -> None:
        with self._lock:
            self._known_at = self._clock()
            was, self._failure = self._failure, reason
        if was is None:
            log.warning("event=writes_failing reason=%r", reason)

    def break_(self, reason: str) -> StoreBroken:
        """Latch broken (the first reason stays) and return the error to raise; logged the first time only."""
        with self._lock:
            first = self._broken is None
            if first:
                self._broken = reason
            latched = self._broken
        if first:
            log.error("event=store_broken reason=%r", reason)
        assert latched is not None
        return StoreBroken(latched)

    async def readiness(self, probe: Callable[[], Awaitable[object]]) -> str | None:
        """The reason the store is not ready, or None; runs `probe` first when what is known is too old."""
        if self._broken is not None:
            return self._broken
        now = self._clock()
        if not self._probing and min(now - self._known_at, now - self._probed_at) >= self._interval:
            self._probing, self._probed_at = True, now
            try:
                await probe()
            except StoreError as exc:
                if self.reason() is None:  # the store records why a write failed; anything else is recorded here
                    self.failed(str(exc))
            finally:
                self._probing = False
        return self.reason()
