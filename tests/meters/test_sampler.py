"""The sampler: a fixed tick on its own thread, early reads on demand, health."""

from __future__ import annotations

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
