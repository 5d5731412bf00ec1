"""Per-team budgets on energy_j, co2e_g, water_ml, tokens and requests, per day, month or in
total: reserve the worst case before forwarding, settle to the real figure after.

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
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from meters.numbers import format_decimal
from proxy.config import BudgetSettings
from proxy.errors import BudgetExceeded, InvalidRequest, ServiceUnavailable

log = logging.getLogger("footprint.budgets")

METRICS = ("energy_j", "co2e_g", "water_ml", "tokens", "requests")
PERIODS = ("day", "month", "total")
HEADER_PREFIX = "x-footprint-budget-remaining-"
# How many settlements to keep for Redis while it is unreachable (policy "allow"); past that
# the oldest are dropped from Redis's count (the ledger still has them) and logged.
_MAX_PENDING = 100_000


@dataclass(frozen=True, slots=True)
class Usage:
    """Amounts on every budget metric, in the metric's unit."""

    energy_j: float = 0.0
    co2e_g: float = 0.0
    water_ml: float = 0.0
    tokens: float = 0.0
    requests: float = 0.0

    def values(self) -> tuple[float, float, float, float, float]:
        return (self.energy_j, self.co2e_g, self.water_ml, self.tokens, self.requests)


@dataclass(frozen=True, slots=True)
class Reservation:
    team: str
    request_id: str
    worst: Usage
    day: str
    month: str
    # False when the budget store could not be asked and policy let the request through.
    checked: bool = True


@dataclass(frozen=True, slots=True)
class BudgetLine:
    """One budget of one team, as it stands."""

    metric: str
    period: str
    limit: float
    used: float
    reserved: float

    @property
    def remaining(self) -> float:
        return max(0.0, self.limit - self.used - self.reserved)

    def as_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "period": self.period,
            "limit": self.limit,
            "used": self.used,
            "reserved": self.reserved,
            "remaining": self.remaining,
        }


class BudgetStore(Protocol):
    async def list_budgets(self, team: str) -> list[tuple[str, str, float]]: ...

    async def put_budget(self, team: str, metric: str, period: str, limit: float) -> None: ...

    async def spent(self, team: str, since: datetime | None) -> dict[str, float]: ...


def plain_decimal(value: float) -> str:
    """A number as contract.md wants it in headers: the one formatter every header, body and
    CSV uses (`meters.numbers.format_decimal`: plain decimal, 6 significant digits)."""
    return format_decimal(value)


def header_metric(metric: str) -> str:
    """A metric as header names spell it: co2e_g -> co2e-g."""
    return metric.replace("_", "-")


def remaining_headers(remaining: dict[str, float]) -> dict[str, str]:
    """`x-footprint-budget-remaining-<metric>` headers from `remaining_by_metric`'s answer."""
    return {HEADER_PREFIX + m: plain_decimal(v) for m, v in remaining.items()}


def remaining_by_metric(lines: list[BudgetLine]) -> dict[str, float]:
    """What is left per metric, keyed as header names spell it (co2e-g, energy-j, …): the
    tightest of the metric's day/month/total budgets."""
    out: dict[str, float] = {}
    for line in lines:
        key = header_metric(line.metric)
        out[key] = min(out.get(key, math.inf), line.remaining)
    return out


def validate_budget(metric: str, period: str, limit: float) -> None:
    if metric not in METRICS:
        raise InvalidRequest(f"metric must be one of {', '.join(METRICS)}", param="metric")
    if period not in PERIODS:
        raise InvalidRequest(f"period must be one of {', '.join(PERIODS)}", param="period")
    if not math.isfinite(limit) or limit < 0:
        raise InvalidRequest("limit must be a finite number, zero or more", param="limit")


def _period_keys(now_s: float) -> tuple[str, str]:
    moment = datetime.fromtimestamp(now_s, UTC)
    return moment.strftime("%Y-%m-%d"), moment.strftime("%Y-%m")


def _period_starts(day: str, month: str) -> dict[str, datetime | None]:
    return {
        "day": datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC),
        "month": datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC),
        "total": None,
    }


def _pkey(period: str, day: str, month: str) -> str:
    return day if period == "day" else month if period == "month" else "all"


async def spent_since_period_starts(
    store: BudgetStore, team: str, day: str, month: str
) -> dict[tuple[str, str], float]:
    """(metric, period) -> what the ledger says `team` spent in the current period."""
    out: dict[tuple[str, str], float] = {}
    for period, since in _period_starts(day, month).items():
        sums = await store.spent(team, since)
        for metric in METRICS:
            out[(metric, period)] = sums[metric]
    return out


class _Backend(Protocol):
    async def reserve(
        self, team: str, request_id: str, worst: Usage, day: str, month: str
    ) -> tuple[bool, list[BudgetLine]]: ...

    async def settle(
        self, team: str, request_id: str, actual: Usage, day: str, month: str
    ) -> list[BudgetLine]: ...

    async def release(self, team: str, request_id: str) -> None: ...

    async def set_limit(self, team: str, metric: str, period: str, limit: float) -> None: ...

    async def lines(self, team: str, day: str, month: str) -> list[BudgetLine]: ...

    async def aclose(self) -> None: ...


class StoreUnavailable(Exception):
    """The budget store (Redis, or the database behind it) did not answer."""


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
                used={(m, p, _pkey(p, day, month)): v for (m, p), v in spent.items()},
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
                used=state.used.get((m, p, _pkey(p, day, month)), 0.0),
                reserved=max(0.0, state.reserved[m]),
            )
            for (m, p), limit in sorted(state.limits.items())
        ]

    async def reserve(
        self, team: str, request_id: str, worst: Usage, day: str, month: str
    ) -> tuple[bool, list[BudgetLine]]:
        state = await self._state(team, day, month)
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

    async def settle(
        self, team: str, request_id: str, actual: Usage, day: str, month: str
    ) -> list[BudgetLine]:
        state = await self._state(team, day, month)
        self._drop_reservation(state, request_id)
        for metric, amount in zip(METRICS, actual.values(), strict=True):
            for period in PERIODS:
                key = (metric, period, _pkey(period, day, month))
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

    async def aclose(self) -> None:
        self._teams.clear()


# --------------------------------------------------------------------------------------------
# Redis

# KEYS: 1 limits hash ("metric|period" -> limit, "_init"), 2 reservations hash (id -> "a,b,c,d,e"),
# 3 expiries zset (id -> ms), 4 reserved hash (metric -> sum), 5 used hash
# ("metric|period|period key" -> amount).
_LUA_COMMON = """
local METRICS = {'energy_j', 'co2e_g', 'water_ml', 'tokens', 'requests'}
local function fmt(x) return string.format('%.17g', x) end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function drop(rid)
  local amounts = redis.call('HGET', KEYS[2], rid)
  if amounts then
    local i = 1
    for v in string.gmatch(amounts, '[^,]+') do
      redis.call('HINCRBYFLOAT', KEYS[4], METRICS[i], -tonumber(v))
      i = i + 1
    end
    redis.call('HDEL', KEYS[2], rid)
  end
  redis.call('ZREM', KEYS[3], rid)
end
local function expire()
  for _, rid in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now_ms())) do drop(rid) end
end
local function lines(day, month)
  local pkeys = {day = day, month = month, total = 'all'}
  local out = {}
  local limits = redis.call('HGETALL', KEYS[1])
  for i = 1, #limits, 2 do
    local f = limits[i]
    if f ~= '_init' then
      local sep = string.find(f, '|', 1, true)
      local metric, period = string.sub(f, 1, sep - 1), string.sub(f, sep + 1)
      local ufield = metric .. '|' .. period .. '|' .. pkeys[period]
      local used = tonumber(redis.call('HGET', KEYS[5], ufield) or '0')
      local reserved = tonumber(redis.call('HGET', KEYS[4], metric) or '0')
      table.insert(out, {metric, period, tonumber(limits[i + 1]), used, reserved})
    end
  end
  return out
end
local function flat(tag, ls)
  local out = {tag}
  for _, l in ipairs(ls) do
    table.insert(out, l[1]); table.insert(out, l[2])
    table.insert(out, fmt(l[3])); table.insert(out, fmt(l[4])); table.insert(out, fmt(l[5]))
  end
  return out
end
if redis.call('HEXISTS', KEYS[1], '_init') == 0 then return {'uninit'} end
"""

# ARGV: request id, ttl ms, day, month, five worst-case amounts.
_LUA_RESERVE = (
    _LUA_COMMON
    + """
expire()
local rid = ARGV[1]
local ls = lines(ARGV[3], ARGV[4])
if redis.call('HEXISTS', KEYS[2], rid) == 1 then return flat('ok', ls) end
local worst = {}
for i = 1, 5 do worst[METRICS[i]] = tonumber(ARGV[4 + i]) end
for _, l in ipairs(ls) do
  local left = l[3] - l[4] - l[5]
  if left <= 0 or left < worst[l[1]] then return flat('exceeded', ls) end
end
if #ls > 0 then
  local amounts = {}
  for i = 1, 5 do
    amounts[i] = fmt(worst[METRICS[i]])
    redis.call('HINCRBYFLOAT', KEYS[4], METRICS[i], worst[METRICS[i]])
  end
  redis.call('HSET', KEYS[2], rid, table.concat(amounts, ','))
  redis.call('ZADD', KEYS[3], now_ms() + tonumber(ARGV[2]), rid)
end
return flat('ok', lines(ARGV[3], ARGV[4]))
"""
)

# ARGV: request id ("" for none), day, month, five actual amounts.
_LUA_SETTLE = (
    _LUA_COMMON
    + """
if ARGV[1] ~= '' then drop(ARGV[1]) end
local pkeys = {day = ARGV[2], month = ARGV[3], total = 'all'}
for i = 1, 5 do
  local v = tonumber(ARGV[3 + i])
  if v ~= 0 then
    for period, pk in pairs(pkeys) do
      redis.call('HINCRBYFLOAT', KEYS[5], METRICS[i] .. '|' .. period .. '|' .. pk, v)
    end
  end
end
expire()
return flat('ok', lines(ARGV[2], ARGV[3]))
"""
)

_LUA_RELEASE = _LUA_COMMON + "drop(ARGV[1])\nreturn {'ok'}\n"

_LUA_LINES = _LUA_COMMON + "expire()\nreturn flat('ok', lines(ARGV[1], ARGV[2]))\n"

# ARGV: n limits, then n (field, limit) pairs, then (field, used) pairs. Only the first
# replica to get here writes; limits written meanwhile by PUT win (HSETNX).
_LUA_INIT = """
if redis.call('HEXISTS', KEYS[1], '_init') == 1 then return 0 end
local n = tonumber(ARGV[1])
for i = 0, n - 1 do redis.call('HSETNX', KEYS[1], ARGV[2 + 2 * i], ARGV[3 + 2 * i]) end
for i = 2 + 2 * n, #ARGV, 2 do redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[1], '_init', '1')
return 1
"""


def _parse_lines(reply: list[Any]) -> tuple[str, list[BudgetLine]]:
    tag = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
    items = [x.decode() if isinstance(x, bytes) else str(x) for x in reply[1:]]
    lines = [
        BudgetLine(
            items[i],
            items[i + 1],
            float(items[i + 2]),
            float(items[i + 3]),
            max(0.0, float(items[i + 4])),
        )
        for i in range(0, len(items), 5)
    ]
    return tag, lines


class RedisBackend:
    """Counts in Redis, shared by every replica."""

    def __init__(
        self,
        store: BudgetStore,
        redis_url: str,
        ttl_s: float,
        *,
        key_prefix: str = "footprint",
        timeout_s: float = 1.0,
        client: Any = None,
    ) -> None:
        import redis.asyncio as redis_asyncio
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self._store = store
        self._ttl_ms = int(ttl_s * 1000)
        self._prefix = key_prefix
        self._redis = client or redis_asyncio.Redis.from_url(
            redis_url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            # A dead Redis must cost one timeout, not a ladder of retries.
            retry=Retry(NoBackoff(), 0),
        )
        self._reserve = self._redis.register_script(_LUA_RESERVE)
        self._settle = self._redis.register_script(_LUA_SETTLE)
        self._release = self._redis.register_script(_LUA_RELEASE)
        self._lines = self._redis.register_script(_LUA_LINES)
        self._init = self._redis.register_script(_LUA_INIT)

    def _keys(self, team: str) -> list[str]:
        base = f"{self._prefix}:{{{team}}}:"
        return [base + s for s in ("limits", "res", "exp", "reserved", "used")]

    async def _run(
        self, script: Any, team: str, day: str, month: str, args: list[Any]
    ) -> list[Any]:
        from redis.exceptions import RedisError

        keys = self._keys(team)
        try:
            for _ in range(3):
                reply = await script(keys=keys, args=args)
                if reply and reply[0] in (b"uninit", "uninit"):
                    await self._initialise(team, day, month)
                    continue
                return list(reply)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(repr(exc)) from exc
        raise StoreUnavailable(f"budget state of team {team!r} could not be initialised")

    async def _initialise(self, team: str, day: str, month: str) -> None:
        """Load `team`'s limits and spent amounts from the database into Redis."""
        try:
            limits = await self._store.list_budgets(team)
            spent = await spent_since_period_starts(self._store, team, day, month)
        except Exception as exc:
            raise StoreUnavailable(f"reading budgets from the ledger: {exc!r}") from exc
        args: list[Any] = [len(limits)]
        for metric, period, limit in limits:
            args += [f"{metric}|{period}", repr(float(limit))]
        for (metric, period), amount in spent.items():
            args += [f"{metric}|{period}|{_pkey(period, day, month)}", repr(float(amount))]
        keys = self._keys(team)
        await self._init(keys=[keys[0], keys[4]], args=args)
        log.info("budget counts of team %r loaded into Redis from the ledger", team)

    async def reserve(
        self, team: str, request_id: str, worst: Usage, day: str, month: str
    ) -> tuple[bool, list[BudgetLine]]:
        args = [request_id, self._ttl_ms, day, month, *(repr(float(v)) for v in worst.values())]
        tag, lines = _parse_lines(await self._run(self._reserve, team, day, month, args))
        return tag == "ok", lines

    async def settle(
        self, team: str, request_id: str, actual: Usage, day: str, month: str
    ) -> list[BudgetLine]:
        args = [request_id, day, month, *(repr(float(v)) for v in actual.values())]
        _, lines = _parse_lines(await self._run(self._settle, team, day, month, args))
        return lines

    async def release(self, team: str, request_id: str) -> None:
        from redis.exceptions import RedisError

        try:
            await self._release(keys=self._keys(team), args=[request_id])
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(repr(exc)) from exc

    async def set_limit(self, team: str, metric: str, period: str, limit: float) -> None:
        from redis.exceptions import RedisError

        try:
            await self._redis.hset(self._keys(team)[0], f"{metric}|{period}", repr(float(limit)))
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(repr(exc)) from exc

    async def lines(self, team: str, day: str, month: str) -> list[BudgetLine]:
        _, lines = _parse_lines(await self._run(self._lines, team, day, month, [day, month]))
        return lines

    async def aclose(self) -> None:
        await self._redis.aclose()


# --------------------------------------------------------------------------------------------


class Budgets:
    """Reserve, settle and release against a team's budgets. Build with `open_budgets`."""

    def __init__(
        self,
        backend: _Backend,
        store: BudgetStore,
        on_store_error: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._backend = backend
        self._store = store
        self._on_store_error = on_store_error
        self._clock = clock
        # Read by telemetry: how often the budget store failed us.
        self.store_errors = 0
        self._pending: deque[tuple[str, Usage, str, str]] = deque()

    @property
    def pending_reconciliations(self) -> int:
        return len(self._pending)

    def _store_failed(self, what: str, exc: StoreUnavailable) -> None:
        self.store_errors += 1
        log.warning(
            "budget store unavailable during %s (policy %s): %s", what, self._on_store_error, exc
        )

    async def reserve(self, team: str, worst: Usage, request_id: str) -> Reservation:
        """Hold `worst` against every budget of `team`; BudgetExceeded when one cannot cover it."""
        day, month = _period_keys(self._clock())
        if self._pending:
            await self.reconcile()
        try:
            ok, lines = await self._backend.reserve(team, request_id, worst, day, month)
        except StoreUnavailable as exc:
            self._store_failed("reserve", exc)
            if self._on_store_error == "refuse":
                raise ServiceUnavailable(
                    "the budget store is unreachable; requests are refused until it is back"
                ) from None
            return Reservation(team, request_id, worst, day, month, checked=False)
        if not ok:
            raise BudgetExceeded(
                _exceeded_message(team, lines, worst),
                headers=remaining_headers(remaining_by_metric(lines)),
            )
        return Reservation(team, request_id, worst, day, month)

    async def settle(self, reservation: Reservation, actual: Usage) -> dict[str, float]:
        """Replace the reservation by what the request really used. Returns what is left per
        metric the team has a budget on, keyed co2e-g, energy-j, water-ml, tokens, requests
        (ready for `x-footprint-budget-remaining-<key>`)."""
        r = reservation
        if not r.checked:
            self._queue_pending(r.team, actual, r.day, r.month)
            return {}
        try:
            lines = await self._backend.settle(r.team, r.request_id, actual, r.day, r.month)
        except StoreUnavailable as exc:
            self._store_failed("settle", exc)
            self._queue_pending(r.team, actual, r.day, r.month)
            return {}
        return remaining_by_metric(lines)

    async def release(self, reservation: Reservation) -> None:
        """Give the whole reservation back (the request failed before using anything)."""
        if not reservation.checked:
            return
        try:
            await self._backend.release(reservation.team, reservation.request_id)
        except StoreUnavailable as exc:
            # It expires on its own after budgets.reservation_ttl_s.
            self._store_failed("release", exc)

    def _queue_pending(self, team: str, actual: Usage, day: str, month: str) -> None:
        if len(self._pending) >= _MAX_PENDING:
            dropped = self._pending.popleft()
            log.error("budget reconciliation queue full; dropped %r (the ledger has it)", dropped)
        self._pending.append((team, actual, day, month))

    async def reconcile(self) -> int:
        """Add settlements made while the store was down. Returns how many were applied."""
        applied = 0
        while self._pending:
            team, actual, day, month = self._pending[0]
            try:
                await self._backend.settle(team, "", actual, day, month)
            except StoreUnavailable:
                break
            self._pending.popleft()
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


async def open_budgets(
    settings: BudgetSettings,
    store: BudgetStore,
    *,
    key_prefix: str = "footprint",
    clock: Callable[[], float] = time.time,
    redis_timeout_s: float = 1.0,
) -> Budgets:
    """In-process budgets when `settings.redis_url` is empty, Redis-backed otherwise. Redis
    need not be up yet: `on_store_error` governs requests until it is."""
    backend: _Backend
    if settings.redis_url:
        backend = RedisBackend(
            store,
            settings.redis_url,
            settings.reservation_ttl_s,
            key_prefix=key_prefix,
            timeout_s=redis_timeout_s,
        )
    else:
        backend = LocalBackend(store, settings.reservation_ttl_s, clock)
    return Budgets(backend, store, settings.on_store_error, clock)
