"""The stream tally, pure: SSE events in, what to pass on and the tokens each brought out."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from proxy.relay import ENDPOINTS, StreamTally, Tally
from proxy.relay.tally import Step


def event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def chunk(text: str | None = None, *, finish: str | None = None, **extra: Any) -> bytes:
    delta = {"content": text} if text is not None else {}
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return event({"id": "c1", "model": "m-2024", "choices": [choice], **extra})


def usage_chunk(prompt: int, completion: int, **more: Any) -> bytes:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, **more}
    return event({"id": "c1", "model": "m-2024", "choices": [], "usage": usage})


def chat_tally() -> StreamTally:
    return StreamTally(ENDPOINTS["chat.completions"], Tally())


def feed(tally: StreamTally, *events: bytes) -> list[Step]:
    return [tally.feed(e) for e in events]


def test_content_chunks_pass_on_and_count_their_text_in_tokens() -> None:
    tally = chat_tally()
    steps = feed(tally, chunk("Hello"), chunk(" there, how are you doing today?"), chunk("!"))
    assert [s.pass_on for s in steps] == [True, True, True]
    # One word or punctuation run is one token; the long delta has 8 of them (and 32
    # characters: 8 by the 4-characters rule too).
    assert [s.new_tokens for s in steps] == [1, 8, 1]
    assert tally.tally.completion_tokens == 10
    assert tally.tally.response_model == "m-2024"


def test_the_usage_only_chunk_is_held_and_tops_up_the_count_to_what_the_upstream_says() -> None:
    tally = chat_tally()
    steps = feed(
        tally,
        chunk("w0 "),
        chunk("w1 "),
        chunk(finish="stop"),
        usage_chunk(7, 5, prompt_tokens_details={"cached_tokens": 4}),
        b"data: [DONE]\n\n",
    )
    assert [s.pass_on for s in steps] == [True, True, True, False, False]
    assert sum(s.new_tokens for s in steps) == 5  # 2 by text, 3 more from usage
    assert tally.tally.prompt_tokens == 7 and tally.tally.completion_tokens == 5
    assert tally.tally.finish_reasons == ["stop"]
    assert tally.tally.usage == {
        "prompt_tokens": 7,
        "completion_tokens": 5,
        "prompt_tokens_details": {"cached_tokens": 4},
    }
    (held,) = tally.held
    assert held.payload["usage"]["completion_tokens"] == 5
    assert tally.usage_seen and not tally.cut_off(b"")


def test_per_chunk_cumulative_usage_gives_the_tokens_of_each_chunk() -> None:
    # vLLM with stream_options.continuous_usage_stats: every chunk carries usage so far.
    tally = chat_tally()
    steps = feed(
        tally,
        chunk("a", usage={"prompt_tokens": 3, "completion_tokens": 1}),
        chunk("bcdefgh", usage={"prompt_tokens": 3, "completion_tokens": 4}),
        chunk("i", usage={"prompt_tokens": 3, "completion_tokens": 5}),
    )
    assert [s.new_tokens for s in steps] == [1, 3, 1]
    assert all(s.pass_on for s in steps)
    assert tally.tally.completion_tokens == 5


def test_a_tool_call_delta_counts_its_arguments_and_at_least_one_token() -> None:
    tally = chat_tally()
    name_only = {"index": 0, "id": "call_1", "function": {"name": "get_weather"}}
    arguments = {"index": 0, "function": {"arguments": '{"city": "Seoul, KR"}'}}
    steps = [
        tally.feed(event({"choices": [{"index": 0, "delta": {"tool_calls": [call]}}]}))
        for call in (name_only, arguments)
    ]
    # `{"`, `city`, `":`, `"`, `Seoul`, `,`, `KR`, `"}`: 8 units (21 characters: 5 by the rule)
    assert [s.new_tokens for s in steps] == [1, 8]


def test_comments_pings_and_unparsable_events_pass_through_uncounted() -> None:
    tally = chat_tally()
    steps = feed(tally, b": ping\n\n", b"data: {not json\n\n", b"event: x\ndata: [1, 2]\n\n")
    assert steps == [Step(True), Step(True), Step(True)]
    assert tally.tally.completion_tokens == 0


def test_an_error_event_passes_on_and_marks_the_request() -> None:
    tally = chat_tally()
    (step,) = feed(tally, event({"error": {"message": "engine died", "type": "server_error"}}))
    assert step.pass_on and tally.tally.error == "upstream_stream_error"


def test_a_stream_without_its_end_or_with_half_an_event_left_was_cut_off() -> None:
    tally = chat_tally()
    feed(tally, chunk("w0 "))
    assert tally.cut_off(b"")
    feed(tally, b"data: [DONE]\n\n")
    assert not tally.cut_off(b"")
    assert tally.cut_off(b'data: {"choi')


@given(
    texts=st.lists(st.text(min_size=0, max_size=40), max_size=30),
    reported=st.integers(min_value=0, max_value=500),
)
def test_the_record_is_the_upstreams_count_and_the_meter_is_told_no_less(
    texts: list[str], reported: int
) -> None:
    """Whatever the deltas: the request is recorded with the upstream's own count (the text
    count when it reports none), and the meter has been told at least that many tokens."""
    from proxy.tokens import delta_tokens

    by_text = sum(delta_tokens(t) for t in texts)
    tally = chat_tally()
    steps = feed(tally, *(chunk(t) for t in texts), usage_chunk(1, reported))
    told = sum(s.new_tokens for s in steps)
    assert tally.tally.completion_tokens == (reported or by_text)
    assert told == max(by_text, reported)


# ---- the Responses and Messages APIs' typed events ----------------------------------------


def named(kind: str, **payload: Any) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **payload})


def test_a_responses_stream_counts_text_deltas_and_holds_response_completed() -> None:
    tally = StreamTally(ENDPOINTS["responses"], Tally())
    usage = {
        "input_tokens": 9,
        "output_tokens": 3,
        "output_tokens_details": {"reasoning_tokens": 1},
    }
    steps = feed(
        tally,
        named("response.created", response={"id": "resp_1", "model": "m-2024"}) + b"\n\n",
        named("response.output_text.delta", delta="Hello") + b"\n\n",
        named("response.function_call_arguments.delta", delta='{"city": "Seoul"}') + b"\n\n",
        named(
            "response.completed", response={"id": "resp_1", "status": "completed", "usage": usage}
        )
        + b"\n\n",
    )
    assert [s.pass_on for s in steps] == [True, True, True, False]
    assert [s.new_tokens for s in steps] == [0, 1, 6, 0]  # usage (3) is below what was counted
    assert tally.tally.response_id == "resp_1" and tally.tally.response_model == "m-2024"
    assert (tally.tally.prompt_tokens, tally.tally.completion_tokens) == (9, 3)  # upstream's
    assert tally.tally.usage == usage and tally.tally.finish_reasons == ["completed"]
    assert not tally.cut_off(b"")


def test_a_responses_stream_without_its_final_event_was_cut_off() -> None:
    tally = StreamTally(ENDPOINTS["responses"], Tally())
    feed(tally, named("response.output_text.delta", delta="Hello") + b"\n\n")
    assert tally.cut_off(b"")


def test_a_messages_stream_takes_usage_from_message_start_and_message_delta() -> None:
    tally = StreamTally(ENDPOINTS["messages"], Tally())
    start = {"id": "msg_1", "model": "m-2024", "usage": {"input_tokens": 12, "output_tokens": 1}}
    text = {"type": "text_delta", "text": "Hello there, friend"}
    steps = feed(
        tally,
        named("message_start", message=start) + b"\n\n",
        named("ping") + b"\n\n",
        named("content_block_delta", index=0, delta=text) + b"\n\n",
        named("message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": 9})
        + b"\n\n",
        named("message_stop") + b"\n\n",
        b"data: [DONE]\n\n",
    )
    assert [s.pass_on for s in steps] == [True, True, True, False, False, False]
    # 1 from message_start's usage, 5 by text (4 units, 19 characters), 3 more from
    # message_delta's.
    assert [s.new_tokens for s in steps] == [1, 0, 5, 3, 0, 0]
    assert (tally.tally.prompt_tokens, tally.tally.completion_tokens) == (12, 9)
    assert tally.tally.finish_reasons == ["end_turn"]
    assert [h.payload["type"] for h in tally.held] == ["message_delta", "message_stop"]
    assert tally.done and not tally.cut_off(b"")
