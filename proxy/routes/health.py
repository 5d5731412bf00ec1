"""Liveness and readiness."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

from starlette.requests import Request
from starlette.responses import JSONResponse

from proxy.routes import Router

log = logging.getLogger("footprint.health")

router = Router()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up and its event loop answers."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Ready when the ledger can write, the budget store answers and at least one upstream
    is reachable. Each check is bounded by its own timeout (the budget store's socket
    timeout, the upstreams' connect timeout), so a store that never answers makes this
    answer 503, not hang."""
    services = request.app.state.services
    upstreams = services.router.upstreams
    ledger_ok, budgets_ok, *upstream_ok = await asyncio.gather(
        _ok(services.ledger.ping()),
        _ok(services.budgets.ping()),
        *(u.ping() for u in upstreams),
    )
    body = {
        "ledger": "ok" if ledger_ok else "unavailable",
        "budgets": "ok" if budgets_ok else "unavailable",
        "upstreams": {
            u.name: ("ok" if ok else "unreachable")
            for u, ok in zip(upstreams, upstream_ok, strict=True)
        },
        # Each upstream's circuit breaker and in-flight count, as routing sees them.
        "routing": {u.name: u.health.as_json() for u in upstreams},
    }
    ready = ledger_ok and budgets_ok and (not upstreams or any(upstream_ok))
    body["status"] = "ready" if ready else "not ready"
    return JSONResponse(body, status_code=200 if ready else 503)


async def _ok(check: Awaitable[None]) -> bool:
    try:
        await check
    except Exception as exc:  # any failure means not ready; say which in the log
        log.warning("readiness check failed: %r", exc)
        return False
    return True
