"""The server answers as its OpenAPI document says: every route documented, every answer's status listed and
its body valid against the documented schema (JSON Schema 2020-12, `$ref`s resolved within the document)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from callme.server.app import create_app
from callme.server.openapi import document
from callme.server.settings import Settings
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from starlette.routing import Route

from .serverproc import ADMIN_KEY, CLIENT_KEY, READ_KEY, ServerProcess

DOC = document()
BASE = "urn:call-me:openapi"
REGISTRY: Registry[Any] = Registry().with_resource(BASE, Resource.from_contents(DOC, default_specification=DRAFT202012))
METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")


def _pointer(*parts: str) -> str:
    return "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def _validator(*parts: str) -> Draft202012Validator:
    schema = {"$ref": f"{BASE}#/{_pointer(*parts)}"}
    return Draft202012Validator(schema, registry=REGISTRY, format_checker=Draft202012Validator.FORMAT_CHECKER)


def _operations() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in DOC["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield path, method, operation


class Checker:
    """Checks each answer against the document and remembers which (path, method, status) were seen."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, str, str]] = set()

    def __call__(self, response: httpx.Response, template: str, status: int | None = None) -> Any:
        method = response.request.method.lower()
        operation = DOC["paths"][template][method]
        code = str(response.status_code)
        where = f"{method.upper()} {template}"
        assert code in operation["responses"], f"{where} answered {code}, undocumented: {response.text}"
        if status is not None:
            assert response.status_code == status, f"{where}: {response.text}"
        self.seen.add((template, method, code))
        sent_json = response.request.headers.get("content-type") == "application/json"
        if code.startswith("2") and "requestBody" in operation and sent_json:  # what it took, it documents
            request_schema = ("paths", template, method, "requestBody", "content", "application/json", "schema")
            _validator(*request_schema).validate(json.loads(response.request.content))
        content = operation["responses"][code].get("content")
        if content is None:
            assert response.content == b"", f"{where} {code} should have no body"
            return None
        media = response.headers["content-type"].split(";")[0].strip()
        assert media in content, f"{where} {code} answered {media}, documented {sorted(content)}"
        if media == "text/plain":
            return response.text
        body = response.json()
        _validator("paths", template, method, "responses", code, "content", media, "schema").validate(body)
        return body

    def missing(self, prefix: str) -> set[tuple[str, str, str]]:
        """Documented 2xx answers under `prefix` that were never seen."""
        documented = {
            (path, method, code)
            for path, method, operation in _operations()
            for code in operation["responses"]
            if path.startswith(prefix) and code.startswith("2")
        }
        return documented - self.seen


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("openapi"))
    proc.start()
    try:
        yield proc
    finally:
        proc.kill()


@pytest.fixture
def clients(server: ServerProcess) -> Iterator[tuple[httpx.Client, httpx.Client, httpx.Client]]:
    with server.client(ADMIN_KEY) as admin, server.client(CLIENT_KEY) as client, server.client(READ_KEY) as read:
        yield admin, client, read


def test_the_document_is_well_formed() -> None:
    assert DOC["openapi"].startswith("3.1")
    for schema in DOC["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    operation_ids = [op["operationId"] for _, _, op in _operations()]
    assert len(operation_ids) == len(set(operation_ids))
    for path, method, operation in _operations():
        assert operation["responses"], (path, method)
        for code, response in operation["responses"].items():
            assert response["description"], (path, method, code)
            for media in response.get("content", {}):
                # Resolving every schema proves that each $ref points at something.
                _validator("paths", path, method, "responses", code, "content", media, "schema")
        parameters = [*DOC["paths"][path].get("parameters", []), *operation.get("parameters", [])]
        names = {_resolve(p)["name"] for p in parameters if _resolve(p)["in"] == "path"}
        assert names == {part[1:-1] for part in path.split("/") if part.startswith("{")}, (path, method)
    for problem_answer in (r for _, _, op in _operations() for c, r in op["responses"].items() if c[0] in "45"):
        content = problem_answer.get("content")
        assert content is None or list(content) in (["application/problem+json"], ["application/json"])


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    if "$ref" not in node:
        return node
    found: dict[str, Any] = DOC
    for part in node["$ref"].removeprefix("#/").split("/"):
        found = found[part]
    return found


def test_every_route_is_documented_and_every_documented_route_exists() -> None:
    app = create_app(Settings())
    served = {
        (route.path_format, method.lower())  # `{name}` for `{name:path}`
        for route in app.routes
        if isinstance(route, Route) and route.include_in_schema  # not /maybe/, the same route as /maybe
        for method in route.methods or ()
        if method != "HEAD"  # starlette adds HEAD to every GET route
    }
    documented = {(path, method) for path, method, _ in _operations()}
    assert served == documented


def test_the_served_document_is_this_document(server: ServerProcess, clients: Any) -> None:
    _, _, read = clients
    check = Checker()
    assert check(read.get("/openapi.json"), "/openapi.json", 200) == DOC
    check(httpx.get(server.url + "/openapi.json"), "/openapi.json", 401)


def test_the_v1_routes_answer_as_documented(server: ServerProcess, clients: Any) -> None:
    admin, client, read = clients
    check = Checker()
    env, label = "oa-uat", "oa-staging"
    token_header = "X-Lease-Token"

    check(httpx.get(server.url + "/healthz"), "/healthz", 200)
    check(httpx.get(server.url + "/readyz"), "/readyz", 200)
    check(read.get("/openapi.json"), "/openapi.json", 200)

    # environments
    declared = {"slots": 1, "labels": [label], "description": "UAT", "properties": {"url": "https://uat.example"}}
    created = check(admin.put(f"/v1/environments/{env}", json=declared), "/v1/environments/{name}", 201)
    assert (created["auto"], created["free"], created["properties"]) == (False, 1, declared["properties"])
    changed = check(admin.put(f"/v1/environments/{env}", json={"note": None}), "/v1/environments/{name}", 200)
    assert changed["description"] == "UAT"

    # acquire: granted, repeated, queued, busy
    body = {"environment": env, "holder": "org/app#1", "ttl": 600, "metadata": {"repo": "org/app"}}
    body["request_id"] = str(uuid.uuid4())
    answer = client.post("/v1/leases", json=body)
    first = check(answer, "/v1/leases", 201)
    assert answer.headers["location"] == f"/v1/leases/{first['id']}"
    assert first["properties"] == declared["properties"]
    assert first["state"] == "active"
    lease, token = first["id"], first["token"]
    assert check(client.post("/v1/leases", json=body), "/v1/leases", 201)["token"] == token
    queued = check(client.post("/v1/leases", json={"environment": env, "wait": 0.2}), "/v1/leases", 202)
    assert queued["position"] == 1
    assert queued["waited"] >= 0.2
    assert [h["id"] for h in queued["holders"]] == [lease]
    busy = check(client.post("/v1/leases", json={"label": label, "queue": False}), "/v1/leases", 409)
    assert busy["code"] == "busy"
    assert [h["id"] for h in busy["holders"]] == [lease]
    check(client.post("/v1/leases", json={"label": "oa-nobody"}), "/v1/leases", 404)
    check(read.post("/v1/leases", json={"environment": env}), "/v1/leases", 403)

    # renew, read
    renewed = check(
        client.post(f"/v1/leases/{lease}/renew", headers={token_header: token}, json={"ttl": 900}),
        "/v1/leases/{lease}/renew",
        200,
    )
    assert renewed["ttl"] == 900
    check(client.post(f"/v1/leases/{lease}/renew", json={"token": token}), "/v1/leases/{lease}/renew", 200)
    wrong = check(client.post(f"/v1/leases/{lease}/renew", headers={token_header: "x"}), "/v1/leases/{lease}/renew")
    assert wrong["code"] == "wrong_token"
    check(read.get(f"/v1/leases/{lease}"), "/v1/leases/{lease}", 200)
    check(read.get("/v1/leases/l_unknown"), "/v1/leases/{lease}", 404)
    listed = check(read.get("/v1/environments"), "/v1/environments", 200)
    mine = next(e for e in listed["environments"] if e["name"] == env)
    assert [entry["seq"] for entry in mine["queue"]] == [queued["seq"]]
    assert mine["free"] == 0
    check(read.get(f"/v1/environments/{env}"), "/v1/environments/{name}", 200)
    check(read.get("/v1/environments/oa-none"), "/v1/environments/{name}", 404)
    check(read.get("/v1/history"), "/v1/history", 200)
    events = check(read.get("/v1/history", params={"environment": env, "limit": 3}), "/v1/history", 200)["events"]
    assert len(events) == 3
    assert {e["environment"] for e in events} == {env}
    conflict = check(admin.delete(f"/v1/environments/{env}"), "/v1/environments/{name}", 409)
    assert conflict["code"] == "conflict"

    # release, the queued ticket's grant, shell answers, leave
    check(client.delete(f"/v1/leases/{lease}", headers={token_header: "x"}), "/v1/leases/{lease}", 403)
    check(client.delete(f"/v1/leases/{lease}", headers={token_header: token}), "/v1/leases/{lease}", 204)
    check(client.delete(f"/v1/leases/{lease}", headers={token_header: token}), "/v1/leases/{lease}", 204)
    gone = check(
        client.post(f"/v1/leases/{lease}/renew", headers={token_header: token}), "/v1/leases/{lease}/renew", 410
    )
    assert gone["code"] == "lease_gone"
    comeback = {"environment": env, "ticket": queued["ticket"]}
    second = check(client.post("/v1/leases", json=comeback), "/v1/leases", 201)
    assert second["fence"] > first["fence"]
    assert second["seq"] == queued["seq"]
    text = {"Accept": "text/plain"}
    shell = check(client.post("/v1/leases", json=comeback, headers=text), "/v1/leases", 201)
    assert f"CALL_ME_LEASE_ID='{second['id']}'\n" in shell
    assert "CALL_ME_PROPERTY_URL='https://uat.example'\n" in shell
    shell = check(client.post("/v1/leases", json={"environment": env}, headers=text), "/v1/leases", 202)
    third_ticket = shell.split("CALL_ME_TICKET='")[1].split("'")[0]
    check(client.delete(f"/v1/tickets/{queued['ticket']}"), "/v1/tickets/{ticket}", 204)
    assert check(read.get(f"/v1/leases/{second['id']}"), "/v1/leases/{lease}", 200)["state"] == "released"
    ended = check(client.post("/v1/leases", json=comeback), "/v1/leases", 410)
    assert ended["code"] == "ticket_gone"
    check(client.delete(f"/v1/tickets/{third_ticket}"), "/v1/tickets/{ticket}", 204)
    check(client.delete("/v1/tickets/t_unknown"), "/v1/tickets/{ticket}", 204)
    check(read.delete("/v1/tickets/t_unknown"), "/v1/tickets/{ticket}", 403)

    # maintenance, forced release, forced delete
    check(admin.put(f"/v1/environments/{env}", json={"maintenance": True, "note": "up"}), "/v1/environments/{name}")
    held = check(client.post("/v1/leases", json={"environment": env, "queue": False}), "/v1/leases", 409)
    assert held["code"] == "maintenance"
    check(admin.put(f"/v1/environments/{env}", json={"maintenance": False}), "/v1/environments/{name}", 200)
    fourth = check(client.post("/v1/leases", json={"label": label}), "/v1/leases", 201)
    assert fourth["environment"] == env
    check(client.delete(f"/v1/leases/{fourth['id']}?force=true"), "/v1/leases/{lease}", 403)
    check(admin.delete(f"/v1/leases/{fourth['id']}?force=true"), "/v1/leases/{lease}", 204)
    assert check(read.get(f"/v1/leases/{fourth['id']}"), "/v1/leases/{lease}", 200)["state"] == "revoked"
    check(admin.delete(f"/v1/leases/{fourth['id']}", headers={token_header: "x"}), "/v1/leases/{lease}", 403)
    fifth = check(client.post("/v1/leases", json={"environment": env}), "/v1/leases", 201)
    check(admin.delete(f"/v1/environments/{env}?force=true"), "/v1/environments/{name}", 204)
    assert check(read.get(f"/v1/leases/{fifth['id']}"), "/v1/leases/{lease}", 200)["state"] == "revoked"
    check(client.delete(f"/v1/leases/{fifth['id']}", headers={token_header: fifth["token"]}), "/v1/leases/{lease}", 410)
    check(admin.delete(f"/v1/environments/{env}"), "/v1/environments/{name}", 404)
    check(admin.get("/v1/history", params={"limit": 1}), "/v1/history", 200)
    with read.stream("GET", "/v1/events", headers={"Last-Event-ID": "0"}) as stream:  # endless: headers only
        assert (stream.status_code, stream.headers["content-type"].split(";")[0]) == (200, "text/event-stream")
        check.seen.add(("/v1/events", "get", "200"))

    # webhooks (admin only; nothing listens on the URL, which is fine: the log shows the failed attempts)
    hook = {"url": "http://127.0.0.1:9/hook", "events": ["lease.forced"], "secret": "a-secret-of-16-chars"}
    made = check(admin.put("/v1/webhooks/oa-hook", json=hook), "/v1/webhooks/{name}", 201)
    assert made["secret"] == "set"
    check(admin.put("/v1/webhooks/oa-hook", json={**hook, "format": "slack"}), "/v1/webhooks/{name}", 200)
    check(admin.put("/v1/webhooks/oa-hook", json={**hook, "url": "ftp://x"}), "/v1/webhooks/{name}", 422)
    check(client.put("/v1/webhooks/oa-hook", json=hook), "/v1/webhooks/{name}", 403)
    check(admin.get("/v1/webhooks/oa-hook"), "/v1/webhooks/{name}", 200)
    check(admin.get("/v1/webhooks"), "/v1/webhooks", 200)
    check(admin.get("/v1/webhooks/oa-hook/deliveries"), "/v1/webhooks/{name}/deliveries", 200)
    check(admin.get("/v1/webhooks/oa-none/deliveries"), "/v1/webhooks/{name}/deliveries", 404)
    check(admin.delete("/v1/webhooks/oa-hook"), "/v1/webhooks/{name}", 204)
    check(admin.delete("/v1/webhooks/oa-hook"), "/v1/webhooks/{name}", 404)
    # groups: several environments at once, granted together, renewed and released by the group's id
    parts = [{"environment": "oa-g1"}, {"environment": "oa-g2"}]
    granted = check(client.post("/v1/leases", json={"all": parts}), "/v1/leases", 201)
    group, group_token = granted["group"], granted["token"]
    assert [lease["environment"] for lease in granted["leases"]] == ["oa-g1", "oa-g2"]
    waiting = check(client.post("/v1/leases", json={"all": parts[::-1]}), "/v1/leases", 202)
    assert waiting["all"] == parts[::-1]
    check(read.get(f"/v1/groups/{group}"), "/v1/groups/{group}", 200)
    check(read.get("/v1/groups/g_unknown"), "/v1/groups/{group}", 404)
    renew_group = "/v1/groups/{group}/renew"
    check(client.post(f"/v1/groups/{group}/renew", headers={token_header: group_token}), renew_group, 200)
    check(client.post(f"/v1/groups/{group}/renew", headers={token_header: "x"}), renew_group, 403)
    check(client.delete(f"/v1/groups/{group}", headers={token_header: group_token}), "/v1/groups/{group}", 204)
    check(client.post(f"/v1/groups/{group}/renew", headers={token_header: group_token}), renew_group, 410)
    check(client.post("/v1/leases", json={"all": parts[:1]}), "/v1/leases", 422)
    check(client.delete(f"/v1/tickets/{waiting['ticket']}"), "/v1/tickets/{ticket}", 204)

    assert check.missing("/v1/") == set()


def test_the_error_answers_are_documented_problems(server: ServerProcess, clients: Any) -> None:
    admin, client, read = clients
    check = Checker()
    check(httpx.get(server.url + "/v1/environments"), "/v1/environments", 401)
    check(read.put("/v1/environments/oa-err", json={}), "/v1/environments/{name}", 403)
    check(admin.put("/v1/environments/oa-err", content=b"{"), "/v1/environments/{name}", 400)
    check(admin.put("/v1/environments/oa-err", json={"slots": 0}), "/v1/environments/{name}", 422)
    check(admin.put("/v1/environments/oa-err", content=b"x" * 70_000), "/v1/environments/{name}", 413)
    check(client.post("/v1/leases", json={"environment": "oa-err", "ttl": 0}), "/v1/leases", 422)
    check(client.post("/v1/leases", content=b"[1"), "/v1/leases", 400)
    check(client.post("/v1/leases/l_unknown/renew", json={"ttl": 0}), "/v1/leases/{lease}/renew", 422)
    check(client.post("/v1/leases/l_unknown/renew", headers={"X-Lease-Token": "x"}), "/v1/leases/{lease}/renew", 404)
    check(client.delete("/v1/leases/l_unknown?force=yes"), "/v1/leases/{lease}", 422)
    check(admin.delete("/v1/leases/l_unknown?force=true"), "/v1/leases/{lease}", 404)
    check(read.get("/v1/environments/bad%09tab"), "/v1/environments/{name}", 422)
    check(admin.delete("/v1/environments/oa-err?force=nah"), "/v1/environments/{name}", 422)
    check(read.get("/v1/history", params={"limit": 0}), "/v1/history", 422)
    check(httpx.get(server.url + "/v1/events"), "/v1/events", 401)
    check(read.get("/v1/events", headers={"Last-Event-ID": "x"}), "/v1/events", 422)


def test_the_original_maybe_routes_answer_as_documented(server: ServerProcess, clients: Any) -> None:
    admin, client, read = clients
    check = Checker()
    env, path = "oa-maybe", "/maybe"
    check(read.get(path, params={"environment": env}), path, 200)
    check(read.get(f"/v1/environments/{env}"), "/v1/environments/{name}", 404)  # a GET creates nothing
    check(client.post(path, params={"environment": env}), path, 201)
    check(read.get(path, params={"environment": env}), path, 403)
    check(admin.post(path, params={"environment": env}), path, 403)
    check(client.delete(path, params={"environment": env}), path, 204)
    check(client.delete(path, params={"environment": env}), path, 204)
    check(httpx.get(server.url + path, params={"environment": env}), path, 401)
    check(read.post(path, params={"environment": env}), path, 401)
    check(client.post(path), path, 400)
    check(client.get(path, params={"environment": "bad\x00nul"}), path, 400)
    assert check.missing(path) == set()
