"""The schema brought up to date in a child process, before `footprint serve` opens the ledger.

Alembic, and what it loads to run the migrations, stay in a process's memory once imported:
measured on one machine (issue 17), a first start on a new SQLite ledger served at 100 MB of
resident memory against 88 MB for the same process on a ledger already current. Run in a
child, the migrations cost the serving process one SELECT and no import of Alembic.

The child only prepares. Whatever it does, the lifespan's `open_ledger` then migrates as
before: a no-op after the child succeeded, or the same in-process migration, failing the
start with the same error and traceback, where the child could not do it. An in-memory SQLite
ledger is migrated in the process that holds it (a child could not see it).

The child runs `main()`, with the ledger's settings as JSON on its standard input.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy.engine import make_url

from proxy.config import LedgerSettings
from proxy.ledger._engine import (
    SCHEMA_HEAD,
    build_engine,
    migrate,
    schema_revision,
    sqlite_target,
)

log = logging.getLogger("footprint.ledger")

# The directory that holds the `proxy` package: on the child's path first, so that it runs
# the migrations of this very checkout.
_SOURCE_ROOT = Path(__file__).resolve().parents[2]


async def _is_current(settings: LedgerSettings) -> bool:
    engine = build_engine(settings.url, settings)
    try:
        return await schema_revision(engine) == SCHEMA_HEAD
    finally:
        await engine.dispose()


def migrate_in_child(settings: LedgerSettings) -> None:
    """Bring the ledger of `settings` to the newest revision in a child process, unless it is
    there already or lives in memory. Never raises for the migration itself: a child that
    fails is logged (debug) and leaves the migration to `open_ledger`, whose error stops the
    start as it always did."""
    if make_url(settings.url).drivername.startswith("sqlite") and not sqlite_target(settings.url):
        return  # in memory
    try:
        if asyncio.run(_is_current(settings)):
            return
    except Exception as exc:  # `open_ledger` meets it again, and stops the start with it
        log.debug("ledger schema not checked before start (%r); left to open_ledger", exc)
        return
    path = os.pathsep.join(p for p in (str(_SOURCE_ROOT), os.environ.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, "-c", "from proxy.ledger._migration import main; main()"],
        input=settings.model_dump_json(),  # on stdin: the URL may hold a password
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        log.debug(
            "migrations in a child exited %d (%s); left to open_ledger", done.returncode, last
        )


async def _migrate(settings: LedgerSettings) -> None:
    engine = build_engine(settings.url, settings)
    try:
        await migrate(engine)
    finally:
        await engine.dispose()


def main() -> None:
    """The child: migrate the ledger whose settings are on standard input (JSON)."""
    asyncio.run(_migrate(LedgerSettings.model_validate_json(sys.stdin.read())))
