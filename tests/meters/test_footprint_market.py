"""Market-based carbon (issue 18, GHG Protocol Scope 2 market method) against a hand
computation: the contracts' factor on the covered share, the residual mix on the rest, embodied
carbon added to both methods and reported apart."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from meters.footprint import compute_footprint, footprint_json, footprint_record
from meters.types import Hardware, Intensity, MarketContracts, Measurement, SiteFactors

# The hand computation's constants, written out here rather than imported: an 8-GPU server's
# embodied 5700 kg, a GPU's 273 kg, over three years (methodology §5).
J_PER_KWH = 3_600_000.0
SECONDS_3_YEARS = 3 * 365 * 24 * 3600


def hand_embodied_g(hardware_s: float, gpus: int) -> float:
    return hardware_s * (gpus / 8 * 5700.0 + gpus * 273.0) / SECONDS_3_YEARS * 1000.0


energies_j = st.floats(min_value=0.0, max_value=1e7, allow_nan=False)
factors = st.floats(min_value=0.0, max_value=1500.0, allow_nan=False)
coverages = st.one_of(
    st.just(0.0), st.just(1.0), st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
)


DE = Intensity("DE", 330.0, 2.0, "test")


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


@given(
    gpu_j=energies_j,
    server_j=energies_j,
    hardware_s=st.floats(min_value=0.0, max_value=1e4, allow_nan=False),
    gpus=st.integers(min_value=1, max_value=16),
    pue=st.floats(min_value=1.0, max_value=3.0),
    grid=factors,
    market=factors,
    residual=factors,
    coverage=coverages,
)
def test_market_carbon_is_the_hand_computation_with_embodied_kept_apart(
    gpu_j: float,
    server_j: float,
    hardware_s: float,
    gpus: int,
    pue: float,
    grid: float,
    market: float,
    residual: float,
    coverage: float,
) -> None:
    measurement = Measurement(gpu_j, server_j, hardware_s, "measured", "nvml", gpus=gpus)
    contracts = MarketContracts(coverage, market, residual, "test residual mix")
    site = SiteFactors(zone="DE", pue=pue, contracts=contracts)
    intensity = Intensity("DE", grid, 2.0, "test")
    fp = compute_footprint(measurement, site, Hardware(gpus=gpus), intensity)

    facility_kwh = pue * (gpu_j + server_j) / J_PER_KWH
    embodied = hand_embodied_g(hardware_s, gpus)
    market_operational = facility_kwh * (coverage * market + (1 - coverage) * residual)
    assert fp.co2e_market_g is not None
    assert close(fp.co2e_market_g, market_operational + embodied)
    # Embodied is the same in both methods and reported apart; location-based is unchanged.
    assert close(fp.embodied_co2e_g, embodied)
    assert close(fp.co2e_g, facility_kwh * grid + embodied)
    assert fp.contracts == contracts


@given(energy_j=energies_j, market=factors, residual=factors)
def test_full_coverage_uses_only_the_contracts_and_none_only_the_residual_mix(
    energy_j: float, market: float, residual: float
) -> None:
    measurement = Measurement(energy_j, 0.0, 0.0, "measured", "nvml", gpus=1)

    def market_g(coverage: float) -> float:
        site = SiteFactors(pue=1.0, contracts=MarketContracts(coverage, market, residual, "r"))
        value = compute_footprint(measurement, site, Hardware(), DE).co2e_market_g
        assert value is not None
        return value

    assert close(market_g(1.0), energy_j / J_PER_KWH * market)
    assert close(market_g(0.0), energy_j / J_PER_KWH * residual)


def test_an_upstream_without_contracts_has_no_market_figure() -> None:
    measurement = Measurement(36.0, 6.0, 2.0, "measured", "nvml", gpus=1)
    fp = compute_footprint(measurement, SiteFactors(), Hardware(), Intensity("KR", 400, 2, "t"))
    assert fp.co2e_market_g is None and fp.contracts is None
    record = footprint_record(fp, "req-1", 1, 2)
    assert "co2e_market_g" not in record
    assert "co2e_market_g" not in footprint_json(fp, "req-1", 1, 2)


def test_the_footprint_object_carries_both_figures_side_by_side() -> None:
    # 3.6 MJ = 1 kWh of facility energy (PUE 1), no hardware time: no embodied carbon.
    measurement = Measurement(3_600_000.0, 0.0, 0.0, "measured", "nvml", gpus=1)
    site = SiteFactors(pue=1.0, contracts=MarketContracts(0.8, 0.0, 600.0, "AIB 2024 DE"))
    fp = compute_footprint(measurement, site, Hardware(), DE)
    record = footprint_record(fp, "req-1", 1, 2)
    # Location: 1 kWh × 330 g. Market: 0.8 × 0 + 0.2 × 600 = 120 g.
    assert record["co2e_g"] == 330.0
    assert record["co2e_market_g"] == 120.0
    keys = list(record)
    assert keys.index("co2e_market_g") == keys.index("water_ml") + 1


def test_a_ranged_estimate_gives_the_market_figure_a_range_too() -> None:
    low = Measurement(1_800_000.0, 0.0, 1.0, "estimated", "ecologits", gpus=1)
    high = Measurement(5_400_000.0, 0.0, 3.0, "estimated", "ecologits", gpus=1)
    central = Measurement(
        3_600_000.0, 0.0, 2.0, "estimated", "ecologits", gpus=1, bounds=(low, high)
    )
    site = SiteFactors(pue=1.0, contracts=MarketContracts(0.5, 100.0, 300.0, "r"))
    fp = compute_footprint(central, site, Hardware(), DE)
    assert fp.ranges is not None
    lo, hi = fp.ranges["co2e_market_g"]
    assert close(lo, 0.5 * 200.0 + hand_embodied_g(1.0, 1))
    assert close(hi, 1.5 * 200.0 + hand_embodied_g(3.0, 1))
    plain = compute_footprint(central, SiteFactors(pue=1.0), Hardware(), DE)
    assert plain.ranges is not None and "co2e_market_g" not in plain.ranges
