"""Errors of the server, each with its HTTP status and the stable `code` of API.md.

    CallMeError
    ├── Unauthorized       401 unauthorized
    ├── Forbidden          403 forbidden
    │   └── FormRefused    403 forbidden     (a dashboard form from elsewhere, or without its token)
    ├── WrongToken         403 wrong_token
    ├── NotFound           404 not_found
    ├── MethodNotAllowed   405 invalid
    ├── Busy               409 busy          (carries the holders)
    ├── Maintenance        409 maintenance
    ├── Conflict           409 conflict
    ├── TicketGone         410 ticket_gone
    ├── LeaseGone          410 lease_gone
    ├── TooLarge           413 too_large
    ├── BadJSON            400 invalid
    ├── Invalid            422 invalid       (names the field)
    ├── Unavailable        503 unavailable
    │   └── AtCapacity     503 unavailable   (beyond CALL_ME_MAX_CONNECTIONS)
    ├── RequestTimeout     408 invalid       (not sent whole within CALL_ME_READ_TIMEOUT)
    └── HeadersTooLarge    431 too_large

The last three are answered by the connection (server/connections.py) before the app sees a request.

ConfigError is separate: it stops start-up with one line and never reaches a client.
"""

from __future__ import annotations

from typing import Any


class CallMeError(Exception):
    status = 500
    code = "internal"
    title = "Internal error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class Unauthorized(CallMeError):
    status, code, title = 401, "unauthorized", "Missing or unknown API key"


class Forbidden(CallMeError):
    status, code, title = 403, "forbidden", "The key's role does not allow this"


class FormRefused(Forbidden):
    title = "Form refused"


class WrongToken(CallMeError):
    status, code, title = 403, "wrong_token", "Wrong lease token"


class NotFound(CallMeError):
    status, code, title = 404, "not_found", "Not found"


class MethodNotAllowed(CallMeError):
    status, code, title = 405, "invalid", "Method not allowed"


class Busy(CallMeError):
    status, code, title = 409, "busy", "No free slot"


class Maintenance(CallMeError):
    status, code, title = 409, "maintenance", "Environment in maintenance"


class Conflict(CallMeError):
    status, code, title = 409, "conflict", "Conflict"


class TicketGone(CallMeError):
    status, code, title = 410, "ticket_gone", "Ticket gone"


class LeaseGone(CallMeError):
    status, code, title = 410, "lease_gone", "Lease gone"


class TooLarge(CallMeError):
    status, code, title = 413, "too_large", "Request body too large"


class BadJSON(CallMeError):
    status, code, title = 400, "invalid", "Body is not valid JSON"


class Invalid(CallMeError):
    status, code, title = 422, "invalid", "Invalid request"

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}", field=field)
        self.field = field


class Unavailable(CallMeError):
    status, code, title = 503, "unavailable", "Store unavailable"


class AtCapacity(Unavailable):
    title = "Too many connections"


class RequestTimeout(CallMeError):
    status, code, title = 408, "invalid", "Request not sent in time"


class HeadersTooLarge(CallMeError):
    status, code, title = 431, "too_large", "Request header fields too large"


class ConfigError(Exception):
    """A setting or the configuration file is wrong; start-up stops with this one line."""
