"""Plates: per-well calls, flow-cytometry ground truth and upload receipts."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from app.schemas.scans import ModelRef, ScanPublic
from store.orm import WellResult, WellStatus


class WellResultPublic(BaseModel):
    well: str
    row: int
    column: int
    status: WellStatus
    label: Literal["high", "low"] | None
    probability: float | None = Field(description="P(high functionality), mean over fields")
    qc_flags: list[str]
    fields_used: int
    confluence_pct: float | None
    model: ModelRef | None
    scan_id: int
    error: str | None
    acquisition_ms: float
    preprocessing_ms: float
    inference_ms: float

    @classmethod
    def of(cls, result: WellResult) -> WellResultPublic:
        model = result.model_version
        return cls(
            well=result.well.name,
            row=result.well.row,
            column=result.well.column,
            status=result.status,
            label=result.label,  # type: ignore[arg-type]  # stored as "high" | "low" | None
            probability=result.probability,
            qc_flags=list(result.qc_flags),
            fields_used=result.fields_used,
            confluence_pct=result.confluence_pct,
            model=ModelRef(name=model.name, version=model.version) if model else None,
            scan_id=result.scan_id,
            error=result.error,
            acquisition_ms=result.acquisition_ms,
            preprocessing_ms=result.preprocessing_ms,
            inference_ms=result.inference_ms,
        )


class PlateWellsPublic(BaseModel):
    plate_barcode: str
    scan: ScanPublic
    wells: list[WellResultPublic]


class FctWellPublic(BaseModel):
    well: str
    cd73_pct: float = Field(description="CD73+ cells, % of gated events")
    cd90_pct: float = Field(description="CD90+ cells, % of gated events")
    label: Literal["high", "low"] = Field(description="high iff CD73 % > 95 and CD90 % > 95")
    event_count: int | None


class UploadResult(BaseModel):
    plate_barcode: str
    rows: int = Field(description="Rows written")
