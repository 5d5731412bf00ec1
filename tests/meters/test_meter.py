"""The measured meter end to end over the fake pynvml: accuracy, conservation, faults."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from meters import Hardware, Measurement
from meters.meter import EstimatedMeter, MeasuredMeter, build_meter
from meters.sources.base import EnergySample
from meters.sources.nvml import NvmlSource
from tests.meters.fake_pynvml import FakeNvml, ManualClock

ALPHA = 0.1
J_PER_TOKEN = 2.0  # per output token at a small batch (ML.ENERGY-like order of magnitude)


@dataclass
class Estimator:
    """Stands in for meters.estimate: a fixed J per output token, and it records calibration."""

    j_per_token: float = 0.3
    observed: list[tuple[str, int, int, float]] = field(default_factory=list)

    def estimate(self, model: str, prompt: int, output: int, latency_s: float) -> Measurement:
        energy_j = output * self.j_per_token
        return Measurement(energy_j, 0.0, latency_s, "estimated", "test-estimator", latency_s)

    def observe(self, model: str, prompt: int, output: int, gpu_energy_j: float) -> None:
        self.observed.append((model, prompt, output, gpu_energy_j))


def nvml_meter(
    fake: FakeNvml,
    estimator: Estimator,
    *,
    clock: Callable[[], float] = time.monotonic,
    tick_s: float = 0.1,
    gpus: tuple[int, ...] = (0,),
) -> MeasuredMeter:
    meter = build_meter(
        "nvml",
        hardware=Hardware(gpus=len(gpus)),
        gpus=gpus,
        tick_s=tick_s,
        alpha=ALPHA,
        fallback=estimator.estimate,
        observe=estimator.observe,
        nvml=fake.module,
        clock=clock,
    )
    assert isinstance(meter, MeasuredMeter)
    return meter


async def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


# -- a simulated workload in real time ---------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """One request of the workload, in 25 ms steps."""

    request_id: str
    prompt: int
    tokens_per_4_steps: int  # 4 = 40 tok/s, 2 = 20 tok/s, 3 = 30 tok/s
    first_step: int
    last_step: int
    streaming: bool = True


STEP_S = 0.025
WORKLOAD = [
    Plan("fast", prompt=120, tokens_per_4_steps=4, first_step=0, last_step=60),
    Plan("slow", prompt=40, tokens_per_4_steps=2, first_step=0, last_step=60),
    # The proxy sees nothing of a non-streaming request until it ends; it runs at the
    # streaming ones' mean rate, which is what the time-share rule assumes of it.
    Plan("whole", prompt=10, tokens_per_4_steps=3, first_step=0, last_step=60, streaming=False),
    Plan("late", prompt=80, tokens_per_4_steps=3, first_step=12, last_step=52),
]


@dataclass
class Outcome:
    fake: FakeNvml
    meter: MeasuredMeter
    estimator: Estimator
    measurements: dict[str, Measurement]


async def run_workload(fake: FakeNvml, meter: MeasuredMeter) -> dict[str, Measurement]:
    """Drive the fake GPU and the meter's tracks together, step by step, in real time."""
    tracks = {}
    produced = dict.fromkeys((p.request_id for p in WORKLOAD), 0)
    started = {}
    closing = []
    for step in range(max(p.last_step for p in WORKLOAD) + 2):
        for plan in WORKLOAD:
            rid = plan.request_id
            if step == plan.first_step:
                fake.request_started(rid)
                tracks[rid] = meter.open(rid, "llama-3.1-8b")
                started[rid] = time.monotonic()
            elif step == plan.first_step + 1:  # prefill done: the first token
                fake.token(rid, 1, prompt=plan.prompt)
                produced[rid] += 1
                if plan.streaming:
                    tracks[rid].first_token(plan.prompt)
                    tracks[rid].output_tokens(1)
            elif plan.first_step + 1 < step <= plan.last_step:
                count = plan.tokens_per_4_steps * (step + 1) // 4 - (
                    plan.tokens_per_4_steps * step // 4
                )
                if count:
                    fake.token(rid, count)
                    produced[rid] += count
                    if plan.streaming:
                        tracks[rid].output_tokens(count)
            if step == plan.last_step:
                fake.request_ended(rid)
                closing.append(
                    (
                        rid,
                        asyncio.ensure_future(
                            tracks[rid].close(
                                prompt_tokens=plan.prompt,
                                output_tokens=produced[rid],
                                cancelled=False,
                                latency_s=time.monotonic() - started[rid],
                            )
                        ),
                    )
                )
        await asyncio.sleep(STEP_S)
    return {rid: await future for rid, future in closing}


@pytest.fixture(scope="module")
def outcome() -> Outcome:
    fake = FakeNvml(
        idle_w=60.0,
        w_per_request=2.0,
        j_per_token=J_PER_TOKEN,
        j_per_prompt_token=ALPHA * J_PER_TOKEN,
    )
    estimator = Estimator()
    meter = nvml_meter(fake, estimator)

    async def scenario() -> dict[str, Measurement]:
        meter.start()
        await wait_until(lambda: meter.healthy)
        await asyncio.sleep(0.3)  # idle before
        measurements = await run_workload(fake, meter)
        await asyncio.sleep(0.3)  # idle after
        await meter.aclose()
        return measurements

    return Outcome(fake, meter, estimator, asyncio.run(scenario()))


def test_every_request_gets_its_true_energy_within_5_percent(outcome: Outcome) -> None:
    for rid, measurement in outcome.measurements.items():
        truth_j = outcome.fake.true_energy_j(rid)
        assert measurement.method == "measured"
        assert measurement.basis == "nvml"
        assert measurement.gpu_energy_j == pytest.approx(truth_j, rel=0.05), rid


def test_requests_plus_idle_equal_the_counter(outcome: Outcome) -> None:
    reads = outcome.fake.reads
    counter_j = (reads[-1][2] - reads[0][2]) / 1000.0
    attributed_j = sum(m.gpu_energy_j for m in outcome.measurements.values())
    assert attributed_j + outcome.meter.idle_energy_j == pytest.approx(counter_j, rel=1e-9)
    # the idle account holds the idle periods before and after the workload, at least
    assert outcome.meter.idle_energy_j >= 60.0 * 0.5


def test_the_fake_conserves_its_own_truth(outcome: Outcome) -> None:
    truth = outcome.fake.truth()
    assert set(truth.requests_j) == {p.request_id for p in WORKLOAD}
    assert sum(truth.requests_j.values()) + truth.idle_j == pytest.approx(truth.total_j, rel=1e-9)


def test_measured_figures_carry_server_share_hardware_time_and_calibrate(
    outcome: Outcome,
) -> None:
    for measurement in outcome.measurements.values():
        assert measurement.server_energy_j == pytest.approx(150.0 * measurement.hardware_s)
        assert 0.0 < measurement.hardware_s < measurement.duration_s
    # the busy period's hardware time is shared out completely
    busy_s = max(m.duration_s for m in outcome.measurements.values())
    total_hw_s = sum(m.hardware_s for m in outcome.measurements.values())
    assert total_hw_s == pytest.approx(busy_s, rel=0.1)
    observed = {
        (prompt, output): energy for _, prompt, output, energy in outcome.estimator.observed
    }
    assert len(observed) == len(WORKLOAD)
    assert sorted(observed.values()) == sorted(
        m.gpu_energy_j for m in outcome.measurements.values()
    )


# -- deterministic cases on a manual clock -----------------------------------------------


async def started_meter(
    fake: FakeNvml, clock: ManualClock, estimator: Estimator, **kwargs: object
) -> MeasuredMeter:
    # A tick far longer than the test: every reading after the baseline is an early close.
    meter = nvml_meter(fake, estimator, clock=clock, tick_s=3600.0, **kwargs)  # type: ignore[arg-type]
    meter.start()
    await wait_until(lambda: meter.healthy)
    return meter


async def test_a_request_is_final_at_its_end_without_waiting_for_a_tick() -> None:
    clock = ManualClock()
    fake = FakeNvml(idle_w=100.0, j_per_token=1.0, clock=clock)
    estimator = Estimator()
    meter = await started_meter(fake, clock, estimator)
    fake.request_started("a")
    track = meter.open("a", "m")
    for _ in range(10):
        clock.advance(0.05)
        fake.token("a", 2)
        track.output_tokens(2)
    fake.request_ended("a")
    measurement = await asyncio.wait_for(
        track.close(prompt_tokens=0, output_tokens=20, cancelled=False, latency_s=0.5), 5.0
    )
    assert measurement.method == "measured"
    assert measurement.gpu_energy_j == pytest.approx(fake.true_energy_j("a"), rel=1e-3)
    assert measurement.gpu_energy_j == pytest.approx(0.5 * 100.0 + 20.0, rel=1e-3)
    assert measurement.hardware_s == pytest.approx(0.5)
    assert measurement.duration_s == pytest.approx(0.5)
    await meter.aclose()


async def test_a_gpu_lost_mid_request_falls_back_to_the_estimate() -> None:
    clock = ManualClock()
    fake = FakeNvml(clock=clock)
    estimator = Estimator()
    meter = await started_meter(fake, clock, estimator)
    fake.request_started("a")
    track = meter.open("a", "m")
    clock.advance(0.2)
    fake.token("a", 5)
    track.output_tokens(5)
    fake.lose_gpu()
    clock.advance(0.2)
    measurement = await track.close(
        prompt_tokens=3, output_tokens=5, cancelled=False, latency_s=0.4
    )
    assert measurement.method == "estimated"
    assert measurement.basis == "test-estimator"
    assert measurement.gpu_energy_j == pytest.approx(1.5)
    assert not meter.healthy
    assert meter.last_error == "nvml: GPU is lost (fell off the bus or was reset)"
    assert estimator.observed == []  # estimates never calibrate the estimator

    fake.restore_gpu()  # a request after the GPU came back is measured again
    fake.request_started("b")
    track = meter.open("b", "m")
    clock.advance(0.3)
    fake.request_ended("b")
    measurement = await track.close(
        prompt_tokens=0, output_tokens=0, cancelled=False, latency_s=0.3
    )
    assert measurement.method == "measured"
    assert meter.healthy
    await meter.aclose()


async def test_a_call_that_raised_while_the_request_ran_marks_it_estimated() -> None:
    clock = ManualClock()
    fake = FakeNvml(clock=clock)
    estimator = Estimator()
    meter = await started_meter(fake, clock, estimator)
    fake.request_started("a")
    track = meter.open("a", "m")
    other = meter.open("other", "m")
    fake.raise_on("nvmlDeviceGetTotalEnergyConsumption", "NVMLError_Unknown")
    clock.advance(0.1)
    # the other request's end reads the counter, which fails
    await other.close(prompt_tokens=0, output_tokens=0, cancelled=False, latency_s=0.1)
    fake.stop_raising()
    clock.advance(0.1)
    measurement = await track.close(
        prompt_tokens=0, output_tokens=0, cancelled=False, latency_s=0.2
    )
    assert measurement.method == "estimated"
    assert meter.healthy  # the source answers again
    await meter.aclose()


async def test_a_counter_reset_mid_request_keeps_it_measured_and_accurate() -> None:
    clock = ManualClock()
    fake = FakeNvml(idle_w=80.0, j_per_token=1.0, clock=clock)
    clock.advance(600.0)  # the driver has been counting for a while: 48 kJ
    estimator = Estimator()
    meter = await started_meter(fake, clock, estimator)
    fake.request_started("a")
    track = meter.open("a", "m")
    for step in range(8):
        clock.advance(0.1)
        fake.token("a", 3)
        track.output_tokens(3)
        if step == 4:
            fake.reset_counter()
    fake.request_ended("a")
    measurement = await track.close(
        prompt_tokens=0, output_tokens=24, cancelled=False, latency_s=0.8
    )
    assert measurement.method == "measured"
    # one long tick spans the reset; it is filled from the power reading over that tick
    assert measurement.gpu_energy_j == pytest.approx(fake.true_energy_j("a"), rel=0.01)
    await meter.aclose()


async def test_telemetry_readings_per_gpu() -> None:
    clock = ManualClock()
    fake = FakeNvml(idle_w=70.0, gpus=2, clock=clock)
    estimator = Estimator()
    meter = await started_meter(fake, clock, estimator, gpus=(0, 1))
    clock.advance(1.0)
    fake.request_started("a")
    track = meter.open("a", "m")
    clock.advance(1.0)
    fake.request_ended("a")
    measurement = await track.close(
        prompt_tokens=0, output_tokens=0, cancelled=False, latency_s=1.0
    )
    readings = {r.gpu_id: r for r in meter.gpu_readings()}
    assert set(readings) == {"0", "1"}
    assert readings["0"].energy_j == pytest.approx(140.0, abs=0.01)
    assert readings["1"].power_w == pytest.approx(70.0, abs=0.01)
    # One tick spans the baseline to the request's end (the tick is an hour here). It is split
    # at the arrival on the quiet GPUs: the second before it is idle (by time: no idle power
    # was measured yet), the second after is the request's, both GPUs.
    assert meter.idle_energy_j == pytest.approx(140.0, abs=0.01)
    assert measurement.gpu_energy_j == pytest.approx(140.0, abs=0.01)
    assert measurement.hardware_s == pytest.approx(1.0)
    assert measurement.server_energy_j == pytest.approx(2 * 150.0 * 1.0)
    await meter.aclose()


async def test_a_meter_never_started_estimates_instead_of_failing() -> None:
    fake = FakeNvml()
    meter = nvml_meter(fake, Estimator())
    track = meter.open("a", "m")
    measurement = await track.close(
        prompt_tokens=1, output_tokens=10, cancelled=True, latency_s=0.1
    )
    assert measurement.method == "estimated"
    await meter.aclose()


async def test_estimate_kind_asks_the_estimator() -> None:
    estimator = Estimator(j_per_token=0.2)
    meter = build_meter("estimate", hardware=Hardware(), fallback=estimator.estimate)
    assert isinstance(meter, EstimatedMeter)
    meter.start()
    track = meter.open("a", "m")
    track.first_token(10)
    track.output_tokens(5)
    measurement = await track.close(
        prompt_tokens=10, output_tokens=50, cancelled=False, latency_s=1.0
    )
    assert measurement == estimator.estimate("m", 10, 50, 1.0)
    assert meter.healthy and meter.idle_energy_j == 0.0 and meter.gpu_readings() == []
    await meter.aclose()


def test_unknown_kinds_and_missing_urls_are_refused() -> None:
    estimator = Estimator()
    with pytest.raises(ValueError, match="unknown meter kind"):
        build_meter("rapl", hardware=Hardware(), fallback=estimator.estimate)
    with pytest.raises(ValueError, match="url"):
        build_meter("prometheus", hardware=Hardware(), fallback=estimator.estimate)


class HeldSource:
    """Wraps a source; once `hold` is set, reads wait for `release` after reading the
    counters (a slow GPU read: requests end after its time stamp and before it returns)."""

    def __init__(self, inner: NvmlSource) -> None:
        self.inner = inner
        self.name = inner.name
        self.hold = threading.Event()
        self.release = threading.Event()
        self.held = threading.Event()  # a read is waiting for `release`

    def read(self) -> EnergySample:
        sample = self.inner.read()
        if self.hold.is_set():
            self.held.set()
            self.release.wait(10.0)
        return sample

    def close(self) -> None:
        self.inner.close()


class SteppingClock:
    """The manual clock plus a nanosecond more at every call: every end is later than the
    last read, as on a real clock, while the fake GPU's time stands still."""

    def __init__(self, manual: ManualClock) -> None:
        self.manual = manual
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        return self.manual() + self.calls * 1e-9


async def test_a_burst_of_ends_shares_reads_and_every_request_stays_measured() -> None:
    manual = ManualClock()
    clock = SteppingClock(manual)
    fake = FakeNvml(idle_w=100.0, j_per_token=1.0, clock=manual)
    source = HeldSource(NvmlSource((0,), nvml=fake.module, clock=clock))
    estimator = Estimator()
    meter = MeasuredMeter(
        source, fallback=estimator.estimate, tick_s=3600.0, alpha=ALPHA, clock=clock
    )
    meter.start()
    await wait_until(lambda: meter.healthy)
    rids = [f"r{i}" for i in range(32)]
    tracks = {}
    for rid in rids:
        fake.request_started(rid)
        tracks[rid] = meter.open(rid, "m")
    manual.advance(0.5)
    for rid in rids:
        fake.token(rid, 5)
        tracks[rid].output_tokens(5)
        fake.request_ended(rid)
    reads_before = len(fake.reads)
    source.hold.set()  # the first end's read is slow; the other 31 ends arrive meanwhile

    async def close(rid: str) -> Measurement:
        return await tracks[rid].close(
            prompt_tokens=0, output_tokens=5, cancelled=False, latency_s=0.5
        )

    first = asyncio.ensure_future(close(rids[0]))
    await asyncio.to_thread(source.held.wait, 10.0)
    rest = [asyncio.ensure_future(close(rid)) for rid in rids[1:]]
    await asyncio.sleep(0)
    source.release.set()
    measurements = await asyncio.wait_for(asyncio.gather(first, *rest), 10.0)
    await meter.aclose()

    assert all(m.method == "measured" for m in measurements)
    assert len(fake.reads) - reads_before <= 2  # two reads served 32 ends
    for rid, measurement in zip(rids, measurements, strict=True):
        assert measurement.gpu_energy_j == pytest.approx(fake.true_energy_j(rid), rel=1e-6)
    counter_j = (fake.reads[-1][2] - fake.reads[0][2]) / 1000.0
    total_j = sum(m.gpu_energy_j for m in measurements) + meter.idle_energy_j
    assert total_j == pytest.approx(counter_j, rel=1e-9)
