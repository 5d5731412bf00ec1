"""Incremental Server-Sent Events parsing, and the events Footprint adds to a stream.

The relay never re-encodes what it passes on: it splits the upstream's bytes into whole events
and forwards each one's original bytes as soon as its blank line arrives.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson

DONE = b"[DONE]"


class EventTooLarge(ValueError):
    """An event grew past the splitter's size limit without ending."""


class SSESplitter:
    """Splits a byte stream into complete SSE events (each returned with its terminator).

    Linear in the bytes fed: each chunk is normalised (CR LF and lone CR to LF) once as it
    arrives, only the bytes not yet searched are searched for the blank line, and an event
    that spans many chunks is appended to a bytearray rather than copied anew per chunk. A
    CR at the very end of a chunk waits for the next one (it may be half of a CR LF). An
    event over `max_event_bytes` raises EventTooLarge."""

    __slots__ = ("_buffer", "_carry_cr", "_max_event_bytes", "_searched")

    def __init__(self, max_event_bytes: int | None = None) -> None:
        self._buffer = bytearray()
        self._searched = 0  # bytes of the buffer known to hold no blank line
        self._carry_cr = False
        self._max_event_bytes = max_event_bytes

    def feed(self, chunk: bytes) -> list[bytes]:
        if self._carry_cr:
            chunk = b"\r" + chunk
            self._carry_cr = False
        if b"\r" in chunk:
            if chunk.endswith(b"\r"):
                chunk = chunk[:-1]
                self._carry_cr = True
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if not self._buffer:
            return self._split(chunk, 0)
        # A blank line may straddle the old end: search from one byte before it.
        search_from = max(0, self._searched - 1)
        self._buffer += chunk
        data = self._buffer
        if data.find(b"\n\n", search_from) < 0:
            self._searched = len(data)
            self._check_size()
            return []
        self._buffer = bytearray()
        self._searched = 0
        return self._split(bytes(data), search_from)

    def _split(self, data: bytes, search_from: int) -> list[bytes]:
        events: list[bytes] = []
        start = 0
        while True:
            end = data.find(b"\n\n", max(start, search_from))
            if end < 0:
                break
            events.append(data[start : end + 2])
            start = end + 2
        if start < len(data):
            self._buffer = bytearray(data[start:]) if start else bytearray(data)
            self._searched = len(self._buffer)
            self._check_size()
        return events

    def _check_size(self) -> None:
        limit = self._max_event_bytes
        if limit is not None and len(self._buffer) > limit:
            size = len(self._buffer)
            self._buffer = bytearray()
            self._searched = 0
            raise EventTooLarge(f"an event of the stream passed {limit} bytes ({size} so far)")

    def rest(self) -> bytes:
        """Whatever arrived after the last complete event (a stream cut mid-event)."""
        rest = bytes(self._buffer) + (b"\r" if self._carry_cr else b"")
        self._buffer = bytearray()
        self._searched = 0
        self._carry_cr = False
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
