"""A process that records ledger rows from many concurrent callers and prints each request id
the moment `Ledger.record` returns for it (that is, once the ledger acknowledged it), until it
is killed. Run by test_crash.py:

    python -m tests.proxy.ledger.record_until_killed LEDGER_URL
"""

from __future__ import annotations

import asyncio
import sys

from proxy.config import LedgerSettings
from proxy.ledger import open_ledger
from tests.proxy.ledger.records import record

CALLERS = 32


async def main(url: str) -> None:
    ledger = await open_ledger(LedgerSettings(url=url))
    out = sys.stdout

    async def caller(c: int) -> None:
        i = 0
        while True:
            request_id = f"c{c}-{i}"
            await ledger.record(record(request_id=request_id))
            # One write per line, flushed: the parent reads every id acknowledged before
            # the kill.
            out.write(request_id + "\n")
            out.flush()
            i += 1

    await asyncio.gather(*(caller(c) for c in range(CALLERS)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
