"""From `ledger.url` to a migrated async engine: the only place that knows driver names.

SQLite runs through aiosqlite (its own thread per connection, so nothing blocks the event
loop) in WAL mode; PostgreSQL through asyncpg. `?schema=name` on a PostgreSQL URL puts every
table in that schema (used by tests; handy for sharing one database between deployments).
`?synchronous=normal|full` on a SQLite URL picks how hard a commit syncs to disk.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_SYNCHRONOUS = {"normal": "NORMAL", "full": "FULL"}


class LedgerConfigError(ValueError):
    """`ledger.url` names something the ledger cannot use."""


def build_engine(url_text: str) -> AsyncEngine:
    """An async engine for `url_text` (sqlite:///… or postgresql://…), pragmas applied."""
    url = make_url(url_text)
    if url.drivername in ("sqlite", "sqlite+aiosqlite"):
        return _sqlite_engine(url)
    if url.drivername in ("postgresql", "postgres", "postgresql+asyncpg"):
        return _postgres_engine(url)
    raise LedgerConfigError(f"ledger URL must be sqlite:///… or postgresql://…, got {url_text!r}")


def _sqlite_engine(url: URL) -> AsyncEngine:
    query = dict(url.query)
    synchronous = _SYNCHRONOUS.get(str(query.pop("synchronous", "full")).lower())
    if synchronous is None:
        raise LedgerConfigError("ledger URL: synchronous must be normal or full")
    database = url.database or ""
    if database and database != ":memory:":
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(
        url.set(drivername="sqlite+aiosqlite", query=query),
        # Readers wait for a writer's lock instead of failing at once.
        connect_args={"timeout": 30},
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed row survives power loss, not just a killed process.
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    return engine


def _postgres_engine(url: URL) -> AsyncEngine:
    query = dict(url.query)
    schema = query.pop("schema", None)
    connect_args: dict[str, Any] = {}
    if schema is not None:
        schema = str(schema)
        if not _SCHEMA_NAME.match(schema):
            raise LedgerConfigError(f"ledger URL: not a schema name: {schema!r}")
        connect_args["server_settings"] = {"search_path": schema}
    return create_async_engine(
        url.set(drivername="postgresql+asyncpg", query=query),
        connect_args=connect_args,
        pool_size=10,
        max_overflow=20,
    )


def _alembic_config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    config.attributes["connection"] = connection
    return config


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest revision (idempotent; safe for replicas racing at start
    on PostgreSQL thanks to a transaction-scoped advisory lock)."""
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            from sqlalchemy import text

            # Two replicas starting together must not both create the tables.
            await conn.execute(text("SELECT pg_advisory_xact_lock(7011580220)"))
        await conn.run_sync(lambda sync: command.upgrade(_alembic_config(sync), "head"))
