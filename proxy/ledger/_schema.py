"""The tables, as SQLAlchemy Core objects: the one place their shape is written down.

Migrations under `migrations/versions/` create exactly this; `tests/proxy/ledger` checks that
the two agree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects import sqlite

if TYPE_CHECKING:
    from sqlalchemy.dialects import postgresql

metadata = MetaData()


def conflict_insert(dialect: str, table: Table) -> postgresql.Insert | sqlite.Insert:
    """`table`'s INSERT in the dialect's own form, the one that has ON CONFLICT. PostgreSQL's
    module (2 MB resident, its asyncpg and psycopg dialects with it) is imported only for a
    PostgreSQL ledger."""
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table)
    return sqlite.insert(table)


# One row per request the proxy served (or tried to).
requests = Table(
    "requests",
    metadata,
    Column("request_id", String(200), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # UTC calendar day of created_at, kept as text so "group by day" is the same SQL everywhere.
    Column("day", String(10), nullable=False),
    Column("team", String(64), nullable=False),
    Column("key_id", String(40)),
    Column("model", String(200), nullable=False),
    Column("upstream", String(100), nullable=False),
    Column("endpoint", String(32), nullable=False),
    Column("stream", Boolean, nullable=False),
    Column("status", Integer, nullable=False),
    Column("cancelled", Boolean, nullable=False),
    Column("error", Text),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("tokens_counted", Boolean, nullable=False),
    Column("method", String(16), nullable=False),
    Column("basis", String(200), nullable=False),
    Column("gpu_energy_j", Float, nullable=False),
    Column("energy_j", Float, nullable=False),
    Column("co2e_g", Float, nullable=False),
    Column("embodied_co2e_g", Float, nullable=False),
    Column("water_ml", Float, nullable=False),
    Column("zone", String(64), nullable=False),
    Column("grid_gco2e_per_kwh", Float, nullable=False),
    Column("pue", Float, nullable=False),
    Column("intensity_source", String(200), nullable=False),
    Column("trace_id", String(32)),
    Column("duration_ms", Float, nullable=False),
    Column("overhead_ms", Float, nullable=False),
    # Revision 0004 (issue 13): how each figure was made, so it can be recomputed and audited.
    # The methodology version ("1" for rows written before it was recorded), where the water
    # factor came from, the intensity's detail and own time, a ranged estimate's [low, high]
    # (JSON), and the inputs the figures follow from (NULL on rows written before 0004).
    Column("methodology_version", String(16), nullable=False, server_default="1"),
    Column("water_source", String(32), nullable=False, server_default=""),
    Column("intensity_detail", String(200), nullable=False, server_default=""),
    Column("intensity_at", String(40), nullable=False, server_default=""),
    Column("ranges", Text),
    Column("server_energy_j", Float),
    Column("hardware_s", Float),
    Column("gpus", Integer),
    Column("wue_l_per_kwh", Float),
    Column("ewif_l_per_kwh", Float),
    # Revision 0005 (issue 18): market-based carbon (Scope 2 market method, plus embodied) and
    # the upstream's contracts it follows from; NULL where the upstream had no contract data.
    Column("co2e_market_g", Float),
    Column("market_coverage", Float),
    Column("market_gco2e_per_kwh", Float),
    Column("residual_gco2e_per_kwh", Float),
    Column("residual_source", String(200)),
    # "engine" | "local": how a measured figure was split (methodology §2b); null otherwise.
    Column("attribution", String(8)),
    # Revision 0006 (issue 15): the routing decision as JSON, and the carbon it avoided against
    # the priority choice (NULL where no policy chose among several upstreams).
    Column("route", Text),
    Column("co2e_avoided_g", Float),
)
Index("ix_requests_team_created_at", requests.c.team, requests.c.created_at)
Index("ix_requests_created_at", requests.c.created_at)
Index("ix_requests_trace_id", requests.c.trace_id)

# Energy an upstream's GPUs used while no request was in flight (methodology §2).
idle = Table(
    "idle_energy",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("upstream", String(100), nullable=False),
    Column("start_at", DateTime(timezone=True), nullable=False),
    Column("end_at", DateTime(timezone=True), nullable=False),
    Column("gpu_energy_j", Float, nullable=False),
    Column("energy_j", Float, nullable=False),
    Column("co2e_g", Float, nullable=False),
    Column("water_ml", Float, nullable=False),
)
Index("ix_idle_energy_start_at", idle.c.start_at)

# What one GPU meter measured per wall-clock bucket: the energy, its idle part (with the same
# boundary as a request's: server share, PUE, carbon with embodied, water) and the engine work
# the writing replica saw no request for. Keyed by (meter, bucket): every replica in front of
# the same GPUs writes the same key, the fullest reading is kept, so each joule counts once in
# the cluster (methodology §2b). Requests' energy comes from `requests`; other traffic for the
# cluster is measured − idle − Σ requests.
accounts = Table(
    "meter_accounts",
    metadata,
    Column("meter", String(300), primary_key=True),
    Column("bucket_start", DateTime(timezone=True), primary_key=True),
    Column("bucket_end", DateTime(timezone=True), nullable=False),
    Column("day", String(10), nullable=False),
    Column("upstream", String(100), nullable=False),
    Column("measured_gpu_energy_j", Float, nullable=False),
    Column("measured_s", Float, nullable=False),
    Column("idle_gpu_energy_j", Float, nullable=False),
    Column("idle_s", Float, nullable=False),
    Column("idle_energy_j", Float, nullable=False),
    Column("idle_co2e_g", Float, nullable=False),
    Column("idle_embodied_co2e_g", Float, nullable=False),
    Column("idle_water_ml", Float, nullable=False),
    Column("other_gpu_energy_j", Float, nullable=False),
    Column("replica", String(200), nullable=False),
)
Index("ix_meter_accounts_upstream_day", accounts.c.upstream, accounts.c.day)

teams = Table(
    "teams",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("team", String(64), ForeignKey("teams.name"), nullable=False),
    # SHA-256 of the whole key, hex; the key itself is never stored.
    Column("key_hash", String(64), nullable=False, unique=True),
    # The first characters of the key, so a person can tell keys apart in a listing.
    Column("key_prefix", String(16), nullable=False),
    Column("models", Text, nullable=False),  # JSON list of model names or globs
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
)
Index("ix_api_keys_team", api_keys.c.team)

budgets = Table(
    "budgets",
    metadata,
    Column("team", String(64), ForeignKey("teams.name"), primary_key=True),
    Column("metric", String(16), primary_key=True),
    Column("period", String(8), primary_key=True),
    Column("limit_value", Float, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# Rate limits per team (key_id "") or per key (revision 0006, issue 15); NULL: no limit on it.
rate_limits = Table(
    "rate_limits",
    metadata,
    Column("team", String(64), ForeignKey("teams.name"), primary_key=True),
    Column("key_id", String(40), primary_key=True),
    Column("requests_per_minute", Integer),
    Column("tokens_per_minute", Integer),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
