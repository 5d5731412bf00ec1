"""Idle energy into the ledger: what each upstream's GPUs drew with no request in flight.

The meters keep a running idle account per upstream; this writes its growth to the ledger
periodically (and once more at shutdown), with carbon and water at the upstream's site, so
billing reports can show it or spread it over teams (`metering.idle = "spread"`).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from meters import Measurement
from meters.footprint import compute_footprint
from proxy.services import Services

log = logging.getLogger("footprint.idle")


class IdleRecorder:
    def __init__(self, services: Services, interval_s: float = 60.0) -> None:
        self.services = services
        self.interval_s = interval_s
        self._since = datetime.now(UTC)
        self._recorded_j = {u.name: _idle_j(u.meter) for u in services.router.upstreams}

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.flush()
            except Exception:  # the ledger may be down for a while; the next flush catches up
                log.exception("idle energy could not be recorded; will retry")

    async def flush(self) -> None:
        """Record each upstream's idle energy since the last flush."""
        now = datetime.now(UTC)
        for upstream in self.services.router.upstreams:
            total_j = _idle_j(upstream.meter)
            delta_j = total_j - self._recorded_j.get(upstream.name, 0.0)
            if delta_j <= 0:
                continue
            intensity = await self.services.intensity.get(upstream.site.zone)
            footprint = compute_footprint(
                Measurement(delta_j, 0.0, 0.0, "measured", "idle"),
                upstream.site,
                upstream.hardware,
                intensity,
            )
            await self.services.ledger.record_idle(
                upstream.name,
                self._since,
                now,
                footprint.energy_j,
                gpu_energy_j=delta_j,
                co2e_g=footprint.co2e_g,
                water_ml=footprint.water_ml,
            )
            self._recorded_j[upstream.name] = total_j
        self._since = now


def _idle_j(meter: object) -> float:
    value = getattr(meter, "idle_energy_j", 0.0)
    return float(value() if callable(value) else value)
