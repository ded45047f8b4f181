"""re-analyses: analyses (a scan re-scored with another model version) and their per-well
analysis_results

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 00:40:00

New tables only: a scan's own results (well_results) are untouched and stay its model of
record's calls; each re-analysis keeps its calls beside them, one analysis per (scan, model
version). The downgrade drops the re-analyses (the stored images they were made from remain).
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('analyses',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('scan_id', sa.Integer(), nullable=False),
    sa.Column('model_version_id', sa.Integer(), nullable=False),
    sa.Column('status', sa.Enum('queued', 'running', 'completed', 'failed', 'cancelled', name='analysis_status', native_enum=False, length=16), nullable=False),
    sa.Column('wells_total', sa.Integer(), nullable=False),
    sa.Column('wells_done', sa.Integer(), nullable=False),
    sa.Column('decision_policy', sa.JSON(none_as_null=True), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('requested_by', sa.String(length=64), nullable=True),
    sa.Column('requested_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('lease_owner', sa.String(length=128), nullable=True),
    sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('fields_scored', sa.Integer(), nullable=False),
    sa.Column('compute_s', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_versions.id'], name=op.f('fk_analyses_model_version_id_model_versions')),
    sa.ForeignKeyConstraint(['scan_id'], ['scans.id'], name=op.f('fk_analyses_scan_id_scans'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_analyses')),
    sa.UniqueConstraint('scan_id', 'model_version_id', name=op.f('uq_analyses_scan_id'))
    )
    with op.batch_alter_table('analyses', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_analyses_scan_id'), ['scan_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_analyses_status'), ['status'], unique=False)

    op.create_table('analysis_results',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('analysis_id', sa.Integer(), nullable=False),
    sa.Column('scan_id', sa.Integer(), nullable=False),
    sa.Column('well_id', sa.Integer(), nullable=False),
    sa.Column('model_version_id', sa.Integer(), nullable=False),
    sa.Column('field_probabilities', sa.JSON(), nullable=False),
    sa.Column('status', sa.Enum('ok', 'excluded', 'failed', name='well_status', native_enum=False, length=16), nullable=False),
    sa.Column('label', sa.String(length=16), nullable=True),
    sa.Column('probability', sa.Float(), nullable=True),
    sa.Column('leaning', sa.String(length=8), nullable=True),
    sa.Column('call_reason', sa.Text(), nullable=True),
    sa.Column('confidence', sa.Float(), nullable=True),
    sa.Column('field_spread', sa.Float(), nullable=True),
    sa.Column('ood_score', sa.Float(), nullable=True),
    sa.Column('qc_flags', sa.JSON(), nullable=False),
    sa.Column('fields_used', sa.Integer(), nullable=False),
    sa.Column('confluence_pct', sa.Float(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('preprocessing_ms', sa.Float(), nullable=False),
    sa.Column('inference_ms', sa.Float(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('probability IS NULL OR (probability >= 0 AND probability <= 1)', name=op.f('ck_analysis_results_probability')),
    sa.ForeignKeyConstraint(['analysis_id'], ['analyses.id'], name=op.f('fk_analysis_results_analysis_id_analyses'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_versions.id'], name=op.f('fk_analysis_results_model_version_id_model_versions')),
    sa.ForeignKeyConstraint(['scan_id'], ['scans.id'], name=op.f('fk_analysis_results_scan_id_scans'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['well_id'], ['wells.id'], name=op.f('fk_analysis_results_well_id_wells')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_analysis_results')),
    sa.UniqueConstraint('analysis_id', 'well_id', name=op.f('uq_analysis_results_analysis_id'))
    )
    with op.batch_alter_table('analysis_results', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_analysis_results_analysis_id'), ['analysis_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_analysis_results_scan_id'), ['scan_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_analysis_results_well_id'), ['well_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('analysis_results', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_analysis_results_well_id'))
        batch_op.drop_index(batch_op.f('ix_analysis_results_scan_id'))
        batch_op.drop_index(batch_op.f('ix_analysis_results_analysis_id'))

    op.drop_table('analysis_results')
    with op.batch_alter_table('analyses', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_analyses_status'))
        batch_op.drop_index(batch_op.f('ix_analyses_scan_id'))

    op.drop_table('analyses')
