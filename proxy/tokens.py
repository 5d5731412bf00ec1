"""Token counts when the upstream does not report them.

llama.cpp's server (and some others) stream no `usage`. Then Footprint counts output tokens
from the chunks it relays (one content-bearing chunk is one token on these servers) and
prompt tokens with the upstream's own tokenizer where one is configured (`tokenize_url`,
e.g. llama.cpp's `/extras/tokenize`); failing that, with a characters-per-token rule of
thumb. Either way the record says the tokens were counted by Footprint.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import httpx
import orjson

log = logging.getLogger("footprint.tokens")

# English text runs about 4 characters per token with BPE tokenizers (OpenAI's tokenizer
# guide: "one token generally corresponds to ~4 characters of text").
CHARS_PER_TOKEN = 4.0


def prompt_text(body: Mapping[str, Any]) -> str:
    """The text a request sends as its prompt, whatever the endpoint."""
    parts: list[str] = []
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts.extend(
                    str(item.get("text", ""))
                    for item in content
                    if isinstance(item, dict) and item.get("type") == "text"
                )
    for key in ("prompt", "input"):
        value = body.get(key)
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, list):
            parts.extend(v for v in value if isinstance(v, str))
    return "\n".join(parts)


def approx_tokens(text: str) -> int:
    if not text:
        return 0
    return max(1, round(len(text) / CHARS_PER_TOKEN))


async def count_prompt_tokens(
    client: httpx.AsyncClient, tokenize_url: str, model: str, text: str
) -> tuple[int, str]:
    """Prompt tokens by the upstream's tokenizer, else by rule of thumb; and which it was."""
    if tokenize_url:
        try:
            response = await client.post(
                tokenize_url, json={"input": text, "model": model}, timeout=2.0
            )
            tokens = orjson.loads(response.content).get("tokens")
            if response.status_code == 200 and isinstance(tokens, list):
                return len(tokens), "tokenizer"
        except (httpx.HTTPError, orjson.JSONDecodeError, AttributeError) as exc:
            log.warning("tokenize at %s failed (%s); approximating", tokenize_url, exc)
    return approx_tokens(text), "approximate"


def chunk_output_tokens(chunk: Mapping[str, Any]) -> int:
    """Output tokens a streamed chunk carries: one per choice with new text."""
    count = 0
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        return 0
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        if isinstance(delta, dict):
            if delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls"):
                count += 1
        elif choice.get("text"):
            count += 1
    return count
