"""Budgets and rate limits: what a team (or one of its keys) may spend, checked before a
request is relayed and counted after, in-process on one replica or atomically in Redis across
several. Private modules behind this one face, as `proxy/ledger/` is:

- `_facts`: the budget metrics (`METRICS`, defined once: the Redis scripts and the ledger's
  sums loop over it), periods, `Usage`, `Reservation`, `BudgetLine`, the period arithmetic.
- `_budgets`: `Budgets` (reserve the worst case, settle to the real figure, release), the
  in-process backend and `open_budgets`.
- `_redis`: the Redis backend (Lua scripts, generations, idempotent settles, rebuilds).
- `_limits`: rate limits per team and per key (`RateLimits`: requests and tokens per minute,
  one fixed-window counter in-process or one Lua script on the same Redis), `RateLimited`
  (429 in OpenAI's rate-limit shape), `Admission` (the x-ratelimit-* headers).
"""

from proxy.budgets._budgets import (
    Budgets,
    LocalBackend,
    import_store,
    open_budgets,
)
from proxy.budgets._facts import (
    HEADER_PREFIX,
    METRICS,
    PERIODS,
    BudgetLine,
    BudgetStore,
    Reservation,
    StoreUnavailable,
    Usage,
    header_metric,
    period_key,
    period_starts,
    plain_decimal,
    remaining_by_metric,
    remaining_headers,
    spent_since_period_starts,
    validate_budget,
)
from proxy.budgets._limits import (
    WINDOW_S,
    Admission,
    Counted,
    CounterUnavailable,
    Limit,
    LocalCounter,
    RateLimited,
    RateLimits,
    RedisCounter,
    open_rate_limits,
)

__all__ = [
    "HEADER_PREFIX",
    "METRICS",
    "PERIODS",
    "WINDOW_S",
    "Admission",
    "BudgetLine",
    "BudgetStore",
    "Budgets",
    "Counted",
    "CounterUnavailable",
    "Limit",
    "LocalBackend",
    "LocalCounter",
    "RateLimited",
    "RateLimits",
    "RedisCounter",
    "Reservation",
    "StoreUnavailable",
    "Usage",
    "header_metric",
    "import_store",
    "open_budgets",
    "open_rate_limits",
    "period_key",
    "period_starts",
    "plain_decimal",
    "remaining_by_metric",
    "remaining_headers",
    "spent_since_period_starts",
    "validate_budget",
]
