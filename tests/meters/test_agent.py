"""`footprint agent`: NVML counters served as DCGM-format Prometheus text, scraped back."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from meters import Hardware, Measurement, MeterError
from meters.agent import EnergyAgent, run_agent
from meters.meter import build_meter
from meters.sources.nvml import NvmlSource
from meters.sources.prometheus import PrometheusSource
from tests.meters.fake_pynvml import FakeNvml, ManualClock
from tests.meters.test_meter import wait_until


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def fake(clock: ManualClock) -> FakeNvml:
    fake = FakeNvml(idle_w=75.0, j_per_token=1.0, gpus=2, clock=clock)
    clock.advance(100.0)  # the driver has counted 7.5 kJ per GPU already
    return fake


@pytest.fixture
def agent(fake: FakeNvml, clock: ManualClock) -> Iterator[EnergyAgent]:
    # A tick longer than any test: the test decides when the agent reads the GPUs.
    source = NvmlSource((0, 1), nvml=fake.module, clock=clock)  # type: ignore[arg-type]
    agent = EnergyAgent(
        source, host="127.0.0.1", port=0, tick_s=3600.0, gpu_names={"0": "NVIDIA H100"}
    )
    agent.start()
    yield agent
    agent.stop()


def scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    response = httpx.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = float(
                sample.value
            )
    return found


def test_the_agent_publishes_dcgm_energy_in_mj_and_hw_metrics(
    agent: EnergyAgent, fake: FakeNvml, clock: ManualClock
) -> None:
    clock.advance(2.0)
    agent.read_once()
    metrics = scrape(agent.url)
    # the parser reports counter samples with the _total suffix
    dcgm = metrics["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION_total"]
    assert dcgm[(("gpu", "0"), ("modelName", "NVIDIA H100"))] == pytest.approx(7650_000, abs=1)
    assert dcgm[(("gpu", "1"),)] == pytest.approx(7650_000, abs=1)
    energy = metrics["hw_energy_joules_total"]
    assert energy[(("hw_id", "1"), ("hw_type", "gpu"))] == pytest.approx(7650.0, abs=0.001)
    power = metrics["hw_power_watts"]
    assert power[(("hw_id", "0"), ("hw_type", "gpu"))] == pytest.approx(75.0, abs=0.01)


def test_a_prometheus_source_reads_the_agent_as_it_reads_dcgm(
    agent: EnergyAgent, fake: FakeNvml, clock: ManualClock
) -> None:
    source = PrometheusSource(agent.url, gpus=["0", "1"], clock=clock)
    first = source.read()
    fake.request_started("a")
    clock.advance(1.0)
    fake.token("a", 25)
    agent.read_once()
    second = source.read()
    for gpu in ("0", "1"):
        assert second.energy_j[gpu] - first.energy_j[gpu] == pytest.approx(100.0, abs=0.002)
    source.close()


async def test_a_request_measured_through_the_agent(
    agent: EnergyAgent, fake: FakeNvml, clock: ManualClock
) -> None:
    def fallback(model: str, prompt: int, output: int, latency_s: float) -> Measurement:
        raise AssertionError("the agent answered; nothing should be estimated")

    meter = build_meter(
        "prometheus",
        hardware=Hardware(gpus=2),
        gpus=(0, 1),
        url=agent.url,
        tick_s=3600.0,
        fallback=fallback,
        clock=clock,
    )
    meter.start()
    await wait_until(lambda: meter.healthy)  # the sampler's first scrape is the baseline
    fake.request_started("a")
    track = meter.open("a", "m")
    clock.advance(0.5)
    fake.token("a", 10, prompt=100)
    track.first_token(100)
    track.output_tokens(10)
    fake.request_ended("a")
    agent.read_once()
    measurement = await track.close(
        prompt_tokens=100, output_tokens=10, cancelled=False, latency_s=0.5
    )
    assert measurement.method == "measured"
    assert measurement.basis == "prometheus"
    assert measurement.gpu_energy_j == pytest.approx(fake.true_energy_j("a"), abs=0.01)
    await meter.aclose()


def test_a_lost_gpu_makes_the_agent_answer_503_and_the_scraper_fail(
    agent: EnergyAgent, fake: FakeNvml, clock: ManualClock
) -> None:
    fake.lose_gpu(1)
    clock.advance(0.1)
    agent.read_once()
    response = httpx.get(agent.url)
    assert response.status_code == 503
    assert "GPU is lost" in response.text
    with pytest.raises(MeterError, match="HTTP 503"):
        PrometheusSource(agent.url).read()
    fake.restore_gpu(1)
    agent.read_once()
    assert httpx.get(agent.url).status_code == 200


def test_only_metrics_is_served(agent: EnergyAgent) -> None:
    assert httpx.get(agent.url.replace("/metrics", "/other")).status_code == 404


def test_a_lost_gpu_is_logged_once_not_on_every_tick(
    agent: EnergyAgent, fake: FakeNvml, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="meters.agent")
    fake.lose_gpu(1)
    for _ in range(50):  # 5 s of 100 ms ticks
        clock.advance(0.1)
        agent.read_once()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "GPU is lost" in warnings[0]
    fake.restore_gpu(1)
    agent.read_once()
    assert "answers again (49 failed read(s) since last logged)" in caplog.records[-1].getMessage()


def test_an_agent_that_cannot_read_its_gpus_stops_at_start(fake: FakeNvml) -> None:
    fake.raise_on("nvmlInit", "NVMLError_LibraryNotFound")
    with pytest.raises(MeterError, match=r"libnvidia-ml\.so was not found"):
        run_agent("127.0.0.1", 0, [0], nvml=fake.module)  # type: ignore[arg-type]
