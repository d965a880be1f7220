from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .serverproc import ServerProcess


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A real call-me server on a free 127.0.0.1 port with the admin, client and read keys of serverproc."""
    proc = ServerProcess(tmp_path)
    proc.start()
    try:
        yield proc
    finally:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.kill()
