"""Expected carbon of a request on one upstream, cheaply enough to weigh ten candidates per
request (bench/routing_bench.py).

A request's facility energy and embodied carbon on an upstream are linear in its prompt and
output tokens (the estimator is: EcoLogits' energy per output token, or a calibration's
j_out · (α · prompt + output) fitted from the upstream's own measured traffic, and generation
time follows output tokens). So each (upstream, model) gets four rates, worked out from two
reference estimates through the same `compute_footprint` every figure uses, and refreshed
every `refresh_s` (a calibration sharpens as measured requests arrive). The expected gCO2e is

    (e_p · prompt + e_o · output) / 3.6e6 · intensity now  +  (m_p · prompt + m_o · output)

with e in facility joules per token and m in embodied grams per token.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from meters import Hardware, Intensity, MeterError, SiteFactors, compute_footprint
from meters.estimate import Estimator
from meters.footprint import J_PER_KWH

_REFERENCE_TOKENS = 1000
# Factors that carry no weight in energy or embodied carbon: only those are read.
_NO_GRID = Intensity(zone="WORLD", gco2e_per_kwh=0.0, ewif_l_per_kwh=0.0, source="routing")


@dataclass(frozen=True, slots=True)
class CarbonRates:
    """Per-token facility energy (J) and embodied carbon (g) of one model on one upstream;
    `basis` says whether a calibration from measured traffic made them."""

    energy_j_per_prompt_token: float
    energy_j_per_output_token: float
    embodied_g_per_prompt_token: float
    embodied_g_per_output_token: float
    basis: str

    def energy_j(self, prompt_tokens: int, output_tokens: int) -> float:
        return (
            self.energy_j_per_prompt_token * prompt_tokens
            + self.energy_j_per_output_token * output_tokens
        )

    def co2e_g(self, prompt_tokens: int, output_tokens: int, gco2e_per_kwh: float) -> float:
        """Expected operational plus embodied carbon of a request at this grid intensity."""
        embodied = (
            self.embodied_g_per_prompt_token * prompt_tokens
            + self.embodied_g_per_output_token * output_tokens
        )
        return self.energy_j(prompt_tokens, output_tokens) / J_PER_KWH * gco2e_per_kwh + embodied


@dataclass(frozen=True, slots=True)
class Expected:
    """What one request is expected to cost on one upstream now."""

    co2e_g: float  # operational plus embodied
    energy_j: float  # facility energy
    embodied_co2e_g: float
    gco2e_per_kwh: float  # the zone's intensity now

    @classmethod
    def of(
        cls, rates: CarbonRates, prompt_tokens: int, output_tokens: int, gco2e_per_kwh: float
    ) -> Expected:
        return cls(
            co2e_g=rates.co2e_g(prompt_tokens, output_tokens, gco2e_per_kwh),
            energy_j=rates.energy_j(prompt_tokens, output_tokens),
            embodied_co2e_g=rates.embodied_g_per_prompt_token * prompt_tokens
            + rates.embodied_g_per_output_token * output_tokens,
            gco2e_per_kwh=gco2e_per_kwh,
        )


def co2e_avoided_g(
    energy_j: float, embodied_co2e_g: float, co2e_g: float, chosen: Expected, baseline: Expected
) -> float:
    """Carbon a request (its actual facility energy, embodied and total carbon) avoided on the
    chosen upstream against `baseline`'s: the same work there (energy and embodied scaled by
    the two upstreams' expectations) at the baseline zone's intensity, less what it cost."""
    energy_ratio = baseline.energy_j / chosen.energy_j if chosen.energy_j > 0 else 1.0
    embodied_ratio = (
        baseline.embodied_co2e_g / chosen.embodied_co2e_g if chosen.embodied_co2e_g > 0 else 1.0
    )
    there_g = (
        energy_j * energy_ratio / J_PER_KWH * baseline.gco2e_per_kwh
        + embodied_co2e_g * embodied_ratio
    )
    return there_g - co2e_g


def carbon_rates(
    estimator: Estimator, site: SiteFactors, hardware: Hardware, model: str
) -> CarbonRates | None:
    """The rates of `model` on an upstream, or None when nothing can estimate it."""
    try:
        output_only = estimator.estimate(model, 0, _REFERENCE_TOKENS, math.inf)
        both = estimator.estimate(model, _REFERENCE_TOKENS, _REFERENCE_TOKENS, math.inf)
    except MeterError:
        return None
    a = compute_footprint(output_only, site, hardware, _NO_GRID)
    b = compute_footprint(both, site, hardware, _NO_GRID)
    n = float(_REFERENCE_TOKENS)
    return CarbonRates(
        energy_j_per_prompt_token=max(0.0, (b.energy_j - a.energy_j) / n),
        energy_j_per_output_token=a.energy_j / n,
        embodied_g_per_prompt_token=max(0.0, (b.embodied_co2e_g - a.embodied_co2e_g) / n),
        embodied_g_per_output_token=a.embodied_co2e_g / n,
        basis=both.basis,
    )


class RatesCache:
    """`carbon_rates` per (upstream, model), each kept `refresh_s`."""

    def __init__(
        self, refresh_s: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._refresh_s = refresh_s
        self._clock = clock
        self._rates: dict[tuple[str, str], tuple[float, CarbonRates | None]] = {}

    def get(
        self,
        upstream: str,
        model: str,
        estimator: Estimator,
        site: SiteFactors,
        hardware: Hardware,
        now: float | None = None,
    ) -> CarbonRates | None:
        """The rates of `model` on `upstream` (`now`: the clock's time, if the caller has it)."""
        key = (upstream, model)
        if now is None:
            now = self._clock()
        found = self._rates.get(key)
        if found is not None and found[0] > now:
            return found[1]
        rates = carbon_rates(estimator, site, hardware, model)
        if len(self._rates) >= 4096:
            self._rates.clear()  # bounded: model names come from clients
        self._rates[key] = (now + self._refresh_s, rates)
        return rates
