"""OpenAI's Chat Completions, legacy Completions and Embeddings: their checks, how usage and
tokens are read from their answers and stream chunks, and how their streams close."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from proxy import sse
from proxy.errors import ProxyError
from proxy.relay import checks
from proxy.relay.attach import event_with_footprint
from proxy.relay.facts import AnswerFacts, Body, ErrorShape, EventFacts, StreamEnd, TokenUsage
from proxy.tokens import approx_tokens, delta_tokens

OPENAI_ERRORS = ErrorShape(body=ProxyError.body, event=ProxyError.sse_event, last=sse.DONE_EVENT)

_COUNTS = ("max_tokens", "max_completion_tokens", "n", "best_of")


# ---- checks --------------------------------------------------------------------------------


def check_chat(body: Body) -> None:
    checks.check_objects(body, "messages", "message")
    checks.check_stream_flags(body)
    checks.check_counts(body, *_COUNTS)


def check_completions(body: Body) -> None:
    checks.check_text_or_list(body, "prompt")
    checks.check_stream_flags(body)
    checks.check_counts(body, *_COUNTS)


def check_embeddings(body: Body) -> None:
    checks.check_text_or_list(body, "input")
    checks.check_stream_flags(body)
    checks.check_counts(body, *_COUNTS)


# ---- usage and tokens ----------------------------------------------------------------------


def count(value: object) -> int | None:
    """A token count as an upstream reports it, or None when it is not one (or more than the
    ledger's 32-bit column holds: counted by the proxy instead)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= checks.MAX_COUNT:
        return value
    return None


def read_usage(usage: object, prompt_key: str, completion_key: str) -> TokenUsage | None:
    """A usage object (any API's spelling of its two counts), or None when there is none."""
    if not isinstance(usage, dict) or not usage:
        return None
    return TokenUsage(count(usage.get(prompt_key)), count(usage.get(completion_key)), usage)


def _model(payload: Body) -> str | None:
    model = payload.get("model")
    return model if isinstance(model, str) else None


def _finish_reasons(payload: Body) -> tuple[str, ...]:
    choices = payload.get("choices")
    if not isinstance(choices, list):
        return ()
    return tuple(
        choice["finish_reason"]
        for choice in choices
        if isinstance(choice, dict) and isinstance(choice.get("finish_reason"), str)
    )


def _choice_text(choice: dict[str, Any]) -> str:
    message = choice.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return content
    text = choice.get("text")
    return text if isinstance(text, str) else ""


def read_answer(answer: Body) -> AnswerFacts:
    choices = answer.get("choices")
    text = "".join(
        _choice_text(c)
        for c in (choices if isinstance(choices, list) else [])
        if isinstance(c, dict)
    )
    return AnswerFacts(
        usage=read_usage(answer.get("usage"), "prompt_tokens", "completion_tokens"),
        output_tokens=approx_tokens(text),
        model=_model(answer),
        finish_reasons=_finish_reasons(answer),
    )


def read_embeddings(answer: Body) -> AnswerFacts:
    return AnswerFacts(
        usage=read_usage(answer.get("usage"), "prompt_tokens", "completion_tokens"),
        output_tokens=0,
        model=_model(answer),
        finish_reasons=(),
    )


def _delta_tokens(choice: dict[str, Any]) -> int:
    """Output tokens in one streamed choice (`delta_tokens` of its new text), and at least
    one for a choice that brought anything (a tool call's first delta carries only a name)."""
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        text = choice.get("text")
        return delta_tokens(text) if isinstance(text, str) else 0
    parts = [delta.get("content"), delta.get("reasoning_content"), delta.get("reasoning")]
    for call in delta.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            parts.append(function.get("arguments"))
    text = "".join(p for p in parts if isinstance(p, str))
    return max(delta_tokens(text), 1 if delta.get("tool_calls") else 0)


def read_chunk(chunk: Body) -> EventFacts:
    """One Chat Completions or Completions stream chunk."""
    choices = chunk.get("choices")
    if "error" in chunk and choices is None:
        return EventFacts(error=True)
    usage = read_usage(chunk.get("usage"), "prompt_tokens", "completion_tokens")
    tokens = sum(_delta_tokens(c) for c in choices or () if isinstance(c, dict))
    return EventFacts(
        text_tokens=tokens,
        usage=usage,
        model=_model(chunk),
        finish_reasons=_finish_reasons(chunk),
        # The usage-only chunk: held until the footprint can be added to it.
        hold=usage is not None and not choices,
    )


# ---- streams -------------------------------------------------------------------------------


def prepare_stream(body: dict[str, Any]) -> bool:
    """Always ask the upstream for usage; say whether the client asked for it itself."""
    options = body.get("stream_options")
    wanted = isinstance(options, dict) and bool(options.get("include_usage"))
    body["stream_options"] = {**(options or {}), "include_usage": True}
    return wanted


def no_stream(body: dict[str, Any]) -> bool:
    return False


def closer(final_object: str) -> Callable[[StreamEnd], list[bytes]]:
    """The closing events of a Chat Completions (or Completions) stream: an error event if
    it was cut off; if the client asked for usage, the upstream's usage chunk (its usage
    object whole) with the footprint added, or one made from Footprint's count when the
    upstream sent none; the `: footprint` comment; `[DONE]`."""

    def close(end: StreamEnd) -> list[bytes]:
        tail: list[bytes] = []
        if end.broke_off is not None:
            tail.append(end.broke_off.sse_event())
        if end.client_wants_usage and end.held:
            tail.append(event_with_footprint(end.held[-1], end.footprint))
        elif end.client_wants_usage:
            counted = {
                "prompt_tokens": end.prompt_tokens,
                "completion_tokens": end.completion_tokens,
                "total_tokens": end.prompt_tokens + end.completion_tokens,
            }
            final = {
                "id": end.request_id,
                "object": final_object,
                "created": end.created_s,
                "model": end.model,
                "choices": [],
                "usage": counted,
                "footprint": end.footprint,
            }
            tail.append(sse.data_event(final))
        tail.append(sse.comment_event("footprint", end.footprint))
        tail.append(sse.DONE_EVENT)
        return tail

    return close
