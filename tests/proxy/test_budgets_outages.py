"""Budgets through Redis outages, on a private Redis this module stops, restarts and flushes:
settlements made while Redis was down are applied once (never raced, never counted twice
after Redis comes back empty), and a Redis that loses a team's keys while requests are in
flight does not let the budget be overspent (issue 11, defects 3 and 10)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from proxy.budgets import Budgets, StoreUnavailable, Usage, open_budgets
from proxy.config import BudgetSettings, LedgerSettings
from proxy.errors import BudgetExceeded
from proxy.ledger import Ledger, open_ledger
from tests.proxy.ledger.records import record
from tests.support.redis_server import PrivateRedis

pytestmark = pytest.mark.redis


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    with PrivateRedis(tmp_path / "redis") as server:
        yield server


@pytest.fixture
async def ledger(sqlite_url: str) -> AsyncIterator[Ledger]:
    led = await open_ledger(LedgerSettings(url=sqlite_url))
    await led.create_team("search")
    yield led
    await led.aclose()


@pytest.fixture
async def budgets_on(
    ledger: Ledger, private_redis: PrivateRedis
) -> AsyncIterator[Callable[[str], Awaitable[Budgets]]]:
    """Budgets on the private Redis under a policy; closed after the test. The store is
    asked again at once after a failure, so the test decides when Redis is back."""
    opened: list[Budgets] = []

    async def open_with(policy: str) -> Budgets:
        budgets = await open_budgets(
            BudgetSettings(redis_url=private_redis.url, on_store_error=policy),  # type: ignore[arg-type]
            ledger,
            redis_timeout_s=2.0,
            store_retry_s=0.0,
        )
        opened.append(budgets)
        await budgets.put("search", "requests", "total", 1000)
        return budgets

    yield open_with
    for budgets in opened:
        await budgets.aclose()


async def _serve(budgets: Budgets, ledger: Ledger, request_id: str) -> None:
    """One request as the relay runs it: reserve, the row made durable, then settle."""
    reservation = await budgets.reserve("search", Usage(tokens=10, requests=1), request_id)
    await ledger.record(
        record(
            request_id=request_id,
            created_at=datetime.now(UTC),
            team="search",
            prompt_tokens=4,
            completion_tokens=6,
            co2e_g=0.0,
        )
    )
    await budgets.settle(reservation, Usage(tokens=10, requests=1))


async def _used_requests(budgets: Budgets) -> float:
    lines = {(x.metric, x.period): x for x in await budgets.status("search")}
    return lines[("requests", "total")].used


async def test_settlements_queued_in_an_outage_are_applied_once_by_racing_requests(
    ledger: Ledger,
    private_redis: PrivateRedis,
    budgets_on: Callable[[str], Awaitable[Budgets]],
) -> None:
    budgets = await budgets_on("allow")
    for i in range(3):
        await _serve(budgets, ledger, f"before-{i}")
    private_redis.stop()
    for i in range(6):
        await _serve(budgets, ledger, f"during-{i}")
    assert budgets.pending_reconciliations == 6
    private_redis.start()  # back, and empty: its counts are rebuilt from the ledger
    results = await asyncio.gather(
        *(_serve(budgets, ledger, f"after-{i}") for i in range(30)), return_exceptions=True
    )
    assert [r for r in results if r is not None] == []
    assert budgets.pending_reconciliations == 0
    rows = await ledger.count_requests()
    assert rows == 39
    assert await _used_requests(budgets) == rows


async def test_a_status_read_after_an_outage_counts_what_was_settled_during_it(
    ledger: Ledger,
    private_redis: PrivateRedis,
    budgets_on: Callable[[str], Awaitable[Budgets]],
) -> None:
    """No request after Redis came back: the status (what /admin/budgets shows) still counts
    the settlements queued while it was down, even if the store failed moments ago."""
    budgets = await budgets_on("allow")
    await _serve(budgets, ledger, "before")
    private_redis.stop()
    await _serve(budgets, ledger, "during")
    assert budgets.pending_reconciliations == 1
    private_redis.start()
    budgets._store_retry_s = 60.0  # the store "failed moments ago" for as long as the test runs
    budgets._store_failed("test", StoreUnavailable("down moments ago"))
    assert await _used_requests(budgets) == await ledger.count_requests() == 2
    assert budgets.pending_reconciliations == 0


async def test_a_settlement_whose_reply_was_lost_is_not_counted_twice(
    ledger: Ledger,
    private_redis: PrivateRedis,
    budgets_on: Callable[[str], Awaitable[Budgets]],
) -> None:
    """Redis applied the settlement but the reply never came (a timeout): the settlement is
    queued and applied again later, which must change nothing."""
    budgets = await budgets_on("allow")
    await _serve(budgets, ledger, "r1")
    reservation = await budgets.reserve("search", Usage(requests=1), "r2")
    await ledger.record(record(request_id="r2", team="search", created_at=datetime.now(UTC)))
    await budgets.settle(reservation, Usage(requests=1))
    # The same settlement again, as a retry after a lost reply sends it.
    budgets._queue_pending(reservation, Usage(requests=1))
    await budgets.reconcile()
    assert await _used_requests(budgets) == 2


async def test_redis_losing_a_teams_keys_mid_flight_does_not_let_the_budget_be_overspent(
    ledger: Ledger,
    private_redis: PrivateRedis,
    budgets_on: Callable[[str], Awaitable[Budgets]],
) -> None:
    budgets = await budgets_on("refuse")
    await budgets.put("search", "requests", "total", 50)
    held = [await budgets.reserve("search", Usage(requests=1), f"inflight-{i}") for i in range(50)]
    private_redis.flushall()  # Redis lost the team's keys (eviction, failover, FLUSHALL)
    admitted = 0
    for i in range(50):
        try:
            await budgets.reserve("search", Usage(requests=1), f"late-{i}")
            admitted += 1
        except BudgetExceeded:
            pass
    assert admitted == 0
    for i, reservation in enumerate(held):
        await ledger.record(
            record(request_id=f"inflight-{i}", team="search", created_at=datetime.now(UTC))
        )
        await budgets.settle(reservation, Usage(requests=1))
    assert await _used_requests(budgets) == 50
    with pytest.raises(BudgetExceeded):
        await budgets.reserve("search", Usage(requests=1), "one-more")
