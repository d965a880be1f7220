"""Webhooks: how soon a receiver hears of an event, and what webhooks cost the lock operations (issue 15).

A real server (SQLite file, the defaults but a 2 s attempt timeout) and a real receiver (tests/receiver.py), both
on 127.0.0.1, one client, sequential requests. Measured:

- `delivery`: a forced release's 204 received → its webhook POST received whole by the receiver (one process's
  `time.time()` against another's, on one machine), with a healthy receiver;
- `pair`: an acquire+release pair (`POST /v1/leases`, `DELETE /v1/leases/{id}`), which no hook hears of;
- `forced`: an acquire + a forced release, whose commit also writes an outbox row per hook that wants it;

each without a hook, with a healthy hook, and with a hook whose receiver hangs (every attempt held until its
timeout, WEBHOOK_CONCURRENCY attempts in flight all the while). Prints p50/p99 in ms and the JSON of it all.

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


def _ops(http: httpx.Client, samples: int) -> dict[str, Any]:
    pairs = [_pair(http, "bench-pair") for _ in range(samples)]
    forced = [_forced(http, "bench-forced")[0] for _ in range(samples)]
    return {"pair": _ms(pairs), "forced": _ms(forced)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=300)
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        healthy, hanging = Receiver(), Receiver(otherwise="hang")
        server = ServerProcess(Path(folder), env={"CALL_ME_WEBHOOK_TIMEOUT": "2"})
        server.start()
        try:
            with server.client() as http:
                for _ in range(20):  # warm-up
                    _pair(http, "bench-pair")
                    _forced(http, "bench-forced")
                results["no hook"] = _ops(http, args.samples)

                hook = {"url": healthy.url, "events": ["lease.forced"], "secret": SECRET}
                assert http.put("/v1/webhooks/bench", json=hook).status_code == 201
                results["healthy hook"] = _ops(http, args.samples)
                healthy.wait_for(args.samples)  # the forced releases of the run above
                latencies = []
                for _ in range(args.samples):
                    count = len(healthy.received)
                    _, answered = _forced(http, "bench-forced")
                    (got,) = healthy.wait_for(count + 1)[count:]
                    latencies.append(got.at - answered)
                results["healthy hook"]["delivery"] = _ms(latencies)

                hook["url"] = hanging.url
                assert http.put("/v1/webhooks/bench", json=hook).status_code == 200
                _forced(http, "bench-forced")
                hanging.wait_hanging()
                results["hanging hook"] = _ops(http, args.samples)
                results["hanging hook"]["receiver requests held open at the end"] = hanging.hanging
        finally:
            server.stop()
            healthy.close()
            hanging.close()
    print(f"{'':>14} {'pair p50/p99 ms':>18} {'forced p50/p99 ms':>19} {'delivery p50/p99 ms':>21}")
    for name, row in results.items():
        cells = [
            f"{row[k]['p50']:.2f} / {row[k]['p99']:.2f}" if k in row else "-" for k in ("pair", "forced", "delivery")
        ]
        print(f"{name:>14} {cells[0]:>18} {cells[1]:>19} {cells[2]:>21}")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
