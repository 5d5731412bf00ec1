"""Estimated GPU energy when nothing is measured (methodology §3).

EcoLogits' published method (genai-impact/ecologits, `docs/methodology/llm_inference.md`;
formulas in `ecologits/impacts/llm.py`, release 0.11.3; constants in `meters.constants`),
restated here in joules and seconds:

- energy per output token per GPU: f_E(P, B) = a · e^(b·B) · P + c  [Wh], P active parameters
  in billions, B the batch size;
- GPUs: ceil(1.2 · P_total · 2 bytes / M_GPU), rounded up to a power of two, M_GPU the
  accelerator's memory (80 GB for an H100, EcoLogits' only case; 141 GB for an H200, …);
- generation time: ΔT = min(output tokens · (α_L · P + β_L · B + γ_L), measured latency), or
  output tokens / tps + ttft where EcoLogits knows the provider's measured speed;
- E_gpu = output tokens · f_E · GPUs;  E_server = ΔT · P_server · GPUs / 8 / B, P_server being
  1.2 kW per 8-GPU server, i.e. 150 W per GPU.

The request's share of the hardware (for embodied carbon) is ΔT / B of the GPUs the model
needs: `Measurement.hardware_s` = ΔT / B with `Measurement.gpus` = GPUs. A model whose size
EcoLogits publishes as a range is estimated at both ends (`Measurement.bounds`), and its
central figure is their mean, as EcoLogits reports it.

The model catalogue (EcoLogits' `models.json`) is `meters.catalog`.
"""

from __future__ import annotations

import math

from meters.calibration import Calibrations
from meters.catalog import ModelCatalog, ModelSpec, catalog_source
from meters.constants import (
    BYTES_PER_PARAMETER,
    DEFAULT_ACCELERATOR,
    DEFAULT_BATCH_SIZE,
    DEFAULT_PUE,
    DEFAULT_SERVER_POWER_W_PER_GPU,
    DEFAULT_WUE_L_PER_KWH,
    GPU_ENERGY_A_WH,
    GPU_ENERGY_B,
    GPU_ENERGY_C_WH,
    LATENCY_A_S,
    LATENCY_B_S,
    LATENCY_C_S,
    MEMORY_OVERHEAD,
    accelerator,
)
from meters.footprint import compute_footprint, footprint_record
from meters.intensity import IntensityTable
from meters.types import Hardware, Measurement, MeterError, SiteFactors

# EcoLogits divides by an H100's 80 GB; the estimator by the upstream's accelerator's memory.
DEFAULT_ACCELERATOR_MEMORY_GB = accelerator(DEFAULT_ACCELERATOR).memory_gb

__all__ = [
    "Estimator",
    "ModelCatalog",
    "ModelSpec",
    "UnknownModel",
    "catalog_source",
    "energy_per_output_token_j",
    "estimate_gpu_energy_j",
    "estimate_server_energy_j",
    "generation_time_s",
    "gpu_count",
    "offline_footprint",
]

J_PER_WH = 3600.0


class UnknownModel(MeterError):
    """Neither the upstream's hardware settings nor EcoLogits' catalogue give the model's
    parameter count, so its energy cannot be estimated."""


# ---- the pure formulas ------------------------------------------------------------------


def energy_per_output_token_j(
    active_params_b: float, batch_size: int = DEFAULT_BATCH_SIZE
) -> float:
    """f_E(P, B) in joules: GPU energy per output token on one GPU."""
    _check_batch(batch_size)
    wh = GPU_ENERGY_A_WH * math.exp(GPU_ENERGY_B * batch_size) * active_params_b + GPU_ENERGY_C_WH
    return wh * J_PER_WH


def gpu_count(
    total_params_b: float, accelerator_memory_gb: float = DEFAULT_ACCELERATOR_MEMORY_GB
) -> int:
    """GPUs needed to hold the model's weights, rounded up to a power of two (at least 1)."""
    if total_params_b <= 0:
        raise ValueError(f"total_params_b must be positive: {total_params_b}")
    if accelerator_memory_gb <= 0:
        raise ValueError(f"accelerator_memory_gb must be positive: {accelerator_memory_gb}")
    needed_gb = MEMORY_OVERHEAD * total_params_b * BYTES_PER_PARAMETER
    gpus = max(1, math.ceil(needed_gb / accelerator_memory_gb))
    return int(2 ** math.ceil(math.log2(gpus)))


def generation_time_s(
    active_params_b: float,
    output_tokens: int,
    batch_size: int = DEFAULT_BATCH_SIZE,
    latency_s: float = math.inf,
    *,
    tokens_per_s: float | None = None,
    ttft_s: float | None = None,
) -> float:
    """ΔT: the time the model's GPUs spend generating, capped by the measured latency."""
    _check_batch(batch_size)
    if tokens_per_s is not None and tokens_per_s > 0:
        per_token_s = 1.0 / tokens_per_s
    else:
        per_token_s = LATENCY_A_S * active_params_b + LATENCY_B_S * batch_size + LATENCY_C_S
    modelled_s = output_tokens * per_token_s + (ttft_s or 0.0)
    return min(modelled_s, latency_s)


def estimate_gpu_energy_j(
    active_params_b: float,
    total_params_b: float,
    output_tokens: int,
    batch_size: int = DEFAULT_BATCH_SIZE,
    accelerator_memory_gb: float = DEFAULT_ACCELERATOR_MEMORY_GB,
) -> float:
    """E_gpu: output tokens · f_E(P_active, B) · GPUs(P_total), in joules."""
    gpus = gpu_count(total_params_b, accelerator_memory_gb)
    return output_tokens * energy_per_output_token_j(active_params_b, batch_size) * gpus


def estimate_server_energy_j(
    generation_s: float,
    gpus: int,
    batch_size: int = DEFAULT_BATCH_SIZE,
    server_power_w_per_gpu: float = DEFAULT_SERVER_POWER_W_PER_GPU,
) -> float:
    """E_server: the request's 1/B share of the non-GPU server power of its GPUs over ΔT."""
    _check_batch(batch_size)
    return generation_s * server_power_w_per_gpu * gpus / batch_size


def _check_batch(batch_size: int) -> None:
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive: {batch_size}")


# ---- the estimator ----------------------------------------------------------------------


class Estimator:
    """Estimates one request's energy on an upstream where nothing is measured.

    With a calibration for (model, accelerator) in `calibrations`, GPU energy comes from that
    fit (basis `calibrated:<model>@<accelerator>`); otherwise from EcoLogits' regression (basis
    `ecologits`). Parameter counts come from `hardware` or, when it has none, from the catalogue
    (with the provider's measured speed where it has one). The GPU count divides the model's
    memory by the accelerator's (`constants.ACCELERATORS`, or `accelerator_memory_gb`).

    Serve mode (every upstream) and `footprint estimate` (`offline_footprint`) both estimate
    through `estimate`, then `compute_footprint`: one code path.
    """

    def __init__(
        self,
        hardware: Hardware,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        server_power_w_per_gpu: float = DEFAULT_SERVER_POWER_W_PER_GPU,
        calibrations: Calibrations | None = None,
        accelerator_memory_gb: float | None = None,
        catalog: ModelCatalog | None = None,
    ) -> None:
        _check_batch(batch_size)
        if server_power_w_per_gpu < 0:
            raise ValueError("server_power_w_per_gpu cannot be negative")
        if hardware.gpus <= 0:
            raise ValueError("hardware.gpus must be positive")
        if accelerator_memory_gb is None:
            accelerator_memory_gb = accelerator(hardware.accelerator).memory_gb
        if accelerator_memory_gb <= 0:
            raise ValueError("accelerator_memory_gb must be positive")
        self.hardware = hardware
        self.batch_size = batch_size
        self.server_power_w_per_gpu = server_power_w_per_gpu
        self.accelerator_memory_gb = accelerator_memory_gb
        self._calibrations = calibrations
        if catalog is None and hardware.active_params_b is None and hardware.total_params_b is None:
            # Only then is the catalogue consulted: an upstream that gives its model's size
            # never loads EcoLogits' (1.7 MB resident).
            catalog = ModelCatalog.from_ecologits()
        self._catalog = catalog

    def model_spec(self, model: str) -> ModelSpec | None:
        """The parameter counts used for `model`: the hardware's when set, else the catalogue's."""
        active = self.hardware.active_params_b
        total = self.hardware.total_params_b
        if active is not None or total is not None:
            active = active if active is not None else total
            total = total if total is not None else active
            assert active is not None and total is not None
            return ModelSpec(model, active, total, source="hardware")
        assert self._catalog is not None  # built above whenever the hardware gives no count
        return self._catalog.lookup(model)

    def estimate(
        self, model: str, prompt_tokens: int, output_tokens: int, latency_s: float
    ) -> Measurement:
        """The estimated energy of one request (`latency_s` may be `math.inf` when unknown).

        For a model whose size is a published range, the measurement's `bounds` are the
        estimates at the range's low and high ends and its figures their mean (EcoLogits'
        central value). Raises `UnknownModel` when neither the hardware settings, the catalogue
        nor a calibration can say what the model costs."""
        if prompt_tokens < 0 or output_tokens < 0:
            raise ValueError("token counts cannot be negative")
        if math.isnan(latency_s) or latency_s < 0:
            raise ValueError(f"latency_s must be non-negative: {latency_s}")
        spec = self.model_spec(model)
        calibration = (
            self._calibrations.fit(model, self.hardware.accelerator)
            if self._calibrations is not None
            else None
        )
        if spec is None and calibration is None:
            raise UnknownModel(
                f"cannot estimate the energy of model {model!r}: it is not in EcoLogits' "
                "catalogue; give its parameter count in billions ([upstreams.hardware] "
                "active_params_b, and total_params_b for a mixture of experts; or "
                "`footprint estimate --params-b`)"
            )
        duration_s = latency_s if math.isfinite(latency_s) else None
        if calibration is not None:
            # A fit of this upstream's own measurements: one figure, no range.
            if spec is not None:
                gpus = gpu_count(spec.total_params_b, self.accelerator_memory_gb)
                generation_s = self._generation_s(spec, output_tokens, latency_s)
            else:
                # Of unknown size: the configured GPUs, busy for the whole request.
                gpus = self.hardware.gpus
                generation_s = duration_s or 0.0
            return self._measurement(
                calibration.gpu_energy_j(prompt_tokens, output_tokens),
                gpus,
                generation_s,
                calibration.name,
                duration_s,
            )
        assert spec is not None
        if not spec.ranged:
            return self._ecologits(spec, output_tokens, latency_s, duration_s)
        low, high = (
            self._ecologits(spec.bound(end), output_tokens, latency_s, duration_s) for end in (0, 1)
        )
        return _mean(low, high)

    def _ecologits(
        self, spec: ModelSpec, output_tokens: int, latency_s: float, duration_s: float | None
    ) -> Measurement:
        gpus = gpu_count(spec.total_params_b, self.accelerator_memory_gb)
        per_token_j = energy_per_output_token_j(spec.active_params_b, self.batch_size)
        generation_s = self._generation_s(spec, output_tokens, latency_s)
        return self._measurement(
            output_tokens * per_token_j * gpus, gpus, generation_s, "ecologits", duration_s
        )

    def _generation_s(self, spec: ModelSpec, output_tokens: int, latency_s: float) -> float:
        return generation_time_s(
            spec.active_params_b,
            output_tokens,
            self.batch_size,
            latency_s,
            tokens_per_s=spec.tokens_per_s,
            ttft_s=spec.ttft_s,
        )

    def _measurement(
        self,
        gpu_energy_j: float,
        gpus: int,
        generation_s: float,
        basis: str,
        duration_s: float | None,
    ) -> Measurement:
        # The request holds its 1/B share of the model's GPUs (and their server) for ΔT.
        return Measurement(
            gpu_energy_j=gpu_energy_j,
            server_energy_j=estimate_server_energy_j(
                generation_s, gpus, self.batch_size, self.server_power_w_per_gpu
            ),
            hardware_s=generation_s / self.batch_size,
            method="estimated",
            basis=basis,
            duration_s=duration_s if duration_s is not None else generation_s,
            gpus=gpus,
        )


def _mean(low: Measurement, high: Measurement) -> Measurement:
    """The central measurement of a range: every figure the mean of the two ends'. Embodied
    carbon is linear in GPU-seconds (hardware_s · gpus), so where the ends need different GPU
    counts the mean GPU-seconds are expressed over the high end's GPUs."""
    assert low.gpus is not None and high.gpus is not None
    gpu_seconds = (low.hardware_s * low.gpus + high.hardware_s * high.gpus) / 2.0
    return Measurement(
        gpu_energy_j=(low.gpu_energy_j + high.gpu_energy_j) / 2.0,
        server_energy_j=(low.server_energy_j + high.server_energy_j) / 2.0,
        hardware_s=gpu_seconds / high.gpus,
        method=high.method,
        basis=high.basis,
        duration_s=max(low.duration_s, high.duration_s),
        gpus=high.gpus,
        bounds=(low, high),
    )


# ---- offline ------------------------------------------------------------------------------


def offline_footprint(
    model: str,
    params_b: float | None,
    input_tokens: int,
    output_tokens: int,
    zone: str,
    *,
    pue: float = DEFAULT_PUE,
    wue_l_per_kwh: float = DEFAULT_WUE_L_PER_KWH,
    accelerator: str = DEFAULT_ACCELERATOR,
    latency_s: float | None = None,
    server_power_w_per_gpu: float = DEFAULT_SERVER_POWER_W_PER_GPU,
    batch_size: int = DEFAULT_BATCH_SIZE,
    table: IntensityTable | None = None,
    catalog: ModelCatalog | None = None,
) -> dict[str, object]:
    """The footprint object of `contract.md` for one hypothetical request, computed offline
    with the shipped intensity table (`footprint estimate`).

    The estimator is built exactly as serve mode builds an upstream's (an `Estimator` over
    `Hardware(accelerator, gpus=1, params)`), so the figure is the one the proxy would give
    for the same request: the catalogue's speed data and parameter ranges are kept.
    `params_b` sets the model's parameter count (dense); None looks the model up in EcoLogits'
    catalogue. Raises `ValueError` for an impossible input, `MeterError` for an unknown model
    or zone."""
    _check_offline_inputs(input_tokens, output_tokens, pue, wue_l_per_kwh, params_b, latency_s)
    table = table if table is not None else IntensityTable.shipped()
    catalog = catalog if catalog is not None else ModelCatalog.from_ecologits()
    intensity = table.lookup(zone)
    hardware = Hardware(accelerator=accelerator, active_params_b=params_b, total_params_b=params_b)
    estimator = Estimator(
        hardware,
        batch_size=batch_size,
        server_power_w_per_gpu=server_power_w_per_gpu,
        catalog=catalog,
    )
    measurement = estimator.estimate(
        model, input_tokens, output_tokens, math.inf if latency_s is None else latency_s
    )
    spec = estimator.model_spec(model)
    assert spec is not None  # estimate() raised UnknownModel otherwise
    site = SiteFactors(zone=zone, pue=pue, wue_l_per_kwh=wue_l_per_kwh)
    footprint = compute_footprint(measurement, site, hardware, intensity)
    record = footprint_record(footprint, None, input_tokens, output_tokens)
    record.update(
        {
            "model": model,
            "basis": footprint.basis,
            "active_params_b": spec.active_params_b,
            "total_params_b": spec.total_params_b,
            "gpus": footprint.gpus,
            "intensity_detail": footprint.intensity_detail,
            "intensity_at": footprint.intensity_at,
            "methodology_version": footprint.methodology_version,
            "catalog": spec.source,
        }
    )
    if spec.tokens_per_s is not None:
        record["tokens_per_s"] = spec.tokens_per_s
    if spec.ttft_s is not None:
        record["ttft_s"] = spec.ttft_s
    if measurement.bounds is not None:
        record["active_params_b_range"] = list(spec.active_range_b or (spec.active_params_b,) * 2)
        record["total_params_b_range"] = list(spec.total_range_b or (spec.total_params_b,) * 2)
        record["gpus_range"] = [bound.gpus for bound in measurement.bounds]
    return record


def _check_offline_inputs(
    input_tokens: int,
    output_tokens: int,
    pue: float,
    wue_l_per_kwh: float,
    params_b: float | None,
    latency_s: float | None,
) -> None:
    if input_tokens < 0 or output_tokens < 0:
        raise ValueError("token counts cannot be negative")
    if not (math.isfinite(pue) and pue >= 1.0):
        raise ValueError(f"pue must be at least 1 (facility energy over IT energy): {pue}")
    if not (math.isfinite(wue_l_per_kwh) and wue_l_per_kwh >= 0):
        raise ValueError(f"wue_l_per_kwh cannot be negative: {wue_l_per_kwh}")
    if params_b is not None and not (math.isfinite(params_b) and params_b > 0):
        raise ValueError(f"params_b must be positive: {params_b}")
    if latency_s is not None and not (math.isfinite(latency_s) and latency_s >= 0):
        raise ValueError(f"latency_s cannot be negative: {latency_s}")
