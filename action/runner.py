"""`call-me run`: hold an environment while a command runs, and release it however the run ends.

Signals: SIGTERM and SIGINT are passed on to the command, and call-me waits for it to end,
then releases. A SIGINT typed at a terminal already reaches the command (it shares our process
group), so it is not sent twice. Before the command starts (while waiting in the queue) the
signals interrupt the wait, which leaves the queue. Killed with SIGKILL, nothing can run:
renewals stop and the lease expires by its TTL (short for `run`, 5 minutes by default).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

from .constants import EXPORT_EXPIRES_AT, EXPORT_LEASE_TOKEN, ExitCode
from .errors import LeaseLost
from .format import group_variables, lease_variables
from .keeper import hold
from .views import describe

if TYPE_CHECKING:
    from types import FrameType

    from .commands import Context
    from .models import Group, Lease

_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_COMMAND_NOT_FOUND = 127
_COMMAND_NOT_EXECUTABLE = 126


class _Forwarder:
    """While installed, passes the signals above on to the child instead of acting on them."""

    def __init__(self) -> None:
        self.child: subprocess.Popen[bytes] | None = None
        self.received: int | None = None
        self._previous: dict[int, object] = {}
        self._terminal_delivers_sigint = _in_terminal_foreground()

    def install(self) -> None:
        for signum in _FORWARDED:
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)  # type: ignore[arg-type]  # whatever signal.signal gave back
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum
        if self.child is None or self.child.poll() is not None:
            return
        if signum == signal.SIGINT and self._terminal_delivers_sigint:
            return
        self.child.send_signal(signum)


def run_command(ctx: Context) -> int:
    from .commands import print_acquired, wait_printer

    args = ctx.args
    started = time.monotonic()
    forwarder = _Forwarder()
    code: int = ExitCode.ERROR
    with ctx.client() as client:
        try:
            with hold(client, args.environment, on_wait=wait_printer(sys.stderr), **ctx.acquire_options()) as held:
                forwarder.install()
                print_acquired(sys.stderr, held.lease, held.lease.waited(time.monotonic() - started))
                code = _run_child(args.cmd, _child_environment(held.lease), forwarder, ctx.prog)
        except LeaseLost as exc:
            print(f"{ctx.prog}: {describe(exc)}", file=sys.stderr)
            if code == ExitCode.OK:
                code = ExitCode.LEASE_LOST
        finally:
            forwarder.restore()
    return code


def _run_child(cmd: list[str], env: dict[str, str], forwarder: _Forwarder, prog: str) -> int:
    if forwarder.received is not None:
        return 128 + forwarder.received  # Told to stop before the command began: do not begin it.
    try:
        child = subprocess.Popen(cmd, env=env)
    except FileNotFoundError:
        print(f"{prog}: command not found: {cmd[0]}; the lease is released", file=sys.stderr)
        return _COMMAND_NOT_FOUND
    except PermissionError:
        print(f"{prog}: command not executable: {cmd[0]}; the lease is released", file=sys.stderr)
        return _COMMAND_NOT_EXECUTABLE
    forwarder.child = child
    returncode = child.wait()
    # Like a shell: a command killed by signal N exits 128 + N.
    return 128 - returncode if returncode < 0 else returncode


def _child_environment(lease: Lease | Group) -> dict[str, str]:
    from .models import Group

    if isinstance(lease, Group):
        variables = group_variables(lease, with_token=False)
        # As for one lease: no expiry (it moves with every renewal) and no token.
        variables = {k: v for k, v in variables.items() if not k.endswith(("_EXPIRES_AT", "_LEASE_TOKEN"))}
        return {**os.environ, **variables}
    variables = lease_variables(lease, with_token=False)
    # The expiry moves with every renewal, so a fixed value would mislead the command.
    variables.pop(EXPORT_EXPIRES_AT, None)
    variables.pop(EXPORT_LEASE_TOKEN, None)
    return {**os.environ, **variables}


def _in_terminal_foreground() -> bool:
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (OSError, ValueError, AttributeError):
        return False
