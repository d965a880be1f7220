"""Files only their owner may read: the SQLite database with its companions, and the server secret's file.

Why: they hold what lets a holder act (a lease's token from before schema 5, the secret that derives every
token since), and a file created under the usual umask (022) is 0644: readable by every local user, and by a
backup job that copies it anywhere. So each is created 0600 from its first byte, whatever the umask, rather
than tightened after the fact. SQLite gives the files it makes beside the database (`-wal`, `-shm`, `-journal`)
the database file's own mode, so creating the database file 0600 covers them too.

A file that already exists keeps the mode its owner gave it (an operator may have reasons: a backup user in
its group); a loose one is logged once at start-up with what to do.
"""

from __future__ import annotations

import logging
import os
import stat

log = logging.getLogger("callme.files")

MODE = 0o600


def opener(path: str, flags: int) -> int:
    """An `open(..., opener=opener)` that creates the file 0600."""
    return os.open(path, flags, MODE)


def create(path: str, what: str) -> bool:
    """Create `path` empty and 0600 if it does not exist; True when it did not. A loose existing one is logged."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, MODE))
        return True
    except FileExistsError:
        warn_if_loose(path, what)
        return False


def warn_if_loose(path: str, what: str) -> None:
    """Log a warning when users other than the owner may read or write `path`."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return  # whoever opens it next says why it cannot
    if mode & 0o077:
        log.warning(
            "event=file_mode file=%s mode=%04o: the %s may be read by other users of this machine; "
            "make it private with: chmod 600 %s",
            path, mode, what, path,
        )  # fmt: skip
