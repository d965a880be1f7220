"""Releasing on the way out of something else: a lease that already ended is reported, not raised.

The CLI's `release`, the Action's steps and `Client.lease` all release as the last thing they
do. A lease that had already ended (410 lease_gone: expired or revoked) frees nothing, but is
no reason to fail there: the slot is free either way. Each caller says so in its own words and
in its own place (a log line, a workflow warning), so the words come from callbacks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import CallMeError, LeaseGone

if TYPE_CHECKING:
    from .client import Client
    from .models import Group, Lease


def release_or_report(
    client: Client,
    lease: Lease | Group | str,
    *,
    token: str | None = None,
    on_ended: Callable[[LeaseGone], None],
    on_error: Callable[[CallMeError], None] | None = None,
) -> bool:
    """Release `lease` (with `token`, or its own); True when this call released it.

    A lease that had already ended goes to `on_ended`. Any other error goes to `on_error` when
    given, else it is raised as it was.
    """
    try:
        client.release(lease, token=token)
    except LeaseGone as gone:
        on_ended(gone)
        return False
    except CallMeError as exc:
        if on_error is None:
            raise
        on_error(exc)
        return False
    return True
