"""Text for people and shells: Go-style durations, times, and `KEY='value'` lines."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime

from .constants import (
    EXPORT_ENVIRONMENT,
    EXPORT_EXPIRES_AT,
    EXPORT_FENCE,
    EXPORT_GROUP_ID,
    EXPORT_GROUP_TOKEN,
    EXPORT_LEASE_ID,
    EXPORT_LEASE_TOKEN,
    EXPORT_PROPERTY_PREFIX,
)
from .models import Group, Lease

_NS_PER_SECOND = 1_000_000_000
_NS_PER_MS = 1_000_000


def go_duration(seconds: float) -> str:
    """A duration as Go's time.Duration prints it, to the millisecond: `57ms`, `12.3s`, `1m2s`, `1h0m5s`.

    The original call-me-client printed `waited <time.Duration>`; this keeps its shape (and stays
    parseable by Go's time.ParseDuration) without the nanoseconds nobody reads.
    """
    ms = round(seconds * 1000)
    if ms < 0:
        return "-" + go_duration(-seconds)
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    ns = ms * _NS_PER_MS
    hours, rest = divmod(ns, 3600 * _NS_PER_SECOND)
    minutes, rest = divmod(rest, 60 * _NS_PER_SECOND)
    whole, fraction = divmod(rest, _NS_PER_SECOND)
    text = f"{whole}.{fraction:09d}".rstrip("0").rstrip(".") + "s"
    if hours or minutes:
        text = f"{minutes}m{text}"
    if hours:
        text = f"{hours}h{text}"
    return text


def clock_time(moment: datetime | None, *, now: datetime | None = None) -> str:
    """`14:02:05 UTC` today, `2024-06-01 14:02 UTC` on other days, `-` when unknown."""
    if moment is None:
        return "-"
    moment = moment.astimezone(UTC)
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    if moment.date() == today:
        return moment.strftime("%H:%M:%S UTC")
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def rfc3339(moment: datetime | None) -> str:
    if moment is None:
        return ""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def shell_quote(value: str) -> str:
    """Single-quoted for a POSIX shell, as API.md's text/plain answers are."""
    return "'" + value.replace("'", "'\\''") + "'"


def property_variable(name: str) -> str:
    """`CALL_ME_PROPERTY_<NAME>`: upper-cased, every character but letters and digits made `_`."""
    return EXPORT_PROPERTY_PREFIX + re.sub(r"[^A-Z0-9]", "_", name.upper())


def lease_variables(lease: Lease, *, with_token: bool) -> dict[str, str]:
    """The `CALL_ME_*` variables that describe a lease, in API.md's order."""
    variables = {EXPORT_LEASE_ID: lease.id}
    if with_token and lease.token:
        variables[EXPORT_LEASE_TOKEN] = lease.token
    variables[EXPORT_ENVIRONMENT] = lease.environment
    variables[EXPORT_FENCE] = str(lease.fence)
    variables[EXPORT_EXPIRES_AT] = rfc3339(lease.expires_at)
    for name, value in sorted(lease.properties.items()):
        variables[property_variable(name)] = value
    return variables


def part_prefixes(environments: Sequence[str]) -> list[str]:
    """The prefix of each part's variables for a group (API.md): `CALL_ME_<ENVIRONMENT>_`, the name upper-cased
    with every character but letters and digits made `_`; a part whose prefix would make a variable of another
    part's (the same, or one that starts with the other's and `_`) gets `CALL_ME_PART<n>_`, n its place from 1."""
    chosen: list[str] = []

    def clashes(candidate: str) -> bool:
        return any(c.startswith(candidate) or candidate.startswith(c) for c in chosen)

    for n, environment in enumerate(environments, 1):
        candidate = "CALL_ME_" + re.sub(r"[^A-Z0-9]", "_", environment.upper()) + "_"
        if clashes(candidate):
            candidate = f"CALL_ME_PART{n}_"
            while clashes(candidate):
                candidate = candidate[:-1] + "X_"
        chosen.append(candidate)
    return chosen


def group_variables(group: Group, *, with_token: bool) -> dict[str, str]:
    """The variables of a group: its id (and token), then each lease's as `lease_variables` names them, prefixed
    by its environment's name (`CALL_ME_UAT_LEASE_ID`, `CALL_ME_UAT_PROPERTY_URL`)."""
    variables = {EXPORT_GROUP_ID: group.id}
    if with_token and group.token:
        variables[EXPORT_GROUP_TOKEN] = group.token
    prefixes = part_prefixes([lease.environment for lease in group.leases])
    for prefix, lease in zip(prefixes, group.leases, strict=True):
        for name, value in lease_variables(lease, with_token=with_token).items():
            variables[prefix + name.removeprefix("CALL_ME_")] = value
    return variables


def env_lines(variables: Mapping[str, str]) -> str:
    return "".join(f"{key}={shell_quote(value)}\n" for key, value in variables.items())


def table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    """Left-aligned columns two spaces apart; the last column is not padded."""
    lines = [list(header), *(list(row) for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = []
    for line in lines:
        cells = [cell.ljust(width) for cell, width in zip(line[:-1], widths[:-1], strict=True)]
        out.append("  ".join([*cells, line[-1]]).rstrip())
    return "\n".join(out) + "\n"
