"""Local GPUs through NVML (nvidia-ml-py). The only module that touches `pynvml`.

Methodology §1: the source of truth is the cumulative counter
`nvmlDeviceGetTotalEnergyConsumption` (millijoules since the driver loaded; Volta and newer).
GPUs without it integrate `nvmlDeviceGetPowerUsage` (milliwatts) over time. A counter that goes
backwards (driver reload, device reset) is a reset: start again from the new value and fill that
tick from power × time. Every NVML error becomes a `MeterError` here, through one table.

`read_via="fields"` reads the same counter through `nvmlDeviceGetFieldValues` instead: one
call per GPU returns both the energy (`NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION`, mJ) and the
instantaneous power (`NVML_FI_DEV_POWER_INSTANT`, mW), where the default makes two calls (the
counter, then `nvmlDeviceGetPowerUsage`). NVML's field call takes one device handle, so it is
still one call per GPU, not one for all of them. The default stays `"energy"` until a run on a
real GPU (bench/gpu_validate.py, issue 19) measures which costs less CPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

from meters.sources.base import EnergySample
from meters.types import MeterError

# NVML error class name -> what it means for a user reading our logs. Classes are looked up by
# name on the injected module, so a fake module with the same names maps the same way.
NVML_ERROR_MESSAGES: dict[str, str] = {
    "NVMLError_GpuIsLost": "GPU is lost (fell off the bus or was reset)",
    "NVMLError_GpuNotFound": "GPU not found",
    "NVMLError_ResetRequired": "GPU needs a reset before it answers again",
    "NVMLError_NotSupported": "this GPU does not support the call",
    "NVMLError_NoPermission": "no permission to read the GPU",
    "NVMLError_DriverNotLoaded": "the NVIDIA driver is not loaded",
    "NVMLError_LibraryNotFound": "libnvidia-ml.so was not found (no NVIDIA driver installed?)",
    "NVMLError_FunctionNotFound": "the NVIDIA driver is too old for this call",
    "NVMLError_LibRmVersionMismatch": "NVML library and kernel driver versions differ",
    "NVMLError_Uninitialized": "NVML is not initialised",
    "NVMLError_InvalidArgument": "no such GPU index",
    "NVMLError_NotFound": "GPU not found",
    "NVMLError_Timeout": "the GPU did not answer in time",
    "NVMLError_Unknown": "NVML failed with an unknown error",
}

MJ_PER_J = 1000.0
MW_PER_W = 1000.0

# nvidia-ml-py's field ids and return codes (nvml.h), used when the module lacks the names.
FI_TOTAL_ENERGY_CONSUMPTION = 83  # NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION, unsigned long long mJ
FI_POWER_INSTANT = 186  # NVML_FI_DEV_POWER_INSTANT, unsigned int mW
NVML_SUCCESS = 0
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_INVALID_ARGUMENT = 2
_FIELD_UNKNOWN = (NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_INVALID_ARGUMENT)
ReadVia = Literal["energy", "fields"]


@dataclass(slots=True)
class _GpuState:
    """What the source remembers of one GPU between reads."""

    index: int
    handle: Any = None
    has_counter: bool = True
    last_raw_j: float | None = None  # the driver's counter at the last read, in J
    energy_j: float = 0.0  # our own cumulative energy: never goes backwards
    power_w: float | None = None
    last_time_s: float | None = None
    resets: int = 0
    power_field: bool = True  # NVML_FI_DEV_POWER_INSTANT answers (fields mode)


class NvmlSource:
    """Cumulative energy of local GPUs (by NVML index).

    Nothing is called at construction: NVML initialises on the first `read` (on the sampler's
    thread), and again after a failure, so a GPU that comes back is picked up. The reported
    energy starts at the driver's counter and then only grows.
    """

    name = "nvml"

    def __init__(
        self,
        gpus: Sequence[int] = (0,),
        *,
        nvml: ModuleType | None = None,
        clock: Callable[[], float] = time.monotonic,
        read_via: ReadVia = "energy",
    ) -> None:
        if not gpus:
            raise ValueError("NvmlSource needs at least one GPU index")
        if read_via not in ("energy", "fields"):
            raise ValueError(f"unknown read_via {read_via!r} (energy or fields)")
        self.read_via = read_via
        self._nvml = nvml
        self._clock = clock
        self._gpus = [_GpuState(index=int(i)) for i in gpus]
        self._initialised = False

    @property
    def gpu_ids(self) -> list[str]:
        """The GPU ids this source reports, as strings of the NVML indices."""
        return [str(g.index) for g in self._gpus]

    @property
    def resets(self) -> int:
        """How many counter resets the source has absorbed."""
        return sum(g.resets for g in self._gpus)

    def read(self) -> EnergySample:
        """Read every GPU now. Blocking; raises `MeterError` on any NVML failure."""
        nvml = self._module()
        try:
            self._ensure_initialised(nvml)
            now_s = self._clock()
            for gpu in self._gpus:
                self._read_gpu(nvml, gpu, now_s)
        except nvml.NVMLError as exc:
            # Handles may be stale after a reset: look them up again on the next read.
            for gpu in self._gpus:
                gpu.handle = None
            raise self._translate(nvml, exc) from exc
        return EnergySample(
            time_s=now_s,
            energy_j={str(g.index): g.energy_j for g in self._gpus},
            power_w={str(g.index): g.power_w for g in self._gpus if g.power_w is not None},
        )

    def gpu_names(self) -> list[str]:
        """Marketing names of the GPUs (e.g. "NVIDIA H100 80GB HBM3"). Blocking."""
        nvml = self._module()
        try:
            self._ensure_initialised(nvml)
            names = []
            for gpu in self._gpus:
                raw = nvml.nvmlDeviceGetName(self._handle(nvml, gpu))
                names.append(raw.decode() if isinstance(raw, bytes) else str(raw))
        except nvml.NVMLError as exc:
            raise self._translate(nvml, exc) from exc
        return names

    def close(self) -> None:
        """Shut NVML down (once per successful init)."""
        if not self._initialised or self._nvml is None:
            return
        self._initialised = False
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError as exc:
            raise self._translate(self._nvml, exc) from exc

    # -- internals ------------------------------------------------------------------------

    def _module(self) -> ModuleType:
        if self._nvml is None:
            try:
                import pynvml
            except ImportError as exc:  # the dependency is declared; this is a broken install
                raise MeterError(f"nvml: nvidia-ml-py is not importable ({exc})") from exc
            self._nvml = pynvml
        return self._nvml

    def _ensure_initialised(self, nvml: ModuleType) -> None:
        if self._initialised:
            return
        nvml.nvmlInit()
        self._initialised = True
        count = int(nvml.nvmlDeviceGetCount())
        missing = [g.index for g in self._gpus if not 0 <= g.index < count]
        if missing:
            raise MeterError(f"nvml: GPU index {missing} not present ({count} GPU(s) visible)")

    def _handle(self, nvml: ModuleType, gpu: _GpuState) -> Any:
        if gpu.handle is None:
            gpu.handle = nvml.nvmlDeviceGetHandleByIndex(gpu.index)
        return gpu.handle

    def _read_gpu(self, nvml: ModuleType, gpu: _GpuState, now_s: float) -> None:
        handle = self._handle(nvml, gpu)
        if self.read_via == "fields" and gpu.has_counter:
            raw_j, power_w = self._read_fields(nvml, handle, gpu)
        else:
            raw_j = None
            if gpu.has_counter:
                try:
                    raw_j = nvml.nvmlDeviceGetTotalEnergyConsumption(handle) / MJ_PER_J
                except nvml.NVMLError_NotSupported:
                    gpu.has_counter = False  # pre-Volta: integrate power from now on
            power_w = self._power_w(nvml, handle, required=raw_j is None)
        dt_s = 0.0 if gpu.last_time_s is None else max(0.0, now_s - gpu.last_time_s)
        if raw_j is not None:
            if gpu.last_raw_j is None:
                if gpu.last_time_s is None:
                    gpu.energy_j = raw_j  # first read: start from the driver's counter
            elif raw_j >= gpu.last_raw_j:
                gpu.energy_j += raw_j - gpu.last_raw_j
            else:
                # Reset: the counter restarted. Fill this tick from power × time.
                gpu.resets += 1
                gpu.energy_j += self._fill_power_w(gpu, power_w) * dt_s
            gpu.last_raw_j = raw_j
        else:
            # NVML's power reading is an average over the sensor's recent window; the
            # rectangle rule with the newest reading is what Zeus and CodeCarbon do.
            gpu.energy_j += self._fill_power_w(gpu, power_w) * dt_s
        gpu.power_w = power_w if power_w is not None else gpu.power_w
        gpu.last_time_s = now_s

    def _read_fields(
        self, nvml: ModuleType, handle: Any, gpu: _GpuState
    ) -> tuple[float | None, float | None]:
        """Energy (J) and power (W) of one GPU in one `nvmlDeviceGetFieldValues` call. A field
        the GPU lacks answers NOT_SUPPORTED in its own return code: no counter means power
        integration from then on; no instant power means `nvmlDeviceGetPowerUsage`."""
        energy_id = getattr(
            nvml, "NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION", FI_TOTAL_ENERGY_CONSUMPTION
        )
        power_id = getattr(nvml, "NVML_FI_DEV_POWER_INSTANT", FI_POWER_INSTANT)
        ids = [energy_id, power_id] if gpu.power_field else [energy_id]
        values = nvml.nvmlDeviceGetFieldValues(handle, ids)
        energy, power = values[0], values[1] if gpu.power_field else None
        raw_j: float | None = None
        if energy.nvmlReturn == NVML_SUCCESS:
            raw_j = int(energy.value.ullVal) / MJ_PER_J
        elif energy.nvmlReturn == NVML_ERROR_NOT_SUPPORTED:
            gpu.has_counter = False  # pre-Volta: integrate power from now on
        else:
            raise self._field_error(gpu, "energy", int(energy.nvmlReturn))
        power_w: float | None = None
        if power is not None and power.nvmlReturn == NVML_SUCCESS:
            power_w = int(power.value.uiVal) / MW_PER_W
        elif power is not None and power.nvmlReturn not in _FIELD_UNKNOWN:
            raise self._field_error(gpu, "power", int(power.nvmlReturn))
        else:  # a driver older than the instant-power field answers NOT_SUPPORTED or INVALID
            gpu.power_field = False
            power_w = self._power_w(nvml, handle, required=raw_j is None)
        return raw_j, power_w

    @staticmethod
    def _field_error(gpu: _GpuState, field: str, code: int) -> MeterError:
        known = {15: "GPU is lost (fell off the bus or was reset)", 4: "no permission to read"}
        what = known.get(code, f"NVML return code {code}")
        return MeterError(f"nvml: GPU {gpu.index} {field} field: {what}")

    @staticmethod
    def _fill_power_w(gpu: _GpuState, power_w: float | None) -> float:
        if power_w is not None:
            return power_w
        if gpu.power_w is not None:
            return gpu.power_w
        raise MeterError(f"nvml: GPU {gpu.index} counter reset and no power reading to fill it")

    @staticmethod
    def _power_w(nvml: ModuleType, handle: Any, *, required: bool) -> float | None:
        try:
            return float(nvml.nvmlDeviceGetPowerUsage(handle)) / MW_PER_W
        except nvml.NVMLError_NotSupported:
            if required:
                raise
            return None

    @staticmethod
    def _translate(nvml: ModuleType, exc: BaseException) -> MeterError:
        for class_name, message in NVML_ERROR_MESSAGES.items():
            error_class = getattr(nvml, class_name, None)
            if isinstance(error_class, type) and isinstance(exc, error_class):
                return MeterError(f"nvml: {message}")
        return MeterError(f"nvml: {exc}")


def visible_gpu_indices(nvml: ModuleType | None = None) -> list[int]:
    """Indices of every GPU NVML sees on this host (for "all GPUs"). Blocking."""
    source = NvmlSource((0,), nvml=nvml)
    module = source._module()
    try:
        module.nvmlInit()
        try:
            return list(range(int(module.nvmlDeviceGetCount())))
        finally:
            module.nvmlShutdown()
    except module.NVMLError as exc:
        raise NvmlSource._translate(module, exc) from exc
