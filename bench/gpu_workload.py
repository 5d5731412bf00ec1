"""A small OpenAI-chat-compatible model server that really loads a GPU, for gpu_validate.py.

The device machine has PyTorch but no model weights and no internet, so this builds a
Llama-shaped decoder (RMSNorm, rotary positions, grouped-query attention, SwiGLU, tied
embeddings) from a config with random weights and serves it. Its answers are gibberish; the work
the GPU does per token is what a real model of that size does.

Serving is continuous batching in the manner of vLLM, kept small: one engine thread owns the
model and a KV cache of `max_batch` slots. Each step it admits waiting requests into free slots
(prefilling each one on its own), then runs ONE batched decode forward for every request in a
slot, so concurrent requests share the GPU step by step. Generation always runs to `max_tokens`
(random weights know no end-of-sequence).

HTTP: `POST /v1/chat/completions` (streaming as SSE, one token per chunk, and
`stream_options.include_usage`; or one JSON answer), `GET /v1/models`, `GET /stats` (steps and
batch sizes, to show the batching happened), and `GET /metrics`: vLLM's engine counters in
Prometheus text format with vLLM's names and labels (`vllm:prompt_tokens_total`,
`vllm:generation_tokens_total`, `vllm:num_requests_running`), updated at each engine step as
vLLM's `PrometheusStatLogger` does, so Footprint attributes by engine activity in front of it
exactly as in front of vLLM. Run:

    python bench/gpu_workload.py --preset llama-1b --device cuda --port 8000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import queue
import sys
import threading
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger("gpu_workload")

CHARS_PER_TOKEN = 4  # the prompt is cut into 4-character pieces, about what BPE gives English


@dataclass(frozen=True)
class ModelConfig:
    """The shape of a Llama-style decoder."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    layers: int
    heads: int
    kv_heads: int
    rope_theta: float = 500_000.0
    norm_eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.heads

    def param_count(self) -> int:
        """Parameters, embeddings tied with the output head (as Llama 3.2 1B does)."""
        h, kv = self.hidden_size, self.kv_heads * self.head_dim
        attention = 2 * h * h + 2 * h * kv
        mlp = 3 * h * self.intermediate_size
        per_layer = attention + mlp + 2 * h
        return self.vocab_size * h + self.layers * per_layer + h


PRESETS: dict[str, ModelConfig] = {
    # The shape of Llama 3.2 1B (meta-llama/Llama-3.2-1B config.json): about 1.24e9 parameters.
    "llama-1b": ModelConfig(
        vocab_size=128_256,
        hidden_size=2048,
        intermediate_size=8192,
        layers=16,
        heads=32,
        kv_heads=8,
    ),
    # For CPU smoke tests: the same code path, small enough to run in milliseconds.
    "tiny": ModelConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, layers=2, heads=4, kv_heads=2
    ),
}


# ---- the model ------------------------------------------------------------------------------


class LlamaModel:
    """Random-weight Llama-style decoder with a slot-indexed KV cache.

    `forward(tokens, positions, slots)` runs `len(slots)` sequences of `T` new tokens each, at the
    given absolute positions, writes their keys and values into those cache slots, and returns
    the logits of each sequence's last token.
    """

    def __init__(
        self,
        config: ModelConfig,
        *,
        device: str,
        dtype: torch.dtype,
        max_batch: int,
        max_len: int,
        seed: int = 0,
    ) -> None:
        self.config = config
        self.device = torch.device(device)
        self.dtype = dtype
        self.max_len = max_len
        generator = torch.Generator(device=self.device).manual_seed(seed)
        std = 0.02  # Llama's initializer_range

        def weight(*shape: int) -> torch.Tensor:
            w = torch.empty(shape, device=self.device, dtype=dtype)
            return w.normal_(0.0, std, generator=generator)

        c = config
        kv = c.kv_heads * c.head_dim
        self.embed = weight(c.vocab_size, c.hidden_size)
        self.layers: list[dict[str, torch.Tensor]] = []
        for _ in range(c.layers):
            self.layers.append(
                {
                    "attn_norm": torch.ones(c.hidden_size, device=self.device, dtype=dtype),
                    "wqkv": weight(c.hidden_size + 2 * kv, c.hidden_size),
                    "wo": weight(c.hidden_size, c.hidden_size),
                    "mlp_norm": torch.ones(c.hidden_size, device=self.device, dtype=dtype),
                    "w_gate_up": weight(2 * c.intermediate_size, c.hidden_size),
                    "w_down": weight(c.hidden_size, c.intermediate_size),
                }
            )
        self.final_norm = torch.ones(c.hidden_size, device=self.device, dtype=dtype)
        cache_shape = (c.layers, max_batch, c.kv_heads, max_len, c.head_dim)
        self.cache_k = torch.zeros(cache_shape, device=self.device, dtype=dtype)
        self.cache_v = torch.zeros(cache_shape, device=self.device, dtype=dtype)
        exponents = torch.arange(0, c.head_dim, 2, device=self.device, dtype=torch.float32)
        inv_freq = 1.0 / (c.rope_theta ** (exponents / c.head_dim))
        steps = torch.arange(max_len, device=self.device, dtype=torch.float32)
        angles = torch.outer(steps, inv_freq)
        self.cos = angles.cos().to(dtype)  # [max_len, head_dim / 2]
        self.sin = angles.sin().to(dtype)

    def _rms_norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.config.norm_eps)
        return x32.to(self.dtype) * weight

    def _rope(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        # x: [B, heads, T, head_dim]; rotate-half convention (as in transformers' Llama)
        cos = self.cos[positions].unsqueeze(1)  # [B, 1, T, head_dim / 2]
        sin = self.sin[positions].unsqueeze(1)
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)

    @torch.inference_mode()
    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        slots: torch.Tensor,
        length: int | None = None,
    ) -> torch.Tensor:
        """tokens, positions: [B, T] (long); slots: [B] (long); `length`: the highest position
        plus one (given by the caller, it saves a device sync). Returns logits [B, vocab]."""
        c = self.config
        batch, steps = tokens.shape
        kv = c.kv_heads * c.head_dim
        if length is None:
            length = int(positions.max().item()) + 1
        key_positions = torch.arange(length, device=self.device)
        # mask[b, 0, t, j]: key j is visible to query t of sequence b (causal, own slot only)
        mask = (key_positions[None, None, None, :] <= positions[:, None, :, None]).expand(
            batch, 1, steps, length
        )
        x = self.embed[tokens]
        for i, layer in enumerate(self.layers):
            h = self._rms_norm(x, layer["attn_norm"])
            qkv = h @ layer["wqkv"].T
            q = qkv[..., : c.hidden_size].view(batch, steps, c.heads, c.head_dim).transpose(1, 2)
            k = qkv[..., c.hidden_size : c.hidden_size + kv]
            k = k.view(batch, steps, c.kv_heads, c.head_dim).transpose(1, 2)
            v = qkv[..., c.hidden_size + kv :].view(batch, steps, c.kv_heads, c.head_dim)
            v = v.transpose(1, 2)
            q = self._rope(q, positions)
            k = self._rope(k, positions)
            cache_k, cache_v = self.cache_k[i], self.cache_v[i]  # [slots, kv_heads, len, dim]
            slot_index = slots[:, None].expand(batch, steps)
            cache_k[slot_index, :, positions] = k.transpose(1, 2)
            cache_v[slot_index, :, positions] = v.transpose(1, 2)
            keys = cache_k[slots, :, :length]
            values = cache_v[slots, :, :length]
            attn = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=True)
            x = x + attn.transpose(1, 2).reshape(batch, steps, c.hidden_size) @ layer["wo"].T
            h = self._rms_norm(x, layer["mlp_norm"])
            gate, up = (h @ layer["w_gate_up"].T).chunk(2, dim=-1)
            x = x + (F.silu(gate) * up) @ layer["w_down"].T
        last = self._rms_norm(x[:, -1], self.final_norm)
        return last @ self.embed.T


# ---- the engine ----------------------------------------------------------------------------

# What the engine hands back per request and step: a token id, or None when the request ended.
Deliver = Callable[[list[tuple["Generation", int | None]]], None]


@dataclass(eq=False)
class Generation:
    """One request inside the engine."""

    prompt_ids: list[int]
    max_tokens: int
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    slot: int = -1
    generated: int = 0
    position: int = 0  # where the next token's key goes
    last_token: int = 0
    cancelled: bool = False


@dataclass
class EngineStats:
    """What the engine did, for `/stats`: proof that concurrent requests shared steps."""

    steps: int = 0
    decode_tokens: int = 0
    prefills: int = 0
    prefill_tokens: int = 0
    batch_histogram: dict[int, int] = field(default_factory=dict)
    busy_s: float = 0.0
    # vLLM's counters: prompt tokens count in the step that produced the request's first
    # token (here, its prefill); every token produced, the first included, is a generation
    # token; running is the requests holding a slot after the step.
    generation_tokens: int = 0
    running: int = 0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["batch_histogram"] = {str(k): v for k, v in sorted(self.batch_histogram.items())}
        data["mean_decode_batch"] = self.decode_tokens / self.steps if self.steps else 0.0
        return data


class Engine:
    """Continuous batching over `LlamaModel`: a thread that admits, prefills and decodes."""

    def __init__(self, model: LlamaModel, max_batch: int, deliver: Deliver) -> None:
        self.model = model
        self.max_batch = max_batch
        self._deliver = deliver
        self._pending: queue.Queue[Generation] = queue.Queue()
        self._active: list[Generation] = []
        self._free_slots = list(range(max_batch))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self._stats_lock = threading.Lock()
        self._stats = EngineStats()
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._pending.put(Generation([], 0, request_id="stop"))  # wake the thread
        self._thread.join(timeout=30)

    def submit(self, generation: Generation) -> None:
        """Queue a request (any thread). Its prompt is cut to fit the cache."""
        room = self.model.max_len - generation.max_tokens - 1
        if room < 1:
            raise ValueError(f"max_tokens {generation.max_tokens} does not fit the cache")
        generation.prompt_ids = generation.prompt_ids[-room:] or [0]
        self._pending.put(generation)

    def stats(self) -> dict[str, Any]:
        with self._stats_lock:
            return self._stats.to_json()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                block = not self._active
                self._admit(block)
                if self._active:
                    self._decode_step()
        except BaseException as exc:  # the server must not hang on a dead engine
            log.exception("engine failed")
            self.error = exc
            self._deliver([(g, None) for g in self._active])

    def _admit(self, block: bool) -> None:
        while self._free_slots:
            try:
                generation = self._pending.get(block=block, timeout=0.5 if block else None)
            except queue.Empty:
                return
            block = False
            if generation.request_id == "stop" or generation.cancelled:
                continue
            self._prefill(generation)

    def _prefill(self, generation: Generation) -> None:
        started = time.perf_counter()
        model = self.model
        generation.slot = self._free_slots.pop()
        ids = generation.prompt_ids
        tokens = torch.tensor([ids], device=model.device)
        positions = torch.arange(len(ids), device=model.device)[None, :]
        slots = torch.tensor([generation.slot], device=model.device)
        token = int(model.forward(tokens, positions, slots, len(ids)).argmax(-1).item())
        generation.position = len(ids)
        generation.last_token = token
        generation.generated = 1
        with self._stats_lock:
            self._stats.prefills += 1
            self._stats.prefill_tokens += len(ids)
            self._stats.generation_tokens += 1
            self._stats.busy_s += time.perf_counter() - started
        results: list[tuple[Generation, int | None]] = [(generation, token)]
        if generation.generated >= generation.max_tokens:
            results.append((generation, None))
            self._free_slots.append(generation.slot)
        else:
            self._active.append(generation)
        with self._stats_lock:
            self._stats.running = len(self._active)
        self._deliver(results)

    def _decode_step(self) -> None:
        started = time.perf_counter()
        live = [g for g in self._active if not g.cancelled]
        results: list[tuple[Generation, int | None]] = []
        if live:
            model = self.model
            tokens = torch.tensor([[g.last_token] for g in live], device=model.device)
            positions = torch.tensor([[g.position] for g in live], device=model.device)
            slots = torch.tensor([g.slot for g in live], device=model.device)
            length = max(g.position for g in live) + 1
            next_tokens = model.forward(tokens, positions, slots, length).argmax(-1).tolist()
            for generation, token in zip(live, next_tokens, strict=True):
                generation.position += 1
                generation.generated += 1
                generation.last_token = int(token)
                results.append((generation, int(token)))
            with self._stats_lock:
                self._stats.steps += 1
                self._stats.decode_tokens += len(live)
                self._stats.generation_tokens += len(live)
                histogram = self._stats.batch_histogram
                histogram[len(live)] = histogram.get(len(live), 0) + 1
                self._stats.busy_s += time.perf_counter() - started
        still: list[Generation] = []
        for generation in self._active:
            if generation.cancelled or generation.generated >= generation.max_tokens:
                results.append((generation, None))
                self._free_slots.append(generation.slot)
            else:
                still.append(generation)
        self._active = still
        with self._stats_lock:
            self._stats.running = len(still)
        self._deliver(results)


# ---- HTTP ------------------------------------------------------------------------------------


def prompt_ids(text: str, vocab_size: int) -> list[int]:
    """Deterministic token ids for a text: one per 4-character piece."""
    pieces = [text[i : i + CHARS_PER_TOKEN] for i in range(0, len(text), CHARS_PER_TOKEN)]
    return [zlib.crc32(p.encode()) % vocab_size for p in pieces] or [0]


def token_text(token: int) -> str:
    return f" t{token}"


def _messages_text(body: dict[str, Any]) -> str:
    parts = []
    for message in body.get("messages") or []:
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            parts.append(message["content"])
    return "\n".join(parts)


METRICS_CREATED_S = time.time()


def vllm_metrics_text(stats: dict[str, Any], model_name: str) -> str:
    """The engine counters as vLLM's `/metrics` shows them (prometheus_client text format:
    a Counter `x` appears as `x_total` beside `x_created`; labels `engine`, `model_name`)."""
    labels = f'{{engine="0",model_name="{model_name}"}}'
    families = [
        ("vllm:num_requests_running", "gauge", "Number of requests in model execution batches.",
         stats["running"]),
        ("vllm:prompt_tokens", "counter", "Number of prefill tokens processed.",
         stats["prefill_tokens"]),
        ("vllm:generation_tokens", "counter", "Number of generation tokens processed.",
         stats["generation_tokens"]),
    ]  # fmt: skip
    lines = []
    for name, kind, help_text, value in families:
        sample = f"{name}_total" if kind == "counter" else name
        lines += [f"# HELP {sample} {help_text}", f"# TYPE {sample} {kind}"]
        lines.append(f"{sample}{labels} {float(value)}")
        if kind == "counter":
            created = f"{name}_created"
            lines += [f"# HELP {created} {help_text}", f"# TYPE {created} gauge"]
            lines.append(f"{created}{labels} {METRICS_CREATED_S}")
    return "\n".join(lines) + "\n"


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def build_app(
    engine_factory: Callable[[Deliver], Engine],
    model_name: str,
    model_info: dict[str, Any] | None = None,
) -> Any:
    """The Starlette app; the engine is made in the lifespan (so the loop is known).
    `model_info` is shown under "model" in `/stats`."""
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
    from starlette.routing import Route

    streams: dict[Generation, asyncio.Queue[int | None]] = {}
    holder: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()

        def on_loop(results: list[tuple[Generation, int | None]]) -> None:
            for generation, token in results:
                stream = streams.get(generation)
                if stream is not None:
                    stream.put_nowait(token)

        def deliver(results: list[tuple[Generation, int | None]]) -> None:
            loop.call_soon_threadsafe(on_loop, results)

        engine = engine_factory(deliver)
        engine.start()
        holder["engine"] = engine
        try:
            yield
        finally:
            await asyncio.to_thread(engine.stop)

    async def models(request: Request) -> JSONResponse:
        return JSONResponse(
            {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "gpu"}]}
        )

    async def stats(request: Request) -> JSONResponse:
        engine: Engine = holder["engine"]
        return JSONResponse({"model": model_info or {}, **engine.stats()})

    async def metrics(request: Request) -> PlainTextResponse:
        engine: Engine = holder["engine"]
        return PlainTextResponse(
            vllm_metrics_text(engine.stats(), model_name),
            media_type="text/plain; version=0.0.4; charset=utf-8",
        )

    async def chat(request: Request) -> Any:
        engine: Engine = holder["engine"]
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": {"message": "body is not JSON"}}, status_code=400)
        max_tokens = int(body.get("max_completion_tokens") or body.get("max_tokens") or 256)
        ids = prompt_ids(_messages_text(body), engine.model.config.vocab_size)
        generation = Generation(ids, max_tokens)
        tokens: asyncio.Queue[int | None] = asyncio.Queue()
        streams[generation] = tokens
        try:
            engine.submit(generation)
        except ValueError as exc:
            streams.pop(generation, None)
            return JSONResponse({"error": {"message": str(exc)}}, status_code=400)
        completion_id = f"chatcmpl-{generation.request_id}"
        created = int(time.time())
        usage_of = lambda n: {  # noqa: E731
            "prompt_tokens": len(generation.prompt_ids),
            "completion_tokens": n,
            "total_tokens": len(generation.prompt_ids) + n,
        }

        if not body.get("stream"):
            texts = []
            try:
                while (token := await tokens.get()) is not None:
                    texts.append(token_text(token))
            finally:
                generation.cancelled = generation.generated < generation.max_tokens
                streams.pop(generation, None)
            return JSONResponse(
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": model_name,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "".join(texts)},
                            "finish_reason": "length",
                        }
                    ],
                    "usage": usage_of(len(texts)),
                }
            )

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            return _sse(
                {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model_name,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                }
            )

        async def events() -> AsyncIterator[bytes]:
            sent = 0
            try:
                yield chunk({"role": "assistant", "content": ""})
                while (token := await tokens.get()) is not None:
                    sent += 1
                    yield chunk({"content": token_text(token)})
                yield chunk({}, "length")
                if include_usage:
                    yield _sse(
                        {
                            "id": completion_id,
                            "object": "chat.completion.chunk",
                            "created": created,
                            "model": model_name,
                            "choices": [],
                            "usage": usage_of(sent),
                        }
                    )
                yield b"data: [DONE]\n\n"
            finally:
                generation.cancelled = generation.generated < generation.max_tokens
                streams.pop(generation, None)

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(
        routes=[
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/stats", stats, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def make_engine_factory(
    config: ModelConfig, *, device: str, dtype: torch.dtype, max_batch: int, max_len: int
) -> Callable[[Deliver], Engine]:
    """Build the model now (slow: weights on the device) and the engine when asked."""
    started = time.perf_counter()
    model = LlamaModel(config, device=device, dtype=dtype, max_batch=max_batch, max_len=max_len)
    # One prefill and one decode so kernels and library handles are loaded before serving.
    slot = torch.tensor([0], device=model.device)
    model.forward(
        torch.zeros(1, 8, dtype=torch.long, device=model.device),
        torch.arange(8, device=model.device)[None, :],
        slot,
    )
    model.forward(
        torch.zeros(1, 1, dtype=torch.long, device=model.device),
        torch.tensor([[8]], device=model.device),
        slot,
    )
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    log.info(
        "model ready: %.3fB parameters on %s in %.1f s",
        config.param_count() / 1e9,
        device,
        time.perf_counter() - started,
    )
    return lambda deliver: Engine(model, max_batch, deliver)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="llama-1b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--max-len", type=int, default=4096)
    parser.add_argument("--model-name", default="random-llama-1b")
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s workload %(levelname)s %(message)s")
    # The engine thread holds the GIL between kernel launches; switch more often than the
    # default 5 ms so the HTTP loop passes tokens on promptly.
    sys.setswitchinterval(0.001)
    import uvicorn

    config = PRESETS[args.preset]
    factory = make_engine_factory(
        config,
        device=args.device,
        dtype=getattr(torch, args.dtype),
        max_batch=args.max_batch,
        max_len=args.max_len,
    )
    model_info = {
        "name": args.model_name,
        "preset": args.preset,
        "params": config.param_count(),
        "params_b": round(config.param_count() / 1e9, 4),
        "device": args.device,
        "dtype": args.dtype,
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        "max_batch": args.max_batch,
        "max_len": args.max_len,
    }
    app = build_app(factory, args.model_name, model_info)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = [
    "PRESETS",
    "Engine",
    "Generation",
    "LlamaModel",
    "ModelConfig",
    "build_app",
    "make_engine_factory",
    "prompt_ids",
    "vllm_metrics_text",
]
