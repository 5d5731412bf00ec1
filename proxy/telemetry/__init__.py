"""OpenTelemetry for Footprint: a server span per request, a GenAI client span per upstream call
with the request's footprint on it, and the footprint and GenAI metrics (OTLP, and Prometheus
text at `GET /metrics`). Only this package (and `app.py`'s wiring) touches the OTel SDK; names
are listed in docs/telemetry.md."""

from proxy.telemetry.build import build_telemetry
from proxy.telemetry.config import TelemetryPlan, resolve_plan
from proxy.telemetry.core import RequestTelemetry, Telemetry
from proxy.telemetry.routes import metrics_router

__all__ = [
    "RequestTelemetry",
    "Telemetry",
    "TelemetryPlan",
    "build_telemetry",
    "metrics_router",
    "resolve_plan",
]
