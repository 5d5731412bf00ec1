"""Incremental Server-Sent Events parsing, and the events Footprint adds to a stream.

The relay never re-encodes what it passes on: it splits the upstream's bytes into whole events
and forwards each one's original bytes as soon as its blank line arrives.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson

DONE = b"[DONE]"


class SSESplitter:
    """Splits a byte stream into complete SSE events (each returned with its terminator)."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        data = self._buffer + chunk if self._buffer else chunk
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        events: list[bytes] = []
        start = 0
        while True:
            end = data.find(b"\n\n", start)
            if end < 0:
                break
            events.append(data[start : end + 2])
            start = end + 2
        self._buffer = data[start:]
        return events

    def rest(self) -> bytes:
        """Whatever arrived after the last complete event (a stream cut mid-event)."""
        rest, self._buffer = self._buffer, b""
        return rest


def event_data(event: bytes) -> bytes | None:
    """The `data:` payload of one event (several data lines joined by newlines), or None for
    a comment-only or data-less event."""
    parts: list[bytes] = []
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            value = line[5:]
            parts.append(value[1:] if value.startswith(b" ") else value)
    if not parts:
        return None
    return b"\n".join(parts)


def data_event(payload: Mapping[str, object]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def comment_event(name: str, payload: Mapping[str, object]) -> bytes:
    """An SSE comment line (`: name {json}`); SSE parsers skip comments."""
    return b": " + name.encode() + b" " + orjson.dumps(payload) + b"\n\n"


DONE_EVENT = b"data: [DONE]\n\n"


def named_event(name: str, payload: Mapping[str, object]) -> bytes:
    """An event with an `event:` line, as the Responses and Messages APIs write theirs."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def with_data(event: bytes, data: bytes) -> bytes:
    """`event` (one complete event) with its data replaced by `data`; its other lines
    (`event:`, `id:`, comments) are kept as they were, in their order."""
    lines = [line for line in event.rstrip(b"\n").split(b"\n") if not line.startswith(b"data:")]
    return b"".join(line + b"\n" for line in lines) + b"data: " + data + b"\n\n"
