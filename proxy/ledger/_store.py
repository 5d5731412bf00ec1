"""Teams, API keys and budget limits, in the ledger's database.

Also the sums that rebuild a budget's spent amount from the ledger after a restart.
Names are checked by the callers (routes, CLI); here every value travels as a bound parameter.
"""

from __future__ import annotations

import asyncio
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import and_, case, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.ledger._records import METRICS, as_utc, iso
from proxy.ledger._schema import api_keys, budgets, rate_limits, requests, teams


class AlreadyExists(Exception):
    """A team with that name exists."""


class UnknownTeam(Exception):
    """No team with that name."""


class UnknownKey(Exception):
    """No key with that id in that team."""


class Store:
    """Teams, keys and budgets. Shares the ledger's engine; every call is one short
    transaction."""

    def __init__(self, engine: AsyncEngine, revocation_file: Path | None) -> None:
        self._engine = engine
        # SQLite only: a file that grows by one byte at every key revocation, so every process
        # on this database can tell in one stat() whether its cache of keys is still good.
        self._revocation_file = revocation_file

    # -- revocation epoch -------------------------------------------------------------------

    def revocation_epoch(self) -> int | None:
        """A number that changes whenever any key is revoked, or None when the store cannot
        offer one cheaply (PostgreSQL: look every key up, every time)."""
        if self._revocation_file is None:
            return None
        try:
            return os.stat(self._revocation_file).st_size
        except FileNotFoundError:
            return 0

    def _bump_revocation_epoch(self) -> None:
        if self._revocation_file is not None:
            with open(self._revocation_file, "ab") as f:
                f.write(b".")
                f.flush()
                os.fsync(f.fileno())

    # -- teams ------------------------------------------------------------------------------

    async def create_team(self, name: str) -> dict[str, Any]:
        now = datetime.now(UTC)
        try:
            async with self._engine.begin() as conn:
                await conn.execute(insert(teams).values(name=name, created_at=now))
        except IntegrityError as exc:
            raise AlreadyExists(name) from exc
        return {"name": name, "created_at": iso(now)}

    async def team_exists(self, name: str) -> bool:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(teams.c.name).where(teams.c.name == name))).first()
        return row is not None

    async def list_teams(self, *, limit: int, after: str | None) -> list[dict[str, Any]]:
        query = select(teams.c.name, teams.c.created_at).order_by(teams.c.name).limit(limit)
        if after is not None:
            query = query.where(teams.c.name > after)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [{"name": r.name, "created_at": iso(r.created_at)} for r in rows]

    # -- keys -------------------------------------------------------------------------------

    async def create_key(
        self, *, key_id: str, team: str, key_hash: str, key_prefix: str, models: list[str]
    ) -> dict[str, Any]:
        now = datetime.now(UTC)
        async with self._engine.begin() as conn:
            exists = (await conn.execute(select(teams.c.name).where(teams.c.name == team))).first()
            if exists is None:
                raise UnknownTeam(team)
            await conn.execute(
                insert(api_keys).values(
                    id=key_id,
                    team=team,
                    key_hash=key_hash,
                    key_prefix=key_prefix,
                    models=json.dumps(models),
                    created_at=now,
                )
            )
        return {"id": key_id, "team": team, "models": models, "created_at": iso(now)}

    async def find_key(self, key_hash: str) -> dict[str, Any] | None:
        """The live (not revoked) key with this hash."""
        query = select(
            api_keys.c.id, api_keys.c.team, api_keys.c.key_hash, api_keys.c.models
        ).where(api_keys.c.key_hash == key_hash, api_keys.c.revoked_at.is_(None))
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        return {
            "id": row.id,
            "team": row.team,
            "key_hash": row.key_hash,
            "models": json.loads(row.models),
        }

    async def revoke_key(self, key_id: str) -> bool:
        """Revoke; False when no such key. Revoking twice is not an error."""
        async with self._engine.begin() as conn:
            found = (
                await conn.execute(select(api_keys.c.id).where(api_keys.c.id == key_id))
            ).first()
            if found is None:
                return False
            await conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC))
            )
        await asyncio.to_thread(self._bump_revocation_epoch)
        return True

    async def list_keys(self, team: str | None) -> list[dict[str, Any]]:
        query = select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
        if team is not None:
            query = query.where(api_keys.c.team == team)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            {
                "id": r.id,
                "team": r.team,
                "key_prefix": r.key_prefix,
                "models": json.loads(r.models),
                "created_at": iso(r.created_at),
                "revoked_at": iso(r.revoked_at) if r.revoked_at is not None else None,
            }
            for r in rows
        ]

    # -- budgets ----------------------------------------------------------------------------

    async def put_budget(self, team: str, metric: str, period: str, limit: float) -> None:
        now = datetime.now(UTC)
        async with self._engine.begin() as conn:
            exists = (await conn.execute(select(teams.c.name).where(teams.c.name == team))).first()
            if exists is None:
                raise UnknownTeam(team)
            where = and_(
                budgets.c.team == team, budgets.c.metric == metric, budgets.c.period == period
            )
            changed = await conn.execute(
                update(budgets).where(where).values(limit_value=limit, updated_at=now)
            )
            if changed.rowcount == 0:
                await conn.execute(
                    insert(budgets).values(
                        team=team, metric=metric, period=period, limit_value=limit, updated_at=now
                    )
                )

    async def list_budgets(self, team: str) -> list[tuple[str, str, float]]:
        """(metric, period, limit) for every budget of `team`."""
        query = (
            select(budgets.c.metric, budgets.c.period, budgets.c.limit_value)
            .where(budgets.c.team == team)
            .order_by(budgets.c.metric, budgets.c.period)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [(r.metric, r.period, float(r.limit_value)) for r in rows]

    # -- rate limits ------------------------------------------------------------------------

    async def put_rate_limit(
        self,
        team: str,
        key_id: str | None,
        requests_per_minute: int | None,
        tokens_per_minute: int | None,
    ) -> None:
        """Set `team`'s limits (`key_id` None) or one of its keys'; None: no limit on it.
        Raises `UnknownTeam`, or `UnknownKey` for a key that is not the team's."""
        now = datetime.now(UTC)
        values = {
            "requests_per_minute": requests_per_minute,
            "tokens_per_minute": tokens_per_minute,
            "updated_at": now,
        }
        async with self._engine.begin() as conn:
            exists = (await conn.execute(select(teams.c.name).where(teams.c.name == team))).first()
            if exists is None:
                raise UnknownTeam(team)
            if key_id is not None:
                owned = (
                    await conn.execute(
                        select(api_keys.c.id).where(
                            api_keys.c.id == key_id, api_keys.c.team == team
                        )
                    )
                ).first()
                if owned is None:
                    raise UnknownKey(key_id)
            where = and_(rate_limits.c.team == team, rate_limits.c.key_id == (key_id or ""))
            changed = await conn.execute(update(rate_limits).where(where).values(**values))
            if changed.rowcount == 0:
                await conn.execute(
                    insert(rate_limits).values(team=team, key_id=key_id or "", **values)
                )

    async def list_rate_limits(self, team: str) -> list[tuple[str | None, int | None, int | None]]:
        """(key id or None for the team, requests per minute, tokens per minute) of `team`."""
        query = (
            select(
                rate_limits.c.key_id,
                rate_limits.c.requests_per_minute,
                rate_limits.c.tokens_per_minute,
            )
            .where(rate_limits.c.team == team)
            .order_by(rate_limits.c.key_id)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [(r.key_id or None, r.requests_per_minute, r.tokens_per_minute) for r in rows]

    async def spent(self, team: str, since: datetime | None) -> dict[str, float]:
        """What `team`'s ledger rows since `since` (None: ever) add up to, per budget metric.

        A request counts towards `requests` when it succeeded or used anything: a request that
        failed before reaching a model is released, not settled, by the budget.
        """
        async with self._engine.connect() as conn:
            row = (await conn.execute(_spent_query(team, since))).one()
        return {metric: float(value) for metric, value in zip(METRICS, row, strict=True)}

    async def budget_snapshot(
        self, team: str, starts: dict[str, datetime | None], recent_since: datetime
    ) -> tuple[dict[str, dict[str, float]], list[str]]:
        """In one snapshot of the database: what `team` spent since each of `starts` (period
        -> start, None: ever), and the ids of its rows created since `recent_since`. One
        snapshot, so a row is either in both or in neither (PostgreSQL: REPEATABLE READ;
        SQLite: one read transaction)."""
        async with self._engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn = await conn.execution_options(isolation_level="REPEATABLE READ")
            sums: dict[str, dict[str, float]] = {}
            for period, since in starts.items():
                row = (await conn.execute(_spent_query(team, since))).one()
                sums[period] = {m: float(v) for m, v in zip(METRICS, row, strict=True)}
            recent = select(requests.c.request_id).where(
                (requests.c.team == team) & (requests.c.created_at >= as_utc(recent_since))
            )
            ids = [str(r[0]) for r in (await conn.execute(recent)).all()]
            await conn.rollback()
        return sums, ids


def _spent_query(team: str, since: datetime | None) -> Any:
    counted = case(
        (
            (requests.c.status < 400)
            | (requests.c.prompt_tokens + requests.c.completion_tokens > 0)
            | (requests.c.energy_j > 0),
            1,
        ),
        else_=0,
    )
    query = select(
        func.coalesce(func.sum(requests.c.energy_j), 0.0),
        func.coalesce(func.sum(requests.c.co2e_g), 0.0),
        func.coalesce(func.sum(requests.c.water_ml), 0.0),
        func.coalesce(func.sum(requests.c.prompt_tokens + requests.c.completion_tokens), 0),
        func.coalesce(func.sum(counted), 0),
        func.coalesce(func.sum(func.coalesce(requests.c.co2e_market_g, requests.c.co2e_g)), 0.0),
    ).where(requests.c.team == team)
    if since is not None:
        query = query.where(requests.c.created_at >= as_utc(since))
    return query
