"""`GET /admin/upstreams`: each upstream as routing sees it now: its circuit, in-flight count
against max_concurrency, time to first token, the J per output token measured from its own
traffic (calibrations), and its zone's grid intensity now. Admin key only."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from meters import MeterError
from proxy.routes import Router
from proxy.routes.admin import json_response, require_admin
from proxy.services import Services
from proxy.upstreams import Upstream

upstreams_router = Router(prefix="/admin")


@upstreams_router.get("/upstreams")
async def list_upstreams(request: Request) -> Response:
    await require_admin(request)
    services = request.app.state.services
    data = [await _describe(services, u) for u in services.router.upstreams]
    return json_response({"data": data})


async def _describe(services: Services, upstream: Upstream) -> dict[str, object]:
    try:
        now = await services.intensity.get(upstream.site.zone)
        grid: dict[str, object] = {
            "gco2e_per_kwh": now.gco2e_per_kwh,
            "intensity_source": now.intensity_source,
        }
    except MeterError as error:
        grid = {"gco2e_per_kwh": None, "intensity_source": f"unavailable: {error}"}
    measured = [
        {
            "model": fit.model,
            "accelerator": fit.accelerator,
            "j_per_output_token": fit.j_per_output_token,
            "alpha": fit.alpha,
            "samples": fit.samples,
        }
        for fit in upstream.calibrations.fitted()
    ]
    return {
        "name": upstream.name,
        "zone": upstream.site.zone,
        "models": list(upstream.settings.models),
        "meter": upstream.settings.meter.kind,
        **upstream.health.as_json(),
        "measured": measured,
        **grid,
    }
