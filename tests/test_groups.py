"""Several environments in one atomic grant (`all`, issue 14), against a real server on a real socket, on SQLite and
on PostgreSQL: one 201 with every lease or one 202 with one ticket, never a part held while the rest is waited
for; polls, long-polls, renew and release of the group by its id, each lease alone, shell answers, bad input."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .contract import running
from .serverproc import CLIENT_KEY, ServerProcess

TOKEN = "X-Lease-Token"
PARTS = [{"environment": "uat"}, {"environment": "payments-sandbox"}]


@pytest.fixture(params=["sqlite", "postgres"])
def store_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    database = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    with running(tmp_path, database=database) as proc:
        yield proc


@pytest.fixture
def admin(store_server: ServerProcess) -> Iterator[httpx.Client]:
    with store_server.client() as http:
        declare(http)
        yield http


@pytest.fixture
def client(store_server: ServerProcess) -> Iterator[httpx.Client]:
    with store_server.client(CLIENT_KEY) as http:
        yield http


def declare(admin: httpx.Client) -> None:
    for name, url in (("uat", "https://uat.example"), ("payments-sandbox", "https://pay.example")):
        answer = admin.put(f"/v1/environments/{name}", json={"properties": {"url": url}, "labels": ["g-any"]})
        assert answer.status_code in (200, 201), answer.text
    admin.put("/v1/environments/db-1", json={"labels": ["db-small"]}).raise_for_status()
    admin.put("/v1/environments/db-2", json={"labels": ["db-small"]}).raise_for_status()


def holders(http: httpx.Client, name: str) -> list[str]:
    return [lease["holder"] for lease in http.get(f"/v1/environments/{name}").json()["leases"]]


def test_a_group_is_granted_whole_or_waits_holding_nothing(admin: httpx.Client, client: httpx.Client) -> None:
    sandbox = client.post("/v1/leases", json={"environment": "payments-sandbox", "holder": "a"}).json()
    waiting = client.post("/v1/leases", json={"all": PARTS, "holder": "b", "ttl": 600})
    assert waiting.status_code == 202, waiting.text
    queued = waiting.json()
    assert (queued["group"].startswith("g_"), queued["all"], queued["position"]) == (True, PARTS, 1)
    assert holders(admin, "uat") == []  # no partial hold: uat is free, yet the group does not hold it
    # Nothing ahead of the group in either queue: what frees up on uat is kept for it, not given to c.
    single = client.post("/v1/leases", json={"environment": "uat", "holder": "c"})
    assert single.status_code == 202
    released = client.delete(f"/v1/leases/{sandbox['id']}", headers={TOKEN: sandbox["token"]})
    assert released.status_code == 204
    # Granted between polls: the next poll with the one ticket collects every lease.
    again = client.post("/v1/leases", json={"all": PARTS, "holder": "b", "ttl": 600, "ticket": queued["ticket"]})
    assert again.status_code == 201, again.text
    granted = again.json()
    assert again.headers["location"] == f"/v1/groups/{granted['group']}"
    assert granted["group"] == queued["group"]
    assert {lease["group"] for lease in granted["leases"]} == {granted["group"]}
    assert admin.get(f"/v1/leases/{granted['leases'][0]['id']}").json()["group"] == granted["group"]
    leases = granted["leases"]
    assert [lease["environment"] for lease in leases] == ["uat", "payments-sandbox"]
    assert [lease["properties"]["url"] for lease in leases] == ["https://uat.example", "https://pay.example"]
    assert len({lease["id"] for lease in leases}) == len({lease["token"] for lease in leases}) == 2
    assert leases[1]["fence"] > sandbox["fence"]
    assert holders(admin, "uat") == holders(admin, "payments-sandbox") == ["b"]
    repeat = client.post("/v1/leases", json={"all": PARTS, "ticket": queued["ticket"]}).json()  # as often as asked
    assert [(x["id"], x["token"]) for x in repeat["leases"]] == [(x["id"], x["token"]) for x in leases]
    assert repeat["token"] == granted["token"]
    reversed_parts = client.post("/v1/leases", json={"all": PARTS[::-1], "ticket": queued["ticket"]})
    assert (reversed_parts.status_code, reversed_parts.json()["field"]) == (422, "ticket")
    # The group and each lease by itself: renew and release by the group's id, or one lease by its own.
    group, group_token = granted["group"], granted["token"]
    renewed = client.post(f"/v1/groups/{group}/renew", headers={TOKEN: group_token}, json={"ttl": 900})
    assert renewed.status_code == 200
    assert [lease["ttl"] for lease in renewed.json()["leases"]] == [900, 900]
    assert "token" not in renewed.json()
    wrong = client.post(f"/v1/groups/{group}/renew", headers={TOKEN: leases[0]["token"]})
    assert (wrong.status_code, wrong.json()["code"]) == (403, "wrong_token")
    alone = client.post(f"/v1/leases/{leases[0]['id']}/renew", headers={TOKEN: leases[0]["token"]})
    assert alone.status_code == 200
    assert client.delete(f"/v1/leases/{leases[0]['id']}", headers={TOKEN: leases[0]["token"]}).status_code == 204
    gone = client.post(f"/v1/groups/{group}/renew", headers={TOKEN: group_token})
    assert (gone.status_code, gone.json()["code"]) == (410, "lease_gone")
    assert client.delete(f"/v1/groups/{group}", headers={TOKEN: group_token}).status_code == 204
    assert client.delete(f"/v1/groups/{group}", headers={TOKEN: group_token}).status_code == 204  # idempotent
    shown = admin.get(f"/v1/groups/{group}").json()
    assert [lease["state"] for lease in shown["leases"]] == ["released", "released"]
    assert holders(admin, "uat") == ["c"]  # the single behind the group got uat once the group let it go


def test_a_long_poll_is_answered_with_the_whole_group(admin: httpx.Client, client: httpx.Client) -> None:
    held = client.post("/v1/leases", json={"environment": "uat"}).json()
    answers: list[httpx.Response] = []
    with httpx.Client(base_url=str(client.base_url), headers=dict(client.headers), timeout=60) as other:
        waiter = threading.Thread(
            target=lambda: answers.append(other.post("/v1/leases", json={"all": PARTS, "wait": 20}))
        )
        waiter.start()
        # Once parked, its place shows in both queues; then the release hands it every lease on that very request.
        while not admin.get("/v1/environments/uat").json()["queue"]:
            threading.Event().wait(0.05)
        assert admin.get("/v1/environments/payments-sandbox").json()["queue"]
        assert client.delete(f"/v1/leases/{held['id']}", headers={TOKEN: held["token"]}).status_code == 204
        waiter.join()
    assert answers[0].status_code == 201, answers[0].text
    leases = answers[0].json()["leases"]
    assert [lease["environment"] for lease in leases] == ["uat", "payments-sandbox"]
    assert all(lease["token"] for lease in leases)


def test_crossing_groups_do_not_deadlock(admin: httpx.Client, client: httpx.Client) -> None:
    first = client.post("/v1/leases", json={"all": PARTS, "holder": "first"}).json()
    crossed = client.post("/v1/leases", json={"all": PARTS[::-1], "holder": "crossed"}).json()
    third = client.post("/v1/leases", json={"all": PARTS, "holder": "third"}).json()
    assert (crossed["position"], third["position"]) == (1, 2)
    client.delete(f"/v1/groups/{first['group']}", headers={TOKEN: first["token"]}).raise_for_status()
    assert holders(admin, "uat") == holders(admin, "payments-sandbox") == ["crossed"]
    body = {"all": PARTS[::-1], "holder": "crossed", "ticket": crossed["ticket"]}
    granted = client.post("/v1/leases", json=body).json()
    client.delete(f"/v1/groups/{granted['group']}", headers={TOKEN: granted["token"]}).raise_for_status()
    assert holders(admin, "uat") == holders(admin, "payments-sandbox") == ["third"]


def test_label_parts_land_on_environments_of_their_own(admin: httpx.Client, client: httpx.Client) -> None:
    both = client.post("/v1/leases", json={"all": [{"label": "db-small"}, {"label": "db-small"}]}).json()
    assert sorted(lease["environment"] for lease in both["leases"]) == ["db-1", "db-2"]
    # With both db-small environments held, a single waits; leaving releases nothing it did not hold.
    other = client.post("/v1/leases", json={"all": [{"label": "db-small"}, {"environment": "uat"}]})
    assert other.status_code == 202
    assert holders(admin, "uat") == []
    assert client.delete(f"/v1/tickets/{other.json()['ticket']}").status_code == 204
    assert admin.get("/v1/environments/uat").json()["queue"] == []


def test_a_shell_sources_one_set_of_variables_per_part(admin: httpx.Client, client: httpx.Client) -> None:
    answer = client.post("/v1/leases", json={"all": PARTS}, headers={"Accept": "text/plain"})
    assert answer.status_code == 201, answer.text
    script = answer.text + 'printf "%s\\n" "$CALL_ME_UAT_PROPERTY_URL" "$CALL_ME_PAYMENTS_SANDBOX_PROPERTY_URL" '
    script += '"$CALL_ME_UAT_ENVIRONMENT" "$CALL_ME_PAYMENTS_SANDBOX_ENVIRONMENT" "$CALL_ME_GROUP_ID"'
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[:4] == ["https://uat.example", "https://pay.example", "uat", "payments-sandbox"]
    group = admin.get(f"/v1/groups/{out[4]}").json()
    assert [lease["environment"] for lease in group["leases"]] == ["uat", "payments-sandbox"]


BAD: list[tuple[Any, int, str]] = [
    ({"all": []}, 422, "all"),
    ({"all": [{"environment": "uat"}]}, 422, "all"),
    ({"all": [{"environment": f"e{i}"} for i in range(9)]}, 422, "all"),
    ({"all": "uat"}, 422, "all"),
    ({"all": ["uat", "payments-sandbox"]}, 422, "all[0]"),
    ({"all": [{"environment": "uat", "label": "g-any"}, {"environment": "x"}]}, 422, "all[0]"),
    ({"all": [{"environment": "uat"}, {}]}, 422, "all[1]"),
    ({"all": [{"environment": "uat"}, {"environment": "uat"}]}, 422, "all[1].environment"),
    ({"all": [{"environment": "uat"}, {"environment": "x", "slots": 2}]}, 422, "all[1].slots"),
    ({"all": [{"environment": "uat"}, {"environment": ""}]}, 422, "all[1].environment"),
    ({"all": PARTS, "environment": "uat"}, 422, "all"),
    ({"all": [{"environment": "db-1"}, {"label": "nobody-has-it"}]}, 404, ""),
    # The only db-small environments are named by the other parts: no environments could ever serve it at once.
    ({"all": [{"environment": "db-1"}, {"environment": "db-2"}, {"label": "db-small"}]}, 422, "all"),
]


@pytest.mark.parametrize(("body", "status", "field"), BAD, ids=[json.dumps(b[0])[:60] for b in BAD])
def test_bad_groups_are_refused_and_change_nothing(
    admin: httpx.Client, client: httpx.Client, body: Any, status: int, field: str
) -> None:
    before = admin.get("/v1/environments").json()
    history = admin.get("/v1/history").json()
    answer = client.post("/v1/leases", json=body)
    assert answer.status_code == status, answer.text
    problem = answer.json()
    assert answer.headers["content-type"].startswith("application/problem+json")
    if field:
        assert (problem["code"], problem["field"]) == ("invalid", field)
    assert admin.get("/v1/environments").json() == before
    assert admin.get("/v1/history").json() == history


def test_maybe_is_never_part_of_a_group(store_server: ServerProcess, admin: httpx.Client, client: httpx.Client) -> None:
    granted = client.post("/v1/leases", json={"all": PARTS}).json()
    maybe = httpx.get(store_server.url + "/maybe?environment=uat", headers={"X-API-KEY": CLIENT_KEY})
    assert maybe.status_code == 403  # held by the group's lease on uat, as by any lease
    client.delete(f"/v1/groups/{granted['group']}", headers={TOKEN: granted["token"]}).raise_for_status()
    assert httpx.post(store_server.url + "/maybe?environment=uat", headers={"X-API-KEY": CLIENT_KEY}).status_code == 201


def test_deleting_an_environment_drops_every_part_of_a_group_that_named_it(
    admin: httpx.Client, client: httpx.Client
) -> None:
    held = client.post("/v1/leases", json={"environment": "payments-sandbox"}).json()
    waiting = client.post("/v1/leases", json={"all": PARTS, "holder": "group"}).json()
    single = client.post("/v1/leases", json={"environment": "uat", "holder": "single"})
    assert single.status_code == 202  # uat held back for the group, first in both queues
    assert admin.delete("/v1/environments/payments-sandbox?force=true").status_code == 204
    # The group can never be whole again: it is dropped from uat's queue too, and uat goes to the single.
    assert admin.get("/v1/environments/uat").json()["queue"] == []
    assert holders(admin, "uat") == ["single"]
    gone = client.post("/v1/leases", json={"all": PARTS, "ticket": waiting["ticket"]})
    assert (gone.status_code, gone.json()["code"]) == (410, "ticket_gone")
    assert held["id"] not in {lease["id"] for lease in admin.get("/v1/environments/uat").json()["leases"]}


def test_a_repeated_request_id_finds_the_same_group(admin: httpx.Client, client: httpx.Client) -> None:
    body = {"all": PARTS, "request_id": "group-repeat-1", "holder": "ci"}
    first = client.post("/v1/leases", json=body).json()
    again = client.post("/v1/leases", json={**body, "wait": 0}).json()
    assert (again["group"], again["token"]) == (first["group"], first["token"])
    assert [x["id"] for x in again["leases"]] == [x["id"] for x in first["leases"]]
    other = client.post("/v1/leases", json={**body, "all": PARTS[::-1]})
    assert (other.status_code, other.json()["field"]) == (422, "ticket")
    single = client.post("/v1/leases", json={"environment": "uat", "request_id": "group-repeat-1", "holder": "ci"})
    assert (single.status_code, single.json()["field"]) == (422, "ticket")
    assert holders(admin, "uat") == ["ci"]  # one lease each, never a second grant for a repeat
