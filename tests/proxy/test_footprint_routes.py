"""Footprint queries: a team sees its own requests, usage and traces and nothing of anyone
else's; sums match the per-request figures; bad queries get a clear 400."""

from __future__ import annotations

import csv
import io
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from tests.conftest import ADMIN_KEY
from tests.proxy.ledger.records import record

ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


async def team_key(client: httpx.AsyncClient, team: str) -> dict[str, str]:
    await client.post("/admin/teams", json={"name": team}, headers=ADMIN)
    made = await client.post("/admin/keys", json={"team": team}, headers=ADMIN)
    return {"authorization": f"Bearer {made.json()['key']}"}


@pytest.fixture
async def keys(client: httpx.AsyncClient, services_app: Starlette) -> dict[str, dict[str, str]]:
    ledger = services_app.state.ledger
    out = {"search": await team_key(client, "search"), "ads": await team_key(client, "ads")}
    rows = [
        record(request_id="s1", team="search", co2e_g=1.25, energy_j=10.0, model="m1"),
        record(request_id="s2", team="search", co2e_g=2.5, energy_j=20.0, model="m2"),
        record(request_id="a1", team="ads", co2e_g=100.0, energy_j=1000.0, model="m1"),
    ]
    for r in rows:
        await ledger.record(r)
    return out


async def test_a_team_reads_its_own_request(client: httpx.AsyncClient, keys: Any) -> None:
    got = await client.get("/v1/footprint/requests/s1", headers=keys["search"])
    assert got.status_code == 200
    assert got.json()["request_id"] == "s1" and got.json()["co2e_g"] == pytest.approx(1.25)


async def test_another_teams_request_is_404_not_403(client: httpx.AsyncClient, keys: Any) -> None:
    theirs = await client.get("/v1/footprint/requests/a1", headers=keys["search"])
    missing = await client.get("/v1/footprint/requests/zzz", headers=keys["search"])
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["error"]["code"] == "not_found"
    assert (await client.get("/v1/footprint/requests/a1", headers=ADMIN)).status_code == 200


async def test_usage_is_scoped_to_the_callers_team(client: httpx.AsyncClient, keys: Any) -> None:
    mine = await client.get("/v1/footprint/usage?group_by=team", headers=keys["search"])
    assert [r["team"] for r in mine.json()["data"]] == ["search"]
    assert mine.json()["data"][0]["co2e_g"] == pytest.approx(3.75)
    assert mine.json()["data"][0]["requests"] == 2
    theirs = await client.get("/v1/footprint/usage?team=ads", headers=keys["search"])
    assert theirs.status_code == 404
    everyone = await client.get("/v1/footprint/usage?group_by=team,model", headers=ADMIN)
    assert {(r["team"], r["model"]) for r in everyone.json()["data"]} == {
        ("ads", "m1"),
        ("search", "m1"),
        ("search", "m2"),
    }


async def test_usage_as_csv(client: httpx.AsyncClient, keys: Any) -> None:
    got = await client.get("/v1/footprint/usage?group_by=team,day&format=csv", headers=ADMIN)
    assert got.status_code == 200 and got.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(got.text)))
    by_team = {r["team"]: r for r in rows}
    assert float(by_team["search"]["co2e_g"]) == pytest.approx(3.75)
    assert by_team["ads"]["day"] == "2025-03-14" and by_team["ads"]["requests"] == "1"
    assert "e" not in by_team["search"]["co2e_g"].lower()  # plain decimals


async def test_usage_window(client: httpx.AsyncClient, keys: Any) -> None:
    inside = await client.get(
        "/v1/footprint/usage?from=2025-03-14&to=2025-03-15T00:00:00Z", headers=ADMIN
    )
    outside = await client.get("/v1/footprint/usage?from=2025-03-15", headers=ADMIN)
    assert inside.json()["data"][0]["requests"] == 3
    assert outside.json()["data"] == []


async def test_traces_are_scoped_too(
    client: httpx.AsyncClient, keys: Any, services_app: Starlette
) -> None:
    mine = await client.get(f"/v1/footprint/traces/{TRACE}", headers=keys["search"])
    assert mine.status_code == 200
    assert mine.json()["request_ids"] == ["s1", "s2"]
    assert mine.json()["co2e_g"] == pytest.approx(3.75)
    everyone = await client.get(f"/v1/footprint/traces/{TRACE}", headers=ADMIN)
    assert everyone.json()["requests"] == 3
    # A trace with only another team's requests does not exist for this team.
    await services_app.state.ledger.record(record(request_id="a2", team="ads", trace_id="a" * 32))
    assert (
        await client.get(f"/v1/footprint/traces/{'a' * 32}", headers=keys["search"])
    ).status_code == 404


async def test_footprint_routes_need_a_key(client: httpx.AsyncClient, keys: Any) -> None:
    for path in (
        "/v1/footprint/requests/s1",
        "/v1/footprint/usage",
        f"/v1/footprint/traces/{TRACE}",
    ):
        answer = await client.get(path)
        assert answer.status_code == 401 and answer.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize(
    "query",
    [
        "group_by=colour",
        "group_by=team,team",
        "group_by=team;DROP TABLE requests",
        "from=yesterday",
        "to=2025-13-45",
        "from=2025-03-15&to=2025-03-14",
        "format=xml",
        "idle=sometimes",
        "limit=100000000",
        "limit=0",
        "team=a%27%20OR%20%271%27%3D%271",
        "page=2",
    ],
)
async def test_bad_usage_queries_are_400(client: httpx.AsyncClient, keys: Any, query: str) -> None:
    answer = await client.get(f"/v1/footprint/usage?{query}", headers=ADMIN)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["type"] == "invalid_request_error"


async def test_bad_trace_id_is_400(client: httpx.AsyncClient, keys: Any) -> None:
    answer = await client.get("/v1/footprint/traces/not-a-trace", headers=keys["search"])
    assert answer.status_code == 400
