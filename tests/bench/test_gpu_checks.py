"""The arithmetic of issue 19's checks on made-up timelines whose answers are known: marginal
energy by difference, Σ across replicas, the held-out calibration and the sampler's choice."""

from __future__ import annotations

import pytest

from bench.gpu_analysis import RequestResult
from bench.gpu_checks import (
    ReadCost,
    Window,
    choose_sampler,
    holdout_calibration,
    marginal_by_difference,
    per_class_means,
    replica_sum,
    requests_in_window,
)


def stepped_timeline(powers: list[tuple[float, float, float]]) -> list[tuple[float, int]]:
    """A counter (mJ) moving every 0.1 s at the power of each (start, end, W) stretch."""
    points, energy_mj = [], 1_000_000.0
    for start_s, end_s, power_w in powers:
        steps = round((end_s - start_s) / 0.1)
        for i in range(steps):
            points.append((round(start_s + i * 0.1, 6), int(energy_mj)))
            energy_mj += power_w * 100.0
    points.append((powers[-1][1], int(energy_mj)))
    return points


def request(name: str, start_s: float, end_s: float, energy_j: float | None, phase: str = "c"):
    r = RequestResult(name, phase, 400, 64, start_s=start_s, end_s=end_s)
    if energy_j is not None:
        r.footprint = {"method": "measured", "gpu_energy_j": energy_j}
    return r


def test_marginal_energy_is_extra_energy_per_request_judged_without_the_floor() -> None:
    # background alone at 200 W for 10 s; with the class stream 260 W for 10 s; floor 100 W
    timeline = stepped_timeline([(0.0, 10.0, 200.0), (10.0, 20.0, 260.0)])
    background = [Window("background", 0.0, 10.0)]
    window = Window("short", 10.0, 20.0)
    # six requests wholly inside, 2 s each: 60 W × 10 s / 6 = 100 J each
    exact = [request(f"e{i}", 10.0 + i * 1.5, 12.0 + i * 1.5, 162.5) for i in range(6)]
    # Footprint's figure carries the floor's share, 100 W of 260 W: 162.5 × (1 − 100/260) = 100
    over = [request(f"o{i}", 10.0 + i * 1.5, 12.0 + i * 1.5, 200.0) for i in range(6)]
    report = marginal_by_difference(
        timeline, background, window, exact, 100.0, {"tick 0.1 s": exact, "tick 0.5 s": over}
    )
    assert report["background_power_w"] == pytest.approx(200.0)
    assert report["window_power_w"] == pytest.approx(260.0)
    assert report["marginal_j_per_request"] == pytest.approx(100.0)
    rows = report["by_tick"]
    assert rows["tick 0.1 s"]["attributed_minus_floor_j"] == pytest.approx(100.0)
    assert rows["tick 0.1 s"]["floor_share_j"] == pytest.approx(62.5)
    assert rows["tick 0.1 s"]["met"] is True
    assert rows["tick 0.5 s"]["error_pct"] == pytest.approx(23.077, abs=1e-3)
    assert rows["tick 0.5 s"]["met"] is False
    assert report["met"] is False


def test_requests_at_the_window_edges_count_by_the_fraction_inside() -> None:
    window = Window("c", 10.0, 20.0)
    edge = [request("in", 12.0, 14.0, 1.0), request("late", 19.0, 21.0, 1.0),
            request("early", 8.0, 12.0, 1.0), request("out", 21.0, 22.0, 1.0)]  # fmt: skip
    assert requests_in_window(edge, window) == pytest.approx(1.0 + 0.5 + 0.5)
    timeline = stepped_timeline([(0.0, 10.0, 200.0), (10.0, 22.0, 300.0)])
    report = marginal_by_difference(
        timeline, [Window("background", 0.0, 10.0)], window, edge, 100.0, {"t": edge}
    )
    assert report["marginal_j_per_request"] == pytest.approx(100.0 * 10.0 / 2.0)
    assert report["by_tick"]["t"]["requests"] == 1  # only the one wholly inside is judged


def test_two_replicas_and_bypass_traffic_sum_to_the_counter_with_engine_attribution() -> None:
    # 1000 J, 100 J idle; the engine did 90 weight units, 30 of them for bypass traffic
    good = replica_sum(
        counter_delta_j=1000.0, idle_j=100.0, replica_j={"a": 300.0, "b": 300.0},
        other_j={"a": 600.0, "b": 600.0}, engine_weight=90.0, direct_weight=30.0,
    )  # fmt: skip
    assert good["direct_j"] == pytest.approx(300.0)
    assert good["error_pct"] == pytest.approx(0.0)
    assert good["met"] is True
    assert good["direct_as_each_replica_sees_it_j"] == {"a": 300.0, "b": 300.0}
    # Local attribution: each replica splits the busy energy over its own requests only.
    local = replica_sum(
        counter_delta_j=1000.0, idle_j=100.0, replica_j={"a": 900.0, "b": 900.0},
        other_j={"a": 0.0, "b": 0.0}, engine_weight=90.0, direct_weight=30.0,
    )  # fmt: skip
    assert local["error_pct"] == pytest.approx(120.0)
    assert local["met"] is False


def test_per_class_means_skip_requests_without_a_figure() -> None:
    rows = [request("a", 0, 1, 10.0, "short"), request("b", 0, 1, 20.0, "short"),
            request("c", 0, 1, None, "short"), request("d", 0, 1, 50.0, "long")]  # fmt: skip
    assert per_class_means(rows) == {"short": 15.0, "long": 50.0}


def test_a_calibration_that_holds_out_of_sample_is_met() -> None:
    samples = [(p, o, 0.5 * (0.1 * p + o)) for p, o in [(100, 64), (3000, 64), (100, 384)] * 6]
    report = holdout_calibration(samples)
    assert report["fitted_on"] == 9 and report["held_out"] == 9
    assert report["alpha"] == pytest.approx(0.1, abs=1e-4)
    assert report["held_out_ratio"]["median"] == pytest.approx(1.0)
    assert report["met"] is True


def test_a_calibration_that_only_fits_its_own_half_fails_on_the_other() -> None:
    rows = [(100, 64), (3000, 64), (100, 384)] * 6
    samples = [
        (p, o, 0.5 * (0.1 * p + o) * (1.0 if i % 2 == 0 else 2.0)) for i, (p, o) in enumerate(rows)
    ]
    report = holdout_calibration(samples)
    assert report["in_sample_ratio"]["median"] == pytest.approx(1.0)
    assert report["held_out_ratio"]["median"] == pytest.approx(0.5)
    assert report["met"] is False


def test_the_sampler_is_the_cheapest_way_that_moves_with_the_counter() -> None:
    ways = [
        ReadCost("energy", cpu_per_tick_s=7e-3, changes_per_s=10.0),
        ReadCost("fields", cpu_per_tick_s=2e-3, changes_per_s=9.5),
        ReadCost("power", cpu_per_tick_s=1e-3, changes_per_s=50.0, energy_error_pct=4.0),
        ReadCost("stale", cpu_per_tick_s=1e-6, changes_per_s=1.0),
    ]
    report = choose_sampler(ways, counter_changes_per_s=10.0)
    assert report["chosen"] == "fields"  # power is 4 % off the counter, stale moves too rarely
    assert report["chosen_core_pct_8_gpus_10_hz"] == pytest.approx(16.0)
    assert report["met"] is False
    cheap = choose_sampler([ReadCost("fields", 10e-6, 10.0)], 10.0)
    assert cheap["chosen_core_pct_8_gpus_10_hz"] == pytest.approx(0.08)
    assert cheap["met"] is True
    assert choose_sampler([ReadCost("stale", 1e-6, 1.0)], 10.0)["met"] is None
