"""Per-team budgets on energy_j, co2e_g, water_ml, tokens, requests and co2e_market_g, per day,
month or in total: reserve the worst case before forwarding, settle to the real figure after.

Two backends behind one class:
- in-process (no `budgets.redis_url`): one replica; counts live in memory, rebuilt from the
  ledger the first time a team is seen, so a restart loses nothing that was recorded;
- Redis: several replicas; every check-and-reserve is one Lua script (atomic), reservations
  carry an expiry so a replica that dies does not hold budget forever, and a team's counts are
  rebuilt from the ledger whenever Redis has lost them.

Redis unreachable: `budgets.on_store_error` decides. "refuse" answers 503; "allow" serves the
request unchecked and adds its settled usage to Redis once Redis answers again. Both log and
count (`Budgets.store_errors`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from proxy.budgets._facts import (
    METRICS,
    PERIODS,
    BudgetLine,
    BudgetStore,
    Reservation,
    StoreUnavailable,
    Usage,
    _period_keys,
    period_key,
    plain_decimal,
    remaining_by_metric,
    remaining_headers,
    spent_since_period_starts,
    validate_budget,
)
from proxy.config import BudgetSettings
from proxy.errors import BudgetExceeded, ServiceUnavailable

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("footprint.budgets")

# How many settlements to keep for Redis while it is unreachable (policy "allow"); past that
# the oldest are dropped from Redis's count (the ledger still has them) and logged.
_MAX_PENDING = 100_000
# After a store failure, how long requests go on without asking the store again.
_STORE_RETRY_S = 1.0


class _Backend(Protocol):
    @property
    def redis(self) -> Redis | None:
        """The Redis client the backend counts in (None in-process); rate limits too."""
        ...

    async def reserve(
        self, team: str, request_id: str, worst: Usage, day: str, month: str
    ) -> tuple[bool, list[BudgetLine]]: ...

    def holds_nothing_for(self, team: str) -> bool:
        """True only when `team` is known to have no budget: its reservations hold nothing,
        so the worst case need not be worked out."""
        ...

    async def settle(
        self, reservation: Reservation, actual: Usage, recorded_s: float
    ) -> list[BudgetLine]: ...

    async def release(self, team: str, request_id: str) -> None: ...

    async def set_limit(self, team: str, metric: str, period: str, limit: float) -> None: ...

    async def lines(self, team: str, day: str, month: str) -> list[BudgetLine]: ...

    async def ping(self) -> None: ...

    async def claim(self, request_id: str, team: str) -> bool: ...

    async def unclaim(self, request_id: str) -> None: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class _Pending:
    """A settlement the store could not take yet; `recorded_s`: when its row was durable."""

    reservation: Reservation
    actual: Usage
    recorded_s: float


# --------------------------------------------------------------------------------------------
# In-process


@dataclass
class _TeamState:
    limits: dict[tuple[str, str], float]
    used: dict[tuple[str, str, str], float]  # (metric, period, period key) -> amount
    loaded_day: str
    loaded_month: str
    reserved: dict[str, float] = field(default_factory=lambda: dict.fromkeys(METRICS, 0.0))
    reservations: dict[str, tuple[Usage, float]] = field(default_factory=dict)


class LocalBackend:
    """Counts in this process. Correct for one replica only."""

    def __init__(self, store: BudgetStore, ttl_s: float, clock: Callable[[], float]) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._clock = clock
        self._teams: dict[str, _TeamState] = {}
        self._loading: dict[str, asyncio.Lock] = {}
        self._claims: dict[str, str] = {}  # request ids in flight -> team

    @property
    def redis(self) -> Redis | None:
        return None  # counted in this process

    async def _state(self, team: str, day: str, month: str) -> _TeamState:
        state = self._teams.get(team)
        if state is not None:
            return state
        lock = self._loading.setdefault(team, asyncio.Lock())
        async with lock:
            state = self._teams.get(team)
            if state is not None:
                return state
            try:
                limits = await self._store.list_budgets(team)
                spent = await spent_since_period_starts(self._store, team, day, month)
            except Exception as exc:
                raise StoreUnavailable(repr(exc)) from exc
            state = _TeamState(
                limits={(m, p): v for m, p, v in limits},
                used={(m, p, period_key(p, day, month)): v for (m, p), v in spent.items()},
                loaded_day=day,
                loaded_month=month,
            )
            self._teams[team] = state
            self._loading.pop(team, None)
            return state

    def _expire(self, state: _TeamState) -> None:
        now = self._clock()
        for rid in [r for r, (_, exp) in state.reservations.items() if exp <= now]:
            worst, _ = state.reservations.pop(rid)
            for metric, amount in zip(METRICS, worst.values(), strict=True):
                state.reserved[metric] -= amount

    def _lines(self, state: _TeamState, day: str, month: str) -> list[BudgetLine]:
        return [
            BudgetLine(
                metric=m,
                period=p,
                limit=limit,
                used=state.used.get((m, p, period_key(p, day, month)), 0.0),
                reserved=max(0.0, state.reserved[m]),
            )
            for (m, p), limit in sorted(state.limits.items())
        ]

    async def reserve(
        self, team: str, request_id: str, worst: Usage, day: str, month: str
    ) -> tuple[bool, list[BudgetLine]]:
        state = await self._state(team, day, month)
        if not state.limits:
            return True, []  # nothing to check or hold (what is held expires once one is set)
        # From here to the end nothing awaits: check and reserve are one step.
        self._expire(state)
        lines = self._lines(state, day, month)
        if request_id in state.reservations:
            return True, lines
        needed = dict(zip(METRICS, worst.values(), strict=True))
        if any(ln.remaining <= 0 or ln.remaining < needed[ln.metric] for ln in lines):
            return False, lines
        if lines:
            state.reservations[request_id] = (worst, self._clock() + self._ttl_s)
            for metric, amount in needed.items():
                state.reserved[metric] += amount
        return True, self._lines(state, day, month)

    def holds_nothing_for(self, team: str) -> bool:
        state = self._teams.get(team)
        return state is not None and not state.limits

    async def settle(
        self, reservation: Reservation, actual: Usage, recorded_s: float
    ) -> list[BudgetLine]:
        team, request_id = reservation.team, reservation.request_id
        day, month = reservation.day, reservation.month
        state = await self._state(team, day, month)
        self._drop_reservation(state, request_id)
        for metric, amount in zip(METRICS, actual.values(), strict=True):
            for period in PERIODS:
                key = (metric, period, period_key(period, day, month))
                state.used[key] = state.used.get(key, 0.0) + amount
        self._expire(state)
        return self._lines(state, day, month)

    def _drop_reservation(self, state: _TeamState, request_id: str) -> None:
        held = state.reservations.pop(request_id, None)
        if held is not None:
            for metric, amount in zip(METRICS, held[0].values(), strict=True):
                state.reserved[metric] -= amount

    async def release(self, team: str, request_id: str) -> None:
        state = self._teams.get(team)
        if state is not None:
            self._drop_reservation(state, request_id)

    async def set_limit(self, team: str, metric: str, period: str, limit: float) -> None:
        state = self._teams.get(team)
        if state is not None:
            state.limits[(metric, period)] = limit

    async def lines(self, team: str, day: str, month: str) -> list[BudgetLine]:
        state = await self._state(team, day, month)
        self._expire(state)
        return self._lines(state, day, month)

    async def ping(self) -> None:
        """Nothing to reach: the counts are in this process."""

    async def claim(self, request_id: str, team: str) -> bool:
        if request_id in self._claims:
            return False
        self._claims[request_id] = team
        return True

    async def unclaim(self, request_id: str) -> None:
        self._claims.pop(request_id, None)

    async def aclose(self) -> None:
        self._teams.clear()


# --------------------------------------------------------------------------------------------


class Budgets:
    """Reserve, settle and release against a team's budgets. Build with `open_budgets`."""

    def __init__(
        self,
        backend: _Backend,
        store: BudgetStore,
        on_store_error: str,
        clock: Callable[[], float] = time.time,
        *,
        store_retry_s: float = _STORE_RETRY_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._backend = backend
        self._store = store
        self._on_store_error = on_store_error
        self._clock = clock
        self._monotonic = monotonic
        self._store_retry_s = store_retry_s
        # After a failure the store is not asked again for store_retry_s: a Redis that
        # accepts connections and never answers costs one timeout per interval, not two per
        # request.
        self._store_down_until = 0.0
        # Read by telemetry: how often the budget store failed us.
        self.store_errors = 0
        self._pending: deque[_Pending] = deque()
        self._reconciling = asyncio.Lock()

    @property
    def redis(self) -> Redis | None:
        """The Redis client budgets count in (None in-process), shared with rate limits."""
        return self._backend.redis

    @property
    def pending_reconciliations(self) -> int:
        return len(self._pending)

    def _store_failed(self, what: str, exc: StoreUnavailable) -> None:
        self.store_errors += 1
        self._store_down_until = self._monotonic() + self._store_retry_s
        log.warning(
            "budget store unavailable during %s (policy %s): %s", what, self._on_store_error, exc
        )

    def _check_store(self) -> None:
        if self._monotonic() < self._store_down_until:
            raise StoreUnavailable("the budget store failed moments ago; not asked again yet")

    async def ping(self) -> None:
        """Raises StoreUnavailable when the budget store does not answer (for /readyz)."""
        await self._backend.ping()

    async def claim(self, request_id: str, team: str) -> bool:
        """Mark a client-chosen request id as in flight, for every replica; False when it
        already is (by any team). Held until `unclaim` (once the request's row is durable,
        or it failed), or the reservation TTL for a replica that died. With the store down,
        policy decides as for reservations: "refuse" answers 503, "allow" claims locally."""
        try:
            self._check_store()
            return await self._backend.claim(request_id, team)
        except StoreUnavailable as exc:
            self._store_failed("claim", exc)
            if self._on_store_error == "refuse":
                raise ServiceUnavailable(
                    "the budget store is unreachable; requests are refused until it is back"
                ) from None
            return True

    async def unclaim(self, request_id: str) -> None:
        try:
            self._check_store()
            await self._backend.unclaim(request_id)
        except StoreUnavailable as exc:
            self._store_failed("unclaim", exc)  # it expires on its own

    def holds_nothing_for(self, team: str) -> bool:
        """True only when `team` is known to have no budget (counted in this process, and
        none set): `reserve` then holds nothing whatever the worst case, so the caller need
        not work it out. With Redis every replica may have set one: always False."""
        return self._backend.holds_nothing_for(team)

    async def reserve(self, team: str, worst: Usage, request_id: str) -> Reservation:
        """Hold `worst` against every budget of `team`; BudgetExceeded when one cannot cover it."""
        day, month = _period_keys(self._clock())
        if self._pending and not self._reconciling.locked():
            await self.reconcile()
        try:
            self._check_store()
            ok, lines = await self._backend.reserve(team, request_id, worst, day, month)
        except StoreUnavailable as exc:
            self._store_failed("reserve", exc)
            if self._on_store_error == "refuse":
                raise ServiceUnavailable(
                    "the budget store is unreachable; requests are refused until it is back"
                ) from None
            return Reservation(
                team, request_id, worst, day, month, checked=False, reserved_s=self._clock()
            )
        if not ok:
            raise BudgetExceeded(
                _exceeded_message(team, lines, worst),
                headers=remaining_headers(remaining_by_metric(lines)),
            )
        return Reservation(team, request_id, worst, day, month, reserved_s=self._clock())

    async def settle(self, reservation: Reservation, actual: Usage) -> dict[str, float]:
        """Replace the reservation by what the request really used; call it once the request's
        ledger row is durable. Returns what is left per metric the team has a budget on, keyed
        co2e-g, energy-j, water-ml, tokens, requests (ready for
        `x-footprint-budget-remaining-<key>`). Idempotent per request id."""
        recorded_s = self._clock()
        if not reservation.checked:
            self._queue_pending(reservation, actual, recorded_s)
            return {}
        r = reservation
        try:
            self._check_store()
            lines = await self._backend.settle(r, actual, recorded_s)
        except StoreUnavailable as exc:
            self._store_failed("settle", exc)
            self._queue_pending(r, actual, recorded_s)
            return {}
        return remaining_by_metric(lines)

    async def release(self, reservation: Reservation) -> None:
        """Give the whole reservation back (the request failed before using anything)."""
        if not reservation.checked:
            return
        try:
            self._check_store()
            await self._backend.release(reservation.team, reservation.request_id)
        except StoreUnavailable as exc:
            # It expires on its own after budgets.reservation_ttl_s.
            self._store_failed("release", exc)

    def _queue_pending(
        self, reservation: Reservation, actual: Usage, recorded_s: float | None = None
    ) -> None:
        if len(self._pending) >= _MAX_PENDING:
            dropped = self._pending.popleft()
            log.error("budget reconciliation queue full; dropped %r (the ledger has it)", dropped)
        when = self._clock() if recorded_s is None else recorded_s
        self._pending.append(_Pending(reservation, actual, when))

    async def reconcile(self, *, ask_now: bool = False) -> int:
        """Apply settlements made while the store was down, one caller at a time (each entry
        is taken off the queue before it is sent, and put back first if the store fails).
        Settling is idempotent per request id, so an entry sent twice counts once. Returns
        how many were applied. `ask_now`: try the store even if it failed moments ago."""
        applied = 0
        async with self._reconciling:
            while self._pending:
                entry = self._pending.popleft()
                r = entry.reservation
                try:
                    if not ask_now:
                        self._check_store()
                    await self._backend.settle(r, entry.actual, entry.recorded_s)
                except StoreUnavailable as exc:
                    self._pending.appendleft(entry)
                    if self._monotonic() >= self._store_down_until:
                        self._store_failed("reconcile", exc)
                    break
                applied += 1
        if applied:
            log.info("budget store back: reconciled %d settlements", applied)
        return applied

    async def put(self, team: str, metric: str, period: str, limit: float) -> BudgetLine:
        """Set a budget (UnknownTeam from the store when there is no such team)."""
        validate_budget(metric, period, limit)
        await self._store.put_budget(team, metric, period, limit)
        try:
            await self._backend.set_limit(team, metric, period, limit)
        except StoreUnavailable as exc:
            self._store_failed("put", exc)
            raise ServiceUnavailable("budget saved, but the budget store is unreachable") from None
        for line in await self.status(team):
            if line.metric == metric and line.period == period:
                return line
        return BudgetLine(metric, period, limit, 0.0, 0.0)

    async def status(self, team: str) -> list[BudgetLine]:
        """Every budget of `team` with what is used, reserved and left in the current period."""
        day, month = _period_keys(self._clock())
        try:
            if self._pending:
                # What this replica recorded while the store was down counts in what it
                # reports: a status read after an outage, with no request since, is not stale.
                await self.reconcile(ask_now=True)
            return await self._backend.lines(team, day, month)
        except StoreUnavailable as exc:
            self._store_failed("status", exc)
            raise ServiceUnavailable("the budget store is unreachable") from None

    async def aclose(self) -> None:
        if self._pending:
            await self.reconcile()
        await self._backend.aclose()


def _exceeded_message(team: str, lines: list[BudgetLine], worst: Usage) -> str:
    needed = dict(zip(METRICS, worst.values(), strict=True))
    for line in lines:
        if line.remaining <= 0 or line.remaining < needed[line.metric]:
            scope = "in total" if line.period == "total" else f"for this {line.period}"
            return (
                f"team {team!r} has not enough {line.metric} budget left {scope}: "
                f"{plain_decimal(line.remaining)} of {plain_decimal(line.limit)} remain, "
                f"this request may need {plain_decimal(needed[line.metric])}"
            )
    return f"team {team!r} has spent its budget"


def import_store(settings: BudgetSettings) -> None:
    """Import the client library `open_budgets(settings)` will use, connecting to nothing:
    `footprint serve --workers` does before it forks, so that the workers share its pages."""
    if settings.redis_url:
        from proxy.budgets._redis import import_client

        import_client()


async def open_budgets(
    settings: BudgetSettings,
    store: BudgetStore,
    *,
    key_prefix: str = "footprint",
    clock: Callable[[], float] = time.time,
    redis_timeout_s: float | None = None,
    store_retry_s: float = _STORE_RETRY_S,
) -> Budgets:
    """In-process budgets when `settings.redis_url` is empty, Redis-backed otherwise. Redis
    need not be up yet: `on_store_error` governs requests until it is."""
    backend: _Backend
    if settings.redis_url:
        from proxy.budgets._redis import RedisBackend

        backend = RedisBackend(
            store,
            settings.redis_url,
            settings.reservation_ttl_s,
            clock,
            key_prefix=key_prefix,
            timeout_s=settings.redis_timeout_s if redis_timeout_s is None else redis_timeout_s,
            claim_ttl_s=settings.claim_ttl_s,
        )
    else:
        backend = LocalBackend(store, settings.reservation_ttl_s, clock)
    return Budgets(backend, store, settings.on_store_error, clock, store_retry_s=store_retry_s)
