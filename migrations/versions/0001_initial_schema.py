"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-25 23:58:06.814630
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("card", sa.JSON(), nullable=False),
        sa.Column("parity_passed", sa.Boolean(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_versions")),
        sa.UniqueConstraint("name", "version", name=op.f("uq_model_versions_name")),
    )
    op.create_table(
        "plates",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("barcode", sa.String(length=64), nullable=False),
        sa.Column("plate_type", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_plates")),
        sa.UniqueConstraint("barcode", name=op.f("uq_plates_barcode")),
    )
    op.create_table(
        "scans",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("plate_id", sa.Integer(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "queued",
                "running",
                "completed",
                "failed",
                "cancelled",
                name="scan_status",
                native_enum=False,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("objective", sa.String(length=8), nullable=False),
        sa.Column("fields_per_well", sa.Integer(), nullable=False),
        sa.Column("wells_requested", sa.JSON(), nullable=False),
        sa.Column("microscope", sa.String(length=64), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=True),
        sa.Column("wells_done", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "fields_per_well >= 1 AND fields_per_well <= 25", name=op.f("ck_scans_fields_per_well")
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_scans_model_version_id_model_versions"),
        ),
        sa.ForeignKeyConstraint(["plate_id"], ["plates.id"], name=op.f("fk_scans_plate_id_plates")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scans")),
    )
    with op.batch_alter_table("scans", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_scans_plate_id"), ["plate_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_scans_status"), ["status"], unique=False)

    op.create_table(
        "wells",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("plate_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=4), nullable=False),
        sa.Column("row", sa.Integer(), nullable=False),
        sa.Column("column", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["plate_id"], ["plates.id"], name=op.f("fk_wells_plate_id_plates"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_wells")),
        sa.UniqueConstraint("plate_id", "name", name=op.f("uq_wells_plate_id")),
    )
    with op.batch_alter_table("wells", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_wells_plate_id"), ["plate_id"], unique=False)

    op.create_table(
        "fct_measurements",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("well_id", sa.Integer(), nullable=False),
        sa.Column("cd73_pct", sa.Float(), nullable=False),
        sa.Column("cd90_pct", sa.Float(), nullable=False),
        sa.Column("event_count", sa.Integer(), nullable=True),
        sa.Column("label", sa.String(length=8), nullable=False),
        sa.Column("source", sa.String(length=128), nullable=False),
        sa.Column("measured_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "cd73_pct >= 0 AND cd73_pct <= 100", name=op.f("ck_fct_measurements_cd73_range")
        ),
        sa.CheckConstraint(
            "cd90_pct >= 0 AND cd90_pct <= 100", name=op.f("ck_fct_measurements_cd90_range")
        ),
        sa.ForeignKeyConstraint(
            ["well_id"],
            ["wells.id"],
            name=op.f("fk_fct_measurements_well_id_wells"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fct_measurements")),
        sa.UniqueConstraint("well_id", name=op.f("uq_fct_measurements_well_id")),
    )
    op.create_table(
        "images",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("scan_id", sa.Integer(), nullable=False),
        sa.Column("well_id", sa.Integer(), nullable=False),
        sa.Column("field_index", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("dtype", sa.String(length=16), nullable=False),
        sa.Column("objective", sa.String(length=8), nullable=False),
        sa.Column("pixel_size_um", sa.Float(), nullable=False),
        sa.Column("x_um", sa.Float(), nullable=False),
        sa.Column("y_um", sa.Float(), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("mean_v", sa.Float(), nullable=False),
        sa.Column("focus_score", sa.Float(), nullable=False),
        sa.Column("qc_excluded", sa.Boolean(), nullable=False),
        sa.Column("qc_flags", sa.JSON(), nullable=False),
        sa.Column("probability", sa.Float(), nullable=True),
        sa.Column("confluence_pct", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["scan_id"], ["scans.id"], name=op.f("fk_images_scan_id_scans"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["well_id"], ["wells.id"], name=op.f("fk_images_well_id_wells")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_images")),
        sa.UniqueConstraint("scan_id", "well_id", "field_index", name=op.f("uq_images_scan_id")),
    )
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_images_scan_id"), ["scan_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_images_well_id"), ["well_id"], unique=False)

    op.create_table(
        "well_results",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("scan_id", sa.Integer(), nullable=False),
        sa.Column("well_id", sa.Integer(), nullable=False),
        sa.Column(
            "status",
            sa.Enum("ok", "excluded", "failed", name="well_status", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("label", sa.String(length=8), nullable=True),
        sa.Column("probability", sa.Float(), nullable=True),
        sa.Column("qc_flags", sa.JSON(), nullable=False),
        sa.Column("fields_used", sa.Integer(), nullable=False),
        sa.Column("confluence_pct", sa.Float(), nullable=True),
        sa.Column("model_version_id", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("acquisition_ms", sa.Float(), nullable=False),
        sa.Column("preprocessing_ms", sa.Float(), nullable=False),
        sa.Column("inference_ms", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "probability IS NULL OR (probability >= 0 AND probability <= 1)",
            name=op.f("ck_well_results_probability"),
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_well_results_model_version_id_model_versions"),
        ),
        sa.ForeignKeyConstraint(
            ["scan_id"],
            ["scans.id"],
            name=op.f("fk_well_results_scan_id_scans"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["well_id"], ["wells.id"], name=op.f("fk_well_results_well_id_wells")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_well_results")),
        sa.UniqueConstraint("scan_id", "well_id", name=op.f("uq_well_results_scan_id")),
    )
    with op.batch_alter_table("well_results", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_well_results_scan_id"), ["scan_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_well_results_well_id"), ["well_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("well_results", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_well_results_well_id"))
        batch_op.drop_index(batch_op.f("ix_well_results_scan_id"))

    op.drop_table("well_results")
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_images_well_id"))
        batch_op.drop_index(batch_op.f("ix_images_scan_id"))

    op.drop_table("images")
    op.drop_table("fct_measurements")
    with op.batch_alter_table("wells", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_wells_plate_id"))

    op.drop_table("wells")
    with op.batch_alter_table("scans", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_scans_status"))
        batch_op.drop_index(batch_op.f("ix_scans_plate_id"))

    op.drop_table("scans")
    op.drop_table("plates")
    op.drop_table("model_versions")
