"""GPUs on another host, through a Prometheus text endpoint (methodology §1, "Remote GPUs").

Reads NVIDIA's DCGM exporter (`DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION`, mJ, label `gpu`) or
`footprint agent`, which publishes the same metric plus `hw_energy_joules_total{hw_id=…}`
(used when the DCGM name is absent). Power comes from `DCGM_FI_DEV_POWER_USAGE` or
`hw_power_watts` when published. Scrape errors, timeouts, a missing metric and stale samples
raise `MeterError`.

Attribution can be no finer than the exporter's own collection interval (dcgm-exporter `-c`,
milliseconds): tell users to set it short, about 1000 ms.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, SupportsFloat

from prometheus_client.parser import text_string_to_metric_families

from meters.sources.base import EnergySample
from meters.types import MeterError

if TYPE_CHECKING:
    import httpx

DCGM_ENERGY = "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"  # mJ since the driver loaded
DCGM_POWER = "DCGM_FI_DEV_POWER_USAGE"  # W
AGENT_ENERGY = "hw_energy_joules"  # J, counter (sample name ends in _total)
AGENT_POWER = "hw_power_watts"  # W
MJ_PER_J = 1000.0

DEFAULT_TIMEOUT_S = 2.0
# dcgm-exporter's default collection interval is 30 s; we ask users for about 1 s. A value
# (and its timestamp) that has not moved for this long means the exporter stopped collecting.
DEFAULT_STALE_AFTER_S = 10.0


@dataclass(slots=True)
class _GpuState:
    raw_j: float | None = None  # the exporter's value at the last scrape
    energy_j: float = 0.0  # our cumulative energy: never goes backwards
    power_w: float | None = None
    last_time_s: float | None = None
    last_timestamp: float | None = None  # the exporter's own timestamp, if it sends one
    unchanged_since_s: float | None = None
    resets: int = 0


@dataclass(frozen=True, slots=True)
class _Scraped:
    energy_j: dict[str, float]
    power_w: dict[str, float]
    timestamps: dict[str, float | None]


class PrometheusSource:
    """Cumulative energy of remote GPUs from a Prometheus text endpoint."""

    name = "prometheus"

    def __init__(
        self,
        url: str,
        *,
        gpus: Sequence[str] | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        stale_after_s: float = DEFAULT_STALE_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        import httpx  # here, not at the top: 6 MB a one-machine serve never needs

        self.url = url
        self._wanted = list(gpus) if gpus is not None else None
        self._client = httpx.Client(transport=transport, timeout=timeout_s)
        self._stale_after_s = stale_after_s
        self._clock = clock
        self._gpus: dict[str, _GpuState] = {}

    @property
    def resets(self) -> int:
        """How many counter resets the source has absorbed."""
        return sum(g.resets for g in self._gpus.values())

    def read(self) -> EnergySample:
        """Scrape once (blocking). Raises `MeterError` on any failure or stale data."""
        scraped = self._parse(self._scrape())
        now_s = self._clock()
        gpu_ids = self._wanted if self._wanted is not None else sorted(scraped.energy_j)
        missing = [g for g in gpu_ids if g not in scraped.energy_j]
        if missing:
            raise MeterError(f"prometheus: {self.url} has no energy for GPU(s) {missing}")
        moved = False
        for gpu_id in gpu_ids:
            moved |= self._update(
                gpu_id,
                scraped.energy_j[gpu_id],
                scraped.power_w.get(gpu_id),
                scraped.timestamps.get(gpu_id),
                now_s,
            )
        return EnergySample(
            time_s=now_s,
            energy_j={g: self._gpus[g].energy_j for g in gpu_ids},
            power_w={g: p for g in gpu_ids if (p := self._gpus[g].power_w) is not None},
            moved=moved,
        )

    def close(self) -> None:
        """Close the HTTP client."""
        self._client.close()

    def _scrape(self) -> str:
        import httpx

        try:
            response = self._client.get(self.url, headers={"accept": "text/plain"})
        except httpx.TimeoutException as exc:
            raise MeterError(f"prometheus: {self.url} timed out ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise MeterError(f"prometheus: {self.url} unreachable ({type(exc).__name__})") from exc
        if response.status_code != 200:
            raise MeterError(f"prometheus: {self.url} answered HTTP {response.status_code}")
        return response.text

    def _parse(self, text: str) -> _Scraped:
        dcgm_j: dict[str, float] = {}
        agent_j: dict[str, float] = {}
        power_w: dict[str, float] = {}
        timestamps: dict[str, float | None] = {}
        agent_timestamps: dict[str, float | None] = {}
        try:
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    name = sample.name.removesuffix("_total")
                    if name == DCGM_ENERGY and "gpu" in sample.labels:
                        gpu_id = sample.labels["gpu"]
                        dcgm_j[gpu_id] = float(sample.value) / MJ_PER_J
                        timestamps[gpu_id] = _timestamp(sample.timestamp)
                    elif name == AGENT_ENERGY and "hw_id" in sample.labels:
                        gpu_id = sample.labels["hw_id"]
                        agent_j[gpu_id] = float(sample.value)
                        agent_timestamps[gpu_id] = _timestamp(sample.timestamp)
                    elif name in (DCGM_POWER, AGENT_POWER):
                        gpu_id = sample.labels.get("gpu", sample.labels.get("hw_id", ""))
                        if gpu_id:
                            power_w[gpu_id] = float(sample.value)
        except ValueError as exc:
            raise MeterError(f"prometheus: {self.url} is not Prometheus text ({exc})") from exc
        energy_j = dcgm_j or agent_j
        if not energy_j:
            raise MeterError(
                f"prometheus: {self.url} publishes neither {DCGM_ENERGY} nor hw.energy"
            )
        for gpu_id, value in energy_j.items():
            if value != value or value < 0.0:  # NaN or negative: not a counter reading
                raise MeterError(f"prometheus: GPU {gpu_id} energy is {value}")
        return _Scraped(energy_j, power_w, timestamps if dcgm_j else agent_timestamps)

    def _update(
        self,
        gpu_id: str,
        raw_j: float,
        power_w: float | None,
        timestamp: float | None,
        now_s: float,
    ) -> bool:
        """Absorb one GPU's value; whether its counter changed since the last scrape."""
        gpu = self._gpus.setdefault(gpu_id, _GpuState())
        changed = True
        if gpu.raw_j is None:
            gpu.energy_j = raw_j
        else:
            changed = raw_j != gpu.raw_j
            moved = changed or timestamp != gpu.last_timestamp
            if moved:
                gpu.unchanged_since_s = None
            elif gpu.unchanged_since_s is None:
                gpu.unchanged_since_s = gpu.last_time_s
            if (
                gpu.unchanged_since_s is not None
                and now_s - gpu.unchanged_since_s > self._stale_after_s
            ):
                raise MeterError(
                    f"prometheus: GPU {gpu_id} energy has not moved for "
                    f"{now_s - gpu.unchanged_since_s:.1f} s (exporter stalled?)"
                )
            if raw_j >= gpu.raw_j:
                gpu.energy_j += raw_j - gpu.raw_j
            else:
                # The exporter's counter restarted (driver reload, GPU reset): fill the gap
                # from power × time where power is published, as for NVML.
                gpu.resets += 1
                fill_w = power_w if power_w is not None else gpu.power_w
                if fill_w is None:
                    # Start again from the new value; the requests in flight get estimates.
                    gpu.raw_j, gpu.last_time_s, gpu.last_timestamp = raw_j, now_s, timestamp
                    raise MeterError(
                        f"prometheus: GPU {gpu_id} counter reset and no power to fill it"
                    )
                gpu.energy_j += fill_w * (now_s - (gpu.last_time_s or now_s))
        gpu.raw_j = raw_j
        gpu.power_w = power_w if power_w is not None else gpu.power_w
        gpu.last_time_s = now_s
        gpu.last_timestamp = timestamp
        return changed


def _timestamp(value: SupportsFloat | None) -> float | None:
    """A sample's exporter timestamp in seconds (None when it sends none)."""
    return None if value is None else float(value)
