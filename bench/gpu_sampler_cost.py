"""What each way of reading a GPU's energy costs, and how often its value moves (issue 19).

Three ways, each as the NVML source would make its calls for one GPU each tick:

- `energy`: `nvmlDeviceGetTotalEnergyConsumption`, then `nvmlDeviceGetPowerUsage` (the source's
  default today: the counter, and power to fill a reset);
- `fields`: one `nvmlDeviceGetFieldValues` for `NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION` and
  `NVML_FI_DEV_POWER_INSTANT` (`NvmlSource(read_via="fields")`); NVML's call takes one device
  handle, so with several GPUs it is still one call per GPU;
- `power`: `nvmlDeviceGetPowerUsage` alone, integrated over time (rectangle rule, newest value).

`call_costs` times each call in a loop on this thread (`time.thread_time`: CPU, not wall);
`MovementPoller` reads all three every 10 ms on a side thread and keeps how often each value
changed and what power integration adds up to against the counter.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

from bench.gpu_checks import ReadCost
from meters.sources.nvml import FI_POWER_INSTANT, FI_TOTAL_ENERGY_CONSUMPTION


def _field_ids(nvml: ModuleType) -> list[int]:
    return [
        getattr(nvml, "NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION", FI_TOTAL_ENERGY_CONSUMPTION),
        getattr(nvml, "NVML_FI_DEV_POWER_INSTANT", FI_POWER_INSTANT),
    ]


def calls(nvml: ModuleType, handle: Any) -> dict[str, Callable[[], Any]]:
    """Each NVML call on one GPU, ready to time."""
    ids = _field_ids(nvml)
    return {
        "total_energy": lambda: nvml.nvmlDeviceGetTotalEnergyConsumption(handle),
        "power_usage": lambda: nvml.nvmlDeviceGetPowerUsage(handle),
        "field_values": lambda: nvml.nvmlDeviceGetFieldValues(handle, ids),
    }


def call_costs(nvml: ModuleType, handle: Any, reads: int) -> dict[str, float]:
    """CPU seconds per call of each NVML call, over `reads` calls each (after one warm call)."""
    costs = {}
    for name, call in calls(nvml, handle).items():
        call()
        start = time.thread_time()
        for _ in range(reads):
            call()
        costs[name] = (time.thread_time() - start) / reads
    return costs


class MovementPoller:
    """Reads the counter, the field values and the power every `period_s` on its own thread."""

    def __init__(self, nvml: ModuleType, handle: Any, period_s: float = 0.01) -> None:
        self._calls = calls(nvml, handle)
        self.period_s = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gpu-cost-poller", daemon=True)
        self.changes = {"energy": 0, "fields": 0, "power": 0}
        self.reads = 0
        self.start_s = self.end_s = 0.0
        self.counter_j = 0.0
        self.power_integrated_j = 0.0

    def start(self) -> None:
        self.start_s = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        last: dict[str, Any] = {}
        first_energy_mj = previous_s = None
        energy_mj = 0
        power_w = 0.0
        next_s = time.monotonic()
        while not self._stop.is_set():
            now_s = time.monotonic()
            energy_mj = int(self._calls["total_energy"]())
            fields = self._calls["field_values"]()
            field_mj = int(fields[0].value.ullVal) if fields[0].nvmlReturn == 0 else None
            power_w = float(self._calls["power_usage"]()) / 1000.0
            if previous_s is not None:
                self.power_integrated_j += power_w * (now_s - previous_s)
            for name, value in (("energy", energy_mj), ("fields", field_mj), ("power", power_w)):
                if name in last and last[name] != value:
                    self.changes[name] += 1
                last[name] = value
            if first_energy_mj is None:
                first_energy_mj = energy_mj
            previous_s = now_s
            self.reads += 1
            next_s += self.period_s
            self._stop.wait(max(0.0, next_s - time.monotonic()))
        self.end_s = previous_s or time.monotonic()
        self.counter_j = (energy_mj - (first_energy_mj or energy_mj)) / 1000.0

    def rates(self) -> dict[str, float]:
        """Changes per second of each value over the polled window."""
        window_s = max(1e-9, self.end_s - self.start_s)
        return {name: count / window_s for name, count in self.changes.items()}

    def power_error_pct(self) -> float | None:
        """Power integration's energy over the window against the counter's."""
        if self.counter_j <= 0:
            return None
        return round(100.0 * (self.power_integrated_j - self.counter_j) / self.counter_j, 3)


def read_costs(costs: dict[str, float], poller: MovementPoller) -> list[ReadCost]:
    """The three ways, each with the calls the source makes per GPU per tick."""
    rates = poller.rates()
    return [
        ReadCost("energy", costs["total_energy"] + costs["power_usage"], rates["energy"]),
        ReadCost("fields", costs["field_values"], rates["fields"]),
        ReadCost("power", costs["power_usage"], rates["power"], poller.power_error_pct()),
    ]
