"""The NVML source's field-values option (`read_via="fields"`) against the fake pynvml: one
call per GPU, the same joules as the default reads, and a field the GPU lacks."""

from __future__ import annotations

import pytest

from meters import MeterError
from meters.sources.nvml import NvmlSource
from tests.meters.fake_pynvml import FakeNvml, ManualClock


def make(**kwargs: object) -> tuple[FakeNvml, NvmlSource, ManualClock]:
    clock = ManualClock()
    fake = FakeNvml(clock=clock, **kwargs)  # type: ignore[arg-type]
    gpus = tuple(range(fake.gpus))
    source = NvmlSource(gpus, nvml=fake.module, clock=clock, read_via="fields")  # type: ignore[arg-type]
    return fake, source, clock


def test_fields_read_the_counter_and_power_in_one_call_per_gpu() -> None:
    fake, source, clock = make(idle_w=60.0, w_per_request=100.0, gpus=2)
    clock.advance(10.0)
    first = source.read()
    assert first.energy_j == {"0": pytest.approx(600.0), "1": pytest.approx(600.0)}
    fake.request_started("a")
    clock.advance(0.5)
    second = source.read()
    assert second.energy_j["1"] - first.energy_j["1"] == pytest.approx(80.0, abs=1e-3)
    assert second.power_w["0"] == pytest.approx(160.0, abs=0.01)
    assert fake.calls["nvmlDeviceGetFieldValues"] == 4  # two reads × two GPUs
    assert "nvmlDeviceGetTotalEnergyConsumption" not in fake.calls
    assert "nvmlDeviceGetPowerUsage" not in fake.calls


def test_fields_and_the_default_agree_on_the_same_gpu() -> None:
    clock = ManualClock()
    fake = FakeNvml(clock=clock, idle_w=75.0, j_per_token=0.3)
    by_fields = NvmlSource((0,), nvml=fake.module, clock=clock, read_via="fields")  # type: ignore[arg-type]
    by_counter = NvmlSource((0,), nvml=fake.module, clock=clock)  # type: ignore[arg-type]
    fake.request_started("a")
    for _ in range(5):
        clock.advance(0.1)
        fake.token("a", 3)
        assert by_fields.read().energy_j == by_counter.read().energy_j


def test_a_driver_without_instant_power_falls_back_to_power_usage_once() -> None:
    fake, source, clock = make(idle_w=50.0, power_field=False)
    source.read()
    clock.advance(1.0)
    sample = source.read()
    assert sample.power_w["0"] == pytest.approx(50.0, abs=0.01)
    # the power field is asked for once; after NOT_SUPPORTED only the energy field is read
    assert fake.calls["nvmlDeviceGetFieldValues"] == 2
    assert fake.calls["nvmlDeviceGetPowerUsage"] == 2


def test_a_gpu_without_the_energy_field_integrates_power() -> None:
    _, source, clock = make(idle_w=50.0, energy_counter=False)
    assert source.read().energy_j == {"0": 0.0}
    clock.advance(2.0)
    assert source.read().energy_j["0"] == pytest.approx(100.0, abs=0.01)


def test_a_lost_gpu_is_a_meter_error_and_the_source_recovers() -> None:
    fake, source, clock = make(idle_w=60.0)
    source.read()
    fake.lose_gpu()
    with pytest.raises(MeterError, match="GPU is lost"):
        source.read()
    fake.restore_gpu()
    clock.advance(1.0)
    assert source.read().energy_j["0"] == pytest.approx(fake.total_energy_j(), abs=1e-3)


def test_an_unknown_way_of_reading_is_refused() -> None:
    with pytest.raises(ValueError, match="read_via"):
        NvmlSource((0,), read_via="smi")  # type: ignore[arg-type]


def test_the_counter_moves_only_at_the_drivers_update_interval() -> None:
    _, source, clock = make(idle_w=100.0, update_s=0.1)
    start = source.read().energy_j["0"]
    clock.advance(0.04)
    assert source.read().energy_j["0"] == start  # not yet published
    clock.advance(0.07)
    assert source.read().energy_j["0"] == pytest.approx(start + 11.0, abs=1e-3)


@pytest.mark.parametrize(
    ("field_id", "code", "message"),
    [(83, 15, "GPU 0 energy field: GPU is lost"), (83, 999, "energy field: NVML return code 999"),
     (186, 4, "GPU 0 power field: no permission")],
)  # fmt: skip
def test_a_field_that_answers_an_error_is_a_meter_error(
    field_id: int, code: int, message: str
) -> None:
    fake, source, _ = make()
    fake.field_errors[field_id] = code
    with pytest.raises(MeterError, match=message):
        source.read()


def test_a_driver_that_does_not_know_the_power_field_falls_back() -> None:
    fake, source, clock = make(idle_w=40.0)
    fake.field_errors[186] = 2  # INVALID_ARGUMENT: an older driver's answer to an unknown id
    source.read()
    clock.advance(1.0)
    assert source.read().power_w["0"] == pytest.approx(40.0, abs=0.01)
    assert fake.calls["nvmlDeviceGetPowerUsage"] == 2
