"""End to end: the official openai SDK → Footprint → a real llama.cpp server (Gemma 3 270M)."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import openai
import pytest

from proxy.localmodel import MODEL_ALIAS
from tests.support.servers import ServerThread

pytestmark = pytest.mark.llama

PROMPT = [{"role": "user", "content": "Name three colours of the sea."}]


def sync_client(proxy: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="none", max_retries=0)


def test_non_streaming_chat_through_proxy(llama_proxy: ServerThread, llama_server: str) -> None:
    raw = sync_client(llama_proxy).chat.completions.with_raw_response.create(
        model=MODEL_ALIAS, messages=PROMPT, max_tokens=16, temperature=0
    )
    answer = raw.parse()
    assert answer.choices[0].message.content
    assert raw.headers["x-request-id"]
    assert raw.headers["x-footprint-method"] == "estimated"
    assert float(raw.headers["x-footprint-energy-j"]) > 0
    # Same answer and usage as asking the model server directly (temperature 0).
    direct = httpx.post(
        f"{llama_server}/v1/chat/completions",
        json={"model": MODEL_ALIAS, "messages": PROMPT, "max_tokens": 16, "temperature": 0},
        timeout=60,
    ).json()
    assert answer.choices[0].message.content == direct["choices"][0]["message"]["content"]
    assert answer.usage is not None
    assert answer.usage.prompt_tokens == direct["usage"]["prompt_tokens"]
    assert answer.usage.completion_tokens == direct["usage"]["completion_tokens"]


def test_streaming_chat_arrives_incrementally_with_counted_usage(
    llama_proxy: ServerThread, llama_server: str
) -> None:
    stream = sync_client(llama_proxy).chat.completions.create(
        model=MODEL_ALIAS,
        messages=PROMPT,
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    arrivals: list[float] = []
    text = []
    chunks = []
    for chunk in stream:
        chunks.append(chunk)
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic())
            text.append(chunk.choices[0].delta.content)
    assert len(arrivals) >= 5
    # Tokens come at the model's pace (~25-30 tokens/s here), not all at once.
    assert arrivals[-1] - arrivals[0] > 0.05
    final = chunks[-1]
    assert final.usage is not None
    # llama.cpp streams no usage: Footprint counted one token per chunk and asked the
    # server's tokenizer for the prompt; compare with the server's own non-streamed usage.
    direct = httpx.post(
        f"{llama_server}/v1/chat/completions",
        json={"model": MODEL_ALIAS, "messages": PROMPT, "max_tokens": 24, "temperature": 0},
        timeout=60,
    ).json()
    assert "".join(text) == direct["choices"][0]["message"]["content"]
    assert final.usage.completion_tokens == direct["usage"]["completion_tokens"]
    footprint = final.model_extra["footprint"]  # type: ignore[index]
    assert footprint["tokens_counted"] is True
    assert footprint["completion_tokens"] == final.usage.completion_tokens
    # The server's tokenizer counts the raw prompt text, not the chat template around it.
    assert 0 < final.usage.prompt_tokens <= direct["usage"]["prompt_tokens"]


async def test_async_client_streaming_and_not(llama_proxy: ServerThread) -> None:
    client = openai.AsyncOpenAI(base_url=f"{llama_proxy.url}/v1", api_key="none", max_retries=0)
    answer = await client.chat.completions.create(
        model=MODEL_ALIAS, messages=PROMPT, max_tokens=8, temperature=0
    )
    assert answer.choices[0].message.content
    assert answer.model_extra["footprint"]["method"] == "estimated"  # type: ignore[index]
    stream = await client.chat.completions.create(
        model=MODEL_ALIAS, messages=PROMPT, max_tokens=8, temperature=0, stream=True
    )
    pieces = [c.choices[0].delta.content async for c in stream if c.choices]
    assert "".join(p or "" for p in pieces)
    await client.close()


def test_models_lists_the_local_model(llama_proxy: ServerThread) -> None:
    assert MODEL_ALIAS in {m.id for m in sync_client(llama_proxy).models.list()}


def test_demo_command_runs_once(tmp_path: object) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "demo", "--once", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=str(tmp_path),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "x-footprint-method: estimated" in result.stdout
    assert "x-footprint-co2e-g:" in result.stdout
    assert "answer :" in result.stdout
