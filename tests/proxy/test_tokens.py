"""Prompt tokens by the upstream's own tokenizer, in the request and answer shapes of vLLM's
`/tokenize`, llama.cpp's server `/tokenize` and llama-cpp-python's `/extras/tokenize`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from proxy.tokens import PromptTokenizer, delta_tokens
from proxy.transport import Timeouts, UpstreamClient
from tests.support.servers import ServerThread

TEXT = "the quick brown fox jumps"  # 5 tokens on every server below: one per word


@asynccontextmanager
async def upstream_client() -> AsyncIterator[UpstreamClient]:
    """The client an upstream's tokenizer is asked with (no base URL of its own here: the
    tokenizer URLs are absolute)."""
    client = UpstreamClient(
        "http://127.0.0.1:9",
        headers={},
        timeouts=Timeouts(connect_s=2.0, read_s=2.0),
        max_connections=4,
        keepalive_expiry_s=5.0,
    )
    try:
        yield client
    finally:
        await client.aclose()


def token_ids(text: str) -> list[int]:
    return list(range(len(text.split())))


async def vllm(request: Request) -> JSONResponse:
    """vLLM's `POST /tokenize`: {"model", "prompt"} → {"count", "max_model_len", "tokens"};
    a body without `prompt` fails validation (400)."""
    body = await request.json()
    if not isinstance(body.get("prompt"), str):
        return JSONResponse({"error": {"message": "prompt: Field required"}}, status_code=400)
    ids = token_ids(body["prompt"])
    return JSONResponse({"count": len(ids), "max_model_len": 8192, "tokens": ids})


async def llama_cpp(request: Request) -> JSONResponse:
    """llama.cpp's server `POST /tokenize`: {"content"} → {"tokens"}; without `content` it
    answers 200 with no tokens at all."""
    body = await request.json()
    content = body.get("content")
    return JSONResponse({"tokens": token_ids(content) if isinstance(content, str) else []})


async def llama_cpp_python(request: Request) -> JSONResponse:
    """llama-cpp-python's `POST /extras/tokenize`: {"input", "model"} → {"tokens"}."""
    body = await request.json()
    if not isinstance(body.get("input"), str):
        return JSONResponse({"detail": "input: Field required"}, status_code=422)
    return JSONResponse({"tokens": token_ids(body["input"])})


@pytest.fixture(scope="module")
def tokenizers() -> Iterator[str]:
    app = Starlette(
        routes=[
            Route("/vllm/tokenize", vllm, methods=["POST"]),
            Route("/llama/tokenize", llama_cpp, methods=["POST"]),
            Route("/extras/tokenize", llama_cpp_python, methods=["POST"]),
        ]
    )
    with ServerThread(app) as server:
        yield server.url


@pytest.mark.parametrize(
    ("path", "shape"),
    [
        ("/vllm/tokenize", "auto"),
        ("/llama/tokenize", "auto"),
        ("/extras/tokenize", "auto"),
        ("/vllm/tokenize", "vllm"),
        ("/llama/tokenize", "llama.cpp"),
        ("/extras/tokenize", "llama-cpp-python"),
    ],
)
async def test_each_servers_tokenizer_counts_the_prompt(
    tokenizers: str, path: str, shape: Any
) -> None:
    async with upstream_client() as client:
        tokenizer = PromptTokenizer(client, tokenizers + path, shape)
        assert await tokenizer.count("m", TEXT) == (5, "tokenizer")
        assert await tokenizer.count("m", TEXT + " again") == (6, "tokenizer")


async def test_a_shape_the_server_does_not_speak_falls_back_to_the_rule_of_thumb(
    tokenizers: str,
) -> None:
    async with upstream_client() as client:
        # llama.cpp's server given vLLM's shape says "no tokens": not taken for a count.
        tokenizer = PromptTokenizer(client, tokenizers + "/llama/tokenize", "vllm")
        assert await tokenizer.count("m", TEXT) == (6, "approximate")  # 25 characters / 4


async def test_an_unreachable_tokenizer_falls_back_to_the_rule_of_thumb() -> None:
    async with upstream_client() as client:
        tokenizer = PromptTokenizer(client, "http://127.0.0.1:9/tokenize", "auto")
        assert await tokenizer.count("m", TEXT) == (6, "approximate")


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("", 0),
        (" hello", 1),  # one word piece, as llama.cpp streams it: one token, not two
        ("understanding", 1),
        (".", 1),
        (" the quick brown fox jumps", 6),  # several words in one chunk: the rule of thumb
    ],
)
def test_a_streamed_delta_counts_one_token_per_word_piece(text: str, tokens: int) -> None:
    assert delta_tokens(text) == tokens
