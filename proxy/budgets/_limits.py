"""Rate limits per team and per key: requests per minute and tokens per minute.

In the budgets package, beside the budget backends: the same Redis (each replica's own
connection to it), keys under the team's hash tag, and the same `on_store_error` policy, but
a counter of their own (a fixed window needs none of the budgets' reservations, generations
or rebuilds from the ledger).

Counting is a fixed one-minute window per scope (the team, and each limited key). A request is
admitted when every scope that limits it has room for one more request and for its tokens, and
then counted in all of them at once: in-process that is one synchronous step on the event loop;
with Redis it is one Lua script, so replicas together serve exactly the limit. Tokens are
counted at admission as OpenAI counts them: the prompt's estimate plus the request's output
cap (`max_tokens`, else `budgets.default_max_tokens`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from proxy.errors import ProxyError, ServiceUnavailable

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from proxy.budgets._budgets import Budgets

log = logging.getLogger("footprint.budgets")

WINDOW_S = 60
# How long a replica trusts the limits it read from the database.
LIMITS_CACHE_S = 2.0

Kind = Literal["requests", "tokens"]


class CounterUnavailable(Exception):
    """The shared counter (Redis) did not answer."""


class RateLimited(ProxyError):
    """A team's or key's rate limit is reached (429, OpenAI's rate-limit shape)."""

    status_code = 429
    code = "rate_limit_exceeded"

    def __init__(self, message: str, kind: Kind, headers: dict[str, str]) -> None:
        super().__init__(message, headers=headers)
        self.error_type = kind


@dataclass(frozen=True, slots=True)
class Limit:
    """One scope's limits (None: none on that kind)."""

    scope: str  # "team" or the key id
    requests_per_minute: int | None
    tokens_per_minute: int | None


@dataclass(frozen=True, slots=True)
class Counted:
    """A scope's counts in the current window after this request was admitted (or not)."""

    limit: Limit
    requests: int
    tokens: int


@dataclass(frozen=True, slots=True)
class Admission:
    """What the request's answer tells the client about its limits."""

    counted: tuple[Counted, ...]
    reset_s: float

    def headers(self) -> dict[str, str]:
        """`x-ratelimit-{limit,remaining,reset}-{requests,tokens}` of the tightest scope."""
        out: dict[str, str] = {}
        reset = _duration(self.reset_s)
        for kind in ("requests", "tokens"):
            tightest: tuple[int, int] | None = None
            for c in self.counted:
                limit = (
                    c.limit.requests_per_minute if kind == "requests" else c.limit.tokens_per_minute
                )
                if limit is None:
                    continue
                used = c.requests if kind == "requests" else c.tokens
                remaining = max(0, limit - used)
                if tightest is None or remaining < tightest[1]:
                    tightest = (limit, remaining)
            if tightest is not None:
                out[f"x-ratelimit-limit-{kind}"] = str(tightest[0])
                out[f"x-ratelimit-remaining-{kind}"] = str(tightest[1])
                out[f"x-ratelimit-reset-{kind}"] = reset
        return out


def _duration(seconds: float) -> str:
    """OpenAI's spelling of a reset time: `17s`, `1m0s`, `250ms`."""
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    return f"{whole // 60}m{whole % 60}s" if whole >= 60 else f"{whole}s"


class LimitStore(Protocol):
    async def list_rate_limits(
        self, team: str
    ) -> list[tuple[str | None, int | None, int | None]]: ...


class Counter(Protocol):
    async def admit(
        self, team: str, window: int, limits: Sequence[Limit], tokens: int
    ) -> tuple[int, list[tuple[int, int]]]:
        """(0 if all had room else the 1-based index of the first full scope, then each
        scope's (requests, tokens) in the window: after counting when admitted)."""
        ...

    async def aclose(self) -> None: ...


class LocalCounter:
    """Counts in this process (one replica)."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str, int], list[int]] = {}

    async def admit(
        self, team: str, window: int, limits: Sequence[Limit], tokens: int
    ) -> tuple[int, list[tuple[int, int]]]:
        if len(self._counts) > 10_000:  # windows past are of no use
            self._counts = {k: v for k, v in self._counts.items() if k[2] >= window}
        rows = [self._counts.setdefault((team, lim.scope, window), [0, 0]) for lim in limits]
        for index, (lim, row) in enumerate(zip(limits, rows, strict=True), start=1):
            if _full(lim, row[0], row[1], tokens):
                return index, [(r[0], r[1]) for r in rows]
        for row in rows:
            row[0] += 1
            row[1] += tokens
        return 0, [(r[0], r[1]) for r in rows]

    async def aclose(self) -> None:
        return None


def _full(limit: Limit, requests: int, tokens_used: int, tokens: int) -> Kind | None:
    if limit.requests_per_minute is not None and requests + 1 > limit.requests_per_minute:
        return "requests"
    if limit.tokens_per_minute is not None and tokens_used + tokens > limit.tokens_per_minute:
        return "tokens"
    return None


# KEYS: one hash per scope (fields r, t); ARGV: tokens, ttl, then per scope rpm, tpm (-1: none).
_LUA_ADMIT = """
local tokens = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local counts = {}
for i, key in ipairs(KEYS) do
  local r = tonumber(redis.call('HGET', key, 'r') or '0')
  local t = tonumber(redis.call('HGET', key, 't') or '0')
  counts[i] = {r, t}
  local rpm = tonumber(ARGV[1 + 2 * i])
  local tpm = tonumber(ARGV[2 + 2 * i])
  if (rpm >= 0 and r + 1 > rpm) or (tpm >= 0 and t + tokens > tpm) then
    local out = {i}
    for j = 1, #KEYS do
      local rj = tonumber(redis.call('HGET', KEYS[j], 'r') or '0')
      local tj = tonumber(redis.call('HGET', KEYS[j], 't') or '0')
      table.insert(out, rj)
      table.insert(out, tj)
    end
    return out
  end
end
local out = {0}
for i, key in ipairs(KEYS) do
  table.insert(out, redis.call('HINCRBY', key, 'r', 1))
  table.insert(out, redis.call('HINCRBY', key, 't', tokens))
  redis.call('EXPIRE', key, ttl)
end
return out
"""


class RedisCounter:
    """Counts in the budgets' Redis, shared by every replica; one Lua script per admission."""

    def __init__(self, client: Redis, *, key_prefix: str = "footprint") -> None:
        # The budgets' own client (its timeouts, no retry ladder); closed by the budgets.
        self._prefix = key_prefix
        self._admit = client.register_script(_LUA_ADMIT)

    async def admit(
        self, team: str, window: int, limits: Sequence[Limit], tokens: int
    ) -> tuple[int, list[tuple[int, int]]]:
        # One hash tag per team: every key of one admission lives in one cluster slot.
        keys = [f"{self._prefix}:{{{team}}}:rl:{lim.scope}:{window}" for lim in limits]
        args: list[Any] = [tokens, WINDOW_S * 2]
        for lim in limits:
            args += [_or_none(lim.requests_per_minute), _or_none(lim.tokens_per_minute)]
        from redis.exceptions import RedisError

        try:
            reply = await self._admit(keys=keys, args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            raise CounterUnavailable(f"{type(exc).__name__}: {exc}") from None
        values = [int(v) for v in reply]
        pairs = [(values[i], values[i + 1]) for i in range(1, len(values), 2)]
        return values[0], pairs

    async def aclose(self) -> None:
        return None  # the client is the budgets', closed with them


def _or_none(value: int | None) -> int:
    return -1 if value is None else value


class RateLimits:
    """Admits requests against their team's and key's limits; one per app."""

    def __init__(
        self,
        store: LimitStore,
        counter: Counter,
        on_store_error: str = "allow",
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._counter = counter
        self._on_store_error = on_store_error
        self._clock = clock
        self._monotonic = monotonic
        self._limits: dict[str, tuple[float, dict[str | None, Limit]]] = {}

    def forget(self, team: str) -> None:
        """Read `team`'s limits again on its next request (they were just changed here)."""
        self._limits.pop(team, None)

    async def _limits_of(self, team: str) -> dict[str | None, Limit]:
        cached = self._limits.get(team)
        now = self._monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        rows = await self._store.list_rate_limits(team)
        found = {key: Limit(key or "team", rpm, tpm) for key, rpm, tpm in rows}
        self._limits[team] = (now + LIMITS_CACHE_S, found)
        return found

    async def admit(self, team: str, key_id: str | None, tokens: int) -> Admission | None:
        """Count one request of `tokens` tokens; None when neither the team nor the key is
        limited. Raises `RateLimited` (nothing counted) when a limit is reached."""
        by_key = await self._limits_of(team)
        limits = [lim for lim in (by_key.get(None), by_key.get(key_id) if key_id else None) if lim]
        if not limits:
            return None
        now = self._clock()
        window = int(now // WINDOW_S)
        reset_s = (window + 1) * WINDOW_S - now
        try:
            full, pairs = await self._counter.admit(team, window, limits, tokens)
        except CounterUnavailable as exc:  # the store policy decides, as for budgets
            if self._on_store_error == "refuse":
                raise ServiceUnavailable("the rate-limit store is unavailable") from None
            log.warning("rate limits unchecked for team %s: %s", team, exc)
            return None
        counted = tuple(Counted(lim, r, t) for lim, (r, t) in zip(limits, pairs, strict=True))
        admission = Admission(counted, reset_s)
        if full:
            limit = limits[full - 1]
            kind = _full(limit, pairs[full - 1][0], pairs[full - 1][1], tokens) or "requests"
            headers = {**admission.headers(), "retry-after": str(math.ceil(reset_s))}
            per = "requests" if kind == "requests" else "tokens"
            cap = limit.requests_per_minute if kind == "requests" else limit.tokens_per_minute
            who = f"team {team!r}" if limit.scope == "team" else f"key {limit.scope}"
            raise RateLimited(
                f"Rate limit reached for {who} on {per} per min: limit {cap}, "
                f"requested {1 if kind == 'requests' else tokens}. "
                f"Please try again in {_duration(reset_s)}.",
                kind,
                headers,
            )
        return admission

    async def aclose(self) -> None:
        await self._counter.aclose()


def open_rate_limits(
    budgets: Budgets, store: LimitStore, on_store_error: str, *, key_prefix: str = "footprint"
) -> RateLimits:
    """Counted where `budgets` count: in-process, or in their Redis through their client."""
    client = budgets.redis
    counter: Counter = (
        RedisCounter(client, key_prefix=key_prefix) if client is not None else LocalCounter()
    )
    return RateLimits(store, counter, on_store_error)
