"""The cold path of issue 17: what a user's first streamed request pays after `footprint serve`
says ready, against a warm stream's, and the server's resident memory.

For each of `--starts` fresh starts: start the fake upstream once (16 chunks 5 ms apart), start
`footprint serve` (all metering on, as in `proxy_bench.py`), poll `GET /readyz` until 200 (no
relayed request before the first one measured), then stream one request (the cold one) and
`--warm` more one after another on new connections. The figure is the cold stream's time to
its first content delta minus the median of the warm ones' ("added TTFB, cold vs warm"); the
same against the upstream directly is printed for reference. RSS (VmRSS of the server's
process tree) is read at ready and after the streams.

    .venv/bin/python bench/first_stream.py --starts 5
    .venv/bin/python bench/first_stream.py --workers 2      # `footprint serve --workers 2`
    .venv/bin/python bench/first_stream.py --tree /tmp/old  # a checkout of an older commit
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import loadgen  # noqa: E402  (bench/ is not a package)
import proxy_bench  # noqa: E402

PORT = 9212


def wait_readyz(server: proxy_bench.Server, base: str, timeout_s: float = 90.0) -> float:
    """Seconds until `GET /readyz` answers 200 (the server's own word that it is ready)."""
    began = time.monotonic()
    while time.monotonic() - began < timeout_s:
        if server.process.poll() is not None:
            raise RuntimeError(server.log_path.read_text(errors="replace")[-2000:])
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=5) as answer:
                if answer.status == 200:
                    return time.monotonic() - began
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{base}/readyz not ready after {timeout_s} s")


async def stream_ttfb_s(url: str) -> float:
    """One stream on a new connection: seconds from sending to the first content delta."""
    target = loadgen.Target.parse(url)
    connection = await loadgen.Connection.open(target)
    try:
        sent = time.perf_counter()
        answer, _ = await connection.exchange(target, loadgen.request_body(stream=True))
    finally:
        connection.close()
    if answer.status != 200 or answer.first_token_s is None:
        raise RuntimeError(f"stream answered {answer.status} without content")
    return answer.first_token_s - sent


def one_start(args: argparse.Namespace, work: Path, n: int) -> dict[str, float]:
    config = work / f"first-{n}.toml"
    config.write_text(
        proxy_bench.FOOTPRINT_TOML.format(
            port=PORT, ledger=work / f"first-{n}.db", upstream_port=proxy_bench.UPSTREAM_PORT
        )
    )
    argv = [sys.executable, "-m", "proxy.cli", "serve", "--config", str(config)]
    if args.workers != "1":
        argv += ["--workers", str(args.workers)]
    tree = Path(args.tree).resolve() if args.tree else proxy_bench.ROOT
    env = {"PYTHONPATH": str(tree)} if args.tree else None
    if args.workers != "1":
        with config.open("a") as toml:
            toml.write(f'\n[budgets]\nredis_url = "{args.redis_url}"\n')
    server = proxy_bench.start(f"first-{n}", argv, args.core, work, env, tree)
    base = f"http://127.0.0.1:{PORT}"
    try:
        ready_s = wait_readyz(server, base)
        rss_ready = proxy_bench.rss_mb(server.pid)
        url = f"{base}/v1/chat/completions"
        cold = asyncio.run(stream_ttfb_s(url))
        warm = [asyncio.run(stream_ttfb_s(url)) for _ in range(args.warm)]
        rss_after = proxy_bench.rss_mb(server.pid)
        pss_after = proxy_bench.pss_mb(server.pid)
    finally:
        server.stop()
    warm_ms = statistics.median(warm) * 1000
    return {
        "ready_s": round(ready_s, 2),
        "cold_ttfb_ms": round(cold * 1000, 1),
        "warm_ttfb_ms": round(warm_ms, 1),
        "cold_minus_warm_ms": round(cold * 1000 - warm_ms, 1),
        "rss_ready_mb": rss_ready,
        "rss_after_mb": rss_after,
        "pss_after_mb": pss_after,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--warm", type=int, default=9)
    parser.add_argument("--workers", default="1")
    parser.add_argument("--core", default=proxy_bench.PROXY_CORE, help="taskset -c for serve")
    parser.add_argument("--tree", default="", help="run `footprint serve` from this checkout")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="for --workers")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        upstream = proxy_bench.start_upstream(work)
        try:
            direct = f"http://127.0.0.1:{proxy_bench.UPSTREAM_PORT}/v1/chat/completions"
            direct_ms = statistics.median(
                asyncio.run(stream_ttfb_s(direct)) * 1000 for _ in range(5)
            )
            runs = [one_start(args, work, n) for n in range(args.starts)]
        finally:
            upstream.stop()
    for run in runs:
        print(json.dumps(run))
    added = [r["cold_minus_warm_ms"] for r in runs]
    print(
        f"direct TTFB {direct_ms:.1f} ms; cold minus warm, ms: median "
        f"{statistics.median(added):.1f}, each {added}; RSS at ready "
        f"{statistics.median(r['rss_ready_mb'] for r in runs):.1f} MB, after "
        f"{statistics.median(r['rss_after_mb'] for r in runs):.1f} MB (PSS "
        f"{statistics.median(r['pss_after_mb'] for r in runs):.1f} MB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
