"""The value objects the ledger stores and the helpers that turn rows back into JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime
from typing import Any, Literal

from meters.constants import METHODOLOGY_VERSION
from meters.numbers import dumps_plain
from meters.types import Footprint

Endpoint = Literal["chat.completions", "completions", "embeddings", "responses", "messages"]

# Budget metrics, as in contract.md, and how each is summed from ledger rows.
# co2e_market_g: a row without one counts its co2e_g (as proxy.budgets charges it).
METRICS = ("energy_j", "co2e_g", "water_ml", "tokens", "requests", "co2e_market_g")
PERIODS = ("day", "month", "total")


@dataclass(frozen=True, slots=True)
class LedgerRecord:
    """One request as the ledger keeps it. Units are in the names; `created_at` is aware UTC."""

    request_id: str
    created_at: datetime
    team: str
    key_id: str | None
    model: str
    upstream: str
    endpoint: Endpoint
    stream: bool
    status: int
    cancelled: bool
    error: str | None
    prompt_tokens: int
    completion_tokens: int
    tokens_counted: bool
    method: Literal["measured", "estimated"]
    basis: str
    gpu_energy_j: float
    energy_j: float
    co2e_g: float
    embodied_co2e_g: float
    water_ml: float
    zone: str
    grid_gco2e_per_kwh: float
    pue: float
    intensity_source: str
    trace_id: str | None
    duration_ms: float
    overhead_ms: float
    # Revision 0004: how the figures were made (`figure_columns(footprint)` fills them all).
    methodology_version: str = METHODOLOGY_VERSION
    water_source: str = ""
    intensity_detail: str = ""
    intensity_at: str = ""
    ranges: str | None = None  # JSON: {"energy_j": [low, high], …}
    server_energy_j: float | None = None
    hardware_s: float | None = None
    gpus: int | None = None
    wue_l_per_kwh: float | None = None
    ewif_l_per_kwh: float | None = None
    # Revision 0005 (issue 18): market-based carbon and the contracts it follows from; all
    # None where the upstream has no contract data.
    co2e_market_g: float | None = None
    market_coverage: float | None = None
    market_gco2e_per_kwh: float | None = None
    residual_gco2e_per_kwh: float | None = None
    residual_source: str | None = None
    # How a measured figure was split: "engine" or "local" (methodology §2b); None otherwise.
    attribution: str | None = None
    # Revision 0006 (issue 15): the routing decision (JSON: policy, upstream, candidates, attempts,
    # reason, expected and worst gCO2e, the priority choice) where a policy chose among
    # several upstreams, and the carbon it avoided against the priority choice.
    route: str | None = None
    co2e_avoided_g: float | None = None

    def to_row(self) -> dict[str, Any]:
        # A shallow copy: every field is an immutable scalar, and `asdict`'s deep copy costs
        # tens of microseconds on the request path.
        row = {name: getattr(self, name) for name in _FIELD_NAMES}
        created = as_utc(self.created_at)
        row["created_at"] = created
        row["day"] = created.strftime("%Y-%m-%d")
        return row


_FIELD_NAMES = tuple(f.name for f in fields(LedgerRecord))


def figure_columns(footprint: Footprint) -> dict[str, Any]:
    """Every column that comes from a request's footprint (its figures, revision 0004's record
    of how they were made, revision 0005's market-based carbon and its contracts):
    `LedgerRecord(..., **figure_columns(footprint))`, so the row can be recomputed later."""
    ranges = (
        None
        if footprint.ranges is None
        else dumps_plain({name: list(bounds) for name, bounds in footprint.ranges.items()})
    )
    return {
        "method": footprint.method,
        "basis": footprint.basis,
        "gpu_energy_j": footprint.gpu_energy_j,
        "energy_j": footprint.energy_j,
        "co2e_g": footprint.co2e_g,
        "embodied_co2e_g": footprint.embodied_co2e_g,
        "water_ml": footprint.water_ml,
        "zone": footprint.zone,
        "grid_gco2e_per_kwh": footprint.grid_gco2e_per_kwh,
        "pue": footprint.pue,
        "intensity_source": str(footprint.intensity_source),
        "methodology_version": footprint.methodology_version or METHODOLOGY_VERSION,
        "water_source": str(footprint.water_source),
        "intensity_detail": footprint.intensity_detail[:200],
        "intensity_at": footprint.intensity_at[:40],
        "ranges": ranges,
        "server_energy_j": footprint.server_energy_j,
        "hardware_s": footprint.hardware_s,
        "gpus": footprint.gpus,
        "wue_l_per_kwh": footprint.wue_l_per_kwh,
        "ewif_l_per_kwh": footprint.ewif_l_per_kwh,
        # "engine" | "local": how a measured figure was split (methodology §2b)
        "attribution": footprint.attribution or None,
        **_market_columns(footprint),
    }


def _market_columns(footprint: Footprint) -> dict[str, Any]:
    contracts = footprint.contracts
    if contracts is None or footprint.co2e_market_g is None:
        return {}
    return {
        "co2e_market_g": footprint.co2e_market_g,
        "market_coverage": contracts.coverage,
        "market_gco2e_per_kwh": contracts.market_gco2e_per_kwh,
        "residual_gco2e_per_kwh": contracts.residual_gco2e_per_kwh,
        "residual_source": contracts.residual_source[:200],
    }


def as_utc(moment: datetime) -> datetime:
    """Aware UTC; a naive datetime (SQLite hands those back) is taken to be UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def parse_moment(text: str) -> datetime:
    """An ISO 8601 date or date-time (a trailing `Z` allowed) as aware UTC; without a zone it
    is UTC, and a date is its midnight. ValueError when it is neither."""
    text = text.strip()
    if len(text) == 10:
        d = date.fromisoformat(text)
        return datetime(d.year, d.month, d.day, tzinfo=UTC)
    return as_utc(datetime.fromisoformat(text.replace("Z", "+00:00")))


def iso(moment: datetime) -> str:
    return as_utc(moment).isoformat().replace("+00:00", "Z")


def row_to_json(row: dict[str, Any]) -> dict[str, Any]:
    """A stored request row as the footprint API returns it."""
    # str(): SQLAlchemy hands column names back as a str subclass JSON encoders refuse.
    out = {str(k): v for k, v in row.items() if k != "day"}
    out["created_at"] = iso(row["created_at"])
    for flag in ("stream", "cancelled", "tokens_counted"):
        out[flag] = bool(row[flag])
    for member in ("ranges", "route"):
        if isinstance(out.get(member), str):
            out[member] = json.loads(out[member])
    return out
