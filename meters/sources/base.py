"""The one small interface every energy source implements, and the reading it returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class EnergySample:
    """One reading of a set of GPUs.

    `time_s` is on the monotonic clock the source was given (the meter's clock), taken when the
    counters were read. `energy_j` is cumulative joules per GPU id and never goes backwards
    (sources absorb counter resets). `power_w` holds the power draw per GPU where the source
    knows it. `moved` is False when no GPU's counter changed since the previous reading (a
    counter that steps more slowly than the tick, as DCGM's exporter does).
    """

    time_s: float
    energy_j: dict[str, float]
    power_w: dict[str, float] = field(default_factory=dict)
    moved: bool = True

    @property
    def total_energy_j(self) -> float:
        """Cumulative joules summed over the sample's GPUs."""
        return sum(self.energy_j.values())


@dataclass(frozen=True, slots=True)
class GpuReading:
    """The last known state of one GPU, for telemetry (`hw.energy`, `hw.power`)."""

    gpu_id: str
    energy_j: float
    power_w: float


class EnergySource(Protocol):
    """Cumulative energy of a fixed set of GPUs.

    `read` blocks (NVML call, HTTP scrape) and is called from a sampler thread, one call at a
    time; it raises `meters.MeterError` when it cannot give a reading.
    """

    name: str

    def read(self) -> EnergySample:
        """Read every GPU's cumulative energy now."""
        ...

    def close(self) -> None:
        """Release the library or connection behind the source."""
        ...
