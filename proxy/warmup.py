"""Everything a first request would otherwise pay for, done before the server says ready.

Measured (bench/first_stream.py, issue 17): the first streamed request after start waited
90–140 ms longer for its first chunk than later ones. The time went to imports done on first
use (anyio's asyncio backend and its streams, which Starlette's streaming response and the
relay's shielded cancel scope load lazily: about 50 ms; `_strptime` for the budget periods;
the IDNA codec), to SQLAlchemy compiling the budget store's SELECTs on their first execution
(about 30 ms), and to the telemetry's first record of each instrument.

`warm_up` runs in the lifespan before it yields, so uvicorn does not listen (and `/readyz`
cannot say ready) until it is done. It writes nothing: no ledger row, no budget, no charge,
no upstream request; the budget read is the one a first request of team "default" (auth
"none") would make, or for a team name no key can have.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

import anyio
import anyio.lowlevel

from proxy.services import Services

log = logging.getLogger("footprint.warmup")

# Not a valid team name (teams are created through the admin API, which refuses spaces), so
# the read below can never be a real team's.
_NO_TEAM = "footprint warm-up"


def load_lazy_modules() -> None:
    """Import what the relay path would otherwise import on its first request."""
    datetime.strptime("2000-01", "%Y-%m").replace(tzinfo=UTC)  # imports _strptime
    "footprint.invalid".encode("idna")  # the IDNA codec, used by URL handling
    for name in getattr(anyio, "__all__", ()):  # anyio resolves its names on first use
        getattr(anyio, name, None)


def load_warm_up_modules() -> None:
    """Import all that `warm_up` imports, without its reads (an event loop of its own for
    anyio's backend): `footprint serve --workers` does before it forks."""
    load_lazy_modules()
    asyncio.run(_warm_anyio())


async def _warm_anyio() -> None:
    # The first task group loads anyio's asyncio backend (Starlette's StreamingResponse and
    # FileResponse open one per answer).
    async with anyio.create_task_group() as group:
        group.start_soon(anyio.sleep, 0)
    with anyio.CancelScope(shield=True):
        await anyio.lowlevel.checkpoint()


async def warm_up(services: Services) -> float:
    """Warm the relay path of `services`; returns the seconds it took. A part that fails is
    logged and skipped: warming is an optimisation, never a reason not to start."""
    began = time.perf_counter()
    load_lazy_modules()
    await _warm_anyio()
    # With auth "none" every request is team "default": load its budget state now, as its
    # first request would (a read, cached as then). Otherwise a team no key can have.
    team = "default" if services.settings.server.auth == "none" else _NO_TEAM
    try:
        # Pinged first: a store that is down now is /readyz's to report, and must not be
        # counted as a failure of a request's (`status` would mark it down and count it).
        await services.budgets.ping()
    except Exception as exc:
        log.warning("warm-up: the budget store did not answer: %r", exc)
    else:
        try:
            await services.budgets.status(team)  # compiles the store's SELECTs
        except Exception as exc:  # warming never keeps the proxy from starting
            log.warning("warm-up: the budget read failed: %r", exc)
    elapsed_s = time.perf_counter() - began
    log.debug("warm-up took %.1f ms", elapsed_s * 1000)
    return elapsed_s
