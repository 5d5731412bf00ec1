"""Sums over UTC hour, day and month buckets and the heaviest requests, on a real SQLite file
and a real PostgreSQL schema: the database does the grouping, the same way on both."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone

import pytest

from proxy.config import LedgerSettings
from proxy.ledger import Ledger, open_ledger
from tests.proxy.ledger.records import record

T0 = datetime(2026, 11, 30, 23, 30, tzinfo=UTC)


@pytest.fixture
async def ledger(ledger_url: str) -> AsyncIterator[Ledger]:
    led = await open_ledger(LedgerSettings(url=ledger_url))
    rows = [
        record(request_id="a", created_at=T0, energy_j=1.0, team="x"),
        record(request_id="b", created_at=T0 + timedelta(minutes=29), energy_j=2.0, team="x"),
        # 00:15 UTC on 1 December, written with a +09:00 offset: the bucket is still UTC.
        record(
            request_id="c",
            created_at=datetime(2026, 12, 1, 9, 15, tzinfo=timezone(timedelta(hours=9))),
            energy_j=4.0,
            team="y",
        ),
    ]
    for r in rows:
        await led.record(r)
    yield led
    await led.aclose()


async def test_hour_buckets_are_utc_hours(ledger: Ledger) -> None:
    rows, more = await ledger.usage_series("hour", ["team"], None, None, None, limit=100)
    assert [(r["bucket"], r["team"], r["energy_j"], r["requests"]) for r in rows] == [
        ("2026-11-30T23:00Z", "x", 3.0, 2),
        ("2026-12-01T00:00Z", "y", 4.0, 1),
    ]
    assert more is False


async def test_month_buckets_and_a_window_and_a_team(ledger: Ledger) -> None:
    rows, _ = await ledger.usage_series("month", [], None, None, None, limit=100)
    assert [(r["bucket"], r["energy_j"]) for r in rows] == [("2026-11", 3.0), ("2026-12", 4.0)]
    start = T0 + timedelta(minutes=10)
    rows, _ = await ledger.usage_series("day", ["model"], start, None, "x", limit=100)
    assert [(r["bucket"], r["energy_j"]) for r in rows] == [("2026-11-30", 2.0)]


async def test_top_requests_most_energy_first(ledger: Ledger) -> None:
    top = await ledger.top_requests("energy_j", None, None, None, limit=2)
    assert [r["request_id"] for r in top] == ["c", "b"]
    assert top[0]["created_at"] == "2026-12-01T00:15:00Z"
    assert await ledger.top_requests("energy_j", None, None, "y", limit=5) == [top[0]]
