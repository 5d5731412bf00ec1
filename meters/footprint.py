"""From a request's energy to its footprint: facility energy, carbon and water (methodology §4–6),
and the contract's JSON object and header numbers.

    E_it       = E_gpu + E_server
    E_facility = PUE · E_it
    operational carbon = E_facility [kWh] · I(zone)
    embodied carbon    = hardware_s · (GPUs / 8 · M_server + GPUs · M_gpu) / lifetime   (GSF SCI)
    water      = E_it [kWh] · WUE_onsite + E_facility [kWh] · EWIF(zone)   (PUE applied once)

Pure arithmetic over the value types of `meters.types`; no I/O.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

import orjson

from meters.types import Footprint, Hardware, Intensity, Measurement, SiteFactors

__all__ = [
    "GPU_EMBODIED_KGCO2E",
    "HARDWARE_LIFETIME_S",
    "SERVER_EMBODIED_KGCO2E",
    "SERVER_GPUS",
    "compute_footprint",
    "dumps_plain",
    "embodied_co2e_g",
    "footprint_json",
    "footprint_record",
    "format_decimal",
]

J_PER_KWH = 3.6e6
ML_PER_L = 1000.0
G_PER_KG = 1000.0

# Manufacturing emissions of an 8-GPU server without its GPUs, kgCO2e. Source: ecologits 0.11.3
# `impacts/llm.py` (SERVER_EMBODIED_IMPACT_GWP, from Boavizta); methodology.md §5.
SERVER_EMBODIED_KGCO2E = 5700.0
# GPUs per server that the server's embodied emissions are shared among. Source: ecologits
# 0.11.3 `impacts/llm.py` (SERVER_GPUS); methodology.md §5.
SERVER_GPUS = 8
# Manufacturing emissions of one GPU, kgCO2e. Source: ecologits 0.11.3 `impacts/llm.py`
# (GPU_EMBODIED_IMPACT_GWP, from Boavizta); methodology.md §5.
GPU_EMBODIED_KGCO2E = 273.0
# Hardware lifetime over which embodied emissions are spread: 3 years. Source: ecologits 0.11.3
# `impacts/llm.py` (HARDWARE_LIFESPAN); methodology.md §5.
HARDWARE_LIFETIME_S = 3 * 365 * 24 * 60 * 60

# Significant digits in headers and the JSON object: finer than any input's precision.
SIGNIFICANT_DIGITS = 6


def embodied_co2e_g(hardware_s: float, gpus: int) -> float:
    """The embodied carbon (g) of occupying `gpus` GPUs and their share of a server for
    `hardware_s` seconds (GSF SCI: M = TE · TS · RS)."""
    total_kg = gpus / SERVER_GPUS * SERVER_EMBODIED_KGCO2E + gpus * GPU_EMBODIED_KGCO2E
    return hardware_s * total_kg / HARDWARE_LIFETIME_S * G_PER_KG


def compute_footprint(
    measurement: Measurement, site: SiteFactors, hardware: Hardware, intensity: Intensity
) -> Footprint:
    """The footprint of one request from its measured or estimated energy, the site's PUE and
    on-site WUE, the upstream's hardware (for embodied carbon) and the grid's intensity."""
    it_energy_j = measurement.gpu_energy_j + measurement.server_energy_j
    facility_energy_j = site.pue * it_energy_j
    operational_g = facility_energy_j / J_PER_KWH * intensity.gco2e_per_kwh
    embodied_g = embodied_co2e_g(measurement.hardware_s, hardware.gpus)
    water_l = (
        it_energy_j / J_PER_KWH * site.wue_l_per_kwh
        + facility_energy_j / J_PER_KWH * intensity.ewif_l_per_kwh
    )
    return Footprint(
        method=measurement.method,
        gpu_energy_j=measurement.gpu_energy_j,
        energy_j=facility_energy_j,
        co2e_g=operational_g + embodied_g,
        embodied_co2e_g=embodied_g,
        water_ml=water_l * ML_PER_L,
        zone=intensity.zone,
        grid_gco2e_per_kwh=intensity.gco2e_per_kwh,
        pue=site.pue,
        intensity_source=intensity.source,
        basis=measurement.basis,
        attribution=measurement.attribution if measurement.method == "measured" else "",
    )


def format_decimal(value: float, significant: int = SIGNIFICANT_DIGITS) -> str:
    """`value` as a plain decimal (never an exponent), rounded to `significant` digits; digits
    left of the point are all kept. 0.0000123456789 → "0.0000123457", 400.0 → "400"."""
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {value}")
    if value == 0:
        return "0"
    # The shortest decimal that reads back as `value` (its repr), as coefficient · 10^exponent,
    # rounded half-even at the last significant digit kept: integer arithmetic, exact.
    text = repr(abs(float(value)))
    mantissa, _, exp_text = text.partition("e")
    whole, _, fraction = mantissa.partition(".")
    coefficient = int(whole + fraction)
    exponent = (int(exp_text) if exp_text else 0) - len(fraction)
    keep = min(len(str(coefficient)) - 1 + exponent - (significant - 1), 0)
    if exponent < keep:
        unit = 10 ** (keep - exponent)
        coefficient, rest = divmod(coefficient, unit)
        if rest * 2 > unit or (rest * 2 == unit and coefficient % 2):
            coefficient += 1
        exponent = keep
    sign = "-" if value < 0 else ""
    if coefficient == 0:
        return "0"
    if exponent >= 0:
        return sign + str(coefficient) + "0" * exponent
    digits = str(coefficient).rjust(1 - exponent, "0")
    fraction = digits[exponent:].rstrip("0")
    return sign + digits[:exponent] + ("." + fraction if fraction else "")


def _round(value: float) -> float:
    return float(format_decimal(value))


def footprint_record(
    footprint: Footprint, request_id: str | None, prompt_tokens: int, completion_tokens: int
) -> dict[str, object]:
    """The contract's `footprint` object as plain Python values (floats rounded to 6
    significant digits). Serialize it with `dumps_plain` to keep numbers exponent-free."""
    return {
        "request_id": request_id,
        "method": footprint.method,
        "gpu_energy_j": _round(footprint.gpu_energy_j),
        "energy_j": _round(footprint.energy_j),
        "co2e_g": _round(footprint.co2e_g),
        "embodied_co2e_g": _round(footprint.embodied_co2e_g),
        "water_ml": _round(footprint.water_ml),
        "zone": footprint.zone,
        "grid_gco2e_per_kwh": _round(footprint.grid_gco2e_per_kwh),
        "pue": _round(footprint.pue),
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
    }


def footprint_json(
    footprint: Footprint, request_id: str, prompt_tokens: int, completion_tokens: int
) -> dict[str, object]:
    """The contract's `footprint` object, ready for `orjson.dumps`: its numbers are
    `orjson.Fragment`s holding plain decimals, so a tiny figure is written `0.0000123`, never
    `1.23e-5` (`contract.md`: numbers are plain decimals). Keys may be added before dumping."""
    record = footprint_record(footprint, request_id, prompt_tokens, completion_tokens)
    return {
        key: orjson.Fragment(format_decimal(value).encode()) if isinstance(value, float) else value
        for key, value in record.items()
    }


def dumps_plain(value: object, indent: int | None = None) -> str:
    """JSON text of dicts, lists, strings, numbers, booleans and None, with every float written
    as a plain decimal (`format_decimal`). For the CLI and anything not using orjson."""
    return _dump(value, indent, 0)


def _dump(value: object, indent: int | None, depth: int) -> str:
    if value is None or isinstance(value, bool | str):
        return json.dumps(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format_decimal(value)
    if isinstance(value, Mapping):
        items = [f"{json.dumps(str(k))}: {_dump(v, indent, depth + 1)}" for k, v in value.items()]
        return _join("{", items, "}", indent, depth)
    if isinstance(value, list | tuple):
        return _join("[", [_dump(v, indent, depth + 1) for v in value], "]", indent, depth)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def _join(open_: str, items: list[str], close: str, indent: int | None, depth: int) -> str:
    if not items:
        return open_ + close
    if indent is None:
        return open_ + ", ".join(items) + close
    inner = "\n" + " " * (indent * (depth + 1))
    return open_ + inner + ("," + inner).join(items) + "\n" + " " * (indent * depth) + close
