"""The admin API as an operator uses it, and as a careless or hostile one does: every bad
input is a clear 4xx in OpenAI's error shape, and nothing changes."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_KEY

ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}


async def state(client: httpx.AsyncClient) -> tuple[Any, Any, Any]:
    teams = (await client.get("/admin/teams", headers=ADMIN)).json()["data"]
    keys = (await client.get("/admin/keys", headers=ADMIN)).json()["data"]
    budgets = (await client.get("/admin/budgets?team=search", headers=ADMIN)).json()["data"]
    return teams, keys, budgets


async def test_team_key_and_budget_lifecycle(client: httpx.AsyncClient) -> None:
    made = await client.post("/admin/teams", json={"name": "search"}, headers=ADMIN)
    assert made.status_code == 201 and made.json()["name"] == "search"
    again = await client.post("/admin/teams", json={"name": "search"}, headers=ADMIN)
    assert again.status_code == 409
    listed = await client.get("/admin/teams", headers=ADMIN)
    assert [t["name"] for t in listed.json()["data"]] == ["search"]

    key = await client.post("/admin/keys", json={"team": "search", "models": ["*"]}, headers=ADMIN)
    assert key.status_code == 201
    body = key.json()
    assert body["team"] == "search" and body["key"].startswith("fp-") and body["id"]
    keys = (await client.get("/admin/keys?team=search", headers=ADMIN)).json()["data"]
    assert [k["id"] for k in keys] == [body["id"]]
    assert "key" not in keys[0]  # shown once, at creation only

    team_key = {"authorization": f"Bearer {body['key']}"}
    assert (await client.get("/v1/footprint/usage", headers=team_key)).status_code == 200

    put = await client.put(
        "/admin/budgets",
        json={"team": "search", "metric": "co2e_g", "limit": 500, "period": "month"},
        headers=ADMIN,
    )
    assert put.status_code == 200
    got = await client.get("/admin/budgets?team=search", headers=ADMIN)
    assert got.json()["data"] == [
        {
            "metric": "co2e_g",
            "limit": 500.0,
            "period": "month",
            "used": 0.0,
            "reserved": 0.0,
            "remaining": 500.0,
        }
    ]

    gone = await client.delete(f"/admin/keys/{body['id']}", headers=ADMIN)
    assert gone.status_code == 204
    refused = await client.get("/v1/footprint/usage", headers=team_key)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"


async def test_admin_routes_need_the_admin_key(client: httpx.AsyncClient) -> None:
    await client.post("/admin/teams", json={"name": "search"}, headers=ADMIN)
    key = (await client.post("/admin/keys", json={"team": "search"}, headers=ADMIN)).json()
    for headers in (
        {},
        {"authorization": "Bearer wrong"},
        {"authorization": f"Bearer {key['key']}"},
    ):
        answer = await client.post("/admin/teams", json={"name": "other"}, headers=headers)
        assert answer.status_code == 401
        assert answer.json()["error"]["type"] == "invalid_request_error"
    assert [t["name"] for t in (await state(client))[0]] == ["search"]


BAD_REQUESTS: list[tuple[str, str, Any, int]] = [
    # wrong types and shapes
    ("POST", "/admin/teams", b"not json", 400),
    ("POST", "/admin/teams", [], 400),
    ("POST", "/admin/teams", {}, 400),
    ("POST", "/admin/teams", {"name": 7}, 400),
    ("POST", "/admin/teams", {"name": None}, 400),
    ("POST", "/admin/teams", {"name": "ok", "extra": 1}, 400),
    # names with SQL metacharacters, or too long
    ("POST", "/admin/teams", {"name": "x'; DROP TABLE teams; --"}, 400),
    ("POST", "/admin/teams", {"name": 'a" OR "1"="1'}, 400),
    ("POST", "/admin/teams", {"name": "a" * 65}, 400),
    ("POST", "/admin/teams", {"name": ""}, 400),
    ("POST", "/admin/keys", {"team": "search", "models": "*"}, 400),
    ("POST", "/admin/keys", {"team": "search", "models": []}, 400),
    ("POST", "/admin/keys", {"team": "search", "models": [1]}, 400),
    ("POST", "/admin/keys", {"team": "search", "models": ["m'; --"]}, 400),
    ("POST", "/admin/keys", {"team": "search", "models": ["*"] * 101}, 400),
    ("POST", "/admin/keys", {"models": ["*"]}, 400),
    ("POST", "/admin/keys", {"team": "nobody"}, 404),
    ("DELETE", "/admin/keys/key_0000000000000000", None, 404),
    ("DELETE", "/admin/keys/1%20OR%201=1", None, 404),
    # budgets: negative, wrong types, unknown metric/period/team
    (
        "PUT",
        "/admin/budgets",
        {"team": "search", "metric": "co2e_g", "limit": -1, "period": "day"},
        400,
    ),
    (
        "PUT",
        "/admin/budgets",
        {"team": "search", "metric": "co2e_g", "limit": "5", "period": "day"},
        400,
    ),
    (
        "PUT",
        "/admin/budgets",
        {"team": "search", "metric": "co2e_g", "limit": True, "period": "day"},
        400,
    ),
    (
        "PUT",
        "/admin/budgets",
        {"team": "search", "metric": "co2e_g", "limit": 1e300, "period": "day"},
        400,
    ),
    (
        "PUT",
        "/admin/budgets",
        {"team": "search", "metric": "gold", "limit": 5, "period": "day"},
        400,
    ),
    (
        "PUT",
        "/admin/budgets",
        {"team": "search", "metric": "co2e_g", "limit": 5, "period": "week"},
        400,
    ),
    ("PUT", "/admin/budgets", {"team": "search", "metric": "co2e_g", "limit": 5}, 400),
    (
        "PUT",
        "/admin/budgets",
        {"team": "nobody", "metric": "co2e_g", "limit": 5, "period": "day"},
        404,
    ),
    (
        "PUT",
        "/admin/budgets",
        b'{"team": "search", "metric": "co2e_g", "limit": NaN, "period": "day"}',
        400,
    ),
    ("GET", "/admin/budgets", None, 400),
    ("GET", "/admin/budgets?team=nobody", None, 404),
    ("GET", "/admin/budgets?team=a%27%20OR%201%3D1", None, 400),
    # pages
    ("GET", "/admin/teams?limit=1000000000", None, 400),
    ("GET", "/admin/teams?limit=0", None, 400),
    ("GET", "/admin/teams?limit=-5", None, 400),
    ("GET", "/admin/teams?limit=ten", None, 400),
    ("GET", "/admin/keys?team=nobody", None, 404),
]


@pytest.mark.parametrize(("method", "path", "body", "status"), BAD_REQUESTS)
async def test_bad_input_is_a_clear_4xx_and_changes_nothing(
    client: httpx.AsyncClient, method: str, path: str, body: Any, status: int
) -> None:
    await client.post("/admin/teams", json={"name": "search"}, headers=ADMIN)
    await client.post("/admin/keys", json={"team": "search"}, headers=ADMIN)
    await client.put(
        "/admin/budgets",
        json={"team": "search", "metric": "co2e_g", "limit": 10, "period": "day"},
        headers=ADMIN,
    )
    before = await state(client)
    kwargs: dict[str, Any] = {"headers": {**ADMIN, "content-type": "application/json"}}
    if isinstance(body, bytes):
        kwargs["content"] = body
    elif body is not None:
        kwargs["json"] = body
    answer = await client.request(method, path, **kwargs)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error"
    assert await state(client) == before
