"""Telemetry: spans, metrics and exporters as a trace backend or a Prometheus scrape sees them."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import orjson
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.testclient import TestClient

from meters import Footprint
from proxy.config import TelemetrySettings, UpstreamSettings
from proxy.errors import (
    BudgetExceeded,
    InvalidApiKey,
    InvalidRequest,
    ModelNotFound,
    PermissionDenied,
    ProxyError,
    RequestTooLarge,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from proxy.telemetry import Telemetry, build_telemetry, metrics_router, resolve_plan
from proxy.telemetry.names import ENDPOINTS, provider_name, server_address
from tests.proxy.conftest import proxy_settings
from tests.proxy.otlp_receiver import OtlpReceiver
from tests.support.fake_upstream import UpstreamLog
from tests.support.servers import ServerThread

CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
CALLER_HEADERS = {
    "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01",
    "tracestate": "vendor=opaque",
    "baggage": "user.session=abc123",
}


@dataclass
class FakeCall:
    """The fields of proxy.relay.Call that telemetry reads (proxy.telemetry.core.TracedCall)."""

    upstream: Any
    endpoint: str = "chat.completions"
    request_id: str = "req-1"
    started: float = field(default_factory=time.perf_counter)
    team: str = "search"
    model: str = "llama-3-8b"
    stream: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    status: int = 200
    cancelled: bool = False
    error: str | None = None
    first_chunk_s: float | None = None
    trace_id: str | None = None
    max_tokens: int = 0
    response_model: str | None = None
    finish_reasons: list[str] = field(default_factory=list)
    route_attributes: dict[str, Any] = field(default_factory=dict)


class FakeMeter:
    def __init__(
        self,
        idle_energy_j: float | None = None,
        gpus: list[Any] | None = None,
        broken: bool = False,
        other_energy_j: float | None = None,
    ) -> None:
        if idle_energy_j is not None:
            self.idle_energy_j = idle_energy_j
        if other_energy_j is not None:
            self.other_energy_j = other_energy_j
        self._gpus = gpus
        self._broken = broken

    def __getattr__(self, name: str) -> Any:
        if name == "gpu_readings" and self._gpus is not None:
            return self._readings
        raise AttributeError(name)

    def _readings(self) -> list[Any]:
        if self._broken:
            raise RuntimeError("GPU fell off the bus")
        return list(self._gpus or [])


def make_upstream(
    name: str = "local-vllm", base_url: str = "http://gpu-node:8000/v1", meter: Any = None
) -> Any:
    return SimpleNamespace(
        name=name,
        settings=UpstreamSettings(name=name, base_url=base_url),
        meter=meter if meter is not None else FakeMeter(),
    )


def footprint(energy_j: float = 62.1, method: str = "measured") -> Footprint:
    return Footprint(
        method=method,
        gpu_energy_j=energy_j * 0.6,
        energy_j=energy_j,
        co2e_g=energy_j * 1e-4,
        embodied_co2e_g=energy_j * 1e-5,
        water_ml=energy_j * 1.5e-3,
        zone="KR",
        grid_gco2e_per_kwh=400.0,
        pue=1.2,
    )


@dataclass
class Rig:
    telemetry: Telemetry
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader

    def finished(self) -> list[ReadableSpan]:
        self.telemetry.force_flush()
        return list(self.spans.get_finished_spans())

    def span(self, kind: SpanKind) -> ReadableSpan:
        chosen = [s for s in self.finished() if s.kind == kind]
        assert len(chosen) == 1, chosen
        return chosen[0]

    def points(self, metric: str) -> list[Any]:
        data = self.metrics.get_metrics_data()
        found: list[Any] = []
        for resource_metrics in data.resource_metrics if data else []:
            for scope in resource_metrics.scope_metrics:
                for m in scope.metrics:
                    if m.name == metric:
                        found.extend(m.data.data_points)
        return found


@pytest.fixture
def rig() -> Iterator[Rig]:
    spans, metrics = InMemorySpanExporter(), InMemoryMetricReader()
    telemetry = build_telemetry(
        TelemetrySettings(), [], span_exporter=spans, metric_reader=metrics, environ={}
    )
    yield Rig(telemetry, spans, metrics)
    telemetry.shutdown()


def run_request(
    telemetry: Telemetry,
    call: FakeCall,
    headers: dict[str, str] | None = None,
    fp: Footprint | None = None,
) -> dict[str, str]:
    """What the relay does for a request that reached its upstream."""
    handle = telemetry.begin(headers or {}, call)
    upstream_headers = {"content-type": "application/json", **(headers or {})}
    telemetry.inject(handle, upstream_headers)
    telemetry.end(handle, call, fp or footprint())
    return upstream_headers


# ---- traces --------------------------------------------------------------------------------


def test_spans_continue_the_callers_trace_and_the_upstream_gets_the_client_span(rig: Rig) -> None:
    call = FakeCall(make_upstream(), prompt_tokens=12, completion_tokens=30)
    sent = run_request(rig.telemetry, call, dict(CALLER_HEADERS))

    server, client = rig.span(SpanKind.SERVER), rig.span(SpanKind.CLIENT)
    assert server.name == "POST /v1/chat/completions"
    assert client.name == "chat llama-3-8b"
    assert format(server.context.trace_id, "032x") == CALLER_TRACE
    assert format(server.parent.span_id, "016x") == CALLER_SPAN
    assert server.parent.is_remote
    assert client.parent.span_id == server.context.span_id
    assert client.context.trace_id == server.context.trace_id
    assert call.trace_id == CALLER_TRACE  # what the ledger row carries

    version, trace_id, parent_id, flags = sent["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", CALLER_TRACE, "01")
    assert parent_id == format(client.context.span_id, "016x")
    assert sent["tracestate"] == "vendor=opaque"
    assert sent["baggage"] == "user.session=abc123"


def test_a_request_without_traceparent_starts_a_new_trace(rig: Rig) -> None:
    call = FakeCall(make_upstream())
    sent = run_request(rig.telemetry, call)
    server = rig.span(SpanKind.SERVER)
    assert server.parent is None
    assert call.trace_id == format(server.context.trace_id, "032x")
    assert sent["traceparent"].split("-")[1] == call.trace_id


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_the_client_span_carries_the_genai_attributes_and_the_footprint(
    rig: Rig, stream: bool
) -> None:
    fp = footprint(41.7)
    call = FakeCall(
        make_upstream("openai", "https://api.openai.com/v1"),
        model="gpt-4o",
        stream=stream,
        prompt_tokens=120,
        completion_tokens=256,
        max_tokens=512,
        response_model="gpt-4o-2024-08-06",
        finish_reasons=["stop"],
        first_chunk_s=0.25 if stream else None,
    )
    run_request(rig.telemetry, call, fp=fp)
    attributes = dict(rig.span(SpanKind.CLIENT).attributes or {})
    assert attributes == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.system": "openai",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.request.max_tokens": 512,
        "gen_ai.response.model": "gpt-4o-2024-08-06",
        "gen_ai.response.finish_reasons": ("stop",),
        "gen_ai.usage.input_tokens": 120,
        "gen_ai.usage.output_tokens": 256,
        "server.address": "api.openai.com",
        "server.port": 443,
        "http.response.status_code": 200,
        "footprint.method": "measured",
        "footprint.gpu_energy_j": fp.gpu_energy_j,
        "footprint.energy_j": fp.energy_j,
        "footprint.co2e_g": fp.co2e_g,
        "footprint.embodied_co2e_g": fp.embodied_co2e_g,
        "footprint.water_ml": fp.water_ml,
        "footprint.zone": "KR",
        "footprint.grid_gco2e_per_kwh": 400.0,
        "footprint.team": "search",
        "footprint.upstream": "openai",
        "footprint.stream": stream,
    }
    assert rig.span(SpanKind.CLIENT).status.status_code == StatusCode.UNSET
    first_chunk = rig.points("gen_ai.client.operation.time_to_first_chunk")
    if stream:
        assert [(p.count, p.sum) for p in first_chunk] == [(1, 0.25)]
    else:
        assert first_chunk == []


def test_embeddings_have_input_tokens_only(rig: Rig) -> None:
    call = FakeCall(make_upstream(), endpoint="embeddings", model="bge", prompt_tokens=9)
    run_request(rig.telemetry, call)
    client = rig.span(SpanKind.CLIENT)
    assert client.name == "embeddings bge"
    assert rig.span(SpanKind.SERVER).name == "POST /v1/embeddings"
    assert client.attributes["gen_ai.usage.input_tokens"] == 9
    assert "gen_ai.usage.output_tokens" not in client.attributes
    types = {p.attributes["gen_ai.token.type"] for p in rig.points("gen_ai.client.token.usage")}
    assert types == {"input"}


def test_semconv_opt_in_drops_the_pre_1_37_provider_attribute() -> None:
    spans = InMemorySpanExporter()
    telemetry = build_telemetry(
        TelemetrySettings(),
        [],
        span_exporter=spans,
        environ={"OTEL_SEMCONV_STABILITY_OPT_IN": "http,gen_ai_latest_experimental"},
    )
    run_request(telemetry, FakeCall(make_upstream()))
    telemetry.force_flush()
    (client,) = [s for s in spans.get_finished_spans() if s.kind == SpanKind.CLIENT]
    assert client.attributes["gen_ai.provider.name"] == "local-vllm"
    assert "gen_ai.system" not in client.attributes
    telemetry.shutdown()


# ---- errors --------------------------------------------------------------------------------

REFUSALS = [
    (InvalidRequest("the request body is not valid JSON"), 400, "invalid_request_error"),
    (InvalidApiKey("unknown key"), 401, "invalid_api_key"),
    (PermissionDenied("this key may not use model 'x'"), 403, "permission_error"),
    (ModelNotFound("the model 'x' does not exist"), 404, "model_not_found"),
    (RequestTooLarge("over the limit"), 413, "request_too_large"),
    (BudgetExceeded("team budget spent"), 429, "footprint_budget_exceeded"),
]


@pytest.mark.parametrize(
    ("error", "status", "error_type"), REFUSALS, ids=[str(r[1]) for r in REFUSALS]
)
def test_a_request_refused_before_the_upstream_is_an_error_server_span(
    rig: Rig, error: ProxyError, status: int, error_type: str
) -> None:
    call = FakeCall(None, team="default", model="x")
    handle = rig.telemetry.begin(dict(CALLER_HEADERS), call)
    call.status, call.error = error.status_code, error.code or error.error_type
    rig.telemetry.fail(handle, call, error)

    (server,) = rig.finished()
    assert server.kind == SpanKind.SERVER
    assert server.status.status_code == StatusCode.ERROR
    assert server.attributes["error.type"] == error_type
    assert server.attributes["http.response.status_code"] == status
    assert format(server.context.trace_id, "032x") == CALLER_TRACE
    (counted,) = rig.points("footprint.requests")
    assert counted.value == 1
    assert counted.attributes["error.type"] == error_type
    assert rig.points("footprint.energy") == []  # nothing ran, nothing to meter


UPSTREAM_FAILURES = [
    # (what the relay noted on the call, the error the proxy raises after `end`, error.type)
    (
        {"status": 502, "error": "upstream_unavailable"},
        UpstreamUnavailable("unreachable"),
        "upstream_unavailable",
    ),
    ({"status": 504, "error": "upstream_timeout"}, UpstreamTimeout("too slow"), "upstream_timeout"),
    ({"status": 500, "error": "upstream_500"}, None, "upstream_500"),
    ({"status": 400, "error": "upstream_400"}, None, "upstream_400"),
    (
        {"status": 200, "error": "upstream_cut_off", "cancelled": True, "stream": True},
        None,
        "upstream_cut_off",
    ),
    (
        {"status": 499, "error": "client_disconnected", "cancelled": True, "stream": True},
        None,
        "client_disconnected",
    ),
]


@pytest.mark.parametrize(
    ("noted", "raised", "error_type"), UPSTREAM_FAILURES, ids=[f[2] for f in UPSTREAM_FAILURES]
)
def test_an_upstream_failure_marks_both_spans_once_and_keeps_the_footprint(
    rig: Rig, noted: dict[str, Any], raised: ProxyError | None, error_type: str
) -> None:
    call = FakeCall(make_upstream(), prompt_tokens=10, completion_tokens=3)
    handle = rig.telemetry.begin({}, call)
    rig.telemetry.inject(handle, {})
    for key, value in noted.items():
        setattr(call, key, value)
    fp = footprint(5.0)
    rig.telemetry.end(handle, call, fp)
    if raised is not None:
        rig.telemetry.fail(handle, call, raised)  # after `end`: must change nothing

    finished = rig.finished()
    assert sorted(s.kind.name for s in finished) == ["CLIENT", "SERVER"]
    for span in finished:
        assert span.status.status_code == StatusCode.ERROR
        assert span.attributes["error.type"] == error_type
        assert span.attributes["http.response.status_code"] == noted["status"]
    client = rig.span(SpanKind.CLIENT)
    assert client.attributes["footprint.energy_j"] == fp.energy_j
    assert client.attributes.get("footprint.cancelled", False) == noted.get("cancelled", False)
    (counted,) = rig.points("footprint.requests")
    assert (counted.value, counted.attributes["error.type"]) == (1, error_type)
    (energy,) = rig.points("footprint.energy")
    assert energy.value == fp.energy_j
    (duration,) = rig.points("gen_ai.client.operation.duration")
    assert duration.attributes["error.type"] == error_type


def test_end_twice_changes_nothing(rig: Rig) -> None:
    call = FakeCall(make_upstream())
    handle = rig.telemetry.begin({}, call)
    rig.telemetry.inject(handle, {})
    rig.telemetry.end(handle, call, footprint(10.0))
    rig.telemetry.end(handle, call, footprint(10.0))
    assert len(rig.finished()) == 2
    (energy,) = rig.points("footprint.energy")
    assert energy.value == 10.0


# ---- metrics -------------------------------------------------------------------------------


def test_footprint_counters_sum_per_team_model_upstream_and_method(rig: Rig) -> None:
    a, b = make_upstream("a"), make_upstream("b")
    runs = [
        (a, "search", "m1", 10.0, "measured"),
        (a, "search", "m1", 2.5, "measured"),
        (b, "ads", "m2", 7.0, "estimated"),
    ]
    for upstream, team, model, energy_j, method in runs:
        run_request(
            rig.telemetry,
            FakeCall(upstream, team=team, model=model, prompt_tokens=4, completion_tokens=6),
            fp=footprint(energy_j, method),
        )
    for metric, figure in (
        ("footprint.energy", "energy_j"),
        ("footprint.co2e", "co2e_g"),
        ("footprint.water", "water_ml"),
    ):
        sums = {
            (
                p.attributes["team"],
                p.attributes["model"],
                p.attributes["upstream"],
                p.attributes["method"],
            ): p.value
            for p in rig.points(metric)
        }
        expected: dict[tuple[str, ...], float] = {}
        for upstream, team, model, energy_j, method in runs:
            key = (team, model, upstream.name, method)
            expected[key] = expected.get(key, 0.0) + getattr(footprint(energy_j, method), figure)
        assert sums == pytest.approx(expected), metric
    tokens = {
        (p.attributes["team"], p.attributes["gen_ai.token.type"]): p.value
        for p in rig.points("footprint.tokens")
    }
    assert tokens == {
        ("search", "input"): 8,
        ("search", "output"): 12,
        ("ads", "input"): 4,
        ("ads", "output"): 6,
    }
    histogram: dict[str, float] = {}
    for p in rig.points("gen_ai.client.token.usage"):
        kind = p.attributes["gen_ai.token.type"]
        histogram[kind] = histogram.get(kind, 0) + p.sum
    assert histogram == {"input": 12, "output": 18}
    durations = rig.points("gen_ai.client.operation.duration")
    assert sum(p.count for p in durations) == 3
    assert all("error.type" not in p.attributes for p in durations)


def test_gpu_idle_and_other_energy_are_observed_from_the_meters() -> None:
    reader = InMemoryMetricReader()
    gpus = [
        SimpleNamespace(gpu_id=0, energy_j=1200.0, power_w=310.0),
        SimpleNamespace(gpu_id=1, energy_j=900.0, power_w=280.5),
    ]
    upstreams = [
        make_upstream("h100", meter=FakeMeter(idle_energy_j=55.0, gpus=gpus, other_energy_j=21.5)),
        make_upstream("broken", meter=FakeMeter(gpus=gpus, broken=True)),
        make_upstream("hosted", meter=FakeMeter()),
    ]
    telemetry = build_telemetry(TelemetrySettings(), upstreams, metric_reader=reader, environ={})
    data = reader.get_metrics_data()
    points = {
        m.name: {tuple(sorted(p.attributes.items())): p.value for p in m.data.data_points}
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    }
    assert points["footprint.idle_energy"] == {(("upstream", "h100"),): 55.0}
    assert points["footprint.other_energy"] == {(("upstream", "h100"),): 21.5}
    gpu0 = (("hw.id", "0"), ("hw.type", "gpu"), ("upstream", "h100"))
    gpu1 = (("hw.id", "1"), ("hw.type", "gpu"), ("upstream", "h100"))
    assert points["hw.energy"] == {gpu0: 1200.0, gpu1: 900.0}
    assert points["hw.power"] == {gpu0: 310.0, gpu1: 280.5}
    telemetry.shutdown()


def scrape(telemetry: Telemetry) -> dict[str, list[Any]]:
    app = Starlette(routes=metrics_router.routes)
    app.state.telemetry = telemetry
    with TestClient(app) as client:
        response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {f.name: f.samples for f in text_string_to_metric_families(response.text)}


def test_metrics_endpoint_serves_prometheus_text_matching_the_requests() -> None:
    telemetry = build_telemetry(TelemetrySettings(), [], environ={})
    energies = [3.25, 11.5, 0.125]
    for energy_j in energies:
        run_request(
            telemetry,
            FakeCall(
                make_upstream(),
                prompt_tokens=5,
                completion_tokens=7,
                stream=True,
                first_chunk_s=0.1,
            ),
            fp=footprint(energy_j),
        )
    families = scrape(telemetry)
    # The exported names the dashboards query (docs/telemetry.md).
    energy = [s for s in families["footprint_energy_joules"] if s.name.endswith("_total")]
    assert [s.labels for s in energy] == [
        {"team": "search", "model": "llama-3-8b", "upstream": "local-vllm", "method": "measured"}
    ]
    assert energy[0].value == pytest.approx(sum(energies))
    co2e = [s for s in families["footprint_co2e_grams"] if s.name.endswith("_total")]
    assert co2e[0].value == pytest.approx(sum(footprint(e).co2e_g for e in energies))
    water = [s for s in families["footprint_water_mL"] if s.name.endswith("_total")]
    assert water[0].value == pytest.approx(sum(footprint(e).water_ml for e in energies))
    requests = [s for s in families["footprint_requests"] if s.name.endswith("_total")]
    assert requests[0].value == 3
    token_sums = {
        s.labels["gen_ai_token_type"]: s.value
        for s in families["gen_ai_client_token_usage"]
        if s.name.endswith("_sum")
    }
    assert token_sums == {"input": 15, "output": 21}
    for name in (
        "gen_ai_client_operation_duration_seconds",
        "gen_ai_client_operation_time_to_first_chunk_seconds",
    ):
        counts = [s.value for s in families[name] if s.name.endswith("_count")]
        assert counts == [3], name
    telemetry.shutdown()


def test_two_apps_in_one_process_keep_their_own_series() -> None:
    first = build_telemetry(TelemetrySettings(), [], environ={})
    second = build_telemetry(TelemetrySettings(), [], environ={})
    run_request(first, FakeCall(make_upstream()), fp=footprint(4.0))
    assert scrape(first)["footprint_energy_joules"][0].value == 4.0
    assert "footprint_energy_joules" not in scrape(second)
    first.shutdown()
    second.shutdown()


# ---- configuration -------------------------------------------------------------------------


def test_nothing_configured_makes_no_span_but_keeps_the_callers_trace_id() -> None:
    plan = resolve_plan(TelemetrySettings(), {})
    assert (plan.traces_exporter, plan.metrics_exporters) == (None, ())
    telemetry = build_telemetry(TelemetrySettings(), [], environ={})
    call = FakeCall(make_upstream())
    handle = telemetry.begin(dict(CALLER_HEADERS), call)
    assert call.trace_id == CALLER_TRACE
    headers = dict(CALLER_HEADERS)
    telemetry.inject(handle, headers)
    assert headers == CALLER_HEADERS  # the caller's own context travels on unchanged
    telemetry.end(handle, call, footprint(1.0))
    assert "footprint_energy_joules" in scrape(telemetry)
    telemetry.shutdown()


def test_settings_win_over_environment_which_wins_over_defaults() -> None:
    environ = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://env-collector:4318",
        "OTEL_SERVICE_NAME": "from-env",
        "OTEL_METRIC_EXPORT_INTERVAL": "2500",
    }
    from_env = resolve_plan(TelemetrySettings(), environ)
    assert from_env.traces_exporter == "otlp"
    assert from_env.traces_endpoint == "http://env-collector:4318/v1/traces"
    assert from_env.metrics_endpoint == "http://env-collector:4318/v1/metrics"
    assert from_env.service_name == "from-env"
    assert from_env.metric_export_interval_ms == 2500

    settings = TelemetrySettings(
        otlp_endpoint="http://collector:4318/",
        service_name="proxy-eu",
        metric_export_interval_ms=1000,
    )
    from_file = resolve_plan(settings, environ)
    assert from_file.traces_endpoint == "http://collector:4318/v1/traces"
    assert from_file.metrics_endpoint == "http://collector:4318/v1/metrics"
    assert from_file.service_name == "proxy-eu"
    assert from_file.metric_export_interval_ms == 1000

    defaults = resolve_plan(TelemetrySettings(), {})
    assert (defaults.service_name, defaults.metric_export_interval_ms) == ("footprint", 10_000)


def test_otel_exporter_variables_choose_and_silence_exporters() -> None:
    own = resolve_plan(
        TelemetrySettings(), {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://tempo:4318/custom/path"}
    )
    assert own.traces_endpoint == "http://tempo:4318/custom/path"  # used as given
    assert own.metrics_exporters == ()
    named = resolve_plan(
        TelemetrySettings(),
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_METRICS_EXPORTER": "console,prometheus"},
    )
    assert named.traces_endpoint == "http://localhost:4318/v1/traces"
    assert named.metrics_exporters == ("console",)
    silenced = resolve_plan(
        TelemetrySettings(otlp_endpoint="http://collector:4318"),
        {"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none"},
    )
    assert (silenced.traces_exporter, silenced.metrics_exporters) == (None, ())
    switched_off = resolve_plan(
        TelemetrySettings(otlp_endpoint="http://collector:4318", traces=False), {}
    )
    assert switched_off.traces_exporter is None
    assert switched_off.metrics_exporters == ("otlp",)
    resource = resolve_plan(
        TelemetrySettings(),
        {"OTEL_RESOURCE_ATTRIBUTES": "service.name=svc,deployment.environment.name=prod%20eu"},
    )
    assert resource.service_name == "svc"
    assert resource.resource_attributes == {"deployment.environment.name": "prod eu"}


def test_sdk_disabled_turns_everything_off_but_metrics_still_answer() -> None:
    settings = TelemetrySettings(otlp_endpoint="http://collector:4318")
    assert resolve_plan(settings, {"OTEL_SDK_DISABLED": "true"}).sdk_disabled
    telemetry = build_telemetry(settings, [], environ={"OTEL_SDK_DISABLED": "true"})
    call = FakeCall(make_upstream())
    run_request(telemetry, call, dict(CALLER_HEADERS))
    assert call.trace_id == CALLER_TRACE
    assert scrape(telemetry) == {}
    telemetry.shutdown()


@pytest.mark.parametrize(
    ("base_url", "expected"),
    [
        ("https://api.openai.com/v1", "openai"),
        ("https://myres.openai.azure.com/openai/deployments/x", "azure.ai.openai"),
        ("https://api.groq.com/openai/v1", "groq"),
        ("https://api.mistral.ai/v1", "mistral_ai"),
        ("https://generativelanguage.googleapis.com/v1beta/openai", "gcp.gemini"),
        ("http://gpu-node:8000/v1", "local-vllm"),
    ],
)
def test_provider_name_follows_the_host_else_the_upstream_name(
    base_url: str, expected: str
) -> None:
    settings = UpstreamSettings(name="local-vllm", base_url=base_url)
    host = base_url.split("/")[2].split(":")[0]
    assert provider_name(host, settings) == expected


@pytest.mark.parametrize(
    "base_url",
    [
        "https://api.openai.com/v1",
        "http://LocalHost:8000/v1",
        "https://EXAMPLE.com:443/v1",
        "http://host:/v1",
        "http://user:secret@gpu-node:81/v1",
        "http://127.0.0.1/v1",
        "http://[::1]:9/v1",
        "http://[FE80::1]/v1",
        "https://xn--fiqs8s.icom.museum/v1",
        "https://Xn--Fiqs8s.COM/v1",
        "https://bücher.de/v1",
    ],
)
def test_server_address_and_port_are_the_ones_httpx_parses(base_url: str) -> None:
    # Parsed without httpx, which a one-machine serve no longer imports; the labels are the
    # ones it gave before.
    url = httpx.URL(base_url)
    assert server_address(base_url) == (
        url.host,
        url.port or (443 if url.scheme == "https" else 80),
    )


def test_endpoint_table_agrees_with_the_relay() -> None:
    from proxy.relay import ENDPOINTS as RELAY_ENDPOINTS

    assert {k: v.operation for k, v in RELAY_ENDPOINTS.items()} == {
        k: v[0] for k, v in ENDPOINTS.items()
    }
    assert {k: "/v1" + v.path for k, v in RELAY_ENDPOINTS.items()} == {
        k: v[1] for k, v in ENDPOINTS.items()
    }


# ---- a real OTLP/HTTP receiver ---------------------------------------------------------------


def test_an_otlp_receiver_gets_the_spans_and_metrics_with_the_same_attributes() -> None:
    with OtlpReceiver() as receiver:
        settings = TelemetrySettings(otlp_endpoint=receiver.url, metric_export_interval_ms=60_000)
        telemetry = build_telemetry(settings, [], environ={})
        fp = footprint(8.5)
        call = FakeCall(
            make_upstream(),
            stream=True,
            prompt_tokens=3,
            completion_tokens=4,
            first_chunk_s=0.05,
            finish_reasons=["length"],
        )
        run_request(telemetry, call, dict(CALLER_HEADERS), fp=fp)
        telemetry.force_flush()
        assert receiver.wait_for(lambda r: len(r.spans) >= 2 and bool(r.points))

        (client,) = [s for s in receiver.spans if s.kind == "CLIENT"]
        (server,) = [s for s in receiver.spans if s.kind == "SERVER"]
        assert client.trace_id == server.trace_id == CALLER_TRACE
        assert server.parent_span_id == CALLER_SPAN
        assert client.parent_span_id == server.span_id
        assert client.name == "chat llama-3-8b"
        assert client.resource["service.name"] == "footprint"
        assert client.attributes["footprint.energy_j"] == fp.energy_j
        assert client.attributes["footprint.co2e_g"] == fp.co2e_g
        assert client.attributes["footprint.water_ml"] == fp.water_ml
        assert client.attributes["footprint.team"] == "search"
        assert client.attributes["gen_ai.response.finish_reasons"] == ("length",)
        assert client.attributes["gen_ai.usage.output_tokens"] == 4

        (energy,) = receiver.latest_points("footprint.energy")
        assert (energy.unit, energy.value) == ("J", fp.energy_j)
        assert energy.attributes == {
            "team": "search",
            "model": "llama-3-8b",
            "upstream": "local-vllm",
            "method": "measured",
        }
        (water,) = receiver.latest_points("footprint.water")
        assert (water.unit, water.value) == ("mL", fp.water_ml)
        first_chunk = receiver.latest_points("gen_ai.client.operation.time_to_first_chunk")
        assert [(p.count, p.value) for p in first_chunk] == [(1, 0.05)]
        telemetry.shutdown()


def test_a_dead_receiver_never_fails_a_request() -> None:
    with OtlpReceiver() as receiver:
        settings = TelemetrySettings(otlp_endpoint=receiver.url, metric_export_interval_ms=60_000)
        telemetry = build_telemetry(settings, [], environ={})
        receiver.stop()
        for i in range(200):
            call = FakeCall(make_upstream(), request_id=f"req-{i}")
            sent = run_request(telemetry, call, fp=footprint(1.0))
            assert sent["traceparent"].split("-")[1] == call.trace_id
        assert scrape(telemetry)["footprint_requests"][0].value == 200
        telemetry.shutdown(timeout_s=0.5)


def test_a_stalled_receiver_never_holds_up_a_request() -> None:
    # The receiver takes each export and never answers: an exporter on the request path would
    # hold every request for its 10 s timeout, and these 200 could not finish.
    with OtlpReceiver() as receiver:
        receiver.stall()
        settings = TelemetrySettings(otlp_endpoint=receiver.url, metric_export_interval_ms=50)
        telemetry = build_telemetry(settings, [], environ={})
        run_request(telemetry, FakeCall(make_upstream()))
        assert receiver.wait_for(lambda r: r.stalled_requests >= 1)  # an exporter is stuck
        for i in range(200):
            call = FakeCall(make_upstream(), request_id=f"req-{i}")
            sent = run_request(telemetry, call)
            assert sent["traceparent"].split("-")[1] == call.trace_id
        assert scrape(telemetry)["footprint_requests"][0].value == 201
        telemetry.shutdown(timeout_s=0.5)


# ---- through the proxy ---------------------------------------------------------------------

MESSAGES = [{"role": "user", "content": "hello there"}]
FIGURE_HEADERS = {
    "gpu_energy_j": "x-footprint-gpu-energy-j",
    "energy_j": "x-footprint-energy-j",
    "co2e_g": "x-footprint-co2e-g",
    "water_ml": "x-footprint-water-ml",
}
FIGURES = tuple(FIGURE_HEADERS)


def ask(
    proxy: ServerThread,
    model: str = "echo",
    *,
    stream: bool = False,
    headers: dict[str, str] | None = None,
    **body: Any,
) -> httpx.Response:
    return httpx.post(
        f"{proxy.url}/v1/chat/completions",
        json={"model": model, "messages": MESSAGES, "stream": stream, **body},
        headers=headers or {},
        timeout=30,
    )


def reported(response: httpx.Response) -> dict[str, Any]:
    """The footprint the caller was told: the headers of a whole answer, or the `: footprint`
    comment of a streamed one."""
    if response.headers["content-type"].startswith("text/event-stream"):
        for line in response.text.splitlines():
            if line.startswith(": footprint "):
                return dict(orjson.loads(line[len(": footprint ") :]))
        raise AssertionError("no footprint comment in the stream")
    told: dict[str, Any] = {
        figure: float(response.headers[header]) for figure, header in FIGURE_HEADERS.items()
    }
    told["method"] = response.headers["x-footprint-method"]
    told["zone"] = response.headers["x-footprint-zone"]
    return told


@pytest.fixture
def traced(
    start_proxy: Callable[..., ServerThread], tmp_path: Path, upstream: ServerThread
) -> tuple[ServerThread, Rig]:
    spans, metrics = InMemorySpanExporter(), InMemoryMetricReader()
    telemetry = build_telemetry(
        TelemetrySettings(), [], span_exporter=spans, metric_reader=metrics, environ={}
    )
    proxy = start_proxy(proxy_settings(tmp_path, upstream.url), telemetry=telemetry)
    return proxy, Rig(telemetry, spans, metrics)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_through_the_proxy_the_upstream_continues_the_callers_trace_with_the_footprint(
    traced: tuple[ServerThread, Rig],
    upstream: ServerThread,
    upstream_log: UpstreamLog,
    stream: bool,
) -> None:
    proxy, rig = traced
    response = ask(
        proxy, stream=stream, headers={**CALLER_HEADERS, "x-request-id": "t-1"}, max_tokens=64
    )
    assert response.status_code == 200
    client, server = rig.span(SpanKind.CLIENT), rig.span(SpanKind.SERVER)

    sent = upstream_log.headers[-1]
    assert sent["traceparent"] == f"00-{CALLER_TRACE}-{client.context.span_id:016x}-01"
    assert sent["tracestate"] == "vendor=opaque"
    assert sent["baggage"] == "user.session=abc123"
    assert format(server.parent.span_id, "016x") == CALLER_SPAN
    assert client.parent.span_id == server.context.span_id

    told = reported(response)
    attributes = client.attributes
    for figure in FIGURES:
        assert attributes[f"footprint.{figure}"] == pytest.approx(told[figure], rel=1e-5)
    assert attributes["footprint.method"] == told["method"]
    assert attributes["footprint.zone"] == told["zone"]
    assert attributes["footprint.team"] == "default"
    assert client.name == "chat echo"
    assert server.name == "POST /v1/chat/completions"
    assert attributes["gen_ai.provider.name"] == "test"
    assert attributes["gen_ai.request.model"] == "echo"
    assert attributes["gen_ai.response.model"] == "echo"
    assert attributes["gen_ai.request.max_tokens"] == 64
    assert attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert attributes["gen_ai.usage.input_tokens"] == 2  # the test upstream counts words
    assert attributes["gen_ai.usage.output_tokens"] == 8
    assert (attributes["server.address"], attributes["server.port"]) == ("127.0.0.1", upstream.port)
    record = httpx.get(f"{proxy.url}/v1/footprint/requests/t-1").json()
    assert record["trace_id"] == CALLER_TRACE


def test_two_calls_in_one_trace_sum_to_the_trace_footprint(
    traced: tuple[ServerThread, Rig],
) -> None:
    proxy, rig = traced
    answers = [ask(proxy, headers=CALLER_HEADERS), ask(proxy, stream=True, headers=CALLER_HEADERS)]
    clients = [s for s in rig.finished() if s.kind == SpanKind.CLIENT]
    assert len(clients) == 2
    summary = httpx.get(f"{proxy.url}/v1/footprint/traces/{CALLER_TRACE}").json()
    assert summary["requests"] == 2
    for figure in ("energy_j", "co2e_g", "water_ml"):
        spans_sum = sum(s.attributes[f"footprint.{figure}"] for s in clients)
        assert summary[figure] == pytest.approx(spans_sum, rel=1e-9)
        assert summary[figure] == pytest.approx(sum(reported(a)[figure] for a in answers), rel=1e-5)


ADMIN_KEY = "admin-" + "k" * 40


def test_through_the_proxy_every_failure_of_the_error_table_is_an_error_span(
    start_proxy: Callable[..., ServerThread],
    tmp_path: Path,
    upstream: ServerThread,
    dead_port: int,
) -> None:
    spans = InMemorySpanExporter()
    telemetry = build_telemetry(TelemetrySettings(), [], span_exporter=spans, environ={})
    settings = proxy_settings(
        tmp_path,
        upstream.url,
        server={"auth": "keys", "max_body_bytes": 2048},
        upstreams=[
            {
                "name": "test",
                "base_url": f"{upstream.url}/v1",
                "read_timeout_s": 1.0,
                "models": ["echo", "slow", "error500", "drop"],
                "meter": {"kind": "estimate"},
                "hardware": {"active_params_b": 8.0, "total_params_b": 8.0},
            },
            {
                "name": "dead",
                "base_url": f"http://127.0.0.1:{dead_port}/v1",
                "models": ["gone"],
                "connect_timeout_s": 1.0,
                "meter": {"kind": "estimate"},
                "hardware": {"active_params_b": 8.0, "total_params_b": 8.0},
            },
        ],
    )
    proxy = start_proxy(settings, telemetry=telemetry, environ={"FOOTPRINT_ADMIN_KEY": ADMIN_KEY})
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}

    def key(team: str, models: list[str]) -> dict[str, str]:
        httpx.post(f"{proxy.url}/admin/teams", json={"name": team}, headers=admin)
        made = httpx.post(
            f"{proxy.url}/admin/keys", json={"team": team, "models": models}, headers=admin
        )
        assert made.status_code == 201, made.text
        return {"authorization": f"Bearer {made.json()['key']}"}

    search = key("search", ["echo", "slow", "error500", "drop", "gone", "nope"])
    broke = key("broke", ["*"])
    spent = httpx.put(
        f"{proxy.url}/admin/budgets",
        headers=admin,
        json={"team": "broke", "metric": "requests", "limit": 0, "period": "day"},
    )
    assert spent.status_code == 200, spent.text

    def post(rid: str, headers: dict[str, str], **kw: Any) -> int:
        return httpx.post(
            f"{proxy.url}/v1/chat/completions",
            timeout=30,
            headers={**headers, "x-request-id": rid},
            **kw,
        ).status_code

    chat = {"messages": MESSAGES}
    statuses = {
        "bad-json": post("bad-json", search, content=b"{not json"),
        "no-key": post("no-key", {}, json={"model": "echo", **chat}),
        "not-allowed": post("not-allowed", search, json={"model": "forbidden", **chat}),
        "no-model": post("no-model", search, json={"model": "nope", **chat}),
        "too-large": post(
            "too-large",
            search,
            json={"model": "echo", "messages": [{"role": "user", "content": "x" * 4096}]},
        ),
        "no-budget": post("no-budget", broke, json={"model": "echo", **chat}),
        "unreachable": post("unreachable", search, json={"model": "gone", **chat}),
        "too-slow": post("too-slow", search, json={"model": "slow", **chat}),
        "upstream-500": post("upstream-500", search, json={"model": "error500", **chat}),
        "cut-off": post("cut-off", search, json={"model": "drop", "stream": True, **chat}),
    }
    expected = {  # request → (status, error.type, whether the upstream was called)
        "bad-json": (400, "invalid_request_error", False),
        "no-key": (401, "invalid_api_key", False),
        "not-allowed": (403, "permission_error", False),
        "no-model": (404, "model_not_found", False),
        "too-large": (413, "request_too_large", False),
        "no-budget": (429, "footprint_budget_exceeded", False),
        "unreachable": (502, "upstream_unavailable", True),
        "too-slow": (504, "upstream_timeout", True),
        "upstream-500": (500, "upstream_500", True),
        "cut-off": (200, "upstream_cut_off", True),
    }
    assert statuses == {rid: e[0] for rid, e in expected.items()}

    telemetry.force_flush()
    finished = list(spans.get_finished_spans())
    servers = {
        s.attributes["footprint.request_id"]: s for s in finished if s.kind == SpanKind.SERVER
    }
    assert set(servers) == set(expected)
    for rid, (status, error_type, called) in expected.items():
        server = servers[rid]
        assert server.status.status_code == StatusCode.ERROR, rid
        assert server.attributes["error.type"] == error_type, rid
        assert server.attributes["http.response.status_code"] == status, rid
        children = [
            s
            for s in finished
            if s.parent is not None and s.parent.span_id == server.context.span_id
        ]
        assert len(children) == (1 if called else 0), rid
        for child in children:
            assert child.kind == SpanKind.CLIENT
            assert child.status.status_code == StatusCode.ERROR
            assert child.attributes["error.type"] == error_type
            assert child.attributes["footprint.energy_j"] >= 0  # still metered


def test_through_the_proxy_an_otlp_receiver_gets_the_figures_and_its_loss_fails_nothing(
    start_proxy: Callable[..., ServerThread],
    tmp_path: Path,
    upstream: ServerThread,
) -> None:
    with OtlpReceiver() as receiver:
        settings = proxy_settings(
            tmp_path,
            upstream.url,
            telemetry={"otlp_endpoint": receiver.url, "metric_export_interval_ms": 60_000},
        )
        proxy = start_proxy(settings)
        telemetry = proxy.server.config.app.state.telemetry
        response = ask(proxy, headers=CALLER_HEADERS)
        told = reported(response)
        telemetry.force_flush()
        assert receiver.wait_for(
            lambda r: len(r.spans) >= 2 and bool(r.latest_points("footprint.energy"))
        )
        (client,) = [s for s in receiver.spans if s.kind == "CLIENT"]
        assert client.trace_id == CALLER_TRACE
        assert client.name == "chat echo"
        for figure in FIGURES:
            assert client.attributes[f"footprint.{figure}"] == pytest.approx(told[figure], rel=1e-5)
        (energy,) = receiver.latest_points("footprint.energy")
        assert energy.value == pytest.approx(told["energy_j"], rel=1e-5)
        assert energy.attributes == {
            "team": "default",
            "model": "echo",
            "upstream": "test",
            "method": told["method"],
        }

        receiver.stop()
        for i in range(20):
            answer = ask(proxy, stream=bool(i % 2))
            assert answer.status_code == 200
            assert float(reported(answer)["energy_j"]) > 0
        telemetry.shutdown(timeout_s=0.5)  # the app's own shutdown then has nothing left


def test_metrics_endpoint_counters_equal_the_sum_of_what_callers_were_told(
    proxy: ServerThread,
) -> None:
    answers = [ask(proxy, stream=bool(i % 2), max_tokens=16 + i) for i in range(6)]
    assert all(a.status_code == 200 for a in answers)
    response = httpx.get(f"{proxy.url}/metrics")
    assert response.status_code == 200
    families = {f.name: f.samples for f in text_string_to_metric_families(response.text)}
    for family, figure in (
        ("footprint_energy_joules", "energy_j"),
        ("footprint_co2e_grams", "co2e_g"),
        ("footprint_water_mL", "water_ml"),
    ):
        exported = sum(s.value for s in families[family] if s.name.endswith("_total"))
        told = sum(reported(a)[figure] for a in answers)
        assert exported == pytest.approx(told, rel=1e-5), family
    requests = sum(s.value for s in families["footprint_requests"] if s.name.endswith("_total"))
    assert requests == 6
    first_chunk = [
        s
        for s in families["gen_ai_client_operation_time_to_first_chunk_seconds"]
        if s.name.endswith("_count")
    ]
    assert sum(s.value for s in first_chunk) == 3  # streamed requests only


def test_the_client_span_carries_the_market_figure_only_where_there_is_one(rig: Rig) -> None:
    call = FakeCall(make_upstream("green", "http://127.0.0.1:9/v1"), model="m")
    run_request(rig.telemetry, call, fp=replace(footprint(41.7), co2e_market_g=0.00123))
    run_request(rig.telemetry, call, fp=footprint(41.7))
    spans = [s for s in rig.finished() if s.kind == SpanKind.CLIENT]
    market = [dict(s.attributes or {}).get("footprint.co2e_market_g") for s in spans]
    assert market == [0.00123, None]
