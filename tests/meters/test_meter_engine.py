"""A measured meter with the engine's counters: `engine` figures while they answer, `local`
ones (never a failed request) while they do not, and what the log says each way."""

from __future__ import annotations

import asyncio
import logging

import pytest

from meters.estimate import Estimator
from meters.meter import MeasuredMeter, build_meter
from meters.types import Hardware, Measurement
from tests.meters.fake_pynvml import FakeNvml, ManualClock
from tests.meters.test_sources_prometheus import Exporter, exporter  # noqa: F401 (fixture)
from tests.support.vllm_page import vllm_page


async def started(
    fake: FakeNvml, clock: ManualClock, url: str, activity: str = "auto", **kw: object
) -> MeasuredMeter:
    meter = build_meter(
        "nvml",
        hardware=Hardware(),
        tick_s=3600.0,  # every read after the baseline is a request's early read
        fallback=Estimator(Hardware(active_params_b=8.0)).estimate,
        nvml=fake.module,
        clock=clock,
        activity=activity,
        activity_url=url,
        **kw,  # type: ignore[arg-type]
    )
    assert isinstance(meter, MeasuredMeter)
    meter.start()
    for _ in range(400):
        if meter.healthy:
            break
        await asyncio.sleep(0.005)
    return meter


async def one_request(
    meter: MeasuredMeter, fake: FakeNvml, clock: ManualClock, page: Exporter, rid: str
) -> Measurement:
    fake.request_started(rid)
    track = meter.open(rid, "m")
    for _ in range(5):
        clock.advance(0.1)
        fake.token(rid, 4)
        page.generation += 4
        page.body = vllm_page(models={"m": (0, page.generation, 1)})
        track.output_tokens(4)
    fake.request_ended(rid)
    return await track.close(prompt_tokens=0, output_tokens=20, cancelled=False, latency_s=0.5)


async def test_a_lost_activity_url_falls_back_to_local_and_back_and_says_so(
    exporter: Exporter,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    fake = FakeNvml(idle_w=100.0, j_per_token=1.0, clock=clock)
    exporter.generation = 0
    exporter.body = vllm_page(models={"m": (0, 0, 0)})
    meter = await started(fake, clock, exporter.url)
    first = await one_request(meter, fake, clock, exporter, "a")
    assert (first.method, first.attribution) == ("measured", "engine")
    assert first.gpu_energy_j == pytest.approx(fake.true_energy_j("a"), rel=0.02)

    exporter.status = 503  # the model server's /metrics goes away mid-run
    with caplog.at_level(logging.WARNING, logger="meters.sampler"):
        second = await one_request(meter, fake, clock, exporter, "b")
        third = await one_request(meter, fake, clock, exporter, "c")
    assert (second.method, second.attribution) == ("measured", "local")
    assert (third.method, third.attribution) == ("measured", "local")
    assert second.gpu_energy_j == pytest.approx(fake.true_energy_j("b"), rel=0.02)
    lost = [r for r in caplog.records if "falls back to local" in r.getMessage()]
    assert len(lost) == 1, caplog.text  # said once, not at every tick
    assert meter.attribution == "local"

    exporter.status = 200
    clock.advance(5.0)  # past the retry pause
    with caplog.at_level(logging.WARNING, logger="meters.sampler"):
        await one_request(meter, fake, clock, exporter, "d")  # its first tick still local
        fifth = await one_request(meter, fake, clock, exporter, "e")
    assert fifth.attribution == "engine"
    assert any("answer again" in r.getMessage() for r in caplog.records)
    await meter.aclose()


async def test_a_server_without_engine_counters_means_local_for_good(
    exporter: Exporter,  # noqa: F811
) -> None:
    clock = ManualClock()
    fake = FakeNvml(idle_w=100.0, j_per_token=1.0, clock=clock)
    exporter.body = "llamacpp:tokens_predicted_total 12\n"
    told: list[str] = []
    exporter.generation = 0
    meter = await started(fake, clock, exporter.url, on_local=told.append)
    measurement = await one_request(meter, fake, clock, exporter, "a")
    assert (measurement.method, measurement.attribution) == ("measured", "local")
    assert told and "vllm:generation_tokens_total" in told[0]
    await meter.aclose()


async def test_activity_local_never_reads_the_engine(exporter: Exporter) -> None:  # noqa: F811
    clock = ManualClock()
    fake = FakeNvml(idle_w=100.0, clock=clock)
    told: list[str] = []
    meter = await started(fake, clock, "", activity="local", on_local=told.append)
    assert told == ["no engine activity source"]
    assert exporter.scrapes == 0
    await meter.aclose()
