"""Initial schema: requests, idle energy, teams, API keys, budgets.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "requests",
        sa.Column("request_id", sa.String(200), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("team", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(40)),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("upstream", sa.String(100), nullable=False),
        sa.Column("endpoint", sa.String(32), nullable=False),
        sa.Column("stream", sa.Boolean, nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("cancelled", sa.Boolean, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("prompt_tokens", sa.Integer, nullable=False),
        sa.Column("completion_tokens", sa.Integer, nullable=False),
        sa.Column("tokens_counted", sa.Boolean, nullable=False),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("basis", sa.String(200), nullable=False),
        sa.Column("gpu_energy_j", sa.Float, nullable=False),
        sa.Column("energy_j", sa.Float, nullable=False),
        sa.Column("co2e_g", sa.Float, nullable=False),
        sa.Column("embodied_co2e_g", sa.Float, nullable=False),
        sa.Column("water_ml", sa.Float, nullable=False),
        sa.Column("zone", sa.String(64), nullable=False),
        sa.Column("grid_gco2e_per_kwh", sa.Float, nullable=False),
        sa.Column("pue", sa.Float, nullable=False),
        sa.Column("intensity_source", sa.String(200), nullable=False),
        sa.Column("trace_id", sa.String(32)),
        sa.Column("duration_ms", sa.Float, nullable=False),
        sa.Column("overhead_ms", sa.Float, nullable=False),
    )
    op.create_index("ix_requests_team_created_at", "requests", ["team", "created_at"])
    op.create_index("ix_requests_created_at", "requests", ["created_at"])
    op.create_index("ix_requests_trace_id", "requests", ["trace_id"])

    op.create_table(
        "idle_energy",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("upstream", sa.String(100), nullable=False),
        sa.Column("start_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("gpu_energy_j", sa.Float, nullable=False),
        sa.Column("energy_j", sa.Float, nullable=False),
        sa.Column("co2e_g", sa.Float, nullable=False),
        sa.Column("water_ml", sa.Float, nullable=False),
    )
    op.create_index("ix_idle_energy_start_at", "idle_energy", ["start_at"])

    op.create_table(
        "teams",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("team", sa.String(64), sa.ForeignKey("teams.name"), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("key_prefix", sa.String(16), nullable=False),
        sa.Column("models", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_api_keys_team", "api_keys", ["team"])
    op.create_table(
        "budgets",
        sa.Column("team", sa.String(64), sa.ForeignKey("teams.name"), primary_key=True),
        sa.Column("metric", sa.String(16), primary_key=True),
        sa.Column("period", sa.String(8), primary_key=True),
        sa.Column("limit_value", sa.Float, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("budgets")
    op.drop_table("api_keys")
    op.drop_table("teams")
    op.drop_index("ix_idle_energy_start_at", "idle_energy")
    op.drop_table("idle_energy")
    op.drop_index("ix_requests_trace_id", "requests")
    op.drop_index("ix_requests_created_at", "requests")
    op.drop_index("ix_requests_team_created_at", "requests")
    op.drop_table("requests")
