"""The reads the dashboard makes: who a key is, sums per hour/day/month bucket, the heaviest
requests of a period, budgets. A team key sees its own team only; sums equal the rows'."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from tests.conftest import ADMIN_KEY
from tests.proxy.ledger.records import record
from tests.proxy.test_footprint_routes import team_key

ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=UTC)


@pytest.fixture
async def keys(client: httpx.AsyncClient, services_app: Starlette) -> dict[str, dict[str, str]]:
    ledger = services_app.state.ledger
    out = {"search": await team_key(client, "search"), "ads": await team_key(client, "ads")}
    rows = [
        record(request_id="s1", team="search", created_at=at(3, 14, 5), energy_j=10.0, model="m1"),
        record(request_id="s2", team="search", created_at=at(3, 14, 55), energy_j=20.0),
        record(
            request_id="s3",
            team="search",
            created_at=at(3, 15, 0),
            energy_j=5.0,
            method="estimated",
            trace_id=None,
        ),
        record(request_id="s4", team="search", created_at=at(28, 23, 59), energy_j=1.0),
        record(request_id="a1", team="ads", created_at=at(3, 14, 30), energy_j=1000.0),
        record(request_id="old", team="ads", created_at=datetime(2026, 10, 31, 23, tzinfo=UTC)),
    ]
    for r in rows:
        await ledger.record(r)
    return out


async def test_me_names_the_keys_team_or_the_admin(client: httpx.AsyncClient, keys: Any) -> None:
    mine = await client.get("/v1/footprint/me", headers=keys["search"])
    assert mine.json()["team"] == "search" and mine.json()["admin"] is False
    admin = await client.get("/v1/footprint/me", headers=ADMIN)
    assert admin.json()["admin"] is True and admin.json()["team"] is None
    wrong = await client.get("/v1/footprint/me", headers={"authorization": "Bearer fp-nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"


async def test_hourly_buckets_sum_the_rows_of_each_utc_hour(
    client: httpx.AsyncClient, keys: Any
) -> None:
    got = await client.get(
        "/v1/footprint/usage/series",
        params={"bucket": "hour", "group_by": "team", "from": "2026-11-01", "to": "2026-12-01"},
        headers=ADMIN,
    )
    assert got.status_code == 200, got.text
    cells = {(r["bucket"], r["team"]): r for r in got.json()["data"]}
    assert set(cells) == {
        ("2026-11-03T14:00Z", "ads"),
        ("2026-11-03T14:00Z", "search"),
        ("2026-11-03T15:00Z", "search"),
        ("2026-11-28T23:00Z", "search"),
    }
    assert cells[("2026-11-03T14:00Z", "search")]["energy_j"] == pytest.approx(30.0)
    assert cells[("2026-11-03T14:00Z", "search")]["requests"] == 2
    assert cells[("2026-11-03T14:00Z", "search")]["tokens"] == 2 * (120 + 256)


async def test_day_and_month_buckets_and_the_measured_share(
    client: httpx.AsyncClient, keys: Any
) -> None:
    days = await client.get(
        "/v1/footprint/usage/series?bucket=day&group_by=method", headers=keys["search"]
    )
    assert {(r["bucket"], r["method"], r["energy_j"]) for r in days.json()["data"]} == {
        ("2026-11-03", "estimated", 5.0),
        ("2026-11-03", "measured", 30.0),
        ("2026-11-28", "measured", 1.0),
    }
    months = await client.get("/v1/footprint/usage/series?bucket=month", headers=ADMIN)
    assert [(r["bucket"], r["requests"]) for r in months.json()["data"]] == [
        ("2026-10", 1),
        ("2026-11", 5),
    ]


async def test_series_totals_equal_the_usage_report(client: httpx.AsyncClient, keys: Any) -> None:
    window = {"from": "2026-11-01", "to": "2026-11-29"}
    series = await client.get(
        "/v1/footprint/usage/series", params={**window, "bucket": "hour"}, headers=ADMIN
    )
    usage = await client.get("/v1/footprint/usage", params=window, headers=ADMIN)
    (total,) = usage.json()["data"]
    for field in ("requests", "tokens", "energy_j", "co2e_g", "water_ml", "gpu_energy_j"):
        assert sum(r[field] for r in series.json()["data"]) == pytest.approx(total[field])


async def test_a_team_key_sees_only_its_team_in_a_series(
    client: httpx.AsyncClient, keys: Any
) -> None:
    mine = await client.get("/v1/footprint/usage/series?group_by=team", headers=keys["search"])
    assert {r["team"] for r in mine.json()["data"]} == {"search"}
    assert mine.json()["team"] == "search"
    theirs = await client.get("/v1/footprint/usage/series?team=ads", headers=keys["search"])
    assert theirs.status_code == 404 and "ads" not in str(mine.json())


async def test_series_as_csv_carries_the_same_figures(client: httpx.AsyncClient, keys: Any) -> None:
    params = {"bucket": "day", "group_by": "team", "from": "2026-11-01", "to": "2026-12-01"}
    as_json = await client.get("/v1/footprint/usage/series", params=params, headers=ADMIN)
    as_csv = await client.get(
        "/v1/footprint/usage/series", params={**params, "format": "csv"}, headers=ADMIN
    )
    assert as_csv.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert [(r["bucket"], r["team"]) for r in rows] == [
        (r["bucket"], r["team"]) for r in as_json.json()["data"]
    ]
    assert [float(r["energy_j"]) for r in rows] == [r["energy_j"] for r in as_json.json()["data"]]


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("bucket=week", "bucket"),
        ("group_by=day", "group_by"),
        ("group_by=team,team", "group_by"),
        ("from=yesterday", "from"),
        ("from=2026-12-01&to=2026-11-01", "from"),
        ("format=xml", "format"),
        ("limit=0", "limit"),
        ("colour=red", "colour"),
        ("team=not%20a%20team", "team"),
    ],
)
async def test_bad_series_queries_are_400_naming_the_parameter(
    client: httpx.AsyncClient, keys: Any, query: str, param: str
) -> None:
    got = await client.get(f"/v1/footprint/usage/series?{query}", headers=ADMIN)
    assert got.status_code == 400
    assert got.json()["error"]["param"] == param


async def test_series_says_when_rows_were_left_out(client: httpx.AsyncClient, keys: Any) -> None:
    got = await client.get("/v1/footprint/usage/series?bucket=hour&limit=2", headers=ADMIN)
    assert len(got.json()["data"]) == 2 and got.json()["has_more"] is True


async def test_top_requests_by_energy_of_a_period(client: httpx.AsyncClient, keys: Any) -> None:
    got = await client.get(
        "/v1/footprint/requests",
        params={"from": "2026-11-01", "to": "2026-12-01", "limit": 3},
        headers=ADMIN,
    )
    assert [r["request_id"] for r in got.json()["data"]] == ["a1", "s2", "s1"]
    mine = await client.get("/v1/footprint/requests?order_by=energy_j", headers=keys["search"])
    assert [r["request_id"] for r in mine.json()["data"]] == ["s2", "s1", "s3", "s4"]
    assert mine.json()["data"][0]["created_at"] == "2026-11-03T14:55:00Z"
    assert (await client.get("/v1/footprint/requests?order_by=model", headers=ADMIN)).json()[
        "error"
    ]["param"] == "order_by"
    assert (await client.get("/v1/footprint/requests?limit=101", headers=ADMIN)).status_code == 400


async def test_budgets_for_a_team_key_and_for_the_admin(
    client: httpx.AsyncClient, keys: Any
) -> None:
    body = {"team": "search", "metric": "energy_j", "limit": 1e9, "period": "total"}
    assert (await client.put("/admin/budgets", json=body, headers=ADMIN)).status_code == 200
    body = {"team": "ads", "metric": "requests", "limit": 50, "period": "day"}
    assert (await client.put("/admin/budgets", json=body, headers=ADMIN)).status_code == 200
    mine = (await client.get("/v1/footprint/budgets", headers=keys["search"])).json()["data"]
    assert [(b["team"], b["metric"], b["period"]) for b in mine] == [
        ("search", "energy_j", "total")
    ]
    assert mine[0]["used"] == pytest.approx(36.0)  # s1 + s2 + s3 + s4
    assert mine[0]["remaining"] == pytest.approx(1e9 - mine[0]["used"] - mine[0]["reserved"])
    every = (await client.get("/v1/footprint/budgets", headers=ADMIN)).json()["data"]
    assert {b["team"] for b in every} == {"search", "ads"}
    theirs = await client.get("/v1/footprint/budgets?team=ads", headers=keys["search"])
    assert theirs.status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "/v1/footprint/requests?colour=red",
        "/v1/footprint/requests?from=2026-12-01&to=2026-11-01",
        "/v1/footprint/budgets?period=day",
        "/v1/footprint/budgets?team=not%20a%20team",
    ],
)
async def test_bad_queries_on_requests_and_budgets_are_400(
    client: httpx.AsyncClient, keys: Any, path: str
) -> None:
    got = await client.get(path, headers=ADMIN)
    assert got.status_code == 400 and got.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "path", ["/v1/footprint/usage/series", "/v1/footprint/requests", "/v1/footprint/budgets"]
)
async def test_every_read_needs_a_key(client: httpx.AsyncClient, keys: Any, path: str) -> None:
    got = await client.get(path)
    assert got.status_code == 401 and got.json()["error"]["code"] == "invalid_api_key"
