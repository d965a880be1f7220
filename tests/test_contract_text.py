"""The shell-friendly answers of docs/api.md over HTTP: which `Accept` headers get them, the exact variables of a
201 and a 202, their quoting (read back by a real POSIX shell), and errors that stay problem documents."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .contract import environment, granted, lease_state, post, problem, queued, release, running
from .serverproc import ServerProcess

TEXT = {"Accept": "text/plain"}
PROPERTIES = {
    "url": "https://uat.example/it's",
    "db-host": "db.internal",
    "two words": "a $HOME `date` \"quoted\" \\ back'slash ''",
    "Multi.Line": "first line\nKEY='not a variable'\n",
    "empty": "",
}
VARIABLES = {
    "CALL_ME_PROPERTY_URL": "url",
    "CALL_ME_PROPERTY_DB_HOST": "db-host",
    "CALL_ME_PROPERTY_TWO_WORDS": "two words",
    "CALL_ME_PROPERTY_MULTI_LINE": "Multi.Line",
    "CALL_ME_PROPERTY_EMPTY": "empty",
}
LEASE_VARIABLES = [
    "CALL_ME_LEASE_ID",
    "CALL_ME_LEASE_TOKEN",
    "CALL_ME_ENVIRONMENT",
    "CALL_ME_FENCE",
    "CALL_ME_EXPIRES_AT",
]
# One assignment: a name, then one single-quoted value in which a quote is written '\'' (a newline stays as is).
ASSIGNMENT = re.compile(r"([A-Z][A-Z0-9_]*)='((?:[^']|'\\'')*)'\n")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running(tmp_path_factory.mktemp("text")) as proc:
        with proc.client() as admin:
            assert admin.put("/v1/environments/text-uat", json={"properties": PROPERTIES}).status_code == 201
        yield proc


def sourced(answer: str, names: list[str], tmp_path: Path) -> dict[str, str]:
    """What a POSIX shell reads back from the answer: `. file`, then each variable exactly (NUL-separated)."""
    script = tmp_path / "answer.sh"
    script.write_text(answer)
    printed = "".join(f' "${{{name}-<unset>}}"' for name in names)
    out = subprocess.run(
        ["sh", "-c", f'. "$1" && printf "%s\\0"{printed}', "sh", str(script)], capture_output=True, check=True
    ).stdout.decode()
    return dict(zip(names, out.split("\0")[:-1], strict=True))


def variables(answer: str) -> dict[str, str]:
    """The answer's assignments, each value as written (quotes escaped); nothing else is allowed in it."""
    found = list(ASSIGNMENT.finditer(answer))
    assert "".join(m[0] for m in found) == answer, f"not only KEY='value' lines:\n{answer}"
    return {m[1]: m[2] for m in found}


@pytest.mark.parametrize(
    ("accept", "text"),
    [
        ("text/plain", True),
        ("text/plain; charset=utf-8", True),
        ("text/plain, application/json", True),
        ("text/plain;q=0.1, application/json", True),
        ("application/json, text/plain", False),
        ("*/*, text/plain", False),
        ("application/json", False),
        ("*/*", False),
    ],
)
def test_text_only_when_text_plain_is_the_only_or_first_media_type(
    client: httpx.Client, accept: str, text: bool
) -> None:
    answer = client.post("/v1/leases", json={"environment": "accept"}, headers={"Accept": accept})
    assert answer.status_code == 201, answer.text
    media = answer.headers["content-type"].split(";")[0]
    assert media == ("text/plain" if text else "application/json")
    if text:
        lines = variables(answer.text)
        release(client, {"id": lines["CALL_ME_LEASE_ID"], "token": lines["CALL_ME_LEASE_TOKEN"]})
    else:
        release(client, answer.json())


def test_a_201_in_text_is_the_lease_and_its_properties_read_back_exactly_by_a_shell(
    client: httpx.Client, tmp_path: Path
) -> None:
    answer = client.post("/v1/leases", json={"environment": "text-uat"}, headers=TEXT)
    assert answer.status_code == 201, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    names = list(variables(answer.text))
    assert sorted(names) == sorted(LEASE_VARIABLES + list(VARIABLES)), names
    got = sourced(answer.text, names, tmp_path)
    lease = lease_state(client, got["CALL_ME_LEASE_ID"])
    assert answer.headers["location"] == f"/v1/leases/{lease['id']}"
    assert got["CALL_ME_ENVIRONMENT"] == lease["environment"] == "text-uat"
    assert got["CALL_ME_FENCE"] == str(lease["fence"])
    assert got["CALL_ME_EXPIRES_AT"] == lease["expires_at"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)", got["CALL_ME_EXPIRES_AT"])
    assert {name: got[name] for name in VARIABLES} == {name: PROPERTIES[key] for name, key in VARIABLES.items()}
    release(client, {"id": lease["id"], "token": got["CALL_ME_LEASE_TOKEN"]})  # the token is the lease's


def test_a_202_in_text_is_the_ticket_and_its_position(
    admin: httpx.Client, client: httpx.Client, tmp_path: Path
) -> None:
    held = granted(admin, environment="text-uat")
    first = queued(client, environment="text-uat")
    answer = client.post("/v1/leases", json={"environment": "text-uat"}, headers={"Accept": "text/plain, */*"})
    assert answer.status_code == 202, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    names = list(variables(answer.text))
    assert sorted(names) == ["CALL_ME_POSITION", "CALL_ME_TICKET"]
    got = sourced(answer.text, names, tmp_path)
    assert got["CALL_ME_POSITION"] == "2"
    again = post(client, environment="text-uat", ticket=got["CALL_ME_TICKET"])
    assert (again.status_code, again.json()["position"]) == (202, 2), again.text
    assert [q["seq"] for q in environment(admin, "text-uat")["queue"]] == [first["seq"], again.json()["seq"]]
    for ticket in (first["ticket"], got["CALL_ME_TICKET"]):
        assert client.delete(f"/v1/tickets/{ticket}").status_code == 204
    release(admin, held)


def test_errors_stay_problem_documents_when_text_is_asked_for(server: ServerProcess, client: httpx.Client) -> None:
    held = granted(client, environment="text-busy")
    answers = {
        (409, "busy"): client.post("/v1/leases", json={"environment": "text-busy", "queue": False}, headers=TEXT),
        (422, "invalid"): client.post("/v1/leases", json={"environment": "text-busy", "colour": 1}, headers=TEXT),
        (410, "ticket_gone"): client.post(
            "/v1/leases", json={"environment": "text-busy", "ticket": "t_x"}, headers=TEXT
        ),
        (401, "unauthorized"): httpx.post(server.url + "/v1/leases", json={"environment": "text-busy"}, headers=TEXT),
    }
    for expected, answer in answers.items():
        assert answer.headers["content-type"].startswith("application/problem+json"), answer.text
        assert problem(answer) == expected
    release(client, held)
