"""GET /metrics of a real server, parsed with the Prometheus parser and checked against what was done."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .serverproc import ADMIN_KEY, CLIENT_KEY, DEFAULT_CONFIG, READ_KEY, ServerProcess

CONFIG = (
    DEFAULT_CONFIG
    + """
[[environments]]
name = "m-uat"
labels = ["m-staging"]

[[environments]]
name = "m-qa"
slots = 2
"""
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path, config=CONFIG, env={"CALL_ME_TICKET_GRACE": "1.5"})
    proc.start()
    try:
        yield proc
    finally:
        proc.kill()


def scrape(read: httpx.Client) -> Samples:
    answer = read.get("/metrics")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def label_values(samples: Samples, label: str) -> set[str]:
    return {v for (_, labels) in samples for k, v in labels if k == label}


def test_metrics_follow_real_activity(server: ServerProcess) -> None:
    with server.client(ADMIN_KEY) as admin, server.client(CLIENT_KEY) as client, server.client(READ_KEY) as read:
        assert httpx.get(server.url + "/metrics").status_code == 401
        fresh = scrape(read)
        assert value(fresh, "callme_environment_slots", environment="m-qa") == 2
        assert value(fresh, "callme_grants_total", environment="m-uat") == 0  # declared: there from the start

        first = client.post("/v1/leases", json={"environment": "m-uat"}).json()
        queued = client.post("/v1/leases", json={"environment": "m-uat"})
        by_label = client.post("/v1/leases", json={"label": "m-staging"})
        assert (queued.status_code, by_label.status_code) == (202, 202)
        now = scrape(read)
        assert value(now, "callme_leases_held", environment="m-uat") == 1
        assert value(now, "callme_waiters", environment="m-uat") == 1
        assert value(now, "callme_label_waiters", label="m-staging") == 1
        assert value(now, "callme_leases_held", environment="m-qa") == 0

        time.sleep(0.4)
        client.delete(f"/v1/leases/{first['id']}", headers={"X-Lease-Token": first["token"]}).raise_for_status()
        second = client.post("/v1/leases", json={"environment": "m-uat", "ticket": queued.json()["ticket"]})
        assert second.status_code == 201
        now = scrape(read)
        assert value(now, "callme_grants_total", environment="m-uat") == 2
        assert value(now, "callme_releases_total", environment="m-uat") == 1
        assert value(now, "callme_wait_seconds_count", environment="m-uat") == 2
        assert 0.4 <= value(now, "callme_wait_seconds_sum", environment="m-uat") < 10
        assert value(now, "callme_wait_seconds_bucket", environment="m-uat", le="0.5") >= 1  # the one granted at once
        assert value(now, "callme_waiters", environment="m-uat") == 0

        # Auto-created environments are summed under one label value, never named.
        autos = [client.post("/v1/leases", json={"environment": name}).json() for name in ("m-auto-1", "m-auto-2")]
        admin.delete(f"/v1/leases/{autos[0]['id']}?force=true").raise_for_status()

        # The label ticket, never polled again, is abandoned after the grace (1.5 s).
        deadline = time.monotonic() + 8
        while True:
            now = scrape(read)
            if now.get(("callme_abandonments_total", frozenset({("environment", "_label")})), 0) == 1:
                break
            assert time.monotonic() < deadline, "the label ticket was not abandoned"
            time.sleep(0.25)

        assert value(now, "callme_environment_slots", environment="_auto") == 2
        assert value(now, "callme_leases_held", environment="_auto") == 1
        assert value(now, "callme_grants_total", environment="_auto") == 2
        assert value(now, "callme_revocations_total", environment="_auto") == 1
        assert value(now, "callme_revocations_total", environment="m-uat") == 0
        assert value(now, "callme_leases_held", environment="m-uat") == 1
        assert value(now, "callme_label_waiters", label="m-staging") == 0
        assert label_values(now, "environment") <= {"m-uat", "m-qa", "_auto", "_label"}
        assert value(now, "callme_events_total", kind="abandoned") == 1

        routes = label_values(now, "route")
        assert {"/v1/leases", "/v1/leases/{lease}", "/metrics"} <= routes
        assert not any("l_" in route or "m-auto" in route for route in routes)  # templates, never raw paths
        assert value(now, "callme_http_request_duration_seconds_count", method="POST", route="/v1/leases") >= 6
        assert value(now, "callme_store_transaction_seconds_count") > 10
        assert value(now, "callme_sse_clients") == 0


def test_unbounded_inputs_never_make_new_series(server: ServerProcess) -> None:
    with server.client(READ_KEY) as read:
        for i in range(5):
            read.get(f"/no/such/path/{i}")
            read.request("BREW", "/v1/environments")
        now = scrape(read)
    assert "/no/such/path/0" not in label_values(now, "route")
    assert "unmatched" in label_values(now, "route")
    assert "BREW" not in label_values(now, "method")
