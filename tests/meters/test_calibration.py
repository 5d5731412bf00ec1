"""Calibration from measured traffic: the fit recovers J per output token and α, and the
estimator then says it estimated with that calibration."""

from __future__ import annotations

import math
import random
import threading

import pytest

from meters.calibration import Calibration, Calibrations
from meters.estimate import Estimator, ModelCatalog, UnknownModel
from meters.types import Hardware

MODEL = "meta-llama/Meta-Llama-3.1-8B-Instruct"
ACCEL = "H100-SXM"


def feed(
    calibrations: Calibrations,
    j_out: float,
    alpha: float,
    n: int,
    *,
    noise: float = 0.0,
    seed: int = 7,
    model: str = MODEL,
) -> None:
    rng = random.Random(seed)
    for _ in range(n):
        prompt = rng.randint(10, 3000)
        output = rng.randint(1, 1000)
        energy = j_out * (alpha * prompt + output) * (1 + rng.uniform(-noise, noise))
        calibrations.observe(model, ACCEL, prompt, output, energy)


def test_exact_samples_recover_j_per_output_token_and_alpha() -> None:
    calibrations = Calibrations()
    feed(calibrations, j_out=0.31, alpha=0.08, n=40)
    fit = calibrations.fit(MODEL, ACCEL)
    assert fit is not None
    assert fit.j_per_output_token == pytest.approx(0.31, rel=1e-9)
    assert fit.alpha == pytest.approx(0.08, rel=1e-9)
    assert fit.samples == 40
    assert fit.rms_error_j == pytest.approx(0.0, abs=1e-6)
    assert fit.name == f"calibrated:{MODEL}@{ACCEL}"


def test_noisy_samples_recover_the_parameters_closely() -> None:
    calibrations = Calibrations()
    feed(calibrations, j_out=0.2, alpha=0.12, n=500, noise=0.1)
    fit = calibrations.fit(MODEL, ACCEL)
    assert fit is not None
    assert fit.j_per_output_token == pytest.approx(0.2, rel=0.03)
    assert fit.alpha == pytest.approx(0.12, rel=0.1)


def test_no_fit_below_the_minimum_sample_count() -> None:
    calibrations = Calibrations(min_samples=20)
    feed(calibrations, j_out=0.3, alpha=0.1, n=19)
    assert calibrations.fit(MODEL, ACCEL) is None
    feed(calibrations, j_out=0.3, alpha=0.1, n=1, seed=8)
    assert calibrations.fit(MODEL, ACCEL) is not None
    assert calibrations.fit(MODEL, "A100") is None
    assert calibrations.fit("other", ACCEL) is None


def test_samples_all_in_one_proportion_cannot_separate_alpha() -> None:
    calibrations = Calibrations(min_samples=5)
    for k in range(1, 11):
        calibrations.observe(MODEL, ACCEL, 4 * k, k, 0.3 * (0.1 * 4 * k + k))
    assert calibrations.fit(MODEL, ACCEL) is None


def test_fit_never_goes_negative() -> None:
    # Energy that falls as prompts grow: unconstrained least squares would give α < 0.
    calibrations = Calibrations(min_samples=5)
    rng = random.Random(3)
    for _ in range(50):
        prompt, output = rng.randint(10, 3000), rng.randint(1, 1000)
        calibrations.observe(MODEL, ACCEL, prompt, output, max(0.0, 0.5 * output - 0.01 * prompt))
    fit = calibrations.fit(MODEL, ACCEL)
    assert fit is not None
    assert fit.alpha == 0.0
    assert fit.j_per_output_token > 0


def test_memory_is_bounded_and_the_fit_follows_recent_traffic() -> None:
    calibrations = Calibrations(min_samples=10, max_samples=100)
    feed(calibrations, j_out=0.5, alpha=0.1, n=300)
    feed(calibrations, j_out=0.25, alpha=0.1, n=100, seed=9)
    assert calibrations.sample_count(MODEL, ACCEL) == 100
    fit = calibrations.fit(MODEL, ACCEL)
    assert fit is not None
    assert fit.j_per_output_token == pytest.approx(0.25, rel=1e-9)


def test_least_recently_observed_models_are_dropped_beyond_max_keys() -> None:
    calibrations = Calibrations(min_samples=2, max_keys=2)
    for model in ("a", "b", "c"):
        calibrations.observe(model, ACCEL, 1, 1, 1.0)
    assert calibrations.sample_count("a", ACCEL) == 0
    assert calibrations.sample_count("b", ACCEL) == 1
    assert calibrations.sample_count("c", ACCEL) == 1


def test_concurrent_observers_lose_no_sample() -> None:
    calibrations = Calibrations(max_samples=10_000)

    def observe(seed: int) -> None:
        feed(calibrations, j_out=0.3, alpha=0.1, n=500, seed=seed)
        calibrations.fit(MODEL, ACCEL)

    threads = [threading.Thread(target=observe, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calibrations.sample_count(MODEL, ACCEL) == 2000
    fit = calibrations.fit(MODEL, ACCEL)
    assert fit is not None and fit.j_per_output_token == pytest.approx(0.3, rel=1e-9)


def test_bad_samples_are_refused() -> None:
    calibrations = Calibrations()
    with pytest.raises(ValueError):
        calibrations.observe(MODEL, ACCEL, -1, 1, 1.0)
    with pytest.raises(ValueError):
        calibrations.observe(MODEL, ACCEL, 1, 1, math.nan)
    with pytest.raises(ValueError):
        calibrations.observe(MODEL, ACCEL, 1, 1, -0.5)


def test_estimator_uses_the_calibration_and_names_it() -> None:
    calibrations = Calibrations()
    catalog = ModelCatalog.from_ecologits()
    estimator = Estimator(Hardware(accelerator=ACCEL), calibrations=calibrations, catalog=catalog)
    before = estimator.estimate(MODEL, 400, 200, 5.0)
    assert before.basis == "ecologits"

    feed(calibrations, j_out=0.12, alpha=0.05, n=50)
    after = estimator.estimate(MODEL, 400, 200, 5.0)
    assert after.method == "estimated"
    assert after.basis == f"calibrated:{MODEL}@{ACCEL}"
    assert after.gpu_energy_j == pytest.approx(0.12 * (0.05 * 400 + 200))
    # Server share and hardware time still follow the model's size and the latency.
    assert after.server_energy_j == pytest.approx(before.server_energy_j)
    assert after.hardware_s == pytest.approx(before.hardware_s)

    other_accelerator = Estimator(
        Hardware(accelerator="A100-80GB"), calibrations=calibrations, catalog=catalog
    )
    assert other_accelerator.estimate(MODEL, 400, 200, 5.0).basis == "ecologits"


def test_a_calibration_lets_an_unknown_model_be_estimated() -> None:
    calibrations = Calibrations()
    estimator = Estimator(
        Hardware(accelerator=ACCEL, gpus=2),
        calibrations=calibrations,
        catalog=ModelCatalog.from_ecologits(),
    )
    with pytest.raises(UnknownModel):
        estimator.estimate("private-model", 10, 10, 1.0)
    feed(calibrations, j_out=0.4, alpha=0.1, n=30, model="private-model")
    measurement = estimator.estimate("private-model", 100, 50, 2.0)
    assert measurement.basis == f"calibrated:private-model@{ACCEL}"
    assert measurement.gpu_energy_j == pytest.approx(0.4 * (0.1 * 100 + 50))
    # Its configured 2 GPUs busy for the measured 2 s, a 1/64 share of them.
    assert measurement.server_energy_j == pytest.approx(2.0 * 150 * 2 / 64)
    assert measurement.hardware_s == pytest.approx(2.0 / 64)


def test_calibration_prediction() -> None:
    fit = Calibration(MODEL, ACCEL, j_per_output_token=0.2, alpha=0.1, samples=30, rms_error_j=0)
    assert fit.gpu_energy_j(1000, 100) == pytest.approx(0.2 * (100 + 100))


def test_fitted_lists_every_key_with_a_fit() -> None:
    calibrations = Calibrations(min_samples=2)
    for prompt, output in ((100, 50), (20, 200)):
        calibrations.observe("a", "H100", prompt, output, 2.0 * (0.1 * prompt + output))
    calibrations.observe("b", "H100", 10, 10, 1.0)  # one sample: no fit yet
    fits = calibrations.fitted()
    assert [(f.model, f.accelerator) for f in fits] == [("a", "H100")]
    assert fits[0].j_per_output_token == pytest.approx(2.0)
    assert fits[0].alpha == pytest.approx(0.1)
