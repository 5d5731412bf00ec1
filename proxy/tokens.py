"""Token counts when the upstream does not report them.

llama.cpp's server (and some others) stream no `usage`. Then Footprint counts output tokens
from the chunks it relays (one content-bearing chunk is one token on these servers) and
prompt tokens with the upstream's own tokenizer where one is configured (`tokenize_url`:
vLLM's `/tokenize`, llama.cpp's server `/tokenize`, llama-cpp-python's `/extras/tokenize`);
failing that, with a characters-per-token rule of thumb. Either way the record says the
tokens were counted by Footprint.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any, Literal

import orjson

from proxy.transport import UpstreamClient, UpstreamFailure

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


# A word (letters, digits) or a run of punctuation: what one BPE token most often is.
_UNIT = re.compile(r"\w+|[^\w\s]+")


def delta_tokens(text: str) -> int:
    """Output tokens in one streamed delta's text. Servers that stream a token per chunk
    (llama.cpp's, vLLM by default) send one word piece or punctuation run per chunk, which
    is one token however long it is; a chunk carrying several (batched or speculative
    decoding) has several units: then the larger of its units and the rule of thumb."""
    if not text:
        return 0
    units = len(_UNIT.findall(text))
    if units <= 1:
        return 1
    return max(units, approx_tokens(text))


def approx_tokens(text: str) -> int:
    if not text:
        return 0
    return max(1, round(len(text) / CHARS_PER_TOKEN))


TokenizeShape = Literal["auto", "vllm", "llama.cpp", "llama-cpp-python"]


def _request_body(shape: str, model: str, text: str) -> dict[str, str]:
    """What each server's tokenize endpoint takes."""
    if shape == "vllm":  # vLLM `POST /tokenize` (TokenizeCompletionRequest)
        return {"model": model, "prompt": text}
    if shape == "llama.cpp":  # llama.cpp's server `POST /tokenize`
        return {"content": text}
    return {"input": text, "model": model}  # llama-cpp-python `POST /extras/tokenize`


def _read_count(answer: object, text: str) -> int | None:
    """`count` (vLLM) or the length of `tokens` (all three); None for an answer that is not
    a count: no tokens for a text that has some is llama.cpp's server given a body without
    its `content` field."""
    if not isinstance(answer, dict):
        return None
    count = answer.get("count")
    if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
        return count
    tokens = answer.get("tokens")
    if not isinstance(tokens, list) or (text and not tokens):
        return None
    return len(tokens)


class PromptTokenizer:
    """Prompt tokens by an upstream's own tokenizer at `url`, else by the rule of thumb.

    `shape` says which server's request shape to send; `auto` takes llama-cpp-python's for a
    URL ending in `/extras/tokenize`, and otherwise tries vLLM's, then llama.cpp's, and keeps
    to the first that gives a count."""

    def __init__(self, client: UpstreamClient, url: str, shape: TokenizeShape = "auto") -> None:
        self._client = client
        self._url = url
        if shape == "auto" and url.rstrip("/").endswith("/extras/tokenize"):
            shape = "llama-cpp-python"
        self._shapes: tuple[str, ...] = ("vllm", "llama.cpp") if shape == "auto" else (shape,)

    async def count(self, model: str, text: str) -> tuple[int, str]:
        """(tokens, "tokenizer") or, when no tokenizer answers, (estimate, "approximate")."""
        if self._url:
            for shape in self._shapes:
                counted = await self._ask(shape, model, text)
                if counted is not None:
                    self._shapes = (shape,)  # this server's shape, from now on
                    return counted, "tokenizer"
        return approx_tokens(text), "approximate"

    async def _ask(self, shape: str, model: str, text: str) -> int | None:
        try:
            request = self._client.request(
                "POST",
                self._url,
                headers={"content-type": "application/json"},
                content=orjson.dumps(_request_body(shape, model, text)),
                timeout_s=2.0,
            )
            response = await self._client.send(request)
            content = await response.read()
            if response.status_code != 200:
                return None
            return _read_count(orjson.loads(content), text)
        except (UpstreamFailure, orjson.JSONDecodeError) as exc:
            log.warning("tokenize at %s failed (%s); approximating", self._url, exc)
            return None
