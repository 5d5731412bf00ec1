"""A fake `pynvml` whose GPU energy counters follow a simulated workload.

This machine has no GPU. The fake stands at the import boundary: `FakeNvml(...).module` has the
names `meters.sources.nvml` calls on nvidia-ml-py (`nvmlInit`, `nvmlShutdown`,
`nvmlDeviceGetCount`, `nvmlDeviceGetHandleByIndex`, `nvmlDeviceGetName`,
`nvmlDeviceGetTotalEnergyConsumption` in integer mJ, `nvmlDeviceGetPowerUsage` in mW,
`nvmlDeviceGetFieldValues` for `NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION` / `NVML_FI_DEV_POWER_INSTANT`
with nvidia-ml-py's `c_nvmlFieldValue_t` attributes and a return code per field) and the
same `NVMLError` class family (`NVMLError_NotSupported`, `NVMLError_GpuIsLost`, …), so it is
injected as `nvml=fake.module` wherever the real module would be.

Power model (every GPU of the fake runs the same workload, as tensor-parallel shards do):

    power = idle_w + w_per_request × (requests in flight)
    plus impulses: j_per_token per output token, j_per_prompt_token per prompt token

Ground truth per request, the simulation's own answer to "what did this request cost": its
dynamic energy (w_per_request × its time in flight, plus its token impulses) and a share of the
idle power drawn while it was in flight. A token's work is taken to have happened evenly since
the request's previous token (the prompt's, since the request started), so each request has a
dynamic power at every instant; the idle power is split among the requests in flight in
proportion to it (equally when none has any). Idle power with nothing in flight goes to the idle
account. So `sum(true_energy_j) + true_idle_energy_j() == total_energy_j()`.

The workload is driven by the test (or by a fake upstream):

    fake = FakeNvml(idle_w=60, w_per_request=0, j_per_token=0.5, j_per_prompt_token=0.05)
    fake.request_started("a")
    fake.token("a", prompt=120)     # the prompt was prefilled
    fake.token("a", 4)              # four output tokens
    fake.request_ended("a")
    fake.true_energy_j("a"), fake.total_energy_j(), fake.truth()

Time comes from `clock` (default `time.monotonic`, the meter's default); tests that want full
control pass a `ManualClock`. Faults: `reset_counter(gpu)`, `lose_gpu(gpu)` / `restore_gpu(gpu)`,
`raise_on(function_name, error_class)` / `stop_raising()`, and `energy_counter=False` for a
pre-Volta GPU (the counter call raises NotSupported; only power is readable). `reads` records
every counter read the fake answered, as (time_s, gpu index, energy_mj); `calls` counts calls
per function name. `update_s` > 0 makes the counter move only every `update_s` seconds (the
H200's driver publishes it every 100 ms), `power_field=False` a driver without the
instantaneous-power field, and `field_errors[field_id] = code` a field that answers that NVML
return code.
"""

from __future__ import annotations

import itertools
import threading
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MJ_PER_J = 1000.0
FI_TOTAL_ENERGY_CONSUMPTION = 83  # nvidia-ml-py's NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION
FI_POWER_INSTANT = 186  # NVML_FI_DEV_POWER_INSTANT
VALUE_TYPE_UNSIGNED_INT = 1
VALUE_TYPE_UNSIGNED_LONG_LONG = 3


class ManualClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, start_s: float = 1000.0) -> None:
        self.now_s = start_s

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


class NVMLError(Exception):
    """Base of the fake's NVML errors, shaped like nvidia-ml-py's (a `value` code)."""

    value = 999

    def __str__(self) -> str:
        return f"{type(self).__name__} (code {self.value})"


def _error_class(name: str, value: int) -> type[NVMLError]:
    return type(name, (NVMLError,), {"value": value})


# The codes are nvidia-ml-py's NVML_ERROR_* values.
ERROR_CLASSES: dict[str, type[NVMLError]] = {
    name: _error_class(name, value)
    for name, value in [
        ("NVMLError_Uninitialized", 1),
        ("NVMLError_InvalidArgument", 2),
        ("NVMLError_NotSupported", 3),
        ("NVMLError_NoPermission", 4),
        ("NVMLError_NotFound", 6),
        ("NVMLError_DriverNotLoaded", 9),
        ("NVMLError_Timeout", 10),
        ("NVMLError_LibraryNotFound", 12),
        ("NVMLError_GpuIsLost", 15),
        ("NVMLError_ResetRequired", 16),
        ("NVMLError_Unknown", 999),
    ]
}


@dataclass(frozen=True)
class Truth:
    """The simulation's split of its energy, summed over GPUs (see the module docstring)."""

    requests_j: dict[str, float]
    idle_j: float
    total_j: float


@dataclass
class _Request:
    start_s: float
    end_s: float | None = None
    impulses: list[tuple[float, float]] = field(default_factory=list)  # (time_s, J)

    def dynamic_j(self, w_per_request: float, now_s: float) -> float:
        end_s = now_s if self.end_s is None else self.end_s
        return w_per_request * (end_s - self.start_s) + sum(j for _, j in self.impulses)

    def spread_power_w(self, at_s: float) -> float:
        """Token power at `at_s`: each impulse spread since the previous one (or the start)."""
        previous_s = self.start_s
        for time_s, energy_j in self.impulses:
            if time_s > previous_s:
                if previous_s <= at_s < time_s:
                    return energy_j / (time_s - previous_s)
                previous_s = time_s
        return 0.0


@dataclass
class _Gpu:
    counter_offset_j: float = 0.0  # subtracted from the true total after a reset
    lost: bool = False
    power_window_start_s: float | None = None
    power_window_energy_j: float = 0.0
    last_power_w: float = 0.0


@dataclass
class _Handle:
    index: int


@dataclass
class _Value:
    """nvidia-ml-py's `c_nvmlValue_t` union, the members the fake fills."""

    ullVal: int = 0  # the names are nvidia-ml-py's
    uiVal: int = 0
    dVal: float = 0.0


@dataclass
class FieldValue:
    """One entry of what `nvmlDeviceGetFieldValues` returns (`c_nvmlFieldValue_t`)."""

    fieldId: int
    scopeId: int = 0
    timestamp: int = 0  # µs since the epoch, when the driver took the value
    latencyUsec: int = 0
    valueType: int = VALUE_TYPE_UNSIGNED_LONG_LONG
    nvmlReturn: int = 0
    value: _Value = field(default_factory=_Value)


@dataclass
class FakeNvml:
    """Simulated GPUs behind a fake `pynvml` module (see the module docstring)."""

    idle_w: float = 60.0
    w_per_request: float = 0.0
    j_per_token: float = 0.5
    j_per_prompt_token: float = 0.0
    gpus: int = 1
    name: str = "NVIDIA H100 80GB HBM3"
    energy_counter: bool = True
    power_field: bool = True
    update_s: float = 0.0
    clock: Callable[[], float] = time.monotonic
    reads: list[tuple[float, int, int]] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)
    field_errors: dict[int, int] = field(default_factory=dict)  # field id -> NVML return code

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._now_s = self._created_s = self.clock()
        self._total_j = 0.0  # per GPU (all GPUs run the same workload)
        self._requests: dict[str, _Request] = {}
        self._gpus = [_Gpu() for _ in range(self.gpus)]
        self._raising: dict[str, type[NVMLError]] = {}
        self._initialised = 0
        self._published: tuple[float, float] | None = None  # (time_s, J) the driver last showed
        self.module = self._build_module()

    # -- workload -------------------------------------------------------------------------

    def request_started(self, request_id: str) -> None:
        """A request began occupying the GPUs."""
        with self._lock:
            self._advance()
            if request_id in self._requests:
                raise ValueError(f"request {request_id} already started")
            self._requests[request_id] = _Request(start_s=self._now_s)

    def token(self, request_id: str, count: int = 1, *, prompt: int = 0) -> None:
        """The GPUs produced `count` output tokens (and prefilled `prompt` prompt tokens)."""
        with self._lock:
            self._advance()
            request = self._requests[request_id]
            if request.end_s is not None:
                raise ValueError(f"request {request_id} already ended")
            energy_j = count * self.j_per_token + prompt * self.j_per_prompt_token
            request.impulses.append((self._now_s, energy_j))
            self._add_energy(energy_j)

    def request_ended(self, request_id: str) -> None:
        """The request left the GPUs."""
        with self._lock:
            self._advance()
            self._requests[request_id].end_s = self._now_s

    # -- ground truth ---------------------------------------------------------------------

    def true_energy_j(self, request_id: str) -> float:
        """The simulation's own per-request energy, summed over all GPUs."""
        with self._lock:
            self._advance()
            shares, _ = self._idle_split()
            request = self._requests[request_id]
            own_j = request.dynamic_j(self.w_per_request, self._now_s)
            return (own_j + shares.get(request_id, 0.0)) * self.gpus

    def dynamic_energy_j(self, request_id: str) -> float:
        """The request's own energy above idle, summed over all GPUs: with the fake's additive
        power model, exactly the energy the GPUs would not have drawn without it (marginal)."""
        with self._lock:
            self._advance()
            return self._requests[request_id].dynamic_j(self.w_per_request, self._now_s) * self.gpus

    def true_idle_energy_j(self) -> float:
        """Energy drawn with no request in flight, summed over all GPUs."""
        with self._lock:
            self._advance()
            return self._idle_split()[1] * self.gpus

    def total_energy_j(self) -> float:
        """Everything the GPUs drew since the fake was made, summed over all GPUs."""
        with self._lock:
            self._advance()
            return self._total_j * self.gpus

    def truth(self) -> Truth:
        """Every request's true energy, the idle account and the total, at one instant."""
        with self._lock:
            self._advance()
            shares, idle_j = self._idle_split()
            requests_j = {
                rid: (r.dynamic_j(self.w_per_request, self._now_s) + shares[rid]) * self.gpus
                for rid, r in self._requests.items()
            }
            return Truth(requests_j, idle_j * self.gpus, self._total_j * self.gpus)

    def _idle_split(self) -> tuple[dict[str, float], float]:
        """Idle power over the whole history: shares per request, and the idle account."""
        points = {self._created_s, self._now_s}
        for request in self._requests.values():
            points.add(request.start_s)
            points.update(t for t, _ in request.impulses)
            if request.end_s is not None:
                points.add(request.end_s)
        timeline = sorted(points)
        shares: dict[str, float] = dict.fromkeys(self._requests, 0.0)
        idle_j = 0.0
        for start_s, end_s in itertools.pairwise(timeline):
            idle_step_j = self.idle_w * (end_s - start_s)
            active = {
                rid: self.w_per_request + r.spread_power_w(start_s)
                for rid, r in self._requests.items()
                if r.start_s <= start_s and (r.end_s is None or r.end_s >= end_s)
            }
            total_w = sum(active.values())
            if not active:
                idle_j += idle_step_j
            for rid, power_w in active.items():
                fraction = power_w / total_w if total_w > 0 else 1.0 / len(active)
                shares[rid] += idle_step_j * fraction
        return shares, idle_j

    # -- faults ---------------------------------------------------------------------------

    def reset_counter(self, gpu: int = 0) -> None:
        """The driver reloads: the GPU's energy counter restarts from zero."""
        with self._lock:
            self._advance()
            self._gpus[gpu].counter_offset_j = self._total_j

    def lose_gpu(self, gpu: int = 0) -> None:
        """The GPU falls off the bus: every call on it raises NVMLError_GpuIsLost."""
        with self._lock:
            self._gpus[gpu].lost = True

    def restore_gpu(self, gpu: int = 0) -> None:
        """The GPU answers again (its counter kept counting)."""
        with self._lock:
            self._gpus[gpu].lost = False

    def raise_on(self, function_name: str, error: str = "NVMLError_Unknown") -> None:
        """Make one module function raise the named NVML error until `stop_raising`."""
        with self._lock:
            self._raising[function_name] = ERROR_CLASSES[error]

    def stop_raising(self) -> None:
        """Undo every `raise_on`."""
        with self._lock:
            self._raising.clear()

    # -- simulation -----------------------------------------------------------------------

    def _add_energy(self, energy_j: float) -> None:
        self._total_j += energy_j
        for gpu in self._gpus:
            gpu.power_window_energy_j += energy_j

    def _active(self) -> int:
        return sum(1 for r in self._requests.values() if r.end_s is None)

    def _advance(self) -> None:
        """Integrate power up to now (call with the lock held)."""
        now_s = self.clock()
        dt_s = max(0.0, now_s - self._now_s)
        self._now_s = now_s
        self._add_energy((self.idle_w + self.w_per_request * self._active()) * dt_s)

    def _counter_j(self) -> float:
        """The total the driver shows now: current, or as of its last update (`update_s`)."""
        if self.update_s <= 0:
            return self._total_j
        published = self._published
        if published is None or self._now_s - published[0] >= self.update_s:
            step_s = self._now_s - (self._now_s - self._created_s) % self.update_s
            published = self._published = (step_s, self._total_j)
        return published[1]

    # -- the fake module ------------------------------------------------------------------

    def _check(self, function_name: str, handle: _Handle | None = None) -> None:
        self.calls[function_name] = self.calls.get(function_name, 0) + 1
        if function_name in self._raising:
            raise self._raising[function_name]()
        if self._initialised <= 0 and function_name != "nvmlInit":
            raise ERROR_CLASSES["NVMLError_Uninitialized"]()
        if handle is not None and self._gpus[handle.index].lost:
            raise ERROR_CLASSES["NVMLError_GpuIsLost"]()

    def _build_module(self) -> types.ModuleType:
        module = types.ModuleType("fake_pynvml", "A simulated nvidia-ml-py (tests only).")
        module.NVMLError = NVMLError  # type: ignore[attr-defined]
        for class_name, error_class in ERROR_CLASSES.items():
            setattr(module, class_name, error_class)

        def nvmlInit() -> None:
            with self._lock:
                self._check("nvmlInit")
                self._initialised += 1

        def nvmlShutdown() -> None:
            with self._lock:
                self._check("nvmlShutdown")
                self._initialised -= 1

        def nvmlDeviceGetCount() -> int:
            with self._lock:
                self._check("nvmlDeviceGetCount")
                return len(self._gpus)

        def nvmlDeviceGetHandleByIndex(index: int) -> _Handle:
            with self._lock:
                self._check("nvmlDeviceGetHandleByIndex")
                if not 0 <= index < len(self._gpus):
                    raise ERROR_CLASSES["NVMLError_InvalidArgument"]()
                handle = _Handle(index)
                self._check("nvmlDeviceGetHandleByIndex", handle)
                return handle

        def nvmlDeviceGetName(handle: _Handle) -> str:
            with self._lock:
                self._check("nvmlDeviceGetName", handle)
                return self.name

        def nvmlDeviceGetTotalEnergyConsumption(handle: _Handle) -> int:
            with self._lock:
                self._check("nvmlDeviceGetTotalEnergyConsumption", handle)
                if not self.energy_counter:
                    raise ERROR_CLASSES["NVMLError_NotSupported"]()
                self._advance()
                return self._energy_mj(handle.index)

        def nvmlDeviceGetPowerUsage(handle: _Handle) -> int:
            # Like the sensor: the mean power over the window since the previous reading.
            with self._lock:
                self._check("nvmlDeviceGetPowerUsage", handle)
                self._advance()
                gpu = self._gpus[handle.index]
                start_s = gpu.power_window_start_s
                if start_s is not None and self._now_s > start_s:
                    gpu.last_power_w = gpu.power_window_energy_j / (self._now_s - start_s)
                elif start_s is None:
                    gpu.last_power_w = self.idle_w + self.w_per_request * self._active()
                gpu.power_window_start_s = self._now_s
                gpu.power_window_energy_j = 0.0
                return round(gpu.last_power_w * 1000.0)

        def nvmlDeviceGetFieldValues(handle: _Handle, field_ids: list[Any]) -> list[FieldValue]:
            with self._lock:
                self._check("nvmlDeviceGetFieldValues", handle)
                self._advance()
                values = []
                for entry in field_ids:
                    field_id, scope_id = entry if isinstance(entry, tuple) else (entry, 0)
                    value = FieldValue(field_id, scope_id, timestamp=int(self._now_s * 1e6))
                    if field_id in self.field_errors:
                        value.nvmlReturn = self.field_errors[field_id]
                    elif field_id == FI_TOTAL_ENERGY_CONSUMPTION and self.energy_counter:
                        value.value.ullVal = self._energy_mj(handle.index)
                    elif field_id == FI_POWER_INSTANT and self.power_field:
                        value.valueType = VALUE_TYPE_UNSIGNED_INT
                        value.value.uiVal = round(self._instant_power_w() * 1000.0)
                    else:
                        value.nvmlReturn = ERROR_CLASSES["NVMLError_NotSupported"].value
                    values.append(value)
                return values

        functions: dict[str, Any] = {
            "nvmlInit": nvmlInit,
            "nvmlShutdown": nvmlShutdown,
            "nvmlDeviceGetCount": nvmlDeviceGetCount,
            "nvmlDeviceGetHandleByIndex": nvmlDeviceGetHandleByIndex,
            "nvmlDeviceGetName": nvmlDeviceGetName,
            "nvmlDeviceGetTotalEnergyConsumption": nvmlDeviceGetTotalEnergyConsumption,
            "nvmlDeviceGetPowerUsage": nvmlDeviceGetPowerUsage,
            "nvmlDeviceGetFieldValues": nvmlDeviceGetFieldValues,
        }
        for function_name, function in functions.items():
            setattr(module, function_name, function)
        module.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION = FI_TOTAL_ENERGY_CONSUMPTION  # type: ignore[attr-defined]
        module.NVML_FI_DEV_POWER_INSTANT = FI_POWER_INSTANT  # type: ignore[attr-defined]
        module.NVML_SUCCESS = 0  # type: ignore[attr-defined]
        module.NVML_ERROR_NOT_SUPPORTED = ERROR_CLASSES["NVMLError_NotSupported"].value  # type: ignore[attr-defined]
        return module

    def _energy_mj(self, index: int) -> int:
        """GPU `index`'s counter as the driver shows it, in mJ (lock held); recorded in reads."""
        energy_mj = int((self._counter_j() - self._gpus[index].counter_offset_j) * MJ_PER_J)
        self.reads.append((self._now_s, index, energy_mj))
        return energy_mj

    def _instant_power_w(self) -> float:
        """Power now: idle, the requests in flight, and the token work of the last 10 ms."""
        recent_j = sum(
            j for r in self._requests.values() for t, j in r.impulses if self._now_s - t < 0.01
        )
        return self.idle_w + self.w_per_request * self._active() + recent_j / 0.01
