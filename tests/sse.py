"""A small server-sent events reader for the tests: frames as dicts, every read bounded in time."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Frame:
    id: int | None = None
    event: str | None = None
    data: Any = None
    comments: list[str] = field(default_factory=list)
    retry: int | None = None


class EventStream:
    """GET /v1/events, read frame by frame; a read that waits over `timeout` seconds raises ReadTimeout."""

    def __init__(self, client: httpx.Client, last_event_id: int | None = None, timeout: float = 5.0) -> None:
        headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
        self._context = client.stream("GET", "/v1/events", headers=headers, timeout=httpx.Timeout(timeout))
        self.response = self._context.__enter__()
        self._lines: Iterator[str] = self.response.iter_lines()

    def frame(self) -> Frame:
        frame = Frame()
        for line in self._lines:
            if line == "":
                if frame.id is None and frame.event is None and not frame.comments and frame.retry is None:
                    continue
                return frame
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "":
                frame.comments.append(value)
            elif name == "id":
                frame.id = int(value)
            elif name == "event":
                frame.event = value
            elif name == "data":
                frame.data = json.loads(value)
            elif name == "retry":
                frame.retry = int(value)
        raise EOFError("the stream ended")

    def events(self, count: int) -> list[Frame]:
        """The next `count` events, skipping heartbeats."""
        found: list[Frame] = []
        while len(found) < count:
            frame = self.frame()
            if frame.event is not None:
                found.append(frame)
        return found

    def close(self) -> None:
        self._context.__exit__(None, None, None)

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
