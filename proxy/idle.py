"""Meter accounts into the ledger: measured, idle and other energy per upstream, per bucket.

Each measured meter books its ticks into wall-clock buckets (`meters.accounts`); this writes
the closed ones to the ledger every `interval_s` (and all of them at shutdown), keyed by
(meter, bucket), so the replicas in front of the same GPUs write one account between them.
Idle energy is booked with a request's boundary (methodology §4–6; issue 13): the non-GPU
server share over the idle time, PUE, carbon at the site's intensity plus embodied carbon for
the idle hardware time, and water. Billing reports show it or spread it over teams
(`metering.idle = "spread"`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from datetime import UTC, datetime

from meters import Measurement
from meters.accounts import Bucket
from meters.footprint import compute_footprint
from meters.meter import MeasuredMeter
from proxy.ledger import AccountRow
from proxy.services import Services
from proxy.upstreams import Upstream

log = logging.getLogger("footprint.idle")


class IdleRecorder:
    """Writes every measured upstream's closed account buckets to the ledger."""

    def __init__(self, services: Services, interval_s: float = 60.0) -> None:
        self.services = services
        self.interval_s = interval_s
        self.replica = f"{socket.gethostname()}:{os.getpid()}"

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.flush(final=False)
            except Exception:  # the ledger may be down for a while; the next flush catches up
                log.exception("meter accounts could not be recorded; will retry")

    async def flush(self, *, final: bool = True) -> None:
        """Record the closed buckets of every measured upstream (all of them when `final`)."""
        now_s = None if final else datetime.now(UTC).timestamp()
        for upstream in self.services.router.upstreams:
            meter = upstream.meter
            if not isinstance(meter, MeasuredMeter):
                continue
            buckets = meter.take_accounts(now_s)
            if not buckets:
                continue
            try:
                rows = [await self._row(upstream, meter, b) for b in buckets]
                await self.services.ledger.record_accounts(rows)
            except BaseException:
                meter.give_back_accounts(buckets)
                raise

    async def _row(self, upstream: Upstream, meter: MeasuredMeter, bucket: Bucket) -> AccountRow:
        intensity = await self.services.intensity.get(upstream.site.zone)
        idle = compute_footprint(
            Measurement(
                gpu_energy_j=bucket.idle_j,
                server_energy_j=meter.server_power_w * bucket.idle_s,
                hardware_s=bucket.idle_s,
                method="measured",
                basis="idle",
            ),
            upstream.site,
            upstream.hardware,
            intensity,
        )
        return AccountRow(
            meter=meter.meter_key,
            bucket_start=datetime.fromtimestamp(bucket.start_s, UTC),
            bucket_end=datetime.fromtimestamp(bucket.end_s, UTC),
            upstream=upstream.name,
            measured_gpu_energy_j=bucket.measured_j,
            measured_s=bucket.measured_s,
            idle_gpu_energy_j=bucket.idle_j,
            idle_s=bucket.idle_s,
            idle_energy_j=idle.energy_j,
            idle_co2e_g=idle.co2e_g,
            idle_embodied_co2e_g=idle.embodied_co2e_g,
            idle_water_ml=idle.water_ml,
            other_gpu_energy_j=bucket.other_j,
            replica=self.replica,
        )
