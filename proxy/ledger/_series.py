"""Sums over time buckets, the heaviest requests of a period, and who has budgets: the reads
the dashboard page makes, each one aggregated by the database so that a page over a large
ledger only ever receives a few hundred numbers.

Buckets are UTC: an hour (`2026-11-03T14:00Z`), a day (`2026-11-03`, the `day` column) or a
month (`2026-11`). Idle energy is not in these sums (it belongs to no request); the usage
report's `idle` list carries it per upstream.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.ledger._records import as_utc, iso
from proxy.ledger._schema import budgets, requests
from proxy.ledger._usage import SUM_FIELDS

BUCKETS = ("hour", "day", "month")
SERIES_KEYS = ("team", "model", "upstream", "method")
ORDER_FIELDS = ("energy_j", "co2e_g", "water_ml")
_INT_FIELDS = ("requests", "prompt_tokens", "completion_tokens", "tokens")
_TOP_COLUMNS = (
    "request_id",
    "created_at",
    "team",
    "model",
    "upstream",
    "endpoint",
    "method",
    "status",
    "cancelled",
    "prompt_tokens",
    "completion_tokens",
    "gpu_energy_j",
    "energy_j",
    "co2e_g",
    "water_ml",
    "trace_id",
)


def bucket_column(bucket: str, dialect: str) -> ColumnElement[str]:
    """The SQL text of a row's UTC bucket (hours need the dialect: SQLite keeps
    `created_at` as 'YYYY-MM-DD HH:MM:SS…' text, PostgreSQL as timestamptz)."""
    if bucket == "day":
        return requests.c.day
    if bucket == "month":
        return func.substr(requests.c.day, 1, 7)
    if bucket != "hour":
        raise ValueError(f"no bucket {bucket!r}")
    if dialect == "postgresql":
        return func.to_char(func.timezone("UTC", requests.c.created_at), "YYYY-MM-DD HH24")
    return func.substr(requests.c.created_at, 1, 13)


def bucket_label(bucket: str, raw: str) -> str:
    """'2026-11-03 14' (an hour as the database gives it) → '2026-11-03T14:00Z'."""
    return f"{raw[:10]}T{raw[11:13]}:00Z" if bucket == "hour" else raw


class SeriesQueries:
    """Mixed into `Ledger`: reads over `requests` that aggregate in SQL."""

    _engine: AsyncEngine

    async def usage_series(
        self,
        bucket: str,
        group_by: Sequence[str],
        start: datetime | None,
        end: datetime | None,
        team: str | None,
        *,
        limit: int,
    ) -> tuple[list[dict[str, Any]], bool]:
        """Sums per (bucket, *group_by) over [start, end), ordered by bucket then keys;
        at most `limit` rows, and whether there were more."""
        for key in group_by:
            if key not in SERIES_KEYS:
                raise ValueError(f"cannot group a series by {key!r}")
        slot = bucket_column(bucket, self._engine.dialect.name).label("bucket")
        keys = [getattr(requests.c, k) for k in group_by]
        query = (
            select(
                slot,
                *keys,
                func.count().label("requests"),
                *(
                    func.coalesce(func.sum(getattr(requests.c, f)), 0).label(f)
                    for f in SUM_FIELDS
                    if f not in ("requests", "tokens")
                ),
            )
            .group_by(slot, *keys)
            .order_by(slot, *keys)
            .limit(limit + 1)
        )
        query = _window(query, start, end, team)
        async with self._engine.connect() as conn:
            rows = [r._asdict() for r in (await conn.execute(query)).all()]
        out: list[dict[str, Any]] = []
        for row in rows[:limit]:
            item: dict[str, Any] = {"bucket": bucket_label(bucket, str(row["bucket"]))}
            item.update({k: row[k] for k in group_by})
            for f in SUM_FIELDS:
                if f == "tokens":
                    item[f] = int(row["prompt_tokens"]) + int(row["completion_tokens"])
                else:
                    item[f] = int(row[f]) if f in _INT_FIELDS else float(row[f])
            out.append(item)
        return out, len(rows) > limit

    async def top_requests(
        self,
        order_by: str,
        start: datetime | None,
        end: datetime | None,
        team: str | None,
        *,
        limit: int,
    ) -> list[dict[str, Any]]:
        """The `limit` requests of [start, end) with the most `order_by`, most first."""
        if order_by not in ORDER_FIELDS:
            raise ValueError(f"cannot order requests by {order_by!r}")
        column = getattr(requests.c, order_by)
        query = select(*(getattr(requests.c, c) for c in _TOP_COLUMNS))
        query = _window(query, start, end, team)
        query = query.order_by(column.desc(), requests.c.request_id).limit(limit)
        async with self._engine.connect() as conn:
            rows = [r._asdict() for r in (await conn.execute(query)).all()]
        for row in rows:
            row["created_at"] = iso(row["created_at"])
            row["cancelled"] = bool(row["cancelled"])
        return [{str(k): v for k, v in row.items()} for row in rows]

    async def teams_with_budgets(self) -> list[str]:
        """Every team that has at least one budget, by name."""
        query = select(budgets.c.team).distinct().order_by(budgets.c.team)
        async with self._engine.connect() as conn:
            return [str(t) for t in (await conn.execute(query)).scalars()]


def _window(
    query: Select[Any], start: datetime | None, end: datetime | None, team: str | None
) -> Select[Any]:
    if team is not None:
        query = query.where(requests.c.team == team)
    if start is not None:
        query = query.where(requests.c.created_at >= as_utc(start))
    if end is not None:
        query = query.where(requests.c.created_at < as_utc(end))
    return query
