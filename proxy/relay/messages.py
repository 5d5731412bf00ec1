"""Anthropic's Messages API (`POST /v1/messages`), as vLLM and llama.cpp's server serve it:
the caller's key in `x-api-key` (or `Authorization`), `anthropic-version` passed on, usage from
`message_start` (input tokens) and `message_delta` (output tokens so far), and the proxy's own
errors in Anthropic's shape: `{"type": "error", "error": {"type": …, "message": …}}`.

In a stream the final `message_delta` (the usage) and `message_stop` are held back until the
meter has closed; the `message_delta` leaves with a `footprint` member (the SDKs pass that event
on as it came, extras kept), then the `: footprint` comment, then `message_stop`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proxy import sse
from proxy.errors import ProxyError
from proxy.relay import checks
from proxy.relay.attach import event_with_footprint
from proxy.relay.chat import read_usage
from proxy.relay.facts import (
    NOTHING,
    AnswerFacts,
    Body,
    ErrorShape,
    EventFacts,
    Held,
    StreamEnd,
)
from proxy.tokens import approx_tokens, delta_tokens

# HTTP status → Anthropic's error type (docs.anthropic.com, "Errors").
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


def error_body(error: ProxyError) -> dict[str, object]:
    kind = _ERROR_TYPES.get(error.status_code, "api_error")
    return {"type": "error", "error": {"type": kind, "message": error.message}}


def error_event(error: ProxyError) -> bytes:
    """`error` as the `error` event of a Messages stream."""
    return sse.named_event("error", error_body(error))


ERRORS = ErrorShape(body=error_body, event=error_event)


def credential(headers: Mapping[str, str]) -> str | None:
    """Anthropic's clients send the key in `x-api-key`; `Authorization: Bearer` works too."""
    key = headers.get("x-api-key")
    return f"Bearer {key}" if key else headers.get("authorization")


def check(body: Body) -> None:
    checks.check_objects(body, "messages", "message")
    checks.require(body, "max_tokens")
    checks.check_counts(body, "max_tokens")
    checks.check_optional(body, "system", str | list, "a string or an array")
    checks.check_optional(body, "stream", bool, "a boolean")


def _blocks_text(content: object) -> list[str]:
    """The text of a content field: a string, or text / tool-result blocks."""
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        return []
    parts: list[str] = []
    for block in content:
        if isinstance(block, dict):
            if isinstance(block.get("text"), str):
                parts.append(block["text"])
            parts.extend(_blocks_text(block.get("content")))  # tool_result blocks
    return parts


def prompt_text(body: Body) -> str:
    parts = _blocks_text(body.get("system"))
    for message in body.get("messages") or ():
        if isinstance(message, dict):
            parts.extend(_blocks_text(message.get("content")))
    return "\n".join(parts)


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def read_answer(message: Body) -> AnswerFacts:
    texts = _blocks_text(message.get("content"))
    for block in message.get("content") or ():
        if isinstance(block, dict) and block.get("type") == "tool_use":
            texts.append(str(block.get("input", "")))
    stop = _str(message.get("stop_reason"))
    return AnswerFacts(
        usage=read_usage(message.get("usage"), "input_tokens", "output_tokens"),
        output_tokens=approx_tokens("".join(texts)),
        model=_str(message.get("model")),
        finish_reasons=(stop,) if stop else (),
        response_id=None,
    )


def _delta_text(delta: object) -> str:
    if not isinstance(delta, dict):
        return ""
    for key in ("text", "partial_json", "thinking"):
        value = delta.get(key)
        if isinstance(value, str):
            return value
    return ""


def read_event(event: Body) -> EventFacts:
    kind = event.get("type")
    if kind == "content_block_delta":
        text = _delta_text(event.get("delta"))
        return EventFacts(text_tokens=delta_tokens(text))
    if kind == "message_start" and isinstance(event.get("message"), dict):
        message = event["message"]
        usage = read_usage(message.get("usage"), "input_tokens", "output_tokens")
        return EventFacts(usage=usage, model=_str(message.get("model")))
    if kind == "message_delta":
        delta = event.get("delta")
        stop = _str(delta.get("stop_reason")) if isinstance(delta, dict) else None
        usage = read_usage(event.get("usage"), "input_tokens", "output_tokens")
        return EventFacts(usage=usage, finish_reasons=(stop,) if stop else (), hold=True)
    if kind == "message_stop":
        return EventFacts(hold=True, terminal=True)
    if kind == "error":
        return EventFacts(error=True)
    return NOTHING


def prepare_stream(body: dict[str, Any]) -> bool:
    """Nothing to ask: a Messages stream always carries its usage."""
    return False


def _with_footprint_if_usage(held: Held, footprint: object) -> bytes:
    if held.payload.get("type") == "message_delta":
        return event_with_footprint(held, footprint)
    return held.raw


def close(end: StreamEnd) -> list[bytes]:
    """The held `message_delta` with the footprint; an error event if the stream was cut
    off; the `: footprint` comment; the held `message_stop`; `[DONE]` if the upstream wrote
    one (vLLM does)."""
    stops = [h for h in end.held if h.payload.get("type") == "message_stop"]
    tail = [
        _with_footprint_if_usage(h, end.footprint)
        for h in end.held
        if h.payload.get("type") != "message_stop"
    ]
    if end.broke_off is not None:
        tail.append(sse.named_event("error", error_body(end.broke_off)))
    tail.append(sse.comment_event("footprint", end.footprint))
    tail.extend(h.raw for h in stops)
    if end.upstream_done:
        tail.append(sse.DONE_EVENT)
    return tail
