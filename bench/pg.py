"""PostgreSQL for figure `pg`: a throwaway durable cluster, the CPU of its process tree, and pgbench's peer run.

The cluster is the tests' own (`tests/pgserver.py`: initdb in a temp folder as the `postgres` user when run as
root, `-A trust`, a free 127.0.0.1 port, its socket in that folder), started `durable`: PostgreSQL's defaults
(fsync, synchronous_commit, full_page_writes on), so a COMMIT returns once its WAL is flushed.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from callme.server.constants import PG_CHANNEL
from callme.server.store.postgres import _EVENTS_LOCK
from loadgen import CpuMeter, cpu_of

SCRIPT = Path(__file__).resolve().parent / "pg_pair.sql"
# The store's own: the lock that orders event ids by commit, and the channel of its wake-ups.
EVENTS_LOCK = _EVENTS_LOCK
CHANNEL = PG_CHANNEL
DURABILITY = (
    "PostgreSQL 15, fsync on, synchronous_commit on, full_page_writes on: the WAL is flushed (fdatasync) before "
    "COMMIT returns, concurrent commits sharing a flush"
)


def why_not() -> str | None:
    """None when a throwaway cluster and pgbench can run here, else why not."""
    from tests.pgserver import BIN, available

    reason = available(external=False)
    if reason is None and not (BIN / "pgbench").exists():
        reason = f"no pgbench in {BIN} (install postgresql-15)"
    return reason


def pgbench_binary() -> Path:
    from tests.pgserver import BIN

    return BIN / "pgbench"


def postmaster_pid(data: Path) -> int:
    return int((data / "postmaster.pid").read_text().split()[0])


def _children(ppid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue  # exited meanwhile
            if int(fields[1]) == ppid:
                found.append(int(entry))
    return found


def cluster_cpu(data: Path) -> CpuMeter:
    """CPU seconds of the whole cluster so far: the postmaster, its live backends and workers, and those it has
    reaped (cutime/cstime: pgbench's backends end with their connections)."""
    pid = postmaster_pid(data)
    ticks = os.sysconf("SC_CLK_TCK")

    def meter() -> float:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total = sum(int(x) for x in fields[11:15]) / ticks
        for child in _children(pid):
            with contextlib.suppress(OSError):  # ended since the listing: counted in cutime from now on
                total += cpu_of(child)
        return total

    return meter


def pgbench(
    url_parts: dict[str, str],
    clients: int,
    seconds: int,
    variables: dict[str, str],
    pin: Sequence[str],
    meter: CpuMeter,
) -> dict[str, Any]:
    """One pgbench run of SCRIPT: pairs/s (tps without connection time), mean latency, CPU shares."""
    command = [
        *pin,
        str(pgbench_binary()),
        "-n",  # no vacuum of pgbench's own tables: it has none here
        "-M",
        "prepared",  # as call-me, whose driver prepares a statement from its 5th use
        "-c",
        str(clients),
        "-j",
        str(min(2, clients)),
        "-T",
        str(seconds),
        "-f",
        str(SCRIPT),
        "-h",
        url_parts["host"],
        "-p",
        url_parts["port"],
        "-U",
        url_parts["user"],
        *(arg for name, value in variables.items() for arg in ("-D", f"{name}={value}")),
        url_parts["database"],
    ]
    children_before = _children_cpu()
    cluster_before, started = meter(), time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
    elapsed = time.perf_counter() - started
    cluster = (meter() - cluster_before) / elapsed
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", done.stdout)
    failed = re.search(r"number of failed transactions: (\d+)", done.stdout)
    if done.returncode != 0 or tps is None or (failed is not None and int(failed.group(1)) > 0):
        raise RuntimeError(f"pgbench failed ({done.returncode}): {(done.stdout + done.stderr).strip()[-600:]}")
    latency = re.search(r"latency average = ([\d.]+) ms", done.stdout)
    processed = re.search(r"number of transactions actually processed: (\d+)", done.stdout)
    return {
        "rate": float(tps.group(1)),
        "latency_avg_ms": float(latency.group(1)) if latency else None,
        "pairs": int(processed.group(1)) if processed else None,
        "postgres_cpu": round(cluster, 3),
        "generator_cpu": round((_children_cpu() - children_before) / elapsed, 3),
    }


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
