"""Cold start of the CLI: `call-me --help` against a bare interpreter and `pip --version` (peers).

Method: each command runs N times in turn (interleaved, so machine noise hits all alike) as a fresh
process; we report the median and the best wall time of each, and the CLI's median as a ratio
over the bare interpreter's. Run: .venv/bin/python bench/cli_cold_start.py [N]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

BIN = Path(sys.executable).parent
COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "call-me --help": [str(BIN / "call-me"), "--help"],
    "call-me-client --help": [str(BIN / "call-me-client"), "--help"],
    "pip --version (peer)": [sys.executable, "-m", "pip", "--version"],
}


def interleaved(
    commands: Mapping[str, Callable[[], list[str]]], runs: int, env: Mapping[str, str] | None = None
) -> dict[str, list[float]]:
    """Wall times of each command as a fresh process, `runs` rounds of all of them in turn (bench/run.py uses it)."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    env = dict(env or os.environ, PYTHONDONTWRITEBYTECODE="0")
    for _ in range(runs):
        for name, command in commands.items():
            argv = command()
            started = time.perf_counter()
            subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=True)
            times[name].append(time.perf_counter() - started)
    return times


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    times = interleaved({name: (lambda c=command: c) for name, command in COMMANDS.items()}, runs)
    base = statistics.median(times["python -c pass"])
    print(f"{'command':<24} {'median ms':>10} {'best ms':>8} {'x python':>9}")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"{name:<24} {median * 1000:>10.1f} {min(samples) * 1000:>8.1f} {median / base:>9.2f}")


if __name__ == "__main__":
    main()
