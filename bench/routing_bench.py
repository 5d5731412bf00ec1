"""The routing decision's cost per request with 10 candidates (issue 15: target under 50 µs).

Ten upstreams serve one model in ten zones; `Planner.plan` is timed per policy, the way the
relay calls it (the candidates already found; intensity through the shipped table, as a live
provider's cache would answer). Run from the repository root:
`PYTHONPATH=. python bench/routing_bench.py`.
"""

from __future__ import annotations

import asyncio
import statistics
import time

from meters.calibration import Calibrations
from meters.intensity import IntensityTable, TableIntensity
from proxy.app import build_upstream
from proxy.config import parse_settings
from proxy.routing import Planner

ZONES = ["FR", "PL", "DE", "SE", "US-CAL-CISO", "KR", "IN", "BR", "NO", "JP"]
POLICIES = ("priority", "round-robin", "least-busy", "lowest-carbon")


async def main(rounds: int = 20_000) -> None:
    settings = parse_settings(
        {
            "upstreams": [
                {
                    "name": f"u{i}",
                    "base_url": f"http://10.0.0.{i}:8000/v1",
                    "zone": zone,
                    "max_concurrency": 8,
                    "meter": {"kind": "estimate"},
                    "hardware": {"active_params_b": 8.0},
                }
                for i, zone in enumerate(ZONES)
            ]
        }
    )
    upstreams = [build_upstream(settings, u, Calibrations()) for u in settings.upstreams]
    for i, upstream in enumerate(upstreams):
        upstream.health.in_flight = i % 4
    intensity = TableIntensity(IntensityTable.shipped())
    print(f"routing decision, {len(upstreams)} candidates, {rounds} rounds each")
    for policy in POLICIES:
        planner = Planner(settings.routing.model_copy(update={"policy": policy}), intensity)
        for _ in range(1000):  # warm: rates and intensity memo filled
            await planner.plan("llama-3-8b", upstreams, 120, 256)
        samples = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(rounds):
                await planner.plan("llama-3-8b", upstreams, 120, 256)
            samples.append((time.perf_counter() - start) / rounds * 1e6)
        print(f"  {policy:>13}: {statistics.median(samples):6.1f} µs per decision (median of 5)")
    for upstream in upstreams:
        await upstream.client.aclose()


if __name__ == "__main__":
    asyncio.run(main())
