"""The leases `call-me request` took on this machine, so `call-me release ENV` can find them.

The original client released by name alone. A lease's token is what lets us release exactly
the lease we took, so `request` keeps it here: a JSON file (mode 0600: it holds secrets)
under $XDG_STATE_HOME/call-me, or at CALL_ME_STATE_FILE / --state-file. Jobs that share a
runner share the file; an exclusive lock on a sidecar file keeps their updates whole, and a
write goes to a temporary file renamed over the old one, so a crash never leaves half a file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .constants import ENV_STATE_FILE, STATE_FILE_NAME
from .errors import StateFileDamaged
from .models import Lease


@dataclasses.dataclass(frozen=True)
class StoredLease:
    url: str
    environment: str
    id: str
    token: str = dataclasses.field(repr=False)


def default_path(environ: Mapping[str, str]) -> Path:
    if environ.get(ENV_STATE_FILE):
        return Path(environ[ENV_STATE_FILE])
    base = environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "call-me" / STATE_FILE_NAME


class StateFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def add(self, url: str, lease: Lease) -> None:
        if not lease.token:
            raise ValueError("only a lease with its token is worth keeping")
        stored = StoredLease(url=url, environment=lease.environment, id=lease.id, token=lease.token)
        with self._locked() as entries:
            entries.append(stored)

    def find(self, url: str, environment: str) -> StoredLease | None:
        """The oldest lease kept for `environment` on the server at `url` (as DELETE /maybe picks)."""
        for entry in self._read():
            if entry.url == url and entry.environment == environment:
                return entry
        return None

    def find_id(self, url: str, lease_id: str) -> StoredLease | None:
        return next((e for e in self._read() if e.url == url and e.id == lease_id), None)

    def remove(self, url: str, lease_id: str) -> None:
        if not self.path.exists():
            return
        with self._locked() as entries:
            entries[:] = [e for e in entries if not (e.url == url and e.id == lease_id)]

    def _read(self) -> list[StoredLease]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        return _parse(text, self.path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[list[StoredLease]]:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock_path = self.path.with_name(self.path.name + ".lock")
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            entries = self._read()
            yield entries
            self._write(entries)

    def _write(self, entries: list[StoredLease]) -> None:
        data = {"leases": [dataclasses.asdict(entry) for entry in entries]}
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".leases-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as out:  # mkstemp makes it 0600
                json.dump(data, out, indent=2)
                out.write("\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def _parse(text: str, path: Path) -> list[StoredLease]:
    try:
        data: Any = json.loads(text) if text.strip() else {"leases": []}
        return [
            StoredLease(url=str(e["url"]), environment=str(e["environment"]), id=str(e["id"]), token=str(e["token"]))
            for e in data["leases"]
        ]
    except (ValueError, KeyError, TypeError) as exc:
        raise StateFileDamaged(f"the state file {path} cannot be read ({exc})") from exc
