"""Group commit: many requests' rows go to the database in one transaction.

A request hands its row to `GroupCommitWriter.submit` and waits; one background task takes
whatever rows are queued and commits them together, then wakes every waiter. So a waiter
returns only once its row is durable, and under load the cost of a commit is shared.

A batch closes when it holds `max_rows`, when its oldest row is `max_delay_s` old, or as soon
as no more rows are arriving (at low load nobody waits for company that isn't coming).

This writer serves PostgreSQL (and an in-memory SQLite database); a SQLite file is written by
`_sqlite_writer.SQLiteBatchWriter` from a thread of its own. With `autocommit=True` (used for
PostgreSQL) the batch is one statement outside an explicit transaction: asyncpg's
`executemany` pipelines every row in one exchange and is atomic by itself, so a batch costs one
round trip instead of three (BEGIN, the inserts, COMMIT).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from proxy.errors import ServiceUnavailable

log = logging.getLogger("footprint.ledger")

InsertBatch = Callable[[AsyncConnection, list[dict[str, Any]]], Awaitable[None]]

_STOP = object()


class LedgerWriteError(ServiceUnavailable):
    """A row could not be committed (it is not durable). The client sees a 503
    `service_unavailable`; the reason, which may name files or hosts, goes to the log only."""

    def __init__(self, detail: str) -> None:
        super().__init__("the ledger cannot write right now; this request was not recorded")
        self.detail = detail

    def __str__(self) -> str:
        return self.detail


class GroupCommitWriter:
    def __init__(
        self,
        engine: AsyncEngine,
        insert_batch: InsertBatch,
        *,
        max_rows: int,
        max_delay_s: float,
        autocommit: bool = False,
    ) -> None:
        self._engine = engine
        self._autocommit = autocommit
        self._insert_batch = insert_batch
        self._max_rows = max_rows
        self._max_delay_s = max_delay_s
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._conn: AsyncConnection | None = None
        self._closing = False
        self.batches_committed = 0
        self.rows_committed = 0

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="ledger-writer")

    async def submit(self, row: dict[str, Any]) -> None:
        if self._closing:
            raise LedgerWriteError("ledger is closed")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((row, future))
        # Shielded: a client that disconnects must not take its row out of the batch.
        await asyncio.shield(future)

    async def aclose(self) -> None:
        """Commit everything queued, then stop."""
        self._closing = True
        if self._task is not None:
            self._queue.put_nowait(_STOP)
            await self._task
            self._task = None
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            item = await self._queue.get()
            if item is _STOP:
                return
            batch = [item]
            deadline = loop.time() + self._max_delay_s
            stop_after = False
            while len(batch) < self._max_rows:
                try:
                    nxt = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    if loop.time() >= deadline:
                        break
                    # Let requests finishing right now join this batch.
                    await asyncio.sleep(0)
                    if self._queue.empty():
                        break
                    continue
                if nxt is _STOP:
                    stop_after = True
                    break
                batch.append(nxt)
            await self._commit(batch)
            if stop_after:
                return

    async def _commit(self, batch: list[tuple[dict[str, Any], asyncio.Future[None]]]) -> None:
        rows: dict[str, dict[str, Any]] = {}
        for row, _ in batch:
            rows.setdefault(row["request_id"], row)
        error: BaseException | None = None
        # One retry on a fresh connection: inserts are idempotent on request_id.
        for attempt in (1, 2):
            try:
                conn = await self._connection()
                await self._insert_batch(conn, list(rows.values()))
                if not self._autocommit:
                    await conn.commit()
                error = None
                break
            except Exception as exc:
                error = exc
                log.warning(
                    "ledger batch of %d rows failed (attempt %d): %r", len(rows), attempt, exc
                )
                await self._drop_connection()
        # A failed batch of several rows: one row at a time, so a row the database refuses
        # (a NOT NULL column left empty) fails alone instead of taking its batch with it.
        errors = {request_id: error for request_id in rows}
        if error is not None and len(rows) > 1:
            for request_id, row in rows.items():
                errors[request_id] = await self._insert_one(row)
        committed = sum(1 for e in errors.values() if e is None)
        if committed:
            self.batches_committed += 1
            self.rows_committed += committed
        for row, future in batch:
            if future.done():
                continue
            row_error = errors[row["request_id"]]
            if row_error is None:
                future.set_result(None)
            else:
                failure = LedgerWriteError(f"ledger write failed: {row_error!r}")
                failure.__cause__ = row_error
                future.set_exception(failure)

    async def _insert_one(self, row: dict[str, Any]) -> BaseException | None:
        try:
            conn = await self._connection()
            await self._insert_batch(conn, [row])
            if not self._autocommit:
                await conn.commit()
        except Exception as exc:
            await self._drop_connection()
            return exc
        return None

    async def _connection(self) -> AsyncConnection:
        if self._conn is None:
            conn = await self._engine.connect()
            if self._autocommit:
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            self._conn = conn
        return self._conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            await conn.invalidate()
        except Exception as exc:
            log.debug("closing a broken ledger connection: %r", exc)
