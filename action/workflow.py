"""What a GitHub runner gives a step of an action, and how the step talks back to it.

In: inputs as `INPUT_<NAME>` variables (the name upper-cased, spaces made `_`, hyphens kept:
`INPUT_API-KEY`), the context as `GITHUB_*`, and in a post step what the main step saved as
`STATE_<name>`. Out: workflow commands on stdout (`::add-mask::`, `::error::`, `::warning::`)
and the file commands: `name<<DELIMITER` blocks appended to the files that `GITHUB_OUTPUT`
and `GITHUB_STATE` name, Markdown appended to `GITHUB_STEP_SUMMARY`.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

__all__ = ["FileCommandError", "Workflow"]

_DELIMITER_PREFIX = "ghadelimiter_"


class FileCommandError(Exception):
    """A file command cannot be written: its file is not set, or the name cannot be written."""


class Workflow:
    """One step's view of the runner: its environment and the stream the runner reads commands from."""

    def __init__(self, environ: Mapping[str, str], out: TextIO | None = None) -> None:
        self.environ = environ
        self.out = out if out is not None else sys.stdout

    # In.

    def input(self, name: str) -> str:
        """An input, stripped; "" when not given. `INPUT_API_KEY` is accepted for `api-key` too."""
        upper = name.upper().replace(" ", "_")
        for variable in (f"INPUT_{upper}", f"INPUT_{upper.replace('-', '_')}"):
            value = self.environ.get(variable)
            if value is not None and value.strip():
                return value.strip()
        return ""

    def context(self, name: str) -> str:
        """A `GITHUB_*` variable of the run's context, "" when unset."""
        return self.environ.get(f"GITHUB_{name.upper()}", "")

    def state(self, name: str) -> str:
        """What the main step saved under `name` (the runner hands it to the post step as STATE_<name>)."""
        return self.environ.get(f"STATE_{name}", "")

    # Out: workflow commands.

    def print(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def mask(self, secret: str) -> None:
        """From now on the runner prints *** for `secret` in every log line."""
        for line in secret.splitlines():
            if line.strip():
                self.print(f"::add-mask::{_escape_data(line)}")

    def error(self, message: str, *, title: str = "call-me") -> None:
        self.print(f"::error title={_escape_property(title)}::{_escape_data(message)}")

    def warning(self, message: str, *, title: str = "call-me") -> None:
        self.print(f"::warning title={_escape_property(title)}::{_escape_data(message)}")

    # Out: file commands.

    def set_outputs(self, values: Mapping[str, str]) -> None:
        self._append_pairs("GITHUB_OUTPUT", values)

    def save_state(self, values: Mapping[str, str]) -> None:
        """Saves `values` for the post step, on disk when it returns (a step killed next keeps them)."""
        self._append_pairs("GITHUB_STATE", values, durable=True)

    def add_summary(self, markdown: str) -> bool:
        """Appends to the job summary; False when the runner gave no summary file."""
        path = self.environ.get("GITHUB_STEP_SUMMARY")
        if not path:
            return False
        with Path(path).open("a", encoding="utf-8") as summary:
            summary.write(markdown if markdown.endswith("\n") else markdown + "\n")
        return True

    def _append_pairs(self, variable: str, values: Mapping[str, str], *, durable: bool = False) -> None:
        path = self.environ.get(variable)
        if not path:
            raise FileCommandError(
                f"{variable} is not set: this runs outside a GitHub Actions runner, or on one too old"
            )
        text = "".join(_block(name, value) for name, value in values.items())
        # One write of whole blocks, so that a step killed meanwhile leaves no half block behind.
        with Path(path).open("a", encoding="utf-8") as file:
            file.write(text)
            if durable:
                # The state is what the post step acts on, and the step may be killed right after
                # this returns: out of our buffer and onto the disk first.
                file.flush()
                os.fsync(file.fileno())


def _block(name: str, value: str) -> str:
    """`name<<D`, the value, `D`: the heredoc form, safe for any value (a fresh random D each time)."""
    if not name or "\n" in name or "\r" in name or "<<" in name or "=" in name:
        raise FileCommandError(f"{name!r} cannot be the name of an output or a state")
    delimiter = _DELIMITER_PREFIX + secrets.token_hex(16)
    while delimiter in value:  # Never, short of a value crafted to hold it; then draw again.
        delimiter = _DELIMITER_PREFIX + secrets.token_hex(16)
    return f"{name}<<{delimiter}\n{value}\n{delimiter}\n"


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")
