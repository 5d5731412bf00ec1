"""The worst case a request reserves: worked out only where a budget can hold it (issue 17: a
team without a budget paid for energy, carbon and water figures nothing read), and held again
the moment a budget is set, through real requests to a real proxy."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from proxy.budgets import Budgets, Usage, open_budgets
from proxy.config import BudgetSettings, LedgerSettings
from proxy.ledger import open_ledger
from tests.conftest import ADMIN_KEY, REDIS_URL
from tests.proxy.conftest import proxy_settings
from tests.support.servers import ServerThread

ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}


@pytest.mark.parametrize("backend", ["local", "redis"])
async def test_only_a_team_known_to_have_no_budget_holds_nothing(
    backend: str, sqlite_url: str, redis_prefix: str
) -> None:
    ledger = await open_ledger(LedgerSettings(url=sqlite_url))
    await ledger.create_team("search")
    url = REDIS_URL if backend == "redis" else ""
    budgets: Budgets = await open_budgets(
        BudgetSettings(redis_url=url), ledger, key_prefix=redis_prefix
    )
    try:
        assert not budgets.holds_nothing_for("search")  # not read from the ledger yet
        await budgets.reserve("search", Usage(tokens=10, requests=1), "r1")
        # In-process, the team is known now and has no budget; with Redis another replica
        # may set one at any moment.
        assert budgets.holds_nothing_for("search") is (backend == "local")
        await budgets.put("search", "energy_j", "day", 5.0)
        assert not budgets.holds_nothing_for("search")
    finally:
        await budgets.aclose()
        await ledger.aclose()


def test_a_budget_set_between_requests_holds_the_next_ones_worst_case(
    start_proxy: Callable[..., ServerThread], tmp_path: Path, upstream: ServerThread
) -> None:
    settings = proxy_settings(tmp_path, upstream.url, server={"auth": "keys"})
    proxy = start_proxy(settings, environ={"FOOTPRINT_ADMIN_KEY": ADMIN_KEY})
    assert httpx.post(f"{proxy.url}/admin/teams", json={"name": "search"}, headers=ADMIN)
    made = httpx.post(f"{proxy.url}/admin/keys", json={"team": "search"}, headers=ADMIN)
    key = {"authorization": f"Bearer {made.json()['key']}"}
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 64}

    def chat() -> httpx.Response:
        return httpx.post(f"{proxy.url}/v1/chat/completions", json=body, headers=key, timeout=30)

    served = chat()
    assert served.status_code == 200, served.text
    spent_j = float(served.headers["x-footprint-energy-j"])
    # Room left for most of what the first request spent, but not for the next one's worst
    # case (at least as much: 64 tokens, at most as many answered): only a reservation of the
    # worst case refuses it; without one, 0.9 x spent would still be left.
    limit = {"team": "search", "metric": "energy_j", "limit": spent_j * 1.9, "period": "day"}
    put = httpx.put(f"{proxy.url}/admin/budgets", json=limit, headers=ADMIN)
    assert put.status_code == 200, put.text

    refused = chat()
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "footprint_budget_exceeded"
