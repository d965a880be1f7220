"""The server's clock (API.md invariant 5): wall time read once at start-up plus monotonic time since."""

from __future__ import annotations

import time


class Clock:
    """Seconds since the Unix epoch that never go backwards while the process runs."""

    def __init__(self) -> None:
        self._wall0 = time.time()
        self._mono0 = time.monotonic()

    def now(self) -> float:
        return self._wall0 + (time.monotonic() - self._mono0)


class FakeClock(Clock):
    """A clock that moves only when told to; for tests."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds
