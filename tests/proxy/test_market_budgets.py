"""A budget on `co2e_market_g` (issue 18), through real requests to a real proxy: it refuses
while the location-based budget of the same size would not, and a request without a market
figure is charged its location-based carbon against it (the conservative stand-in)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.config import LedgerSettings
from proxy.ledger import LedgerRecord, open_ledger
from tests.conftest import ADMIN_KEY
from tests.proxy.conftest import proxy_settings
from tests.proxy.ledger.records import record
from tests.proxy.test_market_carbon import upstream_entry
from tests.support.redis_server import PrivateRedis
from tests.support.servers import ServerThread

ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
MESSAGES = [{"role": "user", "content": "hello there"}]
# Certificates for 10 % of the electricity; the rest at a residual mix dirtier than Germany's
# grid average (330 g): the market-based figure is the larger one here.
DIRTY_RESIDUAL = {
    "market_coverage": 0.1,
    "market_gco2e_per_kwh": 0.0,
    "residual_gco2e_per_kwh": 700.0,
    "residual_source": "an illustrative residual mix",
}


def earlier_rows(team: str) -> list[LedgerRecord]:
    """This month so far: 1.0 g location-based, 3.0 g market-based (2.5 g from a contracted
    upstream whose residual mix is dirtier than the grid, 0.5 g charged for a row with none)."""
    at = datetime.now(UTC) - timedelta(seconds=5)
    base = replace(record(team=team, created_at=at), co2e_g=0.5)
    return [
        replace(base, request_id=f"{team}-green", upstream="green", co2e_market_g=2.5),
        replace(base, request_id=f"{team}-grid", upstream="grid"),
    ]


async def _seed(url: str, rows: list[LedgerRecord]) -> None:
    ledger = await open_ledger(LedgerSettings(url=url))
    for row in rows:
        await ledger.record(row)
    await ledger.aclose()


@pytest.fixture(params=["in-process", "redis"])
def redis_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """No Redis (in-process budgets), or a private one (its Lua scripts); set up before the
    proxy, so it goes after it."""
    if request.param == "in-process":
        yield ""
        return
    with PrivateRedis(tmp_path / "redis") as server:
        yield server.url


@pytest.fixture
def budget_proxy(
    redis_url: str,
    start_proxy: Callable[..., ServerThread],
    tmp_path: Path,
    upstream: ServerThread,
) -> ServerThread:
    settings = proxy_settings(
        tmp_path,
        upstream.url,
        server={"auth": "keys"},
        budgets={"redis_url": redis_url},
        upstreams=[
            upstream_entry("green", upstream.url, carbon=DIRTY_RESIDUAL),
            upstream_entry("grid", upstream.url),
        ],
    )
    asyncio.run(_seed(settings.ledger.url, earlier_rows("market") + earlier_rows("location")))
    return start_proxy(settings, environ={"FOOTPRINT_ADMIN_KEY": ADMIN_KEY})


def team_with_budget(proxy: ServerThread, team: str, metric: str, limit: float) -> dict[str, str]:
    assert httpx.post(f"{proxy.url}/admin/teams", json={"name": team}, headers=ADMIN).is_success
    made = httpx.post(f"{proxy.url}/admin/keys", json={"team": team}, headers=ADMIN)
    body = {"team": team, "metric": metric, "limit": limit, "period": "month"}
    put = httpx.put(f"{proxy.url}/admin/budgets", json=body, headers=ADMIN)
    assert put.status_code == 200, put.text
    return {"authorization": f"Bearer {made.json()['key']}"}


def chat(proxy: ServerThread, key: dict[str, str], model: str) -> httpx.Response:
    return httpx.post(
        f"{proxy.url}/v1/chat/completions",
        json={"model": model, "messages": MESSAGES, "max_tokens": 16},
        headers=key,
        timeout=30,
    )


def budget_line(proxy: ServerThread, team: str, metric: str) -> dict[str, Any]:
    lines = httpx.get(f"{proxy.url}/admin/budgets", params={"team": team}, headers=ADMIN)
    return next(line for line in lines.json()["data"] if line["metric"] == metric)


def test_a_market_budget_refuses_where_the_location_budget_of_the_same_size_serves(
    budget_proxy: ServerThread,
) -> None:
    # Both teams have spent 1.0 g location-based and 3.0 g market-based this month.
    location = team_with_budget(budget_proxy, "location", "co2e_g", 2.0)
    market = team_with_budget(budget_proxy, "market", "co2e_market_g", 2.0)

    served = chat(budget_proxy, location, "green")
    assert served.status_code == 200, served.text
    assert "x-footprint-budget-remaining-co2e-g" in served.headers

    refused = chat(budget_proxy, market, "green")
    assert refused.status_code == 429, refused.text
    error = refused.json()["error"]
    assert error["code"] == "footprint_budget_exceeded" and "co2e_market_g" in error["message"]
    line = budget_line(budget_proxy, "market", "co2e_market_g")
    assert line["used"] == pytest.approx(3.0) and line["remaining"] == 0


def test_a_request_without_a_market_figure_is_charged_its_location_carbon(
    budget_proxy: ServerThread,
) -> None:
    market = team_with_budget(budget_proxy, "market", "co2e_market_g", 10.0)
    served = chat(budget_proxy, market, "grid")
    assert served.status_code == 200, served.text
    footprint = served.json()["footprint"]
    assert "co2e_market_g" not in footprint
    remaining = float(served.headers["x-footprint-budget-remaining-co2e-market-g"])
    assert remaining == pytest.approx(10.0 - 3.0 - footprint["co2e_g"], rel=1e-5)
    line = budget_line(budget_proxy, "market", "co2e_market_g")
    assert line["used"] == pytest.approx(3.0 + footprint["co2e_g"], rel=1e-5)

    green = chat(budget_proxy, market, "green")
    assert green.status_code == 200, green.text
    charged = green.json()["footprint"]["co2e_market_g"]
    assert charged > green.json()["footprint"]["co2e_g"]  # the residual mix is dirtier here
    after = budget_line(budget_proxy, "market", "co2e_market_g")
    assert after["used"] == pytest.approx(line["used"] + charged, rel=1e-5)


def test_the_ledger_sums_the_same_budget_metrics_the_budgets_charge() -> None:
    from proxy import budgets, ledger

    assert budgets.METRICS == ledger.METRICS
