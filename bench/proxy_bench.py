"""The proxy benchmark of issue 2: Footprint against direct, the bare Python floor and LiteLLM.

One run measures every target in turn against the same fake upstream
(`bench/fake_upstream.py`): the fake upstream and the load generators are pinned to one core,
the proxy under test to the other (`taskset -c`). Phases per target, after a short warm-up:

    a      max throughput, non-streaming, 32 connections, wrk (closed loop: its ceiling)
    b10    open loop at 10 req/s, latency from the scheduled send time (bench/loadgen.py)
    b100   open loop at 100 req/s
    c      streaming, 16 chunks 5 ms apart, 16 concurrent: time to first token and total

and for each proxy its CPU time per request (utime+stime of its process tree from
/proc/<pid>/stat, over the phase, divided by the requests answered) and its resident memory
(VmRSS) after the run. A Markdown table goes to stdout, everything to bench/results/*.json.

    .venv/bin/python bench/proxy_bench.py                       # all four, 10 s phases
    .venv/bin/python bench/proxy_bench.py --targets footprint,bare --phase-s 5
    .venv/bin/python bench/proxy_bench.py --experimental        # + aiohttp-transport variants
    .venv/bin/python bench/proxy_bench.py profile --target footprint   # py-spy under wrk load

LiteLLM runs from its own virtual environment (`--litellm`, default /tmp/litellm-venv), never
from the project's: `python -m venv /tmp/litellm-venv && /tmp/litellm-venv/bin/pip install
'litellm[proxy]'`. The `*-aiohttp` variants need `httpx-aiohttp` importable, e.g.
`pip install --target /tmp/aiohttp-extra httpx-aiohttp` and `--extra-path /tmp/aiohttp-extra`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

import loadgen  # noqa: E402  (bench/ is not a package)

LOAD_CORE = "0"  # fake upstream + load generators + py-spy
PROXY_CORE = "1"  # the proxy under test
UPSTREAM_PORT = 9100
PORTS = {
    "bare": 9201,
    "footprint": 9202,
    "litellm": 9203,
    "bare-aiohttp": 9204,
    "footprint-granian": 9205,
    "bare-httpx2": 9206,
    "footprint-old": 9207,
    "footprint-w1": 9208,
    "footprint-w2": 9209,
    "footprint-sync-normal": 9213,
    "bare-ours": 9210,
    "bare-raw-aiohttp": 9211,
    "bare-pyreqwest": 9212,
}
ALL_TARGETS = ("direct", "footprint", "bare", "litellm")
EXPERIMENTAL = ("bare-aiohttp", "bare-httpx2")
# Issue 17: `--old-tree` (a checkout of an older commit, run beside this one), and `--workers`
# 1 and 2 with budgets in Redis (what more than one worker needs), both on both cores.
OPTIONAL = (
    "footprint-old",
    "footprint-w1",
    "footprint-w2",
    "bare-ours",
    "bare-raw-aiohttp",
    "bare-pyreqwest",
    "footprint-granian",
    "footprint-sync-normal",
)
BOTH_CORES = "0,1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024

FOOTPRINT_TOML = """\
# Footprint with all metering on, in front of the benchmark's fake upstream.
[server]
host = "127.0.0.1"
port = {port}
auth = "none"
log_level = "warning"

[ledger]
url = "sqlite:///{ledger}"

[[upstreams]]
name = "fake"
base_url = "http://127.0.0.1:{upstream_port}/v1"
models = ["*"]
zone = "KR"

[upstreams.meter]
kind = "estimate"

[upstreams.hardware]
accelerator = "H100-SXM"
gpus = 1
active_params_b = 8.0
"""


# ---- processes ---------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        """SIGTERM to the server's own process group, then SIGKILL after 5 s."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)


def start(
    name: str,
    argv: list[str],
    core: str,
    log_dir: Path,
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
) -> Server:
    log_path = log_dir / f"{name}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            ["taskset", "-c", core, *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # its own process group, so stop() reaches its children
        )
    return Server(name, process, log_path)


def wait_ready(server: Server | None, url: str, timeout_s: float = 90.0) -> float:
    """Poll with the benchmark's own request until it answers 200; returns seconds waited."""
    body = loadgen.request_body(stream=False)
    began = time.monotonic()
    while time.monotonic() - began < timeout_s:
        if server is not None and server.process.poll() is not None:
            tail = server.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{server.name} exited while starting:\n{tail}")
        request = urllib.request.Request(
            url, data=body, headers={"content-type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                if answer.status == 200:
                    return time.monotonic() - began
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{url} not ready after {timeout_s} s")


def tree_pids(pid: int) -> list[int]:
    """`pid` and all its descendants (LiteLLM or uvicorn may fork a worker)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def cpu_s(pid: int) -> float:
    """utime+stime of the process tree, seconds (all threads included)."""
    total = 0
    for p in tree_pids(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / CLK_TCK


def rss_mb(pid: int) -> float:
    """VmRSS of the process tree, MB (10^6 bytes)."""
    total_kb = 0
    for p in tree_pids(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        except OSError:
            continue
    return round(total_kb * 1024 / 1e6, 1)


def pss_mb(pid: int) -> float:
    """Pss of the process tree, MB: each page shared by k processes counts 1/k, so forked
    workers' shared imports count once (VmRSS counts them in every worker)."""
    total_kb = 0
    for p in tree_pids(pid):
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total_kb += int(line.split()[1])
        except OSError:
            continue
    return round(total_kb * 1024 / 1e6, 1)


def thread_cpu_s(pid: int) -> dict[str, float]:
    """utime+stime per thread of `pid`, keyed "tid name", seconds."""
    found: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        found[f"{task.name} {name}"] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return found


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


# ---- targets -----------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    url: str
    server: Server | None = None
    ready_s: float = 0.0


def start_target(name: str, args: argparse.Namespace, work: Path, log_dir: Path) -> Target:
    upstream = f"http://127.0.0.1:{UPSTREAM_PORT}/v1"
    if name == "direct":
        return Target(name, f"{upstream}/chat/completions")
    port = PORTS[name]
    if not port_free(port):
        raise RuntimeError(f"port {port} for {name} is taken")
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    py = sys.executable
    extra_env: dict[str, str] = {}
    core, cwd = PROXY_CORE, ROOT
    if name in ("bare-aiohttp", "bare-pyreqwest", "footprint-granian") and args.extra_path:
        extra_env["PYTHONPATH"] = args.extra_path
    if name == "footprint-granian":  # its worker imports the app factory from here
        extra_env["PYTHONPATH"] = os.pathsep.join(p for p in (args.extra_path, str(BENCH)) if p)
    if name.startswith("bare"):
        argv = [py, str(BENCH / "bare_proxy.py"), "--upstream", upstream, "--port", str(port)]
        argv += ["--client", name.partition("-")[2] or "httpx"]
    elif name.startswith("footprint"):
        config = work / f"{name}.toml"
        ledger = work / f"{name}-ledger.db"
        if name == "footprint-sync-normal":  # the WAL fsynced at checkpoints, not per commit
            ledger = Path(f"{ledger}?synchronous=normal")
        config.write_text(
            FOOTPRINT_TOML.format(port=port, ledger=ledger, upstream_port=UPSTREAM_PORT)
        )
        argv = [py, "-m", "proxy.cli", "serve", "--config", str(config)]
        if name in ("footprint-w1", "footprint-w2"):
            with config.open("a") as toml:
                toml.write(f'\n[budgets]\nredis_url = "{args.redis_url}"\n')
            argv += ["--workers", name[-1]]
            core = BOTH_CORES
        elif name == "footprint-old":
            if not args.old_tree:
                raise RuntimeError("footprint-old needs --old-tree (a checkout of the old commit)")
            cwd = Path(args.old_tree).resolve()
            extra_env["PYTHONPATH"] = str(cwd)
        elif name == "footprint-granian":
            argv = [py, str(BENCH / "proxy_bench.py"), "serve-footprint-granian", str(config)]
    elif name == "litellm":
        exe = Path(args.litellm) / "bin" / "litellm"
        if not exe.exists():
            raise RuntimeError(f"{exe} not found: pip install 'litellm[proxy]' into {args.litellm}")
        argv = [
            str(exe),
            "--config",
            str(BENCH / "litellm_config.yaml"),
            "--port",
            str(port),
            "--num_workers",
            "1",
        ]
        extra_env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    else:
        raise ValueError(name)
    server = start(name, argv, core, log_dir, extra_env, cwd)
    target = Target(name, url, server)
    try:
        target.ready_s = wait_ready(server, url)
    except BaseException:
        server.stop()
        raise
    return target


def serve_footprint_granian(config: str) -> int:
    """Footprint's app exactly as `footprint serve` builds it, served by granian (Rust's
    hyper; its ASGI interface, one worker, one runtime thread, uvloop) instead of uvicorn:
    issue 17's candidate server. granian has none of `proxy/server.py`'s limits, so this is
    a measurement, not a way to run Footprint."""
    sys.path.insert(0, str(ROOT))
    from granian import Granian  # type: ignore[import-not-found]
    from granian.constants import Interfaces, Loops, RuntimeModes  # type: ignore[import-not-found]

    from proxy.config import load_settings

    settings = load_settings(config)
    os.environ["FOOTPRINT_BENCH_CONFIG"] = config
    Granian(
        "proxy_bench:_granian_app",
        address=settings.server.host,
        port=settings.server.port,
        interface=Interfaces.ASGI,
        factory=True,
        workers=1,
        runtime_mode=RuntimeModes.st,
        loop=Loops.uvloop,
        log_enabled=False,
    ).serve()
    return 0


def _granian_app() -> Any:
    sys.path.insert(0, str(ROOT))
    from proxy.app import create_app
    from proxy.config import load_settings

    return create_app(load_settings(os.environ["FOOTPRINT_BENCH_CONFIG"]))


# ---- phases ------------------------------------------------------------------------------


def wrk_script(work: Path) -> Path:
    path = work / "post.lua"
    body = loadgen.request_body(stream=False).decode()
    path.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = '{body}'\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        'wrk.headers["Authorization"] = "Bearer sk-bench"\n'
    )
    return path


_WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}


def _wrk_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(text)
    return round(float(match.group(1)) * _WRK_UNITS[match.group(2)], 3)


def parse_wrk(output: str) -> dict[str, Any]:
    result: dict[str, Any] = {}
    match = re.search(r"(\d+) requests in ([\d.]+)(\w+)", output)
    if match:
        result["requests"] = int(match.group(1))
    match = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if match:
        result["req_per_s"] = float(match.group(1))
    match = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    result["non_2xx"] = int(match.group(1)) if match else 0
    match = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    result["socket_errors"] = sum(int(g) for g in match.groups()) if match else 0
    for q in ("50", "99"):
        match = re.search(rf"^\s+{q}(?:\.000)?%\s+(\S+)", output, re.M)
        if match:
            result[f"p{q}_ms"] = _wrk_ms(match.group(1))
    return result


def run_wrk(url: str, script: Path, duration_s: float, connections: int = 32) -> dict[str, Any]:
    argv = ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{connections}"]
    argv += [f"-d{max(1, round(duration_s))}s", "--latency", "-s", str(script), url]
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    result = parse_wrk(done.stdout)
    result["connections"] = connections
    return result


def run_loadgen(args: list[str]) -> dict[str, Any]:
    argv = ["taskset", "-c", LOAD_CORE, sys.executable, str(BENCH / "loadgen.py"), *args]
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    return dict(json.loads(done.stdout))


@contextlib.contextmanager
def cpu_meter(target: Target, into: dict[str, Any], requests_key: str) -> Iterator[None]:
    """Adds the proxy's CPU seconds over the block and CPU ms per answered request."""
    if target.server is None:
        yield
        return
    before = cpu_s(target.server.pid)
    began = time.monotonic()
    yield
    used = cpu_s(target.server.pid) - before
    into["proxy_cpu_s"] = round(used, 3)
    # Under 0.9 in phase a means the proxy did not get its core: something else ran there.
    into["proxy_core_share"] = round(used / (time.monotonic() - began), 2)
    answered = into.get(requests_key) or 0
    into["cpu_ms_per_req"] = round(used * 1000.0 / answered, 3) if answered else None


def settle(target: Target, timeout_s: float = 30.0) -> float:
    """Wait until the proxy is idle (under 5% of a core over 0.5 s), so that a backlog left by
    an overloaded phase does not spill into the next one; returns seconds waited."""
    began = time.monotonic()
    if target.server is None:
        return 0.0
    while time.monotonic() - began < timeout_s:
        before = cpu_s(target.server.pid)
        time.sleep(0.5)
        if cpu_s(target.server.pid) - before < 0.025:
            break
    return round(time.monotonic() - began, 1)


def measure(target: Target, script: Path, phase_s: float) -> dict[str, Any]:
    url = target.url
    run_wrk(url, script, min(3.0, phase_s))  # warm-up: pools, caches, lazy imports
    settle(target)
    phases: dict[str, Any] = {}
    a: dict[str, Any] = {}
    with cpu_meter(target, a, "requests"):
        a.update(run_wrk(url, script, phase_s))
    phases["a"] = a
    a["settle_s"] = settle(target)
    for rate in (10, 100):
        b: dict[str, Any] = {}
        with cpu_meter(target, b, "ok"):
            b.update(
                run_loadgen(["open", "--url", url, "--rate", str(rate), "--duration", str(phase_s)])
            )
        phases[f"b{rate}"] = b
        b["settle_s"] = settle(target)
    c: dict[str, Any] = {}
    with cpu_meter(target, c, "ok"):
        c.update(
            run_loadgen(["stream", "--url", url, "--concurrency", "16", "--duration", str(phase_s)])
        )
    phases["c"] = c
    result: dict[str, Any] = {"url": url, "ready_s": round(target.ready_s, 1), "phases": phases}
    if target.server is not None:
        result["rss_mb"] = rss_mb(target.server.pid)
        result["pss_mb"] = pss_mb(target.server.pid)
    return result


# ---- report ------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    def run(*argv: str) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, check=False).stdout
        except OSError:
            return ""

    lscpu = run("lscpu")
    model = re.search(r"Model name:\s+(.*)", lscpu)
    versions: dict[str, str] = {}
    from importlib import metadata

    for dist in ("httpx", "starlette", "fastapi", "uvicorn", "uvloop", "httptools", "orjson"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    return {
        "cpu": model.group(1).strip() if model else platform.processor(),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_at_start": os.getloadavg(),
        "wrk": (run("wrk", "-v").splitlines() or [""])[0],
        "versions": versions,
        "lscpu": lscpu,
    }


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _added(value: float | None, base: float | None) -> str:
    if value is None or base is None:
        return "—"
    return f"{value - base:+.1f}"


def markdown_table(results: dict[str, Any]) -> str:
    direct = results.get("direct", {}).get("phases", {})
    base_b10 = direct.get("b10", {}).get("p50_ms")
    base_ttfb = direct.get("c", {}).get("ttfb_p50_ms")
    lines = [
        "| target | a: req/s (32 conn) | a: CPU ms/req (core share) | b10: p50 / p99 ms "
        "| b10: added p50 ms "
        "| b100: p50 / p99 ms | c: TTFB p50 / p99 ms | c: added TTFB p50 ms "
        "| c: total p50 / p99 ms | RSS / PSS MB | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, result in results.items():
        ph = result["phases"]
        a, b10, b100, c = ph["a"], ph["b10"], ph["b100"], ph["c"]
        errors = (
            a.get("non_2xx", 0)
            + a.get("socket_errors", 0)
            + sum(b10["errors"].values())
            + sum(b100["errors"].values())
            + sum(c["errors"].values())
        )
        lines.append(
            f"| {name} | {_fmt(a.get('req_per_s'), 0)} | {_fmt(a.get('cpu_ms_per_req'), 2)}"
            f"{'' if name == 'direct' else ' (' + _fmt(a.get('proxy_core_share'), 2) + ')'} "
            f"| {_fmt(b10['p50_ms'])} / {_fmt(b10['p99_ms'])} "
            f"| {'—' if name == 'direct' else _added(b10['p50_ms'], base_b10)} "
            f"| {_fmt(b100['p50_ms'])} / {_fmt(b100['p99_ms'])} "
            f"| {_fmt(c['ttfb_p50_ms'])} / {_fmt(c['ttfb_p99_ms'])} "
            f"| {'—' if name == 'direct' else _added(c['ttfb_p50_ms'], base_ttfb)} "
            f"| {_fmt(c['total_p50_ms'])} / {_fmt(c['total_p99_ms'])} "
            f"| {_fmt(result.get('rss_mb'))} / {_fmt(result.get('pss_mb'))} | {errors} |"
        )
    return "\n".join(lines)


# ---- commands ----------------------------------------------------------------------------


def check_machine() -> None:
    if not shutil.which("wrk"):
        raise SystemExit("wrk not found: apt-get install -y wrk")
    if not shutil.which("taskset"):
        raise SystemExit("taskset not found (util-linux)")
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("needs two cores: one for upstream + load, one for the proxy")
    load1 = os.getloadavg()[0]
    if load1 > 0.5:
        print(f"warning: load average {load1:.2f}; figures will be noisy", file=sys.stderr)


def start_upstream(log_dir: Path) -> Server:
    if not port_free(UPSTREAM_PORT):
        raise SystemExit(f"port {UPSTREAM_PORT} for the fake upstream is taken")
    argv = [sys.executable, str(BENCH / "fake_upstream.py"), "--port", str(UPSTREAM_PORT)]
    argv += ["--chunks", "16", "--gap-ms", "5"]
    upstream = start("fake-upstream", argv, LOAD_CORE, log_dir)
    wait_ready(upstream, f"http://127.0.0.1:{UPSTREAM_PORT}/v1/chat/completions", 10)
    return upstream


def target_names(args: argparse.Namespace) -> list[str]:
    """The targets `--targets` (and `--experimental`) name; exits on an unknown one."""
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    if args.experimental:
        names += [n for n in EXPERIMENTAL if n not in names]
    unknown = [n for n in names if n not in ALL_TARGETS + EXPERIMENTAL + OPTIONAL]
    if unknown:
        raise SystemExit(f"unknown target(s): {', '.join(unknown)}")
    return names


def run_dirs(args: argparse.Namespace, kind: str) -> tuple[Path, str, Path]:
    """`--out` (made if absent), this run's UTC stamp, and a new folder for its servers' logs."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    log_dir = out / f"logs-{kind}{stamp}"
    log_dir.mkdir()
    return out, stamp, log_dir


def run_bench(args: argparse.Namespace) -> int:
    check_machine()
    names = target_names(args)
    out, stamp, log_dir = run_dirs(args, "")
    began = time.monotonic()
    report: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "phase_s": args.phase_s,
        "method": {
            "load_core": LOAD_CORE,
            "proxy_core": PROXY_CORE,
            "a": "wrk -t1 -c32, non-streaming, closed loop",
            "b": "open loop, latency from the scheduled send time",
            "c": "16 concurrent streams, 16 chunks 5 ms apart; TTFB = first content delta",
            "cpu": "utime+stime of the proxy's process tree over the phase / answered requests",
            "rss": "VmRSS (and Pss) of the proxy's process tree after the run",
        },
        "results": {},
    }
    with tempfile.TemporaryDirectory(prefix="footprint-bench-") as tmp:
        work = Path(tmp)
        script = wrk_script(work)
        upstream = start_upstream(log_dir)
        try:
            for name in names:
                print(f"== {name}", file=sys.stderr, flush=True)
                try:
                    target = start_target(name, args, work, log_dir)
                except RuntimeError as exc:
                    print(f"   skipped: {exc}", file=sys.stderr)
                    report["results"][name] = {"skipped": str(exc)}
                    continue
                try:
                    report["results"][name] = measure(target, script, args.phase_s)
                finally:
                    if target.server is not None:
                        target.server.stop()
                print(
                    "   " + json.dumps(report["results"][name]["phases"]["a"]),
                    file=sys.stderr,
                    flush=True,
                )
        finally:
            upstream.stop()
    report["wall_s"] = round(time.monotonic() - began, 1)
    measured = {k: v for k, v in report["results"].items() if "phases" in v}
    table = markdown_table(measured)
    report["table"] = table
    path = out / f"proxy-bench-{stamp}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    info = report["machine"]
    print(
        f"{report['date']} · {info['cpu']}, {info['cpus']} CPUs · Linux {info['kernel']} · "
        f"Python {info['python']} · load avg at start {info['loadavg_at_start'][0]:.2f} · "
        f"{args.phase_s:g} s phases · {report['wall_s']:g} s in all\n"
    )
    print(table)
    for name, result in report["results"].items():
        if "skipped" in result:
            print(f"\n{name}: skipped ({result['skipped'].splitlines()[0]})")
    print(f"\nraw results: {path}")
    return 0


def run_paired(args: argparse.Namespace) -> int:
    """CPU per request of several single-process targets served at the same time on the proxy
    core, each under its own wrk (all on the load core): a machine whose speed drifts between
    runs (15-30 % here within minutes) slows every target alike, so their ratios hold where
    sequential phases' do not. Each target answers what its share of the core allows.

    For two versions of Footprint (`footprint,footprint-old`): sharing the core's caches costs
    both alike. Against a much smaller program (the floor) it does not: the bigger working set
    loses more to the switches, so that ratio reads worse here than in sequential phases."""
    check_machine()
    names = target_names(args)
    unpaired = [n for n in names if n in ("direct", "footprint-w1", "footprint-w2")]
    if unpaired:
        raise SystemExit(f"paired runs single-process proxies only, not {', '.join(unpaired)}")
    out, stamp, log_dir = run_dirs(args, "paired-")
    connections = max(4, 32 // len(names))
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="footprint-bench-") as tmp:
        work = Path(tmp)
        script = wrk_script(work)
        upstream = start_upstream(log_dir)
        targets: list[Target] = []
        try:
            targets = [start_target(name, args, work, log_dir) for name in names]
            for target in targets:  # warm-up, one at a time
                run_wrk(target.url, script, 3, connections)
            for _ in range(args.rounds):
                rounds.append(_paired_round(targets, script, args.duration, connections))
        finally:
            for target in targets:
                if target.server is not None:
                    target.server.stop()
            upstream.stop()
    base = names[-1]
    lines = [
        f"| round | {' | '.join(f'{n}: req/s, CPU ms/req' for n in names)} | "
        f"{' | '.join(f'{n} / {base}' for n in names[:-1])} |",
        "| ---: " * (2 * len(names)) + "|",  # the round, each target, each ratio
    ]
    for i, found in enumerate(rounds, 1):
        cells = [f"{found[n]['req_per_s']:.0f}, {found[n]['cpu_ms_per_req']:.3f}" for n in names]
        ratios = [
            f"{found[n]['cpu_ms_per_req'] / found[base]['cpu_ms_per_req']:.3f}" for n in names[:-1]
        ]
        lines.append(f"| {i} | {' | '.join(cells)} | {' | '.join(ratios)} |")
    table = "\n".join(lines)
    info = machine_info()
    path = out / f"proxy-paired-{stamp}.json"
    path.write_text(json.dumps({"machine": info, "rounds": rounds, "table": table}, indent=2))
    print(
        f"{stamp} · {info['cpu']}, {info['cpus']} CPUs · load avg at start "
        f"{info['loadavg_at_start'][0]:.2f} · {len(names)} targets on core {PROXY_CORE} at once, "
        f"wrk -c{connections} each, {args.rounds} rounds of {args.duration} s\n"
    )
    print(table)
    print(f"\nraw results: {path}")
    return 0


def _paired_round(
    targets: list[Target], script: Path, duration_s: int, connections: int
) -> dict[str, Any]:
    """One round: every target under its own wrk at once; CPU per request of each."""
    before = {t.name: cpu_s(t.server.pid) for t in targets if t.server is not None}
    wrk = ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{connections}", f"-d{duration_s}s"]
    loads = {
        t.name: subprocess.Popen(
            [*wrk, "--latency", "-s", str(script), t.url],
            stdout=subprocess.PIPE,
            text=True,
        )
        for t in targets
    }
    found: dict[str, Any] = {}
    for t in targets:
        output, _ = loads[t.name].communicate()
        result = parse_wrk(output)
        assert t.server is not None
        used = cpu_s(t.server.pid) - before[t.name]
        result["cpu_ms_per_req"] = round(used * 1000.0 / max(1, result.get("requests", 0)), 3)
        found[t.name] = result
    return found


def run_profile(args: argparse.Namespace) -> int:
    """py-spy the target while wrk loads it; writes an SVG flame graph and collapsed stacks,
    and prints where the time goes by component."""
    check_machine()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        raise SystemExit("py-spy not found: .venv/bin/pip install py-spy")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_dir = out / "logs-profile"
    log_dir.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="footprint-bench-") as tmp:
        work = Path(tmp)
        script = wrk_script(work)
        upstream = start_upstream(log_dir)
        target = start_target(args.target, args, work, log_dir)
        try:
            assert target.server is not None
            run_wrk(target.url, script, 3)  # warm-up
            stem = out / f"profile-{args.target}-{args.load}{'-gil' if args.gil else ''}"
            if args.load == "stream":  # phase c's load
                load = ["taskset", "-c", LOAD_CORE, sys.executable, str(BENCH / "loadgen.py")]
                load += ["stream", "--url", target.url, "--duration", str(args.duration + 2)]
            else:  # phase a's load
                load = ["taskset", "-c", LOAD_CORE, "wrk", "-t1", "-c32"]
                load += [f"-d{args.duration + 2}s", "-s", str(script), target.url]
            wrk = subprocess.Popen(load, stdout=subprocess.PIPE, text=True)
            spy = ["taskset", "-c", LOAD_CORE, py_spy, "record", "--pid", str(target.server.pid)]
            spy += ["--duration", str(args.duration), "--rate", str(args.rate), "--nonblocking"]
            if args.gil:
                spy.append("--gil")  # only the thread holding the GIL: where Python CPU goes
            before = thread_cpu_s(target.server.pid)
            subprocess.run(
                [*spy, "--format", "raw", "-o", f"{stem}.txt"], check=True, capture_output=True
            )
            after = thread_cpu_s(target.server.pid)
            wrk_out, _ = wrk.communicate()
            load_result = json.loads(wrk_out) if args.load == "stream" else parse_wrk(wrk_out)
            print(f"load during profile: {load_result}")
            print("CPU per thread during the profile (s):")
            for key, used in sorted(after.items(), key=lambda kv: -kv[1]):
                delta = used - before.get(key, 0.0)
                if delta > 0:
                    print(f"  {delta:7.2f}  {key}")
            if args.svg:
                run_wrk(target.url, script, 1)
                wrk = subprocess.Popen(load, stdout=subprocess.DEVNULL)
                subprocess.run([*spy, "-o", f"{stem}.svg"], check=True, capture_output=True)
                wrk.wait()
        finally:
            if target.server is not None:
                target.server.stop()
            upstream.stop()
    print(summarize_profile(Path(f"{stem}.txt")))
    print(f"\ncollapsed stacks: {stem}.txt" + (f"\nflame graph: {stem}.svg" if args.svg else ""))
    return 0


# Components by where a sampled stack is; the first rule that matches a frame, walking from
# the innermost frame outwards, wins (so time in orjson under the ledger counts as ledger).
COMPONENTS: list[tuple[str, str]] = [
    ("ledger (proxy/ledger, SQLAlchemy, aiosqlite)", r"proxy/ledger/|[(/]sqlalchemy/|aiosqlite"),
    ("telemetry (proxy/telemetry, OTel SDK)", r"proxy/telemetry|[(/]opentelemetry/"),
    ("budgets and rate limits (proxy/budgets/)", r"proxy/budgets/"),
    ("auth (proxy/auth.py)", r"proxy/auth\.py"),
    ("meters (estimate, footprint, intensity)", r"[(/]meters/"),
    ("prompt/token counting (proxy/tokens.py)", r"proxy/tokens\.py"),
    ("SSE parsing (proxy/sse.py)", r"proxy/sse\.py"),
    ("httpx client + httpcore pool", r"[(/]httpx/|[(/]httpcore/|httpx_aiohttp|[(/]aiohttp/"),
    ("anyio (under httpcore and Starlette)", r"[(/]anyio/"),
    ("JSON (orjson/json)", r"orjson|[(/]json/"),
    ("uuid/datetime", r"[(/]uuid\.py|datetime"),
    ("Footprint relay (proxy/relay/ own code)", r"proxy/relay/"),
    ("FastAPI routing/DI", r"[(/]fastapi/"),
    ("Starlette middleware/routing/responses", r"[(/]starlette/"),
    ("uvicorn HTTP protocol", r"[(/]uvicorn/"),
    ("asyncio event loop (incl. uvloop C code)", r"asyncio/|uvloop"),
]


def summarize_profile(path: Path) -> str:
    """Share of samples per component (exclusive: each sample counted once) plus the top
    self-time frames."""
    totals: dict[str, int] = {}
    self_time: dict[str, int] = {}
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        frames = stack.split(";")
        component = "other"
        for frame in reversed(frames):
            hit = next((name for name, rx in COMPONENTS if re.search(rx, frame)), None)
            if hit is not None:
                component = hit
                break
        totals[component] = totals.get(component, 0) + count
        leaf = frames[-1]
        self_time[leaf] = self_time.get(leaf, 0) + count
    if not samples:
        return "no samples"
    lines = [f"{samples} samples", "", "| component | share |", "| --- | ---: |"]
    for name, count in sorted(totals.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {name} | {100.0 * count / samples:.1f}% |")
    lines += ["", "top self time:"]
    for leaf, count in sorted(self_time.items(), key=lambda kv: -kv[1])[:25]:
        lines.append(f"  {100.0 * count / samples:5.1f}%  {leaf}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="proxy benchmark (issue 2)")
    parser.add_argument("--targets", default=",".join(ALL_TARGETS))
    parser.add_argument("--experimental", action="store_true", help="add *-aiohttp variants")
    parser.add_argument("--phase-s", type=float, default=10.0)
    parser.add_argument("--out", default=str(BENCH / "results"))
    parser.add_argument("--litellm", default="/tmp/litellm-venv", help="LiteLLM's own venv")
    parser.add_argument(
        "--extra-path", default="", help="PYTHONPATH for httpx-aiohttp, pyreqwest, granian"
    )
    parser.add_argument("--old-tree", default="", help="checkout of the commit footprint-old runs")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="footprint-w1/w2")
    commands = parser.add_subparsers(dest="command")
    profile = commands.add_parser("profile", help="py-spy a target under wrk load")
    profile.add_argument("--target", default="footprint", choices=[*PORTS])
    profile.add_argument("--duration", type=int, default=10)
    profile.add_argument("--rate", type=int, default=250, help="samples per second")
    profile.add_argument("--svg", action="store_true", help="also record a flame graph")
    profile.add_argument("--gil", action="store_true", help="sample only the GIL holder")
    profile.add_argument(
        "--load", choices=("wrk", "stream"), default="wrk", help="phase a's or phase c's load"
    )
    paired = commands.add_parser(
        "paired", help="several proxies on one core at once: CPU per request side by side"
    )
    paired.add_argument("--rounds", type=int, default=4)
    paired.add_argument("--duration", type=int, default=8, help="seconds per round")
    serve = commands.add_parser("serve-footprint-granian", help=argparse.SUPPRESS)
    serve.add_argument("config")
    summary = commands.add_parser("summarize", help="summarize a py-spy raw profile")
    summary.add_argument("path")
    args = parser.parse_args(argv)
    if args.command == "profile":
        return run_profile(args)
    if args.command == "paired":
        return run_paired(args)
    if args.command == "serve-footprint-granian":
        return serve_footprint_granian(args.config)
    if args.command == "summarize":
        print(summarize_profile(Path(args.path)))
        return 0
    return run_bench(args)


if __name__ == "__main__":
    sys.exit(main())
