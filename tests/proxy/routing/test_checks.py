"""Active health checks: a live upstream's check succeeds (its round trip noted), a dead one's
fails, and enough failures open its circuit with no request sent."""

from __future__ import annotations

import asyncio

from meters.calibration import Calibrations
from proxy.app import build_upstream
from proxy.config import parse_settings
from proxy.routing import HealthChecks
from tests.support.fake_upstream import make_upstream
from tests.support.servers import ServerThread, free_port


def test_checks_feed_each_upstreams_circuit() -> None:
    with ServerThread(make_upstream()) as live:
        settings = parse_settings(
            {
                "routing": {"failure_threshold": 2, "health_interval_s": 0.05},
                "upstreams": [
                    {"name": "live", "base_url": f"{live.url}/v1"},
                    {"name": "dead", "base_url": f"http://127.0.0.1:{free_port()}/v1"},
                ],
            }
        )

        async def run() -> tuple[str, str, float | None]:
            upstreams = [build_upstream(settings, u, Calibrations()) for u in settings.upstreams]
            checks = HealthChecks(settings.routing, upstreams)
            task = asyncio.get_running_loop().create_task(checks.run())
            await asyncio.sleep(0.6)
            task.cancel()
            live_up, dead_up = upstreams
            found = (
                live_up.health.breaker.state,
                dead_up.health.breaker.state,
                live_up.health.probe_s,
            )
            for upstream in upstreams:
                await upstream.client.aclose()
            return found

        live_state, dead_state, probe_s = asyncio.run(run())
    assert (live_state, dead_state) == ("closed", "open")
    assert probe_s is not None and probe_s > 0
