"""The client's exceptions: one tree, keyed by the `code`s of API.md.

    CallMeError
    ├── ConfigError               no URL or key to talk to a server with
    │   ├── BadKey                the key cannot be sent (not printable ASCII)
    │   └── StateFileDamaged      the CLI's file of leases taken here cannot be read
    ├── TransportError            no answer, even after retries
    │   ├── ConnectError          refused, unresolvable, reset
    │   └── RequestTimeout        connected, but no answer in time
    ├── APIError                  the server answered with an error (.status, .code, .detail)
    │   ├── Unauthorized          401 unauthorized
    │   ├── Forbidden             403 forbidden
    │   ├── WrongToken            403 wrong_token
    │   ├── NotFound              404 not_found
    │   ├── NoRoute               404 for a path that has no route: the URL is wrong, not the name
    │   ├── NotGranted            409, and `queue` was false (.holders)
    │   │   ├── Busy              409 busy
    │   │   └── Maintenance       409 maintenance
    │   ├── Conflict              409 conflict
    │   ├── Gone                  410
    │   │   ├── TicketGone        410 ticket_gone
    │   │   └── LeaseGone         410 lease_gone
    │   ├── TooLarge              413 too_large
    │   ├── Invalid               400 / 422 invalid
    │   ├── Unavailable           503 unavailable
    │   └── UnexpectedResponse    any other answer the contract does not describe
    ├── WaitTimeout               the caller's timeout passed in the queue (the queue was left)
    └── LeaseLost                 a held lease could not be renewed and has ended or may end

Every error carries `context`: the request (method and path, secrets cut out) and what it was
about (environment, label, lease id). The API key, lease tokens and ticket ids never appear in
an error, its message or its repr: tickets are secrets too (API.md, "Words").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from .models import Lease


class CallMeError(Exception):
    """Root of every error the client raises."""

    #: What the error means for the caller; the message says what happened.
    meaning: ClassVar[str] = ""
    #: What to do about it, for people (the CLI prints it after the message).
    hint: ClassVar[str] = ""

    def __init__(self, message: str, *, context: Mapping[str, object] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.context: dict[str, object] = dict(context or {})

    def __str__(self) -> str:
        where = _describe(self.context)
        text = f"{self.message} ({where})" if where else self.message
        return f"{text}; {self.meaning}" if self.meaning else text


class ConfigError(CallMeError):
    hint = "set CALL_ME_URL and CALL_ME_API_KEY (or the original HOST and API_KEY), or pass --url and --api-key"


class BadKey(ConfigError):
    """The API key cannot be sent at all (not printable ASCII); the message never shows it."""

    hint = "check CALL_ME_API_KEY (or API_KEY, --api-key)"


class StateFileDamaged(ConfigError):
    hint = "delete the file: the leases it listed expire by their TTL, or release them with --lease and --token"


class TransportError(CallMeError):
    meaning = "the server is down, restarting or out of reach"
    hint = "check the URL (CALL_ME_URL or HOST) and that the server runs; --retry-for waits longer"


class ConnectError(TransportError):
    pass


class UnknownHost(ConnectError):
    """The server's name does not resolve at all (not a passing DNS failure): retrying cannot help."""

    retryable = False
    meaning = "the server's host name is unknown"
    hint = "check the host in CALL_ME_URL or HOST"


class TLSMismatch(ConnectError):
    """The TLS handshake failed for good: https:// to a plain-http server, or a certificate not trusted."""

    retryable = False
    meaning = "the TLS handshake with the server failed"
    hint = "check the scheme of CALL_ME_URL (http:// or https://) and that the server's certificate is trusted"


class RequestTimeout(TransportError):
    meaning = "the server or the network is too slow or stuck"


class APIError(CallMeError):
    """The server answered with an error; `code` is API.md's slug ("" when the answer had none)."""

    default_code: ClassVar[str] = ""
    meaning = "the server refused the request"

    def __init__(
        self,
        status: int,
        detail: str = "",
        *,
        code: str | None = None,
        context: Mapping[str, object] | None = None,
    ) -> None:
        self.status = status
        self.code = code if code is not None else self.default_code
        self.detail = detail
        super().__init__(self._labelled(detail), context=context)

    def _labelled(self, detail: str) -> str:
        label = f"{self.status} {self.code}".strip()
        return f"{detail or 'no detail given'} [{label}]"

    def describe(self, detail: str, *, meaning: bool = True) -> str:
        """This error as `str()` shows it, with `detail` in place of the server's (a part of it, or our words)."""
        where = _describe(self.context)
        text = self._labelled(detail) + (f" ({where})" if where else "")
        return f"{text}; {self.meaning}" if meaning and self.meaning else text


class Unauthorized(APIError):
    default_code = "unauthorized"
    meaning = "the server does not know the API key"
    hint = "check CALL_ME_API_KEY (or API_KEY)"


class Forbidden(APIError):
    default_code = "forbidden"
    meaning = "the API key lacks the role this needs"
    hint = "use a key with the right role (client to acquire, admin to manage environments)"


class WrongToken(APIError):
    default_code = "wrong_token"
    meaning = "the lease token does not belong to this lease"
    hint = "pass the token that the acquire returned (--token), or release by environment name"


class NotFound(APIError):
    default_code = "not_found"
    meaning = "it does not exist on this server"
    hint = "check the name with `call-me status`"


class NoRoute(APIError):
    """A 404 for the route itself (not for a name): the URL's path is not the server's root, or it is not
    call-me answering at all (a proxy's own 404)."""

    meaning = "the URL does not lead to a call-me server's API"
    hint = "check CALL_ME_URL (or HOST, --url): the server's root, with no path, e.g. https://callme.example.com"


class NotGranted(APIError):
    """Not granted at once, and the request said not to queue."""

    def __init__(
        self,
        status: int,
        detail: str = "",
        *,
        code: str | None = None,
        context: Mapping[str, object] | None = None,
        holders: Sequence[Lease] = (),
    ) -> None:
        super().__init__(status, detail, code=code, context=context)
        self.holders: tuple[Lease, ...] = tuple(holders)


class Busy(NotGranted):
    default_code = "busy"
    meaning = "every slot is held"
    hint = "wait for it (leave out --no-wait) or pick another environment"


class Maintenance(NotGranted):
    default_code = "maintenance"
    meaning = "the environment is in maintenance and grants nothing new"
    hint = "wait for the maintenance to end or pick another environment"


class Conflict(APIError):
    default_code = "conflict"
    meaning = "it is in use"
    hint = "release its leases and empty its queue first, or pass --force"


class Gone(APIError):
    meaning = "it has ended"


class TicketGone(Gone):
    default_code = "ticket_gone"
    meaning = "the place in the queue is gone (left, abandoned, or its lease ended)"
    hint = "request again"


class LeaseGone(Gone):
    default_code = "lease_gone"
    meaning = "the lease has already ended"
    hint = "request the environment again (if it expired: a longer --ttl, or renew sooner)"


class TooLarge(APIError):
    default_code = "too_large"
    meaning = "the request body is over the server's limit"
    hint = "send less metadata"


class Invalid(APIError):
    default_code = "invalid"
    meaning = "the server refused the input"
    hint = "fix the value the message names"


class Unavailable(APIError):
    default_code = "unavailable"
    meaning = "the server cannot reach its store"
    hint = "try again later or tell the server's operators"


class UnexpectedResponse(APIError):
    meaning = "the server answered in a way the API contract does not describe"
    hint = "check that the URL points at a call-me server of a matching version"


class WaitTimeout(CallMeError):
    """The caller's timeout passed while waiting; the ticket was given back."""

    meaning = "gave up waiting and left the queue"
    hint = "try again later, or give --timeout more time"

    def __init__(
        self,
        message: str,
        *,
        context: Mapping[str, object] | None = None,
        position: int | None = None,
        holders: Sequence[Lease] = (),
    ) -> None:
        super().__init__(message, context=context)
        self.position = position
        self.holders: tuple[Lease, ...] = tuple(holders)


class LeaseLost(CallMeError):
    """A held lease could not be renewed; whatever it protected may no longer be exclusive."""

    meaning = "the environment may be in use by someone else now"
    hint = "run again; if it repeats, check the server's reachability and the lease's TTL"


_BY_CODE: dict[str, type[APIError]] = {
    cls.default_code: cls
    for cls in (
        Unauthorized,
        Forbidden,
        WrongToken,
        NotFound,
        Busy,
        Maintenance,
        Conflict,
        TicketGone,
        LeaseGone,
        TooLarge,
        Invalid,
        Unavailable,
    )
}

# For answers without a known code: the original /maybe routes answer with empty bodies.
_BY_STATUS: dict[int, type[APIError]] = {
    400: Invalid,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: Gone,
    413: TooLarge,
    422: Invalid,
    503: Unavailable,
}


def error_class(status: int, code: str | None) -> type[APIError]:
    """The exception class for an error answer: by its `code`, else by its status."""
    if code and code in _BY_CODE:
        return _BY_CODE[code]
    return _BY_STATUS.get(status, UnexpectedResponse)


def _describe(context: Mapping[str, object]) -> str:
    parts = []
    if "request" in context:
        parts.append(str(context["request"]))
    parts.extend(f"{key}={value}" for key, value in context.items() if key != "request")
    return ", ".join(parts)
