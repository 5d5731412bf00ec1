"""From a request's energy to its footprint: facility energy, carbon and water (methodology §4–6),
and the contract's JSON object and header numbers.

    E_it       = E_gpu + E_server
    E_facility = PUE · E_it
    operational carbon = E_facility [kWh] · I(zone)
    embodied carbon    = hardware_s · (GPUs / 8 · M_server + GPUs · M_gpu) / lifetime   (GSF SCI)
    market-based operational = E_facility [kWh] · (c · F_market + (1 − c) · F_residual)
                               (GHG Protocol Scope 2 market method; c the contracts' coverage)
    water      = E_it [kWh] · WUE_onsite + E_facility [kWh] · EWIF(zone)   (PUE applied once)

Pure arithmetic over the value types of `meters.types`; no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import orjson

from meters.constants import (
    GPU_EMBODIED_KGCO2E,
    HARDWARE_LIFETIME_S,
    METHODOLOGY_VERSION,
    SERVER_EMBODIED_KGCO2E,
    SERVER_GPUS,
)
from meters.numbers import dumps_plain, format_decimal
from meters.types import (
    Footprint,
    Hardware,
    Intensity,
    MarketContracts,
    Measurement,
    SiteFactors,
)

__all__ = [
    "GPU_EMBODIED_KGCO2E",
    "HARDWARE_LIFETIME_S",
    "RANGE_FIELDS",
    "SERVER_EMBODIED_KGCO2E",
    "SERVER_GPUS",
    "compute_footprint",
    "dumps_plain",
    "embodied_co2e_g",
    "footprint_json",
    "footprint_record",
    "format_decimal",
    "market_operational_co2e_g",
]

J_PER_KWH = 3.6e6
ML_PER_L = 1000.0
G_PER_KG = 1000.0

# The figures a ranged estimate gives as [low, high] (contract.md `ranges`, plus embodied);
# `co2e_market_g` too where the upstream has contracts.
RANGE_FIELDS = ("gpu_energy_j", "energy_j", "co2e_g", "embodied_co2e_g", "water_ml")
MARKET_RANGE_FIELD = "co2e_market_g"


class _Figures(NamedTuple):
    gpu_energy_j: float
    energy_j: float
    co2e_g: float
    embodied_co2e_g: float
    water_ml: float
    co2e_market_g: float | None


def market_operational_co2e_g(facility_energy_j: float, contracts: MarketContracts) -> float:
    """Market-based operational carbon (g) of `facility_energy_j` (GHG Protocol Scope 2, market
    method): the covered share at the contracts' emission factor, the rest at the residual
    mix, E [kWh] · (c · F_market + (1 − c) · F_residual). Embodied carbon is not Scope 2 and
    is not in it."""
    factor = (
        contracts.coverage * contracts.market_gco2e_per_kwh
        + (1.0 - contracts.coverage) * contracts.residual_gco2e_per_kwh
    )
    return facility_energy_j / J_PER_KWH * factor


def embodied_co2e_g(hardware_s: float, gpus: int) -> float:
    """The embodied carbon (g) of occupying `gpus` GPUs and their share of a server for
    `hardware_s` seconds (GSF SCI: M = TE · TS · RS)."""
    total_kg = gpus / SERVER_GPUS * SERVER_EMBODIED_KGCO2E + gpus * GPU_EMBODIED_KGCO2E
    return hardware_s * total_kg / HARDWARE_LIFETIME_S * G_PER_KG


def compute_footprint(
    measurement: Measurement, site: SiteFactors, hardware: Hardware, intensity: Intensity
) -> Footprint:
    """The footprint of one request from its measured or estimated energy, the site's PUE and
    on-site WUE, the hardware its occupancy is of (for embodied carbon) and the grid's factors.

    Embodied carbon counts `measurement.gpus` GPUs where the measurement says how many it
    occupied (the estimator: the GPUs the model needs), else `hardware.gpus`. A measurement
    with `bounds` gets `ranges`: the same arithmetic over its low and high measurements."""
    gpus = _gpus(measurement, hardware)
    central = _figures(measurement, site, gpus, intensity)
    ranges = None
    if measurement.bounds is not None:
        low, high = (
            _figures(bound, site, _gpus(bound, hardware), intensity) for bound in measurement.bounds
        )
        names = RANGE_FIELDS if site.contracts is None else (*RANGE_FIELDS, MARKET_RANGE_FIELD)
        ranges = {name: _span(getattr(low, name), getattr(high, name)) for name in names}
    return Footprint(
        method=measurement.method,
        gpu_energy_j=central.gpu_energy_j,
        energy_j=central.energy_j,
        co2e_g=central.co2e_g,
        embodied_co2e_g=central.embodied_co2e_g,
        water_ml=central.water_ml,
        zone=intensity.zone,
        grid_gco2e_per_kwh=intensity.gco2e_per_kwh,
        pue=site.pue,
        intensity_source=intensity.intensity_source,
        basis=measurement.basis,
        water_source=intensity.water_source,
        intensity_detail=intensity.source,
        intensity_at=intensity.observed_at,
        ranges=ranges,
        methodology_version=METHODOLOGY_VERSION,
        server_energy_j=measurement.server_energy_j,
        hardware_s=measurement.hardware_s,
        gpus=gpus,
        wue_l_per_kwh=site.wue_l_per_kwh,
        ewif_l_per_kwh=intensity.ewif_l_per_kwh,
        co2e_market_g=central.co2e_market_g,
        contracts=site.contracts,
        attribution=measurement.attribution if measurement.method == "measured" else "",
    )


def _span(low: float, high: float) -> tuple[float, float]:
    return min(low, high), max(low, high)


def _gpus(measurement: Measurement, hardware: Hardware) -> int:
    return measurement.gpus if measurement.gpus is not None else hardware.gpus


def _figures(
    measurement: Measurement, site: SiteFactors, gpus: int, intensity: Intensity
) -> _Figures:
    it_energy_j = measurement.gpu_energy_j + measurement.server_energy_j
    facility_energy_j = site.pue * it_energy_j
    operational_g = facility_energy_j / J_PER_KWH * intensity.gco2e_per_kwh
    embodied_g = embodied_co2e_g(measurement.hardware_s, gpus)
    market_g = (
        None
        if site.contracts is None
        else market_operational_co2e_g(facility_energy_j, site.contracts) + embodied_g
    )
    water_l = (
        it_energy_j / J_PER_KWH * site.wue_l_per_kwh
        + facility_energy_j / J_PER_KWH * intensity.ewif_l_per_kwh
    )
    return _Figures(
        gpu_energy_j=measurement.gpu_energy_j,
        energy_j=facility_energy_j,
        co2e_g=operational_g + embodied_g,
        embodied_co2e_g=embodied_g,
        water_ml=water_l * ML_PER_L,
        co2e_market_g=market_g,
    )


def _round(value: float) -> float:
    return float(format_decimal(value))


def footprint_record(
    footprint: Footprint, request_id: str | None, prompt_tokens: int, completion_tokens: int
) -> dict[str, object]:
    """The contract's `footprint` object as plain Python values (floats rounded to 6
    significant digits). Serialize it with `dumps_plain` to keep numbers exponent-free.
    `intensity_source` / `water_source` say which kind of factor each figure used; `ranges`
    (only for a ranged estimate) holds [low, high] per figure. `co2e_market_g` is there only
    where the upstream has contract data."""
    return _record(footprint, request_id, prompt_tokens, completion_tokens, _round)


def footprint_json(
    footprint: Footprint, request_id: str, prompt_tokens: int, completion_tokens: int
) -> dict[str, object]:
    """The contract's `footprint` object, ready for `orjson.dumps`: its numbers are
    `orjson.Fragment`s holding plain decimals, so a tiny figure is written `0.0000123`, never
    `1.23e-5` (`contract.md`: numbers are plain decimals). Keys may be added before dumping."""
    return _record(footprint, request_id, prompt_tokens, completion_tokens, _fragment)


def _fragment(value: float) -> orjson.Fragment:
    return orjson.Fragment(format_decimal(value).encode())


def _record(
    footprint: Footprint,
    request_id: str | None,
    prompt_tokens: int,
    completion_tokens: int,
    number: Callable[[float], object],
) -> dict[str, object]:
    """`footprint_record`'s object, each figure written by `number` (each once)."""
    record: dict[str, object] = {
        "request_id": request_id,
        "method": footprint.method,
        "gpu_energy_j": number(footprint.gpu_energy_j),
        "energy_j": number(footprint.energy_j),
        "co2e_g": number(footprint.co2e_g),
        "embodied_co2e_g": number(footprint.embodied_co2e_g),
        "water_ml": number(footprint.water_ml),
    }
    if footprint.co2e_market_g is not None:
        record["co2e_market_g"] = number(footprint.co2e_market_g)
    record |= {
        "zone": footprint.zone,
        "grid_gco2e_per_kwh": number(footprint.grid_gco2e_per_kwh),
        "pue": number(footprint.pue),
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "intensity_source": footprint.intensity_source,
        "water_source": footprint.water_source,
    }
    if footprint.ranges is not None:
        record["ranges"] = {
            name: [number(low), number(high)] for name, (low, high) in footprint.ranges.items()
        }
    return record
