"""Tools the tests need from the machine. A missing one skips a test here and fails it under CI=true.

A test that is skipped in CI has not run, and CI must run every test: so where a tool cannot be
had, the test says why and skips on a developer's machine, and fails under CI=true. Decided at
test time (in a fixture or the test), never at import time, where a skip would pass over the
whole module without asking.
"""

from __future__ import annotations

import importlib
import os
import subprocess
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest


def tool_missing(reason: str) -> NoReturn:
    """Skip the running test because of `reason`; under CI=true, fail it."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"this test must run in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def import_tool(name: str) -> ModuleType:
    """Import the module `name` for the running test; tool_missing when it is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        tool_missing(f"{name} cannot be imported ({exc}); install the dev tools: pip install -e '.[dev]'")


def run_setup(script: Path, tool: str) -> None:
    """Run one of scripts/*-setup (it installs `tool` the first time); tool_missing when it cannot."""
    try:
        result = subprocess.run([str(script)], capture_output=True, text=True, timeout=900, check=False)
    except subprocess.TimeoutExpired:
        tool_missing(f"{script.name} took over 15 minutes")
    if result.returncode != 0:
        said = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
        tool_missing(f"{tool} is not usable: {said[-1]}")
