"""Soak: `footprint serve` under a steady mixed load for a long while (10 minutes by default),
then the books checked. A benchmark, not a test (issue 11): it reports, it does not assert.

    python bench/soak.py                       # 600 s, SQLite ledger, 8 clients
    python bench/soak.py --duration-s 60 --ledger postgresql://postgres@127.0.0.1/test

It starts the benchmark's fake upstream (`bench/fake_upstream.py`) and one proxy with key
auth, a team with request and token budgets, then runs `--clients` closed-loop clients, each
sending whole and streamed chat requests (half with an `x-request-id` of their own). Every 10 s
it samples the proxy's resident memory. At the end it prints one JSON object:

- `rss_mb`: first, last and highest sample, and the samples themselves;
- `latency_ms`: p50, p99, max of whole answers, and of streams (to the last byte);
- `answers` by status; `rows` in the ledger; `answered_without_row` and `rows_without_answer`
  (both should be 0); the team's budget `used` against what its rows add up to.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

from loadgen import percentile_ms  # noqa: E402  (bench/ is not a package)
from proxy_bench import rss_mb  # noqa: E402

ADMIN_KEY = "admin-" + secrets.token_hex(20)
MESSAGES = [{"role": "user", "content": "Hello, how are you today?"}]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(upstream_port: int, port: int, ledger_url: str) -> str:
    return f"""
[server]
host = "127.0.0.1"
port = {port}
auth = "keys"
log_level = "warning"

[ledger]
url = "{ledger_url}"

[[upstreams]]
name = "fake"
base_url = "http://127.0.0.1:{upstream_port}/v1"
models = ["*"]
[upstreams.meter]
kind = "estimate"
[upstreams.hardware]
active_params_b = 8.0
total_params_b = 8.0
"""


def _start(
    args: list[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
            start_new_session=True,
        )


def _wait_http(url: str, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer in {timeout_s} s")


async def _client(
    url: str,
    key: str,
    seed: int,
    deadline: float,
    answers: list[tuple[str, int, bool, float]],
) -> None:
    rng = random.Random(seed)
    headers = {"authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, timeout=60.0) as client:
        while time.monotonic() < deadline:
            stream = rng.random() < 0.5
            body = {"model": "bench-model", "messages": MESSAGES, "stream": stream}
            sent = dict(headers)
            if rng.random() < 0.5:
                sent["x-request-id"] = f"soak-{secrets.token_hex(8)}"
            started = time.perf_counter()
            try:
                answer = await client.post("/v1/chat/completions", json=body, headers=sent)
            except httpx.HTTPError:
                answers.append(("", -1, stream, time.perf_counter() - started))
                continue
            answers.append(
                (
                    answer.headers.get("x-request-id", ""),
                    answer.status_code,
                    stream,
                    time.perf_counter() - started,
                )
            )


async def _sample_rss(pid: int, deadline: float, samples: list[float]) -> None:
    while time.monotonic() < deadline:
        samples.append(rss_mb(pid))
        await asyncio.sleep(10.0)
    samples.append(rss_mb(pid))


def _rows(ledger_url: str) -> list[tuple[str, int, bool]]:
    """(request_id, tokens, counted) of every row."""
    sql = (
        "SELECT request_id, prompt_tokens + completion_tokens,"
        " (status < 400 OR prompt_tokens + completion_tokens > 0 OR energy_j > 0) FROM requests"
    )
    if ledger_url.startswith("sqlite:///"):
        with sqlite3.connect(ledger_url.removeprefix("sqlite:///")) as conn:
            return [(r[0], int(r[1]), bool(r[2])) for r in conn.execute(sql)]
    import asyncpg

    async def fetch() -> list[Any]:
        conn = await asyncpg.connect(ledger_url)
        try:
            return list(await conn.fetch(sql))
        finally:
            await conn.close()

    return [(r[0], int(r[1]), bool(r[2])) for r in asyncio.run(fetch())]


def run(duration_s: float, clients: int, ledger: str | None, work: Path) -> dict[str, Any]:
    upstream_port, port = _free_port(), _free_port()
    ledger_url = ledger or f"sqlite:///{work / 'soak.db'}"
    config = work / "soak.toml"
    config.write_text(_config(upstream_port, port, ledger_url))
    upstream = _start(
        [sys.executable, str(BENCH / "fake_upstream.py"), "--port", str(upstream_port)],
        work / "upstream.log",
    )
    proxy = _start(
        [sys.executable, "-m", "proxy.cli", "serve", "--config", str(config)],
        work / "proxy.log",
        {"FOOTPRINT_ADMIN_KEY": ADMIN_KEY},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{url}/healthz")
        admin = httpx.Client(base_url=url, headers={"authorization": f"Bearer {ADMIN_KEY}"})
        team = "soak-" + secrets.token_hex(3)
        admin.post("/admin/teams", json={"name": team}).raise_for_status()
        key = admin.post("/admin/keys", json={"team": team}).json()["key"]
        for metric in ("requests", "tokens"):
            budget = {"team": team, "metric": metric, "period": "total", "limit": 1e12}
            admin.put("/admin/budgets", json=budget).raise_for_status()
        answers: list[tuple[str, int, bool, float]] = []
        samples: list[float] = []

        async def load() -> None:
            deadline = time.monotonic() + duration_s
            await asyncio.gather(
                _sample_rss(proxy.pid, deadline, samples),
                *(_client(url, key, i, deadline, answers) for i in range(clients)),
            )

        asyncio.run(load())
        lines = admin.get("/admin/budgets", params={"team": team}).json()["data"]
        used = {x["metric"]: x["used"] for x in lines}
    finally:
        for process in (proxy, upstream):
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
    rows = _rows(ledger_url)
    row_ids = {r[0] for r in rows}
    recorded = [a for a in answers if a[1] in (200, 502, 504)]
    by_status: dict[str, int] = {}
    for _, status, _, _ in answers:
        by_status[str(status)] = by_status.get(str(status), 0) + 1
    whole = [a[3] for a in answers if a[1] == 200 and not a[2]]
    streams = [a[3] for a in answers if a[1] == 200 and a[2]]
    return {
        "duration_s": duration_s,
        "clients": clients,
        "ledger": ledger_url.split("@")[-1],
        "answers": len(answers),
        "answers_by_status": by_status,
        "requests_per_s": round(len(answers) / duration_s, 1),
        "rows": len(rows),
        "answered_without_row": sum(1 for a in recorded if a[0] not in row_ids),
        "rows_without_answer": len(row_ids - {a[0] for a in answers}),
        "budget_used": used,
        "budget_from_rows": {
            "requests": sum(1 for r in rows if r[2]),
            "tokens": sum(r[1] for r in rows),
        },
        "rss_mb": {
            "first": samples[0] if samples else None,
            "last": samples[-1] if samples else None,
            "max": max(samples) if samples else None,
            "samples": samples,
        },
        "latency_ms": {
            "whole": {q: percentile_ms(whole, p) for q, p in (("p50", 50), ("p99", 99))},
            "stream": {q: percentile_ms(streams, p) for q, p in (("p50", 50), ("p99", 99))},
            "max": round(max(whole + streams, default=0.0) * 1000, 1),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=600.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--ledger", default=None, help="ledger URL (default: a fresh SQLite)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="footprint-soak-") as work:
        result = run(args.duration_s, args.clients, args.ledger, Path(work))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
