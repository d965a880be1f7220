"""Checks of everything a client sends; each failure names the field and changes nothing."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from .constants import (
    MAX_DESCRIPTION_LENGTH,
    MAX_HOLDER_LENGTH,
    MAX_LABELS,
    MAX_METADATA_BYTES,
    MAX_NAME_LENGTH,
    MAX_NOTE_LENGTH,
    MAX_PARTS,
    MAX_PRIORITY,
    MAX_PROPERTIES,
    MAX_PROPERTY_VALUE_LENGTH,
    MAX_REQUEST_ID_LENGTH,
    MAX_SLOTS,
    MIN_ALERT_THRESHOLD,
    MIN_PARTS,
    MIN_PRIORITY,
    NAME_NOT_UTF8,
    NAME_REFUSED,
)
from .errors import BadJSON, Invalid
from .model import JSONObject

_PROPERTY_NAME = re.compile(r"[^A-Za-z0-9]")


def parse_object(raw: bytes, *, empty_ok: bool = False) -> JSONObject:
    if not raw.strip() and empty_ok:
        return {}
    try:
        value = json.loads(raw)
        # NaN, Infinity, 1e400 and lone surrogates parse, but could never be stored and sent back as JSON.
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode()
    except (ValueError, RecursionError):
        raise BadJSON("the body is not valid JSON (or holds values JSON cannot carry); send a JSON object") from None
    if not isinstance(value, dict):
        raise Invalid("body", "expected a JSON object")
    return value


def reject_unknown(body: JSONObject, allowed: frozenset[str], *, prefix: str = "") -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise Invalid(prefix + unknown[0], f"unknown field; allowed fields are {', '.join(sorted(allowed))}")


def name(field: str, value: Any) -> str:
    """An environment name or a label: any 1..200 characters but control characters, taken exactly as given."""
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_NAME_LENGTH:
        raise Invalid(field, f"must be a string of 1 to {MAX_NAME_LENGTH} characters")
    refused = NAME_REFUSED.search(value)
    if refused is not None and refused.group() == NAME_NOT_UTF8:
        raise Invalid(field, "is not UTF-8 (percent-encode a name's UTF-8 bytes in a URL)")
    if refused is not None:
        raise Invalid(
            field,
            f"must not contain control characters (U+0000-U+001F, U+007F-U+009F); "
            f"found U+{ord(refused.group()):04X} at position {refused.start() + 1}",
        )
    return value


def integer(field: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(field, f"must be a whole number from {low} to {high}")
    if not low <= value <= high:
        raise Invalid(field, f"must be from {low} to {high}, got {value}")
    return value


def number(field: str, value: Any, low: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Invalid(field, "must be a number of seconds")
    if value < low:
        raise Invalid(field, f"must be at least {low:g}, got {value}")
    return float(value)


def boolean(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise Invalid(field, "must be true or false")
    return value


def text(field: str, value: Any, max_length: int, *, min_length: int = 0) -> str:
    if not isinstance(value, str):
        raise Invalid(field, "must be a string")
    if not min_length <= len(value) <= max_length:
        raise Invalid(field, f"must be {min_length} to {max_length} characters long")
    if "\x00" in value:
        raise Invalid(field, "must not contain NUL characters")
    return value


def metadata(value: Any) -> JSONObject:
    if not isinstance(value, dict):
        raise Invalid("metadata", "must be a JSON object")
    size = len(json.dumps(value, separators=(",", ":")).encode())
    if size > MAX_METADATA_BYTES:
        raise Invalid("metadata", f"is {size} bytes once encoded; at most {MAX_METADATA_BYTES} are allowed")
    return value


def labels(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_LABELS:
        raise Invalid("labels", f"must be a list of at most {MAX_LABELS} labels")
    result = [name("labels", item) for item in value]
    if len(set(result)) != len(result):
        raise Invalid("labels", "lists a label twice")
    return tuple(sorted(result))


def property_variable(key: str, prefix: str = "CALL_ME_") -> str:
    """The shell variable a property becomes in text/plain answers (API.md)."""
    return prefix + "PROPERTY_" + _PROPERTY_NAME.sub("_", key.upper())


def part_prefixes(environments: list[str]) -> list[str]:
    """The prefix of each part's variables in a group's text/plain answer (API.md): `CALL_ME_<ENVIRONMENT>_`, its
    name upper-cased with every character other than a letter or digit turned to `_`; a part whose prefix would
    make a variable of another part's (the same name, or one that starts with the other's and `_`) gets
    `CALL_ME_PART<n>_` instead, n its place in `all` from 1."""
    chosen: list[str] = []

    def clashes(candidate: str) -> bool:
        return any(c.startswith(candidate) or candidate.startswith(c) for c in chosen)

    for n, env in enumerate(environments, 1):
        candidate = "CALL_ME_" + _PROPERTY_NAME.sub("_", env.upper()) + "_"
        if clashes(candidate):
            candidate = f"CALL_ME_PART{n}_"
            while clashes(candidate):
                candidate = candidate[:-1] + "X_"
        chosen.append(candidate)
    return chosen


def properties(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or len(value) > MAX_PROPERTIES:
        raise Invalid("properties", f"must be an object of at most {MAX_PROPERTIES} string values")
    seen: dict[str, str] = {}
    for key, item in value.items():
        text("properties", key, 100, min_length=1)
        text(f"properties.{key}", item, MAX_PROPERTY_VALUE_LENGTH)
        variable = property_variable(key)
        if variable in seen:
            raise Invalid("properties", f"{seen[variable]!r} and {key!r} would both become {variable}")
        seen[variable] = key
    return dict(value)


@dataclass(frozen=True)
class AcquireRequest:
    environment: str | None
    label: str | None
    holder: str | None
    ttl: int | None
    wait: float
    queue: bool
    ticket: str | None
    priority: int
    metadata: JSONObject
    request_id: str | None
    # A request for several environments at once (`all`): one (environment, label) per part, exactly one of the
    # two set in each; then `environment` and `label` are None.
    parts: tuple[tuple[str | None, str | None], ...] | None = None

    @property
    def targets(self) -> list[tuple[str | None, str | None]]:
        """Every part's (environment, label); a single request's own."""
        return list(self.parts) if self.parts is not None else [(self.environment, self.label)]


_ACQUIRE_FIELDS = frozenset(
    {"environment", "label", "holder", "ttl", "wait", "queue", "ticket", "priority", "metadata", "request_id", "all"}
)


def parts(value: Any) -> tuple[tuple[str | None, str | None], ...]:
    """The parts of `all`: 2..8 objects, each with exactly one of environment and label, no environment twice."""
    if not isinstance(value, list) or not MIN_PARTS <= len(value) <= MAX_PARTS:
        raise Invalid("all", f"must be a list of {MIN_PARTS} to {MAX_PARTS} parts")
    found: list[tuple[str | None, str | None]] = []
    for i, part in enumerate(value):
        where = f"all[{i}]"
        if not isinstance(part, dict):
            raise Invalid(where, 'must be an object: {"environment": "..."} or {"label": "..."}')
        reject_unknown(part, frozenset({"environment", "label"}), prefix=f"{where}.")
        env, label = part.get("environment"), part.get("label")
        if (env is None) == (label is None):
            raise Invalid(where, "give exactly one of environment and label")
        if env is not None:
            env = name(f"{where}.environment", env)
            if (env, None) in found:
                raise Invalid(
                    f"{where}.environment", f'names "{env}" a second time; a group holds each environment once'
                )
            found.append((env, None))
        else:
            found.append((None, name(f"{where}.label", label)))
    return tuple(found)


def acquire(body: JSONObject, max_ttl: int) -> AcquireRequest:
    reject_unknown(body, _ACQUIRE_FIELDS)
    env = body.get("environment")
    label = body.get("label")
    every = body.get("all")
    if every is not None:
        if env is not None or label is not None:
            raise Invalid("all", "give the parts in all, or one environment or label, not both")
    elif (env is None) == (label is None):
        raise Invalid("environment", "give exactly one of environment, label and all")
    wait = number("wait", body.get("wait", 0), 0)
    queue = boolean("queue", body.get("queue", True))
    if not queue and wait > 0:
        raise Invalid("wait", "cannot wait with queue set to false")
    ticket = body.get("ticket")
    if ticket is not None:
        text("ticket", ticket, 200, min_length=1)
        if not queue:
            raise Invalid("queue", "cannot be false when coming back with a ticket")
    holder = body.get("holder")
    ttl = body.get("ttl")
    request_id = body.get("request_id")
    return AcquireRequest(
        environment=name("environment", env) if env is not None else None,
        label=name("label", label) if label is not None else None,
        holder=text("holder", holder, MAX_HOLDER_LENGTH, min_length=1) if holder is not None else None,
        ttl=integer("ttl", ttl, 1, max_ttl) if ttl is not None else None,
        wait=wait,
        queue=queue,
        ticket=ticket,
        priority=integer("priority", body.get("priority", 0), MIN_PRIORITY, MAX_PRIORITY),
        metadata=metadata(body.get("metadata", {})),
        request_id=(
            text("request_id", request_id, MAX_REQUEST_ID_LENGTH, min_length=1) if request_id is not None else None
        ),
        parts=parts(every) if every is not None else None,
    )


def renew_ttl(body: JSONObject, max_ttl: int) -> tuple[int | None, str | None]:
    reject_unknown(body, frozenset({"ttl", "token"}))
    ttl = body.get("ttl")
    token = body.get("token")
    return (
        integer("ttl", ttl, 1, max_ttl) if ttl is not None else None,
        text("token", token, 200) if token is not None else None,
    )


@dataclass(frozen=True)
class EnvironmentChange:
    """The fields of a PUT; None means "leave as it is" (or the default, when creating)."""

    slots: int | None = None
    labels: tuple[str, ...] | None = None
    description: str | None = None
    properties: dict[str, str] | None = None
    maintenance: bool | None = None
    note: str | None = None
    note_given: bool = False
    # Seconds before a webhook hears of a lease held (a ticket waiting) too long; null: the server's default.
    held_too_long: float | None = None
    held_too_long_given: bool = False
    waiting_too_long: float | None = None
    waiting_too_long_given: bool = False


_ENVIRONMENT_FIELDS = frozenset(
    {"slots", "labels", "description", "properties", "maintenance", "note", "held_too_long", "waiting_too_long"}
)


def _threshold(body: JSONObject, field: str) -> float | None:
    value = body.get(field)
    return number(field, value, MIN_ALERT_THRESHOLD) if value is not None else None


def environment_change(body: JSONObject) -> EnvironmentChange:
    reject_unknown(body, _ENVIRONMENT_FIELDS)
    note = body.get("note")
    return EnvironmentChange(
        slots=integer("slots", body["slots"], 1, MAX_SLOTS) if "slots" in body else None,
        labels=labels(body["labels"]) if "labels" in body else None,
        description=(
            text("description", body["description"], MAX_DESCRIPTION_LENGTH) if "description" in body else None
        ),
        properties=properties(body["properties"]) if "properties" in body else None,
        maintenance=boolean("maintenance", body["maintenance"]) if "maintenance" in body else None,
        note=text("note", note, MAX_NOTE_LENGTH) if note is not None else None,
        note_given="note" in body,
        held_too_long=_threshold(body, "held_too_long"),
        held_too_long_given="held_too_long" in body,
        waiting_too_long=_threshold(body, "waiting_too_long"),
        waiting_too_long_given="waiting_too_long" in body,
    )
