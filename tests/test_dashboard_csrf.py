"""Cross-site request forgery against the dashboard, over a real socket: a form from another origin is refused
though its token is valid (Sec-Fetch-Site, Origin), a form from the dashboard itself (or through a reverse proxy)
is taken, and sign-in refuses a CSRF value planted in its cookie (login CSRF). The signed tokens alone, with a
fake clock; the __Host- cookies over https, in process."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from callme.server.app import create_app
from callme.server.csrf import FormTokens
from callme.server.settings import KeyConfig, Settings, digest

from .serverproc import ADMIN_KEY, CLIENT_KEY, READ_KEY, ServerProcess
from .test_dashboard import csrf_of, sign_in

EVIL = "https://evil.example"
# What a browser says of a form sent from elsewhere than the dashboard's own pages.
Foreign = Callable[[ServerProcess], dict[str, str]]
FOREIGN: dict[str, Foreign] = {
    "foreign-origin": lambda s: {"Origin": EVIL},
    "cross-site": lambda s: {"Sec-Fetch-Site": "cross-site"},
    "same-site": lambda s: {"Sec-Fetch-Site": "same-site"},  # a sibling subdomain, or here another port
    "sibling-port": lambda s: {"Origin": f"http://127.0.0.1:{s.port + 1}"},
    "lookalike": lambda s: {"Origin": s.url + ".evil.example"},
    "opaque": lambda s: {"Origin": "null"},  # a sandboxed frame
    "other-scheme": lambda s: {"Origin": s.url.replace("http://", "ws://")},
}


def own(server: ServerProcess) -> dict[str, str]:
    """What a browser says of a form sent from the dashboard's own page."""
    return {"Origin": server.url, "Sec-Fetch-Site": "same-origin"}


@pytest.fixture
def admin(server: ServerProcess) -> Iterator[httpx.Client]:
    browser = sign_in(server, ADMIN_KEY)
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture
def api(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client(ADMIN_KEY) as client:
        yield client


@pytest.mark.parametrize("foreign", FOREIGN.values(), ids=FOREIGN.keys())
def test_a_form_from_elsewhere_is_refused_though_its_token_is_valid(
    server: ServerProcess, admin: httpx.Client, api: httpx.Client, foreign: Foreign
) -> None:
    lease = api.post("/v1/leases", json={"environment": "c-uat", "holder": "org/app#1"}).json()
    token = csrf_of(admin.get("/"))
    headers = foreign(server)
    forms = [
        (f"/ui/leases/{lease['id']}/release", {}),
        ("/ui/environment", {"environment": "c-uat", "slots": "4", "maintenance": "on", "note": "forged"}),
        ("/ui/environment/hold", {"environment": "c-qa", "holder": "mallory", "minutes": "30"}),
        ("/signout", {}),
    ]
    for path, fields in forms:
        refused = admin.post(path, data={"csrf": token, **fields}, headers=headers)
        assert refused.status_code == 403, (path, refused.text)
        assert "Form refused" in refused.text
        assert "so nothing was done" in refused.text
    assert api.get(f"/v1/leases/{lease['id']}").json()["state"] == "active"
    env = api.get("/v1/environments/c-uat").json()
    assert (env["slots"], env["maintenance"]) == (1, False)
    assert api.get("/v1/environments/c-qa").status_code == 404  # no hold made it up
    assert "Signed in as <strong>admin</strong>" in admin.get("/").text  # the session lives on


def test_a_form_from_the_dashboard_itself_is_taken(
    server: ServerProcess, admin: httpx.Client, api: httpx.Client
) -> None:
    lease = api.post("/v1/leases", json={"environment": "c-own", "holder": "org/app#2"}).json()
    token = csrf_of(admin.get("/"))
    done = admin.post(f"/ui/leases/{lease['id']}/release", data={"csrf": token}, headers=own(server))
    assert (done.status_code, done.headers["location"]) == (303, "/#env-c-own")
    assert api.get(f"/v1/leases/{lease['id']}").json()["state"] == "revoked"
    # A user's own navigation (Sec-Fetch-Site: none), and an old client that sends neither header: the token decides.
    for headers in ({"Sec-Fetch-Site": "none"}, {}):
        for csrf, status in ((token, 303), ("", 403)):
            form = {"csrf": csrf, "environment": "c-own", "slots": "2"}
            answer = admin.post("/ui/environment", data=form, headers=headers)
            assert answer.status_code == status
    assert api.get("/v1/environments/c-own").json()["slots"] == 2
    out = admin.post("/signout", data={"csrf": token}, headers=own(server))
    assert (out.status_code, out.headers["location"]) == (303, "/signin")


def test_behind_a_reverse_proxy_the_address_browsers_use_is_the_dashboards_own(
    server: ServerProcess, admin: httpx.Client, api: httpx.Client
) -> None:
    token = csrf_of(admin.get("/"))
    public = "https://callme.example.com"

    def change(slots: int, headers: dict[str, str]) -> int:
        return admin.post(
            "/ui/environment", data={"csrf": token, "environment": "c-proxy", "slots": str(slots)}, headers=headers
        ).status_code

    # The proxy passes the public name in X-Forwarded-Host, or keeps Host; its TLS hop may look like plain http.
    assert change(2, {"X-Forwarded-Host": "callme.example.com", "Origin": public}) == 303
    assert change(3, {"Host": "callme.example.com", "Origin": public}) == 303
    assert change(4, {"Host": "callme.example.com:443", "Origin": public}) == 303
    assert change(5, {"X-Forwarded-Host": "callme.example.com", "Origin": EVIL}) == 403
    assert change(6, {"X-Forwarded-Host": "callme.example.com.evil.example", "Origin": public}) == 403
    assert change(7, {"Origin": public}) == 403  # a proxy that passes neither: say so rather than guess
    assert api.get("/v1/environments/c-proxy").json()["slots"] == 4


def test_sign_in_refuses_a_csrf_value_planted_in_its_cookie(server: ServerProcess) -> None:
    genuine = csrf_of(httpx.get(server.url + "/signin"))
    nonce, issued, signature = genuine.split(".")
    planted = [
        "planted-by-mallory",  # any value of the attacker's choosing ...
        f"{'A' * len(nonce)}.{issued}.{signature}",  # ... a genuine signature on another nonce ...
        f"{nonce}.{int(issued) + 3600}.{signature}",  # ... or another time
        f"{nonce}.{issued}.{signature[:-1]}{'B' if signature.endswith('A') else 'A'}",  # ... or a guessed signature
    ]
    for value in planted:
        with httpx.Client(base_url=server.url, cookies={"callme_csrf": value}) as victim:
            answer = victim.post("/signin", data={"csrf": value, "key": READ_KEY})
            assert answer.status_code == 403, value
            assert "CSRF token is missing, wrong or too old" in answer.text
            assert "callme_session" not in victim.cookies
    # A genuine token fetched by the attacker and planted: only a form from another site could carry it in.
    with httpx.Client(base_url=server.url, cookies={"callme_csrf": genuine}) as victim:
        for headers in ({"Sec-Fetch-Site": "same-site"}, {"Origin": f"http://127.0.0.1:{server.port + 1}"}):
            answer = victim.post("/signin", data={"csrf": genuine, "key": READ_KEY}, headers=headers)
            assert answer.status_code == 403
            assert "Form refused" in answer.text
            assert "callme_session" not in victim.cookies


def test_signing_in_from_the_sign_in_page_works(server: ServerProcess) -> None:
    for headers in (own(server), {}):  # a browser, and curl
        with httpx.Client(base_url=server.url, headers=headers) as browser:
            form = browser.get("/signin")
            answer = browser.post("/signin", data={"csrf": csrf_of(form), "key": CLIENT_KEY})
            assert (answer.status_code, answer.headers["location"]) == (303, "/")
            assert "Signed in as <strong>ci</strong> (client)" in browser.get("/").text


def test_a_sign_in_form_from_before_a_restart_asks_for_a_reload(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url) as browser:
        stale = csrf_of(browser.get("/signin"))
        server.stop()
        server.start()
        answer = browser.post("/signin", data={"csrf": stale, "key": ADMIN_KEY})
        assert answer.status_code == 403  # the secret that signed it is gone with the process
        assert "reload the page and try again" in answer.text
        fresh = csrf_of(browser.get("/signin"))
        assert fresh != stale
        assert browser.post("/signin", data={"csrf": fresh, "key": ADMIN_KEY}).status_code == 303


def test_form_tokens_are_good_only_from_this_secret_and_only_for_their_time() -> None:
    now = [1000.0]
    tokens = FormTokens(secret=b"k" * 32, clock=lambda: now[0], ttl=60)
    token = tokens.issue()
    assert tokens.valid(token)
    assert tokens.issue() != token  # a fresh nonce each time
    assert not FormTokens(secret=b"j" * 32, clock=lambda: now[0], ttl=60).valid(token)
    nonce, issued, signature = token.split(".")
    for forged in (f"x{nonce}.{issued}.{signature}", f"{nonce}.{int(issued) + 30}.{signature}", f"{nonce}.{issued}.",
                   f"{nonce}.{issued}", f"{token}.x", "", None, "a.b.c", f"{nonce}.-1.{signature}"):  # fmt: skip
        assert not tokens.valid(forged), forged
    now[0] += 59
    assert tokens.valid(token)
    now[0] += 1
    assert not tokens.valid(token)
    assert "k" * 8 not in repr(tokens)


def test_over_https_the_cookies_are_host_prefixed_and_a_bare_one_is_ignored(tmp_path: Path) -> None:
    keys = (KeyConfig(name="admin", role="admin", sha256=digest(ADMIN_KEY)),)
    app = create_app(Settings(database=str(tmp_path / "in-process.db"), keys=keys))
    base = "https://dashboard.example"

    def attributes(cookie: str) -> set[str]:
        return {part.strip().lower() for part in cookie.split(";")[1:]}

    async def run() -> None:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url=base) as browser:
                form = await browser.get("/signin")
                cookie = form.headers["set-cookie"]
                assert cookie.startswith("__Host-callme_csrf=")
                assert {"secure", "path=/", "httponly", "samesite=strict"} <= attributes(cookie)
                assert not any(a.startswith("domain") for a in attributes(cookie))
                token = csrf_of(form)
            # A sibling subdomain (or a plain-http man in the middle) can plant only a bare cookie: ignored here,
            # even holding a genuine token.
            async with httpx.AsyncClient(transport=transport, base_url=base, cookies={"callme_csrf": token}) as victim:
                assert (await victim.post("/signin", data={"csrf": token, "key": ADMIN_KEY})).status_code == 403
            async with httpx.AsyncClient(transport=transport, base_url=base) as browser:
                token = csrf_of(await browser.get("/signin"))
                # An http page of the same name is another origin, the one a man in the middle speaks for.
                downgrade = {"Origin": "http://dashboard.example"}
                answer = await browser.post("/signin", data={"csrf": token, "key": ADMIN_KEY}, headers=downgrade)
                assert answer.status_code == 403
            async with httpx.AsyncClient(transport=transport, base_url=base) as browser:
                form = await browser.get("/signin")
                answer = await browser.post("/signin", data={"csrf": csrf_of(form), "key": ADMIN_KEY})
                assert answer.status_code == 303
                cleared = next(c for c in answer.headers.get_list("set-cookie") if c.startswith("__Host-callme_csrf="))
                assert "secure" in attributes(cleared)  # else a browser would keep the old one
                token = csrf_of(await browser.get("/"))
                out = await browser.post("/signout", data={"csrf": token}, headers={"Origin": base})
                assert out.status_code == 303
                gone = next(c for c in out.headers.get_list("set-cookie") if c.startswith("__Host-callme_session="))
                assert {"secure", "max-age=0"} <= attributes(gone)

    asyncio.run(run())
