"""Liveness and readiness."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up and its event loop answers."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Ready when the ledger answers and at least one upstream is reachable."""
    services = request.app.state.services
    upstreams = services.router.upstreams
    ledger_ok, *upstream_ok = await asyncio.gather(
        _ledger_ok(services.ledger), *(u.ping() for u in upstreams)
    )
    body = {
        "ledger": "ok" if ledger_ok else "unavailable",
        "upstreams": {
            u.name: ("ok" if ok else "unreachable")
            for u, ok in zip(upstreams, upstream_ok, strict=True)
        },
        # Each upstream's circuit breaker and in-flight count, as routing sees them.
        "routing": {u.name: u.health.as_json() for u in upstreams},
    }
    ready = ledger_ok and (not upstreams or any(upstream_ok))
    body["status"] = "ready" if ready else "not ready"
    return JSONResponse(body, status_code=200 if ready else 503)


async def _ledger_ok(ledger: object) -> bool:
    try:
        await ledger.ping()  # type: ignore[attr-defined]
    except Exception:  # any failure means not ready; the reason is in the ledger's log
        return False
    return True
