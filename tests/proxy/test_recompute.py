"""Ledger rows that can be audited: each records its methodology version, the intensity's own
time, where its factors came from, a ranged estimate's [low, high] and the inputs its figures
follow from; `footprint report --recompute` gives the same figures back, or says which rows
changed and why. Real ledgers (SQLite and PostgreSQL), a real `footprint` subprocess."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from meters.catalog import ModelCatalog
from meters.constants import INTENSITY_DATA_YEAR, METHODOLOGY_VERSION
from meters.estimate import Estimator
from meters.footprint import compute_footprint
from meters.intensity import IntensityTable
from meters.types import Footprint, Hardware, MarketContracts, Measurement, SiteFactors
from proxy.config import LedgerSettings
from proxy.ledger import Ledger, LedgerRecord, figure_columns, open_ledger
from proxy.recompute import recompute_rows
from tests.proxy.ledger.records import record

REPO_ROOT = Path(__file__).resolve().parents[2]
TABLE = IntensityTable.shipped()
CATALOG = ModelCatalog.from_ecologits()


def estimated_footprint(model: str = "gpt-4.1-mini", zone: str = "AE") -> Footprint:
    measurement = Estimator(Hardware(), catalog=CATALOG).estimate(model, 20, 300, math.inf)
    return compute_footprint(measurement, SiteFactors(zone=zone), Hardware(), TABLE.lookup(zone))


def measured_footprint() -> Footprint:
    measurement = Measurement(41.7, 9.5, 1.3, "measured", "nvml", gpus=2)
    site = SiteFactors(zone="US-CAL-CISO", pue=1.1, wue_l_per_kwh=0.3)
    return compute_footprint(measurement, site, Hardware(gpus=2), TABLE.lookup("US-CAL-CISO"))


def row_for(request_id: str, footprint: Footprint) -> LedgerRecord:
    return replace(record(request_id=request_id), **figure_columns(footprint))


@pytest.fixture
async def ledger(ledger_url: str) -> Ledger:
    led = await open_ledger(LedgerSettings(url=ledger_url))
    yield led  # type: ignore[misc]
    await led.aclose()


async def test_a_row_records_how_its_figures_were_made(ledger: Ledger) -> None:
    footprint = estimated_footprint()
    assert footprint.ranges is not None  # gpt-4.1-mini: a size range, 2 to 4 GPUs
    await ledger.record(row_for("r-est", footprint))
    stored = await ledger.get_request("r-est", None)
    assert stored is not None
    assert stored["methodology_version"] == METHODOLOGY_VERSION
    assert stored["intensity_at"] == INTENSITY_DATA_YEAR
    assert (stored["intensity_source"], stored["water_source"]) == ("table", "table:world")
    assert stored["intensity_detail"].startswith("table:ecologits-")
    low, high = stored["ranges"]["energy_j"]
    assert low < stored["energy_j"] < high
    assert (low, high) == pytest.approx(footprint.ranges["energy_j"], rel=1e-5)
    assert stored["gpus"] == 4 and stored["hardware_s"] == pytest.approx(footprint.hardware_s)


async def test_recompute_gives_every_stored_figure_back(ledger: Ledger) -> None:
    await ledger.record(row_for("r-est", estimated_footprint()))
    await ledger.record(row_for("r-meas", measured_footprint()))
    rows = await ledger.request_rows(None, None)
    assert [r["request_id"] for r in rows] == ["r-est", "r-meas"]
    assert recompute_rows(rows) == (2, [])


async def test_recompute_says_which_rows_changed_and_why(ledger: Ledger) -> None:
    footprint = measured_footprint()
    await ledger.record(row_for("same", footprint))
    # A row written under an older methodology, whose carbon the arithmetic no longer gives.
    older = replace(row_for("older", footprint), co2e_g=footprint.co2e_g * 1.5)
    await ledger.record(replace(older, methodology_version="1"))
    # A row from before its inputs were stored (what the relay writes without figure_columns).
    await ledger.record(record(request_id="bare"))
    count, changes = recompute_rows(await ledger.request_rows(None, None))
    assert count == 3
    by_id = {change.request_id: change for change in changes}
    assert set(by_id) == {"older", "bare"}
    assert by_id["older"].reason == f"methodology 1 then, {METHODOLOGY_VERSION} now"
    stored, now = by_id["older"].changed["co2e_g"]
    assert stored == pytest.approx(footprint.co2e_g * 1.5) and now == pytest.approx(
        footprint.co2e_g
    )
    assert list(by_id["older"].changed) == ["co2e_g"]
    assert "cannot be recomputed" in by_id["bare"].reason and not by_id["bare"].changed


async def test_the_report_command_recomputes_the_configured_ledger(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    ledger = await open_ledger(LedgerSettings(url=f"sqlite:///{db}"))
    footprint = estimated_footprint("gpt-4o", "KR")
    await ledger.record(row_for("good", footprint))
    await ledger.record(
        replace(
            row_for("moved", footprint),
            created_at=datetime(2025, 3, 15, tzinfo=UTC),
            water_ml=footprint.water_ml * 2,
        )
    )
    await ledger.aclose()
    config = tmp_path / "footprint.toml"
    config.write_text(f'[ledger]\nurl = "sqlite:///{db}"\n')

    def report(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "proxy.cli",
                "report",
                "--recompute",
                "--config",
                str(config),
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO_ROOT,
            check=False,
        )

    everything = report()
    assert everything.returncode == 1, everything.stderr
    lines = everything.stdout.strip().splitlines()
    assert lines[0].startswith("moved: same methodology") and "water_ml" in lines[0]
    assert lines[-1] == "2 row(s) recomputed from their stored inputs: 1 the same, 1 changed"
    first_day = report("--to", "2025-03-15")
    assert first_day.returncode == 0, first_day.stderr
    assert first_day.stdout.strip().endswith(
        "1 row(s) recomputed from their stored inputs: 1 the same, 0 changed"
    )


def market_footprint() -> Footprint:
    measurement = Measurement(41.7, 9.5, 1.3, "measured", "nvml", gpus=2)
    contracts = MarketContracts(0.75, 12.0, 540.0, "AIB 2024, Netherlands")
    site = SiteFactors(zone="NL", pue=1.1, wue_l_per_kwh=0.3, contracts=contracts)
    return compute_footprint(measurement, site, Hardware(gpus=2), TABLE.lookup("NL"))


async def test_recompute_checks_the_market_figure_from_its_stored_contracts(
    ledger: Ledger,
) -> None:
    footprint = market_footprint()
    assert footprint.co2e_market_g is not None
    await ledger.record(row_for("market", footprint))
    await ledger.record(
        replace(row_for("market-moved", footprint), co2e_market_g=footprint.co2e_market_g * 2)
    )
    await ledger.record(replace(row_for("market-bare", footprint), market_coverage=None))
    await ledger.record(row_for("location-only", measured_footprint()))
    count, changes = recompute_rows(await ledger.request_rows(None, None))
    assert count == 4
    by_id = {change.request_id: change for change in changes}
    assert set(by_id) == {"market-moved", "market-bare"}
    assert list(by_id["market-moved"].changed) == ["co2e_market_g"]
    stored, now = by_id["market-moved"].changed["co2e_market_g"]
    assert stored == pytest.approx(2 * now) and now == pytest.approx(footprint.co2e_market_g)
    assert "without its contracts" in by_id["market-bare"].reason
