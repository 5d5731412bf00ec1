"""The endpoint table: one entry per relayed endpoint, read by every step of the relay.

Adding an endpoint is one entry here (with its readers in a family module) plus its route
line in `proxy/routes/openai.py` and its tests.
"""

from __future__ import annotations

from proxy.relay import chat, messages, responses
from proxy.relay.facts import Endpoint
from proxy.tokens import prompt_text

ENDPOINTS: dict[str, Endpoint] = {
    e.name: e
    for e in (
        Endpoint(
            name="chat.completions",
            route="/v1/chat/completions",
            path="/chat/completions",
            operation="chat",
            check=chat.check_chat,
            prompt_text=prompt_text,
            read_answer=chat.read_answer,
            read_event=chat.read_chunk,
            prepare_stream=chat.prepare_stream,
            close_stream=chat.closer("chat.completion.chunk"),
            errors=chat.OPENAI_ERRORS,
            cap_fields=("max_completion_tokens", "max_tokens"),
        ),
        Endpoint(
            name="completions",
            route="/v1/completions",
            path="/completions",
            operation="text_completion",
            check=chat.check_completions,
            prompt_text=prompt_text,
            read_answer=chat.read_answer,
            read_event=chat.read_chunk,
            prepare_stream=chat.prepare_stream,
            close_stream=chat.closer("text_completion"),
            errors=chat.OPENAI_ERRORS,
            cap_fields=("max_completion_tokens", "max_tokens"),
        ),
        Endpoint(
            name="embeddings",
            route="/v1/embeddings",
            path="/embeddings",
            operation="embeddings",
            check=chat.check_embeddings,
            prompt_text=prompt_text,
            read_answer=chat.read_embeddings,
            read_event=None,
            prepare_stream=chat.no_stream,
            close_stream=chat.closer("embedding"),
            errors=chat.OPENAI_ERRORS,
            generates=False,
        ),
        Endpoint(
            name="responses",
            route="/v1/responses",
            path="/responses",
            operation="chat",
            check=responses.check,
            prompt_text=responses.prompt_text,
            read_answer=responses.read_answer,
            read_event=responses.read_event,
            prepare_stream=responses.prepare_stream,
            close_stream=responses.close,
            errors=responses.ERRORS,
            cap_fields=("max_output_tokens",),
        ),
        Endpoint(
            name="messages",
            route="/v1/messages",
            path="/messages",
            operation="chat",
            check=messages.check,
            prompt_text=messages.prompt_text,
            read_answer=messages.read_answer,
            read_event=messages.read_event,
            prepare_stream=messages.prepare_stream,
            close_stream=messages.close,
            errors=messages.ERRORS,
            cap_fields=("max_tokens",),
            credential=messages.credential,
            forwarded_headers=("anthropic-version", "anthropic-beta"),
        ),
    )
}
