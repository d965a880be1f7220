"""Bad input against a real server: the exact 4xx and `code`, a problem document naming the field, nothing changed.

API.md: "Bad input is never clamped or guessed at, never yields a 5xx, and changes nothing."
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from .serverproc import ADMIN_KEY, CLIENT_KEY, READ_KEY, ServerProcess

PROBLEM = "application/problem+json"
ENV = "bi-uat"
NO_BODY = object()


@dataclass(frozen=True)
class State:
    server: ServerProcess
    http: httpx.Client  # one client: building one costs ~50 ms (its SSL context)
    lease: str
    token: str

    def fill(self, text: str) -> str:
        return text.replace("{lease}", self.lease).replace("{token}", self.token)


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[State]:
    """One server holding an environment with one live lease and no waiters, so nothing moves by itself."""
    server = ServerProcess(tmp_path_factory.mktemp("bad-input"))
    server.start()
    try:
        with server.client(ADMIN_KEY) as admin, server.client(CLIENT_KEY) as client:
            put = admin.put(f"/v1/environments/{ENV}", json={"slots": 1, "labels": ["bi-staging"]})
            assert put.status_code == 201, put.text
            lease = client.post("/v1/leases", json={"environment": ENV, "ttl": 3600})
            assert lease.status_code == 201, lease.text
        with httpx.Client(base_url=server.url, timeout=10) as http:
            yield State(server, http, lease.json()["id"], lease.json()["token"])
    finally:
        server.kill()


@dataclass(frozen=True)
class Case:
    id: str
    method: str
    path: str
    status: int
    code: str | None  # None: the answer has an empty body (the original /maybe routes)
    field: str | None = None
    json: Any = NO_BODY
    content: bytes | None = None
    key: str | None = CLIENT_KEY
    headers: tuple[tuple[str, str], ...] = ()

    def param(self) -> Any:
        return pytest.param(self, id=self.id)


def acquire(id: str, body: Any, field: str | None, status: int = 422, key: str = CLIENT_KEY) -> Any:
    return Case(id, "POST", "/v1/leases", status, "invalid", field, json=body, key=key).param()


def put(id: str, body: Any, field: str | None, status: int = 422) -> Any:
    return Case(id, "PUT", f"/v1/environments/{ENV}", status, "invalid", field, json=body, key=ADMIN_KEY).param()


def renew(id: str, body: Any, field: str | None, status: int = 422) -> Any:
    headers = (("X-Lease-Token", "{token}"),)
    return Case(id, "POST", "/v1/leases/{lease}/renew", status, "invalid", field, json=body, headers=headers).param()


def raw(id: str, method: str, path: str, content: bytes, status: int, code: str, key: str = CLIENT_KEY) -> Any:
    return Case(id, method, path, status, code, content=content, key=key).param()


def hook(id: str, change: dict[str, Any], field: str) -> Any:
    body = {"url": "https://hooks.example/x", "events": ["lease.forced"], "secret": "0123456789abcdef", **change}
    return Case(id, "PUT", "/v1/webhooks/bi-hook", 422, "invalid", field, json=body, key=ADMIN_KEY).param()


def query(id: str, method: str, path: str, field: str, key: str = ADMIN_KEY) -> Any:
    return Case(id, method, path, 422, "invalid", field, key=key).param()


def env(**fields: Any) -> dict[str, Any]:
    return {"environment": ENV, **fields}


# API.md: a name is any 1..200 characters without control characters (U+0000-U+001F, U+007F-U+009F).
BAD_NAMES = {
    "empty": "",
    "201-chars": "a" * 201,
    "nul": "u\x00at",
    "tab": "u\tat",
    "newline": "uat\n",
    "escape": "\x1b[31muat",
    "delete": "u\x7fat",
    "c1-next-line": "u\x85at",
    "c1-last": "u\x9fat",
}

CASES = [
    # POST /v1/leases: the body as a whole
    raw("acquire-not-json", "POST", "/v1/leases", b"{environment: uat}", 400, "invalid"),
    raw("acquire-empty-body", "POST", "/v1/leases", b"", 400, "invalid"),
    raw("acquire-truncated-json", "POST", "/v1/leases", b'{"environment": "uat"', 400, "invalid"),
    raw("acquire-not-utf8", "POST", "/v1/leases", b'{"environment": "\xff"}', 400, "invalid"),
    acquire("acquire-json-array", ["uat"], "body"),
    Case("acquire-json-null", "POST", "/v1/leases", 422, "invalid", "body", content=b"null").param(),
    acquire("acquire-json-string", "uat", "body"),
    acquire("acquire-unknown-field", env(colour="blue"), "colour"),
    acquire("acquire-both-environment-and-label", env(label="bi-staging"), "environment"),
    acquire("acquire-neither-environment-nor-label", {"holder": "me"}, "environment"),
    acquire("acquire-environment-null-label-null", {"environment": None, "label": None}, "environment"),
    *(acquire(f"acquire-environment-{k}", {"environment": v}, "environment") for k, v in BAD_NAMES.items()),
    acquire("acquire-environment-number", {"environment": 7}, "environment"),
    *(acquire(f"acquire-label-{k}", {"label": v}, "label") for k, v in BAD_NAMES.items() if k != "empty"),
    acquire("acquire-ttl-zero", env(ttl=0), "ttl"),
    acquire("acquire-ttl-negative", env(ttl=-60), "ttl"),
    acquire("acquire-ttl-float", env(ttl=60.5), "ttl"),
    acquire("acquire-ttl-whole-float", env(ttl=60.0), "ttl"),
    acquire("acquire-ttl-bool", env(ttl=True), "ttl"),
    acquire("acquire-ttl-string", env(ttl="60"), "ttl"),
    acquire("acquire-ttl-above-max", env(ttl=86401), "ttl"),
    acquire("acquire-ttl-huge", env(ttl=10**30), "ttl"),
    acquire("acquire-wait-negative", env(wait=-1), "wait"),
    acquire("acquire-wait-nan-string", env(wait="NaN"), "wait"),
    acquire("acquire-wait-bool", env(wait=True), "wait"),
    acquire("acquire-queue-false-with-wait", env(queue=False, wait=5), "wait"),
    acquire("acquire-queue-string", env(queue="no"), "queue"),
    acquire("acquire-ticket-empty", env(ticket=""), "ticket"),
    acquire("acquire-ticket-with-queue-false", env(ticket="t_x", queue=False), "queue"),
    acquire("acquire-priority-above-key-max", env(priority=6), "priority"),
    acquire("acquire-priority-float", env(priority=1.5), "priority"),
    acquire("acquire-priority-out-of-range-admin", env(priority=10**7), "priority", key=ADMIN_KEY),
    acquire("acquire-metadata-list", env(metadata=["repo"]), "metadata"),
    acquire("acquire-metadata-string", env(metadata="org/app"), "metadata"),
    acquire("acquire-metadata-over-4k", env(metadata={"log": "x" * 4100}), "metadata"),
    acquire("acquire-holder-empty", env(holder=""), "holder"),
    acquire("acquire-holder-201-chars", env(holder="h" * 201), "holder"),
    acquire("acquire-holder-number", env(holder=5), "holder"),
    acquire("acquire-holder-nul", env(holder="a\x00b"), "holder"),
    acquire("acquire-request-id-101-chars", env(request_id="r" * 101), "request_id"),
    acquire("acquire-request-id-empty", env(request_id=""), "request_id"),
    raw("acquire-over-64k", "POST", "/v1/leases", b'{"metadata": "' + b"x" * (64 * 1024) + b'"}', 413, "too_large"),
    # Lone UTF-16 surrogates parse as JSON but could never be stored or sent back: 400 before anything is stored.
    raw(
        "acquire-holder-lone-surrogate",
        "POST",
        "/v1/leases",
        b'{"environment": "bi-x", "holder": "\\ud800"}',
        400,
        "invalid",
    ),
    raw(
        "acquire-unknown-field-lone-surrogate",
        "POST",
        "/v1/leases",
        b'{"environment": "bi-x", "\\udfff": 1}',
        400,
        "invalid",
    ),
    # PUT /v1/environments/{name}
    raw("put-not-json", "PUT", f"/v1/environments/{ENV}", b"slots=2", 400, "invalid", key=ADMIN_KEY),
    put("put-json-array", [{"slots": 2}], "body"),
    put("put-unknown-field", {"colour": "blue"}, "colour"),
    put("put-slots-zero", {"slots": 0}, "slots"),
    put("put-slots-1001", {"slots": 1001}, "slots"),
    put("put-slots-string", {"slots": "2"}, "slots"),
    put("put-slots-null", {"slots": None}, "slots"),
    put("put-labels-duplicate", {"labels": ["a", "a"]}, "labels"),
    put("put-labels-bad-name", {"labels": ["bad\nlabel"]}, "labels"),
    put("put-labels-not-list", {"labels": "staging"}, "labels"),
    put("put-labels-51", {"labels": [f"l{i}" for i in range(51)]}, "labels"),
    put("put-properties-non-string", {"properties": {"port": 8080}}, "properties.port"),
    put("put-properties-colliding", {"properties": {"a-b": "1", "a_b": "2"}}, "properties"),
    put("put-properties-empty-name", {"properties": {"": "x"}}, "properties"),
    put("put-properties-list", {"properties": ["url"]}, "properties"),
    put("put-maintenance-yes", {"maintenance": "yes"}, "maintenance"),
    put("put-description-2001", {"description": "d" * 2001}, "description"),
    put("put-note-number", {"note": 5}, "note"),
    raw(
        "put-description-lone-surrogate",
        "PUT",
        f"/v1/environments/{ENV}",
        b'{"description": "\\ud800"}',
        400,
        "invalid",
        key=ADMIN_KEY,
    ),
    *(
        query(f"put-name-{k}", "PUT", f"/v1/environments/{quote(v, safe='')}", "name")
        for k, v in BAD_NAMES.items()  # "empty": /v1/environments/ names the empty name
    ),
    query("get-environment-bad-name", "GET", "/v1/environments/u%09at", "name"),
    query("delete-environment-bad-name", "DELETE", "/v1/environments/u%C2%85at", "name"),
    query("delete-environment-force-maybe", "DELETE", f"/v1/environments/{ENV}?force=maybe", "force"),
    # GET /v1/history
    query("history-limit-zero", "GET", "/v1/history?limit=0", "limit"),
    query("history-limit-abc", "GET", "/v1/history?limit=abc", "limit"),
    query("history-limit-5000", "GET", "/v1/history?limit=5000", "limit"),
    query("history-limit-negative", "GET", "/v1/history?limit=-1", "limit"),
    query("history-limit-float", "GET", "/v1/history?limit=1.5", "limit"),
    query("history-environment-bad-name", "GET", "/v1/history?environment=u%0Aat", "environment"),
    # str.isdigit() accepts "²", and int() refuses 5000-digit numbers: each must be a 422 naming the field, not a 500.
    query("history-limit-superscript", "GET", "/v1/history?limit=%C2%B2", "limit"),
    query("history-limit-5000-digits", "GET", "/v1/history?limit=" + "9" * 5000, "limit"),
    # webhooks (admin)
    raw("hook-not-json", "PUT", "/v1/webhooks/bi-hook", b"url=http://x", 400, "invalid", key=ADMIN_KEY),
    raw(
        "hook-secret-lone-surrogate",
        "PUT",
        "/v1/webhooks/bi-hook",
        b'{"url": "https://h.example/x", "events": ["lease.forced"], "secret": "0123456789abcdef\\ud800"}',
        400,
        "invalid",
        key=ADMIN_KEY,
    ),
    hook("hook-url-ftp", {"url": "ftp://h.example/x"}, "url"),
    hook("hook-url-no-host", {"url": "https:///x"}, "url"),
    hook("hook-url-bad-port", {"url": "http://h.example:99999/x"}, "url"),
    hook("hook-url-newline", {"url": "http://h.example/x\nHost: evil"}, "url"),
    hook("hook-events-unknown", {"events": ["acquired"]}, "events"),
    hook("hook-events-twice", {"events": ["lease.forced", "lease.forced"]}, "events"),
    hook("hook-secret-short", {"secret": "x" * 15}, "secret"),
    hook("hook-secret-number", {"secret": 1234567890123456}, "secret"),
    hook("hook-format-unknown", {"format": "teams"}, "format"),
    hook("hook-unknown-field", {"colour": "blue"}, "colour"),
    query("hook-bad-name", "PUT", "/v1/webhooks/.hidden", "name"),
    query("hook-deliveries-limit-zero", "GET", "/v1/webhooks/bi-hook/deliveries?limit=0", "limit"),
    query("hook-deliveries-limit-superscript", "GET", "/v1/webhooks/bi-hook/deliveries?limit=%C2%B2", "limit"),
    query("hook-deliveries-limit-5000-digits", "GET", "/v1/webhooks/bi-hook/deliveries?limit=" + "9" * 5000, "limit"),
    put("put-held-too-long-zero", {"held_too_long": 0}, "held_too_long"),
    put("put-waiting-too-long-string", {"waiting_too_long": "600"}, "waiting_too_long"),
    # leases: renew and release
    renew("renew-ttl-zero", {"ttl": 0}, "ttl"),
    renew("renew-ttl-string", {"ttl": "60"}, "ttl"),
    renew("renew-ttl-float", {"ttl": 1.5}, "ttl"),
    renew("renew-ttl-above-max", {"ttl": 86401}, "ttl"),
    renew("renew-unknown-field", {"ttl": 60, "colour": "blue"}, "colour"),
    renew("renew-json-array", [60], "body"),
    renew("renew-token-number", {"token": 5}, "token"),
    raw("renew-not-json", "POST", "/v1/leases/{lease}/renew", b"ttl=60", 400, "invalid"),
    raw("renew-token-lone-surrogate", "POST", "/v1/leases/{lease}/renew", b'{"token": "\\ud800"}', 400, "invalid"),
    query("release-force-maybe", "DELETE", "/v1/leases/{lease}?force=maybe", "force"),
    # unknown routes and wrong methods (no key needed to learn that)
    Case("unknown-route", "GET", "/v2/leases", 404, "not_found", key=None).param(),
    Case("unknown-route-under-v1", "GET", "/v1/lease", 404, "not_found", key=None).param(),
    Case("unknown-route-deeper", "POST", "/v1/leases/{lease}/renew/now", 404, "not_found").param(),
    Case("wrong-method-lease", "PUT", "/v1/leases/{lease}", 405, "invalid").param(),
    Case("wrong-method-leases", "GET", "/v1/leases", 405, "invalid").param(),
    Case("wrong-method-environment", "POST", f"/v1/environments/{ENV}", 405, "invalid", key=ADMIN_KEY).param(),
    Case("wrong-method-history", "DELETE", "/v1/history", 405, "invalid", key=ADMIN_KEY).param(),
    Case("wrong-method-maybe", "PATCH", f"/maybe?environment={ENV}", 405, "invalid").param(),
]

# The webhook routes are the admin's alone, reads included (a hook's URL may be its receiver's secret).
WEBHOOK_ROUTES = [
    ("GET", "/v1/webhooks"),
    ("GET", "/v1/webhooks/bi-hook"),
    ("PUT", "/v1/webhooks/bi-hook"),
    ("DELETE", "/v1/webhooks/bi-hook"),
    ("GET", "/v1/webhooks/bi-hook/deliveries"),
]
# Every v1 route (and the document), with placeholders filled from State.
V1_ROUTES = [
    ("POST", "/v1/leases"),
    ("GET", "/v1/leases/{lease}"),
    ("DELETE", "/v1/leases/{lease}"),
    ("POST", "/v1/leases/{lease}/renew"),
    ("DELETE", "/v1/tickets/t_unknown"),
    ("GET", "/v1/environments"),
    ("GET", f"/v1/environments/{ENV}"),
    ("PUT", f"/v1/environments/{ENV}"),
    ("DELETE", f"/v1/environments/{ENV}"),
    ("GET", "/v1/history"),
    ("GET", "/openapi.json"),
    *WEBHOOK_ROUTES,
]
WRONG_KEYS = {
    "none": {},
    "wrong-x-api-key": {"X-API-KEY": "not-a-key"},
    "wrong-bearer": {"Authorization": "Bearer nope"},
}
FORBIDDEN = [
    *((READ_KEY, "read", m, p) for m, p in V1_ROUTES if m != "GET"),
    (CLIENT_KEY, "client", "PUT", f"/v1/environments/{ENV}"),
    (CLIENT_KEY, "client", "DELETE", f"/v1/environments/{ENV}"),
    (CLIENT_KEY, "client", "DELETE", "/v1/leases/{lease}?force=true"),
    *((READ_KEY, "read", m, p) for m, p in WEBHOOK_ROUTES if m == "GET"),
    *((CLIENT_KEY, "client", m, p) for m, p in WEBHOOK_ROUTES),
]


def _snapshot(http: httpx.Client) -> tuple[Any, Any]:
    admin = {"X-API-KEY": ADMIN_KEY}
    environments = http.get("/v1/environments", headers=admin)
    history = http.get("/v1/history", params={"limit": 1000}, headers=admin)
    assert environments.status_code == 200, environments.text
    assert history.status_code == 200, history.text
    return environments.json(), history.json()


def _send(state: State, method: str, path: str, headers: dict[str, str], **kwargs: Any) -> httpx.Response:
    # A fresh connection per request: an answer to a refused body (or a 500) may close it.
    filled = {k: state.fill(v) for k, v in headers.items()} | {"Connection": "close"}
    return state.http.request(method, state.fill(path), headers=filled, **kwargs)


def _assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert (response.status_code, response.headers.get("content-type")) == (status, PROBLEM), response.text
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"].endswith("/" + code)
    assert body["title"]
    assert body["detail"]
    return body


def _assert_no_internal_error(server: ServerProcess, since: int) -> None:
    new = server.log()[since:]
    assert "Traceback" not in new, new[-3000:]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_refused_and_changes_nothing(state: State, case: Case) -> None:
    before, log_size = _snapshot(state.http), len(state.server.log())
    headers = dict(case.headers)
    if case.key is not None:
        headers["X-API-KEY"] = case.key
    kwargs: dict[str, Any] = {}
    if case.json is not NO_BODY:
        kwargs["json"] = case.json
    elif case.content is not None:
        kwargs["content"] = case.content
    response = _send(state, case.method, case.path, headers, **kwargs)

    assert case.code is not None
    body = _assert_problem(response, case.status, case.code)
    if case.field is not None:
        assert body["field"] == case.field
        assert body["detail"].startswith(f"{case.field}: ")
    elif case.status == 400:
        assert "JSON" in body["detail"]
    elif case.status == 413:
        assert "65536" in body["detail"]
    elif case.status == 405:
        assert case.method in body["detail"]
    assert _snapshot(state.http) == before
    _assert_no_internal_error(state.server, log_size)


def test_too_large_chunked_body_is_refused_without_content_length(state: State) -> None:
    before = _snapshot(state.http)
    chunks = iter([b'{"metadata": "', b"x" * (64 * 1024), b'"}'])
    response = _send(state, "POST", "/v1/leases", {"X-API-KEY": CLIENT_KEY}, content=chunks)
    assert "content-length" not in response.request.headers
    _assert_problem(response, 413, "too_large")
    assert _snapshot(state.http) == before


# NaN, Infinity, numbers beyond a double and lone surrogates in metadata or property names could be stored but
# never sent back as JSON: each is refused (400) before anything is stored. Each case gets its own server, so that
# a regression that commits one (and so breaks every later GET /v1/environments) cannot spoil the other cases.
@pytest.mark.parametrize(
    ("method", "path", "content"),
    [
        pytest.param("POST", "/v1/leases", b'{"environment": "bi-x", "metadata": {"x": NaN}}', id="metadata-nan"),
        pytest.param("POST", "/v1/leases", b'{"environment": "bi-x", "metadata": {"x": -Infinity}}', id="metadata-inf"),
        pytest.param("POST", "/v1/leases", b'{"environment": "bi-x", "metadata": {"x": 1e400}}', id="metadata-1e400"),
        pytest.param("POST", "/v1/leases", b'{"environment": "x", "metadata": {"x": "\\ud800"}}', id="metadata-ud800"),
        pytest.param("PUT", "/v1/environments/bi-x", b'{"properties": {"\\ud800": "x"}}', id="property-name-surrogate"),
    ],
)  # fmt: skip
def test_unrepresentable_json_is_refused_and_changes_nothing(
    server: ServerProcess, method: str, path: str, content: bytes
) -> None:
    with server.client(ADMIN_KEY) as admin:
        before = _snapshot(admin)
        response = admin.request(method, path, content=content)
        body = _assert_problem(response, 400, "invalid")
        assert "JSON" in body["detail"]
        assert _snapshot(admin) == before
    _assert_no_internal_error(server, 0)


def test_priority_above_the_client_limit_is_allowed_for_admin_and_up_to_the_limit(state: State) -> None:
    with state.server.client(ADMIN_KEY) as admin, state.server.client(CLIENT_KEY) as client:
        for http, priority in ((admin, 1000), (client, 5)):
            name = f"bi-priority-{priority}"
            granted = http.post("/v1/leases", json={"environment": name, "priority": priority})
            assert granted.status_code == 201, granted.text
            released = http.delete(
                f"/v1/leases/{granted.json()['id']}", headers={"X-Lease-Token": granted.json()["token"]}
            )
            assert released.status_code == 204
            assert admin.delete(f"/v1/environments/{name}").status_code == 204


@pytest.mark.parametrize(("method", "path"), V1_ROUTES)
@pytest.mark.parametrize("auth", WRONG_KEYS)
def test_missing_or_wrong_key_is_401(state: State, method: str, path: str, auth: str) -> None:
    before = _snapshot(state.http)
    response = _send(state, method, path, WRONG_KEYS[auth], json={"environment": ENV})
    _assert_problem(response, 401, "unauthorized")
    assert _snapshot(state.http) == before


@pytest.mark.parametrize(
    ("key", "method", "path"), [pytest.param(k, m, p, id=f"{role}-{m}-{p}") for k, role, m, p in FORBIDDEN]
)
def test_key_without_the_role_is_403(state: State, key: str, method: str, path: str) -> None:
    before = _snapshot(state.http)
    headers = {"X-API-KEY": key, "X-Lease-Token": "{token}"}
    response = _send(state, method, path, headers, json={"environment": ENV})
    _assert_problem(response, 403, "forbidden")
    assert _snapshot(state.http) == before


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        *(
            pytest.param(m, f"/maybe?environment={ENV}", h, 401, id=f"{m}-{a}")
            for m in ("GET", "POST", "DELETE")
            for a, h in WRONG_KEYS.items()
        ),
        pytest.param("POST", f"/maybe?environment={ENV}", {"X-API-KEY": READ_KEY}, 401, id="POST-read-key"),
        pytest.param("DELETE", f"/maybe?environment={ENV}", {"X-API-KEY": READ_KEY}, 401, id="DELETE-read-key"),
        pytest.param("GET", "/maybe", {"X-API-KEY": CLIENT_KEY}, 400, id="GET-no-environment"),
        pytest.param("POST", "/maybe", {"X-API-KEY": CLIENT_KEY}, 400, id="POST-no-environment"),
        pytest.param("DELETE", "/maybe?environment=", {"X-API-KEY": CLIENT_KEY}, 400, id="DELETE-empty-environment"),
        *(
            pytest.param(
                "POST", f"/maybe?environment={quote(v, safe='')}", {"X-API-KEY": CLIENT_KEY}, 400, id=f"POST-{k}"
            )
            for k, v in BAD_NAMES.items()
            if k != "empty"
        ),
    ],
)
def test_maybe_refusals_have_an_empty_body(
    state: State, method: str, path: str, headers: dict[str, str], status: int
) -> None:
    before = _snapshot(state.http)
    response = _send(state, method, path, headers)
    assert response.status_code == status
    assert response.content == b""
    assert _snapshot(state.http) == before


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_health_needs_no_key(state: State, path: str) -> None:
    response = _send(state, "GET", path, {})
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_bearer_key_is_accepted(state: State) -> None:
    response = _send(state, "GET", "/v1/environments", {"Authorization": f"Bearer {READ_KEY}"})
    assert response.status_code == 200


# Starlette answers 405 from the first Route whose path matches; Allow must still list every method of the path
# (RFC 9110 15.5.6), not only that route's.
@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/v1/leases/{lease}", {"GET", "HEAD", "DELETE"}),
        ("POST", f"/v1/environments/{ENV}", {"GET", "HEAD", "PUT", "DELETE"}),
        ("GET", "/v1/leases", {"POST"}),
        ("PATCH", "/maybe", {"GET", "HEAD", "POST", "DELETE"}),
    ],
)
def test_405_allow_lists_every_method_of_the_path(state: State, method: str, path: str, allowed: set[str]) -> None:
    response = _send(state, method, path, {"X-API-KEY": ADMIN_KEY})
    _assert_problem(response, 405, "invalid")
    assert {m.strip() for m in response.headers["allow"].split(",")} == allowed
