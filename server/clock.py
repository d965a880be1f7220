"""The server's time (API.md invariant 5): a clock that wall-clock steps do not move, and what notices when the
process was not running (`Pauses`) or when a clock it reads from elsewhere jumped (`Steps`).

Why elapsed time is read on CLOCK_BOOTTIME: like CLOCK_MONOTONIC no step of the wall clock (NTP, an operator's
`date -s`) moves it, and unlike CLOCK_MONOTONIC it also counts the time a suspended host slept, which is real
time for the clients waiting on the other side. Both count the time a stopped process (SIGSTOP, a frozen VM)
does not run: that is what `Pauses` notices, from the late beats of a heartbeat.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

Seconds = Callable[[], float]

_BOOTTIME: int | None = getattr(time, "CLOCK_BOOTTIME", None)


def elapsed() -> float:
    """Seconds on a clock that no wall-clock step moves (CLOCK_BOOTTIME where there is one, else monotonic)."""
    if _BOOTTIME is not None:
        return time.clock_gettime(_BOOTTIME)
    return time.monotonic()


class Clock:
    """Seconds since the Unix epoch: the wall clock read once at start-up plus the elapsed time since, so they
    never go backwards and no step of the wall clock moves them while the process runs."""

    def __init__(self, elapsed: Seconds = elapsed) -> None:
        self._elapsed = elapsed
        self._wall0 = time.time()
        self._elapsed0 = elapsed()

    def now(self) -> float:
        return self._wall0 + (self._elapsed() - self._elapsed0)

    def not_before(self, at: float) -> float:
        """Move the clock forward to `at` when it is behind it (it continues from there); how far it moved."""
        behind = at - self.now()
        if behind <= 0:
            return 0.0
        self._wall0 += behind
        return behind


class FakeClock(Clock):
    """A clock that moves only when told to; for tests."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds

    def not_before(self, at: float) -> float:
        behind = max(0.0, at - self._now)
        self._now += behind
        return behind


class Pauses:
    """Notices that the process was not running: stopped (SIGSTOP), frozen (a VM paused or migrated), its host
    suspended, or its event loop held up for longer than `threshold` seconds.

    A heartbeat task `beat()`s every fraction of a second while the server serves; a beat that comes more than
    `threshold` after the one before means that nothing of the process ran in between. Each transaction asks
    `resumed()` before it decides anything: so whichever runs first after a resume, a held-up renew, the sweep
    or the heartbeat itself, the pause is noticed before any deadline is judged with the time that passed.
    Disarmed (nothing noticed) until the first beat and after `stop()`: without a heartbeat, a quiet spell
    between two operations is not a pause.
    """

    def __init__(self, threshold: float, elapsed: Seconds = elapsed) -> None:
        self.threshold = threshold
        self._elapsed = elapsed
        self._last: float | None = None
        self._gap = 0.0
        self._lock = threading.Lock()  # transactions ask from the store's worker threads

    def beat(self) -> None:
        with self._lock:
            now = self._elapsed()
            if self._last is None:
                self._last = now  # armed
            else:
                self._note(now)

    def stop(self) -> None:
        with self._lock:
            self._last = None

    def resumed(self) -> float:
        """How long the process was not running, if it was not since the last call (else 0): once per pause."""
        with self._lock:
            self._note(self._elapsed())
            gap, self._gap = self._gap, 0.0
            return gap

    def _note(self, now: float) -> None:
        """The process runs at `now` (a beat, or a transaction on a worker thread)."""
        if self._last is None:
            return
        if now - self._last > self.threshold:
            self._gap = max(self._gap, now - self._last)
        self._last = max(self._last, now)


class Steps:
    """Notices a step of a clock the server reads from elsewhere (PostgreSQL's), against its own elapsed time.

    Each reading comes with the elapsed time just before and just after it was taken, so the instant it
    describes lies between the two. Between two readings the clock must have moved as much as the elapsed time
    did, give or take `tolerance` and the two readings' own spans; more or less than that is a step. A reading
    with no step becomes the one the next is compared with; one with a step does not (the caller corrects the
    clock and reads it again). Slow drift is followed, not taken out: readings come every fraction of a second
    (the background sweep is one), so NTP's slewing never adds up to a step between two of them.
    """

    def __init__(self, tolerance: float) -> None:
        self.tolerance = tolerance
        self._last: tuple[float, float, float] | None = None
        self._lock = threading.Lock()  # readings come from every worker thread

    def step(self, reading: float, before: float, after: float) -> float:
        """How far `reading` jumped beyond the elapsed time since the last reading (0.0 when it did not)."""
        with self._lock:
            last = self._last
            if last is not None:
                last_reading, last_before, last_after = last
                passed = ((before + after) - (last_before + last_after)) / 2
                slack = ((after - before) + (last_after - last_before)) / 2
                jump = (reading - last_reading) - passed
                if abs(jump) > self.tolerance + slack:
                    return jump
                if before < last_before:
                    return 0.0  # an older reading than the last one (another thread's, late): keep the newer
            self._last = (reading, before, after)
            return 0.0
