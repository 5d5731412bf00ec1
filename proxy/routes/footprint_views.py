"""Footprint reads beside `/v1/footprint/usage`, made for the dashboard page and open to any
client: who a key is, sums over time buckets, the heaviest requests of a period, and the
budgets a key may read.

Each answer is aggregated by the database; a team key sees its own team only (asking for
another team is "not found", as in `routes/footprint.py`), the admin key sees every team.
"""

from __future__ import annotations

from datetime import datetime

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response

from proxy.auth import Principal
from proxy.errors import InvalidRequest, NotFound
from proxy.ledger import BUCKETS, ORDER_FIELDS, SERIES_KEYS, SUM_FIELDS, iso
from proxy.routes import Router
from proxy.routes.footprint import TEAM_NAME, _caller, _json, _scope, parse_moment, usage_csv

views_router = Router(prefix="/v1/footprint")

MAX_SERIES_ROWS = 50_000
MAX_TOP_REQUESTS = 100


def _known(q: QueryParams, known: set[str]) -> None:
    unknown = sorted(set(q.keys()) - known)
    if unknown:
        raise InvalidRequest(f"unknown query parameter {unknown[0]!r}", param=unknown[0])


def _window(q: QueryParams) -> tuple[datetime | None, datetime | None]:
    start = parse_moment(q["from"], "from") if "from" in q else None
    end = parse_moment(q["to"], "to") if "to" in q else None
    if start is not None and end is not None and start > end:
        raise InvalidRequest("from must not be after to", param="from")
    return start, end


def _team(principal: Principal, asked: str | None) -> str | None:
    """The team to read: the key's own for a team key, `asked` (or every team) for admin."""
    team = _scope(principal)
    if asked is None:
        return team
    if not TEAM_NAME.match(asked):
        raise InvalidRequest("team is not a team name", param="team")
    if team is not None and asked != team:
        # A team key asking about another team learns nothing, not even that it exists.
        raise NotFound(f"no team named {asked!r}", param="team")
    return asked


def _count(raw: str | None, param: str, default: int, maximum: int) -> int:
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= maximum:
        raise InvalidRequest(f"{param} must be a whole number from 1 to {maximum}", param=param)
    return int(raw)


@views_router.get("/me")
async def get_me(request: Request) -> Response:
    """Who this key is: the administrator, or which team."""
    principal = await _caller(request)
    return _json(
        {
            "object": "footprint.principal",
            "admin": principal.admin,
            "team": None if principal.admin else principal.team,
            "key_id": principal.key_id,
        }
    )


@views_router.get("/usage/series")
async def get_usage_series(request: Request) -> Response:
    principal = await _caller(request)
    q = request.query_params
    _known(q, {"bucket", "group_by", "from", "to", "team", "format", "limit"})
    bucket = q.get("bucket", "day")
    if bucket not in BUCKETS:
        raise InvalidRequest(f"bucket must be one of {', '.join(BUCKETS)}", param="bucket")
    raw_keys = q.get("group_by", "").strip()
    group_by = [k.strip() for k in raw_keys.split(",")] if raw_keys else []
    if any(k not in SERIES_KEYS for k in group_by) or len(set(group_by)) != len(group_by):
        raise InvalidRequest(
            f"group_by takes distinct names from {', '.join(SERIES_KEYS)}", param="group_by"
        )
    fmt = q.get("format", "json")
    if fmt not in ("json", "csv"):
        raise InvalidRequest("format must be json or csv", param="format")
    limit = _count(q.get("limit"), "limit", MAX_SERIES_ROWS, MAX_SERIES_ROWS)
    start, end = _window(q)
    team = _team(principal, q.get("team"))
    rows, has_more = await request.app.state.ledger.usage_series(
        bucket, group_by, start, end, team, limit=limit
    )
    if fmt == "csv":
        return Response(
            usage_csv(rows, ["bucket", *group_by]),
            media_type="text/csv; charset=utf-8",
            headers={"content-disposition": 'attachment; filename="footprint-series.csv"'},
        )
    return _json(
        {
            "object": "footprint.usage.series",
            "bucket": bucket,
            "group_by": group_by,
            "from": iso(start) if start else None,
            "to": iso(end) if end else None,
            "team": team,
            "fields": list(SUM_FIELDS),
            "data": rows,
            "has_more": has_more,
        }
    )


@views_router.get("/requests")
async def list_top_requests(request: Request) -> Response:
    principal = await _caller(request)
    q = request.query_params
    _known(q, {"order_by", "from", "to", "team", "limit"})
    order_by = q.get("order_by", "energy_j")
    if order_by not in ORDER_FIELDS:
        raise InvalidRequest(f"order_by must be one of {', '.join(ORDER_FIELDS)}", param="order_by")
    limit = _count(q.get("limit"), "limit", 10, MAX_TOP_REQUESTS)
    start, end = _window(q)
    team = _team(principal, q.get("team"))
    rows = await request.app.state.ledger.top_requests(order_by, start, end, team, limit=limit)
    return _json(
        {
            "object": "list",
            "order_by": order_by,
            "from": iso(start) if start else None,
            "to": iso(end) if end else None,
            "team": team,
            "data": rows,
        }
    )


@views_router.get("/budgets")
async def list_budgets(request: Request) -> Response:
    """Budgets as they stand now: a team key its own; the admin key one team's (`team=`) or
    every team's that has one."""
    principal = await _caller(request)
    q = request.query_params
    _known(q, {"team"})
    team = _team(principal, q.get("team"))
    teams = [team] if team is not None else await request.app.state.ledger.teams_with_budgets()
    data = []
    for name in teams:
        for line in await request.app.state.budgets.status(name):
            data.append({"team": name, **line.as_json()})
    return _json({"object": "list", "team": team, "data": data})
