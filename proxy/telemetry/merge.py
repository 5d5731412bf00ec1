"""`/metrics` across `footprint serve --workers N`: one exporter's view of N processes.

Each worker answers its own Prometheus text on a Unix socket of its own (`serve_metrics`);
the worker that gets `GET /metrics` reads the others' (`fetch`) and adds them to its own
(`merge`). Counters, histograms and summaries are sums over workers (every request is
counted by the one worker that served it); gauges and info (`target_info`), and the GPU's
own `hw.*` readings (every worker reads the same GPU counters), are the same reading in
every worker, so they are taken once (the largest), not summed.

prometheus_client's multiprocess mode would not do: the OpenTelemetry Prometheus exporter
is a custom collector, and multiprocess mode only sees prometheus_client's own metric types.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger("footprint.metrics")

_SUMMED = {"counter", "histogram", "summary", "gaugehistogram"}
_MACHINE_WIDE = ("hw_",)  # semantic-convention hardware metrics: one GPU, read by each
_FETCH_TIMEOUT_S = 5.0


def serve_metrics(path: Path, telemetry: Callable[[], Any]) -> socketserver.UnixStreamServer:
    """Answer `telemetry().prometheus_text()` to each connection on `path`, from a daemon
    thread (collecting blocks: it runs the meters' observable callbacks)."""

    class Answer(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            tel = telemetry()
            self.wfile.write(tel.prometheus_text()[0] if tel else b"")

    path.unlink(missing_ok=True)  # a worker started again after one that died
    server = socketserver.UnixStreamServer(str(path), Answer)
    threading.Thread(target=server.serve_forever, name="metrics-peer", daemon=True).start()
    return server


def fetch(path: Path) -> bytes | None:
    """A worker's Prometheus text; None when it does not answer (starting again, or gone)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(_FETCH_TIMEOUT_S)
            sock.connect(str(path))
            parts = []
            while chunk := sock.recv(65536):
                parts.append(chunk)
    except OSError as exc:
        log.warning("metrics of the worker at %s left out: %r", path, exc)
        return None
    return b"".join(parts)


def merge(texts: Iterable[bytes]) -> bytes:
    """Prometheus texts of several processes as one: see the module's docstring."""
    families: dict[str, tuple[str, str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text.decode()):
            _, _, samples = families.setdefault(
                family.name, (family.type, family.documentation, {})
            )
            summed = family.type in _SUMMED and not family.name.startswith(_MACHINE_WIDE)
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if key not in samples:
                    samples[key] = sample.value
                elif summed:
                    samples[key] += sample.value
                else:
                    samples[key] = max(samples[key], sample.value)
    lines: list[str] = []
    for family_name, (kind, documentation, samples) in families.items():
        # The text format names a counter by its samples' name (the parser drops `_total`).
        name = f"{family_name}_total" if kind == "counter" else family_name
        lines.append(f"# HELP {name} {_escape_help(documentation)}")
        lines.append(f"# TYPE {name} {kind}")
        for (sample_name, labels), value in samples.items():
            labelled = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels)
            lines.append(
                f"{sample_name}{{{labelled}}} {_number(value)}"
                if labels
                else f"{sample_name} {_number(value)}"
            )
    return ("\n".join(lines) + "\n").encode() if lines else b""


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else f"{value:.1f}"
