"""A local grid-intensity provider speaking Electricity Maps' documented v3 answer to
`GET /carbon-intensity/latest?zone=…` (header `auth-token`): `{"zone", "carbonIntensity",
"datetime", "updatedAt", "emissionFactorType", "isEstimated", "estimationMethod"}`. The test
sets each zone's value, and may change it mid-run."""

from __future__ import annotations

from datetime import UTC, datetime

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


def make_intensity_server(values: dict[str, float], api_key: str) -> Starlette:
    """`values`: zone → gCO2e/kWh, read on every request (the test may change it)."""

    async def latest(request: Request) -> JSONResponse:
        if request.headers.get("auth-token") != api_key:
            return JSONResponse({"message": "invalid token"}, status_code=401)
        zone = request.query_params.get("zone", "")
        if zone not in values:
            return JSONResponse({"message": f"zone {zone} not found"}, status_code=404)
        now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0).isoformat()
        return JSONResponse(
            {
                "zone": zone,
                "carbonIntensity": values[zone],
                "datetime": now.replace("+00:00", ".000Z"),
                "updatedAt": now.replace("+00:00", ".000Z"),
                "emissionFactorType": "lifecycle",
                "isEstimated": False,
                "estimationMethod": None,
            }
        )

    return Starlette(routes=[Route("/v3/carbon-intensity/latest", latest)])
