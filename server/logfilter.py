"""A logging filter that lets the same warning or error through a few times a second, not thousands.

Out of open files, asyncio's accept loop (selector_events._accept_connection, Python 3.11) logs one
"socket.accept() out of system resource" record with its traceback for every accept it tries (up to the
listen backlog, 2,048 with uvicorn) and retries a second later, again and again: 89,317 tracebacks in 17 s
in the fault campaign of issue 12. A client can provoke uvicorn's "Invalid HTTP request received." as fast
as it can send. This filter, on the root logger's handlers, keeps those floods out of the log while every
record below WARNING (one per lease transition) passes untouched.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from .constants import LOG_REPEAT_WINDOW, LOG_REPEATS

_MAX_KEYS = 1024  # distinct messages remembered at once; older windows are forgotten first


@dataclass
class _Window:
    started: float
    passed: int = 0
    dropped: int = 0


class RepeatLimit(logging.Filter):
    """Passes at most `repeats` records per `window` seconds for one logger, level and message (its template,
    before arguments, up to the first line); tells how many it dropped on the next record it passes."""

    def __init__(
        self,
        repeats: int = LOG_REPEATS,
        window: float = LOG_REPEAT_WINDOW,
        level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._repeats = repeats
        self._window = window
        self._level = level
        self._clock = clock
        self._windows: dict[tuple[str, int, str], _Window] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self._level:
            return True
        now = self._clock()
        key = (record.name, record.levelno, str(record.msg).split("\n", 1)[0])
        window = self._windows.get(key)
        if window is None or now - window.started >= self._window:
            dropped = window.dropped if window is not None else 0
            window = self._windows[key] = _Window(started=now)
            self._forget_old(now)
            if dropped:
                # The note goes after the message's first line, so a traceback still follows the message.
                first, newline, rest = str(record.msg).partition("\n")
                record.msg = f"{first} [{dropped} more like this were not logged]{newline}{rest}"
        if window.passed >= self._repeats:
            window.dropped += 1
            return False
        window.passed += 1
        return True

    def _forget_old(self, now: float) -> None:
        if len(self._windows) <= _MAX_KEYS:
            return
        for key in [k for k, w in self._windows.items() if now - w.started >= self._window]:
            del self._windows[key]
        if len(self._windows) > _MAX_KEYS:
            self._windows.clear()
