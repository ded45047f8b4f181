"""Re-analyses (issue 16): a finished scan's stored fields re-scored with another model version."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from app.schemas.common import MAX_ID, MODEL_NAME_PATTERN
from app.schemas.scans import CallPolicyRequest, ModelRef
from store.orm import Analysis, ScanStatus


class AnalysisCreate(CallPolicyRequest):
    """The model version to re-score a scan with; call-policy fields left unset are the scan's
    own (what it asked for when it was queued)."""

    model: str = Field(pattern=MODEL_NAME_PATTERN, examples=["hscnn-sim"])
    version: int = Field(ge=1, le=MAX_ID, examples=[1])


class AnalysisPublic(BaseModel):
    id: int
    scan_id: int
    model: ModelRef
    status: ScanStatus
    wells_total: int
    wells_done: int
    progress: float = Field(description="wells_done / wells_total, 0..1")
    decision_policy: dict[str, Any] | None = Field(
        description="As ScanPublic.decision_policy, resolved against this analysis's model"
    )
    fields_per_second: float | None = Field(
        description="Fields re-scored per second of compute in the runs so far (reading, "
        "checksums, preparation, inference and commits); null before the first run ends"
    )
    error: str | None
    requested_by: str | None
    requested_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, analysis: Analysis) -> AnalysisPublic:
        model = analysis.model_version
        return cls(
            id=analysis.id,
            scan_id=analysis.scan_id,
            model=ModelRef(name=model.name, version=model.version),
            status=analysis.status,
            wells_total=analysis.wells_total,
            wells_done=analysis.wells_done,
            progress=analysis.wells_done / analysis.wells_total if analysis.wells_total else 1.0,
            decision_policy=analysis.decision_policy,
            fields_per_second=analysis.fields_scored / analysis.compute_s
            if analysis.compute_s > 0
            else None,
            error=analysis.error,
            requested_by=analysis.requested_by,
            requested_at=analysis.requested_at,
            started_at=analysis.started_at,
            finished_at=analysis.finished_at,
        )
