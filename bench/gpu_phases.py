"""Issue 19's phases on the GPU: what bench/gpu_validate.py runs by default.

Four Footprint proxies in this process, all `meter.kind = "nvml"` with engine attribution
(`activity = "engine"`, `activity_url` = the workload's `/metrics`): `p01`, `p02`, `p05` at
ticks of 0.1, 0.2 and 0.5 s, and `p01b`, a second replica at 0.1 s. Phases, in order:

1. sampler cost: each NVML call's CPU per read, at idle (`gpu_sampler_cost.call_costs`);
2. idle: the GPU's static floor (power with nothing running);
3. marginal energy by difference: a background load sent straight to the workload runs
   throughout; windows of background alone alternate with windows where a stream of one request
   class is added, round-robin through p01/p02/p05 (so each tick meters a third of the class);
   the movement poller reads all three NVML values every 10 ms meanwhile;
4. two replicas: a fixed mix sent one third to p01, one third to p01b, one third direct;
5. one replica: the same mix, two thirds to p01, one third direct.

The held-out calibration uses every request p01 metered. `checks.py` does the arithmetic.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from bench.gpu_analysis import RequestResult
from bench.gpu_checks import (
    Window,
    choose_sampler,
    holdout_calibration,
    marginal_by_difference,
    per_class_means,
    replica_sum,
)
from bench.gpu_client import Hooks, prompt_of, send_chat
from bench.gpu_sampler_cost import MovementPoller, call_costs, read_costs

PROXIES = {"p01": 0.1, "p02": 0.2, "p05": 0.5, "p01b": 0.1}
TICK_PROXIES = ("p01", "p02", "p05")
SOURCE_OPTIONS = ("energy", "fields")  # NvmlSource(read_via=…)


@dataclass(frozen=True)
class RequestClass:
    name: str
    prompt_chars: int
    max_tokens: int


@dataclass(frozen=True)
class Plan19:
    """Phase lengths and traffic of the issue-19 run (GPU defaults; `quick` for the CPU)."""

    cost_reads: int = 300
    idle_s: float = 5.0
    ramp_s: float = 3.0
    background_s: float = 8.0
    class_s: float = 15.0
    background_streams: int = 4
    background_prompt_chars: int = 800
    background_tokens: int = 256
    class_streams: int = 3  # one per tick proxy at a time: each meters about a third
    classes: tuple[RequestClass, ...] = (
        RequestClass("short", 400, 64),
        RequestClass("long_prompt", 12000, 64),
        RequestClass("long_output", 400, 192),
    )
    replica_requests: int = 24
    replica_concurrency: int = 6
    settle_s: float = 1.0
    poll_s: float = 0.01

    @classmethod
    def quick(cls) -> Plan19:
        return cls(
            cost_reads=200, idle_s=1.0, ramp_s=0.5, background_s=1.5, class_s=3.0,
            background_streams=3, background_prompt_chars=200, background_tokens=48,
            classes=(RequestClass("short", 200, 12), RequestClass("long_prompt", 2400, 12),
                     RequestClass("long_output", 200, 48)),
            replica_requests=12, replica_concurrency=4, settle_s=0.5,
        )  # fmt: skip


class Traffic:
    """Unique request ids, the hooks of a simulated GPU, and which proxy metered what."""

    def __init__(self, hooks: Hooks, clients: dict[str, Any]) -> None:
        self.hooks = hooks
        self.clients = clients  # proxy name or "direct" -> httpx.AsyncClient
        self.via: dict[str, str] = {}
        self._ids = itertools.count()

    async def send(self, target: str, cls: RequestClass, phase: str) -> RequestResult:
        request_id = f"gpu19-{phase}-{cls.name}-{next(self._ids):05d}"
        self.via[request_id] = target
        result = await send_chat(
            self.clients[target], request_id=request_id, phase=cls.name,
            prompt=prompt_of(cls.prompt_chars, len(self.via)), max_tokens=cls.max_tokens,
            hooks=self.hooks,
        )  # fmt: skip
        result.phase = cls.name
        return result

    def metered_by(self, results: list[RequestResult], target: str) -> list[RequestResult]:
        return [r for r in results if self.via.get(r.request_id) == target]


async def closed_loop(
    traffic: Traffic,
    targets: list[str],
    cls: RequestClass,
    streams: int,
    stop: asyncio.Event,
    results: list[RequestResult],
    phase: str,
) -> None:
    """`streams` requests in flight until `stop`, each stream taking the next target in turn."""
    turn = itertools.cycle(targets)

    async def stream() -> None:
        while not stop.is_set():
            results.append(await traffic.send(next(turn), cls, phase))

    await asyncio.gather(*(stream() for _ in range(streams)))


async def engine_weight(client: Any, url: str, alpha: float) -> float:
    """α · prompt + generation tokens so far, from the workload's `/metrics` (read with
    prometheus_client's parser, not Footprint's)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = (await client.get(url)).text
    values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    return alpha * values["vllm:prompt_tokens_total"] + values["vllm:generation_tokens_total"]


def request_weight(r: RequestResult, alpha: float) -> float:
    usage = r.usage or {}
    return alpha * int(usage.get("prompt_tokens") or 0) + r.output_tokens


async def marginal_phase(
    traffic: Traffic, plan: Plan19, now: Callable[[], float]
) -> tuple[list[Window], dict[str, list[RequestResult]], list[RequestResult]]:
    """Background throughout; background-alone windows around each class's window."""
    background_class = RequestClass("background", plan.background_prompt_chars,
                                    plan.background_tokens)  # fmt: skip
    stop_background = asyncio.Event()
    background: list[RequestResult] = []
    background_task = asyncio.create_task(
        closed_loop(
            traffic,
            ["direct"],
            background_class,
            plan.background_streams,
            stop_background,
            background,
            "bg",
        )
    )
    windows: list[Window] = []
    by_class: dict[str, list[RequestResult]] = {}

    async def alone() -> None:
        await asyncio.sleep(plan.ramp_s)
        start = now()
        await asyncio.sleep(plan.background_s)
        windows.append(Window("background", start, now()))

    await alone()
    for cls in plan.classes:
        stop = asyncio.Event()
        results: list[RequestResult] = []
        task = asyncio.create_task(
            closed_loop(
                traffic, list(TICK_PROXIES), cls, plan.class_streams, stop, results, "marginal"
            )
        )
        await asyncio.sleep(plan.ramp_s)
        start = now()
        await asyncio.sleep(plan.class_s)
        windows.append(Window(cls.name, start, now()))
        stop.set()
        await task  # the last requests drain before the next background-alone window
        by_class[cls.name] = results
        await alone()
    stop_background.set()
    await background_task
    return windows, by_class, background


async def replica_phase(
    traffic: Traffic, plan: Plan19, targets: tuple[str, str, str]
) -> list[RequestResult]:
    """A fixed mix (the first and last classes alternating), request i to targets[i % 3]."""
    mix = [plan.classes[0], plan.classes[-1]]
    limit = asyncio.Semaphore(plan.replica_concurrency)

    async def one(i: int) -> RequestResult:
        async with limit:
            return await traffic.send(targets[i % 3], mix[i % 2], "replica")

    return list(await asyncio.gather(*(one(i) for i in range(plan.replica_requests))))


def marginal_report(
    timeline: list[tuple[float, int]],
    windows: list[Window],
    by_class: dict[str, list[RequestResult]],
    floor_w: float,
    traffic: Traffic,
) -> list[dict[str, Any]]:
    background = [w for w in windows if w.label == "background"]
    rows = []
    for window in windows:
        if window.label == "background":
            continue
        results = by_class[window.label]
        attributed = {
            f"tick {PROXIES[name]} s": traffic.metered_by(results, name) for name in TICK_PROXIES
        }
        rows.append(
            marginal_by_difference(timeline, background, window, results, floor_w, attributed)
        )
    return rows


def sampler_report(costs: dict[str, float], movement: MovementPoller) -> dict[str, Any]:
    ways = read_costs(costs, movement)
    report = choose_sampler(ways, movement.rates()["energy"])
    # NvmlSource reads the counter (methodology §1: the counter is the truth), by either call;
    # power integration is measured for comparison, and would need a mode of its own.
    among = choose_sampler(
        [w for w in ways if w.name in SOURCE_OPTIONS], report["counter_changes_per_s"]
    )  # type: ignore[arg-type]
    report["source_options"] = list(SOURCE_OPTIONS)
    report["chosen_for_source"] = among["chosen"]
    report["chosen_for_source_core_pct"] = among["chosen_core_pct_8_gpus_10_hz"]
    report["met_for_source"] = among["met"]
    report["cpu_per_call_us"] = {k: round(v * 1e6, 2) for k, v in costs.items()}
    report["poll"] = {"period_s": movement.period_s, "reads": movement.reads,
                      "window_s": round(movement.end_s - movement.start_s, 3)}  # fmt: skip
    report["default_unchanged"] = "NvmlSource keeps read_via='energy' until this is measured"
    return report


def plan_dict(plan: Plan19) -> dict[str, Any]:
    return asdict(plan)


def now_s() -> float:
    return time.monotonic()


__all__ = [
    "PROXIES",
    "TICK_PROXIES",
    "Plan19",
    "RequestClass",
    "Traffic",
    "call_costs",
    "engine_weight",
    "holdout_calibration",
    "marginal_phase",
    "marginal_report",
    "per_class_means",
    "replica_phase",
    "replica_sum",
    "request_weight",
    "sampler_report",
]
