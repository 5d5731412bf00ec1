"""The ledger: request records, teams, keys and budget limits, in SQLite or PostgreSQL.

Only this package speaks SQL. `open_ledger(settings.ledger)` gives a `Ledger`; its `store`
holds teams, keys and budgets in the same database.
"""

from proxy.ledger._accounts import ACCOUNT_FIELDS, AccountRow
from proxy.ledger._engine import LedgerConfigError
from proxy.ledger._health import ERROR_TYPES, LedgerUnreachable, check_reachable, unavailable
from proxy.ledger._ledger import IdlePolicy, Ledger, open_ledger
from proxy.ledger._migration import migrate_in_child
from proxy.ledger._records import (
    METRICS,
    PERIODS,
    Endpoint,
    LedgerRecord,
    as_utc,
    figure_columns,
    iso,
    parse_moment,
)
from proxy.ledger._series import BUCKETS, ORDER_FIELDS, SERIES_KEYS
from proxy.ledger._store import AlreadyExists, Store, UnknownKey, UnknownTeam
from proxy.ledger._usage import GROUP_KEYS, MARKET_FIELDS, SUM_FIELDS, usage_totals
from proxy.ledger._writer import LedgerWriteError

__all__ = [
    "ACCOUNT_FIELDS",
    "BUCKETS",
    "ERROR_TYPES",
    "GROUP_KEYS",
    "MARKET_FIELDS",
    "METRICS",
    "ORDER_FIELDS",
    "PERIODS",
    "SERIES_KEYS",
    "SUM_FIELDS",
    "AccountRow",
    "AlreadyExists",
    "Endpoint",
    "IdlePolicy",
    "Ledger",
    "LedgerConfigError",
    "LedgerRecord",
    "LedgerUnreachable",
    "LedgerWriteError",
    "Store",
    "UnknownKey",
    "UnknownTeam",
    "as_utc",
    "check_reachable",
    "figure_columns",
    "iso",
    "migrate_in_child",
    "open_ledger",
    "parse_moment",
    "unavailable",
    "usage_totals",
]
