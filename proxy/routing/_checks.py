"""Active health checks: every `health_interval_s`, each upstream's `health_path` (its
`/models`, or a `/health`) is asked; an answer below 500 counts as a success for its circuit
breaker, anything else (refused, timed out, 5xx) as a failure."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from proxy.config import RoutingSettings
from proxy.transport import UpstreamFailure

if TYPE_CHECKING:
    from proxy.upstreams import Upstream

log = logging.getLogger("footprint.routing")


class HealthChecks:
    """The active checker; `run()` is a task of the app's lifespan."""

    def __init__(self, settings: RoutingSettings, upstreams: Sequence[Upstream]) -> None:
        self.settings = settings
        self.upstreams = list(upstreams)

    async def check(self, upstream: Upstream) -> bool:
        """Ask one upstream once; its breaker and round-trip average are updated."""
        started = time.perf_counter()
        try:
            response = await upstream.client.get(
                self.settings.health_path, timeout_s=self.settings.health_timeout_s
            )
            await response.read()  # to the end: the connection stays pooled
            ok = response.status_code < 500
        except UpstreamFailure as exc:
            log.info("upstream %s: health check failed: %s", upstream.name, exc.kind)
            ok = False
        if ok:
            upstream.health.observe_probe(time.perf_counter() - started)
            upstream.health.breaker.succeeded()
        else:
            upstream.health.breaker.failed()
        return ok

    async def run(self) -> None:
        """Check every upstream each interval until cancelled; off when the interval is 0 or
        there is only one upstream."""
        interval_s = self.settings.health_interval_s
        if interval_s <= 0 or len(self.upstreams) < 2:
            return  # with one upstream there is nothing to route around
        while True:
            await asyncio.gather(*(self.check(u) for u in self.upstreams))
            await asyncio.sleep(interval_s)
