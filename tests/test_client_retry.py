"""The client's retry policy and waiting loop, against respx fakes and a fake clock: nothing sleeps."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import respx
from callme.client import APIError, Busy, Client, ConnectError, Lease, TicketGone, Unavailable, Waiting, WaitTimeout
from callme.client.constants import LONG_POLL, RETRY_BACKOFF_FIRST, RETRY_BACKOFF_MAX

URL = "http://call-me.test"
KEY = "secret-api-key"


class FakeTime:
    """A clock that moves only when the client sleeps or a fake long-poll holds a request."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=URL, assert_all_called=False) as mock:
        yield mock


@pytest.fixture
def client(fake_time: FakeTime) -> Iterator[Client]:
    with Client(URL, KEY, sleep=fake_time.sleep, clock=fake_time.clock, retry_for=60) as c:
        yield c


def lease_json(
    lease_id: str = "l_1",
    *,
    token: str | None = "tok-1",  # noqa: S107 - a fake lease's token
    environment: str = "uat",
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": lease_id,
        "environment": environment,
        "holder": "ci",
        "fence": 7,
        "state": "active",
        "ttl": 60,
        "acquired_at": "2024-06-01T14:02:05Z",
        "expires_at": "2024-06-01T14:03:05Z",
        "metadata": {},
        "properties": {"url": "https://uat.example.com"},
    }
    if token is not None:
        body["token"] = token
    return body


def waiting_json(ticket: str = "t_1", position: int = 1) -> dict[str, Any]:
    return {
        "ticket": ticket,
        "seq": 17,
        "position": position,
        "environment": "uat",
        "label": None,
        "waited": 0.0,
        "holders": [lease_json("l_0", token=None)],
    }


def bodies(route: respx.Route) -> list[dict[str, Any]]:
    return [json.loads(call.request.content) for call in route.calls]


def problem(status: int, code: str, detail: str = "no") -> httpx.Response:
    return httpx.Response(
        status,
        json={"type": "about:blank", "title": code, "status": status, "detail": detail, "code": code},
        headers={"Content-Type": "application/problem+json"},
    )


class FakeLeaseServer:
    """Keeps what each request_id created, as API.md says the server does, and can lose answers."""

    def __init__(self, fake_time: FakeTime) -> None:
        self.fake_time = fake_time
        self.created: dict[str, dict[str, Any]] = {}
        self.lose_answers = 0
        self.held_by_other = True
        self.grant_after_polls: int | None = None
        self.polls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        rid = body["request_id"]
        if rid not in self.created:
            self.created[rid] = waiting_json(f"t_{len(self.created) + 1}")
        state = self.created[rid]
        if body.get("wait"):
            self.polls += 1
            self.fake_time.now += body["wait"]  # nothing to grant: the long-poll is held to its end
        if self.grant_after_polls is not None and self.polls >= self.grant_after_polls and "id" not in state:
            self.created[rid] = state = lease_json(f"l_{state['ticket']}")
        if self.lose_answers:
            self.lose_answers -= 1
            raise httpx.ReadError("connection reset by peer", request=request)
        return httpx.Response(201 if "id" in state else 202, json=state)


def test_a_lost_answer_is_asked_again_with_the_same_request_id_and_takes_one_place(
    router: respx.MockRouter, client: Client, fake_time: FakeTime
) -> None:
    server = FakeLeaseServer(fake_time)
    server.lose_answers = 2
    server.grant_after_polls = 1
    route = router.post("/v1/leases").mock(side_effect=server)

    lease = client.acquire("uat")

    sent = bodies(route)
    assert len({body["request_id"] for body in sent}) == 1
    assert len(server.created) == 1
    assert lease.id == "l_t_1"
    assert lease.token == "tok-1"
    assert len(fake_time.sleeps) == 2  # one backoff per lost answer


def test_a_burst_of_503_is_retried_with_growing_jittered_backoff(
    router: respx.MockRouter, client: Client, fake_time: FakeTime
) -> None:
    answers = [problem(503, "unavailable") for _ in range(6)] + [httpx.Response(201, json=lease_json())]
    route = router.post("/v1/leases").mock(side_effect=answers)

    lease = client.acquire("uat", wait=False)

    assert lease.id == "l_1"
    assert route.call_count == 7
    assert len(fake_time.sleeps) == 6
    assert fake_time.sleeps[-1] > fake_time.sleeps[0]
    assert all(0 < s <= 8.25 for s in fake_time.sleeps)


def test_backoff_doubles_from_the_first_failure_and_each_retry_is_one_line(
    router: respx.MockRouter, client: Client, fake_time: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    # The schedule of retry.py's docstring, written out: FIRST, 2 FIRST, 4 FIRST ... capped at MAX,
    # each plus a jitter of up to FIRST. The first failure counts as attempt 1 however it was caught.
    refused = httpx.ConnectError("connection refused")
    router.get("/v1/environments/uat").mock(side_effect=[*[refused] * 8, httpx.Response(200, json={"name": "uat"})])

    with caplog.at_level(logging.WARNING, logger="callme.client"):
        assert client.environment("uat").name == "uat"

    floors = [min(RETRY_BACKOFF_FIRST * 2**n, RETRY_BACKOFF_MAX) for n in range(8)]
    assert len(fake_time.sleeps) == 8
    for floor, slept in zip(floors, fake_time.sleeps, strict=True):
        assert floor <= slept <= floor + RETRY_BACKOFF_FIRST
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 8
    for n, (line, slept) in enumerate(zip(lines, fake_time.sleeps, strict=True)):
        assert line.startswith("GET /v1/environments/uat failed (could not connect to http://call-me.test: ")
        # The first also says for how long it will go on (the client's retry_for), so that it never looks hung.
        said = f"); retrying in {slept:.1f}s" + (
            f" (for up to {client.retry_for:.0f}s more: --retry-for)" if n == 0 else ""
        )
        assert line.endswith(said), line


def test_502_and_504_from_a_gateway_are_retried(router: respx.MockRouter, client: Client) -> None:
    route = router.get("/v1/environments/uat").mock(
        side_effect=[httpx.Response(502), httpx.Response(504), httpx.Response(200, json={"name": "uat"})]
    )
    assert client.environment("uat").name == "uat"
    assert route.call_count == 3


def test_a_restart_in_the_middle_of_a_wait_keeps_the_ticket(
    router: respx.MockRouter, client: Client, fake_time: FakeTime
) -> None:
    refused = httpx.ConnectError("connection refused")
    answers: list[Any] = [
        httpx.Response(202, json=waiting_json("t_9", position=2)),
        httpx.Response(202, json=waiting_json("t_9", position=2)),
        *[refused] * 5,
        httpx.Response(202, json=waiting_json("t_9", position=1)),
        httpx.Response(201, json=lease_json("l_9")),
    ]
    route = router.post("/v1/leases").mock(side_effect=answers)
    seen: list[Waiting] = []

    lease = client.acquire("uat", on_wait=seen.append)

    sent = bodies(route)
    assert lease.id == "l_9"
    assert [w.position for w in seen] == [2, 2, 1]
    assert len({body["request_id"] for body in sent}) == 1
    assert sent[0]["wait"] == 0
    assert "ticket" not in sent[0]
    assert all(body["ticket"] == "t_9" and body["wait"] == LONG_POLL for body in sent[1:])
    assert len(fake_time.sleeps) == 5


def test_client_errors_are_never_retried(router: respx.MockRouter, client: Client, fake_time: FakeTime) -> None:
    for status, code in [(400, "invalid"), (401, "unauthorized"), (403, "forbidden"), (404, "not_found"),
                         (409, "busy"), (410, "ticket_gone"), (413, "too_large"), (422, "invalid")]:  # fmt: skip
        route = router.post("/v1/leases").mock(return_value=problem(status, code))
        with pytest.raises(APIError) as raised:
            client.acquire("uat", wait=False)
        assert getattr(raised.value, "status", None) == status
        assert getattr(raised.value, "code", None) == code
        assert route.call_count == 1
        route.reset()
    assert fake_time.sleeps == []


def test_no_wait_does_not_queue_and_reports_the_holders(router: respx.MockRouter, client: Client) -> None:
    busy = problem(409, "busy", "environment uat has no free slot")
    busy_body = json.loads(busy.content) | {"holders": [lease_json("l_0", token=None)]}
    route = router.post("/v1/leases").mock(return_value=httpx.Response(409, json=busy_body))

    with pytest.raises(Busy) as raised:
        client.acquire("uat", wait=False)

    assert bodies(route)[0]["queue"] is False
    assert [h.id for h in raised.value.holders] == ["l_0"]
    assert "environment uat has no free slot" in str(raised.value)


def test_the_timeout_leaves_the_queue_at_once(router: respx.MockRouter, client: Client, fake_time: FakeTime) -> None:
    server = FakeLeaseServer(fake_time)
    post = router.post("/v1/leases").mock(side_effect=server)
    leave = router.delete("/v1/tickets/t_1").mock(return_value=httpx.Response(204))
    started = fake_time.now

    with pytest.raises(WaitTimeout) as raised:
        client.acquire("uat", timeout=60)

    assert leave.call_count == 1
    assert raised.value.position == 1
    assert fake_time.now - started == pytest.approx(60)
    # The first round answers at once; then long-polls of at most LONG_POLL that end at the deadline.
    assert [body["wait"] for body in bodies(post)] == [0, LONG_POLL, LONG_POLL, 60 - 2 * LONG_POLL]
    assert "t_1" not in str(raised.value)
    assert "t_1" not in repr(raised.value.context)


def test_an_interrupt_while_waiting_leaves_the_queue_and_goes_on(router: respx.MockRouter, client: Client) -> None:
    router.post("/v1/leases").mock(return_value=httpx.Response(202, json=waiting_json("t_5")))
    leave = router.delete("/v1/tickets/t_5").mock(return_value=httpx.Response(204))

    def interrupt(waiting: Waiting) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        client.acquire("uat", on_wait=interrupt)
    assert leave.call_count == 1


def test_an_interrupt_before_the_first_answer_undoes_what_the_request_created(
    router: respx.MockRouter, client: Client, fake_time: FakeTime
) -> None:
    server = FakeLeaseServer(fake_time)
    calls = 0

    def first_interrupted(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        answer = server(request)
        if calls == 1:
            raise KeyboardInterrupt  # the server took it, the answer never came
        return answer

    post = router.post("/v1/leases").mock(side_effect=first_interrupted)
    leave = router.delete("/v1/tickets/t_1").mock(return_value=httpx.Response(204))

    with pytest.raises(KeyboardInterrupt):
        client.acquire("uat")

    assert len({body["request_id"] for body in bodies(post)}) == 1
    assert leave.call_count == 1


def test_retries_stop_at_the_callers_timeout(router: respx.MockRouter, client: Client, fake_time: FakeTime) -> None:
    router.post("/v1/leases").mock(side_effect=httpx.ConnectError("connection refused"))
    started = fake_time.now

    with pytest.raises(ConnectError):
        client.acquire("uat", timeout=10)

    assert fake_time.now - started == pytest.approx(10)


def test_without_a_timeout_retries_stop_after_retry_for(
    router: respx.MockRouter, client: Client, fake_time: FakeTime
) -> None:
    router.get("/v1/environments").mock(return_value=problem(503, "unavailable"))
    started = fake_time.now
    with pytest.raises(Unavailable):
        client.environments()
    assert fake_time.now - started == pytest.approx(60)


def test_a_lost_ticket_asks_for_what_is_left_then_queues_again(
    router: respx.MockRouter, client: Client, fake_time: FakeTime
) -> None:
    answers: list[Callable[[dict[str, Any]], httpx.Response]] = [
        lambda body: httpx.Response(202, json=waiting_json("t_1")),
        lambda body: problem(410, "ticket_gone"),  # with the ticket
        lambda body: problem(410, "ticket_gone"),  # same request_id, no ticket: nothing left
        lambda body: httpx.Response(201, json=lease_json("l_2")),  # a fresh request_id
    ]
    route = router.post("/v1/leases").mock(side_effect=lambda request: answers.pop(0)(json.loads(request.content)))

    lease = client.acquire("uat")

    sent = bodies(route)
    assert lease.id == "l_2"
    assert [("ticket" in body) for body in sent] == [False, True, False, False]
    assert sent[0]["request_id"] == sent[1]["request_id"] == sent[2]["request_id"] != sent[3]["request_id"]


def test_a_ticket_gone_on_a_fresh_request_is_an_error(router: respx.MockRouter, client: Client) -> None:
    route = router.post("/v1/leases").mock(return_value=problem(410, "ticket_gone"))
    with pytest.raises(TicketGone):
        client.acquire("uat")
    assert route.call_count == 1  # a request that never had a place cannot have lost one: no loop


def test_renew_keeps_the_token_and_release_sends_it(router: respx.MockRouter, client: Client) -> None:
    renew = router.post("/v1/leases/l_1/renew").mock(return_value=httpx.Response(200, json=lease_json(token=None)))
    release = router.delete("/v1/leases/l_1").mock(return_value=httpx.Response(204))
    lease = Lease.from_json(lease_json())

    renewed = client.renew(lease, ttl=120)
    client.release(renewed)

    assert renewed.token == "tok-1"
    assert renew.calls[0].request.headers["X-Lease-Token"] == "tok-1"
    assert json.loads(renew.calls[0].request.content) == {"ttl": 120}
    assert release.calls[0].request.headers["X-Lease-Token"] == "tok-1"
    assert release.calls[0].request.headers["X-API-KEY"] == KEY


def test_deleting_an_environment_whose_204_was_lost_is_done(router: respx.MockRouter, client: Client) -> None:
    route = router.delete("/v1/environments/uat").mock(
        side_effect=[httpx.ReadError("reset"), problem(404, "not_found")]
    )
    client.delete_environment("uat")
    assert route.call_count == 2


def test_on_request_gets_each_request_before_its_first_post(router: respx.MockRouter, client: Client) -> None:
    answers: list[Callable[[dict[str, Any]], httpx.Response]] = [
        lambda body: httpx.Response(202, json=waiting_json("t_1")),
        lambda body: problem(410, "ticket_gone"),  # with the ticket
        lambda body: problem(410, "ticket_gone"),  # same request_id, no ticket: nothing left
        lambda body: httpx.Response(201, json=lease_json("l_2")),  # a fresh request_id
    ]
    saved: list[tuple[dict[str, Any], int]] = []  # each request handed out, and how many POSTs were out by then

    def post(request: httpx.Request) -> httpx.Response:
        return answers.pop(0)(json.loads(request.content))

    route = router.post("/v1/leases").mock(side_effect=post)

    client.acquire(
        "uat", holder="org/app#1", ttl=60, metadata={"a": 1}, on_request=lambda r: saved.append((r, route.call_count))
    )

    sent = bodies(route)
    assert [(request["request_id"], posts_before) for request, posts_before in saved] == [
        (sent[0]["request_id"], 0),
        (sent[3]["request_id"], 3),
    ]
    # What a repeat must match, exactly as sent; nothing that may differ between repeats.
    for request, _ in saved:
        assert request == {
            "request_id": request["request_id"],
            "environment": "uat",
            "holder": "org/app#1",
            "ttl": 60,
            "metadata": {"a": 1},
        }


def test_a_request_that_cannot_be_saved_is_not_sent(router: respx.MockRouter, client: Client) -> None:
    route = router.post("/v1/leases").mock(return_value=httpx.Response(201, json=lease_json()))

    def cannot_save(request: dict[str, Any]) -> None:
        raise OSError("no space left on device")

    with pytest.raises(OSError, match="no space"):
        client.acquire("uat", on_request=cannot_save)
    with pytest.raises(OSError, match="no space"):
        client.acquire("uat", wait=False, on_request=cannot_save)
    assert route.call_count == 0
