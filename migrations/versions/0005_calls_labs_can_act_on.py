"""calls a lab can act on: well_results.label widened to 16 characters for "uncertain" and
"no call", with leaning, call_reason, confidence, field_spread and ood_score; images.ood_score;
scans.decision_policy

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 21:50:00

All new columns are nullable: results written before this revision were called at 0.5 with no
selective threshold and no out-of-distribution guard, and say so with NULL.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('scans', schema=None) as batch_op:
        batch_op.add_column(sa.Column('decision_policy', sa.JSON(), nullable=True))
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.add_column(sa.Column('ood_score', sa.Float(), nullable=True))
    with op.batch_alter_table('well_results', schema=None) as batch_op:
        batch_op.alter_column(
            'label', existing_type=sa.String(length=8), type_=sa.String(length=16)
        )
        batch_op.add_column(sa.Column('leaning', sa.String(length=8), nullable=True))
        batch_op.add_column(sa.Column('call_reason', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('confidence', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('field_spread', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('ood_score', sa.Float(), nullable=True))


def downgrade() -> None:
    # Labels that did not exist before (uncertain, no call) fall back to the call the old schema
    # would have made: the leaning, or for a no-call well (which has none) P(high) >= 0.5; so a
    # downgrade keeps a high/low for every well that has a probability.
    op.execute(
        "UPDATE well_results SET label = COALESCE(leaning, CASE WHEN probability >= 0.5 "
        "THEN 'high' ELSE 'low' END) WHERE label IN ('uncertain', 'no call')"
    )
    with op.batch_alter_table('well_results', schema=None) as batch_op:
        batch_op.drop_column('ood_score')
        batch_op.drop_column('field_spread')
        batch_op.drop_column('confidence')
        batch_op.drop_column('call_reason')
        batch_op.drop_column('leaning')
        batch_op.alter_column(
            'label', existing_type=sa.String(length=16), type_=sa.String(length=8)
        )
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.drop_column('ood_score')
    with op.batch_alter_table('scans', schema=None) as batch_op:
        batch_op.drop_column('decision_policy')
