"""SIGTERM as an exception, so that leaving the queue and releasing run on the way out."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from types import FrameType


class Terminated(BaseException):
    """The process got SIGTERM (a cancelled CI job); a BaseException, like KeyboardInterrupt."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def raise_terminated(signum: int, frame: FrameType | None) -> NoReturn:
    raise Terminated(signum)


def install() -> None:
    signal.signal(signal.SIGTERM, raise_terminated)
