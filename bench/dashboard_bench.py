"""Dashboard benchmark: the API calls the page makes, and the page itself, at 100,000 ledger rows.

Seeds a SQLite ledger with `--rows` requests over 30 days (3 teams, 3 models, 2 upstreams),
starts a real `footprint serve` on it, then

1. times every JSON call one dashboard refresh makes (series by team/model per hour/day/month,
   the measured/estimated split, budgets, the top requests, usage with idle), `--repeat`
   times each, as the admin and as a team key; reports p50/p95 and the answer's size;
2. where Debian's chromium is installed, times the page in a real browser: from navigation
   to the first complete render after signing in, and one refresh after switching views.

    .venv/bin/python bench/dashboard_bench.py                 # 100,000 rows
    .venv/bin/python bench/dashboard_bench.py --rows 20000 --repeat 5

A benchmark, not a test: nothing here asserts a speed. Results also go to
bench/results/dashboard-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.browser import CHROMIUM, CHROMIUM_FLAGS
from tests.support.processes import ProxyProcess, replica_config
from tests.support.seed import seed_ledger


def calls(start: str, end: str, last_day: str) -> list[tuple[str, str, dict[str, str]]]:
    window = {"from": start, "to": end}
    return [
        ("series day × team (30 d)", "/v1/footprint/usage/series", {**window, "group_by": "team"}),
        (
            "series hour × model (30 d)",
            "/v1/footprint/usage/series",
            {**window, "bucket": "hour", "group_by": "model"},
        ),
        (
            "series hour × team (24 h)",
            "/v1/footprint/usage/series",
            {"from": last_day, "to": end, "bucket": "hour", "group_by": "team"},
        ),
        (
            "series month × method",
            "/v1/footprint/usage/series",
            {**window, "bucket": "month", "group_by": "method"},
        ),
        ("top 10 requests by energy", "/v1/footprint/requests", {**window, "limit": "10"}),
        ("budgets", "/v1/footprint/budgets", {}),
        ("usage by upstream + idle", "/v1/footprint/usage", {**window, "group_by": "upstream"}),
        (
            "series CSV day × model",
            "/v1/footprint/usage/series",
            {**window, "group_by": "model", "format": "csv"},
        ),
    ]


def time_api(
    url: str, key: str, repeat: int, start: str, end: str, last_day: str
) -> list[dict[str, Any]]:
    out = []
    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=60) as c:
        for name, path, params in calls(start, end, last_day):
            if path == "/v1/footprint/usage" and not key.startswith("admin-"):
                continue
            samples = []
            size = 0
            for _ in range(repeat):
                t0 = time.perf_counter()
                got = c.get(path, params=params)
                samples.append((time.perf_counter() - t0) * 1000)
                got.raise_for_status()
                size = len(got.content)
            samples.sort()
            out.append(
                {
                    "call": name,
                    "p50_ms": round(statistics.median(samples), 2),
                    "p95_ms": round(samples[min(len(samples) - 1, int(len(samples) * 0.95))], 2),
                    "bytes": size,
                }
            )
    return out


def time_page(url: str, key: str, start: str, end: str) -> dict[str, float] | None:
    if not Path(CHROMIUM).exists():
        return None
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        updated = "() => document.querySelector('#status').textContent.startsWith('Updated')"
        t0 = time.perf_counter()
        page.goto(f"{url}/dashboard#from={start}&to={end}&bucket=day&group=team")
        page.fill("#key", key)
        page.press("#key", "Enter")
        page.wait_for_function(updated, timeout=120_000)
        first_ms = (time.perf_counter() - t0) * 1000
        page.evaluate("document.querySelector('#status').textContent = ''")
        t1 = time.perf_counter()
        page.select_option("#group", "model")
        page.select_option("#bucket", "hour")
        page.wait_for_function(updated, timeout=120_000)
        switch_ms = (time.perf_counter() - t1) * 1000
        browser.close()
    return {
        "first_render_ms": round(first_ms, 1),
        "switch_to_hour_by_model_ms": round(switch_ms, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    admin = "admin-" + secrets.token_hex(16)
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        url = f"sqlite:///{workdir / 'ledger.db'}"
        t0 = time.perf_counter()
        seeded = asyncio.run(
            seed_ledger(
                url,
                teams=("aurora", "borealis", "cirrus"),
                models=("llama-3.1-8b", "gemma-3-27b", "qwen3-32b"),
                rows=args.rows,
                end=end,
                key_teams=("aurora",),
                budgets=(("aurora", "co2e_g", "month", 5000.0),),
            )
        )
        seed_s = time.perf_counter() - t0
        print(f"seeded {seeded.rows} rows in {seed_s:.1f} s", flush=True)
        config = replica_config("http://127.0.0.1:9", url, on_store_error="allow")
        with ProxyProcess("bench", config, workdir, {"FOOTPRINT_ADMIN_KEY": admin}) as proxy:
            start, stop = seeded.start.isoformat(), end.isoformat()
            last_day = (end - timedelta(days=1)).isoformat()
            result: dict[str, Any] = {
                "rows": seeded.rows,
                "when": datetime.now(UTC).isoformat(),
                "admin": time_api(proxy.url, admin, args.repeat, start, stop, last_day),
                "team_key": time_api(
                    proxy.url, seeded.keys["aurora"], args.repeat, start, stop, last_day
                ),
                "page_admin": time_page(
                    proxy.url,
                    admin,
                    seeded.start.date().isoformat(),
                    (end + timedelta(days=1)).date().isoformat(),
                ),
            }
    for who in ("admin", "team_key"):
        print(f"\n{who}: call, p50 ms, p95 ms, bytes")
        for row in result[who]:
            print(f"  {row['call']:<30} {row['p50_ms']:>8} {row['p95_ms']:>8} {row['bytes']:>8}")
    print(f"\npage (chromium): {result['page_admin']}")
    out_dir = Path(__file__).resolve().parent / "results"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / f"dashboard-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
