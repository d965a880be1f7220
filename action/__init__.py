"""callme.client: everything that runs inside a pipeline, around one `Client`.

The names below are the public API (pinned by tests/test_client_api.py). They are loaded on
first use, so that `call-me --help` does not pay for httpx.
"""

from __future__ import annotations

import importlib

# Not typing.TYPE_CHECKING: importing typing costs every console script ~2 ms, and type checkers
# take any constant of this name as True.
TYPE_CHECKING = False

if TYPE_CHECKING:
    from typing import Any

    from .client import Client
    from .errors import (
        APIError,
        Busy,
        CallMeError,
        ConfigError,
        Conflict,
        ConnectError,
        Forbidden,
        Gone,
        Invalid,
        LeaseGone,
        LeaseLost,
        Maintenance,
        NoRoute,
        NotFound,
        NotGranted,
        RequestTimeout,
        StateFileDamaged,
        TicketGone,
        TooLarge,
        TransportError,
        Unauthorized,
        Unavailable,
        UnexpectedResponse,
        WaitTimeout,
        WrongToken,
    )
    from .keeper import HeldLease
    from .models import Environment, Event, Group, Lease, QueueEntry, Waiting

__all__ = [
    "APIError",
    "Busy",
    "CallMeError",
    "Client",
    "ConfigError",
    "Conflict",
    "ConnectError",
    "Environment",
    "Event",
    "Forbidden",
    "Gone",
    "Group",
    "HeldLease",
    "Invalid",
    "Lease",
    "LeaseGone",
    "LeaseLost",
    "Maintenance",
    "NoRoute",
    "NotFound",
    "NotGranted",
    "QueueEntry",
    "RequestTimeout",
    "StateFileDamaged",
    "TicketGone",
    "TooLarge",
    "TransportError",
    "Unauthorized",
    "Unavailable",
    "UnexpectedResponse",
    "WaitTimeout",
    "Waiting",
    "WrongToken",
]

_MODULES = {
    "Client": ".client",
    "HeldLease": ".keeper",
    **dict.fromkeys(("Environment", "Event", "Group", "Lease", "QueueEntry", "Waiting"), ".models"),
}


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name, ".errors" if name in __all__ else None)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
