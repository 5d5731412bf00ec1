"""Ledger and request-path benchmark.

1. Sustained ledger throughput: many concurrent writers calling `Ledger.record` (each call
   returns only once its row is committed), on SQLite and on PostgreSQL.
2. What authentication, budget reserve/settle and the ledger write add to one request, at a
   steady request rate (default 100 req/s), p50/p99: SQLite + in-process budgets (one
   replica), and PostgreSQL + Redis (several replicas).

    .venv/bin/python bench/ledger_bench.py            # both, with the test servers
    .venv/bin/python bench/ledger_bench.py --only sqlite --seconds 10
    .venv/bin/python bench/ledger_bench.py --only sqlite --sqlite-synchronous normal
    .venv/bin/python bench/ledger_bench.py --only sqlite --seconds 5 --path-seconds 600  # soak

Needs PostgreSQL and Redis on 127.0.0.1 for the second backend (scripts/services.sh).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import secrets
import statistics
import sys
import tempfile
import time
from array import array
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.auth import Authenticator, generate_key
from proxy.budgets import Usage, open_budgets
from proxy.config import BudgetSettings, LedgerSettings
from proxy.ledger import Ledger, LedgerRecord, open_ledger

ROW = LedgerRecord(
    request_id="",
    created_at=datetime.now(UTC),
    team="bench",
    key_id="key_0000000000000000",
    model="llama-3.1-8b",
    upstream="local-vllm",
    endpoint="chat.completions",
    stream=True,
    status=200,
    cancelled=False,
    error=None,
    prompt_tokens=120,
    completion_tokens=256,
    tokens_counted=False,
    method="measured",
    basis="nvml",
    gpu_energy_j=41.7,
    energy_j=62.1,
    co2e_g=0.0069,
    embodied_co2e_g=0.0004,
    water_ml=0.094,
    zone="KR",
    grid_gco2e_per_kwh=400.0,
    pue=1.2,
    intensity_source="table",
    trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
    duration_ms=812.5,
    overhead_ms=0.31,
)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_mib() -> float:
    """Resident memory now (Linux), not the high-water mark: growth shows here."""
    with open("/proc/self/statm") as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * resource.getpagesize() / 2**20


async def throughput(ledger: Ledger, seconds: float, writers: int) -> dict[str, Any]:
    stop = time.perf_counter() + seconds
    prefix = secrets.token_hex(4)
    done = 0

    async def writer(w: int) -> None:
        nonlocal done
        i = 0
        while time.perf_counter() < stop:
            await ledger.record(replace(ROW, request_id=f"tp-{prefix}-{w}-{i}"))
            i += 1
            done += 1

    start = time.perf_counter()
    batches0 = ledger.batches_committed
    await asyncio.gather(*(writer(w) for w in range(writers)))
    elapsed = time.perf_counter() - start
    batches = ledger.batches_committed - batches0
    return {
        "rows": done,
        "seconds": round(elapsed, 2),
        "rows_per_s": round(done / elapsed),
        "mean_batch_rows": round(done / max(1, batches), 1),
        "writers": writers,
    }


async def request_path(
    ledger: Ledger, budgets_url: str, redis_prefix: str, seconds: float, rate: float
) -> dict[str, Any]:
    """auth + reserve + settle + record per request, requests started at a steady rate."""
    team = "bench-" + secrets.token_hex(3)
    await ledger.create_team(team)
    new = generate_key()
    await ledger.create_key(
        key_id=new.key_id, team=team, key_hash=new.key_hash, key_prefix=new.key_prefix, models=["*"]
    )
    auth = Authenticator(ledger, "keys", "bench-admin-key-" + "x" * 20)
    budgets = await open_budgets(
        BudgetSettings(redis_url=budgets_url), ledger, key_prefix=redis_prefix
    )
    await budgets.put(team, "co2e_g", "month", 1e9)
    await budgets.put(team, "requests", "day", 1e9)
    header = f"Bearer {new.secret}"
    # Flat arrays of doubles: a long run keeps its samples in a known, small amount of memory
    # (reported, so the proxy's own growth can be told apart from the bench's).
    latencies_ms = array("d")
    parts = {name: array("d") for name in ("auth", "reserve", "settle", "record")}

    async def one(i: int) -> None:
        t0 = time.perf_counter()
        principal = await auth.authenticate(header)
        t1 = time.perf_counter()
        res = await budgets.reserve(
            principal.team, Usage(co2e_g=0.01, tokens=1400, requests=1), f"rq-{team}-{i}"
        )
        t2 = time.perf_counter()
        # (the upstream call would be here; it is not part of the proxy's own cost)
        await ledger.record(
            replace(
                ROW, request_id=f"rq-{team}-{i}", team=principal.team, created_at=datetime.now(UTC)
            )
        )
        t3 = time.perf_counter()
        await budgets.settle(res, Usage(co2e_g=0.0069, tokens=376, requests=1))
        t4 = time.perf_counter()
        latencies_ms.append((t4 - t0) * 1000)
        for name, a, b in (
            ("auth", t0, t1),
            ("reserve", t1, t2),
            ("record", t2, t3),
            ("settle", t3, t4),
        ):
            parts[name].append((b - a) * 1000)

    # warm-up (first key lookup, budget load) is not the steady state
    for i in range(20):
        await one(-1 - i)
    del latencies_ms[:]
    for v in parts.values():
        del v[:]
    rss0 = rss_mib()
    rss_samples = [rss0]
    tasks: set[asyncio.Task[None]] = set()
    n = int(seconds * rate)
    start = time.perf_counter()
    for i in range(n):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(i))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        if i % int(rate * 30) == 0:
            rss_samples.append(rss_mib())
    await asyncio.gather(*tasks)
    rss_samples.append(rss_mib())
    await budgets.aclose()
    return {
        "requests": n,
        "rate_per_s": rate,
        "added_p50_ms": round(statistics.median(latencies_ms), 3),
        "added_p99_ms": round(percentile(latencies_ms, 0.99), 3),
        "parts_p50_ms": {k: round(statistics.median(v), 3) for k, v in parts.items()},
        "rss_mib_before_after": [round(rss0, 1), round(rss_samples[-1], 1)],
        # Every 30 s of the run: a leak shows as a steady climb, not a one-off step.
        "rss_mib_every_30s": [round(r, 1) for r in rss_samples],
        "max_rss_mib": round(max_rss_mib(), 1),
        "bench_samples_mib": round(
            sum(a.itemsize * len(a) for a in (latencies_ms, *parts.values())) / 2**20, 1
        ),
    }


async def run_backend(
    name: str, url: str, redis_url: str, args: argparse.Namespace
) -> dict[str, Any]:
    ledger = await open_ledger(LedgerSettings(url=url))
    try:
        tp = await throughput(ledger, args.seconds, args.writers)
        path = await request_path(
            ledger,
            redis_url,
            "fpbench-" + secrets.token_hex(4),
            args.path_seconds or args.seconds,
            args.rate,
        )
    finally:
        await ledger.aclose()
    return {
        "backend": name,
        "ledger_url": url.split("@")[-1],
        "budgets": "redis" if redis_url else "in-process",
        "throughput": tp,
        "request_path": path,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--path-seconds",
        type=float,
        default=0.0,
        help="length of the request-path run (default: --seconds); 600 for the memory soak",
    )
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second")
    parser.add_argument("--writers", type=int, default=256, help="concurrent ledger writers")
    parser.add_argument("--only", choices=["sqlite", "postgresql"])
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--sqlite-synchronous",
        choices=["full", "normal"],
        default="full",
        help="full: a row survives power loss (the default); normal: it survives a killed process",
    )
    parser.add_argument("--out", default="bench/results/ledger.json")
    args = parser.parse_args()
    results = []
    if args.only in (None, "sqlite"):
        with tempfile.TemporaryDirectory() as tmp:
            results.append(
                await run_backend(
                    "sqlite",
                    f"sqlite:///{tmp}/bench.db?synchronous={args.sqlite_synchronous}",
                    "",
                    args,
                )
            )
    if args.only in (None, "postgresql"):
        import asyncpg

        schema = "bench_" + secrets.token_hex(4)
        conn = await asyncpg.connect(args.pg)
        await conn.execute(f"CREATE SCHEMA {schema}")
        try:
            results.append(
                await run_backend("postgresql", f"{args.pg}?schema={schema}", args.redis, args)
            )
        finally:
            await conn.execute(f"DROP SCHEMA {schema} CASCADE")
            await conn.close()
            import redis.asyncio as redis_asyncio

            client = redis_asyncio.Redis.from_url(args.redis)
            keys = [k async for k in client.scan_iter(match="fpbench-*", count=1000)]
            if keys:
                await client.delete(*keys)
            await client.aclose()
    text = json.dumps(results, indent=2)
    print(text)
    out = Path(args.out)
    await asyncio.to_thread(out.parent.mkdir, parents=True, exist_ok=True)
    await asyncio.to_thread(out.write_text, text + "\n")


if __name__ == "__main__":
    asyncio.run(main())
