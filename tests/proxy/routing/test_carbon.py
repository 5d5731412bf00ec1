"""Expected carbon of a request on an upstream: the per-token rates give back what
`compute_footprint` says for the same request, and the planner ranks zones by it."""

from __future__ import annotations

import math

import pytest

from meters import Hardware, SiteFactors, compute_footprint
from meters.calibration import Calibrations
from meters.estimate import Estimator
from meters.intensity import IntensityTable
from proxy.config import RoutingSettings
from proxy.routing import Expected, carbon_rates, co2e_avoided_g

HARDWARE = Hardware(accelerator="H100-SXM", gpus=1, active_params_b=8.0, total_params_b=8.0)


def _estimator(calibrations: Calibrations | None = None) -> Estimator:
    return Estimator(HARDWARE, calibrations=calibrations)


@pytest.mark.parametrize("zone", ["FR", "PL", "US-CAL-CISO"])
def test_expected_carbon_is_what_the_figures_would_say(zone: str) -> None:
    site = SiteFactors(zone=zone, pue=1.3, wue_l_per_kwh=0.5)
    intensity = IntensityTable.shipped().lookup(zone)
    rates = carbon_rates(_estimator(), site, HARDWARE, "llama")
    assert rates is not None
    truth = compute_footprint(
        _estimator().estimate("llama", 200, 300, math.inf), site, HARDWARE, intensity
    )
    expected = Expected.of(rates, 200, 300, intensity.gco2e_per_kwh)
    assert expected.co2e_g == pytest.approx(truth.co2e_g, rel=1e-9)
    assert expected.energy_j == pytest.approx(truth.energy_j, rel=1e-9)
    assert expected.embodied_co2e_g == pytest.approx(truth.embodied_co2e_g, rel=1e-9)


def test_a_calibration_from_measured_traffic_sets_the_rates() -> None:
    calibrations = Calibrations(min_samples=2)
    for prompt, output in ((100, 50), (20, 200), (300, 10)):
        calibrations.observe("llama", "H100-SXM", prompt, output, 0.5 * (0.1 * prompt + output))
    site = SiteFactors(zone="FR", pue=1.0, wue_l_per_kwh=0.0)
    rates = carbon_rates(_estimator(calibrations), site, HARDWARE, "llama")
    assert rates is not None and rates.basis.startswith("calibrated:")
    calibrated = _estimator(calibrations).estimate("llama", 100, 100, math.inf)
    it_j = calibrated.gpu_energy_j + calibrated.server_energy_j
    assert rates.energy_j(100, 100) == pytest.approx(it_j, rel=1e-9)


def test_an_unknown_model_has_no_rates() -> None:
    bare = Estimator(Hardware(accelerator="H100-SXM", gpus=1))
    site = SiteFactors(zone="FR", pue=1.0, wue_l_per_kwh=0.0)
    assert carbon_rates(bare, site, bare.hardware, "no-such-model-xyz") is None


def test_carbon_avoided_on_equal_hardware_is_the_energy_at_the_intensity_difference() -> None:
    chosen = Expected(co2e_g=0.1, energy_j=1000.0, embodied_co2e_g=0.01, gco2e_per_kwh=40.0)
    baseline = Expected(co2e_g=0.9, energy_j=1000.0, embodied_co2e_g=0.01, gco2e_per_kwh=600.0)
    energy_j, embodied_g = 500.0, 0.004
    co2e_g = energy_j / 3.6e6 * 40.0 + embodied_g
    avoided = co2e_avoided_g(energy_j, embodied_g, co2e_g, chosen, baseline)
    assert avoided == pytest.approx(energy_j / 3.6e6 * (600.0 - 40.0))
    assert co2e_avoided_g(energy_j, embodied_g, co2e_g, chosen, chosen) == pytest.approx(0.0)


def test_a_model_policy_overrides_the_default_exact_before_pattern() -> None:
    settings = RoutingSettings.model_validate(
        {
            "policy": "least-busy",
            "models": [
                {"match": "llama-*", "policy": "lowest-carbon"},
                {"match": "llama-3-8b", "policy": "round-robin"},
            ],
        }
    )
    assert settings.policy_for("llama-3-8b") == "round-robin"
    assert settings.policy_for("llama-3-70b") == "lowest-carbon"
    assert settings.policy_for("qwen") == "least-busy"
