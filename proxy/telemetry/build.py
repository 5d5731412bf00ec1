"""SDK wiring: the one place (with `app.py`) that touches the OpenTelemetry SDK.

No global provider is set: the tracer and meter live on the `Telemetry` the app holds, so two
apps in one process (tests) never share exporters or Prometheus series.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import (
    SERVICE_NAME,
    SERVICE_VERSION,
    TELEMETRY_SDK_LANGUAGE,
    TELEMETRY_SDK_NAME,
    TELEMETRY_SDK_VERSION,
    Resource,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.version import __version__ as sdk_version

from proxy import version
from proxy.config import TelemetrySettings
from proxy.telemetry.config import TelemetryPlan, resolve_plan
from proxy.telemetry.core import Telemetry


def _service_version() -> str:
    return version()


def _resource(plan: TelemetryPlan) -> Resource:
    attributes: dict[str, Any] = {
        TELEMETRY_SDK_LANGUAGE: "python",
        TELEMETRY_SDK_NAME: "opentelemetry",
        TELEMETRY_SDK_VERSION: sdk_version,
        SERVICE_VERSION: _service_version(),
        **plan.resource_attributes,
        SERVICE_NAME: plan.service_name,
    }
    return Resource(attributes)


def _span_exporter(plan: TelemetryPlan) -> SpanExporter | None:
    if plan.traces_exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=plan.traces_endpoint)
    if plan.traces_exporter == "console":
        return ConsoleSpanExporter(service_name=plan.service_name)
    return None


def _metric_readers(plan: TelemetryPlan) -> list[MetricReader]:
    readers: list[MetricReader] = []
    for name in plan.metrics_exporters:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

            exporter: Any = OTLPMetricExporter(endpoint=plan.metrics_endpoint)
        else:
            exporter = ConsoleMetricExporter()
        readers.append(
            PeriodicExportingMetricReader(
                exporter, export_interval_millis=plan.metric_export_interval_ms
            )
        )
    return readers


def _shutdown_processor(
    processor: BatchSpanProcessor, exporter: SpanExporter, timeout_ms: float
) -> None:
    """Flush the processor's queue for at most half of `timeout_ms` (the metrics get the rest).

    The SDK's batch processor waits on its exporter without a limit, and an OTLP exporter
    retries a dead collector, or waits on a silent one, for up to its own timeout (10 s). So the
    flush runs on a daemon thread; past the deadline the exporter is stopped, which ends any
    retry back-off, and an export still in flight is left to its timeout on that thread.
    """
    flushing = threading.Thread(target=processor.shutdown, name="footprint-span-flush", daemon=True)
    flushing.start()
    flushing.join(timeout_ms / 2000.0)
    if flushing.is_alive():
        exporter.shutdown()


def build_telemetry(
    settings: TelemetrySettings,
    upstreams: Sequence[Any] = (),
    *,
    span_exporter: SpanExporter | None = None,
    metric_reader: MetricReader | None = None,
    environ: Mapping[str, str] | None = None,
) -> Telemetry:
    """The proxy's telemetry, from `[telemetry]` and the `OTEL_*` environment.

    With nothing configured: no span is made and nothing is exported; metrics are kept for
    `GET /metrics` only. `span_exporter` and `metric_reader` are added to whatever the
    configuration asks for (tests pass in-memory ones); spans always go through a
    `BatchSpanProcessor`, so an exporter that is slow or down never delays a request.
    `OTEL_SDK_DISABLED=true` turns all of it off (then `/metrics` answers an empty body).
    """
    plan = resolve_plan(settings, os.environ if environ is None else environ)
    if plan.sdk_disabled and span_exporter is None and metric_reader is None:
        return Telemetry()
    resource = _resource(plan)

    closers: list[Callable[[float], object]] = []
    flushers: list[Any] = []
    tracer = None
    exporters = [e for e in (span_exporter, _span_exporter(plan)) if e is not None]
    if exporters:
        tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        for exporter in exporters:
            processor = BatchSpanProcessor(exporter)
            tracer_provider.add_span_processor(processor)
            closers.append(partial(_shutdown_processor, processor, exporter))
        closers.append(lambda _ms: tracer_provider.shutdown())
        tracer = tracer_provider.get_tracer("footprint", _service_version())
        flushers.append(tracer_provider)

    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    exporting = _metric_readers(plan)
    flushers.extend(exporting)
    readers: list[MetricReader] = [
        PrometheusMetricReader(registry=registry, scope_info_enabled=False),
        *exporting,
    ]
    if metric_reader is not None:
        readers.append(metric_reader)
    meter_provider = MeterProvider(
        metric_readers=readers, resource=resource, shutdown_on_exit=False
    )
    closers.append(lambda ms: meter_provider.shutdown(timeout_millis=ms))

    telemetry = Telemetry(
        tracer=tracer,
        meter=meter_provider.get_meter("footprint", _service_version()),
        semconv_latest_only=plan.semconv_latest_only,
        prometheus=(registry, threading.Lock()),
        flushers=flushers,
        closers=closers,
    )
    telemetry.watch_upstreams(upstreams)
    return telemetry
