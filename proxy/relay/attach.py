"""Where the footprint goes: one more member of a JSON object, written after the upstream's
own bytes, which stay as they were."""

from __future__ import annotations

import orjson

from proxy import sse
from proxy.relay.facts import Held


def with_member(raw: bytes, name: bytes, value: bytes) -> bytes:
    """`raw` (a JSON object's bytes, as the upstream wrote them) with one more member at its
    end; every byte before it is the upstream's own. Not an object: `raw` unchanged."""
    body = raw.rstrip()
    if not body.endswith(b"}"):
        return raw
    joiner = b"," if body[:-1].rstrip() != b"{" else b""
    return body[:-1] + joiner + b'"' + name + b'":' + value + b"}"


def event_with_footprint(held: Held, footprint: object) -> bytes:
    """A held event with `footprint` added to its data object; its other lines unchanged."""
    data = sse.event_data(held.raw) or b"{}"
    return sse.with_data(held.raw, with_member(data, b"footprint", orjson.dumps(footprint)))
