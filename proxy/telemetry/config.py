"""Where telemetry goes: `[telemetry]` settings and the standard `OTEL_*` variables, resolved once.

Order, for every choice: the settings file (argument) > the environment > the default. A
settings key counts as given only when it was written in the file or in a `FOOTPRINT_TELEMETRY__…`
variable (pydantic's `model_fields_set`), so the file's defaults never hide an `OTEL_*` variable.
Pure: reads only the mapping it is handed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote

from proxy.config import TelemetrySettings

log = logging.getLogger("footprint.telemetry")

Exporter = Literal["otlp", "console"]

DEFAULT_SERVICE_NAME = "footprint"
DEFAULT_OTLP_BASE = "http://localhost:4318"  # the OTLP/HTTP default of the OTel specification
SEMCONV_LATEST = "gen_ai_latest_experimental"


@dataclass(frozen=True, slots=True)
class TelemetryPlan:
    """What `build_telemetry` wires: every decision already taken."""

    sdk_disabled: bool = False
    service_name: str = DEFAULT_SERVICE_NAME
    resource_attributes: dict[str, str] = field(default_factory=dict)
    traces_exporter: Exporter | None = None
    traces_endpoint: str = ""
    metrics_exporters: tuple[Exporter, ...] = ()
    metrics_endpoint: str = ""
    metric_export_interval_ms: int = 10_000
    # Emit only the latest GenAI names (OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental);
    # otherwise spans also carry the pre-1.37 `gen_ai.system` next to `gen_ai.provider.name`.
    semconv_latest_only: bool = False


def _given(settings: TelemetrySettings, name: str) -> bool:
    return name in settings.model_fields_set


def _words(value: str) -> list[str]:
    return [w.strip().lower() for w in value.split(",") if w.strip()]


def _resource_attributes(raw: str) -> dict[str, str]:
    """`OTEL_RESOURCE_ATTRIBUTES`: `key=value,key2=value2`, values percent-encoded."""
    attributes: dict[str, str] = {}
    for pair in raw.split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip():
            attributes[key.strip()] = unquote(value.strip())
        elif pair.strip():
            log.warning("OTEL_RESOURCE_ATTRIBUTES: ignoring %r (not key=value)", pair.strip())
    return attributes


def _signal_endpoint(
    settings: TelemetrySettings, environ: Mapping[str, str], signal: str, explicit: bool
) -> str:
    """The full OTLP/HTTP URL for `signal` ("traces" or "metrics"), or "" when none is set
    and the exporter was not asked for by name."""
    if settings.otlp_endpoint:
        return f"{settings.otlp_endpoint.rstrip('/')}/v1/{signal}"
    own = environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT", "").strip()
    if own:
        return own  # signal-specific endpoints are used as given (OTel specification)
    base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if base:
        return f"{base.rstrip('/')}/v1/{signal}"
    return f"{DEFAULT_OTLP_BASE}/v1/{signal}" if explicit else ""


def _exporters(
    variable: str, environ: Mapping[str, str], has_endpoint: bool
) -> tuple[list[Exporter], bool]:
    """Exporters named by `OTEL_TRACES_EXPORTER` / `OTEL_METRICS_EXPORTER`; unset means OTLP
    when an endpoint is configured and nothing otherwise. Returns (exporters, named)."""
    raw = environ.get(variable)
    if raw is None or not raw.strip():
        return (["otlp"] if has_endpoint else []), False
    chosen: list[Exporter] = []
    for word in _words(raw):
        if word == "none":
            return [], True
        if word == "otlp":
            chosen.append("otlp")
        elif word == "console":
            chosen.append("console")
        elif word == "prometheus":
            continue  # always served at GET /metrics on the proxy's own port
        else:
            log.warning("%s: exporter %r is not supported here; ignored", variable, word)
    return chosen, True


def resolve_plan(settings: TelemetrySettings, environ: Mapping[str, str]) -> TelemetryPlan:
    """Decide exporters, endpoints and names from settings and environment."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return TelemetryPlan(sdk_disabled=True)

    protocol = environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "").strip().lower()
    if protocol and protocol != "http/protobuf":
        log.warning(
            "OTEL_EXPORTER_OTLP_PROTOCOL=%s: only http/protobuf is built in; using it", protocol
        )

    resource = _resource_attributes(environ.get("OTEL_RESOURCE_ATTRIBUTES", ""))
    if _given(settings, "service_name"):
        service_name = settings.service_name
    else:
        service_name = (
            environ.get("OTEL_SERVICE_NAME", "").strip()
            or resource.get("service.name")
            or settings.service_name
        )
    resource.pop("service.name", None)

    traces_exporter: Exporter | None = None
    traces_endpoint = ""
    if settings.traces:
        configured = bool(
            settings.otlp_endpoint
            or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        )
        chosen, named = _exporters("OTEL_TRACES_EXPORTER", environ, configured)
        if chosen:
            traces_exporter = chosen[0]
            if traces_exporter == "otlp":
                traces_endpoint = _signal_endpoint(settings, environ, "traces", named)

    metrics_exporters: tuple[Exporter, ...] = ()
    metrics_endpoint = ""
    if settings.metrics:
        configured = bool(
            settings.otlp_endpoint
            or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            or environ.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
        )
        chosen, named = _exporters("OTEL_METRICS_EXPORTER", environ, configured)
        metrics_exporters = tuple(dict.fromkeys(chosen))
        if "otlp" in metrics_exporters:
            metrics_endpoint = _signal_endpoint(settings, environ, "metrics", named)

    interval_ms = settings.metric_export_interval_ms
    if not _given(settings, "metric_export_interval_ms"):
        raw = environ.get("OTEL_METRIC_EXPORT_INTERVAL", "").strip()
        if raw.isdigit() and int(raw) > 0:
            interval_ms = int(raw)
        elif raw:
            log.warning(
                "OTEL_METRIC_EXPORT_INTERVAL=%r is not a positive integer; using %d ms",
                raw,
                interval_ms,
            )

    opt_in = _words(environ.get("OTEL_SEMCONV_STABILITY_OPT_IN", ""))
    return TelemetryPlan(
        service_name=service_name,
        resource_attributes=resource,
        traces_exporter=traces_exporter,
        traces_endpoint=traces_endpoint,
        metrics_exporters=metrics_exporters,
        metrics_endpoint=metrics_endpoint,
        metric_export_interval_ms=interval_ms,
        semconv_latest_only=SEMCONV_LATEST in opt_in,
    )
