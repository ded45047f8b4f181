"""Plates: per-well calls, flow-cytometry ground truth and upload receipts."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from app.schemas.scans import ModelRef, ScanPublic
from hardware.plate import plate_geometry
from store.orm import Image, Plate, Scan, ScanStatus, WellResult, WellStatus


class ImagePublic(BaseModel):
    """One stored field of a well: what was written, so a client can check what it reads."""

    field: int = Field(description="Field index within the well (as ?field= of /image)")
    sha256: str = Field(description="SHA-256 of the stored frame's pixels, recorded at write")
    height: int
    width: int
    dtype: str = Field(description="Camera pixel type, e.g. uint16")
    z_um: float | None = Field(
        None, description="Focus drive position at exposure, in um; null: not reported"
    )
    autofocus: dict[str, Any] | None = Field(
        None,
        description="What autofocus did at this field (method, ok, z_um, steps, score, "
        "seconds, predicted_z_um, error); null: no autofocus ran",
    )

    @classmethod
    def of(cls, image: Image) -> ImagePublic:
        return cls(
            field=image.field_index,
            sha256=image.sha256,
            height=image.height,
            width=image.width,
            dtype=image.dtype,
            z_um=image.z_um,
            autofocus=image.autofocus,
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
    instrument_ms: float | None = Field(
        None, description="Instrument time of the well's fields, in ms; null: not reported"
    )
    images: list[ImagePublic] = Field(
        default_factory=list, description="The well's stored fields, in field order"
    )

    @classmethod
    def of(cls, result: WellResult, images: Sequence[Image] = ()) -> WellResultPublic:
        """``images``: the well's stored fields (queried by the caller, in one query for a
        whole plate; see store.queries.images_by_well)."""
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
            instrument_ms=result.instrument_ms,
            images=[ImagePublic.of(image) for image in images],
        )


class PlateWellsPublic(BaseModel):
    plate_barcode: str
    scan: ScanPublic
    wells: list[WellResultPublic]


class LatestScanRef(BaseModel):
    """The newest scan of a plate, whatever its status (a queued one too)."""

    id: int
    status: ScanStatus
    finished_at: datetime | None

    @classmethod
    def of(cls, scan: Scan) -> LatestScanRef:
        return cls(id=scan.id, status=scan.status, finished_at=scan.finished_at)


class PlateSummary(BaseModel):
    barcode: str
    plate_type: str = Field(description="e.g. SBS-96 (the 96-well plate) or 384-well")
    rows: int = Field(description="Rows of the plate's grid")
    columns: int = Field(description="Columns of the plate's grid")
    created_at: datetime
    latest_scan: LatestScanRef | None = Field(description="None until the first scan is queued")
    has_fct: bool = Field(description="Flow-cytometry ground truth was uploaded")

    @classmethod
    def of(cls, plate: Plate, latest_scan: Scan | None, has_fct: bool) -> PlateSummary:
        geometry = plate_geometry(plate.plate_type)
        return cls(
            barcode=plate.barcode,
            plate_type=plate.plate_type,
            rows=geometry.rows,
            columns=geometry.columns,
            created_at=plate.created_at,
            latest_scan=LatestScanRef.of(latest_scan) if latest_scan else None,
            has_fct=has_fct,
        )


class PlatePage(BaseModel):
    """One page of plates, newest first (the same page shape as ScanPage)."""

    items: list[PlateSummary]
    total: int = Field(description="Plates matching the filter, all pages together")
    limit: int
    offset: int


class FctWellPublic(BaseModel):
    well: str
    cd73_pct: float = Field(description="CD73+ cells, % of gated events")
    cd90_pct: float = Field(description="CD90+ cells, % of gated events")
    label: Literal["high", "low"] = Field(description="high iff CD73 % > 95 and CD90 % > 95")
    event_count: int | None


class UploadResult(BaseModel):
    plate_barcode: str
    rows: int = Field(description="Rows the upload holds, now the plate's whole set")
    removed: int = Field(
        0, description="Earlier rows (wells) the upload did not list, deleted by this replace"
    )
    plate_created: bool = Field(
        False, description="The plate did not exist yet (ground truth before its first scan)"
    )


class ManualCallPublic(BaseModel):
    """One operator's visual call of one well (the paper's MV group)."""

    well: str
    operator: str
    label: Literal["high", "low"]
    seconds_spent: float | None = Field(description="Time the operator took for this well")
    recorded_at: datetime = Field(description="When this call was uploaded (UTC)")
