"""Figures that can be audited: each request row records its methodology version, where its
water factor came from, its intensity's detail and own time, a ranged estimate's [low, high],
and the inputs its figures follow from (issue 13).

Revision ID: 0004
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0002"
branch_labels = None
depends_on = None

_TEXT = (
    # name, width, default for rows written before this revision
    ("methodology_version", 16, "1"),
    ("water_source", 32, ""),
    ("intensity_detail", 200, ""),
    ("intensity_at", 40, ""),
)
_INPUTS = (
    ("ranges", sa.Text()),
    ("server_energy_j", sa.Float()),
    ("hardware_s", sa.Float()),
    ("gpus", sa.Integer()),
    ("wue_l_per_kwh", sa.Float()),
    ("ewif_l_per_kwh", sa.Float()),
)


def upgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        for name, width, default in _TEXT:
            batch.add_column(
                sa.Column(name, sa.String(width), nullable=False, server_default=default)
            )
        for name, kind in _INPUTS:
            batch.add_column(sa.Column(name, kind))


def downgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        for name, _ in reversed(_INPUTS):
            batch.drop_column(name)
        for name, _, _ in reversed(_TEXT):
            batch.drop_column(name)
