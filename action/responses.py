"""Answers into models or errors: the contract's JSON shapes and its problem documents."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import httpx

from .errors import APIError, NoRoute, NotGranted, UnexpectedResponse, error_class
from .models import JSON, Lease, MalformedAnswer

_T = TypeVar("_T")


def json_object(response: httpx.Response, context: Mapping[str, object]) -> JSON:
    try:
        body = response.json()
    except ValueError as exc:
        raise unexpected(response, "the answer is not JSON", context) from exc
    if not isinstance(body, dict):
        raise unexpected(response, "the answer is not a JSON object", context)
    return body


def parse(parser: Callable[[JSON], _T], response: httpx.Response, context: Mapping[str, object]) -> _T:
    return parse_item(parser, json_object(response, context), response, context)


def parse_item(
    parser: Callable[[JSON], _T], item: object, response: httpx.Response, context: Mapping[str, object]
) -> _T:
    if not isinstance(item, dict):
        raise unexpected(response, "an item of the answer is not a JSON object", context)
    try:
        return parser(item)
    except (MalformedAnswer, TypeError, ValueError) as exc:
        raise unexpected(response, str(exc), context) from exc


def unexpected(response: httpx.Response, detail: str, context: Mapping[str, object]) -> UnexpectedResponse:
    return UnexpectedResponse(response.status_code, detail, context=context)


def error_from(response: httpx.Response, context: Mapping[str, object]) -> APIError:
    body: dict[str, Any] = {}
    try:
        parsed = response.json()
        if isinstance(parsed, dict):
            body = parsed
    except ValueError:
        pass  # The original /maybe routes and proxies answer errors with no JSON at all.
    code = body.get("code") if isinstance(body.get("code"), str) else None
    detail = str(body.get("detail") or body.get("title") or response.reason_phrase or "")
    cls = error_class(response.status_code, code)
    if response.status_code == 404 and (code is None or detail.startswith("no route ")):
        # Our server names a missing thing with `not_found` and its name; "no route" (or no problem document
        # at all) means the request never reached a route: a wrong --url, not a wrong name.
        cls = NoRoute
    if issubclass(cls, NotGranted):
        holders = _holders(body.get("holders"))
        return cls(response.status_code, detail, code=code, context=context, holders=holders)
    return cls(response.status_code, detail, code=code, context=context)


def _holders(value: object) -> list[Lease]:
    if not isinstance(value, list):
        return []
    try:
        return [Lease.from_json(item) for item in value if isinstance(item, dict)]
    except (MalformedAnswer, TypeError, ValueError):
        return []  # The error itself matters more than a detail of it.
