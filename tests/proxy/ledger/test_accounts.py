"""Meter accounts: one row per (meter, bucket) however many replicas write it, and the
per-upstream, per-day balance reports show (methodology §2b)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from proxy.config import LedgerSettings
from proxy.ledger import AccountRow, Ledger, open_ledger
from tests.proxy.ledger.records import BASE

T0 = datetime(2025, 3, 14, 12, 0, tzinfo=UTC)


def bucket(minute: int, measured_j: float, idle_j: float, replica: str = "a") -> AccountRow:
    start = T0 + timedelta(minutes=minute)
    return AccountRow(
        meter="prometheus:http://gpu-1:9400/metrics:0",
        bucket_start=start,
        bucket_end=start + timedelta(minutes=1),
        upstream="local-vllm",
        measured_gpu_energy_j=measured_j,
        measured_s=60.0,
        idle_gpu_energy_j=idle_j,
        idle_s=idle_j / 100.0,
        idle_energy_j=1.2 * (idle_j + 150.0 * idle_j / 100.0),
        idle_co2e_g=0.01,
        idle_embodied_co2e_g=0.001,
        idle_water_ml=0.2,
        other_gpu_energy_j=0.0,
        replica=replica,
    )


@pytest.fixture
async def ledger(ledger_url: str) -> AsyncIterator[Ledger]:
    led = await open_ledger(LedgerSettings(url=ledger_url))
    yield led
    await led.aclose()


async def test_replicas_writing_the_same_bucket_count_it_once(ledger: Ledger) -> None:
    await ledger.record_accounts([bucket(0, 6000.0, 1000.0, "a"), bucket(1, 6000.0, 6000.0)])
    # The second replica read the same GPUs: the same keys, a touch more for minute 0 (it saw
    # the whole minute), a touch less for minute 1 (it started late). And a retry of both.
    await ledger.record_accounts([bucket(0, 6010.0, 1001.0, "b"), bucket(1, 3000.0, 3000.0, "b")])
    await ledger.record_accounts([bucket(0, 6010.0, 1001.0, "b")])
    [day] = await ledger.accounts()
    assert day["measured_gpu_energy_j"] == pytest.approx(6010.0 + 6000.0)
    assert day["idle_gpu_energy_j"] == pytest.approx(1001.0 + 6000.0)


async def test_requests_plus_idle_plus_other_is_what_was_measured(ledger: Ledger) -> None:
    await ledger.record_accounts([bucket(0, 6000.0, 1000.0)])
    for i, energy_j in enumerate((1500.0, 2500.0)):
        await ledger.record(
            replace(
                BASE,
                request_id=f"r{i}",
                created_at=T0 + timedelta(seconds=10 * i),
                gpu_energy_j=energy_j,
            )
        )
    # An estimated figure measured nothing: it is not part of the GPUs' account.
    await ledger.record(replace(BASE, request_id="est", method="estimated", gpu_energy_j=99.0))
    [day] = await ledger.accounts()
    assert day["upstream"] == "local-vllm" and day["day"] == "2025-03-14"
    assert day["requests_gpu_energy_j"] == pytest.approx(4000.0)
    assert day["other_gpu_energy_j"] == pytest.approx(1000.0)
    total = day["requests_gpu_energy_j"] + day["idle_gpu_energy_j"] + day["other_gpu_energy_j"]
    assert total == pytest.approx(day["measured_gpu_energy_j"])
    assert day["passed_share"] == pytest.approx(4000.0 / 5000.0)


async def test_idle_from_accounts_is_reported_per_upstream(ledger: Ledger) -> None:
    await ledger.record_accounts([bucket(0, 6000.0, 1000.0)])
    _rows, idle = await ledger.usage_report(["team"], None, None, None, "report")
    [line] = idle
    assert line["upstream"] == "local-vllm"
    assert line["gpu_energy_j"] == pytest.approx(1000.0)
