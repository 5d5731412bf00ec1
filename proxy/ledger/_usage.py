"""Pure arithmetic for usage reports: summing fine-grained rows to the groups asked for, and
spreading idle energy over teams (methodology §2, policy `idle = "spread"`).

Input rows come grouped by (team, model, upstream, day). Idle energy of one upstream on one
day is shared among that day's rows on that upstream by their share of attributed facility
energy; idle energy with no attributed energy to follow stays unspread and is reported apart.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from proxy.ledger._records import as_utc

GROUP_KEYS = ("team", "model", "upstream", "day")
SUM_FIELDS = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "tokens",
    "gpu_energy_j",
    "energy_j",
    "co2e_g",
    "embodied_co2e_g",
    "water_ml",
    "co2e_avoided_g",  # by routing, against the priority choice (0 where nothing was weighed)
)
IDLE_FIELDS = ("idle_gpu_energy_j", "idle_energy_j", "idle_co2e_g", "idle_water_ml")
# Market-based carbon (issue 18), beside `co2e_g`: its sum over the rows that have one (None
# where none has), the facility energy of those rows, and that energy's share of the group's
# `energy_j` (idle energy, spread or not, has no market-based figure).
MARKET_FIELDS = ("co2e_market_g", "market_energy_j", "market_energy_share")


@dataclass(frozen=True, slots=True)
class IdleInterval:
    upstream: str
    start: datetime
    end: datetime
    gpu_energy_j: float
    energy_j: float
    co2e_g: float
    water_ml: float


def split_idle_by_day(
    intervals: Iterable[IdleInterval], start: datetime | None, end: datetime | None
) -> dict[tuple[str, str], list[float]]:
    """Idle figures per (upstream, UTC day), clipped to [start, end), prorated by time."""
    out: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])
    for it in intervals:
        a, b = as_utc(it.start), as_utc(it.end)
        lo = max(a, as_utc(start)) if start else a
        hi = min(b, as_utc(end)) if end else b
        total_s = (b - a).total_seconds()
        figures = (it.gpu_energy_j, it.energy_j, it.co2e_g, it.water_ml)
        if total_s <= 0:
            # An instant: counted whole on its day if inside the window.
            if lo <= a and (hi > a or (end is None and hi >= a)):
                acc = out[(it.upstream, a.strftime("%Y-%m-%d"))]
                for i, v in enumerate(figures):
                    acc[i] += v
            continue
        cursor = lo
        while cursor < hi:
            day_end = datetime.combine(
                cursor.date() + timedelta(days=1), datetime.min.time(), cursor.tzinfo
            )
            piece_end = min(hi, day_end)
            fraction = (piece_end - cursor).total_seconds() / total_s
            acc = out[(it.upstream, cursor.strftime("%Y-%m-%d"))]
            for i, v in enumerate(figures):
                acc[i] += v * fraction
            cursor = piece_end
    return dict(out)


def aggregate(
    fine_rows: Sequence[dict[str, Any]],
    group_by: Sequence[str],
    idle_by_upstream_day: dict[tuple[str, str], list[float]] | None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Sum `fine_rows` into `group_by` groups; with `idle_by_upstream_day`, spread idle too.

    Returns (rows, unspread idle per upstream). With spreading, a row's energy_j, co2e_g,
    water_ml and gpu_energy_j include its idle share, and idle_* says how much of it that is.
    Fine rows may carry `co2e_market_g` (None: no row of theirs had one) and `market_energy_j`;
    every output row gets the three `MARKET_FIELDS`.
    """
    shares: list[list[float]] = [[0.0, 0.0, 0.0, 0.0] for _ in fine_rows]
    unspread: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])
    if idle_by_upstream_day is not None:
        energy_on: dict[tuple[str, str], float] = defaultdict(float)
        for row in fine_rows:
            energy_on[(row["upstream"], row["day"])] += float(row["energy_j"])
        for key, figures in idle_by_upstream_day.items():
            if energy_on.get(key, 0.0) <= 0.0:
                for i, v in enumerate(figures):
                    unspread[key[0]][i] += v
        for index, row in enumerate(fine_rows):
            key = (row["upstream"], row["day"])
            idle_figures = idle_by_upstream_day.get(key)
            total = energy_on.get(key, 0.0)
            if idle_figures is None or total <= 0.0:
                continue
            weight = float(row["energy_j"]) / total
            shares[index] = [v * weight for v in idle_figures]

    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row, share in zip(fine_rows, shares, strict=True):
        key = tuple(row[k] for k in group_by)
        acc = groups.get(key)
        if acc is None:
            acc = {k: row[k] for k in group_by}
            acc.update(
                {
                    f: 0
                    if f in ("requests", "prompt_tokens", "completion_tokens", "tokens")
                    else 0.0
                    for f in SUM_FIELDS
                }
            )
            if idle_by_upstream_day is not None:
                acc.update({f: 0.0 for f in IDLE_FIELDS})
            acc.update({"co2e_market_g": None, "market_energy_j": 0.0})
            groups[key] = acc
        for f in SUM_FIELDS:
            acc[f] += row[f]
        _add_market(acc, row)
        if idle_by_upstream_day is not None:
            for f, v in zip(IDLE_FIELDS, share, strict=True):
                acc[f] += v
            acc["gpu_energy_j"] += share[0]
            acc["energy_j"] += share[1]
            acc["co2e_g"] += share[2]
            acc["water_ml"] += share[3]
    rows = [groups[k] for k in sorted(groups, key=lambda k: tuple(str(x) for x in k))]
    for acc in rows:
        acc["market_energy_share"] = market_energy_share(acc)
    idle_rows = [
        {"upstream": name, "gpu_energy_j": v[0], "energy_j": v[1], "co2e_g": v[2], "water_ml": v[3]}
        for name, v in sorted(unspread.items())
    ]
    return rows, idle_rows


def usage_totals(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The period's totals over usage rows: location-based `co2e_g` and market-based
    `co2e_market_g` side by side (None where no row has one), the embodied carbon in both,
    and the share of the energy that had a market-based figure."""
    totals: dict[str, Any] = {
        "requests": sum(int(r["requests"]) for r in rows),
        "energy_j": sum(float(r["energy_j"]) for r in rows),
        "co2e_g": sum(float(r["co2e_g"]) for r in rows),
        "embodied_co2e_g": sum(float(r["embodied_co2e_g"]) for r in rows),
        # Carbon the routing policies avoided against the priority choice (issue 15).
        "co2e_avoided_g": sum(float(r.get("co2e_avoided_g") or 0.0) for r in rows),
        "co2e_market_g": None,
        "market_energy_j": 0.0,
    }
    for row in rows:
        _add_market(totals, row)
    totals["market_energy_share"] = market_energy_share(totals)
    return totals


def _add_market(acc: dict[str, Any], row: dict[str, Any]) -> None:
    market_g = row.get("co2e_market_g")
    if market_g is None:
        return
    acc["co2e_market_g"] = (acc["co2e_market_g"] or 0.0) + float(market_g)
    acc["market_energy_j"] += float(row.get("market_energy_j") or 0.0)


def market_energy_share(acc: dict[str, Any]) -> float:
    """The share (0–1) of a group's facility energy that has a market-based figure."""
    energy_j = float(acc["energy_j"])
    if energy_j <= 0.0:
        return 0.0 if acc.get("co2e_market_g") is None else 1.0
    return min(1.0, float(acc["market_energy_j"]) / energy_j)
