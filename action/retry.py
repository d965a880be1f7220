"""The retry policy: which failures are worth another try, how long to wait, when to stop.

Retried: no answer at all (connection refused or reset, timeouts) and 502/503/504, which say
that the server or a proxy in front of it is restarting or overloaded. Never a 4xx: the
server decided, and asking again changes nothing. Every retry is safe because every write the
client sends is idempotent: acquires carry a `request_id`, releases and leaves answer 204 again.

Backoff is exponential with jitter (many pipelines that lost the same server must not come
back in one burst) and never sleeps past the caller's deadline: the last try happens at it.
Time is read from the injected clock and slept with the injected sleep, so tests never wait.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import tenacity

from .constants import RETRY_BACKOFF_FIRST, RETRY_BACKOFF_MAX
from .errors import APIError, CallMeError, TransportError

logger = logging.getLogger("callme.client")

_T = TypeVar("_T")

RETRYABLE_STATUSES = frozenset({502, 503, 504})


def is_retryable(error: BaseException) -> bool:
    """A failure that may pass by itself: no answer, or a gateway or store that is down."""
    if isinstance(error, TransportError):
        return True
    return isinstance(error, APIError) and error.status in RETRYABLE_STATUSES


class _StopAtDeadline(tenacity.stop.stop_base):
    def __init__(self, deadline: float, clock: Callable[[], float]) -> None:
        self.deadline = deadline
        self.clock = clock

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        return self.clock() >= self.deadline


class _WaitUntilDeadline(tenacity.wait.wait_base):
    def __init__(self, inner: tenacity.wait.wait_base, deadline: float, clock: Callable[[], float]) -> None:
        self.inner = inner
        self.deadline = deadline
        self.clock = clock

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        return max(0.0, min(self.inner(retry_state), self.deadline - self.clock()))


def call_with_retries(
    attempt: Callable[[], _T],
    *,
    deadline: float,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    what: str,
) -> _T:
    """Call `attempt` until it returns, fails for good, or `deadline` (on `clock`) has passed.

    The last error is raised as it was, so callers see the client's own exceptions.
    """

    def log_retry(retry_state: tenacity.RetryCallState) -> None:
        error = retry_state.outcome.exception() if retry_state.outcome else None
        logger.warning("%s failed (%s); retrying in %.1fs", what, _short(error), retry_state.upcoming_sleep)

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(is_retryable),
        stop=_StopAtDeadline(deadline, clock),
        wait=_WaitUntilDeadline(
            tenacity.wait_exponential(multiplier=RETRY_BACKOFF_FIRST, max=RETRY_BACKOFF_MAX)
            + tenacity.wait_random(0, RETRY_BACKOFF_FIRST),
            deadline,
            clock,
        ),
        sleep=sleep,
        before_sleep=log_retry,
        reraise=True,
    )
    return retrying(attempt)


def _short(error: BaseException | None) -> str:
    if isinstance(error, CallMeError):
        return error.message
    return repr(error)
