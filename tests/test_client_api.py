"""The client's public names, its error mapping, its text formats and the lease keeper."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import callme.client
import httpx
import pytest
import respx
from callme.client import (
    APIError,
    Busy,
    Client,
    Forbidden,
    Gone,
    Invalid,
    LeaseGone,
    LeaseLost,
    NotFound,
    Unauthorized,
    UnexpectedResponse,
    WrongToken,
)
from callme.client.format import env_lines, go_duration, lease_variables, property_variable

from .test_client_retry import KEY, URL, FakeTime, lease_json, problem


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=URL, assert_all_called=False) as mock:
        yield mock


def test_the_public_api_is_pinned() -> None:
    assert callme.client.__all__ == [
        "APIError", "Busy", "CallMeError", "Client", "ConfigError", "Conflict", "ConnectError",
        "Environment", "Event", "Forbidden", "Gone", "Group", "HeldLease", "Invalid", "Lease", "LeaseGone",
        "LeaseLost", "Maintenance", "NoRoute", "NotFound", "NotGranted", "QueueEntry", "RequestTimeout",
        "StateFileDamaged", "TicketGone", "TooLarge", "TransportError", "Unauthorized", "Unavailable",
        "UnexpectedResponse", "WaitTimeout", "Waiting", "WrongToken",
    ]  # fmt: skip
    for name in callme.client.__all__:
        assert getattr(callme.client, name).__name__ == name


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (401, "unauthorized", Unauthorized),
        (403, "forbidden", Forbidden),
        (403, "wrong_token", WrongToken),
        (404, "not_found", NotFound),
        (409, "busy", Busy),
        (410, "lease_gone", LeaseGone),
        (422, "invalid", Invalid),
        (400, "invalid", Invalid),
        (418, "teapot", UnexpectedResponse),
    ],
)
def test_answers_map_to_the_error_of_their_code(
    router: respx.MockRouter, status: int, code: str, kind: type[APIError]
) -> None:
    router.get("/v1/leases/l_1").mock(return_value=problem(status, code, "what went wrong"))
    with Client(URL, KEY) as client, pytest.raises(kind) as raised:
        client.get_lease("l_1")
    error = raised.value
    assert type(error) is kind
    assert (error.status, error.code, error.detail) == (status, code, "what went wrong")
    assert error.context == {"request": "GET /v1/leases/l_1", "lease": "l_1"}
    assert KEY not in str(error)
    assert KEY not in repr(error)


def test_empty_answers_of_the_original_routes_map_by_status(router: respx.MockRouter) -> None:
    router.delete("/maybe").mock(side_effect=[httpx.Response(401), httpx.Response(410)])
    with Client(URL, KEY) as client:
        with pytest.raises(Unauthorized):
            client.release_oldest("uat")
        with pytest.raises(Gone):
            client.release_oldest("uat")


def test_secrets_stay_out_of_reprs(router: respx.MockRouter) -> None:
    router.delete("/v1/tickets/t_secret").mock(return_value=problem(403, "forbidden"))
    with Client("http://user:pw@call-me.test", KEY) as client:
        assert "pw" not in repr(client)
        assert KEY not in repr(client)
        with pytest.raises(Forbidden) as raised:
            client.leave("t_secret")
    assert "t_secret" not in str(raised.value)
    lease = callme.client.Lease.from_json(lease_json(token="tok-secret"))
    assert "tok-secret" not in repr(lease)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.057134996, "57ms"),
        (10.089027168, "10.089s"),
        (12.3, "12.3s"),
        (60, "1m0s"),
        (62, "1m2s"),
        (3605.5, "1h0m5.5s"),
    ],
)
def test_durations_print_as_go_does(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


def test_env_lines_are_safe_to_source() -> None:
    lease = callme.client.Lease.from_json(
        lease_json() | {"properties": {"base-url": "https://uat.example.com/it's", "x.y": "1"}}
    )
    variables = lease_variables(lease, with_token=True)
    assert variables["CALL_ME_PROPERTY_BASE_URL"] == "https://uat.example.com/it's"
    assert property_variable("x.y") == "CALL_ME_PROPERTY_X_Y"
    assert "CALL_ME_PROPERTY_BASE_URL='https://uat.example.com/it'\\''s'\n" in env_lines(variables)
    assert list(variables)[:5] == [
        "CALL_ME_LEASE_ID",
        "CALL_ME_LEASE_TOKEN",
        "CALL_ME_ENVIRONMENT",
        "CALL_ME_FENCE",
        "CALL_ME_EXPIRES_AT",
    ]
    assert variables["CALL_ME_EXPIRES_AT"] == "2024-06-01T14:03:05.000Z"  # as the server writes times: milliseconds
    assert lease.expires_at == datetime(2024, 6, 1, 14, 3, 5, tzinfo=UTC)


def test_the_lease_keeper_renews_and_releases(router: respx.MockRouter) -> None:
    router.post("/v1/leases").mock(return_value=httpx.Response(201, json=lease_json()))
    renewed = threading.Event()

    def renew(request: httpx.Request) -> httpx.Response:
        renewed.set()
        return httpx.Response(200, json=lease_json(token=None))

    renew_route = router.post("/v1/leases/l_1/renew").mock(side_effect=renew)
    release = router.delete("/v1/leases/l_1").mock(return_value=httpx.Response(204))

    with Client(URL, KEY) as client, client.lease("uat", renew_every=0.01) as held:
        assert renewed.wait(5)
        held.check()
    assert renew_route.call_count >= 1
    assert release.call_count == 1
    assert held.lost is None


def test_a_lost_lease_is_said_loudly_and_released_on_the_way_out(
    router: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    router.post("/v1/leases").mock(return_value=httpx.Response(201, json=lease_json()))
    router.post("/v1/leases/l_1/renew").mock(return_value=problem(410, "lease_gone", "lease l_1 expired"))
    release = router.delete("/v1/leases/l_1").mock(return_value=problem(410, "lease_gone"))
    lost = threading.Event()
    fake_time = FakeTime()

    with (
        Client(URL, KEY, clock=fake_time.clock, sleep=fake_time.sleep) as client,
        pytest.raises(LeaseLost) as raised,
        client.lease("uat", renew_every=0.01, on_lost=lambda e: lost.set()),
    ):
        assert lost.wait(5)
    assert "lease l_1 on environment 'uat' could not be renewed" in str(raised.value)
    assert release.call_count == 1
    assert any(r.levelno == logging.ERROR and "event=lease_lost" in r.getMessage() for r in caplog.records)


def test_an_error_in_the_block_is_not_masked_by_a_lost_lease(router: respx.MockRouter) -> None:
    router.post("/v1/leases").mock(return_value=httpx.Response(201, json=lease_json()))
    router.post("/v1/leases/l_1/renew").mock(return_value=problem(410, "lease_gone"))
    release = router.delete("/v1/leases/l_1").mock(return_value=httpx.Response(204))

    lost = threading.Event()
    with (  # noqa: PT012 - the error must come from inside the held lease's block
        Client(URL, KEY) as client,
        pytest.raises(ZeroDivisionError),
        client.lease("uat", renew_every=0.01, on_lost=lambda e: lost.set()),
    ):
        assert lost.wait(5)
        _ = 1 / 0
    assert release.call_count == 1
