"""The original call-me routes, `/maybe?environment=NAME`, answering exactly as the original did."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from .errors import CallMeError, Forbidden, Invalid, NotFound, Unauthorized
from .http import parts, route
from .model import Role
from .validation import name as valid_name

_ROLES: dict[str, Role] = {"GET": "read", "POST": "client", "DELETE": "client"}


async def maybe(request: Request) -> Response:
    p = parts(request)
    method = request.method  # http.route gives HEAD to the GET handler: it answers as GET, without a body
    try:
        principal = p.keyring.require(request.headers, _ROLES["GET" if method == "HEAD" else method])
    except (Unauthorized, Forbidden):
        return Response(status_code=401)
    try:
        name = valid_name("environment", request.query_params.get("environment"))
    except Invalid:
        return Response(status_code=400)
    try:
        if method in ("GET", "HEAD"):
            free = await p.service.maybe_check(principal, name)
            return Response(status_code=200 if free else 403)
        if method == "POST":
            await p.service.maybe_acquire(principal, name)
            return Response(status_code=201)
        await p.service.maybe_release(principal, name)
        return Response(status_code=204)
    except NotFound:
        return Response(status_code=404)
    except CallMeError as exc:
        # busy and maintenance are the original's 403; anything else keeps its status, still bodiless.
        return Response(status_code=403 if exc.status == 409 else exc.status)


# One handler for the three methods: they share the key check and the environment's validation. The original
# answered `/maybe/` as `/maybe` (Starlette would redirect it); it is the same route, left out of the document.
routes = [
    route("/maybe", GET=maybe, POST=maybe, DELETE=maybe),
    route("/maybe/", GET=maybe, POST=maybe, DELETE=maybe, include_in_schema=False),
]
