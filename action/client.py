"""`Client`: every call of API.md, with retries, mapped errors and typed answers."""

from __future__ import annotations

import socket
import ssl
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, TypeVar, overload
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from .constants import (
    CLEANUP_RETRY_FOR,
    HEADER_API_KEY,
    HEADER_LEASE_TOKEN,
    LONG_POLL,
    LONG_POLL_READ_MARGIN,
    REQUEST_TIMEOUT,
    RETRY_FOR,
)
from .errors import (
    APIError,
    BadKey,
    CallMeError,
    ConnectError,
    NotFound,
    RequestTimeout,
    TLSMismatch,
    TransportError,
    UnexpectedResponse,
    UnknownHost,
)
from .models import JSON, Environment, Event, Group, Lease, MalformedAnswer, Waiting
from .responses import error_from, json_object, parse, parse_item, unexpected
from .retry import call_with_retries

if TYPE_CHECKING:
    from .keeper import HeldLease

__all__ = ["Client"]

_T = TypeVar("_T")

_USER_AGENT = "call-me-client/0.1 (+callme.client)"


class Client:
    """A connection to one call-me server with one API key.

    `timeout` bounds one HTTP exchange (long-polls get their `wait` on top); `retry_for` bounds
    how long one call keeps retrying through an outage. `sleep` and `clock` (monotonic seconds)
    are injectable so tests never wait; `transport` takes any httpx transport.
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: float = REQUEST_TIMEOUT,
        retry_for: float = RETRY_FOR,
        long_poll: float = LONG_POLL,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        api_key = sendable_key(api_key)
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retry_for = retry_for
        self.long_poll = long_poll
        self.sleep = sleep
        self.clock = clock
        self._http = httpx.Client(
            base_url=self.url,
            headers={HEADER_API_KEY: api_key, "User-Agent": _USER_AGENT, "Accept": "application/json"},
            timeout=timeout,
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"Client({_without_userinfo(self.url)!r})"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # Acquire, renew, release.

    def acquire(
        self,
        environment: str | None = None,
        *,
        label: str | None = None,
        ttl: int | None = None,
        holder: str | None = None,
        priority: int | None = None,
        metadata: Mapping[str, Any] | None = None,
        wait: bool = True,
        timeout: float | None = None,
        on_wait: Callable[[Waiting], None] | None = None,
        on_request: Callable[[JSON], None] | None = None,
        also: Sequence[tuple[str | None, str | None]] = (),
    ) -> Lease | Group:
        """Acquire a slot of `environment`, or of any environment carrying `label`; with `also` (more
        (environment, label) parts, one of the two set in each), every part at once: a Group.

        With `wait` (the default) it queues and long-polls until granted, calling `on_wait` with
        each 202 (the first one at once, without long-polling); `timeout` seconds bound the
        whole wait (None: no bound), after which it leaves the queue and raises WaitTimeout.
        Interrupted (KeyboardInterrupt, a cancelled job, an error in `on_wait`), it leaves the
        queue before the exception goes on. Without `wait` it does not queue: Busy or
        Maintenance when no slot is free now.

        `on_request` gets the request (its `request_id` and the fields a repeat must match) before
        the first POST under each request_id: a process that may be killed saves it there, so
        that whoever runs after it can `withdraw` what it made. When `on_request` raises, that
        request is not sent.
        """
        from .acquire import Acquisition

        body: JSON = {"request_id": str(uuid.uuid4())}
        if (environment is None) == (label is None):
            raise ValueError("give exactly one of environment and label")
        first: JSON = {"environment": environment} if environment is not None else {"label": label}
        if also:
            body["all"] = [first, *({"environment": e} if e is not None else {"label": lb} for e, lb in also)]
        else:
            body.update(first)
        optional = {"ttl": ttl, "holder": holder, "priority": priority, "metadata": metadata}
        body.update({key: value for key, value in optional.items() if value is not None})
        return Acquisition(self, body, wait=wait, timeout=timeout, on_wait=on_wait, on_request=on_request).run()

    def withdraw(self, request: Mapping[str, Any]) -> Lease | Group | Waiting | None:
        """Give back what an acquire's `request` (as `on_request` got it) made: release its lease or
        leave its place; returns what was given back, None when it held nothing.

        The request is sent again with `queue: false` and `wait: 0`: one the server never saw
        takes no place now, and a lease granted to it at once is released at once.
        """
        from .acquire import withdraw

        return withdraw(self, request, deadline=self.clock() + self.retry_for)

    def lease(
        self,
        environment: str | None = None,
        *,
        renew_every: float | None = None,
        on_lost: Callable[[CallMeError], None] | None = None,
        **acquire_options: Any,
    ) -> AbstractContextManager[HeldLease]:
        """Acquire (as `acquire` does), renew in the background every ttl/3, release on exit.

        See `callme.client.keeper.hold`.
        """
        from .keeper import hold

        return hold(self, environment, renew_every=renew_every, on_lost=on_lost, **acquire_options)

    @overload
    def renew(self, lease: Lease | str, *, token: str | None = None, ttl: int | None = None) -> Lease: ...
    @overload
    def renew(self, lease: Group, *, token: str | None = None, ttl: int | None = None) -> Group: ...

    def renew(self, lease: Lease | Group | str, *, token: str | None = None, ttl: int | None = None) -> Lease | Group:
        """Extend a lease (or every lease of a group) to now + `ttl` (default: its own TTL); returns it, tokens
        kept."""
        if isinstance(lease, Group):
            response = self._send(
                "POST",
                f"/v1/groups/{_segment(lease.id)}/renew",
                json={"ttl": ttl} if ttl is not None else None,
                headers={HEADER_LEASE_TOKEN: token or lease.token or ""},
                context={"group": lease.id},
            )
            return parse(Group.from_json, response, {"group": lease.id}).with_tokens(lease)
        lease_id, token = _lease_and_token(lease, token)
        response = self._send(
            "POST",
            f"/v1/leases/{_segment(lease_id)}/renew",
            json={"ttl": ttl} if ttl is not None else None,
            headers={HEADER_LEASE_TOKEN: token},
            context={"lease": lease_id},
        )
        return parse(Lease.from_json, response, {"lease": lease_id}).with_token(token)

    def release(self, lease: Lease | Group | str, *, token: str | None = None) -> None:
        """Release a lease (or every lease of a group); releasing one already released is fine (LeaseGone if it had
        ended otherwise)."""
        if isinstance(lease, Group):
            self._send(
                "DELETE",
                f"/v1/groups/{_segment(lease.id)}",
                headers={HEADER_LEASE_TOKEN: token or lease.token or ""},
                context={"group": lease.id},
            )
            return
        lease_id, token = _lease_and_token(lease, token)
        self._send(
            "DELETE",
            f"/v1/leases/{_segment(lease_id)}",
            headers={HEADER_LEASE_TOKEN: token},
            context={"lease": lease_id},
        )

    def leave(self, ticket: str, *, retry_for: float | None = None) -> None:
        """Leave the queue (and release a lease granted to the ticket meanwhile)."""
        deadline = self.clock() + (self.retry_for if retry_for is None else retry_for)
        self._send("DELETE", f"/v1/tickets/{_segment(ticket)}", shown_path="/v1/tickets/…", deadline=deadline)

    def release_oldest(self, environment: str) -> None:
        """The original `DELETE /maybe`: release the oldest lease this key holds on `environment`."""
        self._send("DELETE", "/maybe", params={"environment": environment}, context={"environment": environment})

    # Reads.

    def get_lease(self, lease_id: str) -> Lease:
        response = self._send("GET", f"/v1/leases/{_segment(lease_id)}", context={"lease": lease_id})
        return parse(Lease.from_json, response, {"lease": lease_id})

    def environments(self) -> list[Environment]:
        response = self._send("GET", "/v1/environments")
        body = json_object(response, {})
        if not isinstance(body.get("environments"), list):
            raise unexpected(response, "the answer has no list 'environments'", {})
        return [parse_item(Environment.from_json, item, response, {}) for item in body["environments"]]

    def environment(self, name: str) -> Environment:
        context = {"environment": name}
        response = self._send("GET", f"/v1/environments/{_segment(name)}", context=context)
        return parse(Environment.from_json, response, context)

    def history(self, environment: str | None = None, *, limit: int | None = None) -> list[Event]:
        """The audit log, newest first."""
        params = {key: value for key, value in (("environment", environment), ("limit", limit)) if value is not None}
        response = self._send("GET", "/v1/history", params=params)
        body = json_object(response, {})
        if not isinstance(body.get("events"), list):
            raise unexpected(response, "the answer has no list 'events'", {})
        return [parse_item(Event.from_json, item, response, {}) for item in body["events"]]

    # Admin.

    def put_environment(
        self,
        name: str,
        *,
        slots: int | None = None,
        labels: list[str] | None = None,
        description: str | None = None,
        properties: Mapping[str, str] | None = None,
        maintenance: bool | None = None,
        note: str | None = None,
    ) -> Environment:
        """Create or change an environment (admin); fields left as None are not changed."""
        fields = {
            "slots": slots,
            "labels": labels,
            "description": description,
            "properties": dict(properties) if properties is not None else None,
            "maintenance": maintenance,
            "note": note,
        }
        context = {"environment": name}
        body = {key: value for key, value in fields.items() if value is not None}
        response = self._send("PUT", f"/v1/environments/{_segment(name)}", json=body, context=context)
        try:
            return Environment.from_json(json_object(response, context))
        except (MalformedAnswer, UnexpectedResponse):
            # The contract does not promise a body here; the environment itself is the answer.
            return self.environment(name)

    def delete_environment(self, name: str, *, force: bool = False) -> None:
        """Delete an environment (admin); Conflict while it is in use unless `force`."""
        attempts = 0

        def tolerate(error: APIError) -> bool:
            # A retry after a lost 204 finds nothing left to delete: that is success.
            return attempts > 1 and isinstance(error, NotFound)

        def counted() -> None:
            nonlocal attempts
            attempts += 1

        self._send(
            "DELETE",
            f"/v1/environments/{_segment(name)}",
            params={"force": "true"} if force else None,
            context={"environment": name},
            before_attempt=counted,
            tolerate=tolerate,
        )

    def force_release(self, lease_id: str) -> None:
        """End someone's lease as an admin (it ends `revoked`)."""
        self._send("DELETE", f"/v1/leases/{_segment(lease_id)}", params={"force": "true"}, context={"lease": lease_id})

    # The one way out to the server.

    def _acquire_once(self, body: JSON, *, deadline: float, shown: Mapping[str, object]) -> Lease | Group | Waiting:
        """One POST /v1/leases (retried through outages up to `deadline`): a Lease or a Waiting."""
        wait = float(body.get("wait") or 0)
        response = self._send(
            "POST",
            "/v1/leases",
            json=body,
            context=shown,
            deadline=deadline,
            read_timeout=wait + LONG_POLL_READ_MARGIN if wait else None,
        )
        if response.status_code == 201:
            if "all" in body:
                return parse(Group.from_json, response, shown)
            return parse(Lease.from_json, response, shown)
        if response.status_code == 202:
            return parse(Waiting.from_json, response, shown)
        raise unexpected(response, f"expected 201 or 202, got {response.status_code}", shown)

    def cleanup_deadline(self) -> float:
        """When cleanup after an interrupt or a timeout stops retrying."""
        return self.clock() + min(self.retry_for, CLEANUP_RETRY_FOR)

    def _send(
        self,
        method: str,
        path: str,
        *,
        json: JSON | None = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        context: Mapping[str, object] | None = None,
        shown_path: str | None = None,
        deadline: float | None = None,
        read_timeout: float | None = None,
        before_attempt: Callable[[], None] | None = None,
        tolerate: Callable[[APIError], bool] | None = None,
    ) -> httpx.Response:
        what = f"{method} {shown_path or path}"
        context = {"request": what, **(context or {})}
        timeout = httpx.Timeout(self.timeout, read=read_timeout) if read_timeout else None

        def attempt() -> httpx.Response:
            if before_attempt is not None:
                before_attempt()
            try:
                response = self._http.request(
                    method,
                    path,
                    json=json,
                    params=params,
                    headers=headers,
                    timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
                )
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                kind = _lasting_connect_failure(exc)
                raise kind(f"could not connect to {self._shown_url}: {exc}", context=context) from exc
            except httpx.TimeoutException as exc:
                raise RequestTimeout(f"no answer from {self._shown_url} in time", context=context) from exc
            except httpx.TransportError as exc:
                raise TransportError(f"lost the connection to {self._shown_url}: {exc}", context=context) from exc
            if response.status_code >= 400:
                error = error_from(response, context)
                if tolerate is not None and tolerate(error):
                    return response
                raise error
            return response

        return call_with_retries(
            attempt,
            deadline=deadline if deadline is not None else self.clock() + self.retry_for,
            clock=self.clock,
            sleep=self.sleep,
            what=what,
        )

    @property
    def _shown_url(self) -> str:
        return _without_userinfo(self.url)


def _lease_and_token(lease: Lease | str, token: str | None) -> tuple[str, str]:
    lease_id = lease if isinstance(lease, str) else lease.id
    token = token if token is not None else (None if isinstance(lease, str) else lease.token)
    if not token:
        raise ValueError(f"lease {lease_id} needs its token")
    return lease_id, token


def _segment(value: str) -> str:
    # A name is one path segment: "/" is quoted, and a name "." or ".." too, which httpx would otherwise resolve
    # as a dot segment (/v1/environments/.. is /v1/) before sending it.
    quoted = quote(value, safe="")
    return quoted.replace(".", "%2E") if quoted in (".", "..") else quoted


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def _lasting_connect_failure(exc: BaseException) -> type[ConnectError]:
    """UnknownHost or TLSMismatch when the cause will not pass by itself (fail fast), else ConnectError."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, socket.gaierror) and cause.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5)):
            return UnknownHost
        if isinstance(cause, ssl.SSLError) and not isinstance(cause, ssl.SSLEOFError | ssl.SSLZeroReturnError):
            return TLSMismatch
        cause = cause.__cause__ or cause.__context__
    return ConnectError


def sendable_key(key: str) -> str:
    """The key as a header can carry it: surrounding whitespace dropped (a key file saved with CRLF, a pasted
    space), anything else that is not printable ASCII refused with a ConfigError that never shows the key (httpx
    would put it in an error message, or fail with a traceback)."""
    key = key.strip()
    if not key:
        raise BadKey("the API key is empty (only whitespace)")
    bad = next((i for i, c in enumerate(key) if not " " <= c <= "~"), None)
    if bad is not None:
        what = "a control character" if ord(key[bad]) < 0x20 or ord(key[bad]) == 0x7F else "a non-ASCII character"
        raise BadKey(f"the API key has {what} at position {bad + 1} of {len(key)}, which an HTTP header cannot carry")
    return key
