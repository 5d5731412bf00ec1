"""An OpenAI-speaking model server whose generation drives a simulated GPU.

The metering tests need a server whose work shows on a GPU energy counter. This one generates
its answers token by token, in real time, at a rate chosen per request, and tells the fake NVML
of `tests/meters/fake_pynvml.py` about every step: the request starting, its prompt prefilled
with the first output token, each output token, its end. So the fake's counters move with the
server's activity, and the fake's ground truth (`true_energy_j(request_id)`) refers to the same
request the proxy meters: the server takes the request id from the `x-request-id` header the
proxy forwards.

    fake = FakeNvml(idle_w=60, w_per_request=1, j_per_token=2, j_per_prompt_token=0.2)
    server = GpuUpstream(fake)
    server.plan("req-a", Generation(output_tokens=60, tokens_per_s=40))
    with ServerThread(server.app) as upstream: ...

Streaming answers carry one token of text per chunk (the proxy counts one output token per
content chunk) and, when asked, a final usage chunk. Non-streaming answers generate at the same
pace and answer once, with usage. Prompt tokens are counted at 4 characters per token, the rule
of thumb the proxy applies when it weighs a prefill (proxy/tokens.py), so the prefill the GPU
did is the prefill the proxy sees.

`Generation.at_token` runs callables right after the n-th output token (1-based) was produced:
the tests use it to inject NVML faults at a known point of a request.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.meters.fake_pynvml import FakeNvml

CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class Generation:
    """How the server generates one request's answer."""

    output_tokens: int = 30
    tokens_per_s: float = 30.0
    # output token number (1-based) -> called right after that token was produced
    at_token: Mapping[int, Callable[[], object]] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        """Time from the request's arrival to its last token."""
        return self.output_tokens / self.tokens_per_s


def prompt_tokens(body: Mapping[str, Any]) -> int:
    """Prompt tokens of a chat body: its message texts joined by newlines, 4 chars a token."""
    messages = body.get("messages") or []
    text = "\n".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
    return max(1, round(len(text) / CHARS_PER_TOKEN)) if text else 0


def token_text(index: int) -> str:
    """The text of output token `index` (0-based)."""
    return f"t{index} "


class GpuUpstream:
    """A chat-completions server on a simulated GPU (see the module docstring)."""

    def __init__(self, fake: FakeNvml, default: Generation | None = None) -> None:
        self.fake = fake
        self.default = default or Generation()
        self.generations: dict[str, Generation] = {}
        self.headers: dict[str, dict[str, str]] = {}  # request id -> headers it arrived with
        self.finished: set[str] = set()  # request ids whose last token was produced
        # request id -> (start, end) on the GPU, on the fake's clock
        self.spans_s: dict[str, tuple[float, float]] = {}
        self._ids = itertools.count(1)
        self.app = Starlette(routes=[Route("/v1/chat/completions", self._chat, methods=["POST"])])

    def plan(self, request_id: str, generation: Generation) -> None:
        """Generate the answer to request `request_id` this way (else `default`)."""
        self.generations[request_id] = generation

    async def _tokens(self, request_id: str, prompt: int, plan: Generation) -> AsyncIterator[int]:
        """Produce the output tokens on the fake GPU at the planned pace; yields each index."""
        self.fake.request_started(request_id)
        start_s = self.fake.clock()
        try:
            for index in range(plan.output_tokens):
                # An absolute schedule: a late wake-up catches up instead of slowing the rate.
                delay_s = start_s + (index + 1) / plan.tokens_per_s - self.fake.clock()
                if delay_s > 0:
                    await asyncio.sleep(delay_s)
                self.fake.token(request_id, 1, prompt=prompt if index == 0 else 0)
                hook = plan.at_token.get(index + 1)
                if hook is not None:
                    hook()
                yield index
            self.finished.add(request_id)
        finally:
            self.fake.request_ended(request_id)
            self.spans_s[request_id] = (start_s, self.fake.clock())

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        request_id = request.headers.get("x-request-id") or f"gpu-{next(self._ids)}"
        self.headers[request_id] = dict(request.headers)
        plan = self.generations.get(request_id, self.default)
        model = str(body.get("model", ""))
        prompt = prompt_tokens(body)
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": plan.output_tokens,
            "total_tokens": prompt + plan.output_tokens,
        }
        if not body.get("stream"):
            text = "".join([token_text(i) async for i in self._tokens(request_id, prompt, plan)])
            return JSONResponse(
                {
                    "id": request_id,
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
                    "usage": usage,
                }
            )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            payload = {
                "id": request_id,
                "object": "chat.completion.chunk",
                "created": 0,
                "model": model,
                "choices": choices,
                **extra,
            }
            return b"data: " + orjson.dumps(payload) + b"\n\n"

        async def events() -> AsyncIterator[bytes]:
            async for index in self._tokens(request_id, prompt, plan):
                delta = {"content": token_text(index)}
                yield event([{"index": 0, "delta": delta, "finish_reason": None}])
            yield event([{"index": 0, "delta": {}, "finish_reason": "stop"}])
            if include_usage:
                yield event([], usage=usage)
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")
