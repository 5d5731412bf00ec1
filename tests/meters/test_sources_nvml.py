"""The NVML source against the fake pynvml: units, resets, power fallback, errors."""

from __future__ import annotations

import pytest

from meters import MeterError
from meters.sources.nvml import NvmlSource
from tests.meters.fake_pynvml import FakeNvml, ManualClock


def make(**kwargs: object) -> tuple[FakeNvml, NvmlSource, ManualClock]:
    clock = ManualClock()
    fake = FakeNvml(clock=clock, **kwargs)  # type: ignore[arg-type]
    gpus = tuple(range(fake.gpus))
    return fake, NvmlSource(gpus, nvml=fake.module, clock=clock), clock  # type: ignore[arg-type]


def test_counter_in_millijoules_is_reported_in_joules() -> None:
    _, source, clock = make(idle_w=60.0)
    clock.advance(10.0)  # the driver's counter already holds 600 J
    first = source.read()
    assert first.energy_j == {"0": pytest.approx(600.0)}
    clock.advance(0.5)
    second = source.read()
    assert second.energy_j["0"] - first.energy_j["0"] == pytest.approx(30.0, abs=1e-3)
    assert second.time_s - first.time_s == pytest.approx(0.5)
    assert second.power_w["0"] == pytest.approx(60.0, abs=0.01)


def test_nothing_touches_nvml_before_the_first_read() -> None:
    fake, source, _ = make()
    fake.raise_on("nvmlInit", "NVMLError_DriverNotLoaded")
    # constructing did not raise; the first read does, as a MeterError
    with pytest.raises(MeterError, match="driver is not loaded"):
        source.read()


def test_a_counter_reset_is_filled_from_power_and_never_goes_backwards() -> None:
    fake, source, clock = make(idle_w=100.0)
    source.read()
    clock.advance(1.0)
    before = source.read().energy_j["0"]
    clock.advance(0.1)
    fake.reset_counter()
    clock.advance(0.1)
    after = source.read().energy_j["0"]
    # the reset tick (0.2 s at 100 W) is filled from power × time
    assert after - before == pytest.approx(20.0, abs=0.01)
    assert source.resets == 1
    clock.advance(1.0)
    later = source.read().energy_j["0"]
    assert later - after == pytest.approx(100.0, abs=0.01)  # counts on from the new value
    assert later - before == pytest.approx(fake.total_energy_j() - 100.0 * 1.0, abs=0.01)


def test_gpus_without_the_energy_counter_integrate_power() -> None:
    fake, source, clock = make(idle_w=50.0, w_per_request=200.0, energy_counter=False)
    first = source.read()
    assert first.energy_j == {"0": 0.0}
    fake.request_started("a")
    for _ in range(20):
        clock.advance(0.1)
        fake.token("a", 2)
        source.read()
    clock.advance(0.1)
    last = source.read()
    # 2.1 s × 50 W idle + 2 s × 200 W + 40 tokens × 0.5 J: exact, since the power
    # reading is the mean over the window since the previous one
    assert last.energy_j["0"] == pytest.approx(fake.total_energy_j(), rel=1e-3)
    assert last.power_w["0"] == pytest.approx(250.0, abs=0.01)


@pytest.mark.parametrize(
    ("function", "error", "message"),
    [
        ("nvmlDeviceGetTotalEnergyConsumption", "NVMLError_GpuIsLost", "GPU is lost"),
        ("nvmlDeviceGetTotalEnergyConsumption", "NVMLError_Unknown", "unknown error"),
        ("nvmlDeviceGetPowerUsage", "NVMLError_NoPermission", "no permission"),
        ("nvmlDeviceGetHandleByIndex", "NVMLError_Timeout", "did not answer in time"),
        ("nvmlInit", "NVMLError_LibraryNotFound", "libnvidia-ml.so was not found"),
    ],
)
def test_nvml_errors_become_meter_errors(function: str, error: str, message: str) -> None:
    fake, source, _ = make()
    fake.raise_on(function, error)
    with pytest.raises(MeterError, match=message):
        source.read()


def test_a_lost_gpu_fails_reads_until_it_answers_again_and_no_energy_is_lost() -> None:
    fake, source, clock = make(idle_w=80.0, gpus=2)
    first = source.read()
    fake.lose_gpu(1)
    clock.advance(1.0)
    with pytest.raises(MeterError, match="GPU is lost"):
        source.read()
    fake.restore_gpu(1)
    clock.advance(1.0)
    last = source.read()
    for gpu in ("0", "1"):
        assert last.energy_j[gpu] - first.energy_j[gpu] == pytest.approx(160.0, abs=0.01)


def test_a_missing_gpu_index_is_named() -> None:
    fake, _, clock = make()
    source = NvmlSource((0, 3), nvml=fake.module, clock=clock)  # type: ignore[arg-type]
    with pytest.raises(MeterError, match=r"\[3\] not present"):
        source.read()


def test_gpu_names_and_shutdown() -> None:
    fake, source, _ = make(gpus=2, name="NVIDIA A100-SXM4-80GB")
    assert source.gpu_names() == ["NVIDIA A100-SXM4-80GB"] * 2
    source.close()
    with pytest.raises(fake.module.NVMLError_Uninitialized):  # type: ignore[attr-defined]
        fake.module.nvmlDeviceGetCount()  # type: ignore[attr-defined]


def test_visible_gpu_indices_lists_every_gpu_for_the_agents_default() -> None:
    from meters.sources.nvml import visible_gpu_indices
    from tests.meters.fake_pynvml import FakeNvml

    assert visible_gpu_indices(FakeNvml(gpus=3).module) == [0, 1, 2]
