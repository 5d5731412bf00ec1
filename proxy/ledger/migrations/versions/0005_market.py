"""Market-based carbon beside location-based: each request row may carry `co2e_market_g` and
the upstream's contracts it follows from (coverage, the contracts' factor, the residual mix and
its source); all NULL where the upstream had no contract data, and on rows written before this
revision (issue 18).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_COLUMNS = (
    ("co2e_market_g", sa.Float()),
    ("market_coverage", sa.Float()),
    ("market_gco2e_per_kwh", sa.Float()),
    ("residual_gco2e_per_kwh", sa.Float()),
    ("residual_source", sa.String(200)),
)


def upgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        for name, kind in _COLUMNS:
            batch.add_column(sa.Column(name, kind))


def downgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        for name, _ in reversed(_COLUMNS):
            batch.drop_column(name)
