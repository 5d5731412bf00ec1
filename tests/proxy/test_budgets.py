"""Budgets hold: against concurrent requests, across replicas sharing Redis, across restarts,
and with Redis gone (each policy)."""

from __future__ import annotations

import asyncio
import random

import pytest

from proxy.budgets import Budgets, Usage, open_budgets
from proxy.config import BudgetSettings, LedgerSettings
from proxy.errors import BudgetExceeded, ServiceUnavailable
from proxy.ledger import Ledger, open_ledger
from tests.conftest import REDIS_URL
from tests.proxy.ledger.records import record


class Clock:
    def __init__(self, now_s: float = 1_741_953_600.0) -> None:  # 2025-03-14T12:00:00Z
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
async def ledger(sqlite_url: str) -> Ledger:
    led = await open_ledger(LedgerSettings(url=sqlite_url))
    await led.create_team("search")
    yield led  # type: ignore[misc]
    await led.aclose()


@pytest.fixture(params=["local", "redis"])
async def budgets(request: pytest.FixtureRequest, ledger: Ledger, redis_prefix: str) -> Budgets:
    url = REDIS_URL if request.param == "redis" else ""
    b = await open_budgets(BudgetSettings(redis_url=url), ledger, key_prefix=redis_prefix)
    yield b  # type: ignore[misc]
    await b.aclose()


async def test_a_request_that_fits_is_served_and_settled(budgets: Budgets) -> None:
    await budgets.put("search", "co2e_g", "month", 10.0)
    await budgets.put("search", "requests", "day", 100)
    res = await budgets.reserve("search", Usage(co2e_g=4.0, requests=1), "r1")
    remaining = await budgets.settle(res, Usage(co2e_g=1.5, requests=1))
    assert remaining == pytest.approx({"co2e-g": 8.5, "requests": 99.0})
    lines = {(x.metric, x.period): x for x in await budgets.status("search")}
    assert lines[("co2e_g", "month")].used == pytest.approx(1.5)
    assert lines[("co2e_g", "month")].reserved == pytest.approx(0.0)


async def test_a_team_without_enough_left_gets_429_with_remaining_headers(
    budgets: Budgets,
) -> None:
    await budgets.put("search", "co2e_g", "day", 5.0)
    held = await budgets.reserve("search", Usage(co2e_g=3.0), "r1")
    with pytest.raises(BudgetExceeded) as caught:
        await budgets.reserve("search", Usage(co2e_g=3.0), "r2")
    response = caught.value.to_response()
    assert response.status_code == 429
    assert caught.value.body()["error"]["type"] == "insufficient_quota"
    assert caught.value.body()["error"]["code"] == "footprint_budget_exceeded"
    assert response.headers["x-footprint-budget-remaining-co2e-g"] == "2"
    # Released, the reservation's room comes back.
    await budgets.release(held)
    await budgets.reserve("search", Usage(co2e_g=3.0), "r2")


async def test_a_spent_budget_refuses_even_free_requests(budgets: Budgets) -> None:
    await budgets.put("search", "tokens", "total", 100)
    res = await budgets.reserve("search", Usage(tokens=100), "r1")
    await budgets.settle(res, Usage(tokens=100))
    with pytest.raises(BudgetExceeded):
        await budgets.reserve("search", Usage(tokens=0), "r2")


async def test_teams_without_budgets_are_not_limited(budgets: Budgets) -> None:
    res = await budgets.reserve("search", Usage(co2e_g=1e9, tokens=1e9), "r1")
    assert await budgets.settle(res, Usage(co2e_g=1e9)) == {}


async def test_spent_budget_survives_a_restart(ledger: Ledger, redis_prefix: str) -> None:
    """Spent amounts are rebuilt from the ledger: a fresh in-process instance, and a Redis
    that lost its data, both see what was recorded."""
    await ledger.put_budget("search", "co2e_g", "total", 10.0)
    await ledger.record(record(request_id="old1", team="search", co2e_g=4.0))
    await ledger.record(record(request_id="old2", team="search", co2e_g=5.0))
    for url in ("", REDIS_URL):
        fresh = await open_budgets(BudgetSettings(redis_url=url), ledger, key_prefix=redis_prefix)
        try:
            with pytest.raises(BudgetExceeded):
                await fresh.reserve("search", Usage(co2e_g=2.0), "new")
            await fresh.reserve("search", Usage(co2e_g=0.5), "small")
        finally:
            await fresh.aclose()


async def test_expired_reservations_are_freed(ledger: Ledger, redis_prefix: str) -> None:
    clock = Clock()
    local = await open_budgets(BudgetSettings(reservation_ttl_s=60), ledger, clock=clock)
    await local.put("search", "energy_j", "day", 100.0)
    await local.reserve("search", Usage(energy_j=100.0), "lost")  # its replica "died"
    with pytest.raises(BudgetExceeded):
        await local.reserve("search", Usage(energy_j=1.0), "next")
    clock.now_s += 61
    await local.reserve("search", Usage(energy_j=1.0), "next")

    shared = await open_budgets(
        BudgetSettings(redis_url=REDIS_URL, reservation_ttl_s=0.2), ledger, key_prefix=redis_prefix
    )
    try:
        await shared.reserve("search", Usage(energy_j=100.0), "lost")
        with pytest.raises(BudgetExceeded):
            await shared.reserve("search", Usage(energy_j=1.0), "next")
        await asyncio.sleep(0.4)  # Redis's own clock decides expiry
        await shared.reserve("search", Usage(energy_j=1.0), "next")
    finally:
        await shared.aclose()


async def test_replicas_racing_on_redis_never_overspend(ledger: Ledger, redis_prefix: str) -> None:
    """Three replicas, 200 concurrent requests, a budget for about 50 of them: the total
    settled stays within the limit (worst cases are reserved, actuals are smaller)."""
    limit_g = 100.0
    # "refuse": a Redis call that times out on a loaded machine must not let a request through
    # unchecked (which is what "allow" is for).
    settings = BudgetSettings(redis_url=REDIS_URL, on_store_error="refuse")
    replicas = [
        await open_budgets(settings, ledger, key_prefix=redis_prefix, redis_timeout_s=5.0)
        for _ in range(3)
    ]
    await replicas[0].put("search", "co2e_g", "month", limit_g)
    rng = random.Random(5)
    settled: list[float] = []
    refused = 0

    async def one(i: int) -> None:
        nonlocal refused
        budgets = replicas[i % 3]
        try:
            res = await budgets.reserve("search", Usage(co2e_g=2.0, requests=1), f"req-{i}")
        except BudgetExceeded as exc:
            assert exc.to_response().status_code == 429
            refused += 1
            return
        await asyncio.sleep(rng.random() / 100)
        actual = rng.uniform(1.0, 2.0)
        await budgets.settle(res, Usage(co2e_g=actual, requests=1))
        settled.append(actual)

    try:
        await asyncio.gather(*(one(i) for i in range(200)))
        lines = await replicas[1].status("search")
    finally:
        for b in replicas:
            await b.aclose()
    assert sum(settled) <= limit_g
    assert refused + len(settled) == 200
    assert sum(b.store_errors for b in replicas) == 0
    assert len(settled) >= 50  # the budget was used, not refused wholesale
    assert lines[0].used == pytest.approx(sum(settled))
    assert lines[0].reserved == pytest.approx(0.0, abs=1e-9)


async def test_redis_down_refuse_policy_answers_503(ledger: Ledger) -> None:
    budgets = await open_budgets(
        BudgetSettings(redis_url="redis://127.0.0.1:1/0", on_store_error="refuse"), ledger
    )
    try:
        with pytest.raises(ServiceUnavailable) as caught:
            await budgets.reserve("search", Usage(co2e_g=1.0), "r1")
        assert caught.value.to_response().status_code == 503
        assert budgets.store_errors == 1
    finally:
        await budgets.aclose()


async def test_redis_down_allow_policy_serves_and_keeps_the_usage(ledger: Ledger) -> None:
    budgets = await open_budgets(
        BudgetSettings(redis_url="redis://127.0.0.1:1/0", on_store_error="allow"), ledger
    )
    try:
        res = await budgets.reserve("search", Usage(co2e_g=1.0), "r1")
        assert not res.checked
        assert await budgets.settle(res, Usage(co2e_g=0.7)) == {}
        assert budgets.store_errors == 1
        assert budgets.pending_reconciliations == 1
    finally:
        await budgets.aclose()


async def test_settlements_made_while_redis_was_down_are_reconciled(
    ledger: Ledger, redis_prefix: str
) -> None:
    down = await open_budgets(
        BudgetSettings(redis_url="redis://127.0.0.1:1/0", on_store_error="allow"),
        ledger,
        store_retry_s=0.0,
    )
    up = await open_budgets(BudgetSettings(redis_url=REDIS_URL), ledger, key_prefix=redis_prefix)
    try:
        await up.put("search", "co2e_g", "month", 10.0)
        res = await down.reserve("search", Usage(co2e_g=1.0), "r1")
        await down.settle(res, Usage(co2e_g=3.0))
        # Redis "comes back": hand the pending settlement to a reachable backend.
        down._backend = up._backend  # the same object a reconnect would give
        assert await down.reconcile() == 1
        lines = await up.status("search")
        assert lines[0].used == pytest.approx(3.0)
    finally:
        await up.aclose()
