"""Traffic control (issue 15): each request row records the routing decision (JSON) and the
carbon it avoided against the priority choice; rate limits per team or key get their table.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.add_column(sa.Column("route", sa.Text()))
        batch.add_column(sa.Column("co2e_avoided_g", sa.Float()))
    op.create_table(
        "rate_limits",
        sa.Column("team", sa.String(64), sa.ForeignKey("teams.name"), primary_key=True),
        sa.Column("key_id", sa.String(40), primary_key=True),
        sa.Column("requests_per_minute", sa.Integer()),
        sa.Column("tokens_per_minute", sa.Integer()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("rate_limits")
    with op.batch_alter_table("requests") as batch:
        batch.drop_column("co2e_avoided_g")
        batch.drop_column("route")
