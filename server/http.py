"""Request helpers shared by the routes: the app's parts, one route per path, bounded body reading, query flags."""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from .auth import Keyring
from .constants import MAX_BODY_BYTES
from .errors import BadJSON, Invalid, TooLarge
from .service import Service
from .settings import Settings


@dataclass
class Parts:
    settings: Settings
    service: Service
    keyring: Keyring


def parts(request: Request) -> Parts:
    found: Parts = request.app.state.parts
    return found


Handler = Callable[[Request], Awaitable[Response]]


def route(path: str, *, include_in_schema: bool = True, **handlers: Handler) -> Route:
    """One Route for a path and all its methods (`GET=...`, `PUT=...`), so that Starlette's own 405 names every
    method of the path in `Allow`. A path with GET also answers HEAD (Starlette adds it): as GET would, status and
    headers, without the body."""

    async def endpoint(request: Request) -> Response:
        if request.method == "HEAD":
            return await _headers_only(await handlers["GET"](request))
        return await handlers[request.method](request)

    endpoint.__name__ = "_".join(dict.fromkeys(handler.__name__ for handler in handlers.values()))
    found = Route(path, endpoint, methods=list(handlers), include_in_schema=include_in_schema)
    # Starlette ends the pattern with `$`, which also matches before a final newline (`/healthz%0A` would be
    # /healthz, `/v1/environments/uat%0A` the environment uat), and the `path` convertor's `.` stops at a newline.
    # To the very end, newlines included: such a name then reaches validation, which refuses it.
    found.path_regex = re.compile(found.path_regex.pattern.removesuffix("$") + r"\Z", re.DOTALL)
    return found


async def _headers_only(response: Response) -> Response:
    # uvicorn sends no body under HEAD, but it runs the response to its end first: an endless stream (/v1/events)
    # would hold the connection for ever. A stream not yet started has done nothing (subscribed to nothing).
    if isinstance(response, StreamingResponse):
        stream = response.body_iterator
        if isinstance(stream, AsyncGenerator):
            await stream.aclose()
        response.body_iterator = _nothing()
    return response


async def _nothing() -> AsyncIterator[bytes]:
    chunks: tuple[bytes, ...] = ()
    for chunk in chunks:
        yield chunk


async def body(request: Request) -> bytes:
    """The request body, refused with 413 as soon as it passes the limit (never read whole first)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise TooLarge(f"the body is {declared} bytes; at most {MAX_BODY_BYTES} are accepted")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise TooLarge(f"the body is over {MAX_BODY_BYTES} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        # The client hung up, or was cut off for sending too slowly (CALL_ME_READ_TIMEOUT): nobody reads the
        # answer, but it must not be logged as the server's own failure, with two tracebacks, each time.
        raise BadJSON("the body did not arrive whole: the connection closed first") from None
    return b"".join(chunks)


def flag(request: Request, name: str) -> bool:
    raw = request.query_params.get(name)
    if raw is None:
        return False
    if raw.lower() in ("true", "1"):
        return True
    if raw.lower() in ("false", "0"):
        return False
    raise Invalid(name, f"must be true or false, got {raw!r}")
