"""Meter accounts: measured, idle and other energy per (meter, bucket), shared by replicas.

Written idempotently: the key is (meter, bucket start), and of two writes of one key the one
that measured more energy stays (a replica that started mid-bucket saw less of it), so however
many replicas read the same GPUs, the cluster holds each bucket once. `balance` turns the
stored buckets and the request rows into the per-upstream, per-day account that reports show:
Σ requests + idle + other = measured, and the share of the GPUs' energy that passed through
Footprint (methodology §2b).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from proxy.ledger._records import as_utc
from proxy.ledger._schema import accounts, conflict_insert, requests


@dataclass(frozen=True, slots=True)
class AccountRow:
    """One meter's bucket as a replica saw it; idle figures carry the request boundary."""

    meter: str
    bucket_start: datetime
    bucket_end: datetime
    upstream: str
    measured_gpu_energy_j: float
    measured_s: float
    idle_gpu_energy_j: float
    idle_s: float
    idle_energy_j: float
    idle_co2e_g: float
    idle_embodied_co2e_g: float
    idle_water_ml: float
    other_gpu_energy_j: float
    replica: str

    def to_row(self) -> dict[str, Any]:
        row = asdict(self)
        row["bucket_start"] = start = as_utc(self.bucket_start)
        row["bucket_end"] = as_utc(self.bucket_end)
        row["day"] = start.strftime("%Y-%m-%d")
        return row


_UPDATED = [c.name for c in accounts.columns if c.name not in ("meter", "bucket_start")]


def upsert(dialect: str) -> Any:
    """INSERT … ON CONFLICT (meter, bucket_start) DO UPDATE only where the new row measured
    more: repeating a write, or a second replica's, never adds."""
    insert = conflict_insert(dialect, accounts)
    return insert.on_conflict_do_update(
        index_elements=["meter", "bucket_start"],
        set_={name: insert.excluded[name] for name in _UPDATED},
        where=insert.excluded.measured_gpu_energy_j > accounts.c.measured_gpu_energy_j,
    )


ACCOUNT_FIELDS = (
    "measured_gpu_energy_j",
    "requests_gpu_energy_j",
    "idle_gpu_energy_j",
    "other_gpu_energy_j",
    "passed_share",
    "idle_energy_j",
    "idle_co2e_g",
    "idle_water_ml",
)


async def read_balance(
    conn: AsyncConnection, start: datetime | None, end: datetime | None
) -> list[dict[str, Any]]:
    """The per-upstream, per-day account over [start, end) (buckets by their start)."""
    bucket_query = select(
        accounts.c.upstream,
        accounts.c.day,
        *(
            func.sum(getattr(accounts.c, f)).label(f)
            for f in (
                "measured_gpu_energy_j",
                "idle_gpu_energy_j",
                "idle_energy_j",
                "idle_co2e_g",
                "idle_water_ml",
            )
        ),
    ).group_by(accounts.c.upstream, accounts.c.day)
    request_query = (
        select(
            requests.c.upstream,
            requests.c.day,
            func.sum(requests.c.gpu_energy_j).label("gpu_energy_j"),
        )
        .where(requests.c.method == "measured")
        .group_by(requests.c.upstream, requests.c.day)
    )
    if start is not None:
        bucket_query = bucket_query.where(accounts.c.bucket_start >= as_utc(start))
        request_query = request_query.where(requests.c.created_at >= as_utc(start))
    if end is not None:
        bucket_query = bucket_query.where(accounts.c.bucket_start < as_utc(end))
        request_query = request_query.where(requests.c.created_at < as_utc(end))
    buckets = [r._asdict() for r in (await conn.execute(bucket_query)).all()]
    measured = {
        (r.upstream, r.day): float(r.gpu_energy_j or 0.0)
        for r in (await conn.execute(request_query)).all()
    }
    return balance(buckets, measured)


def balance(
    buckets: Iterable[Mapping[str, Any]], requests_j: Mapping[tuple[str, str], float]
) -> list[dict[str, Any]]:
    """Per (upstream, day): measured = Σ requests + idle + other, other being what the GPUs
    did for nobody this ledger knows (bypass traffic, replicas writing elsewhere)."""
    out = []
    for row in sorted(buckets, key=lambda r: (r["upstream"], r["day"])):
        measured_j = float(row["measured_gpu_energy_j"] or 0.0)
        idle_j = float(row["idle_gpu_energy_j"] or 0.0)
        served_j = requests_j.get((row["upstream"], row["day"]), 0.0)
        other_j = max(measured_j - idle_j - served_j, 0.0)
        active_j = measured_j - idle_j
        out.append(
            {
                "upstream": row["upstream"],
                "day": row["day"],
                "measured_gpu_energy_j": measured_j,
                "requests_gpu_energy_j": served_j,
                "idle_gpu_energy_j": idle_j,
                "other_gpu_energy_j": other_j,
                # of the energy the GPUs spent on work, the part Footprint's requests carry
                "passed_share": served_j / active_j if active_j > 0 else None,
                "idle_energy_j": float(row["idle_energy_j"] or 0.0),
                "idle_co2e_g": float(row["idle_co2e_g"] or 0.0),
                "idle_water_ml": float(row["idle_water_ml"] or 0.0),
            }
        )
    return out
