"""The Redis budget backend: counts shared by every replica, each check-and-reserve one Lua
script (atomic).

Outages and lost keys are part of the design, not an afterthought:
- A team's state carries a generation (`_init`: the initialising replica's clock in ms when it
  read the ledger, plus a random tag). Every script is told the generation its caller last
  saw; on a different one it does nothing and answers `regen`. The caller then re-asserts the
  reservations it holds for that team (Redis may have lost them) and tries again, so a Redis
  that lost a team's keys never forgets a request still in flight.
- Settling is idempotent per request id (a `settled` set kept for the reservation TTL), and a
  settlement whose row the generation's ledger read already counted adds nothing. The read
  and the ids of the rows it counted (those of the last reservation TTL) come from one
  database snapshot and are stored with the generation (`inread`), so a row is counted once
  whether its settlement arrives before, during or after a rebuild (a settlement retried
  after a lost reply, or queued through an outage and applied after Redis came back empty).
  A request older than that window falls back to timestamps (its row durable before the read
  began: counted by the read).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from proxy.budgets._facts import (
    METRICS,
    BudgetLine,
    BudgetStore,
    Reservation,
    StoreUnavailable,
    Usage,
    period_key,
    period_starts,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("footprint.budgets")


def import_client() -> None:
    """Import what `RedisBackend` imports when it is made, connecting to nothing."""
    import redis.asyncio
    import redis.asyncio.retry
    import redis.backoff  # noqa: F401


_ATTEMPTS = 5

# KEYS: 1 limits hash ("metric|period" -> limit, "_init" -> generation), 2 reservations hash
# (id -> "a,b,…", one amount per metric), 3 expiries zset (id -> ms), 4 reserved hash
# (metric -> sum), 5 used hash ("metric|period|period key" -> amount), 6 settled zset (id -> ms),
# 7 in-read zset (ids of the rows the generation's ledger read counted -> ms).
# ARGV[1]: the generation the caller expects; A: the script's own arguments (ARGV[2:]).
# The metric names come from `METRICS`, and every loop over them runs to `#METRICS`: a metric
# added there is held, settled and dropped here too.
_LUA_DROP = (
    "local METRICS = {"
    + ", ".join(f"'{metric}'" for metric in METRICS)
    + "}\n"
    + """
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
"""
)
_LUA_COMMON = (
    _LUA_DROP
    + """
local function fmt(x) return string.format('%.17g', x) end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function hold(rid, amounts, ttl_ms)
  local i = 1
  for v in string.gmatch(amounts, '[^,]+') do
    redis.call('HINCRBYFLOAT', KEYS[4], METRICS[i], tonumber(v))
    i = i + 1
  end
  redis.call('HSET', KEYS[2], rid, amounts)
  redis.call('ZADD', KEYS[3], now_ms() + ttl_ms, rid)
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
local gen = redis.call('HGET', KEYS[1], '_init')
if not gen then return {'uninit'} end
if gen ~= ARGV[1] then return {'regen', gen} end
local A = {}
for i = 2, #ARGV do A[i - 1] = ARGV[i] end
"""
)

# A: request id, ttl ms, day, month, the worst-case amounts (one per metric).
_LUA_RESERVE = (
    _LUA_COMMON
    + """
expire()
local rid = A[1]
local ls = lines(A[3], A[4])
if redis.call('HEXISTS', KEYS[2], rid) == 1 then return flat('ok', ls) end
local worst = {}
for i = 1, #METRICS do worst[METRICS[i]] = tonumber(A[4 + i]) end
for _, l in ipairs(ls) do
  local left = l[3] - l[4] - l[5]
  if left <= 0 or left < worst[l[1]] then return flat('exceeded', ls) end
end
if #ls > 0 then
  local amounts = {}
  for i = 1, #METRICS do amounts[i] = fmt(worst[METRICS[i]]) end
  hold(rid, table.concat(amounts, ','), tonumber(A[2]))
end
return flat('ok', lines(A[3], A[4]))
"""
)

# A: request id, day, month, when its ledger row was durable (ms), keep settled ids (ms),
# the actual amounts (one per metric), when it was reserved (ms), the generation's window of
# ids (ms).
_LUA_SETTLE = (
    _LUA_COMMON
    + """
local rid = A[1]
drop(rid)
local now = now_ms()
local init_ms = tonumber(string.match(gen, '^(%d+)')) or 0
-- Counted already: settled before (a retry), or its row was in the generation's ledger read
-- (by id, for rows of the read's window; by time, for a request older than that window).
local reserved_ms, window_ms = tonumber(A[6 + #METRICS]), tonumber(A[7 + #METRICS])
local counted = redis.call('ZSCORE', KEYS[6], rid) or redis.call('ZSCORE', KEYS[7], rid)
if not counted and reserved_ms < init_ms - window_ms then
  counted = tonumber(A[4]) <= init_ms
end
if not counted then
  redis.call('ZADD', KEYS[6], now, rid)
  local pkeys = {day = A[2], month = A[3], total = 'all'}
  for i = 1, #METRICS do
    local v = tonumber(A[5 + i])
    if v ~= 0 then
      for period, pk in pairs(pkeys) do
        redis.call('HINCRBYFLOAT', KEYS[5], METRICS[i] .. '|' .. period .. '|' .. pk, v)
      end
    end
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now - tonumber(A[5]))
redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', now - 2 * window_ms)
expire()
return flat('ok', lines(A[2], A[3]))
"""
)

# ARGV: request id. No generation check: giving back a reservation is right in any.
_LUA_RELEASE = _LUA_DROP + "drop(ARGV[1])\nreturn 1\n"

_LUA_LINES = _LUA_COMMON + "expire()\nreturn flat('ok', lines(A[1], A[2]))\n"

# A: (request id, ttl ms, "a,b,…") triples: reservations this replica holds, put back
# where Redis lost them (never one already settled or still held).
_LUA_REASSERT = (
    _LUA_COMMON
    + """
for i = 1, #A, 3 do
  local rid = A[i]
  if redis.call('HEXISTS', KEYS[2], rid) == 0 and not redis.call('ZSCORE', KEYS[6], rid) then
    hold(rid, A[i + 2], tonumber(A[i + 1]))
  end
end
return {'ok'}
"""
)

# KEYS: limits, used, in-read. ARGV: generation, n limits, m used, then n (field, limit)
# pairs, m (field, used) pairs, then the ids the read counted. Only the first replica to get
# here writes; limits written meanwhile by PUT win (HSETNX).
_LUA_INIT = """
if redis.call('HEXISTS', KEYS[1], '_init') == 1 then return 0 end
local n, m = tonumber(ARGV[2]), tonumber(ARGV[3])
local at = tonumber(string.match(ARGV[1], '^(%d+)'))
for i = 0, n - 1 do redis.call('HSETNX', KEYS[1], ARGV[4 + 2 * i], ARGV[5 + 2 * i]) end
local first_used = 4 + 2 * n
for i = 0, m - 1 do
  redis.call('HSETNX', KEYS[2], ARGV[first_used + 2 * i], ARGV[first_used + 2 * i + 1])
end
for i = first_used + 2 * m, #ARGV do redis.call('ZADD', KEYS[3], at, ARGV[i]) end
redis.call('HSET', KEYS[1], '_init', ARGV[1])
return 1
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _parse_lines(reply: list[Any]) -> tuple[str, list[BudgetLine]]:
    tag = _text(reply[0])
    items = [_text(x) for x in reply[1:]]
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


def _amounts(usage: Usage) -> str:
    return ",".join(repr(float(v)) for v in usage.values())


class RedisBackend:
    """Counts in Redis, shared by every replica."""

    def __init__(
        self,
        store: BudgetStore,
        redis_url: str,
        ttl_s: float,
        clock: Callable[[], float],
        *,
        key_prefix: str = "footprint",
        timeout_s: float = 1.0,
        claim_ttl_s: float = 30.0,
    ) -> None:
        import redis.asyncio as redis_asyncio
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self._store = store
        self._ttl_s = ttl_s
        self._clock = clock
        self._prefix = key_prefix
        self._redis = redis_asyncio.Redis.from_url(
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
        self._reassert = self._redis.register_script(_LUA_REASSERT)
        self._init = self._redis.register_script(_LUA_INIT)
        # Per team: the generation last seen, and this replica's reservations in flight
        # (request id -> (worst case, expiry on this replica's clock)).
        self._generation: dict[str, str] = {}
        self._live: dict[str, dict[str, tuple[Usage, float]]] = {}
        # Client request ids this replica has claimed and not let go, renewed by `_renewer`.
        self._claim_ttl_s = claim_ttl_s
        self._claims: set[str] = set()
        self._renewer: asyncio.Task[None] | None = None

    def _keys(self, team: str) -> list[str]:
        base = f"{self._prefix}:{{{team}}}:"
        return [base + s for s in ("limits", "res", "exp", "reserved", "used", "settled", "inread")]

    async def _run(
        self, script: Any, team: str, day: str, month: str, args: list[Any]
    ) -> list[Any]:
        from redis.exceptions import RedisError

        keys = self._keys(team)
        try:
            for _ in range(_ATTEMPTS):
                reply = await script(keys=keys, args=[self._generation.get(team, ""), *args])
                tag = _text(reply[0]) if reply else ""
                if tag == "uninit":
                    await self._initialise(team, day, month)
                elif tag == "regen":
                    self._generation[team] = _text(reply[1])
                    await self._reassert_live(team)
                else:
                    return list(reply)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(repr(exc)) from exc
        raise StoreUnavailable(f"budget state of team {team!r} kept changing under us")

    async def _reassert_live(self, team: str) -> None:
        """Put this replica's reservations for `team` back (no-op for those Redis still has)."""
        live = self._live.get(team)
        if not live:
            return
        now = self._clock()
        args: list[Any] = []
        for request_id, (worst, expires_s) in list(live.items()):
            if expires_s <= now:
                del live[request_id]
                continue
            args += [request_id, int((expires_s - now) * 1000) + 1, _amounts(worst)]
        if args:
            await self._reassert(
                keys=self._keys(team), args=[self._generation.get(team, ""), *args]
            )

    async def _initialise(self, team: str, day: str, month: str) -> None:
        """Load `team`'s limits and spent amounts from the database into Redis, with the ids
        of the rows of the last reservation TTL that the sums count (so a settlement of one
        of them, arriving later, adds nothing)."""
        now_s = self._clock()
        generation = f"{int(now_s * 1000)}-{secrets.token_hex(4)}"
        since = datetime.fromtimestamp(now_s - self._ttl_s, UTC)
        try:
            limits = await self._store.list_budgets(team)
            sums, ids = await self._store.budget_snapshot(team, period_starts(day, month), since)
        except Exception as exc:
            raise StoreUnavailable(f"reading budgets from the ledger: {exc!r}") from exc
        used = [
            (f"{metric}|{period}|{period_key(period, day, month)}", repr(sums[period][metric]))
            for period in sums
            for metric in METRICS
        ]
        args: list[Any] = [generation, len(limits), len(used)]
        for metric, period, limit in limits:
            args += [f"{metric}|{period}", repr(float(limit))]
        for field_name, amount in used:
            args += [field_name, amount]
        args += ids
        keys = self._keys(team)
        if await self._init(keys=[keys[0], keys[4], keys[6]], args=args):
            log.info("budget counts of team %r loaded into Redis from the ledger", team)

    async def reserve(
        self, team: str, request_id: str, worst: Usage, day: str, month: str
    ) -> tuple[bool, list[BudgetLine]]:
        ttl_ms = int(self._ttl_s * 1000)
        args = [request_id, ttl_ms, day, month, *(repr(float(v)) for v in worst.values())]
        tag, lines = _parse_lines(await self._run(self._reserve, team, day, month, args))
        if tag == "ok" and lines:
            self._live.setdefault(team, {})[request_id] = (worst, self._clock() + self._ttl_s)
        return tag == "ok", lines

    async def settle(
        self, reservation: Reservation, actual: Usage, recorded_s: float
    ) -> list[BudgetLine]:
        team, day, month = reservation.team, reservation.day, reservation.month
        self._forget(team, reservation.request_id)
        args = [
            reservation.request_id,
            day,
            month,
            int(recorded_s * 1000),
            int(self._ttl_s * 1000),
            *(repr(float(v)) for v in actual.values()),
            int(reservation.reserved_s * 1000),
            int(self._ttl_s * 1000),
        ]
        _, lines = _parse_lines(await self._run(self._settle, team, day, month, args))
        return lines

    async def release(self, team: str, request_id: str) -> None:
        from redis.exceptions import RedisError

        self._forget(team, request_id)
        try:
            await self._release(keys=self._keys(team), args=[request_id])
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(repr(exc)) from exc

    def _forget(self, team: str, request_id: str) -> None:
        live = self._live.get(team)
        if live is not None:
            live.pop(request_id, None)
            if not live:
                del self._live[team]

    async def set_limit(self, team: str, metric: str, period: str, limit: float) -> None:
        from redis.exceptions import RedisError

        try:
            await self._redis.hset(self._keys(team)[0], f"{metric}|{period}", repr(float(limit)))
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(repr(exc)) from exc

    async def lines(self, team: str, day: str, month: str) -> list[BudgetLine]:
        _, lines = _parse_lines(await self._run(self._lines, team, day, month, [day, month]))
        return lines

    async def claim(self, request_id: str, team: str) -> bool:
        """SET NX on a key of its own (not under the team's hash tag: the id is unique across
        teams), expiring after `claim_ttl_s` unless this replica renews it (every third of
        that, while the request runs): a replica that dies lets its ids go within the TTL."""
        from redis.exceptions import RedisError

        try:
            taken = await self._redis.set(
                self._claim_key(request_id), team, nx=True, px=int(self._claim_ttl_s * 1000)
            )
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(repr(exc)) from exc
        if taken:
            self._claims.add(request_id)
            self._renew_claims_soon()
        return bool(taken)

    async def unclaim(self, request_id: str) -> None:
        from redis.exceptions import RedisError

        self._claims.discard(request_id)
        try:
            await self._redis.delete(self._claim_key(request_id))
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(repr(exc)) from exc

    def _claim_key(self, request_id: str) -> str:
        return f"{self._prefix}:claim:{request_id}"

    def _renew_claims_soon(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew_claims())

    async def _renew_claims(self) -> None:
        """While this replica holds claims, push their expiry out every third of the TTL."""
        from redis.exceptions import RedisError

        ttl_ms = int(self._claim_ttl_s * 1000)
        while self._claims:
            await asyncio.sleep(self._claim_ttl_s / 3)
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for request_id in list(self._claims):
                        pipe.pexpire(self._claim_key(request_id), ttl_ms)
                    await pipe.execute()
            except (RedisError, OSError) as exc:
                log.warning("request id claims not renewed: %r", exc)

    async def ping(self) -> None:
        """Raises StoreUnavailable if Redis does not answer within the socket timeout."""
        from redis.exceptions import RedisError

        try:
            await self._redis.ping()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(repr(exc)) from exc

    def holds_nothing_for(self, team: str) -> bool:
        return False  # another replica may have set a budget just now

    @property
    def redis(self) -> Redis:
        """The client this backend counts in (rate limits count there too)."""
        return self._redis

    async def aclose(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        await self._redis.aclose()
