"""The routing decision on the request's client span: policy, candidates, attempts, reason,
the chosen upstream's expected gCO2e against the worst candidate's."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from proxy.config import TelemetrySettings
from proxy.telemetry import build_telemetry
from tests.proxy.conftest import proxy_settings
from tests.support.servers import ServerThread


def test_the_client_span_names_the_route(
    start_proxy: Callable[..., ServerThread], tmp_path: Path, upstream: ServerThread
) -> None:
    spans = InMemorySpanExporter()
    telemetry = build_telemetry(
        TelemetrySettings(),
        [],
        span_exporter=spans,
        metric_reader=InMemoryMetricReader(),
        environ={},
    )
    base = proxy_settings(tmp_path, upstream.url)
    first = base.upstreams[0]
    settings = base.model_copy(
        update={
            "upstreams": [
                first.model_copy(update={"name": "pl", "zone": "PL"}),
                first.model_copy(update={"name": "fr", "zone": "FR"}),
            ],
            "routing": base.routing.model_copy(update={"policy": "lowest-carbon"}),
        }
    )
    proxy = start_proxy(settings, telemetry=telemetry)
    answer = httpx.post(
        f"{proxy.url}/v1/chat/completions",
        json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    assert answer.status_code == 200
    telemetry.force_flush()
    client = next(s for s in spans.get_finished_spans() if s.kind == SpanKind.CLIENT)
    attributes = dict(client.attributes or {})
    assert attributes["footprint.route.policy"] == "lowest-carbon"
    assert attributes["footprint.route.candidates"] == 2
    assert attributes["footprint.route.attempts"] == 1
    assert attributes["footprint.zone"] == "FR"
    assert "lowest expected carbon" in str(attributes["footprint.route.reason"])
    expected = float(attributes["footprint.route.expected_co2e_g"])  # type: ignore[arg-type]
    worst = float(attributes["footprint.route.worst_co2e_g"])  # type: ignore[arg-type]
    # Same hardware: the expectations differ by the zones' intensities (FR 41.44, PL 588.6).
    assert 0 < expected < worst
    telemetry.shutdown()
