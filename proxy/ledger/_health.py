"""Is the ledger there, and can it write? Checked at start, on every SQLite transaction and
batch, and by `/readyz`.

SQLite: an open connection keeps writing to a file whose directory was deleted (the inode
lives on, unlinked), so a deleted ledger would go on answering 200 and lose every row.
`SQLiteFile` remembers the file's identity (device, inode) once it is open and refuses to go
on when the path no longer leads to that file, or the file or its directory is not writable.

A new ledger file is created only where there is clearly none: the directory exists (it is
never created for the ledger) and there is no `<file>.created` marker, which Footprint writes
beside every ledger it opens. So a ledger whose file was deleted (marker left) or whose
directory was deleted (directory missing) is never silently replaced by an empty one on
restart; the start stops with one line saying what to restore or remove.

PostgreSQL: at start, `wait_until_reachable` retries the connection for
`ledger.connect_retry_s` with one log line per attempt, then gives up with one line.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from proxy.config import LedgerSettings
from proxy.ledger._engine import LedgerConfigError, build_engine, sqlite_target
from proxy.ledger._writer import LedgerWriteError

log = logging.getLogger("footprint.ledger")

MARKER_SUFFIX = ".created"
# asyncpg's names for "the server will not take this connection now".
_UNAVAILABLE_DRIVER_ERRORS = frozenset(
    {
        "TooManyConnectionsError",
        "CannotConnectNowError",
        "ConnectionDoesNotExistError",
        "InternalClientError",  # a connection whose operation was cut midway
        "AdminShutdownError",  # pg_terminate_backend
    }
)


class LedgerUnreachable(Exception):
    """The ledger's database could not be reached at start (after retrying)."""


class SQLiteFile:
    """The ledger file as opened: `check()` raises LedgerWriteError once it is gone, replaced
    or read-only."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._identity: tuple[int, int] | None = None

    def remember(self) -> None:
        stat = os.stat(self.path)
        self._identity = (stat.st_dev, stat.st_ino)

    def check(self) -> None:
        if self._identity is None:
            return
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            raise LedgerWriteError(
                f"the SQLite ledger {self.path} is gone (deleted while serving)"
            ) from None
        if (stat.st_dev, stat.st_ino) != self._identity:
            raise LedgerWriteError(f"the SQLite ledger {self.path} was replaced by another file")
        directory = os.path.dirname(self.path) or "."
        if not (os.access(self.path, os.W_OK) and os.access(directory, os.W_OK)):
            raise LedgerWriteError(f"the SQLite ledger {self.path} is not writable")


def marker_path(database: str) -> Path:
    path = Path(database)
    return path.with_name(path.name + MARKER_SUFFIX)


def check_sqlite_start(database: str) -> None:
    """Raise LedgerConfigError where opening `database` would create an empty ledger in place
    of one that existed (see the module's docstring for the rule)."""
    path = Path(database)
    if path.exists():
        return
    if not path.parent.is_dir():
        raise LedgerConfigError(
            f"the ledger's directory {path.parent} does not exist: restore it (with "
            f"{path.name}), or create it to start a new, empty ledger"
        )
    marker = marker_path(database)
    if marker.exists():
        created = marker.read_text(errors="replace").strip() or "earlier"
        raise LedgerConfigError(
            f"the ledger {path} is missing, but {marker} says one was created there "
            f"({created}): restore it, or delete {marker} to start a new, empty ledger"
        )


def write_marker(database: str) -> None:
    marker = marker_path(database)
    if not marker.exists():
        marker.write_text(datetime.now(UTC).isoformat(timespec="seconds") + "\n")


# The exception types a ledger call can raise besides our own: the app renders them (503 when
# `unavailable`, else 500) in a handler of their own, so the connection stays open.
ERROR_TYPES: tuple[type[Exception], ...] = (SQLAlchemyError, OSError)


def unavailable(exc: BaseException) -> bool:
    """True for the errors that mean the database cannot be used right now (refused or
    dropped connections, too many clients, an exhausted pool, a connection left unusable by
    one), as opposed to a bad query: the error or anything in its chain of causes."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, PoolTimeout | OperationalError | InterfaceError | OSError):
            return True
        if isinstance(seen, DBAPIError) and seen.connection_invalidated:
            return True
        if type(seen).__name__ in _UNAVAILABLE_DRIVER_ERRORS:
            return True
        seen = seen.__cause__ or getattr(seen, "orig", None)
    return False


def _where(url_text: str) -> str:
    url = make_url(url_text)
    return f"{url.host or 'localhost'}:{url.port or 5432}/{url.database or ''}"


async def check_reachable(settings: LedgerSettings) -> None:
    """Before serving: a SQLite ledger may be opened (the start rule above); a PostgreSQL one
    answers, retried for `connect_retry_s`. Raises LedgerConfigError or LedgerUnreachable
    with a one-line message."""
    target = sqlite_target(settings.url)
    if target is not None:
        check_sqlite_start(target.database)
        return
    if make_url(settings.url).drivername.startswith("sqlite"):
        return  # in memory
    where = _where(settings.url)
    deadline = time.monotonic() + settings.connect_retry_s
    while True:
        engine = build_engine(settings.url, settings)
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            return
        except (DBAPIError, OSError, PoolTimeout) as exc:
            reason = f"{type(getattr(exc, 'orig', None) or exc).__name__}"
            left_s = deadline - time.monotonic()
            if left_s <= 0:
                raise LedgerUnreachable(
                    f"cannot reach the ledger at {where} after {settings.connect_retry_s:g} s "
                    f"({reason})"
                ) from None
            log.warning("ledger at %s unreachable (%s); retrying for %.0f s", where, reason, left_s)
        finally:
            await engine.dispose()
        await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
