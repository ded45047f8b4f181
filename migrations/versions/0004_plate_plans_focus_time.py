"""plate plans, focus and instrument time: scans.plate_plan, images.z_um and .autofocus,
well_results.instrument_ms

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 18:45:00

All nullable: rows written before this revision have no plan (a wells list), no focus record and
no instrument time, and say so with NULL rather than a made-up value.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('scans', schema=None) as batch_op:
        batch_op.add_column(sa.Column('plate_plan', sa.JSON(), nullable=True))
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.add_column(sa.Column('z_um', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('autofocus', sa.JSON(), nullable=True))
    with op.batch_alter_table('well_results', schema=None) as batch_op:
        batch_op.add_column(sa.Column('instrument_ms', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('well_results', schema=None) as batch_op:
        batch_op.drop_column('instrument_ms')
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.drop_column('autofocus')
        batch_op.drop_column('z_um')
    with op.batch_alter_table('scans', schema=None) as batch_op:
        batch_op.drop_column('plate_plan')
