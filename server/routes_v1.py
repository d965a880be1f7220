"""The v1 routes of API.md: parse and check the request, call the service, render the answer."""

from __future__ import annotations

import functools

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import render, validation
from .constants import DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT
from .errors import Invalid
from .http import body, flag, parts, route
from .outcomes import Granted, GrantedGroup


async def acquire(request: Request) -> Response:
    p = parts(request)
    principal = p.keyring.require(request.headers, "client")
    req = validation.acquire(validation.parse_object(await body(request)), p.settings.max_ttl)
    outcome = await p.service.acquire(principal, req, functools.partial(_hung_up, request))
    if isinstance(outcome, Granted):
        return render.granted_response(request, outcome)
    if isinstance(outcome, GrantedGroup):
        return render.group_response(request, outcome)
    return render.queued_response(request, outcome)


async def _hung_up(request: Request) -> None:
    """Returns when the client has gone. The body has been read whole, so the next ASGI message of a request
    in flight is `http.disconnect`, sent by the server when the connection closes."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def get_lease(request: Request) -> Response:
    p = parts(request)
    p.keyring.require(request.headers, "read")
    found = await p.service.lease(request.path_params["lease"])
    return JSONResponse(render.lease_json(found.lease, found.environment))


async def _renewal(request: Request) -> tuple[str | None, int | None]:
    """A renew's token (X-Lease-Token, else the body's) and ttl, for a lease or a group alike."""
    p = parts(request)
    p.keyring.require(request.headers, "client")
    ttl, body_token = validation.renew_ttl(
        validation.parse_object(await body(request), empty_ok=True), p.settings.max_ttl
    )
    return request.headers.get("x-lease-token") or body_token, ttl


async def renew(request: Request) -> Response:
    token, ttl = await _renewal(request)
    renewed = await parts(request).service.renew(request.path_params["lease"], token, ttl)
    return JSONResponse(render.lease_json(renewed.lease, renewed.environment))


async def release(request: Request) -> Response:
    p = parts(request)
    principal = p.keyring.require(request.headers, "client")
    force = flag(request, "force")
    await p.service.release(principal, request.path_params["lease"], request.headers.get("x-lease-token"), force=force)
    return Response(status_code=204)


async def get_group(request: Request) -> Response:
    p = parts(request)
    p.keyring.require(request.headers, "read")
    found = await p.service.group(request.path_params["group"])
    return JSONResponse(render.group_json(found))


async def renew_group(request: Request) -> Response:
    token, ttl = await _renewal(request)
    renewed = await parts(request).service.renew_group(request.path_params["group"], token, ttl)
    return JSONResponse(render.group_json(renewed))


async def release_group(request: Request) -> Response:
    p = parts(request)
    principal = p.keyring.require(request.headers, "client")
    force = flag(request, "force")
    token = request.headers.get("x-lease-token")
    await p.service.release_group(principal, request.path_params["group"], token, force=force)
    return Response(status_code=204)


async def leave(request: Request) -> Response:
    p = parts(request)
    principal = p.keyring.require(request.headers, "client")
    await p.service.leave(principal, request.path_params["ticket"])
    return Response(status_code=204)


async def list_environments(request: Request) -> Response:
    p = parts(request)
    p.keyring.require(request.headers, "read")
    # In code point order on every store: PostgreSQL's ORDER BY follows the database's collation, which may
    # ignore the spaces and punctuation that names may now hold.
    views = sorted(await p.service.environments(), key=lambda view: view.env.name)
    return JSONResponse({"environments": [render.environment_json(v) for v in views]})


async def get_environment(request: Request) -> Response:
    p = parts(request)
    p.keyring.require(request.headers, "read")
    name = validation.name("name", request.path_params["name"])
    views = await p.service.environments(name)
    return JSONResponse(render.environment_json(views[0]))


async def put_environment(request: Request) -> Response:
    p = parts(request)
    principal = p.keyring.require(request.headers, "admin")
    name = validation.name("name", request.path_params["name"])
    change = validation.environment_change(validation.parse_object(await body(request)))
    _, created = await p.service.put_environment(principal, name, change)
    views = await p.service.environments(name)
    return JSONResponse(render.environment_json(views[0]), status_code=201 if created else 200)


async def delete_environment(request: Request) -> Response:
    p = parts(request)
    principal = p.keyring.require(request.headers, "admin")
    name = validation.name("name", request.path_params["name"])
    await p.service.delete_environment(principal, name, force=flag(request, "force"))
    return Response(status_code=204)


async def history(request: Request) -> Response:
    p = parts(request)
    p.keyring.require(request.headers, "read")
    environment = request.query_params.get("environment") or None
    if environment is not None:
        validation.name("environment", environment)
    raw_limit = request.query_params.get("limit")
    limit = DEFAULT_HISTORY_LIMIT
    if raw_limit is not None:
        if not (raw_limit.isascii() and raw_limit.isdigit()) or len(raw_limit) > len(str(MAX_HISTORY_LIMIT)):
            raise Invalid("limit", f"must be a whole number from 1 to {MAX_HISTORY_LIMIT}")
        limit = validation.integer("limit", int(raw_limit), 1, MAX_HISTORY_LIMIT)
    events = await p.service.history(environment, limit)
    return JSONResponse({"events": [render.event_json(e) for e in events]})


routes = [
    route("/v1/leases", POST=acquire),
    route("/v1/leases/{lease}", GET=get_lease, DELETE=release),
    route("/v1/leases/{lease}/renew", POST=renew),
    route("/v1/groups/{group}", GET=get_group, DELETE=release_group),
    route("/v1/groups/{group}/renew", POST=renew_group),
    route("/v1/tickets/{ticket}", DELETE=leave),
    route("/v1/environments", GET=list_environments),
    # `path`: a name may hold `/`, which arrives decoded (feature%2Flogin is feature/login), so the rest of the path
    # is the name. No route lies below an environment: a suffix could not be told from a name that ends with it.
    route("/v1/environments/{name:path}", GET=get_environment, PUT=put_environment, DELETE=delete_environment),
    route("/v1/history", GET=history),
]
