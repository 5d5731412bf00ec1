"""The ledger: one durable row per request, and the sums that reports and budgets read."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import case, event, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from proxy.config import LedgerSettings
from proxy.ledger._accounts import AccountRow, read_balance, upsert
from proxy.ledger._engine import build_engine, migrate, sqlite_target
from proxy.ledger._health import SQLiteFile, check_sqlite_start, write_marker
from proxy.ledger._records import LedgerRecord, as_utc, row_to_json
from proxy.ledger._schema import accounts, conflict_insert, idle, requests
from proxy.ledger._series import SeriesQueries
from proxy.ledger._sqlite_writer import SQLiteBatchWriter
from proxy.ledger._store import Store
from proxy.ledger._usage import GROUP_KEYS, IdleInterval, aggregate, split_idle_by_day
from proxy.ledger._writer import GroupCommitWriter, LedgerWriteError

IdlePolicy = Literal["report", "spread"]

_TRACE_SUMS = (
    "prompt_tokens",
    "completion_tokens",
    "gpu_energy_j",
    "energy_j",
    "co2e_g",
    "embodied_co2e_g",
    "water_ml",
    "duration_ms",
)


# Figures summed per group in usage reports (issue 15 added the carbon routing avoided).
_FIGURE_SUMS = (
    "gpu_energy_j",
    "energy_j",
    "co2e_g",
    "embodied_co2e_g",
    "water_ml",
    "co2e_avoided_g",
)


class Ledger(Store, SeriesQueries):
    """Request records and reports over them, plus (inherited from `Store`) the teams, keys
    and budget limits kept in the same database. Build with `open_ledger`."""

    def __init__(
        self, engine: AsyncEngine, settings: LedgerSettings, revocation_file: Path | None
    ) -> None:
        super().__init__(engine, revocation_file)
        dialect = engine.dialect.name
        target = sqlite_target(settings.url)
        self._writer: GroupCommitWriter | SQLiteBatchWriter
        self._file: SQLiteFile | None = None
        # Set when a row failed to commit, cleared by the next that commits or by a probe.
        self._write_failed = False
        if target is not None:
            self._file = SQLiteFile(target.database)
            self._writer = SQLiteBatchWriter(
                target.database,
                target.synchronous,
                max_rows=settings.batch_max_rows,
                check_file=self._file.check,
            )
            guard = self._file

            @event.listens_for(engine.sync_engine, "begin")
            def _file_still_there(_conn: Any) -> None:
                guard.check()

        else:
            self._writer = GroupCommitWriter(
                engine,
                self._insert_batch,
                max_rows=settings.batch_max_rows,
                max_delay_s=settings.batch_max_delay_ms / 1000.0,
                autocommit=dialect == "postgresql",
            )
        self._insert = conflict_insert(dialect, requests).on_conflict_do_nothing(
            index_elements=["request_id"]
        )

    @property
    def store(self) -> Store:
        """Teams, keys and budgets (this object: kept for callers that want the narrow type)."""
        return self

    @property
    def backend(self) -> str:
        """'sqlite' or 'postgresql'."""
        return self._engine.dialect.name

    @property
    def rows_committed(self) -> int:
        return self._writer.rows_committed

    @property
    def batches_committed(self) -> int:
        return self._writer.batches_committed

    async def _insert_batch(self, conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
        await conn.execute(self._insert, rows)

    # -- writing ----------------------------------------------------------------------------

    async def record(self, record: LedgerRecord) -> None:
        """Store `record`; returns once it is committed. Idempotent on request_id: a second
        record with the same id leaves the first as it was. Raises LedgerWriteError.

        Rows are group-committed: on a SQLite file by a writer thread (one thread hop and one
        commit per batch; see `SQLiteTarget` for what the `synchronous` level promises), on
        PostgreSQL by one pipelined, atomic `executemany` per batch."""
        try:
            await self._writer.submit(record.to_row())
        except LedgerWriteError:
            self._write_failed = True
            raise
        self._write_failed = False

    async def record_idle(
        self,
        upstream: str,
        start: datetime,
        end: datetime,
        energy_j: float,
        *,
        gpu_energy_j: float | None = None,
        co2e_g: float = 0.0,
        water_ml: float = 0.0,
    ) -> None:
        """Store idle energy of `upstream` over [start, end). `energy_j` is facility energy
        (as in request rows); `gpu_energy_j` defaults to it."""
        values = {
            "upstream": upstream,
            "start_at": as_utc(start),
            "end_at": as_utc(end),
            "gpu_energy_j": energy_j if gpu_energy_j is None else gpu_energy_j,
            "energy_j": energy_j,
            "co2e_g": co2e_g,
            "water_ml": water_ml,
        }
        async with self._engine.begin() as conn:
            await conn.execute(insert(idle).values(**values))

    async def record_accounts(self, rows: Sequence[AccountRow]) -> None:
        """Store meter buckets idempotently: a key already held keeps the fuller reading, so
        every replica of a cluster may write the same bucket (methodology §2b)."""
        if not rows:
            return
        statement = upsert(self.backend)
        async with self._engine.begin() as conn:
            for row in rows:
                await conn.execute(statement, [row.to_row()])

    async def accounts(
        self, start: datetime | None = None, end: datetime | None = None
    ) -> list[dict[str, Any]]:
        """Per upstream and day: measured = Σ requests + idle + other, and the share of the
        GPUs' working energy that passed through Footprint."""
        async with self._engine.connect() as conn:
            return await read_balance(conn, start, end)

    # -- reading ----------------------------------------------------------------------------

    async def has_request(self, request_id: str) -> bool:
        """Whether a row with `request_id` exists, of any team (one primary-key lookup)."""
        query = select(requests.c.request_id).where(requests.c.request_id == request_id)
        async with self._engine.connect() as conn:
            return (await conn.execute(query)).first() is not None

    async def get_request(self, request_id: str, team: str | None) -> dict[str, Any] | None:
        """The record of one request; with `team`, only if it is that team's."""
        query = select(requests).where(requests.c.request_id == request_id)
        if team is not None:
            query = query.where(requests.c.team == team)
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else row_to_json(row._asdict())

    async def request_rows(
        self, start: datetime | None, end: datetime | None, team: str | None = None
    ) -> list[dict[str, Any]]:
        """Every stored request row in [start, end) (optionally one team's), oldest first, as
        the footprint API returns them; `footprint report --recompute` audits these."""
        query = select(requests).order_by(requests.c.created_at, requests.c.request_id)
        if start is not None:
            query = query.where(requests.c.created_at >= as_utc(start))
        if end is not None:
            query = query.where(requests.c.created_at < as_utc(end))
        if team is not None:
            query = query.where(requests.c.team == team)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [row_to_json(row._asdict()) for row in rows]

    async def usage(
        self,
        group_by: Sequence[str],
        start: datetime | None,
        end: datetime | None,
        team: str | None,
        idle_policy: IdlePolicy,
    ) -> list[dict[str, Any]]:
        """Sums over [start, end) grouped by any of team, model, upstream, day."""
        rows, _ = await self.usage_report(group_by, start, end, team, idle_policy)
        return rows

    async def usage_report(
        self,
        group_by: Sequence[str],
        start: datetime | None,
        end: datetime | None,
        team: str | None,
        idle_policy: IdlePolicy,
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(usage rows, idle energy per upstream not spread over any team in the period)."""
        for key in group_by:
            if key not in GROUP_KEYS:
                raise ValueError(f"cannot group by {key!r}")
        keys = [getattr(requests.c, k) for k in GROUP_KEYS]
        query = select(
            *keys,
            func.count().label("requests"),
            func.coalesce(func.sum(requests.c.prompt_tokens), 0).label("prompt_tokens"),
            func.coalesce(func.sum(requests.c.completion_tokens), 0).label("completion_tokens"),
            *(func.coalesce(func.sum(getattr(requests.c, f)), 0.0).label(f) for f in _FIGURE_SUMS),
            # NULL where no row of the group has a market-based figure (SUM skips NULLs).
            func.sum(requests.c.co2e_market_g).label("co2e_market_g"),
            func.coalesce(
                func.sum(
                    case((requests.c.co2e_market_g.is_not(None), requests.c.energy_j), else_=0.0)
                ),
                0.0,
            ).label("market_energy_j"),
        ).group_by(*keys)
        spread = idle_policy == "spread"
        # Spreading needs every team's energy on an upstream; filter to `team` afterwards.
        if team is not None and not spread:
            query = query.where(requests.c.team == team)
        if start is not None:
            query = query.where(requests.c.created_at >= as_utc(start))
        if end is not None:
            query = query.where(requests.c.created_at < as_utc(end))
        async with self._engine.connect() as conn:
            fine = [r._asdict() for r in (await conn.execute(query)).all()]
            intervals = await self._idle_intervals(conn, start, end)
        for row in fine:
            row["prompt_tokens"] = int(row["prompt_tokens"])
            row["completion_tokens"] = int(row["completion_tokens"])
            row["tokens"] = row["prompt_tokens"] + row["completion_tokens"]
            for f in _FIGURE_SUMS:
                row[f] = float(row[f])
            row["market_energy_j"] = float(row["market_energy_j"])
        by_day = split_idle_by_day(intervals, start, end)
        rows, unspread = aggregate(
            fine, [*group_by, "team"] if team and spread else group_by, by_day if spread else None
        )
        if team is not None and spread:
            rows = [r for r in rows if r["team"] == team]
            if "team" not in group_by:
                for r in rows:
                    del r["team"]
        if not spread:
            unspread = _sum_idle_per_upstream(by_day)
        return rows, ([] if team is not None else unspread)

    async def _idle_intervals(
        self, conn: AsyncConnection, start: datetime | None, end: datetime | None
    ) -> list[IdleInterval]:
        query = select(idle)
        if start is not None:
            query = query.where(idle.c.end_at > as_utc(start))
        if end is not None:
            query = query.where(idle.c.start_at < as_utc(end))
        rows = (await conn.execute(query)).all()
        intervals = [
            IdleInterval(
                r.upstream, r.start_at, r.end_at, r.gpu_energy_j, r.energy_j, r.co2e_g, r.water_ml
            )
            for r in rows
        ]
        # Idle from the meter accounts (one row per meter and bucket, however many replicas).
        shared = select(accounts).where(accounts.c.idle_gpu_energy_j > 0)
        if start is not None:
            shared = shared.where(accounts.c.bucket_end > as_utc(start))
        if end is not None:
            shared = shared.where(accounts.c.bucket_start < as_utc(end))
        for r in (await conn.execute(shared)).all():
            intervals.append(
                IdleInterval(
                    r.upstream,
                    r.bucket_start,
                    r.bucket_end,
                    r.idle_gpu_energy_j,
                    r.idle_energy_j,
                    r.idle_co2e_g,
                    r.idle_water_ml,
                )
            )
        return intervals

    async def trace(self, trace_id: str, team: str | None) -> dict[str, Any] | None:
        """Summed footprint of every request in one distributed trace (of `team`, if given)."""
        query = (
            select(requests.c.request_id, *(getattr(requests.c, f) for f in _TRACE_SUMS))
            .where(requests.c.trace_id == trace_id)
            .order_by(requests.c.created_at, requests.c.request_id)
        )
        if team is not None:
            query = query.where(requests.c.team == team)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        if not rows:
            return None
        out: dict[str, Any] = {"trace_id": trace_id, "requests": len(rows)}
        for f in _TRACE_SUMS:
            total = sum(getattr(r, f) for r in rows)
            out[f] = int(total) if f.endswith("tokens") else float(total)
        out["request_ids"] = [r.request_id for r in rows]
        return out

    async def ping(self) -> None:
        """Raises unless the ledger can write: the SQLite file is the one opened and writable,
        the database answers, and, after a row failed to commit, a probe row can be inserted
        (in a transaction rolled back, so nothing is kept)."""
        if self._file is not None:
            self._file.check()
        async with self._engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
            if self._write_failed:
                await conn.execute(insert(requests).values(**_PROBE.to_row()))
                await conn.rollback()
                self._write_failed = False

    async def count_requests(self) -> int:
        async with self._engine.connect() as conn:
            return int(
                (await conn.execute(select(func.count()).select_from(requests))).scalar_one()
            )

    async def aclose(self) -> None:
        """Commit what is queued, then close every connection."""
        await self._writer.aclose()
        await self._engine.dispose()

    async def _start(self) -> None:
        await self._writer.start()
        if self._file is not None:
            self._file.remember()
            write_marker(self._file.path)


# What `ping` tries to insert (and rolls back) after a failed write.
_PROBE = LedgerRecord(
    request_id="footprint-readiness-probe",
    created_at=datetime(2000, 1, 1, tzinfo=UTC),
    team="footprint-probe",
    key_id=None,
    model="probe",
    upstream="probe",
    endpoint="chat.completions",
    stream=False,
    status=200,
    cancelled=False,
    error=None,
    prompt_tokens=0,
    completion_tokens=0,
    tokens_counted=False,
    method="estimated",
    basis="probe",
    gpu_energy_j=0.0,
    energy_j=0.0,
    co2e_g=0.0,
    embodied_co2e_g=0.0,
    water_ml=0.0,
    zone="WORLD",
    grid_gco2e_per_kwh=0.0,
    pue=1.0,
    intensity_source="probe",
    trace_id=None,
    duration_ms=0.0,
    overhead_ms=0.0,
)


def _sum_idle_per_upstream(by_day: dict[tuple[str, str], list[float]]) -> list[dict[str, Any]]:
    totals: dict[str, list[float]] = {}
    for (upstream, _day), figures in by_day.items():
        acc = totals.setdefault(upstream, [0.0, 0.0, 0.0, 0.0])
        for i, v in enumerate(figures):
            acc[i] += v
    return [
        {"upstream": u, "gpu_energy_j": v[0], "energy_j": v[1], "co2e_g": v[2], "water_ml": v[3]}
        for u, v in sorted(totals.items())
    ]


def _revocation_file(engine: AsyncEngine) -> Path | None:
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database
    if not database or database == ":memory:":
        return None
    return Path(database).expanduser().with_name(Path(database).name + ".revocations")


async def open_ledger(settings: LedgerSettings) -> Ledger:
    """Connect to `settings.url`, bring the schema up to date, start the group-commit writer."""
    target = sqlite_target(settings.url)
    if target is not None:
        check_sqlite_start(target.database)
    engine = build_engine(settings.url, settings)
    try:
        await migrate(engine)
    except BaseException:
        await engine.dispose()
        raise
    ledger = Ledger(engine, settings, _revocation_file(engine))
    try:
        await ledger._start()
    except BaseException:
        await engine.dispose()
        raise
    return ledger
