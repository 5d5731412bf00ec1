"""A month of seeded ledger rows, half from an upstream with contracts: `footprint report`
(a real subprocess against a real proxy) and `/v1/footprint/usage` give the location-based and
the market-based totals side by side, and the share of the month's energy that had a
market-based figure (issue 18)."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from meters.footprint import compute_footprint
from meters.numbers import format_decimal
from meters.types import Hardware, Intensity, MarketContracts, Measurement, SiteFactors
from proxy.config import LedgerSettings
from proxy.ledger import LedgerRecord, figure_columns, open_ledger
from tests.conftest import ADMIN_KEY
from tests.proxy.conftest import proxy_settings
from tests.proxy.ledger.records import record
from tests.support.servers import ServerThread

REPO_ROOT = Path(__file__).resolve().parents[2]
J_PER_KWH = 3_600_000.0
DE = Intensity("DE", 330.0, 1.95, "test")
CONTRACTS = MarketContracts(0.6, 20.0, 650.0, "AIB 2024, Germany")
MARCH = datetime(2026, 3, 1, tzinfo=UTC)


def seeded_month(seed: int = 18) -> tuple[list[LedgerRecord], dict[str, float]]:
    """Rows for every hour-ish of March 2026 on two upstreams (one with contracts), a few
    outside the month, and the month's totals computed here by hand."""
    rng = random.Random(seed)
    rows: list[LedgerRecord] = []
    expected = {"co2e_g": 0.0, "co2e_market_g": 0.0, "energy_j": 0.0, "market_energy_j": 0.0}
    for i in range(31 * 6):
        at = MARCH + timedelta(hours=4 * i, minutes=rng.randrange(60))
        green = rng.random() < 0.5
        gpu_j, server_j = rng.uniform(5, 900), rng.uniform(1, 120)
        hardware_s = rng.uniform(0.05, 4.0)
        site = SiteFactors(zone="DE", pue=1.15, contracts=CONTRACTS if green else None)
        measurement = Measurement(gpu_j, server_j, hardware_s, "measured", "nvml", gpus=1)
        fp = compute_footprint(measurement, site, Hardware(), DE)
        rows.append(
            replace(
                record(request_id=f"r{i}", created_at=at, upstream="green" if green else "grid"),
                **figure_columns(fp),
            )
        )
        energy_j = 1.15 * (gpu_j + server_j)
        embodied_g = hardware_s * (5700 / 8 + 273) / (3 * 365 * 86400) * 1000
        expected["energy_j"] += energy_j
        expected["co2e_g"] += energy_j / J_PER_KWH * 330.0 + embodied_g
        if green:
            expected["market_energy_j"] += energy_j
            expected["co2e_market_g"] += energy_j / J_PER_KWH * (0.6 * 20 + 0.4 * 650) + embodied_g
    outside = [MARCH - timedelta(minutes=1), datetime(2026, 4, 1, tzinfo=UTC)]
    for n, at in enumerate(outside):
        rows.append(replace(rows[n], request_id=f"outside-{n}", created_at=at))
    expected["market_energy_share"] = expected["market_energy_j"] / expected["energy_j"]
    return rows, expected


async def _seed(url: str, rows: list[LedgerRecord]) -> None:
    ledger = await open_ledger(LedgerSettings(url=url))
    for row in rows:
        await ledger.record(row)
    await ledger.aclose()


@pytest.fixture
def month_proxy(
    start_proxy: Callable[..., ServerThread], tmp_path: Path, upstream: ServerThread
) -> tuple[ServerThread, dict[str, float]]:
    rows, expected = seeded_month()
    settings = proxy_settings(tmp_path, upstream.url, server={"auth": "keys"})
    asyncio.run(_seed(settings.ledger.url, rows))
    return start_proxy(settings, environ={"FOOTPRINT_ADMIN_KEY": ADMIN_KEY}), expected


def report(proxy: ServerThread, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "cli.toml"
    config.write_text("")
    command = [sys.executable, "-m", "proxy.cli", "report", "--month", "2026-03"]
    return subprocess.run(
        [*command, "--url", proxy.url, "--config", str(config), *extra],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        env={**os.environ, "FOOTPRINT_ADMIN_KEY": ADMIN_KEY},
        check=False,
    )


def test_the_months_report_gives_both_totals_and_the_covered_share(
    month_proxy: tuple[ServerThread, dict[str, float]], tmp_path: Path
) -> None:
    proxy, expected = month_proxy
    answer = httpx.get(
        f"{proxy.url}/v1/footprint/usage",
        params={"group_by": "upstream", "from": "2026-03-01", "to": "2026-04-01"},
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
    )
    assert answer.status_code == 200, answer.text
    usage = answer.json()
    totals = usage["totals"]
    assert totals["requests"] == 31 * 6
    for name, value in expected.items():
        assert totals[name] == pytest.approx(value, rel=1e-9), name
    assert 0.3 < totals["market_energy_share"] < 0.7
    by_upstream = {row["upstream"]: row for row in usage["data"]}
    assert by_upstream["grid"]["co2e_market_g"] is None
    assert by_upstream["grid"]["market_energy_share"] == 0.0
    assert by_upstream["green"]["market_energy_share"] == pytest.approx(1.0)
    assert by_upstream["green"]["co2e_market_g"] == pytest.approx(expected["co2e_market_g"])

    table = report(proxy, tmp_path)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    location, market, embodied = lines[-3:]
    assert location == f"carbon, location-based (co2e_g): {_g(expected['co2e_g'])} g"
    share = expected["market_energy_share"] * 100
    assert market.startswith(
        f"carbon, market-based (co2e_market_g): {_g(expected['co2e_market_g'])} g, over "
        f"{_g(share, 3)} % of the energy ("
    )
    assert embodied.startswith("embodied carbon, in both: ")

    by_upstream_table = report(proxy, tmp_path, "--group-by", "upstream").stdout.splitlines()
    header = by_upstream_table[0].split()
    grid_cells = next(line for line in by_upstream_table if line.startswith("grid ")).split()
    assert dict(zip(header, grid_cells, strict=True))["co2e_market_g"] == "-"

    csv = report(proxy, tmp_path, "--format", "csv", "--group-by", "upstream")
    header, *rows = csv.stdout.strip().splitlines()
    columns = header.split(",")
    grid = dict(
        zip(columns, next(r for r in rows if r.startswith("grid,")).split(","), strict=True)
    )
    assert grid["co2e_market_g"] == "" and grid["market_energy_share"] == "0"


def _g(value: float, significant: int = 6) -> str:
    return format_decimal(value, significant=significant)
