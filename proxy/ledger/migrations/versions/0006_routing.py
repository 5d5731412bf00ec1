"""Routing: each request row records the routing decision (JSON) and the carbon it avoided
against the priority choice (issue 15).

Revision ID: 0006
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.add_column(sa.Column("route", sa.Text()))
        batch.add_column(sa.Column("co2e_avoided_g", sa.Float()))


def downgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.drop_column("co2e_avoided_g")
        batch.drop_column("route")
