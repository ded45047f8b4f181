"""SQLAlchemy 2.0 ORM models. The schema only changes through an Alembic migration."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
    select,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, column_property, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

# Deterministic constraint names so migrations are the same on SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC, on PostgreSQL and on SQLite alike.

    PostgreSQL's ``timestamptz`` keeps the zone, but SQLite has no timestamp type and hands back
    naive datetimes, which a client would read as its own local time. Values are stored as UTC
    and read back with ``tzinfo=UTC``; a naive value is refused rather than guessed at.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: timestamps must carry a timezone")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON,
    }


class ScanStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (ScanStatus.completed, ScanStatus.failed, ScanStatus.cancelled)


class WellStatus(enum.StrEnum):
    ok = "ok"  # classified
    excluded = "excluded"  # every field failed QC: no call
    failed = "failed"  # acquisition failed: no call


class Plate(Base):
    __tablename__ = "plates"

    id: Mapped[int] = mapped_column(primary_key=True)
    barcode: Mapped[str] = mapped_column(String(64), unique=True)
    plate_type: Mapped[str] = mapped_column(String(32), default="SBS-96")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    wells: Mapped[list[Well]] = relationship(back_populates="plate", order_by="Well.id")
    scans: Mapped[list[Scan]] = relationship(back_populates="plate", order_by="Scan.id")


class Well(Base):
    __tablename__ = "wells"
    __table_args__ = (UniqueConstraint("plate_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    plate_id: Mapped[int] = mapped_column(ForeignKey("plates.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(4))
    row: Mapped[int]
    column: Mapped[int]

    plate: Mapped[Plate] = relationship(back_populates="wells")


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[int]
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    card: Mapped[dict[str, Any]]
    parity_passed: Mapped[bool] = mapped_column(Boolean, default=False)
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    registered_at: Mapped[datetime] = mapped_column(default=utcnow)


class Scan(Base):
    __tablename__ = "scans"
    __table_args__ = (
        CheckConstraint("fields_per_well >= 1 AND fields_per_well <= 25", name="fields_per_well"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    plate_id: Mapped[int] = mapped_column(ForeignKey("plates.id"), index=True)
    status: Mapped[ScanStatus] = mapped_column(
        Enum(ScanStatus, name="scan_status", native_enum=False, length=16),
        default=ScanStatus.queued,
        index=True,
    )
    objective: Mapped[str] = mapped_column(String(8))
    fields_per_well: Mapped[int] = mapped_column(Integer, default=1)
    wells_requested: Mapped[list[str]] = mapped_column(JSON)
    microscope: Mapped[str] = mapped_column(String(64))
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    wells_done: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    requested_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    requested_by: Mapped[str | None] = mapped_column(String(64))
    # Retries of the same POST (same Idempotency-Key and body) return this scan.
    idempotency_key: Mapped[str | None] = mapped_column(String(128), unique=True)
    request_fingerprint: Mapped[str | None] = mapped_column(String(64))
    # The worker holding the scan renews the lease while it runs; a lease that has expired
    # means its worker died, and another (or the restarted one) resumes the scan.
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None]
    # The useq-schema WellPlatePlan the scan was asked for (its JSON), None for a wells list:
    # the worker takes the plate's rotation, A1 and the points in each well from it.
    plate_plan: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    # How wells are called (models.decision.CallPolicy.to_dict() plus what was asked): asked at
    # creation, resolved against the scan's model when it starts. None: scans before issue 15.
    decision_policy: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))

    plate: Mapped[Plate] = relationship(back_populates="scans")
    model_version: Mapped[ModelVersion | None] = relationship()
    results: Mapped[list[WellResult]] = relationship(
        back_populates="scan", order_by="WellResult.id"
    )

    @property
    def wells_total(self) -> int:
        return len(self.wells_requested)

    @property
    def instrument_s(self) -> float | None:
        """Instrument time of the wells done so far, in seconds; None if none reported it."""
        total: float | None = self.instrument_ms_total  # type: ignore[attr-defined]
        return None if total is None else total / 1000.0


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("scan_id", "well_id", "field_index"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"), index=True)
    well_id: Mapped[int] = mapped_column(ForeignKey("wells.id"), index=True)
    field_index: Mapped[int]
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    height: Mapped[int]
    width: Mapped[int]
    dtype: Mapped[str] = mapped_column(String(16))
    objective: Mapped[str] = mapped_column(String(8))
    pixel_size_um: Mapped[float] = mapped_column(Float)
    x_um: Mapped[float] = mapped_column(Float)
    y_um: Mapped[float] = mapped_column(Float)
    acquired_at: Mapped[datetime]
    mean_v: Mapped[float] = mapped_column(Float)
    focus_score: Mapped[float] = mapped_column(Float)
    qc_excluded: Mapped[bool] = mapped_column(Boolean)
    qc_flags: Mapped[list[str]] = mapped_column(JSON)
    probability: Mapped[float | None] = mapped_column(Float)
    confluence_pct: Mapped[float | None] = mapped_column(Float)
    # Focus drive position at exposure (None: the driver cannot tell), and what autofocus did
    # at this site (AutofocusReport.to_dict(); None: no autofocus ran).
    z_um: Mapped[float | None] = mapped_column(Float)
    autofocus: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    # Out-of-distribution score (models.ood; None: QC excluded the field or no guard).
    ood_score: Mapped[float | None] = mapped_column(Float)


class CallColumns:
    """A well's call as the model of a scan or of a re-analysis made it: the columns
    :class:`WellResult` and :class:`AnalysisResult` share (a mixin: each table has its own)."""

    status: Mapped[WellStatus] = mapped_column(
        Enum(WellStatus, name="well_status", native_enum=False, length=16)
    )
    # "high" | "low" | "uncertain" (confirm by FCT) | "no call" (out of distribution) | None (no
    # field passed QC); see models.decision.
    label: Mapped[str | None] = mapped_column(String(16))
    probability: Mapped[float | None] = mapped_column(Float)  # P(high), mean over fields used
    # high/low at the decision threshold even when not called; why uncertain / no call; the
    # confidence the selective threshold was compared with, the fields' spread, and the lowest
    # OOD score of the well's fields. All None before issue 15.
    leaning: Mapped[str | None] = mapped_column(String(8))
    call_reason: Mapped[str | None] = mapped_column(Text)
    confidence: Mapped[float | None] = mapped_column(Float)
    field_spread: Mapped[float | None] = mapped_column(Float)
    ood_score: Mapped[float | None] = mapped_column(Float)
    qc_flags: Mapped[list[str]] = mapped_column(JSON)
    fields_used: Mapped[int] = mapped_column(Integer, default=0)
    confluence_pct: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    preprocessing_ms: Mapped[float] = mapped_column(Float, default=0.0)
    inference_ms: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WellResult(CallColumns, Base):
    """A well's call in its scan, by the model that classified it during the scan."""

    __tablename__ = "well_results"
    __table_args__ = (
        UniqueConstraint("scan_id", "well_id"),
        CheckConstraint(
            "probability IS NULL OR (probability >= 0 AND probability <= 1)", name="probability"
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"), index=True)
    well_id: Mapped[int] = mapped_column(ForeignKey("wells.id"), index=True)
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    acquisition_ms: Mapped[float] = mapped_column(Float, default=0.0)
    # Instrument time of the well's fields (moves, focus, exposure, readout); None: not reported.
    instrument_ms: Mapped[float | None] = mapped_column(Float)

    scan: Mapped[Scan] = relationship(back_populates="results")
    well: Mapped[Well] = relationship()
    model_version: Mapped[ModelVersion | None] = relationship()


class Analysis(Base):
    """A re-analysis: a scan's stored fields re-scored with another model version (issue 16).

    One per (scan, model version): asking again returns it (or resumes it when it failed or
    was cancelled). Claimed and leased by a worker exactly like a scan (``lease_owner``,
    ``lease_expires_at``), so a killed re-analysis resumes from its first well without a result.
    """

    __tablename__ = "analyses"
    __table_args__ = (UniqueConstraint("scan_id", "model_version_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"), index=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    status: Mapped[ScanStatus] = mapped_column(
        Enum(ScanStatus, name="analysis_status", native_enum=False, length=16),
        default=ScanStatus.queued,
        index=True,
    )
    wells_total: Mapped[int] = mapped_column(Integer)
    wells_done: Mapped[int] = mapped_column(Integer, default=0)
    # As Scan.decision_policy: what was asked at creation, resolved against the analysis's
    # model when it starts.
    decision_policy: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    error: Mapped[str | None] = mapped_column(Text)
    requested_by: Mapped[str | None] = mapped_column(String(64))
    requested_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None]
    # Fields scored and compute seconds of the runs so far (throughput: fields / seconds).
    fields_scored: Mapped[int] = mapped_column(Integer, default=0)
    compute_s: Mapped[float] = mapped_column(Float, default=0.0)

    scan: Mapped[Scan] = relationship()
    model_version: Mapped[ModelVersion] = relationship()


class AnalysisResult(CallColumns, Base):
    """A well's call in a re-analysis; ``scan_id`` and ``model_version_id`` repeat the
    analysis's, so the results of any version of a scan read like :class:`WellResult` rows."""

    __tablename__ = "analysis_results"
    __table_args__ = (
        UniqueConstraint("analysis_id", "well_id"),
        CheckConstraint(
            "probability IS NULL OR (probability >= 0 AND probability <= 1)", name="probability"
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    analysis_id: Mapped[int] = mapped_column(
        ForeignKey("analyses.id", ondelete="CASCADE"), index=True
    )
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"), index=True)
    well_id: Mapped[int] = mapped_column(ForeignKey("wells.id"), index=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    # P(high) of each stored field, in field order (None: QC excluded it).
    field_probabilities: Mapped[list[float | None]] = mapped_column(JSON)

    well: Mapped[Well] = relationship()
    model_version: Mapped[ModelVersion] = relationship()


# Loaded with the scan in the same SELECT (a listing page is one query, not one per scan); a
# SUM over no non-NULL rows is NULL: no instrument time reported. Added after WellResult,
# which it reads.
Scan.instrument_ms_total = column_property(
    select(func.sum(WellResult.instrument_ms))
    .where(WellResult.scan_id == Scan.id)
    .correlate_except(WellResult)
    .scalar_subquery()
)


class ManualCall(Base):
    """A person's visual call of a well (the paper's MV group), with the time it took."""

    __tablename__ = "manual_calls"
    __table_args__ = (
        UniqueConstraint("well_id", "operator"),
        CheckConstraint("seconds_spent >= 0", name="seconds_spent"),
        CheckConstraint("label IN ('high', 'low')", name="label"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    well_id: Mapped[int] = mapped_column(ForeignKey("wells.id", ondelete="CASCADE"), index=True)
    label: Mapped[str] = mapped_column(String(8))
    seconds_spent: Mapped[float | None] = mapped_column(Float)
    operator: Mapped[str] = mapped_column(String(64))
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)

    well: Mapped[Well] = relationship()


class Role(enum.StrEnum):
    viewer = "viewer"  # reads
    operator = "operator"  # + starts scans, uploads ground truth
    admin = "admin"  # + manages models and API keys

    def allows(self, needed: Role) -> bool:
        order = [Role.viewer, Role.operator, Role.admin]
        return order.index(self) >= order.index(needed)


class ApiKey(Base):
    """An API key; only the SHA-256 of the secret is stored."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[Role] = mapped_column(Enum(Role, name="role", native_enum=False, length=16))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class AuditEvent(Base):
    """Who changed what, when, and why: one row per write, never updated or deleted (on
    PostgreSQL a trigger refuses UPDATE and DELETE, migration 0003)."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(128))
    # Why, in the actor's words (optional; 21 CFR Part 11 asks for it on changes of record).
    reason: Mapped[str | None] = mapped_column(Text)
    # What the change did: {"before": ..., "after": ...} where there was a value before, plus
    # the request's own parameters.
    details: Mapped[dict[str, Any]]


class TrainingRunStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (
            TrainingRunStatus.completed,
            TrainingRunStatus.failed,
            TrainingRunStatus.cancelled,
        )


class TrainingRun(Base):
    """A retraining job run as a separate process."""

    __tablename__ = "training_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[TrainingRunStatus] = mapped_column(
        Enum(TrainingRunStatus, name="training_run_status", native_enum=False, length=16),
        default=TrainingRunStatus.queued,
    )
    params: Mapped[dict[str, Any]]
    pid: Mapped[int | None]
    # The machine the process runs on: only a service on the same host can see (and reap) it.
    host: Mapped[str | None] = mapped_column(String(255))
    log_path: Mapped[str | None] = mapped_column(Text)
    model_name: Mapped[str | None] = mapped_column(String(64))
    model_version: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(Text)
    requested_by: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class FctMeasurement(Base):
    """Flow-cytometry ground truth per well: high iff CD73 % > 95 and CD90 % > 95."""

    __tablename__ = "fct_measurements"
    __table_args__ = (
        UniqueConstraint("well_id"),
        CheckConstraint("cd73_pct >= 0 AND cd73_pct <= 100", name="cd73_range"),
        CheckConstraint("cd90_pct >= 0 AND cd90_pct <= 100", name="cd90_range"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    well_id: Mapped[int] = mapped_column(ForeignKey("wells.id", ondelete="CASCADE"))
    cd73_pct: Mapped[float] = mapped_column(Float)
    cd90_pct: Mapped[float] = mapped_column(Float)
    event_count: Mapped[int | None]
    label: Mapped[str] = mapped_column(String(8))
    source: Mapped[str] = mapped_column(String(128))
    measured_at: Mapped[datetime] = mapped_column(default=utcnow)

    well: Mapped[Well] = relationship()
