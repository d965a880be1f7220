"""The SQLite database file's identity, and its high-water mark: how the store notices that its file went away
while it runs, and how fences never go backwards when a database starts empty where one existed before.

Identity. A database removed (`rm call-me.db*`) or replaced (`mv other.db call-me.db`) while the server runs goes
unnoticed by SQLite: its open descriptors still reach the old inodes, every commit succeeds, and all of it is
gone at the next start. So the store records (st_dev, st_ino) of the database and of its -wal at open (both stay
the same inodes while the connection lives; SQLite unlinks the -wal only when the last connection closes) and
compares them with `os.stat` of the paths before each commit that wrote (about 1 µs a stat, on the one writer
thread), and at least every IDENTITY_CHECK_INTERVAL otherwise. Copying another file over the database in place
keeps the inode and is not seen (it corrupts a live SQLite database anyway).

High-water mark. `.<name>.highwater` beside the database holds the database's id (a random id kept in its
`meta` table) and a fence and a seq that no number handed out exceeds. It is hidden, so that `rm call-me.db*`
and `rm *` spare it (the lock file `<name>.lock` would not do: the glob takes it too). It is rewritten atomically
(a temporary file, fsync, rename, fsync of the folder) before a commit that would hand out a number above it,
then HIGH_WATER_RESERVE ahead, and with the exact counters at a clean close (so that a restart leaves no gap).
At open (`HighWaterMark.adopt`):
- the database is the one the mark names: its counters are raised to the mark where they are below it (a crash
  within a reservation, or a backup restored: the numbers handed out after the backup are not handed out again);
- no mark: the first start, or one from before marks existed; one is written;
- the mark names another database, or the database is new: start-up is refused with one line, unless
  CALL_ME_ALLOW_NEW_DATABASE=true, which starts on it with counters above the mark. Refused rather than carried
  on above the mark because the leases and the queue of the old database are lost: pipelines deploying right now
  hold slots that the new database would grant again, and fences protect only deploy tools that check them.
  Someone should decide: restore the backup (which then starts above the mark by itself), or accept the loss.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import sqlite3
from dataclasses import dataclass

from ..constants import HIGH_WATER_RESERVE
from .base import StoreError

log = logging.getLogger("callme.store")

_ABOUT = "call-me: the high-water mark of the database beside it; keep it with the database (README, Operations)"


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


class FileIdentity:
    """The database file and its -wal as they were when the store opened them."""

    def __init__(self, path: str) -> None:
        self._files = [(name, _identity(name)) for name in (path, f"{path}-wal")]

    def changed(self) -> str | None:
        """What happened to a file since it was opened (removed, replaced), or None when nothing did."""
        for name, was in self._files:
            if was is None:
                continue  # absent at open (no -wal yet): nothing to compare with
            try:
                now = _identity(name)
            except OSError:
                continue  # cannot look (permissions, I/O): the commit succeeds or fails on its own
            if now is None:
                return f"{os.path.basename(name)} was removed"
            if now != was:
                return f"{os.path.basename(name)} was replaced"
        return None


def broken_reason(what: str) -> str:
    """The one line a removed or replaced database file is reported with: log, /readyz, 503s."""
    return (
        f"the database file was removed or replaced while the server ran ({what}); changes are refused, since they "
        "would be lost at the next start: restore the database and restart the server"
    )


@dataclass(frozen=True)
class HighWater:
    """No fence above `fence`, and no seq above `seq`, has been handed out from the database `database`."""

    database: str
    fence: int
    seq: int


def high_water_path(database_path: str) -> str:
    folder, name = os.path.split(database_path)
    return os.path.join(folder, f".{name}.highwater")


def read_high_water(path: str) -> HighWater | None:
    """The mark, or None when there is none; a StoreError when it cannot be trusted."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        mark = HighWater(database=data["database"], fence=data["fence"], seq=data["seq"])
    except FileNotFoundError:
        return None
    except PermissionError:
        raise StoreError(
            f"cannot read the high-water mark {path!r}: permission denied; the server runs as uid {os.getuid()}: "
            f"give it the database's folder and its files (e.g. chown -R {os.getuid()} {os.path.dirname(path) or '.'})"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"cannot read the high-water mark {path!r} ({exc}); repair or remove it") from exc
    if not (isinstance(mark.database, str) and isinstance(mark.fence, int) and isinstance(mark.seq, int)):
        raise StoreError(f"the high-water mark {path!r} is not what this server writes; repair or remove it")
    return mark


def write_high_water(path: str, mark: HighWater) -> None:
    """Replace the mark atomically and durably; raises OSError."""
    folder = os.path.dirname(path) or "."
    temporary = f"{path}.tmp"
    data = json.dumps({"about": _ABOUT, "database": mark.database, "fence": mark.fence, "seq": mark.seq})
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            payload = data.encode() + b"\n"
            if os.write(fd, payload) != len(payload):
                raise OSError(errno.ENOSPC, "short write")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself is durable only once the folder is
    finally:
        os.close(fd)


class HighWaterMark:
    """The mark file of one database, and what this process last wrote to it."""

    def __init__(self, database_path: str) -> None:
        self.database_path = database_path
        self.path = high_water_path(database_path)
        self.database_id: str | None = None  # known once adopted
        self._written: HighWater | None = None

    def read(self) -> HighWater | None:
        return read_high_water(self.path)

    def refusal(self, earlier: HighWater, found: str | None) -> str:
        return lost_database(self.database_path, self.path, earlier, found)

    def adopt(self, conn: sqlite3.Connection, earlier: HighWater | None, *, allow_new: bool) -> None:
        """At open: check the database against the `earlier` mark (StoreError when it is another one, unless
        `allow_new`), give it an id if it has none, raise its counters to the mark, and write the mark ahead."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'database_id'").fetchone()
            database_id: str | None = row[0] if row else None
            if earlier is not None and earlier.database != database_id:
                if not allow_new:
                    raise StoreError(self.refusal(earlier, database_id))
                log.warning(
                    "event=new_database allowed_by=CALL_ME_ALLOW_NEW_DATABASE %s", self.refusal(earlier, database_id)
                )
            if database_id is None:
                database_id = secrets.token_hex(16)
                conn.execute("INSERT INTO meta VALUES ('database_id', ?)", (database_id,))
            if earlier is not None:
                for name, value in (("fence", earlier.fence), ("seq", earlier.seq)):
                    raised = conn.execute(
                        "UPDATE counters SET value = ? WHERE name = ? AND value < ? RETURNING value",
                        (value, name, value),
                    ).fetchone()
                    if raised is not None:  # a crash within a reservation, or a backup restored
                        log.info("event=counter_raised counter=%s to=%s reason=high_water_mark", name, value)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self.database_id = database_id
        self.cover(conn, force=True)

    def cover(self, conn: sqlite3.Connection, *, ahead: int = HIGH_WATER_RESERVE, force: bool = False) -> None:
        """Write the mark `ahead` of the counters if they passed it (or if `force`d); a StoreError if it cannot
        be written, which must fail the commit that would hand out the numbers."""
        fence, seq = (int(r[0]) for r in conn.execute("SELECT value FROM counters ORDER BY name").fetchall())
        written = self._written
        if not force and written is not None and fence <= written.fence and seq <= written.seq:
            return
        assert self.database_id is not None
        mark = HighWater(self.database_id, fence + ahead, seq + ahead)
        try:
            write_high_water(self.path, mark)
        except OSError as exc:
            raise StoreError(f"cannot write the high-water mark {self.path!r}: {exc.strerror or exc}") from exc
        self._written = mark


def lost_database(path: str, mark_path: str, mark: HighWater, found: str | None) -> str:
    """Why start-up stops: what happened, what it means, what to do."""
    this = "a new, empty one" if found is None else f"database {found}"
    return (
        f"database {path!r} is not the one this server used: {os.path.basename(mark_path)} beside it records "
        f"database {mark.database}, which may have handed out fences up to {mark.fence}, and this is {this}. "
        "The old database was removed or replaced, and the leases and queue it held are lost. Restore it from a "
        "backup, or set CALL_ME_ALLOW_NEW_DATABASE=true to start on this one with fences above the old ones"
    )
