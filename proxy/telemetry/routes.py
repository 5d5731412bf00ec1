"""`GET /metrics`: the proxy's metrics as Prometheus text, from the app's own `Telemetry`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

metrics_router = APIRouter()


@metrics_router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    # A plain `def`: FastAPI runs it in its thread pool, since collecting runs the meters'
    # observable callbacks, which must not hold up the event loop.
    telemetry = getattr(request.app.state, "telemetry", None)
    if not telemetry:
        return Response(b"", media_type="text/plain; version=0.0.4; charset=utf-8")
    body, content_type = telemetry.prometheus_text()
    peers = getattr(request.app.state, "metrics_sockets", None)  # footprint serve --workers N
    if peers:
        from proxy.telemetry.merge import fetch, merge

        body = merge([body, *(t for t in map(fetch, peers[1:]) if t is not None)])
    return Response(body, headers={"content-type": content_type})
