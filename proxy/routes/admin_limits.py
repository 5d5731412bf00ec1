"""`PUT /admin/limits`, `GET /admin/limits?team=…`: rate limits per team or per key
(requests and tokens per minute). Admin key only; every bad field is a 400 before anything is
written."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from proxy.errors import InvalidRequest, NotFound
from proxy.ledger import UnknownKey, UnknownTeam
from proxy.routes import Router
from proxy.routes.admin import (
    KEY_ID,
    check_team_name,
    json_object,
    json_response,
    no_unknown_fields,
    require_admin,
)

limits_router = Router(prefix="/admin")

FIELDS = {"team", "key_id", "requests_per_minute", "tokens_per_minute"}
MAX_PER_MINUTE = 10**12


def _per_minute(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PER_MINUTE:
        raise InvalidRequest(
            f"{name} must be null (no limit) or a whole number from 1 to {MAX_PER_MINUTE}",
            param=name,
        )
    return value


def _line(
    team: str, key_id: str | None, requests: int | None, tokens: int | None
) -> dict[str, object]:
    return {
        "team": team,
        "key_id": key_id,
        "requests_per_minute": requests,
        "tokens_per_minute": tokens,
    }


@limits_router.put("/limits")
async def put_limits(request: Request) -> Response:
    await require_admin(request)
    body = await json_object(request)
    no_unknown_fields(body, FIELDS)
    if "team" not in body:
        raise InvalidRequest("team is required", param="team")
    team = check_team_name(body["team"])
    key_id = body.get("key_id")
    if key_id is not None and (not isinstance(key_id, str) or not KEY_ID.match(key_id)):
        raise InvalidRequest("key_id must be null (the whole team) or a key's id", param="key_id")
    requests = _per_minute(body, "requests_per_minute")
    tokens = _per_minute(body, "tokens_per_minute")
    try:
        await request.app.state.ledger.put_rate_limit(team, key_id, requests, tokens)
    except UnknownTeam:
        raise NotFound(f"no team named {team!r}", param="team") from None
    except UnknownKey:
        raise NotFound(f"team {team!r} has no key {key_id!r}", param="key_id") from None
    request.app.state.services.rate_limits.forget(team)
    return json_response(_line(team, key_id, requests, tokens))


@limits_router.get("/limits")
async def get_limits(request: Request) -> Response:
    await require_admin(request)
    team = request.query_params.get("team")
    if team is None:
        raise InvalidRequest("team is required", param="team")
    check_team_name(team)
    ledger = request.app.state.ledger
    if not await ledger.team_exists(team):
        raise NotFound(f"no team named {team!r}", param="team")
    rows = await ledger.list_rate_limits(team)
    return json_response({"object": "list", "data": [_line(team, *row) for row in rows]})
