"""`Telemetry`: the request-path side of tracing and metrics. Cheap by design: one attribute
dict per span, set once; metric attributes built once per request; nothing that blocks.

The relay calls, per request: `begin` (request arrives) → `inject` (just before the upstream
call) → `end` (the meter closed) or `fail` (the proxy refused or lost the request). Spans are
exported by a batch processor on its own thread, so a slow or dead collector never reaches the
request path; metrics are read on the exporter's thread and on a `/metrics` scrape.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from functools import partial
from typing import Any, Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.metrics import CallbackOptions, Meter, NoOpMeter, Observation
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from meters import Footprint
from proxy.config import UpstreamSettings
from proxy.telemetry import names as n
from proxy.telemetry.labels import ModelLabels

log = logging.getLogger("footprint.telemetry")

_SCOPE = "footprint"


class TracedUpstream(Protocol):
    """What telemetry reads of an upstream."""

    @property
    def name(self) -> str: ...

    @property
    def settings(self) -> UpstreamSettings: ...


class TracedCall(Protocol):
    """What telemetry reads of a request (`proxy.relay.Call` is one); `begin` writes
    `trace_id`, for the ledger row."""

    trace_id: str | None

    @property
    def request_id(self) -> str: ...
    @property
    def endpoint(self) -> str: ...
    @property
    def started(self) -> float: ...
    @property
    def team(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def upstream(self) -> TracedUpstream | None: ...
    @property
    def stream(self) -> bool: ...
    @property
    def max_tokens(self) -> int: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def completion_tokens(self) -> int: ...
    @property
    def status(self) -> int: ...
    @property
    def cancelled(self) -> bool: ...
    @property
    def error(self) -> str | None: ...
    @property
    def first_chunk_s(self) -> float | None: ...
    @property
    def response_model(self) -> str | None: ...
    @property
    def finish_reasons(self) -> Sequence[str]: ...
    @property
    def route_attributes(self) -> Mapping[str, Any]: ...


class RequestTelemetry:
    """The per-request handle `begin` returns; the relay keeps it on `call.telemetry`."""

    __slots__ = ("call", "client_span", "context", "done", "server_span")

    def __init__(
        self, call: TracedCall, context: otel_context.Context | None, server_span: Any
    ) -> None:
        self.call = call
        self.context = context
        self.server_span = server_span
        self.client_span: Any = None
        self.done = False


# footprint.upstream.circuit_state's values.
_CIRCUIT_VALUES = {"closed": 0, "half-open": 1, "open": 2}


class Telemetry:
    """Spans and metrics for the proxy. Built by `build_telemetry`; tests may build one directly
    with an in-memory tracer and meter.

    `tracer` is None when no span exporter is configured: then no span is made, and only the
    caller's own trace id (from its `traceparent`) is noted on the request.
    """

    def __init__(
        self,
        *,
        tracer: Tracer | None = None,
        meter: Meter | None = None,
        semconv_latest_only: bool = False,
        prometheus: Any = None,
        flushers: Sequence[Any] = (),
        closers: Sequence[Callable[[float], object]] = (),
    ) -> None:
        self._tracer = tracer
        self._legacy_system = not semconv_latest_only
        self._propagator = CompositePropagator(
            [TraceContextTextMapPropagator(), W3CBaggagePropagator()]
        )
        self._traceparent = TraceContextTextMapPropagator()
        self._prometheus = prometheus  # (CollectorRegistry, lock) or None
        # Shut down in order with the time left (ms): span processors, tracer, meter provider.
        self._closers = list(closers)
        # What `force_flush` pushes out: the tracer provider and the periodic metric readers.
        # Not the Prometheus reader: it keeps what it collects until the next scrape.
        self._flushers = list(flushers)
        self._upstreams: list[Any] = []
        self._upstream_cache: dict[str, tuple[str, str, int]] = {}
        self._model_labels = ModelLabels()
        self._shut = False

        meter = meter if meter is not None else NoOpMeter(_SCOPE)
        # The footprint counters are kept as running totals here and reported by observable
        # counters when a reader collects: the request path pays one dict update instead of
        # the SDK's attribute checks and hashing for each of five measurements.
        self._footprint = _Totals((n.TEAM, n.MODEL, n.UPSTREAM, n.METHOD), width=3)
        self._requests = _Totals((n.TEAM, n.MODEL, n.UPSTREAM, n.METHOD, n.ERROR_TYPE), width=1)
        self._token_totals = _Totals((n.TEAM, n.MODEL, n.UPSTREAM, n.TOKEN_TYPE), width=1)
        for name, unit, totals, index, description in (
            (
                "footprint.energy",
                "J",
                self._footprint,
                0,
                "Facility energy of requests (accelerator + server overhead, times PUE)",
            ),
            (
                "footprint.co2e",
                "g",
                self._footprint,
                1,
                "Carbon of requests, operational plus embodied, grams CO2e",
            ),
            (
                "footprint.water",
                "mL",
                self._footprint,
                2,
                "Water of requests, on-site cooling plus off-site generation",
            ),
            (
                "footprint.requests",
                "{request}",
                self._requests,
                0,
                "Requests the proxy answered; failed ones carry error.type",
            ),
            (
                "footprint.tokens",
                "{token}",
                self._token_totals,
                0,
                "Input and output tokens of requests, per team",
            ),
        ):
            meter.create_observable_counter(
                name, callbacks=[partial(totals.observe, index)], unit=unit, description=description
            )
        self._tokens = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Number of input and output tokens used",
            explicit_bucket_boundaries_advisory=n.TOKEN_BUCKETS,
        )
        self._duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="GenAI operation duration",
            explicit_bucket_boundaries_advisory=n.DURATION_BUCKETS_S,
        )
        self._first_chunk = meter.create_histogram(
            "gen_ai.client.operation.time_to_first_chunk",
            unit="s",
            description="Time to the first chunk of a streamed response",
            explicit_bucket_boundaries_advisory=n.DURATION_BUCKETS_S,
        )
        meter.create_observable_counter(
            "footprint.idle_energy",
            callbacks=[self._observe_idle_energy],
            unit="J",
            description="GPU energy measured while no request was in flight, per upstream",
        )
        meter.create_observable_counter(
            "footprint.other_energy",
            callbacks=[self._observe_other_energy],
            unit="J",
            description=(
                "Engine work no request of this replica accounts for (other replicas, traffic "
                "that bypasses Footprint), per upstream"
            ),
        )
        meter.create_observable_counter(
            "hw.energy",
            callbacks=[self._observe_gpu_energy],
            unit="J",
            description="Energy consumed by the component",
        )
        meter.create_observable_gauge(
            "footprint.upstream.circuit_state",
            callbacks=[self._observe_circuits],
            unit="1",
            description="Circuit breaker per upstream: 0 closed, 1 half-open, 2 open",
        )
        meter.create_observable_gauge(
            "footprint.upstream.in_flight",
            callbacks=[self._observe_in_flight],
            unit="{request}",
            description="Requests in flight per upstream (routing's count)",
        )
        meter.create_observable_gauge(
            "hw.power",
            callbacks=[self._observe_gpu_power],
            unit="W",
            description="Instantaneous power consumed by the component",
        )

    # ---- upstreams -------------------------------------------------------------------------

    def watch_upstreams(self, upstreams: Iterable[Any]) -> None:
        """Upstreams whose meters feed `footprint.idle_energy`, `hw.energy` and `hw.power`."""
        self._upstreams = list(upstreams)
        self._model_labels.configure(self._upstreams)

    def _upstream_names(self, upstream: TracedUpstream) -> tuple[str, str, int]:
        """(provider name, server address, server port) of an upstream, worked out once."""
        name = upstream.name
        found = self._upstream_cache.get(name)
        if found is None:
            settings = upstream.settings
            address, port = n.server_address(settings.base_url)
            found = (n.provider_name(address, settings), address, port)
            self._upstream_cache[name] = found
        return found

    # ---- the request path ------------------------------------------------------------------

    def begin(self, headers: Mapping[str, str], call: TracedCall) -> RequestTelemetry:
        """A request arrived: continue the caller's trace, open the server span, note the
        trace id on `call` for the ledger."""
        if self._tracer is None:
            parent = self._traceparent.extract(headers)
            caller = trace.get_current_span(parent).get_span_context()
            if caller.is_valid:
                call.trace_id = format(caller.trace_id, "032x")
            return RequestTelemetry(call, None, None)
        parent = self._propagator.extract(headers)
        _operation, route = n.endpoint_names(call.endpoint)
        span = self._tracer.start_span(
            f"POST {route}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                n.HTTP_METHOD: "POST",
                n.HTTP_ROUTE: route,
                n.FOOTPRINT_REQUEST_ID: call.request_id,
            },
        )
        call.trace_id = format(span.get_span_context().trace_id, "032x")
        return RequestTelemetry(call, trace.set_span_in_context(span, parent), span)

    def inject(self, handle: RequestTelemetry, headers: MutableMapping[str, str]) -> None:
        """The upstream call is about to leave: open the client span and write its W3C headers
        (traceparent, tracestate, baggage) into `headers`."""
        if handle.context is None:
            return  # no tracing: the caller's own headers travel on unchanged
        call = handle.call
        if handle.client_span is not None:
            handle.client_span.end()
        upstream = call.upstream
        operation, _route = n.endpoint_names(call.endpoint)
        attributes: dict[str, Any] = {n.OPERATION: operation, n.REQUEST_MODEL: call.model}
        if upstream is not None:
            provider, address, port = self._upstream_names(upstream)
            attributes[n.PROVIDER] = provider
            if self._legacy_system:
                attributes[n.SYSTEM_PRE_1_37] = provider
            attributes[n.SERVER_ADDRESS] = address
            attributes[n.SERVER_PORT] = port
            attributes[n.FOOTPRINT_UPSTREAM] = upstream.name
        if call.max_tokens and operation != "embeddings":
            attributes[n.REQUEST_MAX_TOKENS] = call.max_tokens
        span = self._tracer.start_span(  # type: ignore[union-attr]
            f"{operation} {call.model}",
            context=handle.context,
            kind=SpanKind.CLIENT,
            attributes=attributes,
        )
        handle.client_span = span
        self._propagator.inject(headers, context=trace.set_span_in_context(span, handle.context))

    def end(self, handle: RequestTelemetry, call: TracedCall, footprint: Footprint) -> None:
        """The request's meter closed (success, upstream error, cut-off or disconnect): put the
        figures on the spans, end them, record the metrics. Runs once; later calls do nothing."""
        if handle.done:
            return
        handle.done = True
        upstream = call.upstream
        operation, _route = n.endpoint_names(call.endpoint)
        failed = call.status >= 400 or call.error is not None
        error_type = (call.error or str(call.status)) if failed else None
        provider, address, port = (
            self._upstream_names(upstream) if upstream is not None else ("", "", 0)
        )

        client = handle.client_span
        if client is not None and client.is_recording():
            attributes: dict[str, Any] = {
                n.INPUT_TOKENS: call.prompt_tokens,
                n.FOOTPRINT_METHOD: footprint.method,
                n.FOOTPRINT_GPU_ENERGY_J: footprint.gpu_energy_j,
                n.FOOTPRINT_ENERGY_J: footprint.energy_j,
                n.FOOTPRINT_CO2E_G: footprint.co2e_g,
                n.FOOTPRINT_EMBODIED_CO2E_G: footprint.embodied_co2e_g,
                n.FOOTPRINT_WATER_ML: footprint.water_ml,
                n.FOOTPRINT_ZONE: footprint.zone,
                n.FOOTPRINT_GRID: footprint.grid_gco2e_per_kwh,
                n.FOOTPRINT_TEAM: call.team,
                n.FOOTPRINT_STREAM: call.stream,
                n.HTTP_STATUS: call.status,
            }
            if operation != "embeddings":
                attributes[n.OUTPUT_TOKENS] = call.completion_tokens
            if call.response_model:
                attributes[n.RESPONSE_MODEL] = call.response_model
            if call.finish_reasons:
                attributes[n.FINISH_REASONS] = tuple(call.finish_reasons)
            if footprint.co2e_market_g is not None:
                attributes[n.FOOTPRINT_CO2E_MARKET_G] = footprint.co2e_market_g
            if call.cancelled:
                attributes[n.FOOTPRINT_CANCELLED] = True
            if error_type is not None:
                attributes[n.ERROR_TYPE] = error_type
            attributes.update(call.route_attributes)
            client.set_attributes(attributes)
            if error_type is not None:
                client.set_status(Status(StatusCode.ERROR, error_type))
        if client is not None:
            client.end()
        self._end_server(handle, call, error_type)

        # Metrics.
        model = self._model_labels.label(call.model, served=not failed)
        upstream_name = upstream.name if upstream is not None else ""
        self._footprint.add(
            (call.team, model, upstream_name, footprint.method),
            (footprint.energy_j, footprint.co2e_g, footprint.water_ml),
        )
        self._requests.add(
            (call.team, model, upstream_name, footprint.method, error_type or ""), (1,)
        )
        record_input = bool(call.prompt_tokens) or not failed
        record_output = operation != "embeddings" and (bool(call.completion_tokens) or not failed)
        if record_input:
            self._token_totals.add(
                (call.team, model, upstream_name, "input"), (call.prompt_tokens,)
            )
        if record_output:
            self._token_totals.add(
                (call.team, model, upstream_name, "output"), (call.completion_tokens,)
            )

        genai: dict[str, Any] = {
            n.OPERATION: operation,
            n.PROVIDER: provider,
            n.REQUEST_MODEL: model,
        }
        if address:
            genai[n.SERVER_ADDRESS] = address
            genai[n.SERVER_PORT] = port
        if call.response_model:
            genai[n.RESPONSE_MODEL] = call.response_model
        if record_input:
            self._tokens.record(call.prompt_tokens, {**genai, n.TOKEN_TYPE: "input"})
        if record_output:
            self._tokens.record(call.completion_tokens, {**genai, n.TOKEN_TYPE: "output"})
        if call.stream and call.first_chunk_s is not None:
            self._first_chunk.record(call.first_chunk_s, genai)
        if error_type is not None:
            genai[n.ERROR_TYPE] = error_type
        self._duration.record(time.perf_counter() - call.started, genai)

    def fail(self, handle: RequestTelemetry, call: TracedCall, error: BaseException) -> None:
        """The proxy answered the request with its own error (before the upstream was called,
        or after `end`). After `end` this does nothing; otherwise the spans are marked failed
        and ended, and the request counted."""
        if handle.done:
            return
        handle.done = True
        error_type = (
            getattr(error, "code", None)
            or getattr(error, "error_type", None)
            or type(error).__name__
        )
        status = getattr(error, "status_code", None) or call.status
        client = handle.client_span
        if client is not None:
            client.set_attributes({n.ERROR_TYPE: error_type, n.HTTP_STATUS: status})
            client.set_status(Status(StatusCode.ERROR, error_type))
            client.end()
        self._end_server(handle, call, error_type, status)
        upstream = call.upstream
        model = self._model_labels.label(call.model, served=False)
        self._requests.add(
            (call.team, model, upstream.name if upstream is not None else "", "", error_type),
            (1,),
        )
        if client is not None and upstream is not None:
            operation, _route = n.endpoint_names(call.endpoint)
            provider, address, port = self._upstream_names(upstream)
            self._duration.record(
                time.perf_counter() - call.started,
                {
                    n.OPERATION: operation,
                    n.PROVIDER: provider,
                    n.REQUEST_MODEL: model,
                    n.SERVER_ADDRESS: address,
                    n.SERVER_PORT: port,
                    n.ERROR_TYPE: error_type,
                },
            )

    def _end_server(
        self,
        handle: RequestTelemetry,
        call: TracedCall,
        error_type: str | None,
        status: int | None = None,
    ) -> None:
        span = handle.server_span
        if span is None:
            return
        if span.is_recording():
            attributes: dict[str, Any] = {
                n.HTTP_STATUS: status or call.status,
                n.FOOTPRINT_TEAM: call.team,
            }
            if call.model:
                attributes[n.REQUEST_MODEL] = call.model
            if error_type is not None:
                attributes[n.ERROR_TYPE] = error_type
            span.set_attributes(attributes)
            if error_type is not None:
                span.set_status(Status(StatusCode.ERROR, error_type))
        span.end()

    # ---- observable instruments ------------------------------------------------------------

    def _observe_idle_energy(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._observe_account("idle_energy_j")

    def _observe_other_energy(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._observe_account("other_energy_j")

    def _observe_account(self, name: str) -> Iterable[Observation]:
        """One running account of every upstream's meter that keeps it (J)."""
        for upstream in self._upstreams:
            account = getattr(upstream.meter, name, None)
            if account is None:
                continue
            try:
                value = account() if callable(account) else account
            except Exception as exc:  # a meter's failure must not break a scrape
                log.warning("upstream %s: %s unreadable: %s", upstream.name, name, exc)
                continue
            if value is not None:
                yield Observation(float(value), {n.UPSTREAM: upstream.name})

    def _observe_circuits(self, options: CallbackOptions) -> Iterable[Observation]:
        for upstream in self._upstreams:
            health = getattr(upstream, "health", None)
            if health is not None:
                state = _CIRCUIT_VALUES[health.breaker.state]
                yield Observation(state, {n.UPSTREAM: upstream.name})

    def _observe_in_flight(self, options: CallbackOptions) -> Iterable[Observation]:
        for upstream in self._upstreams:
            health = getattr(upstream, "health", None)
            if health is not None:
                yield Observation(health.in_flight, {n.UPSTREAM: upstream.name})

    def _gpu_readings(self) -> Iterable[tuple[Any, Any]]:
        for upstream in self._upstreams:
            readings = getattr(upstream.meter, "gpu_readings", None)
            if readings is None:
                continue
            try:
                found = list(readings())
            except Exception as exc:  # a meter's failure must not break a scrape
                log.warning("upstream %s: GPU readings unavailable: %s", upstream.name, exc)
                continue
            for reading in found:
                yield upstream, reading

    def _observe_gpu_energy(self, options: CallbackOptions) -> Iterable[Observation]:
        for upstream, reading in self._gpu_readings():
            energy_j = getattr(reading, "energy_j", None)
            if energy_j is not None:
                yield Observation(float(energy_j), _gpu_attributes(upstream, reading))

    def _observe_gpu_power(self, options: CallbackOptions) -> Iterable[Observation]:
        for upstream, reading in self._gpu_readings():
            power_w = getattr(reading, "power_w", None)
            if power_w is not None:
                yield Observation(float(power_w), _gpu_attributes(upstream, reading))

    # ---- export ----------------------------------------------------------------------------

    def prometheus_text(self) -> tuple[bytes, str]:
        """The metrics in Prometheus text format, and its content type. Blocking (it runs the
        observable callbacks): call it off the event loop."""
        if self._prometheus is None:
            return b"", _PROMETHEUS_CONTENT_TYPE
        from prometheus_client import generate_latest

        registry, lock = self._prometheus
        with lock:
            return generate_latest(registry), _PROMETHEUS_CONTENT_TYPE

    def force_flush(self, timeout_ms: int = 5_000) -> None:
        """Export what is buffered now (tests, and before shutdown)."""
        for flusher in self._flushers:
            flusher.force_flush(timeout_ms)

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Flush and stop every exporter, within `timeout_s` in all: a collector that is down
        costs at most that at exit, and the spans it did not take are dropped. Idempotent."""
        if self._shut:
            return
        self._shut = True
        deadline = time.monotonic() + timeout_s
        for close in self._closers:
            remaining_ms = max(0.0, (deadline - time.monotonic()) * 1000.0)
            try:
                close(remaining_ms)
            except Exception as exc:  # shutting down must go on with the others
                log.warning("telemetry: shutting down failed: %s", exc)


_PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Totals:
    """Running sums per attribute set, for observable counters: `add` on the request path (a
    dict update under an uncontended lock), `observe` when a reader collects. An attribute
    whose value is "" is left out of the reported set."""

    __slots__ = ("_keys", "_lock", "_sums", "_width")

    def __init__(self, keys: tuple[str, ...], width: int) -> None:
        self._keys = keys
        self._width = width
        self._lock = threading.Lock()
        self._sums: dict[tuple[str, ...], list[float]] = {}

    def add(self, key: tuple[str, ...], values: tuple[float, ...]) -> None:
        with self._lock:
            sums = self._sums.get(key)
            if sums is None:
                self._sums[key] = list(values)
            else:
                for i, value in enumerate(values):
                    sums[i] += value

    def observe(self, index: int, options: CallbackOptions) -> list[Observation]:
        with self._lock:
            snapshot = [(key, sums[index]) for key, sums in self._sums.items()]
        return [
            Observation(value, {k: v for k, v in zip(self._keys, key, strict=True) if v})
            for key, value in snapshot
        ]


def _gpu_attributes(upstream: Any, reading: Any) -> dict[str, str]:
    return {"hw.type": "gpu", "hw.id": str(reading.gpu_id), n.UPSTREAM: upstream.name}
