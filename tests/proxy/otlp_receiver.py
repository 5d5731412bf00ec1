"""A real OTLP/HTTP receiver for tests: an HTTP server on 127.0.0.1 that decodes
`ExportTraceServiceRequest` and `ExportMetricsServiceRequest` protobufs (opentelemetry-proto)
into plain records the tests can assert on."""

from __future__ import annotations

import gzip
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

_SPAN_KINDS = {1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
_STATUS = {0: "UNSET", 1: "OK", 2: "ERROR"}


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return tuple(_value(v) for v in value.array_value.values)
    if which == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    if which is None:
        return None
    return getattr(value, which)


def _attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs if isinstance(kv, KeyValue)}


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    status: str
    resource: dict[str, Any]


@dataclass(frozen=True)
class ReceivedPoint:
    metric: str
    unit: str
    kind: str  # "sum", "gauge" or "histogram"
    attributes: dict[str, Any]
    value: float  # the sum's or gauge's value; a histogram's sum
    count: int = 0  # a histogram's count


@dataclass
class OtlpReceiver:
    """Start with `with OtlpReceiver() as receiver:`; `receiver.url` is the OTLP base URL."""

    spans: list[ReceivedSpan] = field(default_factory=list)
    points: list[list[ReceivedPoint]] = field(default_factory=list)  # one list per export
    requests: int = 0

    def __post_init__(self) -> None:
        self._changed = threading.Condition()
        self._released = threading.Event()
        self._released.set()
        self.stalled_requests = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                if not receiver._released.is_set():
                    with receiver._changed:
                        receiver.stalled_requests += 1
                        receiver._changed.notify_all()
                    receiver._released.wait()  # a collector that accepts and never answers
                    return
                raw = self.rfile.read(int(self.headers.get("content-length", "0")))
                encoding = self.headers.get("content-encoding", "")
                if encoding == "gzip":
                    raw = gzip.decompress(raw)
                elif encoding == "deflate":
                    raw = zlib.decompress(raw)
                if self.path == "/v1/traces":
                    receiver._take_traces(raw)
                    answer = ExportTraceServiceResponse().SerializeToString()
                elif self.path == "/v1/metrics":
                    receiver._take_metrics(raw)
                    answer = ExportMetricsServiceResponse().SerializeToString()
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _take_traces(self, raw: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(raw)
        found: list[ReceivedSpan] = []
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    found.append(
                        ReceivedSpan(
                            name=span.name,
                            kind=_SPAN_KINDS.get(span.kind, str(span.kind)),
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            attributes=_attributes(span.attributes),
                            status=_STATUS.get(span.status.code, str(span.status.code)),
                            resource=resource,
                        )
                    )
        with self._changed:
            self.spans.extend(found)
            self.requests += 1
            self._changed.notify_all()

    def _take_metrics(self, raw: bytes) -> None:
        request = ExportMetricsServiceRequest.FromString(raw)
        found: list[ReceivedPoint] = []
        for resource_metrics in request.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    kind = metric.WhichOneof("data")
                    if kind in ("sum", "gauge"):
                        for point in getattr(metric, kind).data_points:
                            number = point.WhichOneof("value")
                            found.append(
                                ReceivedPoint(
                                    metric.name,
                                    metric.unit,
                                    kind,
                                    _attributes(point.attributes),
                                    float(getattr(point, number)),
                                )
                            )
                    elif kind == "histogram":
                        for point in metric.histogram.data_points:
                            found.append(
                                ReceivedPoint(
                                    metric.name,
                                    metric.unit,
                                    kind,
                                    _attributes(point.attributes),
                                    point.sum,
                                    point.count,
                                )
                            )
        with self._changed:
            self.points.append(found)
            self.requests += 1
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[OtlpReceiver], bool], timeout_s: float = 20.0) -> bool:
        """Wait until `predicate(self)` holds (checked on every export received)."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self), timeout=timeout_s)

    def latest_points(self, metric: str) -> list[ReceivedPoint]:
        """The points of `metric` in the most recent export that carried it (cumulative)."""
        with self._changed:
            for export in reversed(self.points):
                chosen = [p for p in export if p.metric == metric]
                if chosen:
                    return chosen
        return []

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def stall(self) -> None:
        """From now on, accept exports and never answer them (until `stop`)."""
        self._released.clear()

    def stop(self) -> None:
        """Stop listening: exporters from now on find nothing at this address."""
        self._released.set()
        self._server.shutdown()
        self._server.server_close()

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive():
            self.stop()
