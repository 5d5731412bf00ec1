"""Footprint arithmetic (methodology §4–6) on hand-computed examples, and the contract's numbers."""

from __future__ import annotations

import json

import orjson
import pytest
from ecologits.impacts import llm as ecologits_llm

from meters.footprint import (
    GPU_EMBODIED_KGCO2E,
    HARDWARE_LIFETIME_S,
    SERVER_EMBODIED_KGCO2E,
    SERVER_GPUS,
    compute_footprint,
    dumps_plain,
    embodied_co2e_g,
    footprint_json,
    footprint_record,
)
from meters.types import Footprint, Hardware, Intensity, Measurement, SiteFactors

CONTRACT_KEYS = [
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
    "intensity_source",
    "water_source",
]

KR = Intensity(zone="KR", gco2e_per_kwh=400.0, ewif_l_per_kwh=2.0, source="test")


def measured(gpu_j: float = 36.0, server_j: float = 6.0, hardware_s: float = 2.0) -> Measurement:
    return Measurement(
        gpu_energy_j=gpu_j,
        server_energy_j=server_j,
        hardware_s=hardware_s,
        method="measured",
        basis="nvml",
    )


def test_embodied_defaults_are_ecologits_0_11_3s() -> None:
    assert SERVER_EMBODIED_KGCO2E == ecologits_llm.SERVER_EMBODIED_IMPACT_GWP
    assert GPU_EMBODIED_KGCO2E == ecologits_llm.GPU_EMBODIED_IMPACT_GWP
    assert SERVER_GPUS == ecologits_llm.SERVER_GPUS
    assert HARDWARE_LIFETIME_S == ecologits_llm.HARDWARE_LIFESPAN


def test_hand_computed_request() -> None:
    site = SiteFactors(zone="KR", pue=1.2, wue_l_per_kwh=0.5)
    fp = compute_footprint(measured(), site, Hardware(gpus=1), KR)
    # E_it = 36 + 6 = 42 J; E_facility = 1.2 · 42 = 50.4 J
    assert fp.gpu_energy_j == pytest.approx(36.0)
    assert fp.energy_j == pytest.approx(50.4)
    # embodied: 2 s · (1/8 · 5700 + 273) kg / (3 · 365 · 86400 s) = 1971 kg·s / 94 608 000 s
    assert fp.embodied_co2e_g == pytest.approx(1971.0 * 1000 / 94_608_000)
    # operational: 50.4 J / 3.6e6 J/kWh · 400 g/kWh = 0.0056 g
    assert fp.co2e_g == pytest.approx(0.0056 + 1971.0 * 1000 / 94_608_000)
    # water: 42 J · 0.5 L/kWh + 50.4 J · 2.0 L/kWh, in mL
    assert fp.water_ml == pytest.approx((42 * 0.5 + 50.4 * 2.0) / 3.6e6 * 1000)
    assert (fp.zone, fp.grid_gco2e_per_kwh, fp.pue) == ("KR", 400.0, 1.2)
    assert (fp.method, fp.basis, fp.intensity_source) == ("measured", "nvml", "table")
    assert (fp.intensity_detail, fp.water_source, fp.ranges) == ("test", "table", None)


def test_pue_multiplies_water_once_only_on_the_off_site_term() -> None:
    hardware = Hardware(gpus=1)
    at_1 = compute_footprint(measured(), SiteFactors("KR", 1.0, 0.5), hardware, KR)
    at_2 = compute_footprint(measured(), SiteFactors("KR", 2.0, 0.5), hardware, KR)
    it_kwh = 42.0 / 3.6e6
    # Doubling PUE adds exactly one more E_it · EWIF; on-site water does not move.
    assert at_2.water_ml - at_1.water_ml == pytest.approx(it_kwh * 2.0 * 1000)
    # The older EcoLogits form (PUE on both terms, and twice on the off-site one) would differ.
    double_counted_ml = (2 * it_kwh * 0.5 + 2 * 2 * it_kwh * 2.0) * 1000
    assert at_2.water_ml != pytest.approx(double_counted_ml)


def test_embodied_carbon_scales_with_gpus_and_time() -> None:
    assert embodied_co2e_g(3600.0, 8) == pytest.approx(8 * embodied_co2e_g(3600.0, 1))
    assert embodied_co2e_g(7200.0, 1) == pytest.approx(2 * embodied_co2e_g(3600.0, 1))
    assert embodied_co2e_g(0.0, 4) == 0.0
    # One H100-server's worth of hardware for its whole life is its whole manufacturing footprint.
    assert embodied_co2e_g(HARDWARE_LIFETIME_S, 8) == pytest.approx((5700 + 8 * 273) * 1000)


def test_zero_energy_zero_footprint_apart_from_embodied() -> None:
    fp = compute_footprint(measured(0.0, 0.0, 1.0), SiteFactors(), Hardware(), KR)
    assert fp.energy_j == 0.0 and fp.water_ml == 0.0
    assert fp.co2e_g == fp.embodied_co2e_g > 0


def tiny_footprint() -> Footprint:
    return Footprint(
        method="estimated",
        gpu_energy_j=0.0123456789,
        energy_j=0.0148,
        co2e_g=1.23e-7,
        embodied_co2e_g=4.5e-9,
        water_ml=3.3e-6,
        zone="FR",
        grid_gco2e_per_kwh=41.44,
        pue=1.2,
    )


def test_footprint_json_has_the_contract_keys_and_no_exponents() -> None:
    obj = footprint_json(tiny_footprint(), "req-1", 12, 34)
    assert list(obj) == CONTRACT_KEYS
    obj["cancelled"] = True  # the proxy adds its own markers
    text = orjson.dumps(obj).decode()
    assert "e-" not in text.lower() and "e+" not in text.lower()
    assert '"co2e_g":0.000000123' in text
    parsed = json.loads(text)
    assert parsed["request_id"] == "req-1"
    assert parsed["method"] == "estimated"
    assert parsed["gpu_energy_j"] == pytest.approx(0.0123457)
    assert parsed["water_ml"] == pytest.approx(3.3e-6)
    assert parsed["prompt_tokens"] == 12 and parsed["completion_tokens"] == 34
    assert parsed["pue"] == 1.2 and parsed["zone"] == "FR"
    assert parsed["cancelled"] is True


def test_record_and_plain_dump_agree_with_the_json_object() -> None:
    record = footprint_record(tiny_footprint(), "req-1", 12, 34)
    assert list(record) == CONTRACT_KEYS
    text = dumps_plain(record, indent=2)
    assert "e-" not in text
    assert json.loads(text) == json.loads(
        orjson.dumps(footprint_json(tiny_footprint(), "req-1", 12, 34))
    )
    assert json.loads(dumps_plain({"a": [1, 2.5e-9, None, "x"], "b": {}})) == {
        "a": [1, 2.5e-9, None, "x"],
        "b": {},
    }
    with pytest.raises(TypeError):
        dumps_plain({"a": object()})
