"""Validate the NVML meter and the attribution on a real GPU (issue 7).

One command on the GPU machine (bench/gpu_README.md has the exact line):

    python bench/gpu_validate.py --out $OUT

1. starts bench/gpu_workload.py, a random-weight Llama-shaped model (~1.24e9 parameters, bf16)
   behind an OpenAI chat API with continuous batching;
2. starts Footprint in front of it, in this process (`proxy.app.create_app` under uvicorn on a
   thread), from a generated footprint.toml with `meter.kind = "nvml"`, so the meter's idle
   account and its own counter reading can be read directly;
3. reads the GPU's energy counter itself, every 10 ms on a side thread, independently of the
   meter;
4. drives three phases: idle (10 s), 10 requests one after another (each sized to last about
   3 s), 16 requests at once with mixed prompt and output lengths;
5. writes `gpu_validate.json` under --out and prints a table.

`--dry-run` does the same on the CPU with the tiny model and the simulated GPU of
tests/meters/fake_pynvml.py (the simulation's power follows the requests this script sends),
so everything but the real counters is exercised without a GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python bench/gpu_validate.py` from anywhere
    sys.path.insert(0, str(ROOT))

from bench.gpu_analysis import (  # noqa: E402 - needs ROOT on the path first
    MJ_PER_J,
    MeterSnapshot,
    build_report,
    format_table,
)
from bench.gpu_checks import format_checks  # noqa: E402
from bench.gpu_client import FakeGpuHooks, Hooks, prompt_of, say, send_chat  # noqa: E402
from bench.gpu_phases import Plan19  # noqa: E402


@dataclass(frozen=True)
class Plan:
    """How long each phase runs and what it sends."""

    idle_s: float = 10.0
    sequential: int = 10
    sequential_target_s: float = 3.0  # each sequential request is sized to last about this
    sequential_gap_s: float = 0.5  # quiet between sequential requests: separate ticks
    sequential_prompt_chars: int = 800
    concurrent: int = 16
    poll_s: float = 0.01
    settle_s: float = 1.0

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            idle_s=1.0,
            sequential=3,
            sequential_target_s=0.3,
            sequential_gap_s=0.2,
            concurrent=4,
            settle_s=0.3,
        )


class CounterPoller:
    """Reads `nvmlDeviceGetTotalEnergyConsumption` every `period_s` on its own thread.

    Keeps the points where the value changed (time of the first read that saw it, mJ), how many
    reads it made, and its own CPU time, so the report can say how often the counter moves and
    what a read costs.
    """

    def __init__(
        self,
        nvml: ModuleType,
        gpu_index: int = 0,
        period_s: float = 0.01,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.nvml = self._nvml = nvml
        self.handle = self._handle = nvml.nvmlDeviceGetHandleByIndex(gpu_index)
        self.period_s = period_s
        self._clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gpu-validate-poller", daemon=True)
        self.changes: list[tuple[float, int]] = []
        self.read_times: list[float] = []
        self.cpu_s = 0.0

    def read_mj(self) -> tuple[float, int]:
        """Read the counter now (any thread): (time, mJ)."""
        value = int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
        return self._clock(), value

    def start(self) -> None:
        self._record(*self.read_mj())
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _record(self, time_s: float, value_mj: int) -> None:
        with self._lock:
            self.read_times.append(time_s)
            if not self.changes or self.changes[-1][1] != value_mj:
                self.changes.append((time_s, value_mj))

    def _run(self) -> None:
        cpu_start = time.thread_time()
        next_s = self._clock()
        while not self._stop.is_set():
            self._record(*self.read_mj())
            next_s += self.period_s
            self._stop.wait(max(0.0, next_s - self._clock()))
        self.cpu_s = time.thread_time() - cpu_start

    def timeline(self) -> list[tuple[float, int]]:
        with self._lock:
            return list(self.changes)


def take_snapshot(
    meter: Any,
    poller: CounterPoller,
    wait_s: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
) -> MeterSnapshot:
    """A consistent reading of the meter, taken just after its sampler saw the counter move,
    so that its last reading and ours are of the same counter value (`aligned`)."""

    def meter_counter() -> float:
        return sum(r.energy_j for r in meter.gpu_readings())

    start = meter_counter()
    deadline = time.monotonic() + wait_s
    while meter_counter() == start and time.monotonic() < deadline:
        sleep(0.002)
    for _ in range(50):
        before = meter_counter()
        own_time_s, own_mj = poller.read_mj()
        idle_j, measured_j = meter.idle_energy_j, meter.measured_energy_j
        if meter_counter() == before:
            return MeterSnapshot(
                time_s=own_time_s,
                idle_j=idle_j,
                measured_j=measured_j,
                meter_counter_j=before,
                own_counter_j=own_mj / MJ_PER_J,
                aligned=abs(own_mj / MJ_PER_J - before) < 1e-6,
            )
    raise RuntimeError("the meter's readings never held still for a snapshot")


def sampler_thread() -> threading.Thread | None:
    for thread in threading.enumerate():
        if thread.name.startswith("footprint-sampler"):
            return thread
    return None


def thread_cpu_s(thread: threading.Thread | None) -> float | None:
    """CPU time another thread of this process has used (Linux/Unix)."""
    if thread is None or thread.ident is None or not hasattr(time, "pthread_getcpuclockid"):
        return None
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
    except OSError:
        return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def footprint_toml(
    *,
    port: int,
    upstream_url: str,
    db_path: Path,
    params_b: float,
    accelerator: str,
    tick_s: float = 0.1,
    activity_url: str = "",
    local: bool = False,
) -> str:
    """A footprint.toml for one proxy; with `activity_url`, `activity = "engine"` there; with
    `local`, `activity = "local"` (the issue-7 run's split, over the requests it saw)."""
    activity = f'activity = "engine"\nactivity_url = "{activity_url}"\n' if activity_url else ""
    activity = 'activity = "local"\n' if local else activity
    return f"""\
[server]
host = "127.0.0.1"
port = {port}
auth = "none"
log_level = "warning"

[ledger]
url = "sqlite:///{db_path}"

[metering]
tick_s = {tick_s}

[[upstreams]]
name = "gpu"
base_url = "{upstream_url}"
models = ["*"]
zone = "WORLD"

[upstreams.meter]
kind = "nvml"
gpus = [0]
{activity}
[upstreams.hardware]
accelerator = "{accelerator}"
gpus = 1
active_params_b = {params_b:.4f}
total_params_b = {params_b:.4f}
"""


def engine_attribution_available() -> bool:
    """Whether this checkout's config has `[upstreams.meter] activity` (issue 10)."""
    from proxy.config import MeterSettings

    return "activity" in MeterSettings.model_fields


def accelerator_name(gpu_name: str) -> str:
    """The estimator's accelerator label for an NVML device name."""
    for marker, label in (("H200", "H200"), ("H100", "H100-SXM"), ("A100", "A100")):
        if marker in gpu_name:
            return label
    return gpu_name or "unknown"


class ProxyThread:
    """Footprint (`create_app`) under uvicorn on a thread of this process."""

    def __init__(self, app: Any, port: int) -> None:
        import uvicorn

        self.app = app
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="footprint", daemon=True)

    def start(self, timeout_s: float = 60.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the proxy did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)

    @property
    def upstream(self) -> Any:
        return self.app.state.services.router.upstreams[0]


def start_workload(args: argparse.Namespace, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        str(ROOT / "bench" / "gpu_workload.py"),
        "--preset", args.preset,
        "--device", args.device,
        "--dtype", "bfloat16" if args.device == "cuda" else "float32",
        "--port", str(port),
        "--max-batch", str(max(16, args.plan.concurrent)),
        "--max-len", str(args.max_len),
    ]  # fmt: skip
    log_file = log_path.open("wb")
    return subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT)


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the workload exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/v1/models", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"the workload did not answer within {timeout_s:.0f} s")


def open_nvml(args: argparse.Namespace) -> tuple[ModuleType, Hooks, dict[str, Any]]:
    """The NVML module (real, or the simulated GPU for --fake-nvml) and the GPU's identity."""
    if args.fake_nvml:
        sys.path.insert(0, str(ROOT))
        from tests.meters.fake_pynvml import FakeNvml

        fake = FakeNvml(
            idle_w=60.0, w_per_request=40.0, j_per_token=0.02, j_per_prompt_token=0.002,
            update_s=0.0 if args.issue7 else 0.1,  # issue 19: as the H200's driver, 100 ms
        )  # fmt: skip
        nvml, hooks = fake.module, FakeGpuHooks(fake)
    else:
        import pynvml

        nvml, hooks = pynvml, Hooks()
    nvml.nvmlInit()
    handle = nvml.nvmlDeviceGetHandleByIndex(0)
    name = nvml.nvmlDeviceGetName(handle)
    driver = getattr(nvml, "nvmlSystemGetDriverVersion", lambda: "n/a")()
    info = {
        "name": name.decode() if isinstance(name, bytes) else str(name),
        "driver": driver.decode() if isinstance(driver, bytes) else str(driver),
        "simulated": bool(args.fake_nvml),
    }
    return nvml, hooks, info


async def drive(
    args: argparse.Namespace, proxy: ProxyThread, poller: CounterPoller, hooks: Hooks
) -> dict[str, Any]:
    """The three phases; returns the raw material of the report."""
    import httpx

    plan: Plan = args.plan
    meter = proxy.upstream.meter
    base = f"http://127.0.0.1:{args.proxy_port}"
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base, timeout=120.0, limits=limits) as client:
        # Warm-up: the first request loads the relay's paths; the second measures the decode
        # rate alone, which sizes the sequential requests.
        for i, tokens in enumerate((32, 128)):
            warm = await send_chat(
                client, request_id=f"gpuv-warm-{i}", phase="warmup", prompt=prompt_of(400, i),
                max_tokens=tokens, hooks=hooks,
            )  # fmt: skip
            if warm.error or warm.first_token_s is None:
                raise RuntimeError(f"warm-up request failed: {warm.error or 'no tokens'}")
        rate = max(1.0, (warm.chunks - 1) / max(1e-3, warm.end_s - warm.first_token_s))
        room = args.max_len - plan.sequential_prompt_chars // 4 - 16
        # The warm-up rate undershoots on a cold GPU (kernels still compiling); 256 tokens keep
        # every sequential request past 2 s at the ~85 tok/s measured on an H200.
        sequential_tokens = int(min(room, max(256, rate * plan.sequential_target_s)))
        await asyncio.sleep(plan.settle_s)

        cpu = {
            "sampler_start": thread_cpu_s(sampler_thread()),
            "process_start": time.process_time(),
        }
        say(f"decode alone {rate:.0f} tok/s: sequential requests get {sequential_tokens} tokens")
        first = await asyncio.to_thread(take_snapshot, meter, poller)
        say(f"idle phase, {plan.idle_s:.0f} s")
        await asyncio.sleep(plan.idle_s)
        after_idle = await asyncio.to_thread(take_snapshot, meter, poller)
        say(f"sequential phase, {plan.sequential} requests")

        sequential = []
        for i in range(plan.sequential):
            sequential.append(
                await send_chat(
                    client,
                    request_id=f"gpuv-seq-{i:02d}",
                    phase="sequential",
                    prompt=prompt_of(plan.sequential_prompt_chars, i),
                    max_tokens=sequential_tokens,
                    hooks=hooks,
                )
            )
            await asyncio.sleep(plan.sequential_gap_s)

        stats_before = await engine_stats(client, args.workload_url)
        fractions = (0.125, 0.25, 0.5, 1.0)
        prompt_chars = (200, 800, 2000, 400)
        say(f"concurrent phase, {plan.concurrent} requests")
        concurrent = await asyncio.gather(
            *(
                send_chat(
                    client,
                    request_id=f"gpuv-par-{i:02d}",
                    phase="concurrent",
                    prompt=prompt_of(prompt_chars[i % 4], 100 + i),
                    max_tokens=max(8, int(sequential_tokens * fractions[(i + i // 4) % 4])),
                    hooks=hooks,
                )
                for i in range(plan.concurrent)
            )
        )
        stats_after = await engine_stats(client, args.workload_url)
        await asyncio.sleep(plan.settle_s)
        last = await asyncio.to_thread(take_snapshot, meter, poller)
        say("phases done; reading the ledger and /metrics")
        cpu["sampler_end"] = thread_cpu_s(sampler_thread())
        cpu["process_end"] = time.process_time()

        for result in [*sequential, *concurrent]:
            try:
                response = await client.get(f"/v1/footprint/requests/{result.request_id}")
                if response.status_code == 200:
                    result.ledger = response.json()
            except httpx.HTTPError as exc:
                result.error = result.error or f"ledger: {exc}"
        metrics_text = ""
        with contextlib.suppress(httpx.HTTPError):
            metrics_text = (await client.get("/metrics")).text
    return {
        "warmup": warm,
        "decode_rate_tok_s": rate,
        "sequential_tokens": sequential_tokens,
        "snapshots": {"first": first, "after_idle": after_idle, "last": last},
        "sequential": sequential,
        "concurrent": concurrent,
        "cpu": cpu,
        "metrics_text": metrics_text,
        "engine_stats": {
            "overall": {k: v for k, v in stats_after.items() if k != "model"},
            "concurrent_phase": batching_between(stats_before, stats_after),
        },
    }


async def engine_stats(client: Any, workload_url: str) -> dict[str, Any]:
    """The workload's `/stats` (steps, tokens, batch sizes so far)."""
    response = await client.get(f"{workload_url}/stats")
    response.raise_for_status()
    stats: dict[str, Any] = response.json()
    return stats


def batching_between(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """How the engine batched between two `/stats` readings."""
    steps = after["steps"] - before["steps"]
    tokens = after["decode_tokens"] - before["decode_tokens"]
    old = before["batch_histogram"]
    histogram = {
        size: count - old.get(size, 0)
        for size, count in after["batch_histogram"].items()
        if count - old.get(size, 0) > 0
    }
    return {
        "decode_steps": steps,
        "decode_tokens": tokens,
        "mean_decode_batch": round(tokens / steps, 2) if steps else 0.0,
        "batch_histogram": histogram,
        "prefills": after["prefills"] - before["prefills"],
    }


def make_estimators(
    params_b: float, accelerator: str, concurrent: int
) -> dict[str, Callable[[str], Any]]:
    """EcoLogits' regression at its default batch (64, what the proxy uses) and at the batch
    each phase actually ran (1 alone; `concurrent` at once)."""
    from meters import Hardware
    from meters.estimate import Estimator, ModelCatalog

    hardware = Hardware(
        accelerator=accelerator, gpus=1, active_params_b=params_b, total_params_b=params_b
    )
    catalog = ModelCatalog([])  # the hardware settings give the size; no catalogue lookup
    default = Estimator(hardware, catalog=catalog)
    alone = Estimator(hardware, batch_size=1, catalog=catalog)
    together = Estimator(hardware, batch_size=max(1, concurrent), catalog=catalog)
    return {
        "ecologits_b64": lambda phase: default,
        "ecologits_actual_batch": lambda phase: alone if phase == "sequential" else together,
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", default=os.environ.get("OUT") or str(ROOT / "bench" / "results" / "gpu")
    )
    parser.add_argument("--device", default="cuda", help="where the workload runs")
    parser.add_argument("--preset", default="llama-1b", help="gpu_workload.py model preset")
    parser.add_argument("--max-len", type=int, default=4096, help="KV cache length per request")
    parser.add_argument("--fake-nvml", action="store_true", help="simulated GPU counters")
    parser.add_argument("--quick", action="store_true", help="short phases")
    parser.add_argument(
        "--dry-run", action="store_true", help="CPU, tiny model, simulated counters, short phases"
    )
    parser.add_argument("--ready-timeout-s", type=float, default=240.0)
    parser.add_argument(
        "--issue7", action="store_true", help="the issue-7 phases (idle, sequential, concurrent)"
    )
    args = parser.parse_args(argv)
    if args.dry_run:
        args.device, args.preset, args.fake_nvml, args.quick = "cpu", "tiny", True, True
        args.max_len = min(args.max_len, 1024)
    args.plan = Plan.quick() if args.quick else Plan()
    args.plan19 = Plan19.quick() if args.quick else Plan19()
    args.proxy_port = free_port()
    args.workload_url = ""
    return args


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(f"stopped by signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plan = asdict(args.plan) if args.issue7 else asdict(args.plan19)
    report: dict[str, Any] = {"issue": 7 if args.issue7 else 19, "plan": plan, "errors": []}
    workload: subprocess.Popen[bytes] | None = None
    proxy: ProxyThread | None = None
    poller: CounterPoller | None = None
    started = time.monotonic()
    signal.signal(signal.SIGTERM, _stop_on_sigterm)  # `timeout` still gets the report written
    try:
        import httpx

        from proxy.app import create_app
        from proxy.config import load_settings

        nvml, hooks, gpu = open_nvml(args)
        say(f"GPU {gpu['name']}, driver {gpu['driver']}; starting the workload")
        report["gpu"] = gpu
        port = free_port()
        args.workload_url = f"http://127.0.0.1:{port}"
        workload = start_workload(args, port, out / "workload.log")
        wait_ready(args.workload_url, workload, args.ready_timeout_s)
        say("workload ready; starting Footprint")
        model = httpx.get(f"{args.workload_url}/stats", timeout=5.0).json()["model"]
        report["model"] = model
        report["workload_ready_s"] = round(time.monotonic() - started, 1)
        if not args.issue7:
            from bench.gpu_run19 import run_issue19

            report.update(run_issue19(args, nvml, hooks, gpu, model))
            return 0
        accelerator = accelerator_name(gpu["name"])
        workdir = Path(tempfile.mkdtemp(prefix="gpu-validate-"))
        toml_path = workdir / "footprint.toml"
        toml_path.write_text(footprint_toml(
            port=args.proxy_port, upstream_url=f"{args.workload_url}/v1",
            db_path=workdir / "footprint.db", params_b=model["params_b"], accelerator=accelerator,
            local=engine_attribution_available(),  # the workload serves /metrics since issue 19
        ))  # fmt: skip
        settings = load_settings(toml_path, environ={})
        app = create_app(settings, nvml=nvml if args.fake_nvml else None)
        proxy = ProxyThread(app, args.proxy_port)
        proxy.start()
        say("Footprint ready; warm-up")
        poller = CounterPoller(nvml, 0, args.plan.poll_s)
        poller.start()
        raw = asyncio.run(drive(args, proxy, poller, hooks))
        poller.stop()
        estimators = make_estimators(model["params_b"], accelerator, args.plan.concurrent)
        proxy_estimator = proxy.upstream.estimator
        estimators["proxy_estimator"] = lambda phase: proxy_estimator
        report.update(build_report(gpu, model, raw, poller, estimators, settings.metering.tick_s))
    except (Exception, KeyboardInterrupt, SystemExit):
        report["errors"].append(traceback.format_exc())
    finally:
        if poller is not None:
            poller.stop()
        if proxy is not None:
            proxy.stop()
        if workload is not None:
            workload.terminate()
            try:
                workload.wait(timeout=15)
            except subprocess.TimeoutExpired:
                workload.kill()
        report["total_s"] = round(time.monotonic() - started, 1)
        (out / "gpu_validate.json").write_text(json.dumps(report, indent=2, default=str))
        table = format_table(report) if args.issue7 else format_checks(report)
        print(table, flush=True)
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
