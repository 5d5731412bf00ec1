"""The SSE splitter: whole events out, whatever the chunking; linear in the bytes fed, so an
upstream that never ends an event cannot make the proxy spin (issue 11, defect 14a); an event
over the size limit is refused (14b)."""

from __future__ import annotations

import random
import time

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


def _feed_unterminated(total_bytes: int) -> float:
    splitter = SSESplitter()
    chunk = b"data: " + bytes(random.Random(1).randrange(97, 123) for _ in range(16 * 1024))
    started = time.perf_counter()
    for _ in range(total_bytes // len(chunk)):
        splitter.feed(chunk)
    return time.perf_counter() - started


def test_splitting_an_event_that_never_ends_is_linear() -> None:
    """16 MB without a blank line took 0.64 s and 100 MB 31 s (quadratic): four times the
    bytes now take about four times as long, never the sixteen of a quadratic splitter."""
    small = min(_feed_unterminated(4 * 1024 * 1024) for _ in range(3))
    large = min(_feed_unterminated(16 * 1024 * 1024) for _ in range(3))
    assert large < 10 * max(small, 1e-3), (small, large)
