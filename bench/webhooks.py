"""Webhooks: how soon a receiver hears of an event, and what webhooks cost the lock operations (issue 15).

A real server (SQLite file, the defaults but a 2 s attempt timeout) and a real receiver (tests/receiver.py), both
on 127.0.0.1, one client, sequential requests. Measured:

- `delivery`: a forced release's 204 received → its webhook POST received whole by the receiver (one process's
  `time.time()` against another's, on one machine), with a healthy receiver;
- `pair`: an acquire+release pair (`POST /v1/leases`, `DELETE /v1/leases/{id}`), which no hook hears of;
- `forced`: an acquire + a forced release, whose commit also writes an outbox row per hook that wants it;

each without a hook, with a healthy hook, and with a hook whose receiver hangs (every attempt held until its
timeout, WEBHOOK_CONCURRENCY attempts in flight all the while), the three taking turns in rounds. Prints p50/p99
in ms and the JSON of it all.

    .venv/bin/python bench/webhooks.py              # ~30 s
    .venv/bin/python bench/webhooks.py --samples 50 # a smoke
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.receiver import Receiver
from tests.serverproc import ServerProcess

SECRET = "bench-secret-0123456789"


def _ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50": round(statistics.median(ordered) * 1000, 2),
        "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 2),
        "n": len(ordered),
    }


def _pair(http: httpx.Client, env: str) -> float:
    started = time.perf_counter()
    lease = http.post("/v1/leases", json={"environment": env, "queue": False})
    assert lease.status_code == 201, lease.text
    body = lease.json()
    gone = http.delete(f"/v1/leases/{body['id']}", headers={"X-Lease-Token": body["token"]})
    assert gone.status_code == 204, gone.text
    return time.perf_counter() - started


def _forced(http: httpx.Client, env: str) -> tuple[float, float]:
    """The time of an acquire + forced release, and the wall-clock moment its 204 arrived."""
    started = time.perf_counter()
    lease = http.post("/v1/leases", json={"environment": env, "queue": False})
    assert lease.status_code == 201, lease.text
    gone = http.delete(f"/v1/leases/{lease.json()['id']}", params={"force": "true"})
    assert gone.status_code == 204, gone.text
    return time.perf_counter() - started, time.time()


def _set_hook(http: httpx.Client, name: str | None, url: str) -> None:
    """Only the hook `name` (none when None); each configuration has a hook of its own, so that the attempts a
    hanging receiver still holds when its turn ends count against its own hook, not the next one's."""
    for other in ("healthy", "hanging"):
        if other != name:
            http.delete(f"/v1/webhooks/{other}")
    if name is not None:
        hook = {"url": url, "events": ["lease.forced"], "secret": SECRET}
        assert http.put(f"/v1/webhooks/{name}", json=hook).status_code in (200, 201)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=300, help="per kind and configuration")
    parser.add_argument("--rounds", type=int, default=10, help="the configurations take turns this many times")
    args = parser.parse_args()
    per_round = max(1, args.samples // args.rounds)
    configs = ("no hook", "healthy hook", "hanging hook")
    samples: dict[str, dict[str, list[float]]] = {c: {"pair": [], "forced": [], "delivery": []} for c in configs}
    with tempfile.TemporaryDirectory() as folder:
        healthy, hanging = Receiver(), Receiver(otherwise="hang")
        server = ServerProcess(Path(folder), env={"CALL_ME_WEBHOOK_TIMEOUT": "2"})
        server.start()
        try:
            with server.client() as http:
                for _ in range(20):  # warm-up
                    _pair(http, "bench-pair")
                    _forced(http, "bench-forced")
                # The configurations take turns, so that what else runs on the machine meanwhile falls on each alike.
                for _ in range(args.rounds):
                    for config in configs:
                        name = {"no hook": None, "healthy hook": "healthy", "hanging hook": "hanging"}[config]
                        _set_hook(http, name, healthy.url if name == "healthy" else hanging.url)
                        if config == "hanging hook":
                            _forced(http, "bench-forced")
                            hanging.wait_hanging()  # a delivery is held open all through the round
                        got = samples[config]
                        got["pair"] += [_pair(http, "bench-pair") for _ in range(per_round)]
                        for _ in range(per_round):
                            count = len(healthy.received)
                            took, answered = _forced(http, "bench-forced")
                            got["forced"].append(took)
                            if config == "healthy hook":
                                (arrived,) = healthy.wait_for(count + 1)[count:]
                                got["delivery"].append(arrived.at - answered)
            retries = [line for line in server.log().splitlines() if "event=webhook_retry" in line]
        finally:
            server.stop()
            healthy.close()
            hanging.close()
    results: dict[str, Any] = {c: {k: _ms(v) for k, v in samples[c].items() if v} for c in configs}
    results["retried attempts (all hooks)"] = len(retries)
    results["retried attempts of the healthy hook"] = [line for line in retries if "hook=healthy" in line][:5]
    print(f"{'':>14} {'pair p50/p99 ms':>18} {'forced p50/p99 ms':>19} {'delivery p50/p99 ms':>21}")
    for name in configs:
        row = results[name]
        cells = [
            f"{row[k]['p50']:.2f} / {row[k]['p99']:.2f}" if k in row else "-" for k in ("pair", "forced", "delivery")
        ]
        print(f"{name:>14} {cells[0]:>18} {cells[1]:>19} {cells[2]:>21}")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
