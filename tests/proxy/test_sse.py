"""The SSE splitter: whole events out, whatever the chunking; linear in the bytes fed, so an
upstream that never ends an event cannot make the proxy spin (issue 11, defect 14a); an event
over the size limit is refused (14b)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.sse import EventTooLarge, SSESplitter

EVENTS = [b"data: one\n\n", b": ping\n\n", b'data: {"a": 1}\ndata: two\n\n', b"data: [DONE]\n\n"]


def _split_all(data: bytes, cuts: list[int]) -> tuple[list[bytes], bytes]:
    splitter = SSESplitter()
    out: list[bytes] = []
    last = 0
    for cut in [*sorted(cuts), len(data)]:
        out += splitter.feed(data[last:cut])
        last = cut
    return out, splitter.rest()


@given(st.lists(st.integers(min_value=0, max_value=200), max_size=12), st.booleans())
def test_events_come_out_whole_however_the_bytes_are_cut(cuts: list[int], crlf: bool) -> None:
    data = b"".join(EVENTS)
    if crlf:
        data = data.replace(b"\n", b"\r\n")
    out, rest = _split_all(data, [min(c, len(data)) for c in cuts])
    assert out == EVENTS
    assert rest == b""


def test_a_lone_cr_at_a_chunk_end_is_not_taken_for_a_blank_line() -> None:
    splitter = SSESplitter()
    assert splitter.feed(b"data: x\r") == []
    assert splitter.feed(b"\ndata: y\r\n\r\n") == [b"data: x\ndata: y\n\n"]


def test_an_event_over_the_limit_is_refused() -> None:
    splitter = SSESplitter(max_event_bytes=1000)
    splitter.feed(b"data: " + b"x" * 900)
    with pytest.raises(EventTooLarge):
        splitter.feed(b"x" * 200)


class _CountingBuffer(bytearray):
    """The splitter's buffer, counting the bytes each search for a blank line looks at."""

    scanned = 0

    def find(self, sub: bytes, start: int = 0, *args: int) -> int:  # type: ignore[override]
        found = super().find(sub, start, *args)
        _CountingBuffer.scanned += (len(self) if found < 0 else found + len(sub)) - start
        return found

    def __iadd__(self, other: bytes) -> _CountingBuffer:  # type: ignore[override]
        self.extend(other)
        return self


def test_splitting_an_event_that_never_ends_is_linear() -> None:
    """16 MB without a blank line took 0.64 s and 100 MB 31 s: every chunk searched the whole
    event so far again (quadratic). Counted, not timed: each byte fed is searched about once,
    however many chunks the event spans."""
    chunk = b"data: " + bytes(random.Random(1).randrange(97, 123) for _ in range(16 * 1024))
    splitter = SSESplitter()
    splitter.feed(chunk)
    splitter._buffer = _CountingBuffer(splitter._buffer)  # the first chunk's rest, counted
    _CountingBuffer.scanned = 0
    chunks = 512  # 8 MB in one event
    for _ in range(chunks):
        splitter.feed(chunk)
    assert isinstance(splitter._buffer, _CountingBuffer)
    fed = chunks * len(chunk)
    assert fed <= _CountingBuffer.scanned <= fed + 2 * chunks, (_CountingBuffer.scanned, fed)
