"""Runs issue 19's phases (bench/gpu_phases.py) and builds their report: the four proxies, the
counter poller, the snapshots and the ledgers. Called by bench/gpu_validate.py's `main`."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from bench.gpu_analysis import MeterSnapshot, RequestResult, counter_at_j
from bench.gpu_client import Hooks, say
from bench.gpu_phases import (
    PROXIES,
    Plan19,
    RequestClass,
    Traffic,
    call_costs,
    engine_weight,
    holdout_calibration,
    marginal_phase,
    marginal_report,
    per_class_means,
    replica_phase,
    replica_sum,
    request_weight,
    sampler_report,
)
from bench.gpu_sampler_cost import MovementPoller
from bench.gpu_validate import (
    CounterPoller,
    ProxyThread,
    accelerator_name,
    engine_attribution_available,
    footprint_toml,
    free_port,
    take_snapshot,
)


def start_proxies(
    args: Any, nvml: ModuleType, gpu: dict[str, Any], model: dict[str, Any]
) -> dict[str, ProxyThread]:
    from proxy.app import create_app
    from proxy.config import load_settings

    workdir = Path(tempfile.mkdtemp(prefix="gpu-validate-19-"))
    engine = engine_attribution_available()
    proxies = {}
    for name, tick_s in PROXIES.items():
        port = free_port()
        toml = workdir / f"{name}.toml"
        toml.write_text(footprint_toml(
            port=port, upstream_url=f"{args.workload_url}/v1", db_path=workdir / f"{name}.db",
            params_b=model["params_b"], accelerator=accelerator_name(gpu["name"]),
            tick_s=tick_s, activity_url=f"{args.workload_url}/metrics" if engine else "",
        ))  # fmt: skip
        settings = load_settings(toml, environ={})
        proxy = ProxyThread(create_app(settings, nvml=nvml if args.fake_nvml else None), port)
        proxy.start()
        proxy.port = port  # type: ignore[attr-defined]
        proxies[name] = proxy
    return proxies


async def account(proxy: ProxyThread, poller: CounterPoller) -> tuple[MeterSnapshot, float | None]:
    meter = proxy.upstream.meter
    snap = await asyncio.to_thread(take_snapshot, meter, poller)
    return snap, getattr(meter, "other_energy_j", None)


async def ledger_j(client: Any, results: list[RequestResult]) -> float:
    """Σ gpu_energy_j of these requests as the proxy's ledger holds them."""
    total = 0.0
    for r in results:
        response = await client.get(f"/v1/footprint/requests/{r.request_id}")
        if response.status_code == 200:
            r.ledger = response.json()
            total += float(r.ledger["gpu_energy_j"])
    return total


async def drive19(
    args: Any, proxies: dict[str, ProxyThread], poller: CounterPoller, hooks: Hooks, alpha: float
) -> dict[str, Any]:
    import httpx

    plan: Plan19 = args.plan19
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    clients = {
        name: httpx.AsyncClient(base_url=f"http://127.0.0.1:{p.port}", timeout=120.0,  # type: ignore[attr-defined]
                                limits=limits)
        for name, p in proxies.items()
    }  # fmt: skip
    clients["direct"] = httpx.AsyncClient(base_url=args.workload_url, timeout=120.0, limits=limits)
    traffic = Traffic(hooks, clients)
    out: dict[str, Any] = {"traffic": traffic}
    try:
        warm = RequestClass("warmup", 200, 8)
        for name in [*PROXIES, "direct"]:
            r = await traffic.send(name, warm, "warm")
            if r.error:
                raise RuntimeError(f"warm-up through {name} failed: {r.error}")
        await asyncio.sleep(plan.settle_s)
        say("sampler cost: each NVML call's CPU per read")
        handle = poller.handle
        out["costs"] = await asyncio.to_thread(call_costs, poller.nvml, handle, plan.cost_reads)
        say(f"idle, {plan.idle_s} s")
        t0 = time.monotonic()
        await asyncio.sleep(plan.idle_s)
        out["idle_window"] = (t0, time.monotonic())
        say("marginal energy by difference")
        movement = MovementPoller(poller.nvml, handle, plan.poll_s)
        movement.start()
        out["windows"], out["by_class"], out["background"] = await marginal_phase(
            traffic, plan, time.monotonic
        )
        movement.stop()
        out["movement"] = movement
        for phase, targets in (
            ("two", ("p01", "p01b", "direct")),
            ("one", ("p01", "p01", "direct")),
        ):
            await asyncio.sleep(plan.settle_s)
            say(f"{phase} replica(s): {plan.replica_requests} requests, a third direct")
            before = await account(proxies["p01"], poller), await account(proxies["p01b"], poller)
            weight_before = await engine_weight(clients["direct"], "/metrics", alpha)
            results = await replica_phase(traffic, plan, targets)
            await asyncio.sleep(plan.settle_s)
            after = await account(proxies["p01"], poller), await account(proxies["p01b"], poller)
            weight_after = await engine_weight(clients["direct"], "/metrics", alpha)
            ledgers = {
                name: await ledger_j(clients[name], traffic.metered_by(results, name))
                for name in ("p01", "p01b")
            }
            out[f"replicas_{phase}"] = {
                "results": results, "before": before, "after": after, "ledgers": ledgers,
                "engine_weight": weight_after - weight_before,
                "direct_weight": sum(
                    request_weight(r, alpha) for r in traffic.metered_by(results, "direct")
                ),
            }  # fmt: skip
    finally:
        for client in clients.values():
            await client.aclose()
    return out


def build19(raw: dict[str, Any], poller: CounterPoller, args: Any) -> dict[str, Any]:
    traffic: Traffic = raw["traffic"]
    timeline = poller.timeline()
    t0, t1 = raw["idle_window"]
    floor_w = (counter_at_j(timeline, t1) - counter_at_j(timeline, t0)) / (t1 - t0)
    report: dict[str, Any] = {
        "attribution": "engine" if engine_attribution_available() else "local (no issue 10)",
        "floor_power_w": round(floor_w, 3),
        "sampler": sampler_report(raw["costs"], raw["movement"]),
        "marginal": marginal_report(timeline, raw["windows"], raw["by_class"], floor_w, traffic),
    }
    for row, window in zip(
        report["marginal"], [w for w in raw["windows"] if w.label != "background"], strict=True
    ):
        # A simulated GPU knows each request's marginal energy: the by-difference figure is
        # checked against it (on a real GPU there is none, and nothing is added).
        truths = [
            traffic.hooks.marginal_truth_j(r.request_id)
            for r in raw["by_class"][window.label]
            if r.start_s >= window.start_s and r.end_s <= window.end_s
        ]
        known = [t for t in truths if t is not None]
        if known:
            row["simulated_marginal_truth_j"] = round(sum(known) / len(known), 3)
    two = raw["replicas_two"]
    (first, other_first), (_first_b, other_first_b) = two["before"]
    (last, other_last), (_last_b, other_last_b) = two["after"]
    others = {}
    if other_first is not None and other_last is not None:
        others = {"p01": other_last - other_first, "p01b": other_last_b - other_first_b}
    report["replicas"] = replica_sum(
        counter_delta_j=last.own_counter_j - first.own_counter_j,
        idle_j=last.idle_j - first.idle_j,
        replica_j=two["ledgers"],
        other_j=others,
        engine_weight=two["engine_weight"],
        direct_weight=two["direct_weight"],
    )
    one = raw["replicas_one"]["results"]
    single = per_class_means(traffic.metered_by(one, "p01"))
    report["replicas"]["per_class_j"] = {
        name: {"two_replicas": per_class_means(traffic.metered_by(two["results"], name)),
               "one_replica": single}
        for name in ("p01", "p01b")
    }  # fmt: skip
    p01 = [
        r
        for r in [*flatten(raw["by_class"].values()), *two["results"], *one]
        if traffic.via.get(r.request_id) == "p01" and r.gpu_energy_j is not None and r.usage
    ]
    samples = [
        (int(r.usage["prompt_tokens"]), r.output_tokens, float(r.gpu_energy_j or 0.0)) for r in p01
    ]
    report["calibration"] = holdout_calibration(samples)
    everything = [*flatten(raw["by_class"].values()), *raw["background"],
                  *two["results"], *one]  # fmt: skip
    report["failed_requests"] = [
        {"request_id": r.request_id, "status": r.status, "error": r.error}
        for r in everything
        if r.error or (traffic.via.get(r.request_id) != "direct" and r.gpu_energy_j is None)
    ]
    report["attribution_seen"] = sorted(
        {str((r.footprint or {}).get("attribution", "")) for r in everything if r.footprint}
    )
    report["windows"] = [w.__dict__ for w in raw["windows"]]
    report["requests"] = [request_row(r, traffic) for r in everything]
    return report


def request_row(r: RequestResult, traffic: Traffic) -> dict[str, Any]:
    """One request as the report keeps it: enough to redo any check by hand."""
    footprint = r.footprint or r.footprint_comment or {}
    return {
        "request_id": r.request_id,
        "via": traffic.via.get(r.request_id),
        "class": r.phase,
        "start_s": round(r.start_s, 4),
        "end_s": round(r.end_s, 4),
        "prompt_tokens": (r.usage or {}).get("prompt_tokens"),
        "output_tokens": r.output_tokens,
        "gpu_energy_j": r.gpu_energy_j,
        "ledger_gpu_energy_j": (r.ledger or {}).get("gpu_energy_j"),
        "method": footprint.get("method"),
        "attribution": footprint.get("attribution"),
        "error": r.error,
    }


def flatten(groups: Any) -> list[RequestResult]:
    return [r for group in groups for r in group]


def run_issue19(
    args: Any, nvml: ModuleType, hooks: Hooks, gpu: dict[str, Any], model: dict[str, Any]
) -> dict[str, Any]:
    """Start the proxies and the poller, drive the phases, stop everything; the report."""
    proxies: dict[str, ProxyThread] = {}
    poller = CounterPoller(nvml, 0, args.plan19.poll_s)
    try:
        proxies = start_proxies(args, nvml, gpu, model)
        say(f"{len(proxies)} proxies ready ({', '.join(proxies)}); warm-up")
        poller.start()
        alpha = proxies["p01"].app.state.settings.metering.alpha
        raw = asyncio.run(drive19(args, proxies, poller, hooks, alpha))
        poller.stop()
        return build19(raw, poller, args)
    finally:
        poller.stop()
        for proxy in proxies.values():
            proxy.stop()


__all__ = ["run_issue19"]
