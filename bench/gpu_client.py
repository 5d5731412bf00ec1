"""The load generator's side of bench/gpu_validate.py: one streamed chat request, prompts of a
given size, and what a simulated GPU is told about each request (nothing, for a real one)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from bench.gpu_analysis import RequestResult, parse_sse_line

_T0 = time.monotonic()


def say(message: str) -> None:
    """Progress on stdout, with seconds since the script started (the device run's log)."""
    print(f"[{time.monotonic() - _T0:6.1f} s] {message}", flush=True)


class Hooks:
    """What the driver tells a simulated GPU about its requests; nothing for a real one."""

    def marginal_truth_j(self, request_id: str) -> float | None:
        """The simulation's own marginal energy of a request; None on a real GPU."""
        return None

    def started(self, request_id: str) -> None: ...
    def token(self, request_id: str, prompt_tokens: int) -> None: ...
    def ended(self, request_id: str) -> None: ...


class FakeGpuHooks(Hooks):
    """Drives tests/meters/fake_pynvml.FakeNvml with the requests actually sent."""

    def __init__(self, fake: Any) -> None:
        self._fake = fake
        self._first: set[str] = set()

    def marginal_truth_j(self, request_id: str) -> float | None:
        return float(self._fake.dynamic_energy_j(request_id))

    def started(self, request_id: str) -> None:
        self._fake.request_started(request_id)

    def token(self, request_id: str, prompt_tokens: int) -> None:
        prompt = 0 if request_id in self._first else prompt_tokens
        self._first.add(request_id)
        self._fake.token(request_id, 1, prompt=prompt)

    def ended(self, request_id: str) -> None:
        self._fake.request_ended(request_id)


async def send_chat(
    client: Any,
    *,
    request_id: str,
    phase: str,
    prompt: str,
    max_tokens: int,
    hooks: Hooks,
    clock: Callable[[], float] = time.monotonic,
) -> RequestResult:
    """One streamed chat request on `client` (a proxy, or the workload itself for traffic
    that bypasses Footprint), with usage asked for."""
    result = RequestResult(request_id, phase, len(prompt), max_tokens)
    body = {
        "model": "random-llama-1b",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    hooks.started(request_id)
    result.start_s = clock()
    try:
        async with client.stream(
            "POST", "/v1/chat/completions", json=body, headers={"x-request-id": request_id}
        ) as response:
            result.status = response.status_code
            result.method_header = response.headers.get("x-footprint-method")
            if response.status_code != 200:
                result.error = (await response.aread()).decode(errors="replace")[:500]
            else:
                async for line in response.aiter_lines():
                    chunks_before = result.chunks
                    done = parse_sse_line(line, result, clock)
                    if result.chunks > chunks_before:
                        hooks.token(request_id, len(prompt) // 4)
                    if done:
                        break
    except Exception as exc:  # recorded in the report: one failed request must not end the run
        result.error = f"{type(exc).__name__}: {exc}"
    result.end_s = clock()
    hooks.ended(request_id)
    return result


def prompt_of(chars: int, seed: int) -> str:
    words = ["energy", "carbon", "water", "token", "batch", "tick", "share", "idle", "grid"]
    text = " ".join(words[(seed * 7 + i * 3) % len(words)] for i in range(chars // 5 + 1))
    return text[:chars]
