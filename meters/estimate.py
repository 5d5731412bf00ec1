"""Estimated GPU energy when nothing is measured (methodology §3).

EcoLogits' published method (genai-impact/ecologits, `docs/methodology/llm_inference.md`;
formulas in `ecologits/impacts/llm.py`, release 0.11.3), restated here in joules and seconds:

- energy per output token per GPU: f_E(P, B) = a · e^(b·B) · P + c  [Wh], P active parameters
  in billions, B the batch size;
- GPUs: ceil(1.2 · P_total · 2 bytes / 80 GB), rounded up to a power of two;
- generation time: ΔT = min(output tokens · (α_L · P + β_L · B + γ_L), measured latency), or
  output tokens / tps + ttft where EcoLogits knows the provider's measured speed;
- E_gpu = output tokens · f_E · GPUs;  E_server = ΔT · P_server · GPUs / 8 / B, P_server being
  1.2 kW per 8-GPU server, i.e. 150 W per GPU.

The request's share of the hardware (for embodied carbon) is ΔT / B of the GPUs the model
needs. `Measurement.hardware_s` is expressed against the upstream's configured GPU count
(`Hardware.gpus`), as the measured path does, so it is ΔT / B · GPUs / Hardware.gpus.

This module is the only one that imports `ecologits` (for its model catalogue).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from meters.calibration import Calibrations
from meters.footprint import compute_footprint, footprint_record
from meters.intensity import IntensityTable
from meters.types import Hardware, Measurement, MeterError, SiteFactors

__all__ = [
    "Estimator",
    "ModelCatalog",
    "ModelSpec",
    "UnknownModel",
    "energy_per_output_token_j",
    "estimate_gpu_energy_j",
    "estimate_server_energy_j",
    "generation_time_s",
    "gpu_count",
    "offline_footprint",
]

J_PER_WH = 3600.0

# f_E(P, B) = a · e^(b·B) · P + c, Wh per output token per GPU; fit to ML.ENERGY leaderboard
# H100 data. Source: ecologits 0.11.3 `impacts/llm.py` (GPU_ENERGY_ALPHA/BETA/GAMMA);
# methodology.md §3.
GPU_ENERGY_A_WH = 1.1665273170451914e-06
GPU_ENERGY_B = -0.011205921025579175
GPU_ENERGY_C_WH = 4.052928146734005e-05

# Seconds per output token = α_L · P + β_L · B + γ_L. Source: ecologits 0.11.3 `impacts/llm.py`
# (LATENCY_ALPHA/BETA/GAMMA); methodology.md §3.
LATENCY_A_S = 0.0006785088094353663
LATENCY_B_S = 0.0003119310311688259
LATENCY_C_S = 0.019473717579473387

# Weights in 16 bits (2 bytes per parameter) with 20 % overhead for activations and KV cache;
# 80 GB per GPU (H100). Source: ecologits 0.11.3 `impacts/llm.py` (MODEL_QUANTIZATION_BITS,
# model_required_memory, GPU_MEMORY); methodology.md §3.
BYTES_PER_PARAMETER = 2.0
MEMORY_OVERHEAD = 1.2
DEFAULT_ACCELERATOR_MEMORY_GB = 80.0

# Requests served together by one model instance. Source: ecologits 0.11.3 `impacts/llm.py`
# (BATCH_SIZE); methodology.md §3.
DEFAULT_BATCH_SIZE = 64

# Non-GPU server power while serving: 1.2 kW per 8-GPU server (EcoLogits, from BoaviztAPI for
# AWS p5.48xlarge), i.e. 150 W per GPU. Source: ecologits 0.11.3 `impacts/llm.py`
# (SERVER_POWER, SERVER_GPUS); methodology.md §4.
DEFAULT_SERVER_POWER_W_PER_GPU = 150.0

CATALOG_SOURCE = "ecologits-0.11.3:models.json"


class UnknownModel(MeterError):
    """Neither the upstream's hardware settings nor EcoLogits' catalogue give the model's
    parameter count, so its energy cannot be estimated."""


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What the estimator needs to know about a model."""

    name: str
    active_params_b: float
    total_params_b: float
    tokens_per_s: float | None = None  # the provider's measured output speed, when known
    ttft_s: float | None = None  # the provider's measured time to first token, when known
    source: str = ""


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


# ---- the model catalogue ----------------------------------------------------------------


class ModelCatalog:
    """Parameter counts of known models, looked up leniently by name: case does not matter,
    and an organisation or provider prefix (`openai/`, `meta-llama/`) may be present or not."""

    def __init__(self, specs: Iterable[ModelSpec]) -> None:
        self._by_key: dict[str, ModelSpec] = {}
        for spec in specs:
            for key in _keys_for(spec.name):
                self._by_key.setdefault(key, spec)

    @classmethod
    def from_ecologits(cls) -> ModelCatalog:
        """The catalogue shipped with the `ecologits` package (`data/models.json`). A parameter
        count published as a range is taken at its midpoint."""
        from ecologits.model_repository import ParametersMoE, models

        specs: list[ModelSpec] = []
        for model in models.list_models():
            params = model.architecture.parameters
            if isinstance(params, ParametersMoE):
                total, active = _midpoint(params.total), _midpoint(params.active)
            else:
                total = active = _midpoint(params)
            deployment = model.deployment
            specs.append(
                ModelSpec(
                    name=model.name,
                    active_params_b=active,
                    total_params_b=total,
                    tokens_per_s=deployment.tps if deployment else None,
                    ttft_s=deployment.ttft if deployment else None,
                    source=f"{CATALOG_SOURCE}:{model.provider.value}/{model.name}",
                )
            )
        return cls(specs)

    def lookup(self, model: str) -> ModelSpec | None:
        """The spec of `model`, or None when the catalogue does not know it."""
        for key in _keys_for(model):
            spec = self._by_key.get(key)
            if spec is not None:
                return spec
        return None


def _midpoint(value: Any) -> float:
    if hasattr(value, "min") and hasattr(value, "max"):
        return (float(value.min) + float(value.max)) / 2.0
    return float(value)


def _keys_for(name: str) -> list[str]:
    """The names a model may be asked for by: as given, without its prefix, and (for Meta's
    models, renamed on Hugging Face) without the `meta-` of `Meta-Llama-…`."""
    full = name.strip().lower()
    keys = [full]
    base = full.rsplit("/", 1)[-1]
    if base not in keys:
        keys.append(base)
    if base.startswith("meta-llama-"):
        keys.append(base.removeprefix("meta-"))
    return keys


# ---- the estimator ----------------------------------------------------------------------


class Estimator:
    """Estimates one request's energy on an upstream where nothing is measured.

    With a calibration for (model, accelerator) in `calibrations`, GPU energy comes from that
    fit (basis `calibrated:<model>@<accelerator>`); otherwise from EcoLogits' regression (basis
    `ecologits`). Parameter counts come from `hardware` or, when it has none, from the catalogue.
    """

    def __init__(
        self,
        hardware: Hardware,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        server_power_w_per_gpu: float = DEFAULT_SERVER_POWER_W_PER_GPU,
        calibrations: Calibrations | None = None,
        accelerator_memory_gb: float = DEFAULT_ACCELERATOR_MEMORY_GB,
        catalog: ModelCatalog | None = None,
    ) -> None:
        _check_batch(batch_size)
        if server_power_w_per_gpu < 0:
            raise ValueError("server_power_w_per_gpu cannot be negative")
        if hardware.gpus <= 0:
            raise ValueError("hardware.gpus must be positive")
        self.hardware = hardware
        self.batch_size = batch_size
        self.server_power_w_per_gpu = server_power_w_per_gpu
        self.accelerator_memory_gb = accelerator_memory_gb
        self._calibrations = calibrations
        self._catalog = catalog if catalog is not None else ModelCatalog.from_ecologits()

    def model_spec(self, model: str) -> ModelSpec | None:
        """The parameter counts used for `model`: the hardware's when set, else the catalogue's."""
        active = self.hardware.active_params_b
        total = self.hardware.total_params_b
        if active is not None or total is not None:
            active = active if active is not None else total
            total = total if total is not None else active
            assert active is not None and total is not None
            return ModelSpec(model, active, total, source="hardware")
        return self._catalog.lookup(model)

    def estimate(
        self, model: str, prompt_tokens: int, output_tokens: int, latency_s: float
    ) -> Measurement:
        """The estimated energy of one request (`latency_s` may be `math.inf` when unknown).

        Raises `UnknownModel` when neither the hardware settings, the catalogue nor a
        calibration can say what the model costs."""
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
        if spec is not None:
            gpus = gpu_count(spec.total_params_b, self.accelerator_memory_gb)
            generation_s = generation_time_s(
                spec.active_params_b,
                output_tokens,
                self.batch_size,
                latency_s,
                tokens_per_s=spec.tokens_per_s,
                ttft_s=spec.ttft_s,
            )
        else:
            # Calibrated but of unknown size: the configured GPUs, busy for the whole request.
            gpus = self.hardware.gpus
            generation_s = latency_s if math.isfinite(latency_s) else 0.0
        if calibration is not None:
            gpu_energy_j = calibration.gpu_energy_j(prompt_tokens, output_tokens)
            basis = calibration.name
        else:
            assert spec is not None
            per_token_j = energy_per_output_token_j(spec.active_params_b, self.batch_size)
            gpu_energy_j = output_tokens * per_token_j * gpus
            basis = "ecologits"
        server_energy_j = estimate_server_energy_j(
            generation_s, gpus, self.batch_size, self.server_power_w_per_gpu
        )
        hardware_s = generation_s / self.batch_size * gpus / self.hardware.gpus
        return Measurement(
            gpu_energy_j=gpu_energy_j,
            server_energy_j=server_energy_j,
            hardware_s=hardware_s,
            method="estimated",
            basis=basis,
            duration_s=latency_s if math.isfinite(latency_s) else generation_s,
        )


# ---- offline ------------------------------------------------------------------------------


def offline_footprint(
    model: str,
    params_b: float | None,
    input_tokens: int,
    output_tokens: int,
    zone: str,
    *,
    pue: float = 1.2,
    wue_l_per_kwh: float = 0.569,
    accelerator: str = "H100-SXM",
    latency_s: float | None = None,
    table: IntensityTable | None = None,
    catalog: ModelCatalog | None = None,
) -> dict[str, object]:
    """The footprint object of `contract.md` for one hypothetical request, computed offline
    with the estimator and the shipped intensity table (`footprint estimate`).

    `params_b` sets the model's parameter count (dense); None looks the model up in EcoLogits'
    catalogue. Defaults: PUE 1.2 and on-site WUE 0.569 L/kWh, EcoLogits' values for
    OpenAI/Azure (ecologits 0.11.3 `tracers/utils.py`; methodology §4 and §6)."""
    table = table if table is not None else IntensityTable.shipped()
    catalog = catalog if catalog is not None else ModelCatalog.from_ecologits()
    intensity = table.lookup(zone)
    hardware = Hardware(accelerator=accelerator, active_params_b=params_b, total_params_b=params_b)
    estimator = Estimator(hardware, catalog=catalog)
    spec = estimator.model_spec(model)
    if spec is not None:
        hardware = Hardware(
            accelerator=accelerator,
            gpus=gpu_count(spec.total_params_b),
            active_params_b=spec.active_params_b,
            total_params_b=spec.total_params_b,
        )
        estimator = Estimator(hardware, catalog=catalog)
    measurement = estimator.estimate(
        model, input_tokens, output_tokens, math.inf if latency_s is None else latency_s
    )
    site = SiteFactors(zone=zone, pue=pue, wue_l_per_kwh=wue_l_per_kwh)
    footprint = compute_footprint(measurement, site, hardware, intensity)
    record = footprint_record(footprint, None, input_tokens, output_tokens)
    assert spec is not None
    record.update(
        {
            "model": model,
            "basis": footprint.basis,
            "active_params_b": spec.active_params_b,
            "total_params_b": spec.total_params_b,
            "gpus": hardware.gpus,
            "intensity_source": footprint.intensity_source,
        }
    )
    return record
