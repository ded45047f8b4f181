"""Plates: per-well calls, flow-cytometry ground truth and upload receipts."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from app.schemas.analyses import AnalysisPublic
from app.schemas.scans import ModelRef, ScanPublic
from hardware.plate import plate_geometry
from store.orm import AnalysisResult, Image, Plate, Scan, ScanStatus, WellResult, WellStatus


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
    objective: str | None = Field(None, description="Objective the field was acquired with")
    pixel_size_um: float | None = Field(
        None, description="Size of one camera pixel in the sample, in um (for a scale bar)"
    )
    qc_excluded: bool | None = Field(
        None, description="QC excluded this field from the call (e.g. overexposed)"
    )
    qc_flags: list[str] | None = Field(
        None, description="This field's QC flags (the well's qc_flags gather its fields')"
    )
    ood_score: float | None = Field(
        None,
        description="Out-of-distribution score of the field (Mahalanobis distance from the "
        "model's training fields; above the scan's decision_policy.ood_threshold the field is "
        "not used); null: QC excluded the field, or the model has no guard",
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
            ood_score=image.ood_score,
            objective=image.objective,
            pixel_size_um=image.pixel_size_um,
            qc_excluded=image.qc_excluded,
            qc_flags=list(image.qc_flags),
        )


CallLabel = Literal["high", "low", "uncertain", "no call"]
"""A well's call (models.decision.LABELS): high or low, uncertain (the model cannot call it at
the scan's alpha: confirm by FCT) or no call (every field out of distribution)."""


class WellResultPublic(BaseModel):
    well: str
    row: int
    column: int
    status: WellStatus
    label: CallLabel | None = Field(
        description="high | low: the call; uncertain: confirm by FCT (not called at the scan's "
        "alpha); no call: every field unlike the training data; null: no field passed QC "
        "(status excluded) or the acquisition failed"
    )
    probability: float | None = Field(
        description="Calibrated P(high functionality), mean over the fields used"
    )
    leaning: Literal["high", "low"] | None = Field(
        None,
        description="high or low at the scan's decision threshold, also for an uncertain well "
        "(what it would have been called); null: no call, no field passed QC, or a result "
        "from before calls a lab can act on",
    )
    call_reason: str | None = Field(
        None,
        description="Why the well is uncertain or has no call, or notes on a call (fields "
        "left out as out of distribution); null: nothing to say",
    )
    confidence: float | None = Field(
        None,
        description="The probability that the leaning is right (P leaning high, 1 - P leaning "
        "low) minus the fields' spread: what the selective threshold "
        "(decision_policy.selective.threshold) is compared with; null: no call",
    )
    field_spread: float | None = Field(
        None,
        description="Standard deviation of the used fields' P(high) (0 for one field)",
    )
    ood_score: float | None = Field(
        None,
        description="Lowest out-of-distribution score of the well's fields; null: the model "
        "has no guard or no field passed QC",
    )
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
    analysis_id: int | None = Field(
        None,
        description="The re-analysis this call comes from (?model= another version than the "
        "scan's); null: the scan's own call, by the model that classified it during the scan",
    )
    field_probabilities: list[float | None] | None = Field(
        None,
        description="A re-analysis's P(high) of each stored field, in field order (null: QC "
        "excluded the field); null for the scan's own calls (see images)",
    )

    @classmethod
    def of(
        cls, result: WellResult | AnalysisResult, images: Sequence[Image] = ()
    ) -> WellResultPublic:
        """``images``: the well's stored fields (queried by the caller, in one query for a
        whole plate; see store.queries.images_by_well). A re-analysis's result has no
        acquisition of its own: its acquisition and instrument times are the scan's concern
        (0 and null here)."""
        model = result.model_version
        if isinstance(result, WellResult):
            acquisition_ms, instrument_ms = result.acquisition_ms, result.instrument_ms
            analysis_id, field_probabilities = None, None
        else:
            acquisition_ms, instrument_ms = 0.0, None
            analysis_id, field_probabilities = result.analysis_id, list(result.field_probabilities)
        return cls(
            well=result.well.name,
            row=result.well.row,
            column=result.well.column,
            status=result.status,
            label=result.label,  # type: ignore[arg-type]  # stored as one of CallLabel | None
            probability=result.probability,
            leaning=result.leaning,  # type: ignore[arg-type]  # stored as "high" | "low" | None
            call_reason=result.call_reason,
            confidence=result.confidence,
            field_spread=result.field_spread,
            ood_score=result.ood_score,
            qc_flags=list(result.qc_flags),
            fields_used=result.fields_used,
            confluence_pct=result.confluence_pct,
            model=ModelRef(name=model.name, version=model.version) if model else None,
            scan_id=result.scan_id,
            error=result.error,
            acquisition_ms=acquisition_ms,
            preprocessing_ms=result.preprocessing_ms,
            inference_ms=result.inference_ms,
            instrument_ms=instrument_ms,
            images=[ImagePublic.of(image) for image in images],
            analysis_id=analysis_id,
            field_probabilities=field_probabilities,
        )


class PlateWellsPublic(BaseModel):
    plate_barcode: str
    scan: ScanPublic
    analysis: AnalysisPublic | None = Field(
        None,
        description="The re-analysis the calls come from (?model= another version than the "
        "scan's model of record), with its status and progress; null: the scan's own calls",
    )
    wells: list[WellResultPublic]


class ConfirmWellPublic(BaseModel):
    """A well the model did not call: the lab confirms it by flow cytometry (or re-images it)."""

    well: str
    label: CallLabel | None = Field(
        description="uncertain, no call, or null (no field passed QC, or the acquisition failed)"
    )
    status: WellStatus
    reason: str = Field(description="Why it needs confirming, in words")
    probability: float | None = Field(description="Calibrated P(high), for information")
    leaning: Literal["high", "low"] | None = Field(
        description="What it would have been called at the decision threshold (uncertain wells)"
    )
    confidence: float | None
    ood_score: float | None


class ConfirmCounts(BaseModel):
    total: int = Field(description="Wells with a result in the scan")
    called: int = Field(description="Wells called high or low")
    high: int
    low: int
    uncertain: int = Field(description="Not called at the scan's alpha: confirm by FCT")
    no_call: int = Field(description="Every field out of distribution")
    excluded: int = Field(description="No field passed QC (status excluded)")
    failed: int = Field(description="The acquisition failed")
    to_confirm: int = Field(description="Wells listed: uncertain + no call + excluded + failed")


class ConfirmListPublic(BaseModel):
    """The wells of one scan to send to FCT, with the counts a lab plans the run from."""

    plate_barcode: str
    scan_id: int
    scan_status: ScanStatus
    analysis_id: int | None = Field(
        None, description="The re-analysis the calls come from (?model=); null: the scan's own"
    )
    decision_policy: dict[str, Any] | None = Field(
        description="The call policy (ScanPublic.decision_policy, or the re-analysis's)"
    )
    counts: ConfirmCounts
    wells: list[ConfirmWellPublic] = Field(description="In plate order")


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
