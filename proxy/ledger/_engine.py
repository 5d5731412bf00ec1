"""From `ledger.url` to a migrated async engine: the only place that knows driver names.

SQLite runs through aiosqlite (its own thread per connection, so nothing blocks the event
loop) in WAL mode for reads and administration; request rows are written by the ledger's own
writer thread (`_sqlite_writer`). PostgreSQL runs through asyncpg. `?schema=name` on a
PostgreSQL URL puts every table in that schema (used by tests; handy for sharing one database
between deployments); `?application_name=` names its connections (default `footprint`).
`?synchronous=full|normal` on a SQLite URL picks how hard a commit syncs to disk (see
`SQLiteTarget`).
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import event, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from proxy.config import LedgerSettings

if TYPE_CHECKING:
    from alembic.config import Config

_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_SYNCHRONOUS = {"normal": "NORMAL", "full": "FULL"}

# The newest revision under migrations/versions/ (a test checks that Alembic agrees). A
# database already at this revision is not migrated, so Alembic is not even imported (it
# costs about 10 MB of resident memory).
SCHEMA_HEAD = "0006"


class LedgerConfigError(ValueError):
    """`ledger.url` names something the ledger cannot use."""


@dataclass(frozen=True, slots=True)
class SQLiteTarget:
    """A SQLite ledger file and its `PRAGMA synchronous` level.

    In WAL mode, FULL (the default) fsyncs the WAL at every commit: a committed row survives a
    killed process and a power cut. NORMAL fsyncs only at checkpoints: a committed row survives
    a killed process (kill -9, OOM), but the last transactions before a power cut or kernel
    crash may be lost.
    """

    database: str
    synchronous: str


def build_engine(url_text: str, settings: LedgerSettings | None = None) -> AsyncEngine:
    """An async engine for `url_text` (sqlite:///… or postgresql://…), pragmas applied;
    PostgreSQL's pool sized by `settings` (the defaults of `LedgerSettings` without)."""
    url = make_url(url_text)
    if url.drivername in ("sqlite", "sqlite+aiosqlite"):
        return _sqlite_engine(url)
    if url.drivername in ("postgresql", "postgres", "postgresql+asyncpg"):
        return _postgres_engine(url, settings or LedgerSettings())
    raise LedgerConfigError(f"ledger URL must be sqlite:///… or postgresql://…, got {url_text!r}")


def sqlite_target(url_text: str) -> SQLiteTarget | None:
    """The file and sync level of a file-backed SQLite URL; None for PostgreSQL or :memory:."""
    url = make_url(url_text)
    if url.drivername not in ("sqlite", "sqlite+aiosqlite"):
        return None
    database = url.database or ""
    if not database or database == ":memory:":
        return None
    return SQLiteTarget(str(Path(database).expanduser()), _synchronous(url))


def apply_sqlite_pragmas(connection: sqlite3.Connection, synchronous: str) -> None:
    """WAL, the chosen sync level, foreign keys, and a 30 s wait for another writer's lock:
    for every SQLite connection of the ledger (aiosqlite's and the writer thread's)."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA synchronous={synchronous}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _synchronous(url: URL) -> str:
    synchronous = _SYNCHRONOUS.get(str(url.query.get("synchronous", "full")).lower())
    if synchronous is None:
        raise LedgerConfigError("ledger URL: synchronous must be normal or full")
    return synchronous


def _sqlite_engine(url: URL) -> AsyncEngine:
    synchronous = _synchronous(url)
    query = {k: v for k, v in url.query.items() if k != "synchronous"}
    engine = create_async_engine(
        url.set(drivername="sqlite+aiosqlite", query=query),
        # Readers wait for a writer's lock instead of failing at once.
        connect_args={"timeout": 30},
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        apply_sqlite_pragmas(dbapi_connection, synchronous)

    return engine


def _postgres_engine(url: URL, settings: LedgerSettings) -> AsyncEngine:
    query = dict(url.query)
    schema = query.pop("schema", None)
    # A server that does not answer costs a bounded wait, not asyncpg's default 60 s.
    connect_args: dict[str, Any] = {"timeout": settings.connect_timeout_s}
    # How the connections are named in pg_stat_activity (`?application_name=` to choose).
    server_settings = {"application_name": str(query.pop("application_name", "footprint"))}
    if schema is not None:
        schema = str(schema)
        if not _SCHEMA_NAME.match(schema):
            raise LedgerConfigError(f"ledger URL: not a schema name: {schema!r}")
        server_settings["search_path"] = schema
    connect_args["server_settings"] = server_settings
    return create_async_engine(
        url.set(drivername="postgresql+asyncpg", query=query),
        connect_args=connect_args,
        # Small by default (ledger.pool_size): several replicas and other clients share one
        # PostgreSQL, whose default is 100 connections in all.
        pool_size=settings.pool_size,
        max_overflow=settings.pool_max_overflow,
        pool_timeout=settings.pool_timeout_s,
        pool_pre_ping=False,
    )


def _alembic_config(connection: Connection) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    config.attributes["connection"] = connection
    return config


def _upgrade(connection: Connection) -> None:
    from alembic import command

    command.upgrade(_alembic_config(connection), "head")


async def schema_revision(engine: AsyncEngine) -> str | None:
    """The revision recorded in `alembic_version`; None for a database never migrated."""
    try:
        async with engine.connect() as conn:
            result = await conn.execute(text("SELECT version_num FROM alembic_version"))
            versions = [str(v) for v in result.scalars()]
    except DBAPIError:
        return None  # no alembic_version table yet
    return versions[0] if len(versions) == 1 else None


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest revision (idempotent; safe for replicas racing at start
    on PostgreSQL thanks to a transaction-scoped advisory lock). A database already at
    `SCHEMA_HEAD` costs one SELECT and no Alembic import."""
    if await schema_revision(engine) == SCHEMA_HEAD:
        return
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Two replicas starting together must not both create the tables.
            await conn.execute(text("SELECT pg_advisory_xact_lock(7011580220)"))
        await conn.run_sync(_upgrade)
