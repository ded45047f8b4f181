"""Request and response bodies (separate create / public shapes)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.orm import Scan, ScanStatus, WellResult, WellStatus

BARCODE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class ScanCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    plate_barcode: str = Field(pattern=BARCODE_PATTERN, examples=["MSC-2026-0001"])
    objective: Literal["40x", "100x"] = "40x"
    fields_per_well: int = Field(default=1, ge=1, le=25)
    wells: list[str] | None = Field(
        default=None,
        description="Wells to scan (e.g. ['A1', 'B7']); default: all 96.",
        min_length=1,
        max_length=96,
    )


class ModelRef(BaseModel):
    name: str
    version: int


class ScanPublic(BaseModel):
    id: int
    plate_barcode: str
    status: ScanStatus
    objective: str
    fields_per_well: int
    microscope: str
    wells_total: int
    wells_done: int
    progress: float = Field(description="wells_done / wells_total, 0..1")
    model: ModelRef | None
    error: str | None
    requested_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, scan: Scan) -> ScanPublic:
        model = scan.model_version
        return cls(
            id=scan.id,
            plate_barcode=scan.plate.barcode,
            status=scan.status,
            objective=scan.objective,
            fields_per_well=scan.fields_per_well,
            microscope=scan.microscope,
            wells_total=scan.wells_total,
            wells_done=scan.wells_done,
            progress=scan.wells_done / scan.wells_total if scan.wells_total else 1.0,
            model=ModelRef(name=model.name, version=model.version) if model else None,
            error=scan.error,
            requested_at=scan.requested_at,
            started_at=scan.started_at,
            finished_at=scan.finished_at,
        )


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


class ModelHealth(BaseModel):
    name: str
    version: str
    provider: str = Field(description="The onnxruntime execution provider actually in use")
    providers: list[str]


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    database: str
    microscope: str
    model: ModelHealth
    worker_running: bool
