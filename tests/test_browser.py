"""The dashboard in a real browser: Playwright for Python driving Debian's Chromium (/usr/bin/chromium; a
browser is never downloaded: scripts/browser-setup installs the Debian package). The environments are held
and released by the real `call-me` CLI in other processes, as pipelines do. Screenshots go to
test-output/browser/."""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from .serverproc import ADMIN_KEY, CLIENT_KEY, DEFAULT_CONFIG, READ_KEY, ServerProcess
from .tooling import import_tool, tool_missing

CHROMIUM = os.environ.get("CALL_ME_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]  # fmt: skip
SHOTS = Path(__file__).resolve().parent.parent / "test-output" / "browser"
CLI = [sys.executable, "-m", "callme.client.cli"]
BOUND = 15_000  # milliseconds any one step may take
CONFIG = (
    DEFAULT_CONFIG
    + """
[[environments]]
name = "uat"
labels = ["staging"]
description = "Shop UAT, EU"
properties = { url = "https://uat.shop.example.com", region = "eu-west-1" }

[[environments]]
name = "staging-1"
slots = 2
labels = ["staging"]
properties = { url = "https://staging-1.shop.example.com" }

[[environments]]
name = "perf"
"""
)


@pytest.fixture(scope="module")
def chromium() -> Iterator[object]:
    playwright_api = import_tool("playwright.sync_api")
    if not os.access(CHROMIUM, os.X_OK):
        tool_missing(f"{CHROMIUM} is missing; run scripts/browser-setup (apt-get install chromium)")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path, config=CONFIG)
    proc.start()
    try:
        yield proc
    finally:
        proc.kill()


@pytest.fixture
def page(chromium: object, request: pytest.FixtureRequest) -> Iterator[object]:
    context = chromium.new_context(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    page = context.new_page()
    page.set_default_timeout(BOUND)
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    try:
        yield page
    finally:
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"{request.node.name}-last.png"), full_page=True)
        context.close()
    assert dialogs == [], "a script ran that should not have"


class CLIs:
    """`call-me` processes with the client key, like pipelines on other machines; all reaped at the end."""

    def __init__(self, server: ServerProcess, tmp_path: Path) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CALL_ME_")}
        self.env.update({"CALL_ME_URL": server.url, "CALL_ME_API_KEY": CLIENT_KEY})
        self.tmp_path = tmp_path
        self.procs: list[subprocess.Popen[str]] = []

    def _env(self, state: str) -> dict[str, str]:
        return {**self.env, "CALL_ME_STATE_FILE": str(self.tmp_path / f"{state}.json")}

    def run(self, state: str, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*CLI, *args], env=self._env(state), capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return done

    def start(self, state: str, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen([*CLI, *args], env=self._env(state), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=15)


@pytest.fixture
def cli(server: ServerProcess, tmp_path: Path) -> Iterator[CLIs]:
    clis = CLIs(server, tmp_path)
    try:
        yield clis
    finally:
        clis.close()


def expect(actual: object) -> Any:
    """Playwright's `expect`, imported as a test runs (the chromium fixture made sure it can be)."""
    return import_tool("playwright.sync_api").expect(actual)


def sign_in(page: object, server: ServerProcess, key: str) -> None:
    page.goto(server.url + "/")  # type: ignore[attr-defined]
    expect(page).to_have_url(server.url + "/signin")
    # Keyboard only: the key field has the focus, Enter submits.
    page.keyboard.type(key)  # type: ignore[attr-defined]
    page.keyboard.press("Enter")  # type: ignore[attr-defined]
    expect(page.get_by_role("heading", name="Environments", exact=True)).to_be_visible()


def card(page: object, name: str) -> object:
    return page.locator(f"section#env-{name}")  # type: ignore[attr-defined]


def test_an_admin_watches_a_cli_hold_and_release_live_and_force_releases(
    page: object, server: ServerProcess, cli: CLIs
) -> None:
    sign_in(page, server, ADMIN_KEY)
    expect(page.get_by_role("status")).to_have_text("Live: updates as things happen.")  # type: ignore[attr-defined]
    page.evaluate("window.__notReloaded = true")  # type: ignore[attr-defined]
    uat = card(page, "uat")
    expect(uat.get_by_test_id("state")).to_contain_text("free")  # type: ignore[attr-defined]

    run = "https://ci.example.com/org/shop/actions/runs/41"
    cli.run("shop", "request", "uat", "--holder", "org/shop#41", "--meta", f"run_url={run}", "--ttl", "3600")
    expect(uat.get_by_test_id("state")).to_contain_text("busy")  # type: ignore[attr-defined]
    link = uat.get_by_role("link", name="org/shop#41")  # type: ignore[attr-defined]
    expect(link).to_have_attribute("href", run)
    waiter = cli.start("web", "request", "uat", "--holder", "org/web#7")
    expect(uat.locator("ol.queue")).to_contain_text("org/web#7")  # type: ignore[attr-defined]
    cli.run("api", "request", "staging-1", "--holder", "org/api#1203", "--meta", "run_url=https://ci.example.com/1203")
    expect(card(page, "staging-1").get_by_test_id("state")).to_contain_text("1 of 2 slots in use")  # type: ignore[attr-defined]
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "dashboard.png"), full_page=True)  # type: ignore[attr-defined]

    # The CLI releases: the waiter's CLI gets the slot, and the page follows without a reload.
    cli.run("shop", "release", "uat")
    assert waiter.wait(timeout=15) == 0, waiter.stderr.read() if waiter.stderr else ""
    expect(uat.locator("td.holder")).to_contain_text("org/web#7")  # type: ignore[attr-defined]
    expect(uat.locator("ol.queue")).to_have_count(0)  # type: ignore[attr-defined]
    assert page.evaluate("window.__notReloaded") is True  # type: ignore[attr-defined]

    # Force release, as an admin, from the page.
    uat.get_by_role("button", name="Force release org/web#7 on uat").click()  # type: ignore[attr-defined]
    expect(uat.get_by_test_id("state")).to_contain_text("free")  # type: ignore[attr-defined]
    with httpx.Client(base_url=server.url, headers={"X-API-KEY": READ_KEY}) as read:
        last = read.get("/v1/history", params={"environment": "uat", "limit": 1}).json()["events"][0]
    assert (last["kind"], last["holder"], last["actor"]) == ("revoked", "org/web#7", "admin")

    # The history view, filtered to one environment.
    page.get_by_role("link", name="History").click()  # type: ignore[attr-defined]
    page.get_by_label("Environment").select_option("uat")  # type: ignore[attr-defined]
    page.get_by_role("button", name="Show").click()  # type: ignore[attr-defined]
    table = page.locator("table.history")  # type: ignore[attr-defined]
    expect(table).to_contain_text("revoked")
    expect(table).not_to_contain_text("staging-1")
    page.screenshot(path=str(SHOTS / "history.png"), full_page=True)  # type: ignore[attr-defined]


def test_an_admin_holds_an_environment_for_manual_qa_and_sets_maintenance(page: object, server: ServerProcess) -> None:
    sign_in(page, server, ADMIN_KEY)
    perf = card(page, "perf")
    perf.get_by_text("Manage perf").click()  # type: ignore[attr-defined]
    perf.get_by_label("Person").fill("alice@example.com")  # type: ignore[attr-defined]
    perf.get_by_label("Minutes").fill("45")  # type: ignore[attr-defined]
    perf.get_by_label("Reason").fill("manual QA of the checkout")  # type: ignore[attr-defined]
    perf.get_by_role("button", name="Hold").click()  # type: ignore[attr-defined]
    expect(perf.locator("td.holder")).to_contain_text("alice@example.com")  # type: ignore[attr-defined]
    expect(perf.locator("td.holder")).to_contain_text("manual QA of the checkout")  # type: ignore[attr-defined]

    perf = card(page, "perf")
    perf.get_by_text("Manage perf").click()  # type: ignore[attr-defined]
    perf.get_by_label("Note").fill("load test rig being rebuilt")  # type: ignore[attr-defined]
    perf.get_by_role("button", name="Start maintenance").click()  # type: ignore[attr-defined]
    expect(perf.get_by_test_id("state")).to_contain_text("maintenance")  # type: ignore[attr-defined]
    expect(perf.locator("p.note")).to_contain_text("load test rig being rebuilt")  # type: ignore[attr-defined]


def test_a_read_key_sees_everything_and_can_change_nothing(page: object, server: ServerProcess, cli: CLIs) -> None:
    cli.run("shop", "request", "uat", "--holder", "org/shop#50")
    sign_in(page, server, READ_KEY)
    uat = card(page, "uat")
    expect(uat.locator("td.holder")).to_contain_text("org/shop#50")  # type: ignore[attr-defined]
    expect(page.get_by_role("button", name="Force release org/shop#50 on uat")).to_have_count(0)  # type: ignore[attr-defined]
    expect(page.get_by_text("Manage uat")).to_have_count(0)  # type: ignore[attr-defined]
    lease = uat.locator("tr[data-lease]").get_attribute("data-lease")  # type: ignore[attr-defined]
    token = page.locator("input[name=csrf]").first.input_value()  # type: ignore[attr-defined]
    forged = page.request.post(f"{server.url}/ui/leases/{lease}/release", form={"csrf": token})  # type: ignore[attr-defined]
    assert forged.status == 403
    with httpx.Client(base_url=server.url, headers={"X-API-KEY": READ_KEY}) as read:
        assert read.get(f"/v1/leases/{lease}").json()["state"] == "active"


def test_a_form_without_its_csrf_token_is_refused(page: object, server: ServerProcess, cli: CLIs) -> None:
    cli.run("shop", "request", "uat", "--holder", "org/shop#51")
    sign_in(page, server, ADMIN_KEY)
    lease = card(page, "uat").locator("tr[data-lease]").get_attribute("data-lease")  # type: ignore[attr-defined]
    refused = page.request.post(f"{server.url}/ui/leases/{lease}/release", form={"csrf": ""})  # type: ignore[attr-defined]
    assert refused.status == 403
    assert "CSRF" in refused.text()
    with httpx.Client(base_url=server.url, headers={"X-API-KEY": READ_KEY}) as read:
        assert read.get(f"/v1/leases/{lease}").json()["state"] == "active"


def test_a_hostile_holder_is_shown_as_inert_text(page: object, server: ServerProcess) -> None:
    sign_in(page, server, ADMIN_KEY)
    hostile = '<img src=x onerror="window.__pwned=1;alert(1)"><script>window.__pwned=2</script>'
    with httpx.Client(base_url=server.url, headers={"X-API-KEY": CLIENT_KEY}) as client:
        metadata = {"run_url": "javascript:window.__pwned=3", "reason": "<b onmouseover=alert(1)>x</b>"}
        body = {"environment": "uat", "holder": hostile, "metadata": metadata}
        client.post("/v1/leases", json=body).raise_for_status()  # arrives while the page is open: live path
    holder = card(page, "uat").locator("td.holder")
    expect(holder).to_contain_text(hostile)  # type: ignore[attr-defined]
    page.reload()  # type: ignore[attr-defined]
    expect(card(page, "uat").locator("td.holder")).to_contain_text(hostile)  # type: ignore[attr-defined]
    assert card(page, "uat").locator("td.holder img, td.holder script, td.holder a").count() == 0  # type: ignore[attr-defined]
    assert page.evaluate("window.__pwned") is None  # type: ignore[attr-defined]


@contextmanager
def sibling_site(pages: dict[str, str]) -> Iterator[str]:
    """Pages served on another port of 127.0.0.1: another origin of the same site, as a sibling subdomain is. It
    can plant cookies the dashboard receives (cookies ignore ports), and the dashboard's SameSite=Strict cookies
    go along with its forms."""

    class Pages(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = pages.get(self.path, "").encode()
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Pages)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def _auto_submit(action: str, fields: dict[str, str], cookie: str = "") -> str:
    inputs = "".join(
        f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">' for k, v in fields.items()
    )
    plant = f"document.cookie = {json.dumps(cookie)};" if cookie else ""
    return (
        f'<!doctype html><form id="f" method="post" action="{html.escape(action)}">{inputs}</form>'
        f'<script>{plant} document.getElementById("f").submit();</script>'
    )


def test_a_sibling_site_can_neither_act_for_a_signed_in_admin_nor_sign_a_visitor_in(
    page: object, chromium: object, server: ServerProcess, cli: CLIs
) -> None:
    cli.run("shop", "request", "uat", "--holder", "org/shop#52")
    sign_in(page, server, ADMIN_KEY)
    lease = card(page, "uat").locator("tr[data-lease]").get_attribute("data-lease")  # type: ignore[attr-defined]
    token = page.locator("input[name=csrf]").first.input_value()  # type: ignore[attr-defined]  # say it leaked
    found = re.search(r'name="csrf" value="([^"]+)"', httpx.get(server.url + "/signin").text)
    assert found
    genuine = found.group(1)  # a sign-in token the server made, fetched by the attacker for itself
    pages = {
        "/release": _auto_submit(f"{server.url}/ui/leases/{lease}/release", {"csrf": token}),
        "/signin": _auto_submit(
            f"{server.url}/signin", {"csrf": genuine, "key": READ_KEY}, cookie=f"callme_csrf={genuine}; path=/"
        ),
    }
    with sibling_site(pages) as sibling:
        page.goto(sibling + "/release")  # type: ignore[attr-defined]
        expect(page.get_by_role("heading", name="Form refused")).to_be_visible()  # type: ignore[attr-defined]
        with httpx.Client(base_url=server.url, headers={"X-API-KEY": READ_KEY}) as read:
            assert read.get(f"/v1/leases/{lease}").json()["state"] == "active"

        visitor = chromium.new_context()  # type: ignore[attr-defined]
        try:
            tab = visitor.new_page()
            tab.set_default_timeout(BOUND)
            tab.goto(sibling + "/signin")
            expect(tab.get_by_role("heading", name="Form refused")).to_be_visible()
            tab.goto(server.url + "/")
            expect(tab).to_have_url(server.url + "/signin")  # not signed in with the attacker's key
        finally:
            visitor.close()


def test_an_admin_manages_environments_with_any_name(page: object, server: ServerProcess, cli: CLIs) -> None:
    # A browser would resolve /ui/environments/.. (even %2E%2E) to /ui/: the forms carry the name in a field.
    names = ["..", "feature/it's a b"]
    for name in names:
        cli.run("shop", "request", name, "--holder", f"org/shop {name}")
    sign_in(page, server, ADMIN_KEY)
    cards = {
        name: page.locator("section.env").filter(  # type: ignore[attr-defined]
            has=page.get_by_role("heading", name=name, exact=True)  # type: ignore[attr-defined]
        )
        for name in names
    }
    dots = cards[".."]
    dots.get_by_text("Manage ..").click()  # type: ignore[attr-defined]
    dots.get_by_label("Note").fill("rebuilding")  # type: ignore[attr-defined]
    dots.get_by_role("button", name="Start maintenance").click()  # type: ignore[attr-defined]
    expect(cards[".."].get_by_test_id("state")).to_contain_text("maintenance")  # type: ignore[attr-defined]

    spaced = cards["feature/it's a b"]
    spaced.get_by_text("Manage feature/it's a b").click()  # type: ignore[attr-defined]
    spaced.get_by_label("Labels (one per line)").fill("eu, west\npool a")  # type: ignore[attr-defined]
    spaced.get_by_role("button", name="Save").click()  # type: ignore[attr-defined]
    expect(cards["feature/it's a b"].locator("span.label")).to_have_count(2)  # type: ignore[attr-defined]
    with httpx.Client(base_url=server.url, headers={"X-API-KEY": READ_KEY}) as read:
        assert read.get("/v1/environments/%2E%2E").json()["note"] == "rebuilding"
        assert read.get("/v1/environments/feature/it's a b").json()["labels"] == ["eu, west", "pool a"]
