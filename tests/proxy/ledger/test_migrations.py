"""Migrations: the revision the ledger checks at start is Alembic's head, and a database that is
already there opens without importing Alembic (it costs resident memory in every replica)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory

from proxy.config import LedgerSettings
from proxy.ledger import open_ledger
from proxy.ledger._engine import SCHEMA_HEAD, build_engine, schema_revision

REPO_ROOT = Path(__file__).resolve().parents[3]
MIGRATIONS = REPO_ROOT / "proxy" / "ledger" / "migrations"

OPEN_AND_LIST_ALEMBIC = """
import asyncio, sys
from proxy.config import LedgerSettings
from proxy.ledger import open_ledger

async def main():
    ledger = await open_ledger(LedgerSettings(url=sys.argv[1]))
    await ledger.aclose()

asyncio.run(main())
print(sorted(m for m in sys.modules if m == "alembic" or m.startswith("alembic.")))
"""


def test_schema_head_is_alembics_head() -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(config).get_current_head() == SCHEMA_HEAD


async def test_a_new_database_is_migrated_to_head(ledger_url: str) -> None:
    engine = build_engine(ledger_url)
    try:
        assert await schema_revision(engine) is None
        ledger = await open_ledger(LedgerSettings(url=ledger_url))
        await ledger.aclose()
        assert await schema_revision(engine) == SCHEMA_HEAD
    finally:
        await engine.dispose()


def open_in_fresh_process(url: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", OPEN_AND_LIST_ALEMBIC, url],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


def test_a_current_database_opens_without_importing_alembic(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    assert open_in_fresh_process(url) != "[]"  # first start: migrated with Alembic
    assert open_in_fresh_process(url) == "[]"  # second start: schema current, no Alembic
