"""The value objects the ledger stores and the helpers that turn rows back into JSON."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, Literal

Endpoint = Literal["chat.completions", "completions", "embeddings"]

# Budget metrics, as in contract.md, and how each is summed from ledger rows.
METRICS = ("energy_j", "co2e_g", "water_ml", "tokens", "requests")
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
    # How a measured figure was split: "engine" or "local" (methodology §2b); None otherwise.
    attribution: str | None = None

    def to_row(self) -> dict[str, Any]:
        # A shallow copy: every field is an immutable scalar, and `asdict`'s deep copy costs
        # tens of microseconds on the request path.
        row = {name: getattr(self, name) for name in _FIELD_NAMES}
        created = as_utc(self.created_at)
        row["created_at"] = created
        row["day"] = created.strftime("%Y-%m-%d")
        return row


_FIELD_NAMES = tuple(f.name for f in fields(LedgerRecord))


def as_utc(moment: datetime) -> datetime:
    """Aware UTC; a naive datetime (SQLite hands those back) is taken to be UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def iso(moment: datetime) -> str:
    return as_utc(moment).isoformat().replace("+00:00", "Z")


def row_to_json(row: dict[str, Any]) -> dict[str, Any]:
    """A stored request row as the footprint API returns it."""
    # str(): SQLAlchemy hands column names back as a str subclass JSON encoders refuse.
    out = {str(k): v for k, v in row.items() if k != "day"}
    out["created_at"] = iso(row["created_at"])
    for flag in ("stream", "cancelled", "tokens_counted"):
        out[flag] = bool(row[flag])
    return out
