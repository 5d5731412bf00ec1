"""The estimator against the `ecologits` package's own computation (methodology §3), and the
offline footprint of `footprint estimate`.

Like is compared with like: ecologits' `compute_llm_impacts` gets the same parameter counts
(a published range taken at its midpoint, as the estimator does), the same measured speed where
the catalogue has one, the same latency, zone factors, PUE and WUE. Its `energy` is our
`energy_j` (facility energy), its `gwp` our `co2e_g` (usage + embodied), its `wcf` our
`water_ml`. The one definitional difference: ecologits leaves prompt tokens out entirely, and
so does the uncalibrated estimator.
"""

from __future__ import annotations

import itertools
import math

import pytest
from ecologits.electricity_mix_repository import electricity_mixes
from ecologits.impacts.llm import compute_llm_impacts
from ecologits.tracers.utils import llm_impacts
from ecologits.utils.range_value import RangeValue

from meters.estimate import (
    Estimator,
    ModelCatalog,
    ModelSpec,
    UnknownModel,
    energy_per_output_token_j,
    estimate_gpu_energy_j,
    estimate_server_energy_j,
    generation_time_s,
    gpu_count,
    offline_footprint,
)
from meters.footprint import compute_footprint
from meters.intensity import IntensityTable, UnknownZone
from meters.types import Hardware, MeterError, SiteFactors

ALPHA3 = {"KR": "KOR", "DE": "DEU", "FR": "FRA", "US": "USA", "SE": "SWE", "WORLD": "WOR"}
PUE = 1.2
WUE = 0.569

# Several sizes (1, 4 and 16 GPUs), two mixtures of experts, a range-sized closed model, and
# one with the provider's measured speed (tps/ttft) in the catalogue.
MODELS = [
    "meta-llama/Meta-Llama-3.1-8B-Instruct",
    "meta-llama/Meta-Llama-3.1-70B-Instruct",
    "meta-llama/Meta-Llama-3.1-405B-Instruct",
    "mistralai/Mixtral-8x7B-Instruct-v0.1",
    "gpt-4o-mini",
    "mistral-small-2603",
]
OUTPUT_TOKENS = [1, 250, 4000]
LATENCIES_S = [math.inf, 2.5]
ZONES = list(ALPHA3)

CATALOG = ModelCatalog.from_ecologits()
TABLE = IntensityTable.shipped()


def _mid(value: object) -> float:
    if isinstance(value, RangeValue):
        return (value.min + value.max) / 2
    assert isinstance(value, int | float)
    return float(value)


def _close(ours: float, theirs: object, rel: float = 0.01) -> bool:
    return ours == pytest.approx(_mid(theirs), rel=rel)


def test_sanity_anchor_llama_8b_on_h100_at_batch_64() -> None:
    # methodology §3: ML.ENERGY measured 0.20 J/token (vLLM 0.5.4) and 0.12 (vLLM 0.11).
    per_token_j = energy_per_output_token_j(8, 64)
    assert per_token_j == pytest.approx(0.16, abs=0.005)
    assert 0.12 < per_token_j < 0.20


@pytest.mark.parametrize(
    ("total_params_b", "gpus"), [(0.27, 1), (8.03, 1), (33.0, 1), (34.0, 2), (70.55, 4), (405, 16)]
)
def test_gpu_count_rounds_memory_up_to_a_power_of_two(total_params_b: float, gpus: int) -> None:
    assert gpu_count(total_params_b) == gpus


@pytest.mark.parametrize(
    ("model", "output_tokens", "latency_s", "zone"),
    [
        (model, tokens, latency, ZONES[i % len(ZONES)])
        for i, (model, tokens, latency) in enumerate(
            itertools.product(MODELS, OUTPUT_TOKENS, LATENCIES_S)
        )
    ],
)
def test_estimator_agrees_with_ecologits(
    model: str, output_tokens: int, latency_s: float, zone: str
) -> None:
    spec = CATALOG.lookup(model)
    assert spec is not None
    estimator = Estimator(Hardware(), catalog=CATALOG)
    measurement = estimator.estimate(model, 500, output_tokens, latency_s)
    assert (measurement.method, measurement.basis) == ("estimated", "ecologits")
    site = SiteFactors(zone=zone, pue=PUE, wue_l_per_kwh=WUE)
    ours = compute_footprint(measurement, site, Hardware(), TABLE.lookup(zone))

    mix = electricity_mixes.find_electricity_mix(ALPHA3[zone])
    assert mix is not None
    theirs = compute_llm_impacts(
        model_active_parameter_count=spec.active_params_b,
        model_total_parameter_count=spec.total_params_b,
        output_token_count=output_tokens,
        if_electricity_mix_adpe=mix.adpe,
        if_electricity_mix_pe=mix.pe,
        if_electricity_mix_gwp=mix.gwp,
        if_electricity_mix_wue=mix.wue,
        datacenter_pue=PUE,
        datacenter_wue=WUE,
        request_latency=latency_s,
        tps=spec.tokens_per_s,
        ttft=spec.ttft_s,
    )
    assert _close(ours.energy_j, theirs.energy.value * 3.6e6)
    assert _close(ours.co2e_g, theirs.gwp.value * 1000)
    assert _close(ours.co2e_g - ours.embodied_co2e_g, theirs.usage.gwp.value * 1000)
    assert _close(ours.embodied_co2e_g, theirs.embodied.gwp.value * 1000)
    assert _close(ours.water_ml, theirs.wcf.value * 1000)


@pytest.mark.parametrize(
    ("model", "same_gpus_across_range"),
    [("gpt-4o-mini", True), ("gpt-4o", True), ("gpt-4.1-nano", False), ("gpt-3.5-turbo", False)],
)
@pytest.mark.parametrize("latency_s", [math.inf, 4.0])
def test_range_sized_models_land_in_ecologits_own_range(
    model: str, same_gpus_across_range: bool, latency_s: float
) -> None:
    """ecologits reports a model of unpublished size as a range (figures at the smallest and
    the largest parameter count); the estimator reports one figure, at the midpoint count.
    Everything is linear in the parameter count except the GPU count, so the figure is the
    range's mean unless the range straddles a GPU-count step (gpt-3.5-turbo: 20-70 B dense, 1
    to 4 GPUs; its midpoint needs 2; gpt-4.1-nano: 10-37 B, 1 to 2) — there it is still inside
    the range."""
    # ecologits' own tracer path for OpenAI: US grid, PUE 1.20, WUE 0.569.
    theirs = llm_impacts("openai", model, 300, latency_s)
    assert theirs.energy is not None and theirs.gwp is not None and theirs.wcf is not None
    measurement = Estimator(Hardware(), catalog=CATALOG).estimate(model, 50, 300, latency_s)
    ours = compute_footprint(
        measurement, SiteFactors("US", PUE, WUE), Hardware(), TABLE.lookup("US")
    )
    for value, their in [
        (ours.energy_j, theirs.energy.value * 3.6e6),
        (ours.co2e_g, theirs.gwp.value * 1000),
        (ours.water_ml, theirs.wcf.value * 1000),
    ]:
        if isinstance(their, RangeValue):
            assert their.min * 0.99 <= value <= their.max * 1.01
        if same_gpus_across_range:
            assert _close(value, their)


def test_pure_formulas_compose_to_the_estimate() -> None:
    estimator = Estimator(Hardware(active_params_b=70.0), catalog=CATALOG)
    measurement = estimator.estimate("any-70b", 10, 200, math.inf)
    gpus = gpu_count(70.0)
    assert gpus == 4
    assert measurement.gpu_energy_j == pytest.approx(estimate_gpu_energy_j(70.0, 70.0, 200))
    assert measurement.gpu_energy_j == pytest.approx(200 * energy_per_output_token_j(70.0) * 4)
    generation_s = generation_time_s(70.0, 200)
    assert generation_s == pytest.approx(200 * (6.785e-4 * 70 + 3.119e-4 * 64 + 1.947e-2), rel=1e-3)
    assert measurement.server_energy_j == pytest.approx(
        estimate_server_energy_j(generation_s, gpus)
    )
    assert measurement.server_energy_j == pytest.approx(generation_s * 150 * 4 / 64)
    # Hardware says 1 GPU; the model needs 4: the measurement says it occupied 4.
    assert measurement.hardware_s == pytest.approx(generation_s / 64)
    assert measurement.gpus == 4


def test_measured_latency_caps_generation_time() -> None:
    estimator = Estimator(Hardware(active_params_b=8.0), catalog=CATALOG)
    uncapped = estimator.estimate("m", 0, 1000, math.inf)
    capped = estimator.estimate("m", 0, 1000, 0.5)
    assert capped.gpu_energy_j == uncapped.gpu_energy_j  # per-token GPU energy does not move
    assert capped.server_energy_j == pytest.approx(0.5 * 150 * 1 / 64)
    assert capped.hardware_s == pytest.approx(0.5 / 64)
    assert capped.duration_s == 0.5


def test_mixture_of_experts_active_params_set_energy_total_set_gpus() -> None:
    moe = Estimator(Hardware(active_params_b=12.9, total_params_b=46.7), catalog=CATALOG)
    dense_small = Estimator(Hardware(active_params_b=12.9), catalog=CATALOG)
    a = moe.estimate("m", 0, 100, math.inf)
    b = dense_small.estimate("m", 0, 100, math.inf)
    assert gpu_count(46.7) == 2 and gpu_count(12.9) == 1
    assert a.gpu_energy_j == pytest.approx(2 * b.gpu_energy_j)


def test_embodied_share_does_not_depend_on_configured_gpu_count() -> None:
    site = SiteFactors("KR", PUE, WUE)
    figures = []
    for gpus in (1, 2, 8):
        hardware = Hardware(gpus=gpus, active_params_b=8.0)
        measurement = Estimator(hardware, catalog=CATALOG).estimate("m", 0, 300, math.inf)
        figures.append(compute_footprint(measurement, site, hardware, TABLE.lookup("KR")))
    assert figures[0].embodied_co2e_g == pytest.approx(figures[1].embodied_co2e_g)
    assert figures[0].embodied_co2e_g == pytest.approx(figures[2].embodied_co2e_g)


@pytest.mark.parametrize(
    "asked",
    [
        "meta-llama/Meta-Llama-3.1-8B-Instruct",
        "Meta-Llama-3.1-8B-Instruct",
        "meta-llama/Llama-3.1-8B-Instruct",
        "Llama-3.1-8B-Instruct",
        "hosted_vllm/meta-llama/Llama-3.1-8B-Instruct",
    ],
)
def test_catalogue_lookup_is_lenient_about_prefixes_and_case(asked: str) -> None:
    spec = CATALOG.lookup(asked)
    assert spec is not None
    assert spec.name == "meta-llama/Meta-Llama-3.1-8B-Instruct"
    assert spec.active_params_b == pytest.approx(8.03)


def test_closed_model_lookup_by_plain_and_prefixed_name() -> None:
    plain = CATALOG.lookup("gpt-4o-mini")
    assert plain is not None
    assert CATALOG.lookup("openai/GPT-4o-mini") == plain
    assert plain.source.endswith("openai/gpt-4o-mini")


def test_hardware_parameters_win_over_the_catalogue() -> None:
    estimator = Estimator(Hardware(active_params_b=1.0), catalog=CATALOG)
    spec = estimator.model_spec("meta-llama/Meta-Llama-3.1-405B-Instruct")
    assert spec == ModelSpec("meta-llama/Meta-Llama-3.1-405B-Instruct", 1.0, 1.0, source="hardware")


def test_unknown_model_is_a_clear_meter_error() -> None:
    estimator = Estimator(Hardware(), catalog=CATALOG)
    with pytest.raises(UnknownModel, match="active_params_b") as raised:
        estimator.estimate("my-private-finetune", 10, 10, 1.0)
    assert isinstance(raised.value, MeterError)
    assert "my-private-finetune" in str(raised.value)


def test_prompt_only_requests_cost_no_gpu_energy_in_ecologits_method() -> None:
    # ecologits models decode only; an embeddings call (prompt tokens alone) estimates to 0.
    measurement = Estimator(Hardware(active_params_b=8.0), catalog=CATALOG).estimate(
        "m", 1000, 0, 1.0
    )
    assert measurement.gpu_energy_j == 0.0 and measurement.server_energy_j == 0.0


def test_bad_inputs_are_refused() -> None:
    estimator = Estimator(Hardware(active_params_b=8.0), catalog=CATALOG)
    with pytest.raises(ValueError):
        estimator.estimate("m", -1, 10, 1.0)
    with pytest.raises(ValueError):
        estimator.estimate("m", 1, 10, -1.0)
    with pytest.raises(ValueError):
        Estimator(Hardware(), batch_size=0, catalog=CATALOG)


# ---- offline ------------------------------------------------------------------------------


def test_offline_footprint_prints_the_contract_object() -> None:
    result = offline_footprint(
        "meta-llama/Llama-3.1-8B-Instruct", None, 120, 256, "KR", catalog=CATALOG
    )
    for key in [
        "request_id",
        "method",
        "gpu_energy_j",
        "energy_j",
        "co2e_g",
        "embodied_co2e_g",
        "water_ml",
        "zone",
        "grid_gco2e_per_kwh",
        "pue",
        "prompt_tokens",
        "completion_tokens",
    ]:
        assert key in result
    assert result["method"] == "estimated" and result["zone"] == "KR"
    assert result["grid_gco2e_per_kwh"] == pytest.approx(417.06)
    assert (result["prompt_tokens"], result["completion_tokens"]) == (120, 256)
    assert result["gpu_energy_j"] == pytest.approx(256 * energy_per_output_token_j(8.03), rel=1e-5)
    assert result["intensity_source"] == "table" and result["water_source"] == "table"
    assert str(result["intensity_detail"]).startswith("table:ecologits-")


def test_offline_footprint_agrees_with_ecologits_for_the_same_request() -> None:
    result = offline_footprint("x", 70.0, 0, 500, "DE", latency_s=10.0, catalog=CATALOG)
    mix = electricity_mixes.find_electricity_mix("DEU")
    assert mix is not None
    theirs = compute_llm_impacts(
        model_active_parameter_count=70.0,
        model_total_parameter_count=70.0,
        output_token_count=500,
        if_electricity_mix_adpe=mix.adpe,
        if_electricity_mix_pe=mix.pe,
        if_electricity_mix_gwp=mix.gwp,
        if_electricity_mix_wue=mix.wue,
        datacenter_pue=1.2,
        datacenter_wue=0.569,
        request_latency=10.0,
    )
    assert result["gpus"] == 4
    assert _close(float(result["energy_j"]), theirs.energy.value * 3.6e6)  # type: ignore[arg-type]
    assert _close(float(result["co2e_g"]), theirs.gwp.value * 1000)  # type: ignore[arg-type]
    assert _close(float(result["water_ml"]), theirs.wcf.value * 1000)  # type: ignore[arg-type]


def test_offline_footprint_errors_name_the_problem() -> None:
    with pytest.raises(UnknownZone):
        offline_footprint("gpt-4o-mini", None, 1, 1, "ATLANTIS", catalog=CATALOG)
    with pytest.raises(UnknownModel):
        offline_footprint("no-such-model", None, 1, 1, "KR", catalog=CATALOG)
