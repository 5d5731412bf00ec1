"""Admin API: teams, keys, budgets (contract.md, "Admin API"). Admin key only.

Bodies are parsed and checked here, field by field, so any bad input is a 400 in OpenAI's
error shape before anything is written.
"""

from __future__ import annotations

import math
import re
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from proxy.auth import generate_key
from proxy.budgets import METRICS, PERIODS
from proxy.errors import Conflict, InvalidRequest, NotFound
from proxy.ledger import AlreadyExists, UnknownTeam
from proxy.routes import Router

admin_router = Router(prefix="/admin")

TEAM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
KEY_ID = re.compile(r"^key_[0-9a-f]{16}$")
MODEL_PATTERN = re.compile(r"^[A-Za-z0-9_.:/@*?\[\]-]{1,200}$")
MAX_MODELS_PER_KEY = 100
MAX_PAGE = 1000
MAX_BODY_BYTES = 64 * 1024


def json_response(data: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status_code, media_type="application/json")


async def require_admin(request: Request) -> None:
    await request.app.state.auth.authenticate_admin(request.headers.get("authorization"))


async def json_object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise InvalidRequest(f"request body is over {MAX_BODY_BYTES} bytes")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    return body


def check_team_name(value: Any, param: str = "team") -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"{param} must be a string", param=param)
    if not TEAM_NAME.match(value):
        raise InvalidRequest(
            f"{param} must be 1-64 characters of letters, digits, '_', '.', '-', "
            "starting with a letter or digit",
            param=param,
        )
    return value


def no_unknown_fields(body: dict[str, Any], allowed: set[str]) -> None:
    extra = sorted(set(body) - allowed)
    if extra:
        raise InvalidRequest(f"unknown field {extra[0]!r}", param=extra[0])


def page_limit(request: Request, default: int = 100, maximum: int = MAX_PAGE) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= maximum:
        raise InvalidRequest(f"limit must be a whole number from 1 to {maximum}", param="limit")
    return int(raw)


# -- teams ------------------------------------------------------------------------------------


@admin_router.post("/teams")
async def create_team(request: Request) -> Response:
    await require_admin(request)
    body = await json_object(request)
    no_unknown_fields(body, {"name"})
    if "name" not in body:
        raise InvalidRequest("name is required", param="name")
    name = check_team_name(body["name"], "name")
    try:
        team = await request.app.state.ledger.create_team(name)
    except AlreadyExists:
        raise Conflict(f"team {name!r} already exists", param="name") from None
    return json_response(team, 201)


@admin_router.get("/teams")
async def list_teams(request: Request) -> Response:
    await require_admin(request)
    limit = page_limit(request)
    after = request.query_params.get("after")
    if after is not None:
        check_team_name(after, "after")
    rows = await request.app.state.ledger.list_teams(limit=limit + 1, after=after)
    return json_response({"object": "list", "data": rows[:limit], "has_more": len(rows) > limit})


# -- keys -------------------------------------------------------------------------------------


@admin_router.post("/keys")
async def create_key(request: Request) -> Response:
    await require_admin(request)
    body = await json_object(request)
    no_unknown_fields(body, {"team", "models"})
    if "team" not in body:
        raise InvalidRequest("team is required", param="team")
    team = check_team_name(body["team"])
    models = body.get("models", ["*"])
    if (
        not isinstance(models, list)
        or not models
        or len(models) > MAX_MODELS_PER_KEY
        or not all(isinstance(m, str) and MODEL_PATTERN.match(m) for m in models)
    ):
        raise InvalidRequest(
            f"models must be a list of 1-{MAX_MODELS_PER_KEY} model names or globs ('*')",
            param="models",
        )
    new = generate_key()
    try:
        saved = await request.app.state.ledger.create_key(
            key_id=new.key_id,
            team=team,
            key_hash=new.key_hash,
            key_prefix=new.key_prefix,
            models=models,
        )
    except UnknownTeam:
        raise NotFound(f"no team named {team!r}", param="team") from None
    # The only time the key itself is ever shown.
    return json_response({**saved, "key": new.secret}, 201)


@admin_router.get("/keys")
async def list_keys(request: Request) -> Response:
    await require_admin(request)
    team = request.query_params.get("team")
    if team is not None:
        check_team_name(team)
        if not await request.app.state.ledger.team_exists(team):
            raise NotFound(f"no team named {team!r}", param="team")
    rows = await request.app.state.ledger.list_keys(team)
    return json_response({"object": "list", "data": rows})


@admin_router.delete("/keys/{key_id}")
async def revoke_key(request: Request, key_id: str) -> Response:
    await require_admin(request)
    if not KEY_ID.match(key_id) or not await request.app.state.ledger.revoke_key(key_id):
        raise NotFound(f"no key with id {key_id[:64]!r}")
    request.app.state.auth.forget()
    return Response(status_code=204)


# -- budgets ----------------------------------------------------------------------------------


@admin_router.put("/budgets")
async def put_budget(request: Request) -> Response:
    await require_admin(request)
    body = await json_object(request)
    no_unknown_fields(body, {"team", "metric", "limit", "period"})
    for field in ("team", "metric", "limit", "period"):
        if field not in body:
            raise InvalidRequest(f"{field} is required", param=field)
    team = check_team_name(body["team"])
    metric, period, limit = body["metric"], body["period"], body["limit"]
    if not isinstance(metric, str) or metric not in METRICS:
        raise InvalidRequest(f"metric must be one of {', '.join(METRICS)}", param="metric")
    if not isinstance(period, str) or period not in PERIODS:
        raise InvalidRequest(f"period must be one of {', '.join(PERIODS)}", param="period")
    if isinstance(limit, bool) or not isinstance(limit, int | float):
        raise InvalidRequest("limit must be a number", param="limit")
    if not math.isfinite(limit) or limit < 0 or limit > 1e15:
        raise InvalidRequest("limit must be a number from 0 to 1e15", param="limit")
    try:
        line = await request.app.state.budgets.put(team, metric, period, float(limit))
    except UnknownTeam:
        raise NotFound(f"no team named {team!r}", param="team") from None
    return json_response({"team": team, **line.as_json()})


@admin_router.get("/budgets")
async def get_budgets(request: Request) -> Response:
    await require_admin(request)
    team = request.query_params.get("team")
    if team is None:
        raise InvalidRequest("team is required", param="team")
    check_team_name(team)
    if not await request.app.state.ledger.team_exists(team):
        raise NotFound(f"no team named {team!r}", param="team")
    lines = await request.app.state.budgets.status(team)
    return json_response({"object": "list", "team": team, "data": [x.as_json() for x in lines]})
