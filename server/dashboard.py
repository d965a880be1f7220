"""The dashboard at `/`: server-rendered pages (Jinja2, every value escaped), a little plain JavaScript that
re-fetches the live part on each event of /v1/events, sign-in, and the admin's forms.

Every form POST must come from the dashboard's own pages (Sec-Fetch-Site, Origin: csrf.py) and carry a CSRF
token: the session's own (synchronizer), or, without a session (the sign-in form, a server without
authentication), the signed double-submit cookie's. A POST with a key in its headers needs neither: a browser
never adds that header by itself. Admin forms act through the same Service calls as the API, with the
signed-in key's name as the actor.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from . import overview, validation
from .auth import Keyring
from .constants import DASHBOARD_DELIVERIES, DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT, UTILISATION_EVENTS
from .csrf import check_origin
from .errors import CallMeError, FormRefused, Invalid, NotFound
from .http import body, parts, route
from .live import https, live, require_viewer, session, viewer
from .model import Principal
from .render import event_json
from .routes_webhooks import delivery_json, webhook_json
from .sessions import CSRF_COOKIE, CSRF_FIELD, SESSION_COOKIE, cookie_name, same

_HERE = Path(__file__).parent
_STATIC = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    # Not no-referrer: under it a browser sends `Origin: null` even on a same-origin form, and check_origin
    # needs the real one. Other sites still get no Referer.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

_NOT_IN_IDS = re.compile(r"[^A-Za-z0-9.-]")


def element_id(name: str) -> str:
    """An environment name as part of an HTML id and a URL fragment: letters, digits, `.` and `-` stay, any other
    character becomes `_<its code point in hex>_` (`feature/login` is `feature_2f_login`, `a_b` is `a_5f_b`). So
    every name has an id of its own, and no id holds a space, a quote or a `#`."""
    return _NOT_IN_IDS.sub(lambda found: f"_{ord(found.group()):x}_", name)


templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(_HERE / "templates"),
    autoescape=True,  # every value: holders and metadata are whatever a client sent
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
templates.filters["domid"] = element_id


def _page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    """Render with the viewer, a CSRF token for the forms, and the security headers."""
    principal = context.pop("principal", None)
    found = session(request)
    if found is not None:
        csrf, cookie = found.csrf, None
    else:
        forms = live(request).forms
        held = request.cookies.get(cookie_name(CSRF_COOKIE, https(request)))
        csrf = held if held is not None and forms.valid(held) else forms.issue()
        cookie = csrf if csrf != held else None
    html = templates.get_template(template).render(principal=principal, csrf=csrf, csrf_field=CSRF_FIELD, **context)
    response = HTMLResponse(html, status_code=status, headers=_SECURITY_HEADERS)
    if cookie is not None:
        _cookie(request, response, CSRF_COOKIE, cookie)
    return response


def _cookie(request: Request, response: Response, name: str, value: str) -> None:
    secure = https(request)
    response.set_cookie(cookie_name(name, secure), value, path="/", httponly=True, samesite="strict", secure=secure)


def _forget(request: Request, response: Response, name: str) -> None:
    # With the attributes it was set with: a browser ignores a __Host- cookie set (or cleared) without Secure.
    secure = https(request)
    response.delete_cookie(cookie_name(name, secure), path="/", secure=secure, httponly=True, samesite="strict")


def _error_page(request: Request, exc: CallMeError, principal: Principal | None) -> HTMLResponse:
    return _page(request, "error.html", exc.status, principal=principal, error=exc)


async def _form(request: Request) -> dict[str, str]:
    raw = (await body(request)).decode("utf-8", errors="replace")
    return {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}


def _check_form(request: Request, form: dict[str, str]) -> None:
    """A state-changing form: from our own pages (csrf.check_origin), with the session's token or, without a
    session, a double-submit token this process signed."""
    if Keyring.presented(request.headers) is not None:
        return
    check_origin(request)
    found = session(request)
    if found is not None:
        good = same(form.get(CSRF_FIELD), found.csrf)
    else:
        held = request.cookies.get(cookie_name(CSRF_COOKIE, https(request)))
        good = same(form.get(CSRF_FIELD), held) and live(request).forms.valid(held)
    if not good:
        raise FormRefused(
            "the form's CSRF token is missing, wrong or too old, so nothing was done; reload the page and try again"
        )


async def _overview(request: Request) -> dict[str, Any]:
    service = parts(request).service
    views = await service.environments()
    events = await service.history(None, UTILISATION_EVENTS)
    cards, summary = overview.build(views, events)
    return {"cards": cards, "summary": summary}


async def home(request: Request) -> Response:
    principal = viewer(request)
    if principal is None:
        return RedirectResponse("/signin", status_code=303)
    try:
        require_viewer(request, "read")
        context = await _overview(request)
    except CallMeError as exc:
        return _error_page(request, exc, principal)
    return _page(request, "dashboard.html", principal=principal, **context)


async def fragment(request: Request) -> Response:
    """The live part of the dashboard alone, for the page's script to swap in after an event."""
    principal = require_viewer(request, "read")
    return _page(request, "_live.html", principal=principal, **(await _overview(request)))


async def history(request: Request) -> Response:
    principal = viewer(request)
    if principal is None:
        return RedirectResponse("/signin", status_code=303)
    try:
        require_viewer(request, "read")
        environment = request.query_params.get("environment") or None
        if environment is not None:
            validation.name("environment", environment)
        raw = request.query_params.get("limit") or str(DEFAULT_HISTORY_LIMIT)
        if (
            not (raw.isascii() and raw.isdigit() and len(raw) <= len(str(MAX_HISTORY_LIMIT)))
            or not 1 <= int(raw) <= MAX_HISTORY_LIMIT
        ):
            raise Invalid("limit", f"must be a whole number from 1 to {MAX_HISTORY_LIMIT}")
        service = parts(request).service
        events = [event_json(e) for e in await service.history(environment, int(raw))]
        names = [v.env.name for v in await service.environments()]
    except CallMeError as exc:
        return _error_page(request, exc, principal)
    template = "_history.html" if request.query_params.get("fragment") == "1" else "history.html"
    query = f"?environment={quote(environment)}&limit={raw}" if environment else f"?limit={raw}"
    return _page(
        request, template, principal=principal, events=events, names=names, environment=environment, limit=raw,
        query=query,
    )  # fmt: skip


async def webhooks_page(request: Request) -> Response:
    """The webhooks and the last deliveries of each (admins only: a hook's URL may be its receiver's secret, so
    only its scheme and host are shown here)."""
    principal = viewer(request)
    if principal is None:
        return RedirectResponse("/signin", status_code=303)
    try:
        require_viewer(request, "admin")
        service = parts(request).service
        hooks = []
        for view in await service.webhooks():
            url = urlsplit(view.hook.url)
            hooks.append(
                {
                    "hook": webhook_json(view),
                    "where": f"{url.scheme}://{url.netloc}/…",
                    "deliveries": [
                        delivery_json(d) for d in await service.deliveries(view.hook.name, DASHBOARD_DELIVERIES)
                    ],
                }
            )
    except CallMeError as exc:
        return _error_page(request, exc, principal)
    return _page(request, "webhooks.html", principal=principal, hooks=hooks)


async def static(request: Request) -> Response:
    name = request.path_params["file"]
    if name not in _STATIC:
        raise NotFound(f"no file {name}")
    content = (_HERE / "static" / name).read_bytes()
    headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    return Response(content, media_type=_STATIC[name], headers=headers)


async def signin_page(request: Request) -> Response:
    return _page(request, "signin.html", principal=viewer(request), message=None)


async def signin(request: Request) -> Response:
    form = await _form(request)
    try:
        _check_form(request, form)
    except FormRefused as exc:
        return _error_page(request, exc, None)
    key = form.get("key", "").strip()
    principal = parts(request).keyring.identify({"x-api-key": key}) if key else None
    if principal is None:
        message = "That key is not known here. Check it (keys are case-sensitive) or ask an admin for one."
        return _page(request, "signin.html", 401, principal=None, message=message)
    sessions = live(request).sessions
    sessions.end(
        request.cookies.get(cookie_name(SESSION_COOKIE, https(request)))
    )  # a sign-in never leaves an earlier session alive
    cookie, _ = sessions.create(principal)
    response = RedirectResponse("/", status_code=303)
    _cookie(request, response, SESSION_COOKIE, cookie)
    _forget(request, response, CSRF_COOKIE)
    return response


async def signout(request: Request) -> Response:
    form = await _form(request)
    try:
        _check_form(request, form)
    except FormRefused as exc:
        return _error_page(request, exc, viewer(request))
    live(request).sessions.end(request.cookies.get(cookie_name(SESSION_COOKIE, https(request))))
    response = RedirectResponse("/signin", status_code=303)
    _forget(request, response, SESSION_COOKIE)
    return response


async def _admin_form(request: Request) -> tuple[Principal, dict[str, str]]:
    form = await _form(request)
    _check_form(request, form)
    return require_viewer(request, "admin"), form


def _done(name: str) -> Response:
    return RedirectResponse(f"/#env-{element_id(name)}", status_code=303)


async def force_release(request: Request) -> Response:
    principal = viewer(request)
    try:
        principal, _ = await _admin_form(request)
        service = parts(request).service
        found = await service.lease(request.path_params["lease"])
        await service.release(principal, found.lease.id, None, force=True)
    except CallMeError as exc:
        return _error_page(request, exc, principal)
    return _done(found.lease.environment)


async def change_environment(request: Request) -> Response:
    """Maintenance on/off with a note, or slots and labels: the fields the form sent, as a PUT would.

    The environment is a field of the form, not a part of the path: a browser would make `/ui/environments/..`
    (even written %2E%2E) into `/ui/`, and a name may be `..`."""
    principal = viewer(request)
    try:
        principal, form = await _admin_form(request)
        name = validation.name("environment", form.get("environment"))
        change: dict[str, Any] = {}
        if "maintenance" in form:
            change["maintenance"] = form["maintenance"] == "on"
            change["note"] = form.get("note", "").strip() or None
        if "slots" in form:
            slots = form["slots"].strip()
            if not (slots.isascii() and slots.isdigit()) or len(slots) > 6:
                raise Invalid("slots", "must be a whole number")
            change["slots"] = int(slots)
        if "labels" in form:
            # One a line: a label may hold spaces and commas, never a line break. Kept as typed, so that saving the
            # slots leaves a label with a space at its end as it is; only blank lines are dropped.
            change["labels"] = [label for label in form["labels"].splitlines() if label.strip()]
        if not change:
            raise Invalid("form", "names nothing to change")
        await parts(request).service.put_environment(principal, name, validation.environment_change(change))
    except CallMeError as exc:
        return _error_page(request, exc, principal)
    return _done(name)


async def hold(request: Request) -> Response:
    """A manual hold: an ordinary lease with the person as holder, taken at once or not at all."""
    principal = viewer(request)
    try:
        principal, form = await _admin_form(request)
        name = validation.name("environment", form.get("environment"))
        p = parts(request)
        minutes = form.get("minutes", "").strip()
        if not (minutes.isascii() and minutes.isdigit()) or len(minutes) > 7:
            raise Invalid("minutes", "must be a whole number of minutes")
        ttl = validation.integer("minutes", int(minutes), 1, max(1, p.settings.max_ttl // 60)) * 60
        holder = form.get("holder", "").strip() or principal.name
        reason = form.get("reason", "").strip()
        req = validation.acquire(
            {"environment": name, "holder": holder, "ttl": min(ttl, p.settings.max_ttl), "queue": False,
             "metadata": {"reason": reason, "via": "dashboard", "by": principal.name}},
            p.settings.max_ttl,
        )  # fmt: skip
        await p.service.acquire(principal, req)
    except CallMeError as exc:
        return _error_page(request, exc, principal)
    return _done(name)


routes = [
    route("/", GET=home),
    route("/ui/live", GET=fragment),
    route("/ui/history", GET=history),
    route("/ui/webhooks", GET=webhooks_page),
    route("/ui/static/{file}", GET=static),
    route("/signin", GET=signin_page, POST=signin),
    route("/signout", POST=signout),
    route("/ui/leases/{lease}/release", POST=force_release),
    route("/ui/environment", POST=change_environment),
    route("/ui/environment/hold", POST=hold),
]
