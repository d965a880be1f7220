"""What the dashboard, the event stream and the metrics share: the hub, the sessions, the metrics, and who
is looking (a key in the headers, else a dashboard session cookie)."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from .auth import Keyring
from .csrf import FormTokens
from .errors import Forbidden, Unauthorized
from .events import EventHub
from .http import parts
from .metrics import Metrics
from .model import Principal, Role
from .sessions import SESSION_COOKIE, Session, Sessions, cookie_name


@dataclass
class Live:
    hub: EventHub
    sessions: Sessions
    forms: FormTokens
    metrics: Metrics
    heartbeat: float


def live(request: Request) -> Live:
    found: Live = request.app.state.live
    return found


def session(request: Request) -> Session | None:
    if Keyring.presented(request.headers) is not None:
        return None  # a key in the headers speaks for itself
    return live(request).sessions.get(request.cookies.get(cookie_name(SESSION_COOKIE, https(request))))


def https(request: Request) -> bool:
    """Whether the browser reached us over https (uvicorn reads X-Forwarded-Proto from FORWARDED_ALLOW_IPS)."""
    return request.url.scheme == "https"


def viewer(request: Request) -> Principal | None:
    """Who is asking: the key in the headers, else the session of the cookie, else (no auth) anonymous."""
    found = session(request)
    if found is not None:
        return found.principal
    return parts(request).keyring.identify(request.headers)


def require_viewer(request: Request, role: Role) -> Principal:
    principal = viewer(request)
    if principal is None:
        raise Unauthorized("send a valid key in X-API-KEY (or Authorization: Bearer), or sign in at /signin")
    if not principal.allows(role):
        raise Forbidden(f"the key {principal.name!r} has the role {principal.role}; this needs {role}")
    return principal
