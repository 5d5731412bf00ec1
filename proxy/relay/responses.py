"""OpenAI's Responses API (`POST /v1/responses`): its checks, prompt, usage and tokens from a
whole response and from its typed stream events, and how its stream closes.

A stream is a series of named events (`event: response.output_text.delta` …) that ends with
`response.completed` (or `response.incomplete` / `response.failed`), whose `response` carries
the usage: `input_tokens`, `output_tokens` and their details. That last event is held back
until the meter has closed, and leaves with a `footprint` member in its `response`, which the
SDKs keep (`responses.stream(...).get_final_response().model_extra["footprint"]`).
"""

from __future__ import annotations

from typing import Any

import orjson

from proxy import sse
from proxy.errors import ProxyError
from proxy.relay import checks
from proxy.relay.chat import OPENAI_ERRORS, read_usage
from proxy.relay.facts import NOTHING, AnswerFacts, Body, EventFacts, Held, StreamEnd
from proxy.tokens import approx_tokens, delta_tokens

ERRORS = OPENAI_ERRORS  # a whole answer's errors are OpenAI's; in a stream, `error_event`

# Stream events whose `delta` is generated text (or tool-call arguments): tokens to count.
_DELTAS = frozenset(
    {
        "response.output_text.delta",
        "response.refusal.delta",
        "response.reasoning_text.delta",
        "response.reasoning_summary_text.delta",
        "response.function_call_arguments.delta",
        "response.custom_tool_call_input.delta",
    }
)
_STARTS = frozenset({"response.created", "response.in_progress"})
_ENDS = frozenset({"response.completed", "response.incomplete", "response.failed"})


def check(body: Body) -> None:
    checks.check_text_or_list(body, "input")
    checks.check_stream_flags(body)
    checks.check_optional(body, "store", bool, "a boolean")
    checks.check_optional(body, "previous_response_id", str, "a string")
    checks.check_optional(body, "instructions", str, "a string")
    checks.check_counts(body, "max_output_tokens")


def _content_text(content: object) -> list[str]:
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        return []
    return [
        part["text"]
        for part in content
        if isinstance(part, dict) and isinstance(part.get("text"), str)
    ]


def prompt_text(body: Body) -> str:
    """The instructions and every input item's text (messages, tool outputs)."""
    parts: list[str] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        parts.append(instructions)
    items = body.get("input")
    for item in [items] if isinstance(items, str) else items if isinstance(items, list) else []:
        if isinstance(item, str):
            parts.append(item)
        elif isinstance(item, dict):
            parts.extend(_content_text(item.get("content")))
            output = item.get("output")
            if isinstance(output, str):
                parts.append(output)
    return "\n".join(parts)


def _output_text(response: Body) -> str:
    parts: list[str] = []
    for item in response.get("output") or ():
        if not isinstance(item, dict):
            continue
        parts.extend(_content_text(item.get("content")))
        arguments = item.get("arguments")
        if isinstance(arguments, str):
            parts.append(arguments)
    return "".join(parts)


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def read_answer(response: Body) -> AnswerFacts:
    status = _str(response.get("status"))
    return AnswerFacts(
        usage=read_usage(response.get("usage"), "input_tokens", "output_tokens"),
        output_tokens=approx_tokens(_output_text(response)),
        model=_str(response.get("model")),
        finish_reasons=(status,) if status else (),
        response_id=_str(response.get("id")),
    )


def read_event(event: Body) -> EventFacts:
    kind = event.get("type")
    if kind in _DELTAS:
        delta = event.get("delta")
        text = delta if isinstance(delta, str) else ""
        return EventFacts(text_tokens=delta_tokens(text))
    response = event.get("response")
    if kind in _STARTS and isinstance(response, dict):
        return EventFacts(model=_str(response.get("model")), response_id=_str(response.get("id")))
    if kind in _ENDS and isinstance(response, dict):
        whole = read_answer(response)
        return EventFacts(
            usage=whole.usage,
            model=whole.model,
            finish_reasons=whole.finish_reasons,
            response_id=whole.response_id,
            hold=True,
            terminal=True,
        )
    if kind == "error":
        return EventFacts(error=True)
    return NOTHING


def prepare_stream(body: dict[str, Any]) -> bool:
    """Nothing to ask: a Responses stream always ends with its usage."""
    return False


def error_event(error: ProxyError) -> bytes:
    """The proxy's error as a Responses stream `error` event."""
    payload = {"type": "error", "code": error.code, "message": error.message, "param": None}
    return sse.named_event("error", payload)


def _with_footprint(held: Held, footprint: object) -> bytes:
    payload = dict(held.payload)
    response = payload.get("response")
    if isinstance(response, dict):
        payload["response"] = {**response, "footprint": footprint}
    return sse.with_data(held.raw, orjson.dumps(payload))


def close(end: StreamEnd) -> list[bytes]:
    """An error event if the stream was cut off; the `: footprint` comment; the held final
    event with the footprint in its `response`; `[DONE]` if the upstream wrote one."""
    tail: list[bytes] = []
    if end.broke_off is not None:
        tail.append(error_event(end.broke_off))
    tail.append(sse.comment_event("footprint", end.footprint))
    tail.extend(_with_footprint(held, end.footprint) for held in end.held)
    if end.upstream_done:
        tail.append(sse.DONE_EVENT)
    return tail
