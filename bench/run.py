"""Measure call-me beside its peers in one run, and print one table of ratios (with the absolute numbers).

    python bench/run.py            the full run (about 11 minutes on 2 cores; installs missing peers)
    python bench/run.py --quick    a smoke of every code path with tiny counts (seconds)
    python bench/run.py --only pairs

Figures: pairs (durable acquire+release pairs/s vs GET /healthz, etcd, Redis), handoff (p50/p99 vs etcd),
scale (pair p50 at 2,000 environments, beside parked waiters, with 1M history events, vs 4 environments),
parked (10,000 long-polls: memory, /healthz p99, park time, SIGTERM), cli (call-me vs python -c pass),
pg (pairs/s on PostgreSQL with 1 and 3 replicas vs pgbench running the same transactions on the same database).
Servers (PostgreSQL too) run on core 0, this process (the load generator), wrk and pgbench on core 1; everything
on 127.0.0.1, in temp folders, stopped at the end, also on Ctrl-C. The method is in bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
VENV_PYTHON = HERE.parent / ".venv" / "bin" / "python"

try:
    import httpx  # noqa: F401 - the venv's interpreter is the one that has the project installed
except ImportError:
    if VENV_PYTHON.exists() and Path(sys.executable).resolve() != VENV_PYTHON.resolve():
        os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), __file__, *sys.argv[1:]])  # noqa: S606
    raise

sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))  # tests.pgserver: figure pg starts its PostgreSQL as the tests do

from figures import FIGURES, Context, Plan  # noqa: E402
from peers import (  # noqa: E402
    PEERS,
    PG_BIN,
    Processes,
    ensure_installed,
    missing_packages,
    pin_self,
    pinning_available,
    raise_nofile,
)

RESULTS = HERE / "results" / "last.json"

try:  # uvloop (it comes with uvicorn[standard]) halves the generator's wake-up cost against asyncio's own loop
    import uvloop

    loop_runner: Any = uvloop.run
    LOOP = "uvloop"
except ImportError:
    loop_runner = asyncio.run
    LOOP = "asyncio"


def number(value: float | None, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".strip()


def table(rows: list[dict[str, Any]]) -> str:
    header = ["figure", "what", "call-me", "beside", "peer", "ratio", "target", "notes"]
    lines = [
        [
            r["figure"],
            r["what"],
            number(r["callme"], r["unit"]),
            r["peer"],
            number(r["peer_value"], r["peer_unit"]) if r["peer"] else "",
            f"{r['ratio']:.2f}×" if r["ratio"] is not None else "",
            r["target"],
            r["note"],
        ]
        for r in rows
    ]
    widths = [max(len(str(x)) for x in column) for column in zip(header, *lines, strict=True)]
    widths[-1] = 5
    out = [" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    out.append("-|-".join("-" * w for w in widths))
    out += [" | ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines]
    return "\n".join(out)


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name, command in (
        ("etcd", ["etcd", "--version"]),
        ("redis", ["redis-server", "--version"]),
        ("postgres", [str(PG_BIN / "postgres"), "--version"]),
    ):
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=10)
            found[name] = done.stdout.splitlines()[0].strip() if done.stdout else "?"
        except (OSError, subprocess.SubprocessError):
            found[name] = "not installed"
    return found


async def run(names: list[str], ctx: Context, results: dict[str, Any]) -> None:
    for name in names:
        ctx.say(f"figure {name} ...")
        started = time.perf_counter()
        try:
            results["figures"][name] = await FIGURES[name](ctx)
        except Exception as exc:
            ctx.say(f"figure {name} failed: {exc!r}")
            results["figures"][name] = {"error": repr(exc)}
            ctx.row(name, "FAILED", None, "", repr(exc)[:100], None)
            if os.environ.get("BENCH_STRICT"):
                raise
        results["figures"][name]["seconds"] = round(time.perf_counter() - started, 1)


def override(plan: Plan, settings: list[str]) -> Plan:
    """`--set clients=1,8 parked=2000`: the plan with those fields changed (same types as the defaults)."""
    changes: dict[str, Any] = {}
    for setting in settings:
        name, _, text = setting.partition("=")
        if name not in plan.__dataclass_fields__ or not text:
            raise ValueError(f"--set {setting}: fields are {', '.join(plan.__dataclass_fields__)}")
        current = getattr(plan, name)
        if isinstance(current, tuple):
            changes[name] = tuple(int(x) for x in text.split(","))
        else:
            changes[name] = type(current)(text)
    return dataclasses.replace(plan, **changes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny counts: a smoke of every code path")
    parser.add_argument("--only", choices=sorted(FIGURES), action="append", help="run only this figure (repeatable)")
    parser.add_argument("--no-install", action="store_true", help="do not apt-get install missing peers")
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"where to write the results ({RESULTS})")
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE", help="override a count of the plan (parked=2000)"
    )
    parser.add_argument(
        "--cli-venv",
        type=Path,
        action="append",
        default=[],
        metavar="VENV",
        help="cli: also time this venv's call-me, interleaved (e.g. one made by a plain `pip install .`)",
    )
    args = parser.parse_args(argv)

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)  # also when started in the background, where SIGINT is ignored
    pin_self()
    nofile = raise_nofile()
    plan = Plan.quick() if args.quick else Plan()
    try:
        plan = override(plan, args.set)
    except ValueError as exc:
        parser.error(str(exc))
    log: list[str] = []
    missing = missing_packages() if args.no_install else ensure_installed(log)
    for line in log:
        print(f"bench: {line}", file=sys.stderr)
    every_peer = set(PEERS.values())
    peers = every_peer - {PEERS[package] for package in missing if package in PEERS}
    for peer in sorted(every_peer - peers):
        print(f"bench: {peer} is not installed: its rows are skipped", file=sys.stderr)

    procs = Processes()
    ctx = Context(plan, procs, peers, cli_venvs=[venv.resolve() for venv in args.cli_venv])
    names = args.only or list(FIGURES)
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "mode": "quick" if args.quick else "full",
        "plan": plan.__dict__,
        "machine": {
            "cpus": os.cpu_count(),
            "pinned": pinning_available(),
            "open_files": nofile,
            "load_average": os.getloadavg(),
            "generator_loop": LOOP,
            **versions(),
        },
        "peers_skipped": sorted(every_peer - peers),
        "figures": {},
    }
    try:
        loop_runner(run(names, ctx, results))
    except KeyboardInterrupt:
        print("bench: interrupted; stopping what was started", file=sys.stderr)
        return 130
    finally:
        procs.close()
    results["durability"] = ctx.durability
    results["rows"] = ctx.rows
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")

    pinned = "server and peers on core 0, generator on core 1" if pinning_available() else "not pinned"
    print(f"call-me bench ({results['mode']}, {pinned}, load {os.getloadavg()[0]:.1f}); ratio = call-me / beside")
    print(table(ctx.rows))
    print("durability: " + "; ".join(f"{k}: {v}" for k, v in ctx.durability.items()))
    print(f"JSON: {args.json}")
    return 1 if any("error" in f for f in results["figures"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
