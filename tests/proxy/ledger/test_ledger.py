"""The ledger on a real SQLite file and a real PostgreSQL schema: what goes in comes out,
durably, once."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from proxy.config import LedgerSettings
from proxy.ledger import Ledger, LedgerWriteError, open_ledger
from tests.proxy.ledger.records import BASE, record

T0 = datetime(2025, 3, 14, 12, 0, tzinfo=UTC)


async def count_rows_fresh(url: str) -> int:
    """Rows in `requests`, read through a brand-new connection that shares nothing with the
    ledger (so only committed rows are visible)."""
    parsed = make_url(url)
    if parsed.drivername.startswith("sqlite"):
        with sqlite3.connect(parsed.database or "") as conn:
            return int(conn.execute("SELECT count(*) FROM requests").fetchone()[0])
    schema = parsed.query["schema"]
    conn = await asyncpg.connect(
        str(parsed.set(query={}).render_as_string(hide_password=False)),
        server_settings={"search_path": str(schema)},
    )
    try:
        return int(await conn.fetchval("SELECT count(*) FROM requests"))
    finally:
        await conn.close()


@pytest.fixture
async def ledger(ledger_url: str) -> Ledger:
    led = await open_ledger(LedgerSettings(url=ledger_url))
    yield led  # type: ignore[misc]
    await led.aclose()


async def test_a_record_comes_back_field_for_field(ledger: Ledger) -> None:
    await ledger.record(BASE)
    got = await ledger.get_request("req-0", "search")
    assert got is not None
    assert got["created_at"] == "2025-03-14T12:00:00Z"
    for name in ("team", "key_id", "model", "upstream", "endpoint", "status", "method", "basis"):
        assert got[name] == getattr(BASE, name)
    for name in ("gpu_energy_j", "energy_j", "co2e_g", "embodied_co2e_g", "water_ml", "pue"):
        assert got[name] == pytest.approx(getattr(BASE, name))
    assert got["stream"] is True and got["cancelled"] is False and got["tokens_counted"] is False
    assert got["trace_id"] == BASE.trace_id
    assert (got["prompt_tokens"], got["completion_tokens"]) == (120, 256)


async def test_another_teams_request_is_not_found(ledger: Ledger) -> None:
    await ledger.record(BASE)
    assert await ledger.get_request("req-0", "ads") is None
    assert await ledger.get_request("req-0", None) is not None  # the admin sees it


async def test_record_returned_means_the_row_is_committed(ledger: Ledger, ledger_url: str) -> None:
    await asyncio.gather(*(ledger.record(record(request_id=f"r{i}")) for i in range(300)))
    assert await count_rows_fresh(ledger_url) == 300
    # Concurrent rows were committed together, not one transaction each.
    assert ledger.batches_committed < 300


async def test_the_same_request_id_twice_is_one_row(ledger: Ledger, ledger_url: str) -> None:
    await ledger.record(record(request_id="dup", co2e_g=1.0))
    await asyncio.gather(
        ledger.record(record(request_id="dup", co2e_g=2.0)),
        ledger.record(record(request_id="dup", co2e_g=3.0)),
    )
    assert await count_rows_fresh(ledger_url) == 1
    got = await ledger.get_request("dup", None)
    assert got is not None and got["co2e_g"] == pytest.approx(1.0)


async def test_rows_survive_close_and_reopen(ledger_url: str) -> None:
    first = await open_ledger(LedgerSettings(url=ledger_url))
    await first.record(record(request_id="keep"))
    await first.aclose()
    second = await open_ledger(LedgerSettings(url=ledger_url))  # migrations run again: no-op
    try:
        assert await second.get_request("keep", "search") is not None
    finally:
        await second.aclose()


async def test_usage_sums_group_by_team_model_day(ledger: Ledger) -> None:
    rows = [
        record(request_id="a1", team="a", model="m1", co2e_g=1.0, energy_j=10.0, created_at=T0),
        record(request_id="a2", team="a", model="m1", co2e_g=2.0, energy_j=20.0, created_at=T0),
        record(request_id="a3", team="a", model="m2", co2e_g=4.0, energy_j=40.0, created_at=T0),
        record(
            request_id="a4", team="a", model="m1", co2e_g=8.0, created_at=T0 + timedelta(days=1)
        ),
        record(request_id="b1", team="b", model="m1", co2e_g=16.0, created_at=T0),
    ]
    for r in rows:
        await ledger.record(r)
    usage = await ledger.usage(["team", "model", "day"], None, None, None, "report")
    by_key = {(u["team"], u["model"], u["day"]): u for u in usage}
    assert by_key[("a", "m1", "2025-03-14")]["co2e_g"] == pytest.approx(3.0)
    assert by_key[("a", "m1", "2025-03-14")]["requests"] == 2
    assert by_key[("a", "m1", "2025-03-14")]["tokens"] == 2 * (120 + 256)
    assert by_key[("a", "m2", "2025-03-14")]["energy_j"] == pytest.approx(40.0)
    assert by_key[("a", "m1", "2025-03-15")]["co2e_g"] == pytest.approx(8.0)
    assert by_key[("b", "m1", "2025-03-14")]["co2e_g"] == pytest.approx(16.0)

    team_a = await ledger.usage([], None, None, "a", "report")
    assert len(team_a) == 1 and team_a[0]["co2e_g"] == pytest.approx(15.0)
    assert team_a[0]["requests"] == 4

    window = await ledger.usage(["team"], T0, T0 + timedelta(hours=1), None, "report")
    assert {u["team"]: u["co2e_g"] for u in window} == pytest.approx({"a": 7.0, "b": 16.0})


async def test_idle_energy_is_spread_by_share_of_attributed_energy(ledger: Ledger) -> None:
    await ledger.record(record(request_id="a", team="a", energy_j=30.0, created_at=T0))
    await ledger.record(record(request_id="b", team="b", energy_j=10.0, created_at=T0))
    await ledger.record_idle(
        "local-vllm", T0, T0 + timedelta(minutes=10), 100.0, co2e_g=8.0, water_ml=4.0
    )
    # Idle on an upstream nobody used that day stays apart.
    await ledger.record_idle("other", T0, T0 + timedelta(minutes=1), 5.0)

    reported, idle = await ledger.usage_report(["team"], None, None, None, "report")
    assert {u["team"]: u["energy_j"] for u in reported} == pytest.approx({"a": 30.0, "b": 10.0})
    assert {i["upstream"]: i["energy_j"] for i in idle} == pytest.approx(
        {"local-vllm": 100.0, "other": 5.0}
    )

    spread, unspread = await ledger.usage_report(["team"], None, None, None, "spread")
    by_team = {u["team"]: u for u in spread}
    assert by_team["a"]["energy_j"] == pytest.approx(30.0 + 75.0)
    assert by_team["a"]["idle_energy_j"] == pytest.approx(75.0)
    assert by_team["b"]["energy_j"] == pytest.approx(10.0 + 25.0)
    assert by_team["b"]["co2e_g"] == pytest.approx(BASE.co2e_g + 2.0)
    assert [i["upstream"] for i in unspread] == ["other"]
    # Conservation: attributed + idle in = spread out + unspread.
    total = sum(u["energy_j"] for u in spread) + sum(i["energy_j"] for i in unspread)
    assert total == pytest.approx(30.0 + 10.0 + 100.0 + 5.0)

    # A team key sees its own share only.
    only_b = await ledger.usage([], None, None, "b", "spread")
    assert len(only_b) == 1
    assert only_b[0]["energy_j"] == pytest.approx(35.0)


async def test_a_trace_sums_its_requests(ledger: Ledger) -> None:
    trace = "0af7651916cd43dd8448eb211c80319c"
    await ledger.record(record(request_id="t1", trace_id=trace, co2e_g=1.5, prompt_tokens=10))
    await ledger.record(record(request_id="t2", trace_id=trace, co2e_g=2.5, prompt_tokens=20))
    await ledger.record(record(request_id="t3", trace_id=trace, team="ads", co2e_g=100.0))
    await ledger.record(record(request_id="t4", trace_id="f" * 32))
    mine = await ledger.trace(trace, "search")
    assert mine is not None
    assert mine["request_ids"] == ["t1", "t2"]
    assert mine["co2e_g"] == pytest.approx(4.0)
    assert mine["prompt_tokens"] == 30
    everyone = await ledger.trace(trace, None)
    assert everyone is not None and everyone["requests"] == 3
    assert await ledger.trace("0" * 32, None) is None


async def test_a_failed_commit_reaches_the_caller(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ledger = await open_ledger(LedgerSettings(url=f"sqlite:///{tmp_path / 'l.db'}"))
    try:
        with pytest.raises(LedgerWriteError):
            # NOT NULL column: the database refuses the batch; the caller must hear of it.
            await ledger.record(record(request_id="bad", model=None))  # type: ignore[arg-type]
        await ledger.record(record(request_id="good"))
        assert await ledger.get_request("good", None) is not None
    finally:
        await ledger.aclose()


async def test_a_bad_row_fails_alone_in_its_batch(ledger: Ledger, ledger_url: str) -> None:
    good = [record(request_id=f"ok{i}") for i in range(20)]
    bad = record(request_id="bad", model=None)  # type: ignore[arg-type]
    results = await asyncio.gather(
        *(ledger.record(r) for r in [*good[:10], bad, *good[10:]]), return_exceptions=True
    )
    assert isinstance(results[10], LedgerWriteError)
    assert [r for i, r in enumerate(results) if i != 10] == [None] * 20
    assert await count_rows_fresh(ledger_url) == 20
