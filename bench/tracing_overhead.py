"""What tracing and metrics add to a request, with an OTLP exporter on (issue 4: under 0.3 ms p50).

Two measurements:

    direct      the relay's telemetry calls for one request (begin → inject → end), timed in a
                loop, with nothing configured (metrics for /metrics only) and with OTLP traces
                and metrics going to a live local OTLP/HTTP receiver (the batch exporter thread
                runs meanwhile, as in production). Once flat out (thousands of requests a
                second: the exporter saturates, shares the GIL and drops spans past its queue),
                once paced at ~500 req/s.
    end-to-end  the same proxy twice in front of one fake upstream, telemetry off and OTLP on,
                requests alternating between them over kept-alive connections; the p50
                difference is what tracing costs a caller.

    .venv/bin/python bench/tracing_overhead.py                 # both, default sizes
    .venv/bin/python bench/tracing_overhead.py --requests 400 --loops 20000

Everything runs in this process (uvicorn threads, like the tests), so the end-to-end figures
include GIL contention between client, proxy and upstream; compare the two columns, not the
absolute numbers with bench/proxy_bench.py. Results go to stdout and bench/results/.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from meters import Footprint  # noqa: E402
from proxy.app import create_app  # noqa: E402
from proxy.config import TelemetrySettings, UpstreamSettings  # noqa: E402
from proxy.telemetry import Telemetry, build_telemetry  # noqa: E402
from tests.proxy.conftest import proxy_settings  # noqa: E402
from tests.proxy.otlp_receiver import OtlpReceiver  # noqa: E402
from tests.support.fake_upstream import make_upstream  # noqa: E402
from tests.support.servers import ServerThread  # noqa: E402

HEADERS = {
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "content-type": "application/json",
    "user-agent": "bench",
}
FOOTPRINT = Footprint(
    method="measured",
    gpu_energy_j=41.7,
    energy_j=62.1,
    co2e_g=0.0069,
    embodied_co2e_g=0.0004,
    water_ml=0.094,
    zone="KR",
    grid_gco2e_per_kwh=400.0,
    pue=1.2,
)


def percentiles_ms(samples_s: list[float]) -> dict[str, float]:
    ordered = sorted(samples_s)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000.0

    return {
        "p50_ms": at(0.50),
        "p90_ms": at(0.90),
        "p99_ms": at(0.99),
        "mean_ms": statistics.fmean(ordered) * 1000.0,
    }


@dataclass
class Call:
    """The fields of a relayed request that telemetry reads (proxy.telemetry.core.TracedCall)."""

    request_id: str
    endpoint: str
    started: float
    team: str
    model: str
    upstream: Any
    stream: bool
    prompt_tokens: int
    completion_tokens: int
    max_tokens: int
    response_model: str | None
    finish_reasons: list[str]
    first_chunk_s: float | None
    status: int = 200
    cancelled: bool = False
    error: str | None = None
    trace_id: str | None = None


def one_request(telemetry: Telemetry, upstream: Any, i: int) -> float:
    call = Call(
        request_id=f"req-{i}",
        endpoint="chat.completions",
        started=time.perf_counter(),
        team="search",
        model="llama-3.1-8b",
        upstream=upstream,
        stream=bool(i % 2),
        prompt_tokens=120,
        completion_tokens=256,
        max_tokens=512,
        response_model="llama-3.1-8b",
        finish_reasons=["stop"],
        first_chunk_s=0.05,
    )
    headers = dict(HEADERS)
    start = time.perf_counter()
    handle = telemetry.begin(headers, call)
    telemetry.inject(handle, headers)
    telemetry.end(handle, call, FOOTPRINT)
    return time.perf_counter() - start


def direct(loops: int, pace_s: float = 0.0) -> dict[str, Any]:
    upstream = SimpleNamespace(
        name="local-vllm",
        settings=UpstreamSettings(name="local-vllm", base_url="http://gpu-node:8000/v1"),
        meter=SimpleNamespace(),
    )
    results: dict[str, Any] = {}
    with OtlpReceiver() as receiver:
        configs = {
            "nothing configured (metrics for /metrics only)": TelemetrySettings(),
            "OTLP traces + metrics to a live receiver": TelemetrySettings(
                otlp_endpoint=receiver.url, metric_export_interval_ms=1000
            ),
        }
        for label, settings in configs.items():
            telemetry = build_telemetry(settings, [upstream], environ={})
            for i in range(500):  # warm-up
                one_request(telemetry, upstream, i)
            samples = []
            for i in range(loops):
                samples.append(one_request(telemetry, upstream, i))
                if pace_s:
                    time.sleep(pace_s)  # a steady request rate: the exporter keeps up
            telemetry.shutdown(timeout_s=5.0)
            results[label] = percentiles_ms(samples)
        results["spans received"] = len(receiver.spans)
    return results


def end_to_end(requests: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="tracing-bench-"))
    body = {"model": "echo", "messages": [{"role": "user", "content": "hello there"}]}
    samples: dict[str, list[float]] = {"telemetry off": [], "OTLP on": []}
    with ServerThread(make_upstream(words=16)) as upstream, OtlpReceiver() as receiver:
        (tmp / "off").mkdir()
        (tmp / "on").mkdir()
        off = ServerThread(create_app(proxy_settings(tmp / "off", upstream.url))).__enter__()
        on = ServerThread(
            create_app(
                proxy_settings(
                    tmp / "on",
                    upstream.url,
                    telemetry={"otlp_endpoint": receiver.url, "metric_export_interval_ms": 1000},
                )
            )
        ).__enter__()
        targets = {"telemetry off": off, "OTLP on": on}
        try:
            with httpx.Client(timeout=30) as client:
                for i in range(requests + 50):
                    for label, proxy in (
                        targets.items() if i % 2 else reversed(list(targets.items()))
                    ):
                        start = time.perf_counter()
                        response = client.post(
                            f"{proxy.url}/v1/chat/completions", json=body, headers=HEADERS
                        )
                        elapsed = time.perf_counter() - start
                        assert response.status_code == 200, response.text
                        if i >= 50:  # warm-up done
                            samples[label].append(elapsed)
        finally:
            on.server.config.app.state.telemetry.force_flush()
            spans = len(receiver.spans)
            on.__exit__(None, None, None)
            off.__exit__(None, None, None)
    results: dict[str, Any] = {label: percentiles_ms(s) for label, s in samples.items()}
    results["p50 difference ms"] = results["OTLP on"]["p50_ms"] - results["telemetry off"]["p50_ms"]
    results["spans received"] = spans
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loops", type=int, default=20_000)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument(
        "--paced-loops",
        type=int,
        default=3000,
        help="direct loops again at ~500 req/s (2 ms apart); 0 to skip",
    )
    parser.add_argument("--skip-end-to-end", action="store_true")
    args = parser.parse_args()

    report: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    report["direct"] = direct(args.loops)
    print(f"direct: begin + inject + end per request ({args.loops} loops)")
    for label, figures in report["direct"].items():
        if isinstance(figures, dict):
            print(
                f"  {label:50s} p50 {figures['p50_ms']:.3f} ms  p90 {figures['p90_ms']:.3f}"
                f"  p99 {figures['p99_ms']:.3f}"
            )
    if args.paced_loops:
        report["direct_paced_500_rps"] = direct(args.paced_loops, pace_s=0.002)
        print(f"direct, paced at ~500 req/s ({args.paced_loops} loops)")
        for label, figures in report["direct_paced_500_rps"].items():
            if isinstance(figures, dict):
                print(
                    f"  {label:50s} p50 {figures['p50_ms']:.3f} ms  p90 "
                    f"{figures['p90_ms']:.3f}  p99 {figures['p99_ms']:.3f}"
                )
    if not args.skip_end_to_end:
        report["end_to_end"] = end_to_end(args.requests)
        print(f"end to end: non-streaming chat, {args.requests} requests per proxy, alternating")
        for label, figures in report["end_to_end"].items():
            if isinstance(figures, dict):
                print(
                    f"  {label:50s} p50 {figures['p50_ms']:.3f} ms  p90 "
                    f"{figures['p90_ms']:.3f}  p99 {figures['p99_ms']:.3f}"
                )
        print(
            f"  p50 difference (OTLP on - off): {report['end_to_end']['p50 difference ms']:.3f} ms"
        )
    out = ROOT / "bench" / "results" / "tracing-overhead.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"written: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
