"""Per-tick attribution (methodology §2): conservation, fairness, the time-share rule."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meters.attribution import Attributor, TickActivity, attribute_tick

REL = 1e-9


def close_to(actual: float, expected: float) -> bool:
    return math.isclose(actual, expected, rel_tol=REL, abs_tol=1e-9)


energies = st.floats(min_value=0.0, max_value=1e6, allow_nan=False)
durations = st.floats(min_value=1e-4, max_value=10.0, allow_nan=False)
alphas = st.floats(min_value=0.0, max_value=2.0, allow_nan=False)
activity = st.builds(
    lambda overlap, prompt, output: (overlap, prompt, output),
    st.floats(min_value=0.0, max_value=1.0, allow_nan=False),
    st.integers(min_value=0, max_value=4000),
    st.integers(min_value=0, max_value=200),
)


@given(energies, durations, st.lists(activity, max_size=64), alphas)
def test_a_tick_conserves_energy_and_no_share_is_negative(
    energy_j: float, duration_s: float, raw: list[tuple[float, int, int]], alpha: float
) -> None:
    requests = [
        TickActivity(f"r{i}", overlap * duration_s, prompt, output)
        for i, (overlap, prompt, output) in enumerate(raw)
    ]
    split = attribute_tick(energy_j, duration_s, requests, alpha)
    assert close_to(sum(split.shares_j.values()) + split.idle_j, energy_j)
    assert all(share >= 0.0 for share in split.shares_j.values())
    assert split.idle_j >= 0.0
    assert set(split.shares_j) == {r.request_id for r in requests}
    hardware_s = sum(split.hardware_s.values())
    if energy_j > 0 and split.idle_j == 0.0:  # someone carried weight: the tick is theirs
        assert hardware_s == pytest.approx(duration_s, rel=REL)
    elif split.idle_j > 0.0:
        assert hardware_s == 0.0


@given(energies, durations, activity, alphas)
def test_a_request_alone_gets_the_whole_tick(
    energy_j: float, duration_s: float, raw: tuple[float, int, int], alpha: float
) -> None:
    overlap, prompt, output = raw
    request = TickActivity("only", max(overlap, 0.01) * duration_s, prompt, output)
    split = attribute_tick(energy_j, duration_s, [request], alpha)
    if alpha * prompt + output > 0 or not request.visible:
        assert split.shares_j["only"] == pytest.approx(energy_j, rel=REL)
        assert split.idle_j == 0.0
        assert split.hardware_s["only"] == pytest.approx(duration_s, rel=REL)


@given(energies, durations, activity, st.lists(activity, max_size=10), alphas)
def test_two_identical_requests_get_equal_shares(
    energy_j: float,
    duration_s: float,
    twin: tuple[float, int, int],
    others: list[tuple[float, int, int]],
    alpha: float,
) -> None:
    overlap, prompt, output = twin
    requests = [
        TickActivity("a", overlap * duration_s, prompt, output),
        TickActivity("b", overlap * duration_s, prompt, output),
    ] + [TickActivity(f"o{i}", o * duration_s, p, t) for i, (o, p, t) in enumerate(others)]
    split = attribute_tick(energy_j, duration_s, requests, alpha)
    assert split.shares_j["a"] == split.shares_j["b"]
    assert split.hardware_s["a"] == split.hardware_s["b"]


def test_an_empty_tick_goes_to_idle() -> None:
    split = attribute_tick(12.5, 0.1, [], 0.1)
    assert split.shares_j == {}
    assert split.idle_j == 12.5


def test_tokens_weigh_output_one_and_prompt_alpha() -> None:
    # a: 100 prompt tokens prefilled (weight 10); b: 30 output tokens (weight 30).
    split = attribute_tick(
        80.0, 0.1, [TickActivity("a", 0.1, 100, 0), TickActivity("b", 0.1, 0, 30)], 0.1
    )
    assert split.shares_j == pytest.approx({"a": 20.0, "b": 60.0})
    assert split.hardware_s == pytest.approx({"a": 0.025, "b": 0.075})


def test_invisible_request_weighs_its_overlap_at_the_visible_rate() -> None:
    # Visible: 20 tokens over 0.1 s. Hidden (non-streaming): in flight 0.05 s -> weight 10.
    split = attribute_tick(
        30.0, 0.1, [TickActivity("seen", 0.1, 0, 20), TickActivity("hidden", 0.05)], 0.1
    )
    assert split.shares_j == pytest.approx({"seen": 20.0, "hidden": 10.0})


def test_a_neighbours_prefill_does_not_raise_the_rate_of_an_invisible_request() -> None:
    # Visible: 100 prompt tokens (weight 10) and 10 output tokens; the hidden request is
    # credited the visible decode rate only (10 per tick), not the prefill burst.
    split = attribute_tick(
        60.0, 0.1, [TickActivity("seen", 0.1, 100, 10), TickActivity("hidden", 0.1)], 0.1
    )
    assert split.shares_j == pytest.approx({"seen": 40.0, "hidden": 20.0})


def test_with_nothing_visible_the_split_is_plain_time_share() -> None:
    split = attribute_tick(9.0, 0.1, [TickActivity("a", 0.1), TickActivity("b", 0.05)], 0.1)
    assert split.shares_j == pytest.approx({"a": 6.0, "b": 3.0})


def test_negative_energy_is_refused() -> None:
    with pytest.raises(ValueError):
        attribute_tick(-1.0, 0.1, [], 0.1)


# -- the stateful Attributor ------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    kind: str  # "tick", "start", "first", "out", "end"
    request: int = 0
    amount: int = 0
    dt_s: float = 0.0
    energy_j: float = 0.0


ops = st.one_of(
    st.builds(
        Op,
        kind=st.just("tick"),
        dt_s=st.floats(min_value=1e-3, max_value=0.5),
        energy_j=st.floats(min_value=0.0, max_value=500.0),
    ),
    st.builds(Op, kind=st.just("start"), request=st.integers(0, 7)),
    st.builds(Op, kind=st.just("first"), request=st.integers(0, 7), amount=st.integers(0, 3000)),
    st.builds(Op, kind=st.just("out"), request=st.integers(0, 7), amount=st.integers(0, 64)),
    st.builds(Op, kind=st.just("end"), request=st.integers(0, 7), dt_s=st.floats(0.0, 0.3)),
)


def run(operations: list[Op], alpha: float) -> tuple[Attributor, float, dict[str, float]]:
    """Play events and samples on a clock; returns the attributor, Σ measured, totals."""
    attributor = Attributor(alpha)
    now_s, counter_j, measured_j = 100.0, 5_000.0, 0.0
    attributor.sample(now_s, counter_j)
    started: set[str] = set()
    totals: dict[str, float] = {}
    for op in operations:
        rid = f"r{op.request}"
        if op.kind == "tick":
            now_s += op.dt_s
            counter_j += op.energy_j
            measured_j += op.energy_j
            attributor.sample(now_s, counter_j)
        elif op.kind == "start" and rid not in started:
            started.add(rid)
            attributor.start(rid, now_s)
        elif op.kind == "first":
            attributor.first_token(rid, op.amount)
        elif op.kind == "out":
            attributor.output_tokens(rid, op.amount)
        elif op.kind == "end" and rid in started:
            # an end inside the open tick, closed early by a sample at that time
            now_s += op.dt_s
            attributor.end(rid, now_s)
            counter_j += op.dt_s * 300.0
            measured_j += op.dt_s * 300.0
            attributor.sample(now_s, counter_j)
    now_s += 0.1
    counter_j += 7.0
    measured_j += 7.0
    attributor.sample(now_s, counter_j)
    for rid in started:
        energy = attributor.pop(rid)
        assert energy is not None
        totals[rid] = energy.energy_j
    return attributor, measured_j, totals


@settings(max_examples=300)
@given(st.lists(ops, max_size=80), alphas)
def test_shares_plus_idle_equal_measured_over_any_sequence(
    operations: list[Op], alpha: float
) -> None:
    attributor, measured_j, totals = run(operations, alpha)
    assert close_to(sum(totals.values()) + attributor.idle_energy_j, measured_j)
    assert attributor.measured_energy_j == pytest.approx(measured_j, rel=REL, abs=1e-9)
    assert all(energy >= 0.0 for energy in totals.values())
    assert attributor.idle_energy_j >= 0.0


@given(
    st.lists(
        st.tuples(st.floats(1e-3, 0.5), st.floats(0.0, 500.0), st.integers(0, 50)),
        min_size=1,
        max_size=30,
    ),
    st.integers(0, 29),
    st.integers(0, 29),
    alphas,
)
def test_a_request_alone_gets_all_of_its_ticks(
    ticks: list[tuple[float, float, int]], first: int, last: int, alpha: float
) -> None:
    first, last = sorted((first % len(ticks), last % len(ticks)))
    attributor = Attributor(alpha)
    now_s, counter_j = 0.0, 0.0
    attributor.sample(now_s, counter_j)
    expected_j = 0.0
    for index, (dt_s, energy_j, tokens) in enumerate(ticks):
        if index == first:
            attributor.start("only", now_s)
        if first <= index <= last:
            attributor.output_tokens("only", tokens)
            expected_j += energy_j
        now_s += dt_s
        counter_j += energy_j
        if index == last:
            attributor.end("only", now_s)
        attributor.sample(now_s, counter_j)
    energy = attributor.pop("only")
    assert energy is not None and energy.settled
    assert close_to(energy.energy_j, expected_j)
    assert close_to(energy.energy_j + attributor.idle_energy_j, counter_j)


@given(
    st.lists(
        st.tuples(st.floats(1e-3, 0.5), st.floats(0.0, 500.0), st.integers(0, 50)),
        min_size=1,
        max_size=30,
    ),
    st.integers(0, 3000),
    alphas,
)
def test_two_identical_requests_running_together_get_equal_totals(
    ticks: list[tuple[float, float, int]], prompt: int, alpha: float
) -> None:
    attributor = Attributor(alpha)
    now_s, counter_j = 0.0, 0.0
    attributor.sample(now_s, counter_j)
    attributor.start("a", now_s)
    attributor.start("b", now_s)
    attributor.start("other", now_s)
    attributor.first_token("a", prompt)
    attributor.first_token("b", prompt)
    for dt_s, energy_j, tokens in ticks:
        attributor.output_tokens("a", tokens)
        attributor.output_tokens("b", tokens)
        attributor.output_tokens("other", tokens * 3 + 1)
        now_s += dt_s
        counter_j += energy_j
        attributor.sample(now_s, counter_j)
    a, b = attributor.pop("a"), attributor.pop("b")
    assert a is not None and b is not None
    assert a.energy_j == pytest.approx(b.energy_j, rel=1e-12)
    assert a.hardware_s == pytest.approx(b.hardware_s, rel=1e-12)


def test_a_sample_at_the_end_time_settles_the_request_with_its_partial_tick() -> None:
    attributor = Attributor(0.1)
    attributor.sample(0.0, 0.0)
    attributor.start("a", 0.0)
    attributor.output_tokens("a", 5)
    attributor.sample(0.1, 10.0)
    attributor.output_tokens("a", 2)
    attributor.end("a", 0.13)
    assert not attributor.totals("a").settled  # type: ignore[union-attr]
    attributor.sample(0.13, 13.0)  # the early close
    energy = attributor.pop("a")
    assert energy is not None and energy.settled
    assert energy.energy_j == pytest.approx(13.0)
    assert energy.duration_s == pytest.approx(0.13)
    attributor.sample(0.2, 20.0)  # afterwards the GPU idles
    assert attributor.idle_energy_j == pytest.approx(7.0)


def test_tokens_after_the_end_and_unknown_requests_are_ignored() -> None:
    attributor = Attributor(0.1)
    attributor.sample(0.0, 0.0)
    attributor.start("a", 0.0)
    attributor.start("b", 0.0)
    attributor.output_tokens("a", 1)
    attributor.output_tokens("b", 1)
    attributor.end("a", 0.05)
    attributor.output_tokens("a", 1000)
    attributor.output_tokens("ghost", 1000)
    attributor.sample(0.1, 10.0)
    a, b = attributor.pop("a"), attributor.pop("b")
    assert a is not None and b is not None
    assert a.energy_j == pytest.approx(5.0)
    assert b.energy_j == pytest.approx(5.0)


def test_out_of_order_samples_are_dropped_and_backwards_energy_refused() -> None:
    attributor = Attributor(0.1)
    attributor.sample(1.0, 100.0)
    assert attributor.sample(0.9, 50.0) is None
    assert attributor.measured_energy_j == 0.0
    with pytest.raises(ValueError):
        attributor.sample(1.1, 99.0)


def test_work_reported_before_the_first_sample_is_not_weighed() -> None:
    attributor = Attributor(0.1)
    attributor.start("early", 0.0)
    attributor.output_tokens("early", 500)
    attributor.sample(0.0, 0.0)  # baseline
    attributor.start("late", 0.0)
    attributor.output_tokens("late", 5)
    attributor.output_tokens("early", 5)
    attributor.sample(0.1, 10.0)
    early, late = attributor.pop("early"), attributor.pop("late")
    assert early is not None and late is not None
    assert early.energy_j == pytest.approx(late.energy_j)
