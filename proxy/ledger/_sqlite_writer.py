"""SQLite ledger writes in one thread hop per batch.

A dedicated thread owns a stdlib `sqlite3` connection. `submit` puts a row and its future on a
queue (no lock, no wait) and awaits the future. The thread takes everything queued (up to
`max_rows`), inserts it with one `executemany` in one transaction, commits once, and wakes
every waiter of the batch with one `loop.call_soon_threadsafe`. That is group commit without
a timer: an idle writer commits a lone row at once, and rows that arrive while a commit is
under way form the next batch.

The INSERT is compiled from the SQLAlchemy table (`_schema.requests`) with the sqlite dialect,
and each value goes through that column type's SQLAlchemy bind processor, so rows written here
read back through SQLAlchemy exactly as if SQLAlchemy had written them.

Durability: `record()` returns once `COMMIT` has returned. In WAL mode with
`synchronous=FULL` (the default) the WAL is fsynced at every commit: an acknowledged row
survives a killed process and a power cut. With `synchronous=NORMAL` the WAL is fsynced only
at checkpoints: an acknowledged row survives a killed process (the OS holds the write), but the
last transactions before a power cut or kernel crash may be lost.
"""

from __future__ import annotations

import asyncio
import logging
import operator
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy.dialects import sqlite

from proxy.ledger._engine import apply_sqlite_pragmas
from proxy.ledger._schema import requests
from proxy.ledger._writer import LedgerWriteError

log = logging.getLogger("footprint.ledger")

_STOP = object()
# A row and the future its `record()` call waits on.
_Item = tuple[dict[str, Any], "asyncio.Future[None]"]


def _compiled_insert() -> tuple[str, list[tuple[str, Callable[[Any], Any] | None]]]:
    """INSERT … ON CONFLICT(request_id) DO NOTHING with qmark parameters, and for each
    parameter in order its column name and SQLAlchemy bind processor."""
    dialect = sqlite.dialect()
    statement = sqlite.insert(requests).on_conflict_do_nothing(index_elements=["request_id"])
    compiled = statement.compile(dialect=dialect, column_keys=[c.name for c in requests.columns])
    names = list(compiled.positiontup or [])
    params: list[tuple[str, Callable[[Any], Any] | None]] = [
        (name, requests.c[name].type.dialect_impl(dialect).bind_processor(dialect))
        for name in names
    ]
    return str(compiled), params


class SQLiteBatchWriter:
    """Group-committed inserts into `requests` from one thread of its own."""

    def __init__(
        self,
        database: str,
        synchronous: str,
        *,
        max_rows: int,
        check_file: Callable[[], None] = lambda: None,
    ) -> None:
        self._database = database
        # Raises LedgerWriteError when the file is gone or unwritable (see `_health`):
        # asked before every batch, since SQLite itself would write on into a deleted file.
        self._check_file = check_file
        self._synchronous = synchronous
        self._max_rows = max_rows
        self._sql, params = _compiled_insert()
        # The row's values in parameter order in one C call; a bind processor only where the
        # column type has one (dates, booleans), not a Python step per column.
        self._ordered = operator.itemgetter(*(name for name, _ in params))
        self._processed = [(i, process) for i, (_, process) in enumerate(params) if process]
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self.batches_committed = 0
        self.rows_committed = 0

    async def start(self) -> None:
        """Start the thread and wait until its connection is open (raises if it cannot be)."""
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = self._loop.create_future()
        # Daemon: a process that exits without aclose() must not hang on this thread; rows
        # still queued then were never acknowledged.
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="ledger-sqlite-writer", daemon=True
        )
        self._thread.start()
        try:
            await ready
        except BaseException:
            self._thread = None
            raise

    async def submit(self, row: dict[str, Any]) -> None:
        if self._closing or self._loop is None:
            raise LedgerWriteError("ledger is closed")
        future: asyncio.Future[None] = self._loop.create_future()
        self._queue.put((row, future))
        # Shielded: a client that disconnects must not take its row out of the batch.
        await asyncio.shield(future)

    async def aclose(self) -> None:
        """Commit everything queued, then stop the thread and close its connection."""
        self._closing = True
        thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_STOP)
            await asyncio.to_thread(thread.join)

    # -- the writer thread ------------------------------------------------------------------

    def _run(self, ready: asyncio.Future[None]) -> None:
        try:
            # Autocommit mode: transactions are begun and committed explicitly below.
            conn = sqlite3.connect(
                self._database, timeout=30, isolation_level=None, check_same_thread=True
            )
        except Exception as exc:
            self._wake(_fail_ready, ready, exc)
            return
        try:
            apply_sqlite_pragmas(conn, self._synchronous)
        except Exception as exc:
            conn.close()
            self._wake(_fail_ready, ready, exc)
            return
        self._wake(_succeed, ready)
        try:
            while True:
                batch, stop = self._take_batch()
                if batch:
                    try:
                        self._commit(conn, batch)
                    except Exception as exc:
                        # Not a database error (those are handled per row): fail the batch
                        # loudly and keep serving the next one.
                        log.exception("ledger writer: batch of %d rows failed", len(batch))
                        self._wake(_settle_batch, [f for _, f in batch], [exc] * len(batch))
                if stop:
                    return
        finally:
            conn.close()

    def _take_batch(self) -> tuple[list[_Item], bool]:
        """Block for one item, then take whatever else is already queued, up to max_rows."""
        first = self._queue.get()
        if first is _STOP:
            return [], True
        batch: list[_Item] = [first]
        while len(batch) < self._max_rows:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            batch.append(item)
        return batch, False

    def _commit(self, conn: sqlite3.Connection, batch: list[_Item]) -> None:
        try:
            self._check_file()
        except LedgerWriteError as exc:
            log.error("ledger batch of %d rows refused: %s", len(batch), exc)
            self._wake(_settle_batch, [f for _, f in batch], [exc] * len(batch))
            return
        errors: list[BaseException | None] = [None] * len(batch)
        values: list[list[Any]] = []
        for i, (row, _) in enumerate(batch):
            try:
                values.append(self._values(row))
            except Exception as exc:  # a value its column type cannot store: this row fails
                errors[i] = exc
        good = [i for i, e in enumerate(errors) if e is None]
        try:
            self._insert_all(conn, values)
        except sqlite3.Error as exc:
            log.warning("ledger batch of %d rows failed: %r", len(values), exc)
            for i, error in zip(good, self._commit_one_by_one(conn, values), strict=True):
                errors[i] = error
        committed = sum(1 for e in errors if e is None)
        if committed:
            self.batches_committed += 1
            self.rows_committed += committed
        self._wake(_settle_batch, [f for _, f in batch], errors)

    def _insert_all(self, conn: sqlite3.Connection, values: list[list[Any]]) -> None:
        if not values:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(self._sql, values)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _commit_one_by_one(
        self, conn: sqlite3.Connection, values: list[list[Any]]
    ) -> list[BaseException | None]:
        """After a failed batch: one row per statement, one commit, so a bad row fails alone."""
        errors: list[BaseException | None] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for row in values:
                try:
                    conn.execute(self._sql, row)
                    errors.append(None)
                except sqlite3.Error as exc:
                    errors.append(exc)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            log.warning("ledger batch of %d rows failed row by row: %r", len(values), exc)
            return [exc] * len(values)
        return errors

    def _values(self, row: dict[str, Any]) -> list[Any]:
        values = list(self._ordered(row))
        for i, process in self._processed:
            values[i] = process(values[i])
        return values

    def _wake(self, callback: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            # The loop is closed: nobody is waiting any more.
            log.debug("ledger writer: event loop closed before a batch was acknowledged")


def _succeed(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _fail_ready(future: asyncio.Future[None], error: BaseException) -> None:
    if not future.done():
        future.set_exception(LedgerWriteError(f"cannot open the SQLite ledger: {error!r}"))


def _settle_batch(futures: list[asyncio.Future[None]], errors: list[BaseException | None]) -> None:
    for future, error in zip(futures, errors, strict=True):
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        elif isinstance(error, LedgerWriteError):
            future.set_exception(error)
        else:
            failure = LedgerWriteError(f"ledger write failed: {error!r}")
            failure.__cause__ = error
            future.set_exception(failure)
