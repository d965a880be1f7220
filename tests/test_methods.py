"""Every route of the app with every kind of method, against a real server (API.md, "Routes"): a route that
answers GET answers HEAD the same way without a body, no route answers a 5xx to any method, and a method a route
does not have, one the server has never heard of included, is 405 with `Allow`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from callme.server.app import create_app
from callme.server.settings import Settings
from starlette.routing import Route

from .contract import running
from .serverproc import ADMIN_KEY, ServerProcess

NAME = "feature/login"
# What fills each path parameter; a route with a parameter not listed here fails the test until it is.
PARAMETERS = {
    "name": "feature%2Flogin",
    "lease": "{lease}",
    "ticket": "t_unknown",
    "group": "g_unknown",
    "file": "dashboard.js",
}
# A webhook's name is a plain word (docs/api.md), not an environment's: its routes get one of their own.
HOOK_NAME = "ops-hook"
QUERIES = {"/maybe": f"?environment={NAME}", "/maybe/": f"?environment={NAME}"}
# Methods no route has: one httptools knows (PATCH, OPTIONS) and one nobody knows.
ODD_METHODS = ("PATCH", "OPTIONS", "FOO")
# Headers that may differ between two answers to the same request: when it was sent, how the body travels (GET's
# stream is chunked; HEAD's has no body to chunk), and a fresh CSRF cookie on each page.
VOLATILE = {"date", "transfer-encoding", "set-cookie"}


def _routes() -> list[Route]:
    return [route for route in create_app(Settings()).routes if isinstance(route, Route)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running(tmp_path_factory.mktemp("methods")) as proc:
        yield proc


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers={"X-API-KEY": ADMIN_KEY}, timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def lease(http: httpx.Client) -> str:
    # Something to show on every page: an environment named with a slash, held, with a lease to point at.
    answer = http.post("/v1/leases", json={"environment": NAME, "holder": "someone"})
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


def _url(route: Route, lease: str) -> str:
    names = set(route.param_convertors)
    assert names <= set(PARAMETERS), f"{route.path}: give {names - set(PARAMETERS)} a value in PARAMETERS"
    values = {key: value.replace("{lease}", lease) for key, value in PARAMETERS.items()}
    if route.path.startswith("/v1/webhooks/"):
        values["name"] = HOOK_NAME
    return route.path_format.format(**values) + QUERIES.get(route.path, "")


def _get(http: httpx.Client, url: str) -> tuple[int, dict[str, str], bytes]:
    # Streamed, and closed once the headers are in: /v1/events never ends.
    with http.stream("GET", url) as response:
        body = b"" if response.headers.get("content-type", "").startswith("text/event-stream") else response.read()
        return response.status_code, dict(response.headers), body


def _comparable(headers: dict[str, Any]) -> dict[str, Any]:
    kept = {k.lower(): v for k, v in headers.items() if k.lower() not in VOLATILE}
    if "set-cookie" in {k.lower() for k in headers}:
        kept["set-cookie"] = "present"
    return kept


def test_every_route_answers_head_as_get_and_no_method_gets_a_5xx(http: httpx.Client, lease: str) -> None:
    routes = _routes()
    assert {"/maybe", "/maybe/", "/v1/events", "/v1/environments/{name:path}", "/"} <= {r.path for r in routes}
    for route in routes:
        url = _url(route, lease)
        methods = set(route.methods or ())
        allow = ", ".join(sorted(methods))
        for method in ODD_METHODS:
            answer = http.request(method, url)
            assert (answer.status_code, answer.headers.get("allow")) == (405, allow), (method, url, answer.text)
            assert answer.json()["code"] == "invalid"
        head = http.head(url)
        assert head.status_code < 500, (url, head.headers)
        assert head.content == b"", url
        if "GET" not in methods:
            assert (head.status_code, head.headers.get("allow")) == (405, allow), url
            continue
        first, second = _get(http, url), _get(http, url)
        head = http.head(url)
        assert first[0] < 500, (url, first)
        assert head.status_code == first[0], (url, head.headers, first)
        expected = _comparable(first[1])
        if first[1].get("content-length") != second[1].get("content-length"):
            expected.pop("content-length")  # a body that changes between requests: /metrics counts them
            assert "content-length" in head.headers, url
        got = _comparable(dict(head.headers))
        if "content-length" not in expected:
            got.pop("content-length", None)
        assert got == expected, url


def test_maybe_with_a_trailing_slash_is_answered_not_redirected(http: httpx.Client) -> None:
    steps = ("GET", "HEAD", "POST", "GET", "HEAD", "POST", "DELETE", "GET")

    def transcript(path: str, name: str) -> list[tuple[int, bytes]]:
        answers = [http.request(method, path, params={"environment": name}) for method in steps]
        return [(answer.status_code, answer.content) for answer in answers]

    expected = [(200, b""), (200, b""), (201, b""), (403, b""), (403, b""), (403, b""), (204, b""), (200, b"")]
    assert transcript("/maybe/", "slash-uat") == expected
    assert transcript("/maybe", "no-slash-uat") == expected
    # Errors keep their documented statuses: a missing environment is 400, a missing key 401, both bodiless.
    assert [(a.status_code, a.content) for a in (http.get("/maybe/"), http.head("/maybe/"))] == [(400, b"")] * 2
    bare = httpx.post(str(http.base_url.join("/maybe/")), params={"environment": "slash-uat"})
    assert (bare.status_code, bare.content) == (401, b"")
