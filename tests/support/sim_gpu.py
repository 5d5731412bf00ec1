"""A simulated GPU behind an OpenAI-compatible model server, whose true energy per request is
known (issue 10's test bench).

`SimGpu(engine).app` serves:

- `POST /v1/chat/completions`, streaming or not. The last user message says how to answer:
  `sim tokens=60 rate=20 chunk=5` (output tokens, tokens per second, tokens per chunk; a
  stream's first chunk comes after `ttft` seconds, default 0.03, then one chunk every
  chunk/rate). Each token's text is `tok ` (four characters: one token by the rule of thumb a
  proxy applies to delta text). A stream sends `usage` in every chunk when asked
  (`stream_options.continuous_usage_stats`, as vLLM does) and a final usage chunk with
  `include_usage`.
- `GET /metrics`: DCGM's `DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION` (mJ) and vLLM's
  `vllm:prompt_tokens_total`, `vllm:generation_tokens_total`, `vllm:num_requests_running`, in
  the real text format (`EngineSim.metrics_text`).
- `GET /truth`: every request's true energy so far, the idle energy and the counter's total.

Tokens are produced on an absolute schedule (a late wake-up catches up), and the engine's
counters and the energy move when a token is produced, before it is sent, as in vLLM. The
request id is the `x-request-id` header (the proxy forwards its own; a client that bypasses the
proxy sends one itself).
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.support.engine_sim import EngineSim

CHARS_PER_TOKEN = 4
TOKEN_TEXT = "tok "
_PLAN = re.compile(r"(tokens|rate|chunk|ttft)=([0-9.]+)")


@dataclass(frozen=True)
class Answer:
    """How to answer one request (from `sim tokens=… rate=… chunk=… ttft=…`)."""

    tokens: int = 20
    rate: float = 20.0
    chunk: int = 1
    ttft_s: float = 0.03


def plan_of(text: str) -> Answer:
    """The answer plan a prompt asks for."""
    found = dict(_PLAN.findall(text))
    return Answer(
        tokens=int(float(found.get("tokens", 20))),
        rate=float(found.get("rate", 20.0)),
        chunk=max(1, int(float(found.get("chunk", 1)))),
        ttft_s=float(found.get("ttft", 0.03)),
    )


def prompt_of(body: dict[str, Any]) -> str:
    messages = body.get("messages") or []
    return "\n".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))


class SimGpu:
    """The model server on a simulated GPU (see the module docstring)."""

    def __init__(self, engine: EngineSim) -> None:
        self.engine = engine
        self._ids = itertools.count(1)
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/metrics", self._metrics, methods=["GET"]),
                Route("/truth", self._truth, methods=["GET"]),
            ]
        )

    async def _metrics(self, request: Request) -> Response:
        return PlainTextResponse(self.engine.metrics_text(), media_type="text/plain; version=0.0.4")

    async def _truth(self, request: Request) -> Response:
        truth, idle_j, total_j = self.engine.truth()
        return JSONResponse({"requests": truth, "idle_j": idle_j, "total_j": total_j})

    async def _chunks(self, request_id: str, plan: Answer) -> AsyncIterator[int]:
        """Produce the answer's chunks on schedule; yields each chunk's token count."""
        clock = self.engine.clock
        start_s = clock()
        produced = 0
        try:
            while produced < plan.tokens:
                count = min(plan.chunk, plan.tokens - produced)
                # the chunk leaves when its last token is made: ttft, then 1/rate per token
                due_s = start_s + plan.ttft_s + (produced + count - 1) / plan.rate
                delay_s = due_s - clock()
                if delay_s > 0:
                    await asyncio.sleep(delay_s)
                self.engine.token(request_id, count)
                produced += count
                yield count
        finally:
            self.engine.ended(request_id)

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        request_id = request.headers.get("x-request-id") or f"sim-{next(self._ids)}"
        text = prompt_of(body)
        prompt = max(1, round(len(text) / CHARS_PER_TOKEN))
        plan = plan_of(text)
        model = str(body.get("model", "sim"))
        self.engine.started(request_id, prompt)
        if not body.get("stream"):
            tokens = 0
            async for count in self._chunks(request_id, plan):
                tokens += count
            return JSONResponse(
                {
                    "id": request_id,
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": TOKEN_TEXT * tokens},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": _usage(prompt, tokens),
                }
            )
        options = body.get("stream_options") or {}
        return StreamingResponse(
            self._stream(request_id, model, prompt, plan, options),
            media_type="text/event-stream",
        )

    async def _stream(
        self, request_id: str, model: str, prompt: int, plan: Answer, options: dict[str, Any]
    ) -> AsyncIterator[bytes]:
        every = bool(options.get("continuous_usage_stats"))
        tokens = 0
        async for count in self._chunks(request_id, plan):
            tokens += count
            chunk: dict[str, Any] = {
                "id": request_id,
                "object": "chat.completion.chunk",
                "created": 0,
                "model": model,
                "choices": [
                    {"index": 0, "delta": {"content": TOKEN_TEXT * count}, "finish_reason": None}
                ],
            }
            if every:
                chunk["usage"] = _usage(prompt, tokens)
            yield b"data: " + orjson.dumps(chunk) + b"\n\n"
        last = {
            "id": request_id,
            "object": "chat.completion.chunk",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        }
        yield b"data: " + orjson.dumps(last) + b"\n\n"
        if options.get("include_usage"):
            usage = {**last, "choices": [], "usage": _usage(prompt, tokens)}
            yield b"data: " + orjson.dumps(usage) + b"\n\n"
        yield b"data: [DONE]\n\n"


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
