"""The checks of issue 19, computed from what bench/gpu_validate.py collected (pure: no I/O).

Each check returns a dict with its figures, its `target` in words, and `met` (True/False, or
None when there was nothing to judge). Tested on made-up timelines in tests/bench/.

- `marginal_by_difference`: a request class's marginal GPU energy, from the counter over
  windows of a background load alone and of the background plus a stream of the class, against
  what Footprint attributed to the class less its share of the static floor.
- `replica_sum`: two replicas' ledgers + idle + the bypass traffic's share against the counter.
- `holdout_calibration`: the calibration fitted on one half of the requests, checked on the
  other.
- `choose_sampler`: the cheapest way of reading the GPU that moves as often as the counter.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bench.gpu_analysis import RequestResult, counter_at_j, pct

MARGINAL_TARGET_PCT = 10.0
REPLICA_SUM_TARGET_PCT = 2.0
HOLDOUT_RATIO_RANGE = (0.8, 1.25)
SAMPLER_TARGET_PCT_OF_CORE = 1.0
SAMPLER_GPUS, SAMPLER_HZ = 8, 10.0
MOVES_AS_OFTEN = 0.9  # a way of reading "moves as often as the counter" at ≥ 90 % of its rate
POWER_INTEGRATION_MAX_ERROR_PCT = 1.0


@dataclass(frozen=True)
class Window:
    """A steady-state stretch of one marginal-energy step: `label` is "background" or a class."""

    label: str
    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def window_power_w(timeline: Sequence[tuple[float, int]], window: Window) -> float:
    """Mean GPU power over a window, from the counter."""
    energy_j = counter_at_j(timeline, window.end_s) - counter_at_j(timeline, window.start_s)
    return energy_j / window.duration_s


def requests_in_window(requests: Sequence[RequestResult], window: Window) -> float:
    """How many requests the window holds: each counts the fraction of its life inside it."""
    total = 0.0
    for r in requests:
        overlap_s = min(r.end_s, window.end_s) - max(r.start_s, window.start_s)
        if overlap_s > 0 and r.duration_s > 0:
            total += overlap_s / r.duration_s
    return total


def marginal_by_difference(
    timeline: Sequence[tuple[float, int]],
    background: Sequence[Window],
    window: Window,
    requests: Sequence[RequestResult],
    floor_power_w: float,
    attributed_by: Mapping[str, Sequence[RequestResult]],
) -> dict[str, object]:
    """One class: marginal J per request by difference, against Footprint per tick.

    marginal = (E_window − P_background × T_window) / n, where P_background is the mean power
    of the background-alone windows and n the class requests the window holds (fractions at
    the edges). Footprint splits each tick's whole energy, static floor included, by weight, so
    a request's share of the floor is its share of the tick's energy times P_floor / P_tick; at
    steady state (P_tick ≈ P_window) the comparable figure is
    attributed × (1 − P_floor / P_window), with P_floor the GPU's power at no load.
    `attributed_by` maps a label (e.g. "tick 0.1 s") to the class requests that proxy metered;
    only those wholly inside the window count.
    """
    background_j = sum(window_power_w(timeline, w) * w.duration_s for w in background)
    background_s = sum(w.duration_s for w in background)
    background_w = background_j / background_s
    window_w = window_power_w(timeline, window)
    count = requests_in_window(requests, window)
    marginal_j = (window_w - background_w) * window.duration_s / count if count else None
    keep = 1.0 - floor_power_w / window_w if window_w > 0 else 0.0
    rows = {}
    for label, metered in attributed_by.items():
        inside = [
            r.gpu_energy_j
            for r in metered
            if r.gpu_energy_j is not None
            and r.start_s >= window.start_s
            and r.end_s <= window.end_s
        ]
        attributed_j = statistics.mean(inside) if inside else None
        comparable_j = None if attributed_j is None else attributed_j * keep
        error = None if comparable_j is None or not marginal_j else pct(comparable_j, marginal_j)
        rows[label] = {
            "requests": len(inside),
            "attributed_j": _round(attributed_j),
            "floor_share_j": None
            if attributed_j is None
            else _round(attributed_j - keep * attributed_j),
            "attributed_minus_floor_j": _round(comparable_j),
            "error_pct": error,
            "met": None if error is None else abs(error) <= MARGINAL_TARGET_PCT,
        }
    judged = [row["met"] for row in rows.values() if row["met"] is not None]
    return {
        "class": window.label,
        "window_s": round(window.duration_s, 3),
        "background_power_w": round(background_w, 3),
        "window_power_w": round(window_w, 3),
        "floor_power_w": round(floor_power_w, 3),
        "requests_in_window": round(count, 3),
        "marginal_j_per_request": _round(marginal_j),
        "by_tick": rows,
        "target": f"attributed − floor share within {MARGINAL_TARGET_PCT:.0f}% of marginal",
        "met": all(judged) if judged else None,
    }


def replica_sum(
    *,
    counter_delta_j: float,
    idle_j: float,
    replica_j: Mapping[str, float],
    other_j: Mapping[str, float],
    engine_weight: float,
    direct_weight: float,
) -> dict[str, object]:
    """Σ over the replicas' ledgers + idle + the bypass traffic's share, against the counter.

    The bypass share is computed here, not by Footprint: the energy outside idle ticks, split
    by the engine's weight (α · prompt + generation tokens, from its counters over the window)
    to the bypass requests' weight (from their own usage). With each replica splitting only over
    the requests it saw (local attribution), Σ over two replicas counts their neighbour's work
    twice and this fails. `other_j` is each replica's own "other" account over the window: what
    it saw the engine do for requests not its own (the other replica's and the bypass).
    """
    busy_j = counter_delta_j - idle_j
    direct_j = busy_j * direct_weight / engine_weight if engine_weight > 0 else 0.0
    total_j = sum(replica_j.values()) + idle_j + direct_j
    error = pct(total_j, counter_delta_j)
    names = list(replica_j)
    views = {
        name: round(other_j[name] - sum(replica_j[n] for n in names if n != name), 3)
        for name in names
        if name in other_j
    }
    return {
        "counter_delta_j": round(counter_delta_j, 3),
        "idle_j": round(idle_j, 3),
        "replicas_j": {k: round(v, 3) for k, v in replica_j.items()},
        "direct_j": round(direct_j, 3),
        "sum_j": round(total_j, 3),
        "error_pct": error,
        "direct_as_each_replica_sees_it_j": views,
        "target": f"Σ within {REPLICA_SUM_TARGET_PCT:.0f}% of the counter",
        "met": error is not None and abs(error) <= REPLICA_SUM_TARGET_PCT,
    }


def per_class_means(requests: Sequence[RequestResult]) -> dict[str, float]:
    """Mean attributed J per request, by class (`phase` carries the class name)."""
    by_class: dict[str, list[float]] = {}
    for r in requests:
        if r.gpu_energy_j is not None:
            by_class.setdefault(r.phase, []).append(r.gpu_energy_j)
    return {name: round(statistics.mean(values), 3) for name, values in by_class.items()}


def holdout_calibration(
    samples: Sequence[tuple[int, int, float]], min_samples: int = 4
) -> dict[str, object]:
    """Fit `meters.calibration` on alternate requests (0, 2, 4, …) and check it on the rest.

    Alternate requests, so both halves span every phase and class. The ratio is predicted over
    measured, per held-out request; the target is its median in 0.8–1.25.
    """
    from meters.calibration import Calibrations

    fitted, held = samples[0::2], samples[1::2]
    book = Calibrations(min_samples=max(2, min(min_samples, len(fitted))))
    for prompt, output, energy_j in fitted:
        book.observe("m", "gpu", prompt, output, energy_j)
    fit = book.fit("m", "gpu")
    if fit is None or not held:
        return {"fitted_on": len(fitted), "held_out": len(held), "fit": None, "met": None,
                "target": _holdout_target()}  # fmt: skip
    ratios = sorted(fit.gpu_energy_j(p, o) / e for p, o, e in held if e > 0)
    in_sample = sorted(fit.gpu_energy_j(p, o) / e for p, o, e in fitted if e > 0)
    median = statistics.median(ratios) if ratios else None
    low, high = HOLDOUT_RATIO_RANGE
    return {
        "fitted_on": len(fitted),
        "held_out": len(held),
        "j_per_output_token": round(fit.j_per_output_token, 5),
        "alpha": round(fit.alpha, 5),
        "held_out_ratio": _spread(ratios),
        "in_sample_ratio": _spread(in_sample),
        "target": _holdout_target(),
        "met": None if median is None else low <= median <= high,
    }


def _holdout_target() -> str:
    low, high = HOLDOUT_RATIO_RANGE
    return f"held-out median predicted/measured in {low}–{high}"


@dataclass(frozen=True)
class ReadCost:
    """One way of reading one GPU each tick: its CPU per tick and how often its value moved."""

    name: str
    cpu_per_tick_s: float  # all the NVML calls it makes per GPU per tick
    changes_per_s: float
    energy_error_pct: float | None = None  # for power integration: against the counter


def choose_sampler(ways: Sequence[ReadCost], counter_changes_per_s: float) -> dict[str, object]:
    """The cheapest way that moves as often as the counter (≥ 90 % of its rate; power
    integration also within 1 % of the counter's energy), extrapolated to 8 GPUs at 10 Hz as
    8 × 10 × CPU per GPU per tick: one read per GPU per tick, each costing what one GPU's did."""
    rows = []
    for way in ways:
        moves = way.changes_per_s >= MOVES_AS_OFTEN * counter_changes_per_s
        accurate = way.energy_error_pct is None or (
            abs(way.energy_error_pct) <= POWER_INTEGRATION_MAX_ERROR_PCT
        )
        core_pct = 100.0 * way.cpu_per_tick_s * SAMPLER_GPUS * SAMPLER_HZ
        rows.append(
            {
                "way": way.name,
                "cpu_per_tick_us": round(way.cpu_per_tick_s * 1e6, 2),
                "changes_per_s": round(way.changes_per_s, 2),
                "energy_error_pct": way.energy_error_pct,
                "eligible": moves and accurate,
                "core_pct_8_gpus_10_hz": round(core_pct, 3),
            }
        )
    eligible = [row for row in rows if row["eligible"]]
    chosen = min(eligible, key=lambda row: row["cpu_per_tick_us"]) if eligible else None
    return {
        "counter_changes_per_s": round(counter_changes_per_s, 2),
        "ways": rows,
        "chosen": None if chosen is None else chosen["way"],
        "chosen_core_pct_8_gpus_10_hz": None if chosen is None else chosen["core_pct_8_gpus_10_hz"],
        "extrapolation": "8 GPUs × 10 reads/s × the CPU one GPU's read took per tick",
        "target": f"< {SAMPLER_TARGET_PCT_OF_CORE:.0f}% of a core for 8 GPUs at 10 Hz",
        "met": None
        if chosen is None
        else chosen["core_pct_8_gpus_10_hz"] < SAMPLER_TARGET_PCT_OF_CORE,
    }


def _spread(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    return {
        "min": round(ordered[0], 3),
        "median": round(statistics.median(ordered), 3),
        "max": round(ordered[-1], 3),
    }


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _verdict(met: object) -> str:
    return {True: "MET", False: "NOT MET"}.get(met, "not judged")  # type: ignore[call-overload]


def format_checks(report: Mapping[str, Any]) -> str:
    """The printed summary of an issue-19 run: each check, its target, met or not."""
    gpu = report.get("gpu", {})
    lines = [
        f"GPU {gpu.get('name')} · driver {gpu.get('driver')}"
        + (" · SIMULATED" if gpu.get("simulated") else "")
        + f" · attribution {report.get('attribution')} · floor {report.get('floor_power_w')} W"
    ]
    for row in report.get("marginal", []):
        lines.append(
            f"marginal {row['class']}: {row['marginal_j_per_request']} J/request "
            f"(background {row['background_power_w']} W, with class {row['window_power_w']} W, "
            f"{row['requests_in_window']} requests) -> {_verdict(row['met'])} ({row['target']})"
            + (f"; simulation's own marginal {row['simulated_marginal_truth_j']} J"
               if "simulated_marginal_truth_j" in row else "")
        )  # fmt: skip
        for tick, cell in row["by_tick"].items():
            lines.append(
                f"  {tick}: attributed {cell['attributed_j']} J − floor {cell['floor_share_j']} J"
                f" = {cell['attributed_minus_floor_j']} J over {cell['requests']} requests, "
                f"{cell['error_pct']}% -> {_verdict(cell['met'])}"
            )
    if "replicas" in report:
        r = report["replicas"]
        lines.append(
            f"replicas: Σ {r['replicas_j']} + idle {r['idle_j']} + direct {r['direct_j']} = "
            f"{r['sum_j']} J vs counter {r['counter_delta_j']} J: {r['error_pct']}% -> "
            f"{_verdict(r['met'])} ({r['target']}); direct as each replica sees it "
            f"{r['direct_as_each_replica_sees_it_j']}"
        )
        for name, means in r.get("per_class_j", {}).items():
            lines.append(f"  {name} J/request: {means}")
    if "calibration" in report:
        c = report["calibration"]
        lines.append(
            f"calibration: fitted on {c['fitted_on']}, held out {c['held_out']}; "
            f"α {c.get('alpha')}, {c.get('j_per_output_token')} J/token; held-out ratio "
            f"{c.get('held_out_ratio')} (in-sample {c.get('in_sample_ratio')}) -> "
            f"{_verdict(c['met'])} ({c['target']})"
        )
    if "sampler" in report:
        s = report["sampler"]
        lines.append(f"sampler: counter moves {s['counter_changes_per_s']}/s; CPU per call µs "
                     f"{s['cpu_per_call_us']}")  # fmt: skip
        for way in s["ways"]:
            lines.append(
                f"  {way['way']}: {way['cpu_per_tick_us']} µs/tick/GPU, moves "
                f"{way['changes_per_s']}/s, energy error {way['energy_error_pct']}%, "
                f"8 GPUs at 10 Hz {way['core_pct_8_gpus_10_hz']}% of a core"
                + (" (eligible)" if way["eligible"] else "")
            )
        lines.append(f"  chosen {s['chosen']}: {s['chosen_core_pct_8_gpus_10_hz']}% of a core "
                     f"-> {_verdict(s['met'])} ({s['target']})")  # fmt: skip
        if "chosen_for_source" in s:
            lines.append(
                f"  NvmlSource read_via {s['chosen_for_source']}: "
                f"{s['chosen_for_source_core_pct']}% of a core -> {_verdict(s['met_for_source'])}"
            )
    for failed in report.get("failed_requests", [])[:5]:
        lines.append(f"FAILED {failed}")
    for error in report.get("errors", []):
        lines.append(f"ERROR {error.splitlines()[-1] if error else error}")
    return "\n".join(lines)
