"""The Attributor against a simulated engine whose truth is known (methodology §2b).

Time is driven by hand: an `EngineSim` produces tokens on a schedule, and the attributor sees
the events of the requests its replica relays (a few ms later, as a proxy would) and a sample
of the energy counter and the engine's counters every tick. Each scenario of issue 10 at the
attributor's level: other replicas and bypass traffic, 5/20/100 tok/s together, 5-token chunks,
non-streaming requests, a short request on an idle GPU, a counter that steps once a second.
"""

from __future__ import annotations

import heapq
import math
import statistics
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meters.attribution import Attributor
from meters.sources.engine import ActivitySample
from tests.meters.fake_pynvml import ManualClock
from tests.support.engine_sim import EngineSim

ALPHA = 0.1
TICK_S = 0.1
LAG_S = 0.003  # the proxy sees a chunk this long after the engine made it


@dataclass(frozen=True)
class Plan:
    request_id: str
    start_s: float
    output_tokens: int
    tokens_per_s: float
    prompt_tokens: int = 8
    chunk: int = 1  # tokens per chunk
    ttft_s: float = 0.03  # prefill: the first chunk comes this long after the start
    stream: bool = True
    seen: bool = True  # relayed by this replica


@dataclass
class Run:
    attributor: Attributor
    truth: dict[str, float]
    idle_true_j: float
    measured_j: float
    energy: dict[str, float]


def run(
    plans: list[Plan],
    *,
    until_s: float | None = None,
    counter_step_s: float = 0.0,
    engine: bool = True,
) -> Run:
    clock = ManualClock(0.0)
    sim = EngineSim(idle_w=100.0, j_per_token=1.0, j_per_prompt_token=ALPHA, clock=clock)
    attributor = Attributor(ALPHA)
    events: list[tuple[float, int, str, str, int]] = []
    order = 0
    for plan in plans:
        chunks = math.ceil(plan.output_tokens / plan.chunk)
        events.append((plan.start_s, order, "start", plan.request_id, 0))
        order += 1
        for index in range(chunks):
            count = min(plan.chunk, plan.output_tokens - index * plan.chunk)
            at_s = plan.start_s + plan.ttft_s + index * plan.chunk / plan.tokens_per_s
            events.append((at_s, order, "token", plan.request_id, count))
            order += 1
        end_s = at_s
        events.append((end_s + 1e-6, order, "end", plan.request_id, 0))
        order += 1
    last_s = max(e[0] for e in events) + 2 * TICK_S
    until_s = max(until_s or 0.0, last_s)
    for k in range(0, int(until_s / TICK_S) + 2):
        events.append((k * TICK_S + 0.0005, order, "sample", "", 0))
        order += 1
    heapq.heapify(events)
    by_id = {p.request_id: p for p in plans}
    seen_tokens: dict[str, int] = {}
    last_energy_j: float | None = None
    while events:
        at_s, _, kind, rid, count = heapq.heappop(events)
        clock.now_s = at_s
        plan = by_id.get(rid)
        if kind == "start":
            sim.started(rid, plan.prompt_tokens)
            if plan.seen:
                attributor.start(rid, at_s)
        elif kind == "token":
            sim.token(rid, count)
            if plan.seen and plan.stream:
                heapq.heappush(events, (at_s + LAG_S, order, "seen", rid, count))
                order += 1
        elif kind == "seen":
            if seen_tokens.get(rid, 0) == 0:
                attributor.first_token(rid, plan.prompt_tokens, at_s)
            seen_tokens[rid] = seen_tokens.get(rid, 0) + count
            attributor.output_tokens(rid, count, at_s)
        elif kind == "end":
            sim.ended(rid)
            if plan.seen:
                heapq.heappush(events, (at_s + LAG_S, order, "seen_end", rid, 0))
                order += 1
        elif kind == "seen_end":
            attributor.end(
                rid, at_s, prompt_tokens=plan.prompt_tokens, output_tokens=plan.output_tokens
            )
            last_energy_j = read(sim, attributor, at_s, counter_step_s, last_energy_j, engine)
        else:
            last_energy_j = read(sim, attributor, at_s, counter_step_s, last_energy_j, engine)
    truth, idle_j, _total = sim.truth(clock.now_s)
    energy = {}
    for plan in plans:
        if plan.seen:
            totals = attributor.pop(plan.request_id)
            assert totals is not None and totals.settled, plan.request_id
            energy[plan.request_id] = totals.energy_j
    return Run(attributor, truth, idle_j, attributor.measured_energy_j, energy)


def read(
    sim: EngineSim,
    attributor: Attributor,
    at_s: float,
    counter_step_s: float,
    last_energy_j: float | None,
    engine: bool,
) -> float:
    """One sampler read: the energy counter (stepped, like DCGM's, when asked) and the
    engine's counters from its /metrics text, as the meter takes them."""
    if counter_step_s:
        step_s = math.floor(at_s / counter_step_s) * counter_step_s
        energy_j = sim.idle_w * step_s + _impulses_before(sim, step_s)
    else:
        energy_j = sim.energy_j()
    moved = last_energy_j is None or energy_j != last_energy_j
    text = sim.metrics_text()
    activity = ActivitySample(
        at_s, _value(text, "prompt"), _value(text, "generation"), _value(text, "running")
    )
    attributor.sample(at_s, energy_j, activity if engine else None, moved=moved)
    return energy_j


def _impulses_before(sim: EngineSim, at_s: float) -> float:
    return sim._impulse_before(at_s)


def _value(text: str, which: str) -> float:
    name = {
        "prompt": "vllm:prompt_tokens_total",
        "generation": "vllm:generation_tokens_total",
        "running": "vllm:num_requests_running",
    }[which]
    for line in text.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(name)


def ratios(result: Run) -> dict[str, float]:
    return {rid: e / result.truth[rid] for rid, e in result.energy.items()}


def assert_true_to(result: Run, each: float = 0.10, median: float = 0.03) -> None:
    r = ratios(result)
    assert all(abs(v - 1) <= each for v in r.values()), r
    assert abs(statistics.median(r.values()) - 1) <= median, r


def assert_conserved(result: Run) -> None:
    a = result.attributor
    booked = sum(result.energy.values()) + a.idle_energy_j + a.other_energy_j + a.held_energy_j
    assert booked == pytest.approx(a.measured_energy_j, rel=1e-9)


def test_streams_at_5_20_and_100_tokens_per_second_each_get_their_own_energy() -> None:
    plans = [
        Plan("slow", 0.0, 15, 5.0),
        Plan("mid", 0.05, 60, 20.0),
        Plan("fast", 0.1, 300, 100.0),
    ]
    result = run(plans)
    assert_true_to(result)
    assert_conserved(result)


def test_five_token_chunks_beside_one_token_chunks_count_tokens_not_chunks() -> None:
    plans = [Plan("fives", 0.0, 200, 50.0, chunk=5), Plan("ones", 0.0, 200, 50.0, chunk=1)]
    result = run(plans)
    assert_true_to(result)


def test_traffic_that_bypasses_this_replica_goes_to_other_not_to_its_requests() -> None:
    plans = [Plan(f"p{i}", 0.1 * i, 80, 40.0) for i in range(4)]
    plans += [Plan(f"b{i}", 0.15 * i, 80, 40.0, seen=False) for i in range(2)]
    result = run(plans)
    assert_true_to(result)
    assert_conserved(result)
    bypass_true = result.truth["b0"] + result.truth["b1"]
    assert result.attributor.other_energy_j == pytest.approx(bypass_true, rel=0.05)


def test_two_replicas_split_6_and_2_count_the_gpu_once_between_them() -> None:
    a = [Plan(f"a{i}", 0.07 * i, 60, 30.0) for i in range(6)]
    b = [Plan(f"b{i}", 0.11 * i, 60, 30.0) for i in range(2)]
    one = run(a + [Plan(p.request_id, p.start_s, 60, 30.0, seen=False) for p in b])
    two = run([Plan(p.request_id, p.start_s, 60, 30.0, seen=False) for p in a] + b)
    assert_true_to(one)
    assert_true_to(two)
    requests_j = sum(one.energy.values()) + sum(two.energy.values())
    cluster = requests_j + one.attributor.idle_energy_j
    assert cluster == pytest.approx(one.measured_j, rel=0.02)


def test_non_streaming_requests_are_credited_from_the_engine_over_their_window() -> None:
    plans = [
        Plan("ns20", 0.0, 40, 20.0, stream=False),
        Plan("ns100", 0.3, 60, 100.0, stream=False),
        Plan("s50a", 0.0, 100, 50.0),
        Plan("s50b", 0.2, 100, 50.0),
    ]
    result = run(plans)
    assert_true_to(result)
    assert_conserved(result)


def test_a_short_request_on_an_idle_gpu_does_not_carry_the_idle_time_before_it() -> None:
    # 20 tokens at 100 tok/s arriving mid-tick after a second of idle.
    result = run([Plan("short", 1.047, 20, 100.0)], until_s=2.0)
    assert_true_to(result, each=0.05, median=0.05)
    assert result.attributor.idle_energy_j == pytest.approx(result.idle_true_j, rel=0.02)


def test_a_counter_that_steps_once_a_second_is_split_over_its_own_steps() -> None:
    # The GPU idles for 2 s first (the proxy was up before the traffic): idle power is known.
    plans = [
        Plan("a", 2.2, 120, 40.0),
        Plan("b", 2.5, 60, 20.0),
        Plan("c", 3.3, 150, 100.0),
    ]
    result = run(plans, counter_step_s=1.0, until_s=8.0)
    assert_true_to(result)
    assert_conserved(result)


def test_without_engine_counters_a_stalled_stream_weighs_its_own_rate() -> None:
    plans = [Plan("slow", 0.0, 10, 5.0), Plan("fast1", 0.0, 200, 100.0)]
    plans.append(Plan("fast2", 0.0, 200, 100.0))
    result = run(plans, engine=False)
    assert_true_to(result, each=0.15, median=0.05)


plan_strategy = st.builds(
    Plan,
    request_id=st.uuids().map(str),
    start_s=st.floats(0.0, 1.0),
    output_tokens=st.integers(1, 40),
    tokens_per_s=st.sampled_from([5.0, 20.0, 50.0, 100.0]),
    prompt_tokens=st.integers(0, 100),
    chunk=st.sampled_from([1, 3, 5]),
    stream=st.booleans(),
    seen=st.booleans(),
)


@settings(max_examples=40, deadline=None)
@given(st.lists(plan_strategy, min_size=1, max_size=6, unique_by=lambda p: p.request_id))
def test_every_joule_is_booked_once_whatever_the_mix(plans: list[Plan]) -> None:
    result = run(plans)
    assert_conserved(result)
    assert all(e >= 0.0 for e in result.energy.values())
    a = result.attributor
    assert a.idle_energy_j >= 0.0 and a.other_energy_j >= 0.0 and a.held_energy_j == 0.0


@settings(max_examples=40, deadline=None)
@given(
    st.floats(0.0, 1.0),
    st.integers(1, 60),
    st.sampled_from([5.0, 20.0, 100.0]),
    st.sampled_from([1, 5]),
)
def test_a_lone_request_gets_all_of_its_ticks_non_idle_energy(
    start_s: float, tokens: int, rate: float, chunk: int
) -> None:
    result = run([Plan("only", start_s, tokens, rate, chunk=chunk)])
    a = result.attributor
    assert a.other_energy_j == pytest.approx(0.0, abs=1e-6)
    assert result.energy["only"] + a.idle_energy_j == pytest.approx(a.measured_energy_j, rel=1e-9)
