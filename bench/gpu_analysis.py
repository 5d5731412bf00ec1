"""The figures of bench/gpu_validate.py, computed from what it collected (pure: no I/O).

Kept apart from the run itself so that the arithmetic is tested on the CPU (tests/bench/) with
made-up timelines, and the run script stays about running things.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from itertools import pairwise
from typing import Any

MJ_PER_J = 1000.0
SEQUENTIAL_TARGET_PCT = 5.0  # issue 7: per request, for requests longer than 2 s
CONSERVATION_TARGET_PCT = 0.5  # issue 7: Σ attributed + idle against the counter delta
LONG_REQUEST_S = 2.0


def counter_at_j(timeline: Sequence[tuple[float, int]], time_s: float) -> float:
    """The counter (J) at `time_s`, interpolated linearly between the points where it changed."""
    if not timeline:
        raise ValueError("empty counter timeline")
    if time_s <= timeline[0][0]:
        return timeline[0][1] / MJ_PER_J
    for (t0, e0), (t1, e1) in pairwise(timeline):
        if t0 <= time_s <= t1:
            fraction = (time_s - t0) / (t1 - t0) if t1 > t0 else 1.0
            return (e0 + fraction * (e1 - e0)) / MJ_PER_J
    return timeline[-1][1] / MJ_PER_J


def counter_movement(
    timeline: Sequence[tuple[float, int]], read_times: Sequence[float], start_s: float, end_s: float
) -> dict[str, Any]:
    """How often the counter moved between `start_s` and `end_s`, against how often it was read."""
    reads = sum(1 for t in read_times if start_s <= t <= end_s)
    times = [t for t, _ in timeline if start_s <= t <= end_s]
    gaps_ms = [(b - a) * 1000.0 for a, b in pairwise(times)]
    return {
        "window_s": round(end_s - start_s, 3),
        "reads": reads,
        "changes": len(times),
        "changes_per_s": round(len(times) / (end_s - start_s), 2) if end_s > start_s else 0.0,
        "update_interval_ms": _quantiles(gaps_ms),
    }


def _quantiles(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {"p10": at(0.1), "median": round(statistics.median(ordered), 2), "p90": at(0.9)}


@dataclass
class RequestResult:
    """One chat request as the client saw it."""

    request_id: str
    phase: str
    prompt_chars: int
    max_tokens: int
    start_s: float = 0.0
    first_token_s: float | None = None
    end_s: float = 0.0
    chunks: int = 0
    status: int = 0
    method_header: str | None = None
    usage: dict[str, Any] | None = None
    footprint: dict[str, Any] | None = None
    footprint_comment: dict[str, Any] | None = None
    ledger: dict[str, Any] | None = None
    error: str | None = None

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    @property
    def gpu_energy_j(self) -> float | None:
        source = self.footprint or self.footprint_comment
        return None if source is None else float(source["gpu_energy_j"])

    @property
    def output_tokens(self) -> int:
        if self.usage and isinstance(self.usage.get("completion_tokens"), int):
            return int(self.usage["completion_tokens"])
        return self.chunks


def parse_sse_line(line: str, result: RequestResult, clock: Callable[[], float]) -> bool:
    """Apply one SSE line to `result`; True once `[DONE]` arrived."""
    if line.startswith(": footprint "):
        result.footprint_comment = json.loads(line[len(": footprint ") :])
        return False
    if not line.startswith("data:"):
        return False
    data = line[5:].strip()
    if data == "[DONE]":
        return True
    payload = json.loads(data)
    for choice in payload.get("choices") or []:
        if (choice.get("delta") or {}).get("content"):
            result.chunks += 1
            if result.first_token_s is None:
                result.first_token_s = clock()
    if payload.get("usage"):
        result.usage = payload["usage"]
    if payload.get("footprint"):
        result.footprint = payload["footprint"]
    return False


@dataclass(frozen=True)
class MeterSnapshot:
    """The meter's accounts and counter reading, and our own counter read, at one moment."""

    time_s: float
    idle_j: float
    measured_j: float
    meter_counter_j: float
    own_counter_j: float
    aligned: bool


def pct(value: float, reference: float) -> float | None:
    return None if reference == 0 else round(100.0 * (value - reference) / reference, 3)


def conservation(
    results: Sequence[RequestResult], first: MeterSnapshot, last: MeterSnapshot
) -> dict[str, Any]:
    """Σ attributed + idle, against the counter delta read by us and by the meter."""
    attributed_j = sum(r.gpu_energy_j or 0.0 for r in results)
    idle_j = last.idle_j - first.idle_j
    own_delta_j = last.own_counter_j - first.own_counter_j
    meter_delta_j = last.meter_counter_j - first.meter_counter_j
    total_j = attributed_j + idle_j
    error = pct(total_j, own_delta_j)
    return {
        "attributed_j": round(attributed_j, 3),
        "idle_j": round(idle_j, 3),
        "attributed_plus_idle_j": round(total_j, 3),
        "counter_delta_j": round(own_delta_j, 3),
        "error_pct": error,
        "target_pct": CONSERVATION_TARGET_PCT,
        "pass": error is not None and abs(error) <= CONSERVATION_TARGET_PCT,
        "meter_counter_delta_j": round(meter_delta_j, 3),
        "meter_measured_j": round(last.measured_j - first.measured_j, 3),
        "error_vs_meter_counter_pct": pct(total_j, meter_delta_j),
        "snapshots_aligned": first.aligned and last.aligned,
        "requests_not_measured": sum(
            1
            for r in results
            if (r.footprint or r.footprint_comment or {}).get("method") != "measured"
        ),
        "window_s": round(last.time_s - first.time_s, 3),
    }


def sequential_rows(
    results: Sequence[RequestResult], timeline: Sequence[tuple[float, int]], idle_power_w: float
) -> dict[str, Any]:
    """Each lone request's attributed energy against the counter over its own window."""
    rows = []
    for r in results:
        window_j = counter_at_j(timeline, r.end_s) - counter_at_j(timeline, r.start_s)
        dynamic_j = window_j - idle_power_w * r.duration_s
        attributed = r.gpu_energy_j
        rows.append(
            {
                "request_id": r.request_id,
                "duration_s": round(r.duration_s, 3),
                "output_tokens": r.output_tokens,
                "attributed_j": attributed,
                "counter_window_j": round(window_j, 3),
                "error_vs_window_pct": None if attributed is None else pct(attributed, window_j),
                "counter_window_minus_idle_j": round(dynamic_j, 3),
                "attributed_minus_idle_j": None
                if attributed is None
                else round(attributed - idle_power_w * r.duration_s, 3),
                "error_vs_window_minus_idle_pct": None
                if attributed is None
                else pct(attributed, dynamic_j),
            }
        )
    long_rows = [row for row in rows if row["duration_s"] > LONG_REQUEST_S]
    errors = [
        abs(row["error_vs_window_pct"])
        for row in long_rows
        if row["error_vs_window_pct"] is not None
    ]
    return {
        "rows": rows,
        "idle_power_w": round(idle_power_w, 2),
        "long_requests": len(long_rows),
        "max_abs_error_vs_window_pct": round(max(errors), 3) if errors else None,
        "target_pct": SEQUENTIAL_TARGET_PCT,
        "pass": bool(long_rows)
        and len(errors) == len(long_rows)
        and max(errors) <= SEQUENTIAL_TARGET_PCT,
    }


def concurrent_rows(
    results: Sequence[RequestResult], timeline: Sequence[tuple[float, int]]
) -> dict[str, Any]:
    """Each concurrent request's share against its output tokens, and against a reference that
    splits the counter's energy among the requests in flight by time (equal decode rates)."""
    start_s = min(r.start_s for r in results)
    end_s = max(r.end_s for r in results)
    points = [(start_s, counter_at_j(timeline, start_s))]
    points += [(t, e / MJ_PER_J) for t, e in timeline if start_s < t < end_s]
    points.append((end_s, counter_at_j(timeline, end_s)))
    reference = {r.request_id: 0.0 for r in results}
    for (t0, e0), (t1, e1) in pairwise(points):
        overlaps = {r.request_id: max(0.0, min(t1, r.end_s) - max(t0, r.start_s)) for r in results}
        total = sum(overlaps.values())
        for request_id, overlap in overlaps.items():
            if total > 0:
                reference[request_id] += (e1 - e0) * overlap / total
    attributed_total = sum(r.gpu_energy_j or 0.0 for r in results)
    tokens_total = sum(r.output_tokens for r in results)
    rows = []
    for r in results:
        attributed = r.gpu_energy_j or 0.0
        rows.append(
            {
                "request_id": r.request_id,
                "prompt_tokens": (r.usage or {}).get("prompt_tokens"),
                "output_tokens": r.output_tokens,
                "duration_s": round(r.duration_s, 3),
                "attributed_j": r.gpu_energy_j,
                "j_per_output_token": round(attributed / r.output_tokens, 4)
                if r.output_tokens
                else None,
                "energy_share_pct": round(100 * attributed / attributed_total, 3)
                if attributed_total
                else None,
                "token_share_pct": round(100 * r.output_tokens / tokens_total, 3)
                if tokens_total
                else None,
                "time_share_reference_j": round(reference[r.request_id], 3),
            }
        )
    phase_j = counter_at_j(timeline, end_s) - counter_at_j(timeline, start_s)
    return {
        "rows": rows,
        "window_s": round(end_s - start_s, 3),
        "counter_delta_j": round(phase_j, 3),
        "attributed_j": round(attributed_total, 3),
        "output_tokens": tokens_total,
        "j_per_output_token": round(attributed_total / tokens_total, 4) if tokens_total else None,
    }


def estimate_rows(
    results: Sequence[RequestResult],
    estimators: dict[str, Callable[[str], Any]],
    model: str = "random-llama-1b",
) -> list[dict[str, Any]]:
    """Estimated against measured GPU energy, per request: `estimators` maps a name to a
    function giving the estimator (`meters.estimate.Estimator`) to use for a phase."""
    rows = []
    for r in results:
        measured = r.gpu_energy_j
        prompt_tokens = int((r.usage or {}).get("prompt_tokens") or 0)
        row: dict[str, Any] = {
            "request_id": r.request_id,
            "phase": r.phase,
            "output_tokens": r.output_tokens,
            "measured_j": measured,
        }
        for name, estimator_for in estimators.items():
            estimate = estimator_for(r.phase).estimate(
                model, prompt_tokens, r.output_tokens, r.duration_s
            )
            row[f"{name}_j"] = round(estimate.gpu_energy_j, 3)
            row[f"{name}_basis"] = estimate.basis
            row[f"{name}_over_measured"] = (
                round(estimate.gpu_energy_j / measured, 3) if measured else None
            )
        rows.append(row)
    return rows


def build_report(
    gpu: dict[str, Any],
    model: dict[str, Any],
    raw: dict[str, Any],
    poller: Any,
    estimators: dict[str, Callable[[str], Any]],
    tick_s: float,
) -> dict[str, Any]:
    """Everything the README and the closing note need, from what `drive` collected."""
    snaps: dict[str, MeterSnapshot] = raw["snapshots"]
    first, after_idle, last = snaps["first"], snaps["after_idle"], snaps["last"]
    sequential: list[RequestResult] = raw["sequential"]
    concurrent: list[RequestResult] = raw["concurrent"]
    measured = [*sequential, *concurrent]
    timeline = poller.timeline()
    idle_s = after_idle.time_s - first.time_s
    idle_counter_j = after_idle.own_counter_j - first.own_counter_j
    idle_power_w = idle_counter_j / idle_s if idle_s > 0 else 0.0
    load_start_s = min(r.start_s for r in measured)
    load_end_s = max(r.end_s for r in measured)
    cpu = raw["cpu"]
    wall_s = last.time_s - first.time_s
    sampler_cpu_s = (
        cpu["sampler_end"] - cpu["sampler_start"]
        if cpu["sampler_end"] is not None and cpu["sampler_start"] is not None
        else None
    )
    ledger_diffs = [
        abs(float(r.ledger["gpu_energy_j"]) - (r.gpu_energy_j or 0.0))
        for r in measured
        if r.ledger and "gpu_energy_j" in r.ledger
    ]
    metrics_lines = [
        line
        for line in raw["metrics_text"].splitlines()
        if "idle_energy" in line and not line.startswith("#")
    ]
    return {
        "gpu": gpu,
        "model": model,
        "engine": raw["engine_stats"],
        "decode_rate_tok_s": round(raw["decode_rate_tok_s"], 1),
        "sequential_max_tokens": raw["sequential_tokens"],
        "idle": {
            "duration_s": round(idle_s, 3),
            "counter_delta_j": round(idle_counter_j, 3),
            "power_w": round(idle_power_w, 2),
            "meter_idle_j": round(after_idle.idle_j - first.idle_j, 3),
            "meter_idle_error_pct": pct(after_idle.idle_j - first.idle_j, idle_counter_j),
        },
        "conservation": conservation(measured, first, last),
        "sequential": sequential_rows(sequential, timeline, idle_power_w),
        "concurrent": concurrent_rows(concurrent, timeline),
        "estimates": estimate_rows(measured, estimators),
        "sampler": {
            "tick_s": tick_s,
            "wall_s": round(wall_s, 3),
            "thread_cpu_s": None if sampler_cpu_s is None else round(sampler_cpu_s, 4),
            "thread_cpu_pct": None
            if sampler_cpu_s is None
            else round(100 * sampler_cpu_s / wall_s, 3),
            "cpu_per_tick_us": None
            if sampler_cpu_s is None
            else round(1e6 * sampler_cpu_s / (wall_s / tick_s), 1),
            "process_cpu_s": round(cpu["process_end"] - cpu["process_start"], 3),
            "process_note": "proxy, load generator and 10 ms poller share this process",
        },
        "counter": {
            "poll_period_s": poller.period_s,
            "poller_cpu_per_read_us": round(1e6 * poller.cpu_s / len(poller.read_times), 1)
            if poller.read_times
            else None,
            "idle": counter_movement(timeline, poller.read_times, first.time_s, after_idle.time_s),
            "load": counter_movement(timeline, poller.read_times, load_start_s, load_end_s),
        },
        "ledger": {
            "records_found": len(ledger_diffs),
            "requests": len(measured),
            "max_abs_diff_vs_stream_j": round(max(ledger_diffs), 6) if ledger_diffs else None,
        },
        "metrics_idle_energy": metrics_lines[:10],
        "failed_requests": [
            {"request_id": r.request_id, "status": r.status, "error": r.error}
            for r in measured
            if r.error or r.gpu_energy_j is None
        ],
        "requests": [asdict(r) for r in [raw["warmup"], *measured]],
    }


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _cells(*cells: tuple[Any, int, int]) -> str:
    """One table row: (value, width, digits); a negative width left-aligns."""
    parts = []
    for value, width, digits in cells:
        text = _fmt(value, digits)
        parts.append(text.ljust(-width) if width < 0 else text.rjust(width))
    return "  " + " ".join(parts)


def format_table(report: dict[str, Any]) -> str:
    """The printed summary: the figures the issue asks for, one block each."""
    lines = []
    gpu = report.get("gpu", {})
    lines.append(
        f"GPU {gpu.get('name')} · driver {gpu.get('driver')}"
        + (" · SIMULATED" if gpu.get("simulated") else "")
    )
    model = report.get("model", {})
    lines.append(
        f"model {model.get('preset')} {_fmt(model.get('params_b'), 3)}B params "
        f"on {model.get('device')} · decode {report.get('decode_rate_tok_s')} tok/s "
        f"alone · mean decode batch {_fmt(_concurrent_batch(report), 2)}"
    )
    if "idle" in report:
        idle = report["idle"]
        lines.append(
            f"idle {idle['duration_s']} s: {idle['power_w']} W "
            f"(meter's idle account {_fmt(idle['meter_idle_error_pct'], 3)}% off the counter)"
        )
    if "conservation" in report:
        c = report["conservation"]
        lines.append(
            f"conservation: attributed {c['attributed_j']} J + idle {c['idle_j']} J = "
            f"{c['attributed_plus_idle_j']} J vs counter {c['counter_delta_j']} J -> "
            f"{_fmt(c['error_pct'], 3)}% (target ±{c['target_pct']}%) "
            f"{'PASS' if c['pass'] else 'FAIL'}"
        )
    if "sequential" in report:
        s = report["sequential"]
        lines.append(
            "sequential   dur_s  tokens  attributed_J  window_J   err%   "
            "attr-idle_J  window-idle_J  err%"
        )
        for row in s["rows"]:
            lines.append(
                _cells(
                    (row["request_id"], -12, 0),
                    (row["duration_s"], 5, 2),
                    (row["output_tokens"], 6, 0),
                    (row["attributed_j"], 12, 1),
                    (row["counter_window_j"], 9, 1),
                    (row["error_vs_window_pct"], 6, 2),
                    (row["attributed_minus_idle_j"], 12, 1),
                    (row["counter_window_minus_idle_j"], 14, 1),
                    (row["error_vs_window_minus_idle_pct"], 6, 2),
                )
            )
        lines.append(
            f"  max |err| vs window over {s['long_requests']} requests > 2 s: "
            f"{_fmt(s['max_abs_error_vs_window_pct'], 2)}% (target {s['target_pct']}%) "
            f"{'PASS' if s['pass'] else 'FAIL'}"
        )
    if "concurrent" in report:
        c = report["concurrent"]
        lines.append("concurrent   tokens  attributed_J  J/token  energy%  tokens%  time-share_J")
        for row in c["rows"]:
            lines.append(
                _cells(
                    (row["request_id"], -12, 0),
                    (row["output_tokens"], 6, 0),
                    (row["attributed_j"], 12, 1),
                    (row["j_per_output_token"], 8, 3),
                    (row["energy_share_pct"], 7, 2),
                    (row["token_share_pct"], 7, 2),
                    (row["time_share_reference_j"], 12, 1),
                )
            )
        lines.append(
            f"  phase: {c['attributed_j']} J attributed vs counter {c['counter_delta_j']} J "
            f"over {c['window_s']} s; {c['j_per_output_token']} J/token"
        )
    if report.get("estimates"):
        names = [k[:-2] for k in report["estimates"][0] if k.endswith("_j") and k != "measured_j"]
        lines.append(
            "estimate/measured (median): "
            + ", ".join(f"{n} {_fmt(_median_ratio(report['estimates'], n), 3)}" for n in names)
        )
    if "sampler" in report:
        s, k = report["sampler"], report["counter"]
        lines.append(
            f"sampler thread CPU {_fmt(s['thread_cpu_s'], 4)} s over {s['wall_s']} s "
            f"({_fmt(s['thread_cpu_pct'], 3)}%, {_fmt(s['cpu_per_tick_us'])} us/tick); "
            f"NVML read {_fmt(k['poller_cpu_per_read_us'])} us"
        )
        for phase in ("idle", "load"):
            m = k[phase]
            lines.append(
                f"counter ({phase}): {m['changes']} changes in {m['reads']} reads at "
                f"{k['poll_period_s'] * 1000:.0f} ms = {m['changes_per_s']}/s; "
                f"update interval ms {m['update_interval_ms']}"
            )
    for error in report.get("errors", []):
        lines.append(f"ERROR {error.splitlines()[-1] if error else error}")
    return "\n".join(lines)


def _concurrent_batch(report: dict[str, Any]) -> Any:
    return report.get("engine", {}).get("concurrent_phase", {}).get("mean_decode_batch")


def _median_ratio(rows: Sequence[dict[str, Any]], name: str) -> float | None:
    ratios = [r[f"{name}_over_measured"] for r in rows if r.get(f"{name}_over_measured")]
    return statistics.median(ratios) if ratios else None
