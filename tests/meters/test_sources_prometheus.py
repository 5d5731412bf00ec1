"""The Prometheus source against a real local HTTP server speaking DCGM exporter text."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from meters import MeterError
from meters.sources.prometheus import PrometheusSource
from tests.meters.fake_pynvml import ManualClock


def dcgm_text(energy_mj: dict[str, int], power_w: dict[str, float] | None = None) -> str:
    """What dcgm-exporter serves (labels as in its default collector set)."""
    lines = [
        "# HELP DCGM_FI_DEV_POWER_USAGE Power draw (in W).",
        "# TYPE DCGM_FI_DEV_POWER_USAGE gauge",
    ]
    for gpu, watts in (power_w or {}).items():
        lines.append(
            f'DCGM_FI_DEV_POWER_USAGE{{gpu="{gpu}",UUID="GPU-{gpu}",device="nvidia{gpu}",'
            f'modelName="NVIDIA H100 80GB HBM3",Hostname="node-1"}} {watts}'
        )
    lines += [
        "# HELP DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION Total energy consumption since boot (in mJ).",
        "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter",
    ]
    for gpu, mj in energy_mj.items():
        lines.append(
            f'DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{{gpu="{gpu}",UUID="GPU-{gpu}",'
            f'device="nvidia{gpu}",modelName="NVIDIA H100 80GB HBM3",Hostname="node-1"}} {mj}'
        )
    return "\n".join(lines) + "\n"


@dataclass
class Exporter:
    """A stand-in dcgm-exporter: serves whatever `body`/`status` say, after `delay_s`."""

    body: str = ""
    status: int = 200
    delay_s: float = 0.0
    scrapes: int = 0
    generation: int = 0  # for tests that serve an engine's token counter
    server: ThreadingHTTPServer = field(init=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/metrics"


@pytest.fixture
def exporter() -> Iterator[Exporter]:
    state = Exporter()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.scrapes += 1
            time.sleep(state.delay_s)
            payload = state.body.encode()
            try:
                self.send_response(state.status)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (the timeout test)

        def log_message(self, format: str, *args: object) -> None:
            pass

    state.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.server.daemon_threads = True
    thread = threading.Thread(target=state.server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield state
    state.server.shutdown()
    state.server.server_close()
    thread.join()


def test_dcgm_energy_is_read_per_gpu_in_joules(exporter: Exporter) -> None:
    clock = ManualClock()
    exporter.body = dcgm_text({"0": 5_000_000, "1": 7_000_000}, {"0": 312.5, "1": 290.0})
    source = PrometheusSource(exporter.url, gpus=["0", "1"], clock=clock)
    first = source.read()
    assert first.energy_j == {"0": 5000.0, "1": 7000.0}
    assert first.power_w == {"0": 312.5, "1": 290.0}
    exporter.body = dcgm_text({"0": 5_031_250, "1": 7_029_000})
    clock.advance(0.1)
    second = source.read()
    assert second.energy_j == {"0": pytest.approx(5031.25), "1": pytest.approx(7029.0)}
    assert second.time_s - first.time_s == pytest.approx(0.1)
    source.close()


def test_only_the_wanted_gpus_are_reported_and_a_missing_one_is_an_error(
    exporter: Exporter,
) -> None:
    exporter.body = dcgm_text({"0": 1000, "1": 2000, "2": 3000})
    assert PrometheusSource(exporter.url, gpus=["2"]).read().energy_j == {"2": 3.0}
    assert set(PrometheusSource(exporter.url).read().energy_j) == {"0", "1", "2"}
    with pytest.raises(MeterError, match=r"no energy for GPU\(s\) \['5'\]"):
        PrometheusSource(exporter.url, gpus=["5"]).read()


def test_the_agents_hw_energy_is_accepted_without_the_dcgm_name(exporter: Exporter) -> None:
    exporter.body = (
        "# TYPE hw_energy_joules counter\n"
        'hw_energy_joules_total{hw_id="0",hw_type="gpu"} 12.5\n'
        "# TYPE hw_power_watts gauge\n"
        'hw_power_watts{hw_id="0",hw_type="gpu"} 70.0\n'
    )
    sample = PrometheusSource(exporter.url, gpus=["0"]).read()
    assert sample.energy_j == {"0": 12.5}
    assert sample.power_w == {"0": 70.0}


def test_a_server_that_is_down_is_a_meter_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    source = PrometheusSource(f"http://127.0.0.1:{port}/metrics", timeout_s=1.0)
    with pytest.raises(MeterError, match="unreachable"):
        source.read()


def test_a_slow_server_times_out_as_a_meter_error(exporter: Exporter) -> None:
    exporter.body = dcgm_text({"0": 1000})
    exporter.delay_s = 1.0
    source = PrometheusSource(exporter.url, timeout_s=0.2)
    with pytest.raises(MeterError, match="timed out"):
        source.read()


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (500, "internal error", "answered HTTP 500"),
        (200, "<html><body>login required</body></html>", "not Prometheus text"),
        (200, "# TYPE node_load1 gauge\nnode_load1 0.5\n", "publishes neither"),
        (200, 'DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{gpu="0"} NaN\n', "energy is nan"),
    ],
)
def test_errors_and_garbage_are_meter_errors(
    exporter: Exporter, status: int, body: str, message: str
) -> None:
    exporter.status, exporter.body = status, body
    with pytest.raises(MeterError, match=message):
        PrometheusSource(exporter.url).read()


def test_a_value_that_stops_moving_goes_stale(exporter: Exporter) -> None:
    clock = ManualClock()
    exporter.body = dcgm_text({"0": 1_000_000})
    source = PrometheusSource(exporter.url, stale_after_s=5.0, clock=clock)
    source.read()
    for _ in range(4):  # the exporter's own interval is coarser than our tick: not stale yet
        clock.advance(1.0)
        source.read()
    clock.advance(1.5)
    with pytest.raises(MeterError, match=r"has not moved for 5\.5 s"):
        source.read()
    exporter.body = dcgm_text({"0": 1_060_000})  # it collects again
    clock.advance(1.0)
    assert source.read().energy_j == {"0": pytest.approx(1060.0)}


def test_the_exporters_own_timestamp_moving_keeps_a_flat_counter_fresh(
    exporter: Exporter,
) -> None:
    clock = ManualClock()
    source = PrometheusSource(exporter.url, stale_after_s=2.0, clock=clock)
    for step in range(5):
        exporter.body = (
            f'DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{{gpu="0"}} 1000 {1_700_000_000_000 + step}\n'
        )
        source.read()
        clock.advance(1.0)
    exporter.body = 'DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{gpu="0"} 1000 1700000000004\n'
    clock.advance(2.0)
    with pytest.raises(MeterError, match="has not moved"):
        source.read()


def test_an_exporter_counter_reset_is_filled_from_published_power(exporter: Exporter) -> None:
    clock = ManualClock()
    exporter.body = dcgm_text({"0": 9_000_000}, {"0": 200.0})
    source = PrometheusSource(exporter.url, clock=clock)
    before = source.read().energy_j["0"]
    exporter.body = dcgm_text({"0": 1_000}, {"0": 200.0})  # the GPU was reset
    clock.advance(0.5)
    after = source.read().energy_j["0"]
    assert after - before == pytest.approx(100.0)
    assert source.resets == 1
