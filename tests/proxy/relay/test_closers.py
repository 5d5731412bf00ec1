"""Each endpoint's closing events, pure: where the footprint goes at a stream's end, and the
error event a cut-off stream ends with, in its API's own shape."""

from __future__ import annotations

from typing import Any

import orjson

from proxy.errors import UpstreamUnavailable
from proxy.relay import ENDPOINTS
from proxy.relay.facts import Held, StreamEnd

FOOTPRINT = {"request_id": "r1", "energy_j": 1.5}


def held(kind: str, **payload: Any) -> Held:
    body = {"type": kind, **payload}
    return Held(b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(body) + b"\n\n", body)


def end(*events: Held, broke_off: bool = False, done: bool = False) -> StreamEnd:
    return StreamEnd(
        request_id="r1",
        model="m",
        created_s=0,
        held=events,
        upstream_done=done,
        client_wants_usage=False,
        prompt_tokens=3,
        completion_tokens=4,
        usage=None,
        footprint=FOOTPRINT,
        broke_off=UpstreamUnavailable("upstream u broke off the stream") if broke_off else None,
    )


def parsed(event: bytes) -> tuple[bytes, Any]:
    head, _, data = event.partition(b"data: ")
    return head, orjson.loads(data)


def test_a_responses_stream_ends_with_its_completed_event_carrying_the_footprint() -> None:
    close = ENDPOINTS["responses"].close_stream
    completed = held("response.completed", response={"id": "resp_1"}, sequence_number=9)
    comment, last = close(end(completed))
    assert comment == b": footprint " + orjson.dumps(FOOTPRINT) + b"\n\n"
    head, payload = parsed(last)
    assert head == b"event: response.completed\n"
    assert payload == {
        "type": "response.completed",
        "response": {"id": "resp_1", "footprint": FOOTPRINT},
        "sequence_number": 9,
    }


def test_a_cut_off_responses_stream_ends_with_a_responses_error_event() -> None:
    error, comment = ENDPOINTS["responses"].close_stream(end(broke_off=True))
    head, payload = parsed(error)
    assert head == b"event: error\n"
    assert payload["type"] == "error" and payload["code"] == "upstream_unavailable"
    assert comment.startswith(b": footprint ")


def test_a_messages_stream_puts_the_footprint_on_message_delta_before_message_stop() -> None:
    delta = held("message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": 4})
    stop = held("message_stop")
    with_footprint, comment, last, done = ENDPOINTS["messages"].close_stream(
        end(delta, stop, done=True)
    )
    head, payload = parsed(with_footprint)
    assert head == b"event: message_delta\n"
    assert payload == {**delta.payload, "footprint": FOOTPRINT}
    assert comment.startswith(b": footprint ")
    assert last == stop.raw and done == b"data: [DONE]\n\n"


def test_a_cut_off_messages_stream_ends_with_an_anthropic_error_event() -> None:
    error, comment = ENDPOINTS["messages"].close_stream(end(broke_off=True))
    head, payload = parsed(error)
    assert head == b"event: error\n"
    assert payload == {
        "type": "error",
        "error": {"type": "api_error", "message": "upstream u broke off the stream"},
    }
    assert comment.startswith(b": footprint ")
