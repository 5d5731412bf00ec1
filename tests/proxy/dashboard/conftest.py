"""A real `footprint serve` on a seeded SQLite ledger, and Debian's Chromium driven by
Playwright (never a downloaded browser): what the dashboard's browser tests stand on."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.support.browser import CHROMIUM, CHROMIUM_FLAGS
from tests.support.processes import REPO_ROOT, ProxyProcess, replica_config
from tests.support.seed import SeededLedger, seed_ledger

ADMIN_KEY = "admin-" + secrets.token_hex(20)
HOSTILE = "<img src=x onerror=alert(1)>"
TEAMS = ("aurora", "borealis", HOSTILE)
MODELS = ("llama-3.1-8b", "gemma-3-27b", HOSTILE)
ARTIFACTS = Path(os.environ.get("FOOTPRINT_TEST_ARTIFACTS", REPO_ROOT / ".artifacts")) / "dashboard"


@dataclass
class Board:
    url: str
    proxy: ProxyProcess
    seeded: SeededLedger
    start: str  # the seeded month, as dates: [start, end)
    end: str

    def page_url(self, **view: str) -> str:
        parts = {"from": self.start, "to": self.end, **view}
        fragment = "&".join(f"{k}={v}" for k, v in parts.items())
        return f"{self.url}/dashboard#{fragment}"


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Board]:
    workdir = tmp_path_factory.mktemp("dashboard")
    url = f"sqlite:///{workdir / 'ledger.db'}"
    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    seeded = asyncio.run(
        seed_ledger(
            url,
            teams=TEAMS,
            models=MODELS,
            rows=3000,
            end=end,
            days=30,
            key_teams=("aurora",),
            raw_teams=(HOSTILE,),
            budgets=(
                ("aurora", "co2e_g", "month", 500.0),
                ("aurora", "requests", "day", 200.0),
                ("borealis", "energy_j", "total", 5e6),
            ),
        )
    )
    config = replica_config("http://127.0.0.1:9", url, on_store_error="allow")
    proxy = ProxyProcess("dashboard", config, workdir, {"FOOTPRINT_ADMIN_KEY": ADMIN_KEY})
    proxy.start()
    try:
        yield Board(
            proxy.url,
            proxy,
            seeded,
            (end - timedelta(days=30)).date().isoformat(),
            end.date().isoformat(),
        )
    finally:
        proxy.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/services.sh installs Debian's chromium")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
