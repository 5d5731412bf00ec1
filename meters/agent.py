"""`footprint agent`: publish local NVML energy counters as Prometheus text.

Runs beside a model server on a GPU host, so a proxy elsewhere reads it as a `prometheus`
meter. It publishes DCGM's metric name and unit (`DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION`, mJ,
label `gpu`), so one scraper reads the agent and NVIDIA's dcgm-exporter alike, and the
OpenTelemetry hardware convention's `hw.energy` (J) and `hw.power` (W) in Prometheus naming.

The counters are read on a fixed tick on a background thread (power integration on pre-Volta
GPUs needs a short tick); a scrape serves the newest reading, or 503 while the GPUs fail.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import ModuleType

from meters.constants import AGENT_DEFAULT_PORT
from meters.outage_log import OutageLog
from meters.sampler import DEFAULT_TICK_S
from meters.sources.base import EnergySample, EnergySource
from meters.types import MeterError

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# 9401, beside dcgm-exporter's 9400 so both can run on one node (meters.constants).
DEFAULT_PORT = AGENT_DEFAULT_PORT


def render_metrics(sample: EnergySample, names: dict[str, str] | None = None) -> str:
    """Prometheus text for one reading: DCGM's energy metric plus hw.energy / hw.power."""
    names = names or {}

    def dcgm_labels(gpu_id: str) -> str:
        model = names.get(gpu_id)
        escaped = "" if model is None else model.replace("\\", "\\\\").replace('"', '\\"')
        return f'gpu="{gpu_id}"' + (f',modelName="{escaped}"' if model else "")

    lines = [
        "# HELP DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION Total energy consumption since boot (in mJ).",
        "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter",
    ]
    for gpu_id, energy_j in sample.energy_j.items():
        energy_mj = round(energy_j * 1000.0)
        lines.append(f"DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{{{dcgm_labels(gpu_id)}}} {energy_mj}")
    if sample.power_w:
        lines += [
            "# HELP DCGM_FI_DEV_POWER_USAGE Power draw (in W).",
            "# TYPE DCGM_FI_DEV_POWER_USAGE gauge",
        ]
        for gpu_id, power_w in sample.power_w.items():
            lines.append(f"DCGM_FI_DEV_POWER_USAGE{{{dcgm_labels(gpu_id)}}} {power_w:.3f}")
    lines += [
        "# HELP hw_energy_joules Energy consumed by the component (OpenTelemetry hw.energy).",
        "# TYPE hw_energy_joules counter",
    ]
    for gpu_id, energy_j in sample.energy_j.items():
        lines.append(f'hw_energy_joules_total{{hw_id="{gpu_id}",hw_type="gpu"}} {energy_j:.3f}')
    if sample.power_w:
        lines += [
            "# HELP hw_power_watts Instantaneous power of the component (hw.power).",
            "# TYPE hw_power_watts gauge",
        ]
        for gpu_id, power_w in sample.power_w.items():
            lines.append(f'hw_power_watts{{hw_id="{gpu_id}",hw_type="gpu"}} {power_w:.3f}')
    return "\n".join(lines) + "\n"


class EnergyAgent:
    """Reads `source` every `tick_s` and serves the newest reading at `/metrics`."""

    def __init__(
        self,
        source: EnergySource,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        tick_s: float = DEFAULT_TICK_S,
        gpu_names: dict[str, str] | None = None,
    ) -> None:
        self.source = source
        self.tick_s = tick_s
        self._gpu_names = gpu_names or {}
        self._lock = threading.Lock()
        self._sample: EnergySample | None = None
        self._error: str | None = "no reading yet"
        self._stop = threading.Event()
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._threads: list[threading.Thread] = []
        self._outage_log = OutageLog(logger, "agent: GPU read")

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The metrics URL, for a `prometheus` meter."""
        host = str(self._server.server_address[0])
        return f"http://{host}:{self.port}/metrics"

    def read_once(self) -> None:
        """Read the source now and keep the reading (blocking)."""
        try:
            sample = self.source.read()
        except MeterError as exc:
            with self._lock:
                self._error = str(exc)
            self._outage_log.failed(str(exc))
            return
        self._outage_log.succeeded()
        with self._lock:
            self._sample, self._error = sample, None

    def body(self) -> tuple[int, str]:
        """What a scrape gets now: (HTTP status, text)."""
        with self._lock:
            sample, error = self._sample, self._error
        if error is not None or sample is None:
            return 503, f"# footprint agent: GPUs unreadable: {error}\n"
        return 200, render_metrics(sample, self._gpu_names)

    def start(self) -> None:
        """Take a first reading, then poll and serve on daemon threads."""
        self.read_once()
        poller = threading.Thread(target=self._poll, name="footprint-agent-poll", daemon=True)
        server = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},  # how soon stop() is noticed
            name="footprint-agent-http",
            daemon=True,
        )
        self._threads = [poller, server]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop serving and polling; release the source."""
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        for thread in self._threads:
            thread.join()
        self.source.close()

    def serve_forever(self) -> None:
        """Start, and block until interrupted (Ctrl-C)."""
        self.start()
        try:
            self._stop.wait()
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def _poll(self) -> None:
        while not self._stop.wait(self.tick_s):
            self.read_once()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        agent = self

        class MetricsHandler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] not in ("/metrics", "/"):
                    self.send_error(404, "only /metrics is served")
                    return
                status, text = agent.body()
                payload = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:
                logger.debug("agent: " + format, *args)

        return MetricsHandler


def run_agent(
    host: str,
    port: int,
    gpus: Sequence[int] | None = None,
    nvml: ModuleType | None = None,
    *,
    tick_s: float = DEFAULT_TICK_S,
) -> None:
    """Serve the local GPUs' energy counters until interrupted (the `footprint agent` command).
    `gpus=None` serves every GPU NVML sees. Raises `MeterError` when the GPUs cannot be read at
    start (no driver, no such GPU): an agent that could only ever answer 503 is a mistake to
    report, not to serve."""
    from meters.sources.nvml import NvmlSource, visible_gpu_indices

    if gpus is None:
        gpus = visible_gpu_indices(nvml)
    source = NvmlSource(gpus, nvml=nvml)
    try:
        source.read()
    except MeterError:
        with contextlib.suppress(MeterError):
            source.close()
        raise
    try:
        names = dict(zip(source.gpu_ids, source.gpu_names(), strict=True))
    except MeterError as exc:
        logger.warning("agent: could not read GPU names: %s", exc)
        names = {}
    agent = EnergyAgent(source, host=host, port=port, tick_s=tick_s, gpu_names=names)
    print(f"footprint agent: serving {len(source.gpu_ids)} GPU(s) at {agent.url}", flush=True)
    agent.serve_forever()
