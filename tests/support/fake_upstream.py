"""A small OpenAI-speaking model server for tests, with failure modes chosen by model name.

Models:
- `echo`: answers at once; streams `words` chunks (default 8) with usage when asked.
- `nousage`: streams without a usage chunk even when asked (like llama.cpp's server).
- `slow`: waits `delay_s` (default 5) before answering.
- `garbage`: answers 200 with bytes that are not JSON (stream: not SSE either).
- `drop`: streams 3 chunks, then the connection dies mid-stream.
- `error500`: answers 500 with an OpenAI-shaped error body.
- `error400`: answers 400 with an OpenAI-shaped error body.
- `long`: streams a chunk every 50 ms for 30 s; records when it sees itself cancelled.
- `gzip`: answers gzip-compressed, whatever the request's `accept-encoding` says.
- `echoauth`: answers 401 with a body that echoes the request's headers (credentials too),
  as some gateways do.
- `huge`: answers 200 with a 3 MiB JSON object.
- `stall`: streams 2 chunks, then nothing for `delay_s`.

It also speaks the Responses and Messages APIs as vLLM does (`tests/support/fake_apis.py`).
"""

from __future__ import annotations

import asyncio
import gzip
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.support.fake_apis import UPSTREAM_HEADERS, MessagesApi, ResponsesApi


@dataclass
class UpstreamLog:
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    cancelled_at: dict[str, float] = field(default_factory=dict)
    raw: list[bytes] = field(default_factory=list)
    finished: set[str] = field(default_factory=set)


# What vLLM and OpenAI put in usage beyond the three counts, and headers OpenAI sends; one
# header Footprint owns, to show the proxy's own wins.
USAGE_DETAILS = {
    "prompt_tokens_details": {"cached_tokens": 1},
    "completion_tokens_details": {"reasoning_tokens": 2},
}
CHAT_HEADERS = {**UPSTREAM_HEADERS, "x-footprint-zone": "MARS"}


async def gzipped(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """A gzip stream, flushed after each chunk (as a compressing server or proxy sends it),
    whatever the client said it accepts."""
    packer = zlib.compressobj(wbits=31)
    async for chunk in chunks:
        yield packer.compress(chunk) + packer.flush(zlib.Z_SYNC_FLUSH)
    yield packer.flush()


def _chunk(rid: str, model: str, text: str | None, finish: str | None = None) -> bytes:
    delta = {"content": text} if text is not None else {}
    payload = {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def make_upstream(
    log: UpstreamLog | None = None,
    *,
    words: int = 8,
    delay_s: float = 5.0,
    chunk_interval_s: float = 0.0,
) -> Starlette:
    log = log if log is not None else UpstreamLog()

    async def chat(request: Request) -> Response:
        log.raw.append(await request.body())
        body = await request.json()
        log.requests.append(body)
        log.headers.append(dict(request.headers))
        model = body.get("model", "")
        rid = request.headers.get("x-request-id", "up-1")
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
        if model == "slow":
            await asyncio.sleep(delay_s)
        if model == "error500":
            return JSONResponse(
                {
                    "error": {
                        "message": "model crashed",
                        "type": "server_error",
                        "param": None,
                        "code": None,
                    }
                },
                status_code=500,
                headers={"retry-after": "7", "x-should-retry": "true"},
            )
        if model == "error400":
            return JSONResponse(
                {
                    "error": {
                        "message": "bad temperature",
                        "type": "invalid_request_error",
                        "param": "temperature",
                        "code": None,
                    }
                },
                status_code=400,
            )
        if model == "garbage":
            return Response(b"<html>definitely not json", media_type="application/json")
        if model == "echoauth":
            echoed = {"error": {"message": f"unauthorized: {dict(request.headers)}"}}
            return JSONResponse(
                echoed,
                status_code=401,
                headers={"www-authenticate": request.headers.get("authorization", "")},
            )
        if model == "huge" and not body.get("stream"):
            filler = "x" * (3 * 1024 * 1024)
            return JSONResponse({"id": rid, "object": "chat.completion", "filler": filler})
        if not body.get("stream"):
            text = " ".join(f"w{i}" for i in range(words))
            answer = JSONResponse(
                {
                    "id": rid,
                    "object": "chat.completion",
                    "created": 0,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": words,
                        "total_tokens": prompt_tokens + words,
                        **USAGE_DETAILS,
                    },
                },
                headers=CHAT_HEADERS,
            )
            if model == "gzip":
                return Response(
                    gzip.compress(answer.body),
                    media_type="application/json",
                    headers={**CHAT_HEADERS, "content-encoding": "gzip"},
                )
            return answer
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def events() -> AsyncIterator[bytes]:
            try:
                count = 10**6 if model == "long" else (3 if model == "drop" else words)
                for i in range(count):
                    if model == "long":
                        await asyncio.sleep(0.05)
                    elif model == "stall" and i == 2:
                        await asyncio.sleep(delay_s)
                    elif chunk_interval_s:
                        await asyncio.sleep(chunk_interval_s)
                    yield _chunk(rid, model, f"w{i} ")
                if model == "drop":
                    raise RuntimeError("upstream died mid-stream")
                yield _chunk(rid, model, None, "stop")
                if include_usage and model != "nousage":
                    usage = {
                        "id": rid,
                        "object": "chat.completion.chunk",
                        "created": 0,
                        "model": model,
                        "choices": [],
                        "usage": {
                            "prompt_tokens": prompt_tokens,
                            "completion_tokens": count,
                            "total_tokens": prompt_tokens + count,
                            **USAGE_DETAILS,
                        },
                    }
                    yield b"data: " + orjson.dumps(usage) + b"\n\n"
                yield b"data: [DONE]\n\n"
                log.finished.add(rid)
            except (asyncio.CancelledError, GeneratorExit):
                log.cancelled_at[rid] = time.monotonic()
                raise

        if model == "garbage-stream":
            return Response(b"not an event stream", media_type="text/event-stream")
        if model == "gzip":
            return StreamingResponse(
                gzipped(events()),
                media_type="text/event-stream",
                headers={**CHAT_HEADERS, "content-encoding": "gzip"},
            )
        return StreamingResponse(events(), media_type="text/event-stream", headers=CHAT_HEADERS)

    async def embeddings(request: Request) -> Response:
        body = await request.json()
        log.requests.append(body)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        tokens = sum(len(str(i).split()) for i in inputs)
        return JSONResponse(
            {
                "object": "list",
                "model": body["model"],
                "data": [
                    {"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}
                    for i in range(len(inputs))
                ],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def completions(request: Request) -> Response:
        body = await request.json()
        log.requests.append(body)
        return JSONResponse(
            {
                "id": "cmpl-1",
                "object": "text_completion",
                "created": 0,
                "model": body["model"],
                "choices": [{"index": 0, "text": " once upon", "finish_reason": "length"}],
                "usage": {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4},
            }
        )

    async def models(request: Request) -> Response:
        names = ["echo", "nousage", "slow", "garbage", "drop", "error500", "error400", "long"]
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": n, "object": "model", "owned_by": "test"} for n in names],
            }
        )

    responses = ResponsesApi(log, words)
    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            *responses.routes(),
            *MessagesApi(log, words).routes(),
        ]
    )
    app.state.log = log
    app.state.responses = responses
    return app
