"""Environment names and labels as the original accepted them, over HTTP against a real server: any 1..200
characters without control characters, compared exactly, wherever a name travels (API.md, "Words").

The CLI, the Action, the GitLab template and the dashboard carry the same names in their own tests
(test_cli_e2e.py, test_action.py, test_gitlab.py, test_dashboard.py).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from .contract import running
from .serverproc import CLIENT_KEY, ServerProcess

# Each refused with 400 or 422 before this release; the original took them all.
NAMES = [
    "feature/login",
    "UAT:1",
    "a b",
    "été",
    "_x",
    ".hidden",
    "-dash",
    "n" * 64,
    "x" * 200,
    'it\'s $HOME `date` "q"',
    "50%2Fhalf",  # a literal percent sign: never decoded twice
    "q?a=1&b=#frag",
    "環境/ステージング",
    ".",
    "..",
    "a/../b",
    "trailing/",
    "/leading",
    " spaced ",
]


def in_path(name: str) -> str:
    """A name as one path segment, as API.md says: percent-encoded, `/` too, and `.` and `..` as %2E, %2E%2E
    (HTTP clients resolve dot segments)."""
    return {".": "%2E", "..": "%2E%2E"}.get(name, quote(name, safe=""))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running(tmp_path_factory.mktemp("names")) as proc:
        yield proc


@pytest.fixture(scope="module")
def admin(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as http:
        yield http


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client(CLIENT_KEY) as http:
        yield http


def sourced(text: str, tmp_path: Path) -> str:
    """CALL_ME_ENVIRONMENT as a POSIX shell reads it back from a text/plain answer."""
    script = tmp_path / "answer.sh"
    script.write_text(text)
    out = subprocess.run(
        ["sh", "-c", '. "$1" && printf "%s" "$CALL_ME_ENVIRONMENT"', "sh", str(script)],
        capture_output=True,
        check=True,
    )
    return out.stdout.decode()


@pytest.mark.parametrize("name", NAMES, ids=range(len(NAMES)))
def test_a_name_travels_every_v1_route(admin: httpx.Client, client: httpx.Client, name: str, tmp_path: Path) -> None:
    path = f"/v1/environments/{in_path(name)}"
    label = f"label of {name}"[:200]
    created = admin.put(path, json={"slots": 3, "labels": [label], "description": "d"})
    assert (created.status_code, created.json()["name"], created.json()["labels"]) == (201, name, [label])
    assert admin.get(path).json()["name"] == name
    if "/" in name and not {".", ".."} & set(name.split("/")):
        # API.md: /v1/environments/feature%2Flogin and /v1/environments/feature/login are the same (a dot segment
        # written as is would be resolved by the client first).
        literal = admin.get("/v1/environments/" + quote(name, safe="/"))
        assert (literal.status_code, literal.json()["name"]) == (200, name), literal.text
    listed = [env["name"] for env in admin.get("/v1/environments").json()["environments"]]
    assert listed.count(name) == 1

    by_name = client.post("/v1/leases", json={"environment": name, "holder": "n"})
    assert (by_name.status_code, by_name.json()["environment"]) == (201, name), by_name.text
    by_label = client.post("/v1/leases", json={"label": label})
    assert (by_label.status_code, by_label.json()["environment"]) == (201, name), by_label.text
    as_text = client.post("/v1/leases", json={"environment": name}, headers={"Accept": "text/plain"})
    assert as_text.status_code == 201, as_text.text
    assert sourced(as_text.text, tmp_path) == name

    held = admin.get(path).json()
    assert [lease["environment"] for lease in held["leases"]] == [name] * 3
    events = admin.get("/v1/history", params={"environment": name}).json()["events"]
    assert {event["environment"] for event in events} == {name}
    assert [event["kind"] for event in events].count("acquired") == 3

    assert admin.delete(path, params={"force": "true"}).status_code == 204
    assert admin.get(path).status_code == 404


def test_names_are_compared_exactly(admin: httpx.Client) -> None:
    # Case, spaces, look-alikes and Unicode normalization (é precomposed, e + combining accent) all differ.
    names = ["ab", "Ab", "a b", "a_b", "a%20b", "a  b", "\u00e9", "e\u0301", "a/b", "a\u2215b"]
    for i, name in enumerate(names):
        assert admin.put(f"/v1/environments/{in_path(name)}", json={"description": str(i)}).status_code == 201
    for i, name in enumerate(names):
        assert admin.get(f"/v1/environments/{in_path(name)}").json()["description"] == str(i)
    listed = [env["name"] for env in admin.get("/v1/environments").json()["environments"]]
    assert [n for n in listed if n in names] == sorted(names)  # one each, in code point order


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("x" * 201, "201 characters"),
        ("uat\n", "a newline"),
        ("ua\tt", "a tab"),
        ("\x1b[1muat", "an escape"),
        ("uat\x7f", "DEL"),
        ("uat\u0085", "C1 next line"),
    ],
)
def test_a_name_with_a_control_character_or_too_long_is_refused_everywhere(
    admin: httpx.Client, name: str, why: str
) -> None:
    before = admin.get("/v1/environments").json()
    put = admin.put(f"/v1/environments/{in_path(name)}", json={})
    assert (put.status_code, put.json()["field"]) == (422, "name"), (why, put.text)
    for body in ({"environment": name}, {"label": name}):
        answer = admin.post("/v1/leases", json=body)
        assert (answer.status_code, answer.json()["field"]) == (422, next(iter(body))), (why, answer.text)
    assert admin.put("/v1/environments/x", json={"labels": [name]}).json()["field"] == "labels"
    assert admin.post("/maybe", params={"environment": name}).status_code == 400
    history = admin.get("/v1/history", params={"environment": name})
    assert (history.status_code, history.json()["field"]) == (422, "environment")
    assert admin.get(f"/v1/environments/{in_path(name)}").json()["field"] == "name"
    assert admin.get("/v1/environments").json() == before  # nothing made, under this name or a cut one


def test_a_trailing_newline_in_a_path_is_not_dropped(admin: httpx.Client) -> None:
    # Starlette's route patterns end in `$`, which matches before a final newline: uat%0A would have been uat.
    assert admin.put("/v1/environments/nl-uat", json={"description": "the real one"}).status_code == 201
    changed = admin.put("/v1/environments/nl-uat%0A", json={"description": "changed through uat%0A"})
    assert (changed.status_code, changed.json()["field"]) == (422, "name")
    assert admin.get("/v1/environments/nl-uat").json()["description"] == "the real one"
    assert admin.get("/healthz%0A").status_code == 404
    lease = admin.post("/v1/leases", json={"environment": "nl-uat"}).json()
    assert admin.get(f"/v1/leases/{lease['id']}%0A").status_code == 404


def test_the_original_routes_take_any_name(server: ServerProcess, admin: httpx.Client, client: httpx.Client) -> None:
    # The original client's transcript on a branch-named environment: check, take, refused while held, release.
    name = "feature/login"
    assert client.get("/maybe", params={"environment": name}).status_code == 200
    assert client.post("/maybe", params={"environment": name}).status_code == 201
    assert client.get("/maybe", params={"environment": name}).status_code == 403
    assert admin.post("/maybe", params={"environment": name}).status_code == 403
    assert [lease["holder"] for lease in admin.get("/v1/environments/feature%2Flogin").json()["leases"]] == ["ci"]
    # The slash unencoded in the query, as a hand-written URL has it; and the original's `/maybe/`, answered.
    with httpx.Client(base_url=server.url, headers={"X-API-KEY": CLIENT_KEY}) as raw:
        assert raw.get("/maybe/?environment=feature/login").status_code == 403
        assert raw.delete("/maybe/?environment=feature/login").status_code == 204
    assert admin.get("/v1/environments/feature%2Flogin").json()["leases"] == []
    for other in ("UAT:1", "it's $HOME", "été", "a b"):
        assert client.post("/maybe/", params={"environment": other}).status_code == 201, other
        assert admin.get(f"/v1/environments/{in_path(other)}").json()["name"] == other
        assert client.delete("/maybe", params={"environment": other}).status_code == 204


def test_labels_take_any_name_too(admin: httpx.Client, client: httpx.Client) -> None:
    labels = ["eu, west", "pool/a", "it's", " "]
    body: dict[str, Any] = {"labels": labels}
    assert admin.put("/v1/environments/lab-1", json=body).json()["labels"] == sorted(labels)
    for label in labels:
        granted = client.post("/v1/leases", json={"label": label, "queue": False})
        assert (granted.status_code, granted.json()["environment"]) == (201, "lab-1")
        assert admin.delete(f"/v1/leases/{granted.json()['id']}", params={"force": "true"}).status_code == 204


def _curl(server: ServerProcess, method: str, url: str) -> int:
    """Real curl, which sends a URL's non-ASCII bytes as they are (it encodes nothing): the original took them."""
    got = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", method, "-H", f"X-API-KEY: {CLIENT_KEY}",
         "--path-as-is", server.url + url],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return int(got.stdout)


def test_raw_utf8_in_a_url_means_the_name_and_bytes_that_are_not_utf8_are_refused(
    server: ServerProcess, admin: httpx.Client
) -> None:
    assert _curl(server, "POST", "/maybe?environment=ünïcode-été") == 201
    assert _curl(server, "GET", "/maybe?environment=ünïcode-été") == 403  # held
    assert [lease["holder"] for lease in admin.get("/v1/environments/ünïcode-été").json()["leases"]] == ["ci"]
    assert _curl(server, "GET", "/v1/environments/ünïcode-été") == 200  # the path, raw, the same
    assert _curl(server, "DELETE", "/maybe?environment=ünïcode-été") == 204
    before = admin.get("/v1/environments").json()
    # Latin-1 bytes (not UTF-8), raw and percent-encoded: never a name with U+FFFD in it.
    for url in ("/maybe?environment=%E9t%E9", "/maybe?environment=\udce9t\udce9"):
        code = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-H", f"X-API-KEY: {CLIENT_KEY}",
             (server.url + url).encode("utf-8", "surrogateescape")],
            capture_output=True, timeout=30, check=True,
        ).stdout  # fmt: skip
        assert code == b"400", url
    put = admin.put("/v1/environments/%FF", json={})
    assert (put.status_code, put.json()["field"]) == (422, "name")
    assert "not UTF-8" in put.json()["detail"]
    assert admin.get("/v1/environments").json() == before
