"""`GET /metrics`: the proxy's metrics as Prometheus text, from the app's own `Telemetry`."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from proxy.routes import Router

metrics_router = Router()


@metrics_router.get("/metrics")
def metrics(request: Request) -> Response:
    # A plain `def`: Starlette runs it in its thread pool, since collecting runs the meters'
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
