"""A ledger filled with a month of believable traffic, for the dashboard's tests and benchmark.

Rows go in through the ledger's own `record()` (the path the proxy writes by), teams, keys and
budgets through its store, so a `footprint serve` started on the file reads them as its own.
Figures are made from a seeded random generator: the same arguments give the same ledger.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from proxy.config import LedgerSettings
from proxy.ledger import LedgerRecord, open_ledger
from proxy.ledger._schema import teams as teams_table
from tests.proxy.test_auth import make_key

UPSTREAMS = ("gpu-east", "api-west")


@dataclass
class SeededLedger:
    url: str
    start: datetime
    end: datetime
    keys: dict[str, str] = field(default_factory=dict)  # team -> its key
    rows: int = 0


def _record(rng: random.Random, i: int, at: datetime, team: str, model: str) -> LedgerRecord:
    upstream = UPSTREAMS[i % len(UPSTREAMS)]
    measured = upstream == "gpu-east"
    prompt, completion = rng.randint(20, 2000), rng.randint(10, 800)
    gpu_j = completion * rng.uniform(0.1, 0.4) + prompt * 0.01
    energy_j = gpu_j * 1.45
    co2e_g = energy_j / 3.6e6 * 400.0 + energy_j * 1e-6
    return LedgerRecord(
        request_id=f"seed-{i:07d}",
        created_at=at,
        team=team,
        key_id=None,
        model=model,
        upstream=upstream,
        endpoint="chat.completions",
        stream=bool(i % 2),
        status=200,
        cancelled=False,
        error=None,
        prompt_tokens=prompt,
        completion_tokens=completion,
        tokens_counted=False,
        method="measured" if measured else "estimated",
        basis="nvml" if measured else "ecologits",
        gpu_energy_j=gpu_j,
        energy_j=energy_j,
        co2e_g=co2e_g,
        embodied_co2e_g=energy_j * 1e-6,
        water_ml=energy_j / 3.6e6 * 2500.0,
        zone="KR" if measured else "US",
        grid_gco2e_per_kwh=400.0,
        pue=1.2,
        intensity_source="table",
        trace_id=f"{i:032x}" if i % 3 == 0 else None,
        duration_ms=rng.uniform(100, 9000),
        overhead_ms=0.4,
    )


async def seed_ledger(
    url: str,
    *,
    teams: Sequence[str],
    models: Sequence[str],
    rows: int,
    end: datetime,
    days: int = 30,
    key_teams: Sequence[str] = (),
    budgets: Sequence[tuple[str, str, str, float]] = (),
    raw_teams: Sequence[str] = (),
    seed: int = 16,
) -> SeededLedger:
    """`rows` requests spread evenly over the `days` before `end`, cycling through `teams`
    and `models`. `key_teams` get a key each; `budgets` are (team, metric, period, limit);
    `raw_teams` are written straight into the teams table (names the admin API refuses)."""
    rng = random.Random(seed)
    start = end - timedelta(days=days)
    step_s = days * 86400 / rows
    ledger = await open_ledger(LedgerSettings(url=url))
    out = SeededLedger(url=url, start=start, end=end)
    try:
        for team in teams:
            if team in raw_teams:
                async with ledger._engine.begin() as conn:
                    await conn.execute(
                        teams_table.insert().values(name=team, created_at=datetime.now(UTC))
                    )
            else:
                await ledger.create_team(team)
        for team in key_teams:
            out.keys[team] = (await make_key(ledger, team))[1]
        for team, metric, period, limit in budgets:
            await ledger.put_budget(team, metric, period, limit)
        batch: list[LedgerRecord] = []
        for i in range(rows):
            at = start + timedelta(seconds=i * step_s + rng.uniform(0, step_s * 0.9))
            team = teams[i % len(teams)]
            model = models[(i // len(teams)) % len(models)]
            batch.append(_record(rng, i, at, team, model))
            if len(batch) == 500:
                await asyncio.gather(*(ledger.record(r) for r in batch))
                batch.clear()
        await asyncio.gather(*(ledger.record(r) for r in batch))
        out.rows = rows
        for day in range(days):
            # One idle hour a day on the measured upstream: energy no team's figures carry.
            begin = start + timedelta(days=day)
            await ledger.record_idle(
                UPSTREAMS[0], begin, begin + timedelta(hours=1), 4000.0, co2e_g=0.45, water_ml=2.8
            )
    finally:
        await ledger.aclose()
    return out
