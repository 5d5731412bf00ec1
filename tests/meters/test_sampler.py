"""The sampler: a fixed tick on its own thread, early reads on demand, health."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

import pytest

from meters import MeterError
from meters.attribution import Attributor
from meters.sampler import Sampler
from meters.sources.base import EnergySample
from tests.meters.fake_pynvml import ManualClock


class ScriptedSource:
    """A source at a constant power on a given clock; `failure` makes reads raise it."""

    name = "scripted"

    def __init__(self, clock: Callable[[], float], power_w: float = 100.0) -> None:
        self.clock = clock
        self.power_w = power_w
        self.failure: Exception | None = None
        self.reads = 0
        self.closed = False
        self._start_s = clock()

    def read(self) -> EnergySample:
        self.reads += 1
        if self.failure is not None:
            raise self.failure
        now_s = self.clock()
        return EnergySample(now_s, {"0": (now_s - self._start_s) * self.power_w})

    def close(self) -> None:
        self.closed = True


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


def test_sample_now_closes_a_tick_and_attributes_it() -> None:
    clock = ManualClock()
    source = ScriptedSource(clock, power_w=100.0)
    sampler = Sampler(source, Attributor(0.1), clock=clock)
    sampler.sample_now()  # baseline
    sampler.request_started("a", clock())
    sampler.output_tokens("a", 3)
    clock.advance(0.25)
    sampler.request_ended("a", clock())
    sampler.sample_now()
    energy = sampler.pop("a")
    assert energy is not None and energy.settled
    assert energy.energy_j == pytest.approx(25.0)
    assert sampler.healthy


def test_an_early_read_is_skipped_when_a_sample_already_covers_the_time() -> None:
    clock = ManualClock()
    source = ScriptedSource(clock)
    sampler = Sampler(source, Attributor(0.1), clock=clock)
    sampler.sample_now()
    sampler.sample_now(not_before_s=clock() - 0.05)
    assert source.reads == 1
    clock.advance(0.1)
    sampler.sample_now(not_before_s=clock())
    assert source.reads == 2


def test_health_follows_failures_and_recovery() -> None:
    clock = ManualClock()
    source = ScriptedSource(clock)
    sampler = Sampler(source, Attributor(0.1), clock=clock)
    assert not sampler.healthy  # nothing read yet
    sampler.sample_now()
    assert sampler.healthy
    source.failure = MeterError("nvml: GPU is lost")
    for _ in range(3):
        with pytest.raises(MeterError):
            sampler.sample_now()
    assert not sampler.healthy
    assert sampler.consecutive_failures == 3
    assert sampler.last_error == "nvml: GPU is lost"
    source.failure = None
    clock.advance(0.1)
    sampler.sample_now()
    assert sampler.healthy
    assert sampler.failures_total == 3


def test_the_thread_samples_on_its_tick_and_stops() -> None:
    source = ScriptedSource(time.monotonic)
    sampler = Sampler(source, Attributor(0.1), tick_s=0.01)
    sampler.start()
    sampler.start()  # idempotent: still one thread
    assert sum(t.name.startswith("footprint-sampler") for t in threading.enumerate()) == 1
    wait_until(lambda: sampler.reads_total >= 5)
    sampler.stop()
    assert not sampler.running
    reads = source.reads
    time.sleep(0.05)
    assert source.reads == reads
    assert sampler.measured_energy_j > 0.0
    assert sampler.idle_energy_j == pytest.approx(sampler.measured_energy_j)


def test_a_source_bug_does_not_kill_the_thread() -> None:
    source = ScriptedSource(time.monotonic)
    source.failure = RuntimeError("bug in a source")
    sampler = Sampler(source, Attributor(0.1), tick_s=0.01)
    sampler.start()
    wait_until(lambda: sampler.failures_total >= 3)
    assert sampler.running
    assert sampler.last_error == "RuntimeError: bug in a source"
    source.failure = None
    wait_until(lambda: sampler.healthy)
    sampler.stop()


def test_tick_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Sampler(ScriptedSource(time.monotonic), Attributor(0.1), tick_s=0.0)


# -- early reads: on the sampler thread, coalesced --------------------------------------


class GatedSource(ScriptedSource):
    """A ScriptedSource whose reads after the first wait for `gate`, noting their thread."""

    def __init__(self, clock: Callable[[], float], power_w: float = 100.0) -> None:
        super().__init__(clock, power_w)
        self.gate = threading.Event()
        self.reading = threading.Event()  # a gated read has begun
        self.read_threads: list[str] = []

    def read(self) -> EnergySample:
        self.read_threads.append(threading.current_thread().name)
        if self.reads >= 1:
            self.reading.set()
            self.gate.wait(10.0)
        return super().read()


async def test_early_reads_run_on_the_sampler_thread_and_coalesce() -> None:
    clock = ManualClock()
    source = GatedSource(clock, power_w=100.0)
    # A tick far longer than the test: every read after the first is an early one.
    sampler = Sampler(source, Attributor(0.1), tick_s=3600.0, clock=clock)
    sampler.start()
    await asyncio.to_thread(wait_until, lambda: sampler.healthy)
    for rid in ("first", *(f"r{i}" for i in range(20))):
        sampler.request_started(rid, clock())
    clock.advance(1.0)
    sampler.request_ended("first", clock())
    first = asyncio.ensure_future(sampler.read_early())
    await asyncio.to_thread(source.reading.wait, 10.0)  # that read is under way
    for i in range(20):
        sampler.request_ended(f"r{i}", clock())
    rest = [asyncio.ensure_future(sampler.read_early()) for _ in range(20)]
    await asyncio.sleep(0)  # every early read is now waiting on the thread
    source.gate.set()
    await asyncio.wait_for(asyncio.gather(first, *rest), 10.0)
    await asyncio.to_thread(sampler.stop)

    # the 20 requests that ended during the first read shared one read after it
    assert source.reads == 3
    assert sampler.early_reads_total == 2 and sampler.early_waiters_total == 21
    assert set(source.read_threads) == {"footprint-sampler-scripted"}
    shares = [sampler.pop(rid) for rid in ("first", *(f"r{i}" for i in range(20)))]
    assert all(s is not None and s.settled for s in shares)
    # one second at 100 W, shared by 21 requests in flight; nothing left over
    assert sum(s.energy_j for s in shares if s is not None) == pytest.approx(100.0)
    assert sampler.idle_energy_j == 0.0


async def test_a_failed_early_read_raises_meter_error_for_every_waiter() -> None:
    clock = ManualClock()
    source = ScriptedSource(clock)
    sampler = Sampler(source, Attributor(0.1), tick_s=3600.0, clock=clock)
    sampler.start()
    await asyncio.to_thread(wait_until, lambda: sampler.healthy)
    source.failure = MeterError("nvml: GPU is lost")
    results = await asyncio.gather(
        *(sampler.read_early() for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, MeterError) for r in results)
    assert str(results[0]) == "nvml: GPU is lost"
    # a bug in the source is a MeterError to the waiter too, and the thread goes on
    source.failure = RuntimeError("bug in a source")
    with pytest.raises(MeterError, match="RuntimeError: bug in a source"):
        await sampler.read_early()
    assert sampler.running and not sampler.healthy
    source.failure = None
    clock.advance(0.1)
    await sampler.read_early()
    assert sampler.healthy
    await asyncio.to_thread(sampler.stop)


async def test_an_early_read_without_the_thread_reads_off_the_loop() -> None:
    clock = ManualClock()
    source = GatedSource(clock)
    source.gate.set()
    sampler = Sampler(source, Attributor(0.1), clock=clock)
    await sampler.read_early()  # never started
    sampler.start()
    await asyncio.to_thread(wait_until, lambda: sampler.reads_total >= 2)
    await asyncio.to_thread(sampler.stop)
    clock.advance(0.1)
    await sampler.read_early()  # stopped
    assert sampler.reads_total == 3
    loop_thread = threading.current_thread().name
    assert loop_thread not in source.read_threads
    assert not sampler.running


async def test_stopping_answers_the_early_reads_still_waiting() -> None:
    clock = ManualClock()
    source = GatedSource(clock)
    sampler = Sampler(source, Attributor(0.1), tick_s=3600.0, clock=clock)
    sampler.start()
    await asyncio.to_thread(wait_until, lambda: sampler.healthy)
    clock.advance(0.5)
    waiting = asyncio.ensure_future(sampler.read_early())
    await asyncio.to_thread(source.reading.wait, 10.0)
    stopping = asyncio.ensure_future(asyncio.to_thread(sampler.stop))
    late = asyncio.ensure_future(sampler.read_early())  # asked while the thread stops
    await asyncio.sleep(0)
    source.gate.set()
    await asyncio.wait_for(asyncio.gather(waiting, late, stopping), 10.0)
    assert not sampler.running
    assert sampler.healthy


async def test_a_failing_source_is_logged_once_then_once_a_minute_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    source = ScriptedSource(clock)
    source.failure = MeterError("nvml: libnvidia-ml.so was not found")
    sampler = Sampler(source, Attributor(0.1), clock=clock)
    caplog.set_level(logging.DEBUG, logger="meters.sampler")

    async def reads(count: int) -> None:
        for _ in range(count):
            with pytest.raises(MeterError):
                await sampler.read_early()
            clock.advance(0.125)  # exact in binary: read k happens at (k - 1) / 8 s

    await reads(300)  # 37.5 s of ticks at 8 Hz
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert "energy source scripted failed: nvml: libnvidia-ml.so was not found" in lines[0]
    await reads(181)  # the last of these comes 60 s after the first read
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "still failing" in lines[1] and "480 more failed read(s) in the last 60 s" in lines[1]
    assert sampler.failures_total == 481
    source.failure = None
    await sampler.read_early()
    assert "answers again" in caplog.records[-1].getMessage()
    source.failure = MeterError("nvml: GPU is lost")
    with pytest.raises(MeterError):
        await sampler.read_early()  # a new outage is logged at once
    assert "failed: nvml: GPU is lost" in caplog.records[-1].getMessage()
    assert len(caplog.records) == 4
