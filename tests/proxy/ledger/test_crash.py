"""kill -9 while rows are being group-committed: every row the ledger acknowledged is in the
database afterwards, once."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from proxy.config import LedgerSettings
from proxy.ledger import open_ledger

REPO_ROOT = Path(__file__).resolve().parents[3]
# Enough acknowledged rows that the kill lands while batches are in flight.
ACKNOWLEDGED_BEFORE_KILL = 400


async def acknowledged_ids_until_killed(url: str) -> list[str]:
    """Run record_until_killed.py, SIGKILL it after ACKNOWLEDGED_BEFORE_KILL ids, and return
    every id it printed (those printed after the count was reached included)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.proxy.ledger.record_until_killed",
        url,
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    ids: list[str] = []
    try:
        while len(ids) < ACKNOWLEDGED_BEFORE_KILL:
            line = await asyncio.wait_for(proc.stdout.readline(), timeout=60)
            if not line:
                stderr = (await proc.stderr.read()).decode(errors="replace")
                pytest.fail(f"recorder exited early:\n{stderr}")
            ids.append(line.decode().strip())
    finally:
        if proc.returncode is None:
            os.kill(proc.pid, signal.SIGKILL)
    # Whatever it acknowledged before it died is still in the pipe.
    rest = await proc.stdout.read()
    await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    ids.extend(line for line in rest.decode().split("\n")[:-1] if line)
    return ids


async def assert_all_present(url: str, ids: list[str]) -> None:
    ledger = await open_ledger(LedgerSettings(url=url))
    try:
        missing = [i for i in ids if await ledger.get_request(i, None) is None]
        assert missing == [], f"{len(missing)} acknowledged rows lost, e.g. {missing[:5]}"
    finally:
        await ledger.aclose()


async def test_kill_9_loses_no_acknowledged_row(ledger_url: str) -> None:
    ids = await acknowledged_ids_until_killed(ledger_url)
    assert len(ids) >= ACKNOWLEDGED_BEFORE_KILL
    await assert_all_present(ledger_url, ids)


async def test_kill_9_loses_no_acknowledged_row_with_synchronous_normal(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}?synchronous=normal"
    ids = await acknowledged_ids_until_killed(url)
    await assert_all_present(url, ids)
