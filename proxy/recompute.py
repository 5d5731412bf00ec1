"""`footprint report --recompute`: each stored request's figures again, from its stored inputs.

A ledger row keeps what its figures follow from (revision 0004): the attributed or estimated
GPU energy, the server share, the hardware occupancy and its GPU count, the PUE and on-site WUE,
the grid intensity and water factor it used, and the methodology version; and, where it has a
market-based figure (revision 0005), the contracts' coverage and factor and the residual mix.
Recomputing with today's arithmetic (`meters.footprint.compute_footprint`) must give the stored
figures; where it does not, the row is listed with each figure that moved and why (another
methodology version, or inputs that were not stored because the row predates revision 0004).

The estimate itself (tokens → GPU energy) is not redone: its inputs (the catalogue's counts, the
measured latency) are the basis the row names, and a measured figure cannot be re-measured.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from meters.constants import METHODOLOGY_VERSION
from meters.footprint import compute_footprint
from meters.types import Hardware, Intensity, MarketContracts, Measurement, SiteFactors

__all__ = ["FIGURES", "RowChange", "recompute_row", "recompute_rows"]

# The stored figures recomputed, in the order a report lists them; `co2e_market_g` too on a
# row that has one (revision 0005: its contracts are stored beside it).
FIGURES = ("energy_j", "co2e_g", "embodied_co2e_g", "water_ml")
MARKET_FIGURE = "co2e_market_g"
_CONTRACTS = ("market_coverage", "market_gco2e_per_kwh", "residual_gco2e_per_kwh")
_INPUTS = ("server_energy_j", "hardware_s", "gpus", "wue_l_per_kwh", "ewif_l_per_kwh")
# Stored figures are full floats; the same arithmetic gives them back to rounding error.
_REL = 1e-9


@dataclass(frozen=True, slots=True)
class RowChange:
    """One row whose stored figures today's arithmetic does not give back, and why."""

    request_id: str
    reason: str
    changed: dict[str, tuple[float, float]] = field(default_factory=dict)  # stored, recomputed


def recompute_row(row: Mapping[str, Any]) -> RowChange | None:
    """None when the row's stored figures follow from its stored inputs; else what differs."""
    request_id = str(row["request_id"])
    version = str(row.get("methodology_version") or "1")
    missing = [name for name in _INPUTS if row.get(name) is None]
    if missing:
        return RowChange(
            request_id,
            f"written under methodology {version} before its inputs were stored "
            f"(no {', '.join(missing)}): cannot be recomputed",
        )
    gpus = int(row["gpus"])
    measurement = Measurement(
        gpu_energy_j=float(row["gpu_energy_j"]),
        server_energy_j=float(row["server_energy_j"]),
        hardware_s=float(row["hardware_s"]),
        method=row["method"],
        basis=str(row["basis"]),
        gpus=gpus,
    )
    market = row.get(MARKET_FIGURE) is not None
    if market and any(row.get(name) is None for name in _CONTRACTS):
        return RowChange(
            request_id, f"{MARKET_FIGURE} stored without its contracts: cannot be recomputed"
        )
    site = SiteFactors(
        zone=str(row["zone"]),
        pue=float(row["pue"]),
        wue_l_per_kwh=float(row["wue_l_per_kwh"]),
        contracts=_contracts(row) if market else None,
    )
    intensity = Intensity(
        zone=str(row["zone"]),
        gco2e_per_kwh=float(row["grid_gco2e_per_kwh"]),
        ewif_l_per_kwh=float(row["ewif_l_per_kwh"]),
        source=str(row.get("intensity_detail") or ""),
    )
    again = compute_footprint(measurement, site, Hardware(gpus=max(gpus, 1)), intensity)
    changed = {}
    for name in (*FIGURES, MARKET_FIGURE) if market else FIGURES:
        stored, now = float(row[name]), float(getattr(again, name))
        if abs(stored - now) > _REL * max(abs(stored), abs(now), 1e-300):
            changed[name] = (stored, now)
    if not changed:
        return None
    reason = (
        f"methodology {version} then, {METHODOLOGY_VERSION} now"
        if version != METHODOLOGY_VERSION
        else f"same methodology ({version}) but different figures: the stored row was altered "
        "or computed by other code"
    )
    return RowChange(request_id, reason, changed)


def _contracts(row: Mapping[str, Any]) -> MarketContracts:
    return MarketContracts(
        coverage=float(row["market_coverage"]),
        market_gco2e_per_kwh=float(row["market_gco2e_per_kwh"]),
        residual_gco2e_per_kwh=float(row["residual_gco2e_per_kwh"]),
        residual_source=str(row.get("residual_source") or ""),
    )


def recompute_rows(rows: Iterable[Mapping[str, Any]]) -> tuple[int, list[RowChange]]:
    """How many rows were checked, and those that did not recompute to their stored figures."""
    count = 0
    changes = []
    for row in rows:
        count += 1
        change = recompute_row(row)
        if change is not None:
            changes.append(change)
    return count, changes
