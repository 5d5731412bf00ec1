"""The pure parts of the engine-denominator split (methodology §2b): conservation, no negative
share, a lone request's ticks, the arrival split and the window claim."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meters.split import arrival_split, attribute_engine_tick, window_claim

REL = 1e-9

energies = st.floats(min_value=0.0, max_value=1e6, allow_nan=False)
durations = st.floats(min_value=1e-4, max_value=10.0, allow_nan=False)
weights = st.dictionaries(
    st.text("abcdefgh", min_size=1, max_size=3),
    st.floats(min_value=0.0, max_value=1e4, allow_nan=False),
    max_size=32,
)
engine_weights = st.floats(min_value=0.0, max_value=1e5, allow_nan=False)


@given(energies, durations, weights, engine_weights)
def test_an_engine_tick_conserves_energy_and_no_share_is_negative(
    energy_j: float, duration_s: float, local: dict[str, float], engine_w: float
) -> None:
    split = attribute_engine_tick(energy_j, duration_s, local, engine_w)
    total = math.fsum(split.shares_j.values()) + split.other_j + split.idle_j
    assert total == pytest.approx(energy_j, rel=REL, abs=1e-9)
    assert all(v >= 0.0 for v in split.shares_j.values())
    assert split.other_j >= 0.0 and split.idle_j >= 0.0
    assert set(split.shares_j) == set(local)


@given(energies, durations, weights, engine_weights)
def test_an_engine_tick_gives_each_request_its_part_of_the_engine_work(
    energy_j: float, duration_s: float, local: dict[str, float], engine_w: float
) -> None:
    split = attribute_engine_tick(energy_j, duration_s, local, engine_w)
    denominator = max(engine_w, math.fsum(local.values()))
    for rid, weight in local.items():
        expected = energy_j * weight / denominator if denominator > 0 else 0.0
        assert split.shares_j[rid] == pytest.approx(expected, rel=REL, abs=1e-9)


@given(energies, durations, st.floats(min_value=1e-3, max_value=1e4))
def test_a_lone_request_that_is_all_the_engine_did_gets_the_whole_tick(
    energy_j: float, duration_s: float, weight: float
) -> None:
    split = attribute_engine_tick(energy_j, duration_s, {"only": weight}, weight)
    assert split.shares_j["only"] == pytest.approx(energy_j, rel=REL, abs=1e-9)
    assert split.other_j == pytest.approx(0.0, abs=1e-9 * max(energy_j, 1.0))
    assert split.hardware_s["only"] == pytest.approx(duration_s, rel=REL)


def test_work_the_engine_did_for_nobody_here_is_other_traffic() -> None:
    split = attribute_engine_tick(100.0, 0.1, {"a": 10.0, "b": 20.0}, 60.0)
    assert split.shares_j == pytest.approx({"a": 100 / 6, "b": 200 / 6})
    assert split.other_j == pytest.approx(50.0)
    assert split.idle_j == 0.0


def test_a_tick_the_engine_ran_nothing_in_is_idle() -> None:
    split = attribute_engine_tick(12.0, 0.1, {}, 0.0)
    assert split.idle_j == 12.0 and split.other_j == 0.0


def test_tokens_seen_before_the_engine_counter_moved_never_take_more_than_the_tick() -> None:
    split = attribute_engine_tick(10.0, 0.1, {"a": 6.0}, 4.0)
    assert split.shares_j["a"] == pytest.approx(10.0)
    assert split.other_j == 0.0


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError):
        attribute_engine_tick(-1.0, 0.1, {}, 0.0)
    with pytest.raises(ValueError):
        attribute_engine_tick(1.0, 0.1, {"a": -1.0}, 0.0)
    with pytest.raises(ValueError):
        attribute_engine_tick(1.0, 0.1, {}, math.nan)


@given(energies, durations, st.floats(0.0, 20.0), st.one_of(st.none(), st.floats(0.0, 1e4)))
def test_the_arrival_split_is_never_more_than_the_tick(
    energy_j: float, duration_s: float, quiet_s: float, idle_w: float | None
) -> None:
    idle_j = arrival_split(energy_j, duration_s, quiet_s, idle_w)
    assert 0.0 <= idle_j <= energy_j


def test_the_arrival_split_uses_the_idle_power_when_known() -> None:
    # 100 W idle: 0.05 s before the arrival is 5 J, however much the rest of the tick drew.
    assert arrival_split(30.0, 0.1, 0.05, 100.0) == pytest.approx(5.0)
    assert arrival_split(30.0, 0.1, 0.05, None) == pytest.approx(15.0)


@given(st.floats(0.0, 1e4), st.lists(st.floats(0.0, 1e3), max_size=40))
def test_a_window_claim_is_a_fraction_between_nothing_and_all(
    claim: float, unclaimed: list[float]
) -> None:
    fraction = window_claim(claim, unclaimed)
    assert 0.0 <= fraction <= 1.0
    total = math.fsum(unclaimed)
    if total > 0 and claim > 0:
        assert fraction * total == pytest.approx(min(claim, total), rel=1e-9)


def test_lagged_arrivals_take_back_a_tick_only_when_they_cover_all_of_its_unclaimed_work() -> None:
    from meters.unclaimed import lagged_arrivals

    weights = {"a": 3.0, "b": 1.0}
    # The first arrivals after the read, in order: b's 1, then a's 3; 2 units were unclaimed.
    assert lagged_arrivals([("b", 1.0), ("a", 3.0)], 2.0, weights) == {"b": 1.0, "a": 1.0}
    # 5 units unclaimed and only 4 arrived: the rest is someone else's, so none is taken.
    assert lagged_arrivals([("b", 1.0), ("a", 3.0)], 5.0, weights) == {}


def test_take_back_shrinks_the_newest_unclaimed_work_first_and_skips_what_is_kept() -> None:
    from meters.unclaimed import Held, take_back

    old, kept, new = (
        Held(0, 1, 2.0, 20.0, 0.2),
        Held(1, 2, 2.0, 20.0, 0.2),
        Held(2, 3, 1.0, 5.0, 0.1),
    )
    taken = take_back([old, kept, new], {"a": 2.0}, skip=lambda h: h is kept)
    assert taken["a"] == pytest.approx((5.0 + 10.0, 0.1 + 0.1, 2.0))
    assert (new.weight, kept.weight, old.weight) == (0.0, 2.0, pytest.approx(1.0))
