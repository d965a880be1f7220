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
from typing import TYPE_CHECKING, TypeVar

from .constants import RETRY_BACKOFF_FIRST, RETRY_BACKOFF_MAX
from .errors import APIError, CallMeError, TransportError

if TYPE_CHECKING:
    import tenacity

logger = logging.getLogger("callme.client")

_T = TypeVar("_T")

RETRYABLE_STATUSES = frozenset({502, 503, 504})


def is_retryable(error: BaseException) -> bool:
    """A failure that may pass by itself: no answer, or a gateway or store that is down."""
    if isinstance(error, TransportError):
        return getattr(error, "retryable", True)  # an unknown host or a TLS mismatch will not heal by itself
    return isinstance(error, APIError) and error.status in RETRYABLE_STATUSES


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
    # Most calls succeed at once, and tenacity costs a command-line run ~5 ms to import: it
    # loads at the first failure worth retrying, and takes over from there.
    try:
        return attempt()
    except Exception as error:
        if not is_retryable(error) or clock() >= deadline:
            raise
        first_failure = error
    return _retrying(deadline, clock, sleep, what)(_replaying(first_failure, attempt))


def _replaying(failure: Exception, attempt: Callable[[], _T]) -> Callable[[], _T]:
    """`attempt`, whose first call raises `failure` again: tenacity sees the failure that already
    happened as its own first attempt, so its attempt numbers, backoff and log line are unchanged."""
    pending = [failure]

    def replay_then_attempt() -> _T:
        if pending:
            raise pending.pop()
        return attempt()

    return replay_then_attempt


def _retrying(
    deadline: float, clock: Callable[[], float], sleep: Callable[[float], None], what: str
) -> tenacity.Retrying:
    import tenacity

    def stop_at_deadline(retry_state: tenacity.RetryCallState) -> bool:
        return clock() >= deadline

    backoff = tenacity.wait_exponential(multiplier=RETRY_BACKOFF_FIRST, max=RETRY_BACKOFF_MAX)
    jitter = tenacity.wait_random(0, RETRY_BACKOFF_FIRST)

    def wait_until_deadline(retry_state: tenacity.RetryCallState) -> float:
        return max(0.0, min(backoff(retry_state) + jitter(retry_state), deadline - clock()))

    def log_retry(retry_state: tenacity.RetryCallState) -> None:
        error = retry_state.outcome.exception() if retry_state.outcome else None
        # The first warning says for how long it will go on: an unreachable server looks hung otherwise.
        left = (
            f" (for up to {max(0.0, deadline - clock()):.0f}s more: --retry-for)"
            if retry_state.attempt_number == 1
            else ""
        )
        logger.warning("%s failed (%s); retrying in %.1fs%s", what, _short(error), retry_state.upcoming_sleep, left)

    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(is_retryable),
        stop=stop_at_deadline,
        wait=wait_until_deadline,
        sleep=sleep,
        before_sleep=log_retry,
        reraise=True,
    )


def _short(error: BaseException | None) -> str:
    if isinstance(error, CallMeError):
        return error.message
    return repr(error)
