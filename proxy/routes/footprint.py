"""Footprint queries: one request, usage sums, one trace (contract.md, "Footprint's own").

A team key sees its own team only; another team's request or trace is "not found", exactly
as if it did not exist. The admin key sees everything.
"""

from __future__ import annotations

import csv
import io
import re
from datetime import datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from meters.numbers import format_decimal
from proxy.auth import Principal
from proxy.errors import InvalidRequest, NotFound
from proxy.ledger import GROUP_KEYS, MARKET_FIELDS, SUM_FIELDS, iso, usage_totals
from proxy.ledger import parse_moment as ledger_moment
from proxy.routes import Router

footprint_router = Router(prefix="/v1/footprint")

TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
REQUEST_ID_MAX_CHARS = 200
MAX_USAGE_ROWS = 100_000
TEAM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _json(data: Any) -> Response:
    return Response(orjson.dumps(data), media_type="application/json")


async def _caller(request: Request) -> Principal:
    principal: Principal = await request.app.state.auth.authenticate(
        request.headers.get("authorization")
    )
    return principal


def _scope(principal: Principal) -> str | None:
    """The team whose rows this caller may read; None for the admin (all teams)."""
    return None if principal.admin else principal.team


@footprint_router.get("/requests/{request_id}")
async def get_request(request: Request, request_id: str) -> Response:
    principal = await _caller(request)
    record = None
    if len(request_id) <= REQUEST_ID_MAX_CHARS:
        record = await request.app.state.ledger.get_request(request_id, _scope(principal))
    if record is None:
        raise NotFound(f"no request with id {request_id[:REQUEST_ID_MAX_CHARS]!r}")
    return _json({"object": "footprint.request", **record})


def parse_moment(raw: str, param: str) -> datetime:
    """ISO 8601 date or date-time; without a zone it is UTC."""
    try:
        return ledger_moment(raw)
    except ValueError:
        raise InvalidRequest(
            f"{param} must be an ISO 8601 date or date-time, e.g. 2025-03-01 or "
            "2025-03-01T00:00:00Z",
            param=param,
        ) from None


def parse_group_by(raw: str | None) -> list[str]:
    if raw is None or raw.strip() == "":
        return []
    keys = [k.strip() for k in raw.split(",")]
    for key in keys:
        if key not in GROUP_KEYS:
            raise InvalidRequest(
                f"group_by takes a comma-separated list of {', '.join(GROUP_KEYS)}",
                param="group_by",
            )
    if len(set(keys)) != len(keys):
        raise InvalidRequest("group_by names a key twice", param="group_by")
    return keys


def usage_csv(rows: list[dict[str, Any]], group_by: list[str], market: bool = False) -> str:
    """Usage rows as CSV; `market`: with the market-based columns (usage rows have them)."""
    columns = [*group_by, *SUM_FIELDS, *(MARKET_FIELDS if market else ())]
    if rows and "idle_energy_j" in rows[0]:
        columns += ["idle_gpu_energy_j", "idle_energy_j", "idle_co2e_g", "idle_water_ml"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_value(row[c]) for c in columns])
    return out.getvalue()


def _csv_value(value: Any) -> str:
    if value is None:
        return ""  # no figure (co2e_market_g where no row had contract data)
    if isinstance(value, float):
        return format_decimal(value)
    return str(value)


@footprint_router.get("/usage")
async def get_usage(request: Request) -> Response:
    principal = await _caller(request)
    q = request.query_params
    known = {"group_by", "from", "to", "format", "team", "idle", "limit"}
    unknown = sorted(set(q.keys()) - known)
    if unknown:
        raise InvalidRequest(f"unknown query parameter {unknown[0]!r}", param=unknown[0])
    group_by = parse_group_by(q.get("group_by"))
    start = parse_moment(q["from"], "from") if "from" in q else None
    end = parse_moment(q["to"], "to") if "to" in q else None
    if start is not None and end is not None and start > end:
        raise InvalidRequest("from must not be after to", param="from")
    fmt = q.get("format", "json")
    if fmt not in ("json", "csv"):
        raise InvalidRequest("format must be json or csv", param="format")
    idle_policy = q.get("idle", request.app.state.settings.metering.idle)
    if idle_policy not in ("report", "spread"):
        raise InvalidRequest("idle must be report or spread", param="idle")
    limit_raw = q.get("limit")
    limit = MAX_USAGE_ROWS
    if limit_raw is not None:
        if not limit_raw.isdigit() or not 1 <= int(limit_raw) <= MAX_USAGE_ROWS:
            raise InvalidRequest(
                f"limit must be a whole number from 1 to {MAX_USAGE_ROWS}", param="limit"
            )
        limit = int(limit_raw)
    team = _scope(principal)
    asked = q.get("team")
    if asked is not None:
        if not TEAM_NAME.match(asked):
            raise InvalidRequest("team is not a team name", param="team")
        if team is not None and asked != team:
            # A team key asking about another team learns nothing, not even that it exists.
            raise NotFound(f"no team named {asked!r}", param="team")
        team = asked
    rows, idle = await request.app.state.ledger.usage_report(
        group_by, start, end, team, idle_policy
    )
    totals = usage_totals(rows)  # over every row of the period, `limit` or not
    truncated = len(rows) > limit
    rows = rows[:limit]
    # The GPUs' own account per upstream and day (admin only: it covers every team's work).
    accounts = await request.app.state.ledger.accounts(start, end) if principal.admin else []
    if fmt == "csv":
        return Response(
            usage_csv(rows, group_by, market=True),
            media_type="text/csv; charset=utf-8",
            headers={"content-disposition": 'attachment; filename="footprint-usage.csv"'},
        )
    return _json(
        {
            "object": "footprint.usage",
            "group_by": group_by,
            "from": iso(start) if start else None,
            "to": iso(end) if end else None,
            "team": team,
            "idle_policy": idle_policy,
            "data": rows,
            "has_more": truncated,
            # Location- and market-based carbon side by side (issue 18), and how much of the
            # period's energy had a market-based figure.
            "totals": totals,
            # Idle energy per upstream not carried by any team row (admin only).
            "idle": idle if principal.admin else [],
            # Per upstream and day: measured = requests + idle + other (methodology §2b).
            "accounts": accounts,
        }
    )


@footprint_router.get("/traces/{trace_id}")
async def get_trace(request: Request, trace_id: str) -> Response:
    principal = await _caller(request)
    normalized = trace_id.lower()
    if not TRACE_ID.match(normalized):
        raise InvalidRequest("a trace id is 32 hexadecimal characters", param="trace_id")
    summary = await request.app.state.ledger.trace(normalized, _scope(principal))
    if summary is None:
        raise NotFound(f"no requests recorded for trace {normalized}")
    return _json({"object": "footprint.trace", **summary})
