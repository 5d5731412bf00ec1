"""Meter accounts shared by replicas, and how each request's figure was split.

`meter_accounts`: measured, idle and other-traffic energy per (meter, wall-clock bucket),
written idempotently by every replica in front of the same GPUs (methodology §2b).
`requests.attribution`: "engine" | "local" for measured figures.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.add_column(sa.Column("attribution", sa.String(8)))
    op.create_table(
        "meter_accounts",
        sa.Column("meter", sa.String(300), primary_key=True),
        sa.Column("bucket_start", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("bucket_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("upstream", sa.String(100), nullable=False),
        sa.Column("measured_gpu_energy_j", sa.Float, nullable=False),
        sa.Column("measured_s", sa.Float, nullable=False),
        sa.Column("idle_gpu_energy_j", sa.Float, nullable=False),
        sa.Column("idle_s", sa.Float, nullable=False),
        sa.Column("idle_energy_j", sa.Float, nullable=False),
        sa.Column("idle_co2e_g", sa.Float, nullable=False),
        sa.Column("idle_embodied_co2e_g", sa.Float, nullable=False),
        sa.Column("idle_water_ml", sa.Float, nullable=False),
        sa.Column("other_gpu_energy_j", sa.Float, nullable=False),
        sa.Column("replica", sa.String(200), nullable=False),
    )
    op.create_index("ix_meter_accounts_upstream_day", "meter_accounts", ["upstream", "day"])


def downgrade() -> None:
    op.drop_index("ix_meter_accounts_upstream_day", "meter_accounts")
    op.drop_table("meter_accounts")
    with op.batch_alter_table("requests") as batch:
        batch.drop_column("attribution")
