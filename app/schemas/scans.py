"""Scans: what a client asks for (``ScanCreate``) and what it reads back (``ScanPublic``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Query
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.schemas.common import BARCODE_PATTERN, MAX_ID, MAX_WELLS, WELL_PATTERN
from hardware.plans import parse_plan
from hardware.plate import plate_geometry
from models.decision import ThresholdPolicy
from store.orm import Scan, ScanStatus


class CallPolicyRequest(BaseModel):
    """How wells are to be called (issue 15): the fields a scan and a re-analysis share."""

    # strict: JSON's true is not the integer 1, nor "2" the integer 2.
    model_config = ConfigDict(extra="forbid", strict=True)

    threshold_policy: str | None = Field(
        default=None,
        max_length=64,
        description="How the decision threshold is chosen: default (the model's own), youden, "
        "sensitivity:S or specificity:S (e.g. sensitivity:0.95). All but default need a model "
        "with a decision set (409 otherwise). Unset: the service's MSCREEN_THRESHOLD_POLICY.",
        examples=["youden"],
    )
    alpha: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="Selective calls: the error rate allowed among called wells; wells the "
        "model cannot call at that rate are 'uncertain' (confirm by FCT). Needs a model with "
        "a decision set (409 otherwise). Unset: the service's MSCREEN_SELECTIVE_ALPHA (unset "
        "there too: off, every in-distribution well is called high or low).",
        examples=[0.05],
    )
    delta: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="Risk that the alpha guarantee fails (the bound holds with probability "
        ">= 1 - delta). Unset: the service's MSCREEN_SELECTIVE_DELTA (0.1).",
    )

    @field_validator("threshold_policy")
    @classmethod
    def _valid_threshold_policy(cls, value: str | None) -> str | None:
        """Spelled one way (``YOUDEN`` and ``youden`` are one request); ValueError (a 422)
        naming the accepted forms."""
        return None if value is None else str(ThresholdPolicy.parse(value))


class ScanCreate(CallPolicyRequest):
    """A scan to queue: the plate, what to acquire, and how to call its wells."""

    plate_barcode: str = Field(pattern=BARCODE_PATTERN, examples=["MSC-2026-0001"])
    objective: Literal["40x", "100x"] = "40x"
    fields_per_well: int = Field(default=1, ge=1, le=25)
    wells: list[Annotated[str, Field(pattern=WELL_PATTERN)]] | None = Field(
        default=None,
        description="Wells to scan (e.g. ['A1', 'B7']); default: all wells of the plate.",
        min_length=1,
        max_length=MAX_WELLS,
    )
    plate_plan: dict[str, Any] | None = Field(
        default=None,
        description=(
            "A useq-schema WellPlatePlan (its JSON): plate type, A1's stage centre (um), "
            "rotation, selected wells and the points in each well. Replaces wells and "
            "fields_per_well; the plate is then of the plan's type."
        ),
    )

    @field_validator("plate_plan")
    @classmethod
    def _valid_plan(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        """The plan as useq-schema validates it, spelled out in full (so that the same plan
        written two ways is the same request, and the stored plan names every default)."""
        if value is None:
            return None
        plan: dict[str, Any] = parse_plan(value).model_dump(mode="json")
        return plan

    @model_validator(mode="after")
    def _plan_or_wells(self) -> ScanCreate:
        if self.plate_plan is not None:
            clashes = [name for name in ("wells",) if self.wells is not None]
            if self.fields_per_well != 1:
                clashes.append("fields_per_well")
            if clashes:
                raise ValueError(
                    f"plate_plan and {' and '.join(clashes)} both given: a plate plan names its "
                    "wells (selected_wells) and fields (well_points_plan); send one or the other"
                )
        return self


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
    plate_type: str = Field(description="The plate's type, e.g. SBS-96 or 384-well")
    plate_rows: int = Field(description="Rows of the plate's grid (8 on a 96-well plate)")
    plate_columns: int = Field(description="Columns of the plate's grid (12 on a 96-well plate)")
    wells_total: int
    wells_done: int
    progress: float = Field(description="wells_done / wells_total, 0..1")
    instrument_s: float | None = Field(
        description="Instrument time of the wells done (moves, focus, exposure, readout), in "
        "seconds; null when the microscope reported none"
    )
    model: ModelRef | None
    decision_policy: dict[str, Any] | None = Field(
        None,
        description="How the scan's wells are called. Until the scan starts: what was asked "
        "({threshold_policy, alpha, delta}, the service's defaults filled in); once started, "
        "resolved against its model: {requested, threshold, threshold_policy, alpha, delta, "
        "selective, ood_threshold, calibration} (models.decision.CallPolicy). Null: a scan "
        "from before calls a lab can act on (the model's default threshold).",
    )
    error: str | None
    requested_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, scan: Scan) -> ScanPublic:
        model = scan.model_version
        geometry = plate_geometry(scan.plate.plate_type)
        return cls(
            id=scan.id,
            plate_barcode=scan.plate.barcode,
            status=scan.status,
            objective=scan.objective,
            fields_per_well=scan.fields_per_well,
            microscope=scan.microscope,
            plate_type=scan.plate.plate_type,
            plate_rows=geometry.rows,
            plate_columns=geometry.columns,
            wells_total=scan.wells_total,
            wells_done=scan.wells_done,
            progress=scan.wells_done / scan.wells_total if scan.wells_total else 1.0,
            instrument_s=scan.instrument_s,
            model=ModelRef(name=model.name, version=model.version) if model else None,
            decision_policy=scan.decision_policy,
            error=scan.error,
            requested_at=scan.requested_at,
            started_at=scan.started_at,
            finished_at=scan.finished_at,
        )


# Paging of the listings (GET /scans, GET /plates): one page shape for both.
MAX_PAGE_SIZE = 200
LimitQuery = Annotated[
    int, Query(ge=1, le=MAX_PAGE_SIZE, description=f"Page size, 1..{MAX_PAGE_SIZE}.")
]
# Bounded like an id: no listing holds more rows, and the database need not see a larger number.
OffsetQuery = Annotated[int, Query(ge=0, le=MAX_ID, description="Rows to skip (0: first page).")]


class ScanPage(BaseModel):
    """One page of scans, newest first; ``total`` counts every scan the filters match."""

    items: list[ScanPublic]
    total: int = Field(description="Scans matching the filters, all pages together")
    limit: int
    offset: int
