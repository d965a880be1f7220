"""The dashboard over HTTP, as a browser without JavaScript uses it: sign-in and its cookie, CSRF on every
form, roles, escaping of what clients sent, the admin's forms and the history filter."""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest
from callme.server.app import create_app
from callme.server.settings import KeyConfig, Settings, digest

from .serverproc import ADMIN_KEY, CLIENT_KEY, READ_KEY, ServerProcess

CSRF = re.compile(r'name="csrf" value="([^"]+)"')
XSS_HOLDER = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'


def csrf_of(page: httpx.Response) -> str:
    found = CSRF.search(page.text)
    assert found, page.text
    return found.group(1)


def sign_in(server: ServerProcess, key: str) -> httpx.Client:
    browser = httpx.Client(base_url=server.url, timeout=20)
    form = browser.get("/signin")
    answer = browser.post("/signin", data={"csrf": csrf_of(form), "key": key})
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == "/"
    return browser


@pytest.fixture
def admin(server: ServerProcess) -> Iterator[httpx.Client]:
    browser = sign_in(server, ADMIN_KEY)
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture
def api(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client(CLIENT_KEY) as client:
        yield client


def test_without_a_key_only_the_sign_in_page_answers(server: ServerProcess) -> None:
    page = httpx.get(server.url + "/signin")
    assert page.status_code == 200
    assert '<label for="key">API key</label>' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert httpx.get(server.url + "/ui/static/dashboard.css").status_code == 200
    home = httpx.get(server.url + "/")
    assert (home.status_code, home.headers["location"]) == (303, "/signin")
    assert httpx.get(server.url + "/ui/live").status_code == 401
    assert httpx.get(server.url + "/ui/history").status_code == 303
    assert httpx.get(server.url + "/ui/static/secret.py").status_code == 404


def test_sign_in_sets_a_session_cookie_that_holds_no_key(server: ServerProcess) -> None:
    browser = httpx.Client(base_url=server.url)
    form = browser.get("/signin")
    assert "httponly" in form.headers["set-cookie"].lower()  # the double-submit cookie of the form
    answer = browser.post("/signin", data={"csrf": csrf_of(form), "key": ADMIN_KEY})
    cookie = next(c for c in answer.headers.get_list("set-cookie") if c.startswith("callme_session="))
    attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/"} <= attributes
    assert "secure" not in attributes  # plain http here; over https it is Secure
    assert ADMIN_KEY not in cookie
    page = browser.get("/")
    assert page.status_code == 200
    assert "Signed in as <strong>admin</strong> (admin)" in page.text
    assert browser.get("/v1/events", headers={"Last-Event-ID": "x"}).status_code == 422  # the cookie is enough
    browser.close()


def test_sign_in_refuses_a_missing_csrf_token_and_a_wrong_key(server: ServerProcess) -> None:
    browser = httpx.Client(base_url=server.url)
    form = browser.get("/signin")
    assert browser.post("/signin", data={"key": ADMIN_KEY}).status_code == 403
    assert browser.post("/signin", data={"key": ADMIN_KEY, "csrf": "forged"}).status_code == 403
    wrong = browser.post("/signin", data={"key": "not-a-key-at-all", "csrf": csrf_of(form)})
    assert wrong.status_code == 401
    assert "That key is not known here" in wrong.text
    assert "callme_session" not in browser.cookies
    browser.close()


def test_admin_forms_need_their_csrf_token(server: ServerProcess, admin: httpx.Client, api: httpx.Client) -> None:
    lease = api.post("/v1/leases", json={"environment": "d-uat", "holder": "org/app#7"}).json()
    release = f"/ui/leases/{lease['id']}/release"
    assert admin.post(release, data={}).status_code == 403
    assert admin.post(release, data={"csrf": "guessed"}).status_code == 403
    assert api.get(f"/v1/leases/{lease['id']}").json()["state"] == "active"
    done = admin.post(release, data={"csrf": csrf_of(admin.get("/"))})
    assert (done.status_code, done.headers["location"]) == (303, "/#env-d-uat")
    assert api.get(f"/v1/leases/{lease['id']}").json()["state"] == "revoked"
    revoked = api.get("/v1/history", params={"environment": "d-uat", "limit": 1}).json()["events"][0]
    assert (revoked["kind"], revoked["actor"]) == ("revoked", "admin")


@pytest.mark.parametrize("key", [READ_KEY, CLIENT_KEY])
def test_read_and_client_keys_see_no_admin_forms_and_cannot_post_them(
    server: ServerProcess, api: httpx.Client, key: str
) -> None:
    lease = api.post("/v1/leases", json={"environment": "d-ro", "holder": "org/app#8"}).json()
    browser = sign_in(server, key)
    try:
        page = browser.get("/")
        assert "org/app#8" in page.text
        assert "Force release" not in page.text
        assert "/ui/environment" not in page.text
        assert "Manage" not in page.text
        token = csrf_of(page)  # the sign-out form's: valid, yet the role is not enough
        assert browser.post(f"/ui/leases/{lease['id']}/release", data={"csrf": token}).status_code == 403
        change = {"csrf": token, "environment": "d-ro", "slots": "5"}
        assert browser.post("/ui/environment", data=change).status_code == 403
        hold = {"csrf": token, "environment": "d-ro", "holder": "mallory", "minutes": "5", "reason": "x"}
        assert browser.post("/ui/environment/hold", data=hold).status_code == 403
    finally:
        browser.close()
    assert api.get(f"/v1/leases/{lease['id']}").json()["state"] == "active"
    assert api.get("/v1/environments/d-ro").json()["slots"] == 1


def test_what_clients_send_is_shown_as_text(server: ServerProcess, admin: httpx.Client, api: httpx.Client) -> None:
    evil = {"run_url": "javascript:alert(1)", "reason": "<b>bold</b>"}
    api.post("/v1/leases", json={"environment": "d-xss", "holder": XSS_HOLDER, "metadata": evil}).raise_for_status()
    linked = {"run_url": "https://ci.example.com/run/41?a=1&b=2"}
    api.post("/v1/leases", json={"environment": "d-link", "holder": "org/app#41", "metadata": linked})
    for page in (admin.get("/"), admin.get("/ui/live"), admin.get("/ui/history")):
        assert page.status_code == 200
        assert "<script>window.__pwned" not in page.text
        assert "<img src=x" not in page.text
        assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in page.text
        assert "javascript:" not in page.text
    home = admin.get("/").text
    assert '<a href="https://ci.example.com/run/41?a=1&amp;b=2" rel="noopener noreferrer">org/app#41</a>' in home
    assert "&lt;b&gt;bold&lt;/b&gt;" in home


def test_admin_holds_an_environment_for_a_person_and_changes_it(
    server: ServerProcess, admin: httpx.Client, api: httpx.Client
) -> None:
    api.post("/v1/leases", json={"environment": "d-qa"}).raise_for_status()
    api_admin = server.client(ADMIN_KEY)
    api_admin.put("/v1/environments/d-qa", json={"slots": 2}).raise_for_status()
    token = csrf_of(admin.get("/"))
    form = {"csrf": token, "environment": "d-qa"}
    held = admin.post("/ui/environment/hold", data={**form, "holder": "alice", "minutes": "30",
                                                    "reason": "manual QA of checkout"})  # fmt: skip
    assert held.status_code == 303, held.text
    leases = api.get("/v1/environments/d-qa").json()["leases"]
    alice = next(lease for lease in leases if lease["holder"] == "alice")
    assert alice["ttl"] == 1800
    assert alice["metadata"] == {"reason": "manual QA of checkout", "via": "dashboard", "by": "admin"}
    busy = admin.post("/ui/environment/hold", data={**form, "holder": "bob", "minutes": "5"})
    assert busy.status_code == 409
    assert "is held by" in busy.text
    bad = admin.post("/ui/environment/hold", data={**form, "holder": "bob", "minutes": "soon"})
    assert bad.status_code == 422

    on = {**form, "maintenance": "on", "note": "DB upgrade until 15:00"}
    assert admin.post("/ui/environment", data=on).status_code == 303
    env = api.get("/v1/environments/d-qa").json()
    assert (env["maintenance"], env["note"]) == (True, "DB upgrade until 15:00")
    assert "DB upgrade until 15:00" in admin.get("/").text
    assert admin.post("/ui/environment", data={**form, "maintenance": "off"}).status_code == 303
    changed = {**form, "slots": "3", "labels": "qa\r\neu\r\n"}  # a textarea, one label a line
    assert admin.post("/ui/environment", data=changed).status_code == 303
    env = api.get("/v1/environments/d-qa").json()
    assert (env["maintenance"], env["note"], env["slots"], env["labels"]) == (False, None, 3, ["eu", "qa"])
    assert admin.post("/ui/environment", data={**form, "slots": "0"}).status_code == 422
    assert admin.post("/ui/environment", data={"csrf": token, "slots": "2"}).status_code == 422  # which one?
    api_admin.close()


def test_a_key_in_the_headers_needs_no_csrf_token(server: ServerProcess) -> None:
    with server.client(ADMIN_KEY) as client:
        answer = client.post("/ui/environment", data={"environment": "d-key", "slots": "2"})
        assert answer.status_code == 303
        assert client.get("/v1/environments/d-key").json()["slots"] == 2


def test_history_filters_by_environment(server: ServerProcess, admin: httpx.Client, api: httpx.Client) -> None:
    for env in ("d-h1", "d-h2"):
        api.post("/v1/leases", json={"environment": env, "holder": f"holder-of-{env}"}).raise_for_status()
    page = admin.get("/ui/history", params={"environment": "d-h1"})
    assert page.status_code == 200
    assert "holder-of-d-h1" in page.text
    assert "holder-of-d-h2" not in page.text
    assert '<option value="d-h1" selected>' in page.text
    everything = admin.get("/ui/history").text
    assert "holder-of-d-h1" in everything
    assert "holder-of-d-h2" in everything
    fragment = admin.get("/ui/history", params={"environment": "d-h2", "fragment": "1"}).text
    assert fragment.lstrip().startswith("<table")
    assert "holder-of-d-h2" in fragment
    assert admin.get("/ui/history", params={"environment": "bad\ttab"}).status_code == 422


def test_sign_out_ends_the_session(server: ServerProcess, admin: httpx.Client) -> None:
    token = csrf_of(admin.get("/"))
    cookie = admin.cookies["callme_session"]
    assert admin.post("/signout", data={}).status_code == 403
    out = admin.post("/signout", data={"csrf": token})
    assert (out.status_code, out.headers["location"]) == (303, "/signin")
    assert admin.get("/").status_code == 303
    stale = httpx.get(server.url + "/ui/live", cookies={"callme_session": cookie})
    assert stale.status_code == 401  # the old cookie is dead on the server, not only in this browser


def test_over_https_the_session_cookie_is_secure(tmp_path: Path) -> None:
    keys = (KeyConfig(name="admin", role="admin", sha256=digest(ADMIN_KEY)),)
    app = create_app(Settings(database=str(tmp_path / "in-process.db"), keys=keys))

    async def run() -> None:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="https://dashboard.example") as browser:
                form = await browser.get("/signin")
                answer = await browser.post("/signin", data={"csrf": csrf_of(form), "key": ADMIN_KEY})
                assert answer.status_code == 303
                # Over https the cookie is __Host- prefixed (see tests/test_dashboard_csrf.py), hence Secure and Path=/.
                cookie = next(
                    c for c in answer.headers.get_list("set-cookie") if c.startswith("__Host-callme_session=")
                )
                assert "secure" in {part.strip().lower() for part in cookie.split(";")}
                assert (await browser.get("/")).status_code == 200

    asyncio.run(run())


class _Elements(HTMLParser):
    """Every start tag of a page with its attributes (values unescaped, as a browser reads them)."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {key: value or "" for key, value in attrs}))

    def having(self, tag: str, **wanted: str) -> list[dict[str, str]]:
        return [attrs for t, attrs in self.tags if t == tag and all(attrs.get(k) == v for k, v in wanted.items())]


UNUSUAL_NAMES = ["feature/login", "a b", "a_b", "a_5f_b", "..", "it's <b>$HOME</b> & co", "été", "x" * 200]


def _holder(name: str) -> str:
    return f"h:{name[:50]}."


def test_any_environment_name_gets_its_own_card_ids_links_and_forms(
    server: ServerProcess, admin: httpx.Client, api: httpx.Client
) -> None:
    for name in UNUSUAL_NAMES:
        api.post("/v1/leases", json={"environment": name, "holder": _holder(name)}).raise_for_status()
    page = _Elements(admin.get("/").text)
    ids = [attrs["id"] for _, attrs in page.tags if "id" in attrs]
    assert len(ids) == len(set(ids)), "element ids repeat"
    assert all(i and not any(c.isspace() for c in i) for i in ids), ids  # HTML: no space in an id
    assert all(attrs["for"] in ids for _, attrs in page.tags if "for" in attrs)  # every label finds its input
    token = csrf_of(admin.get("/"))
    for name in UNUSUAL_NAMES:
        [card] = page.having("section", **{"data-environment": name})
        card_id = card["id"]
        assert card_id.startswith("env-"), card_id
        assert card_id.isascii(), card_id
        assert page.having("a", href=f"#{card_id}"), name  # the utilisation table links to the card
        assert page.having("h2", id=card["aria-labelledby"])
        assert len(page.having("input", type="hidden", name="environment", value=name)) == 3  # three forms
        # The forms name the environment in a field: a browser would make /ui/environments/.. into /ui/.
        done = admin.post("/ui/environment", data={"csrf": token, "environment": name, "slots": "2"})
        assert (done.status_code, done.headers["location"]) == (303, f"/#{card_id}"), done.text
        held = admin.post("/ui/environment/hold", data={"csrf": token, "environment": name, "minutes": "5"})
        assert held.status_code == 303, held.text
        quoted = quote(name, safe="")
        env = api.get(f"/v1/environments/{'%2E%2E' if name == '..' else quoted}").json()
        assert (env["name"], env["slots"], len(env["leases"])) == (name, 2, 2)
    # Labels one a line, as the textarea shows them: a label may hold spaces and commas.
    labels = {"csrf": token, "environment": "a b", "labels": "eu, west\r\npool a\r\n\r\n"}
    assert admin.post("/ui/environment", data=labels).status_code == 303
    assert api.get("/v1/environments/a%20b").json()["labels"] == ["eu, west", "pool a"]
    [card] = _Elements(admin.get("/").text).having("section", **{"data-environment": "a b"})
    suffix = re.escape(card["id"].removeprefix("env-"))
    shown = re.search(
        rf'<textarea id="labels-{suffix}" name="labels"[^>]*>\n(.*?)</textarea>', admin.get("/").text, re.S
    )
    assert shown is not None
    assert shown.group(1).split("\n") == ["eu, west", "pool a"]

    history = _Elements(admin.get("/ui/history").text)
    for name in UNUSUAL_NAMES:
        links = [
            a["href"] for a in history.having("a") if parse_qs(urlsplit(a["href"]).query).get("environment") == [name]
        ]
        assert links, name
        filtered = admin.get(links[0])
        assert filtered.status_code == 200
        shown = html.unescape(filtered.text)
        assert [other for other in UNUSUAL_NAMES if _holder(other) in shown] == [name]
