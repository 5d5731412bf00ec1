"""The facts budgets are made of, defined once: the metrics (`METRICS`: the Redis scripts, the
ledger's sums and the CLI loop over it), the periods, what a request uses (`Usage`), holds
(`Reservation`) and what a budget line says (`BudgetLine`), the store a backend rebuilds from,
and the period arithmetic. The in-process and Redis backends both build on this module.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from meters.numbers import format_decimal
from proxy.errors import InvalidRequest

# co2e_market_g (issue 18): market-based carbon; a request without a market-based figure is
# charged its location-based co2e_g on it (`Usage.values`), so no budget is escaped by going to
# an upstream without contract data.
METRICS = ("energy_j", "co2e_g", "water_ml", "tokens", "requests", "co2e_market_g")
PERIODS = ("day", "month", "total")
HEADER_PREFIX = "x-footprint-budget-remaining-"


@dataclass(frozen=True, slots=True)
class Usage:
    """Amounts on every budget metric, in the metric's unit."""

    energy_j: float = 0.0
    co2e_g: float = 0.0
    water_ml: float = 0.0
    tokens: float = 0.0
    requests: float = 0.0
    co2e_market_g: float | None = None  # None: no market-based figure (charged co2e_g)

    def values(self) -> tuple[float, ...]:
        """The amounts in `METRICS` order; co2e_market_g is co2e_g where there is none."""
        market_g = self.co2e_g if self.co2e_market_g is None else self.co2e_market_g
        charged = {"co2e_market_g": market_g}
        return tuple(float(charged.get(metric, getattr(self, metric))) for metric in METRICS)


@dataclass(frozen=True, slots=True)
class Reservation:
    team: str
    request_id: str
    worst: Usage
    day: str
    month: str
    # False when the budget store could not be asked and policy let the request through.
    checked: bool = True
    # When it was made (the budgets' clock): the request's row was created just before.
    reserved_s: float = 0.0


@dataclass(frozen=True, slots=True)
class BudgetLine:
    """One budget of one team, as it stands."""

    metric: str
    period: str
    limit: float
    used: float
    reserved: float

    @property
    def remaining(self) -> float:
        return max(0.0, self.limit - self.used - self.reserved)

    def as_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "period": self.period,
            "limit": self.limit,
            "used": self.used,
            "reserved": self.reserved,
            "remaining": self.remaining,
        }


class BudgetStore(Protocol):
    async def list_budgets(self, team: str) -> list[tuple[str, str, float]]: ...

    async def put_budget(self, team: str, metric: str, period: str, limit: float) -> None: ...

    async def spent(self, team: str, since: datetime | None) -> dict[str, float]: ...

    async def budget_snapshot(
        self, team: str, starts: dict[str, datetime | None], recent_since: datetime
    ) -> tuple[dict[str, dict[str, float]], list[str]]: ...


def plain_decimal(value: float) -> str:
    """A number as contract.md wants it in headers: the one formatter every header, body and
    CSV uses (`meters.numbers.format_decimal`: plain decimal, 6 significant digits)."""
    return format_decimal(value)


def header_metric(metric: str) -> str:
    """A metric as header names spell it: co2e_g -> co2e-g."""
    return metric.replace("_", "-")


def remaining_headers(remaining: Mapping[str, float]) -> dict[str, str]:
    """`x-footprint-budget-remaining-<metric>` headers from `remaining_by_metric`'s answer."""
    return {HEADER_PREFIX + m: plain_decimal(v) for m, v in remaining.items()}


def remaining_by_metric(lines: list[BudgetLine]) -> dict[str, float]:
    """What is left per metric, keyed as header names spell it (co2e-g, energy-j, …): the
    tightest of the metric's day/month/total budgets."""
    out: dict[str, float] = {}
    for line in lines:
        key = header_metric(line.metric)
        out[key] = min(out.get(key, math.inf), line.remaining)
    return out


def validate_budget(metric: str, period: str, limit: float) -> None:
    if metric not in METRICS:
        raise InvalidRequest(f"metric must be one of {', '.join(METRICS)}", param="metric")
    if period not in PERIODS:
        raise InvalidRequest(f"period must be one of {', '.join(PERIODS)}", param="period")
    if not math.isfinite(limit) or limit < 0:
        raise InvalidRequest("limit must be a finite number, zero or more", param="limit")


_SECONDS_PER_DAY = 86_400


@functools.lru_cache(maxsize=4)
def _day_keys(day_number: int) -> tuple[str, str]:
    moment = datetime.fromtimestamp(day_number * _SECONDS_PER_DAY, UTC)
    return moment.strftime("%Y-%m-%d"), moment.strftime("%Y-%m")


def _period_keys(now_s: float) -> tuple[str, str]:
    """The UTC day and month `now_s` falls in ("2025-03-14", "2025-03"): worked out once a
    day (every request asks; Unix time has no leap seconds, so a UTC day is 86,400 s)."""
    return _day_keys(math.floor(now_s / _SECONDS_PER_DAY))


def period_starts(day: str, month: str) -> dict[str, datetime | None]:
    return {
        "day": datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC),
        "month": datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC),
        "total": None,
    }


def period_key(period: str, day: str, month: str) -> str:
    return day if period == "day" else month if period == "month" else "all"


async def spent_since_period_starts(
    store: BudgetStore, team: str, day: str, month: str
) -> dict[tuple[str, str], float]:
    """(metric, period) -> what the ledger says `team` spent in the current period."""
    out: dict[tuple[str, str], float] = {}
    for period, since in period_starts(day, month).items():
        sums = await store.spent(team, since)
        for metric in METRICS:
            out[(metric, period)] = sums[metric]
    return out


class StoreUnavailable(Exception):
    """The budget store (Redis, or the database behind it) did not answer."""
