"""What metering costs: sampler CPU per GPU at 10 Hz, attribution CPU per request with 64
concurrent streams, and the latency a request's close() adds (the early read of the counter).

    .venv/bin/python bench/meter_cost.py

No GPU here: NVML is the fake pynvml of the tests (pure Python, so its cost is included and the
sampler figures are an upper bound for the ctypes calls of the real library; on a GPU host
pass --real to read the real NVML instead). Targets (issue 3): under 1% of a core for 8 GPUs
at 10 Hz; under 0.2 ms p50 added per request.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from meters.attribution import Attributor
from meters.meter import MeasuredMeter, build_meter
from meters.sampler import Sampler
from meters.sources.engine import parse_engine_page
from meters.sources.nvml import NvmlSource
from meters.types import Hardware, Measurement
from tests.meters.fake_pynvml import FakeNvml
from tests.support.vllm_page import vllm_page

TICK_S = 0.1
STREAMS = 64


def nvml_module(gpus: int, real: bool) -> ModuleType:
    if real:
        import pynvml

        return pynvml
    return FakeNvml(gpus=gpus).module


def sampler_cpu(gpus: int, real: bool, reads: int = 2000) -> tuple[float, float]:
    """CPU seconds per read of `gpus` GPUs (thread time), and the share of a core at 10 Hz."""
    source = NvmlSource(tuple(range(gpus)), nvml=nvml_module(gpus, real))
    sampler = Sampler(source, Attributor(), tick_s=TICK_S)
    sampler.sample_now()
    start = time.thread_time()
    for _ in range(reads):
        sampler.sample_now()
    per_read_s = (time.thread_time() - start) / reads
    source.close()
    return per_read_s, per_read_s / TICK_S


def sampler_thread_cpu(gpus: int, real: bool, seconds: float = 3.0) -> float:
    """Share of a core the running sampler thread takes at 10 Hz (process time, idle main)."""
    source = NvmlSource(tuple(range(gpus)), nvml=nvml_module(gpus, real))
    sampler = Sampler(source, Attributor(), tick_s=TICK_S)
    idle_start = time.process_time()
    time.sleep(seconds)
    idle_s = time.process_time() - idle_start
    start, wall = time.process_time(), time.monotonic()
    sampler.start()
    time.sleep(seconds)
    sampler.stop()
    cpu_s = time.process_time() - start - idle_s
    source.close()
    return max(cpu_s, 0.0) / (time.monotonic() - wall)


def engine_page_cpu(page_bytes: int = 100_000, reads: int = 2000) -> float:
    """CPU seconds to take the three engine metrics out of a vLLM page of `page_bytes` (issue
    10's target: under 0.5 ms for 100 KB). The HTTP transfer is not included."""
    page = vllm_page(models={"llama-3.1-8b": (123456, 789012, 17)}, target_bytes=page_bytes)
    start = time.thread_time()
    for _ in range(reads):
        parse_engine_page(page)
    return (time.thread_time() - start) / reads


def attribution_cpu(ticks: int = 3000, life_ticks: int = 50, tokens_per_tick: int = 3) -> float:
    """CPU seconds of attribution per request: 64 streams in flight, each a request of
    `life_ticks` ticks emitting one-token chunks, started staggered and replaced on end."""
    attributor = Attributor()
    now_s, energy_j = 0.0, 0.0
    attributor.sample(now_s, energy_j)
    alive: dict[str, int] = {}
    serial = completed = 0
    for stream in range(STREAMS):
        serial += 1
        attributor.start(f"r{serial}", now_s)
        alive[f"r{serial}"] = -(stream * life_ticks // STREAMS)  # staggered ages
    start = time.thread_time()
    for _ in range(ticks):
        for rid in list(alive):
            age = alive[rid] = alive[rid] + 1
            if age == 1:
                attributor.first_token(rid, 500)
            for _ in range(tokens_per_tick):
                attributor.output_tokens(rid, 1)
            if age >= life_ticks:
                attributor.end(rid, now_s + TICK_S / 2)
                attributor.sample(now_s + TICK_S / 2, energy_j + 20.0)  # the early close
                energy_j += 20.0
                now_s += TICK_S / 2
                attributor.pop(rid)
                del alive[rid]
                completed += 1
                serial += 1
                attributor.start(f"r{serial}", now_s)
                alive[f"r{serial}"] = 0
        now_s += TICK_S
        energy_j += 40.0
        attributor.sample(now_s, energy_j)
    return (time.thread_time() - start) / completed


async def close_latency(
    kind: str, real: bool, concurrency: int, requests: int
) -> tuple[float, float, float]:
    """Wall time of track.close(), p50 and p99 in seconds, with `concurrency` streams in
    flight on one event loop, and the closes per early read of the counter. For nvml that is
    the early read on the sampler thread plus the split; `estimate` is the baseline: a close
    that returns at once, under the same load."""

    def fallback(model: str, prompt: int, output: int, latency_s: float) -> Measurement:
        if kind == "nvml":
            raise RuntimeError("the bench expects every request measured")
        return Measurement(0.0, 0.0, 0.0, "estimated", "bench")

    meter = build_meter(
        kind, hardware=Hardware(), fallback=fallback, nvml=nvml_module(1, real), tick_s=TICK_S
    )
    meter.start()
    deadline = time.monotonic() + 10.0
    while not meter.healthy and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    latencies: list[float] = []

    async def one(index: int) -> None:
        track = meter.open(f"q{index}", "m")
        for chunk in range(20):  # a stream of 20 chunks, 5 ms apart
            await asyncio.sleep(0.005)
            if chunk == 0:
                track.first_token(200)
            track.output_tokens(1)
        started = time.perf_counter()
        measurement = await track.close(
            prompt_tokens=200, output_tokens=20, cancelled=False, latency_s=0.1
        )
        latencies.append(time.perf_counter() - started)
        assert measurement.method == ("measured" if kind == "nvml" else "estimated")

    semaphore = asyncio.Semaphore(concurrency)

    async def limited(index: int) -> None:
        async with semaphore:
            await one(index)

    await asyncio.gather(*(limited(i) for i in range(requests)))
    closes_per_read = 0.0
    if isinstance(meter, MeasuredMeter):
        sampler = meter._sampler
        closes_per_read = sampler.early_waiters_total / max(sampler.early_reads_total, 1)
    await meter.aclose()
    latencies.sort()
    p99_s = latencies[max(0, int(len(latencies) * 0.99) - 1)]
    return statistics.median(latencies), p99_s, closes_per_read


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real", action="store_true", help="read the real NVML (GPU host)")
    parser.add_argument(
        "--close-only", action="store_true", help="only the close() latency (about 25 s)"
    )
    parser.add_argument(
        "--engine-only", action="store_true", help="only the engine page parse (a second)"
    )
    args = parser.parse_args()
    if args.engine_only:
        for page_kb in (10, 100):
            per_page_s = engine_page_cpu(page_kb * 1000)
            print(f"engine /metrics parse, {page_kb} KB vLLM page: {per_page_s * 1e6:.1f} µs CPU")
        return
    nvml = "real NVML" if args.real else "fake pynvml (Python)"
    print(f"metering cost, tick {TICK_S * 1000:.0f} ms, {nvml}, Python {sys.version.split()[0]}")
    print(f"{'measure':<58} {'value':>14}")
    if not args.close_only:
        sampler_and_attribution(args.real)
    for concurrency in (1, STREAMS):
        for kind in ("estimate", "nvml"):
            requests = 100 if concurrency == 1 else 640
            p50_s, p99_s, per_read = asyncio.run(
                close_latency(kind, args.real, concurrency, requests)
            )
            label = f"close() wall, {kind}, {concurrency} stream(s) in flight"
            print(f"{label + ': p50':<58} {p50_s * 1e3:>11.3f} ms")
            print(f"{label + ': p99':<58} {p99_s * 1e3:>11.3f} ms")
            if kind == "nvml":
                print(f"{label + ': closes per read':<58} {per_read:>14.2f}")
    print(f"(threads alive at exit: {threading.active_count()})")


def sampler_and_attribution(real: bool) -> None:
    """Print the sampler's CPU per read and at 10 Hz, and attribution's CPU per request."""
    for gpus in (1, 8):
        per_read_s, share = sampler_cpu(gpus, real)
        print(f"{f'sampler read, {gpus} GPU(s): CPU per read':<58} {per_read_s * 1e6:>11.1f} µs")
        print(f"{f'sampler at 10 Hz, {gpus} GPU(s): share of a core':<58} {share * 100:>12.3f} %")
        print(f"{'  per GPU':<58} {share / gpus * 100:>12.3f} %")
    thread_share = sampler_thread_cpu(8, real)
    print(
        f"{'sampler thread running, 8 GPUs, process CPU share':<58} {thread_share * 100:>12.3f} %"
    )
    for page_kb in (10, 100):
        per_page_s = engine_page_cpu(page_kb * 1000)
        label = f"engine /metrics parse, {page_kb} KB vLLM page: CPU per read"
        print(f"{label:<58} {per_page_s * 1e6:>11.1f} µs")
    per_request_s = attribution_cpu()
    print(
        f"{f'attribution CPU per request, {STREAMS} streams':<58} {per_request_s * 1e6:>11.1f} µs"
    )


if __name__ == "__main__":
    main()
