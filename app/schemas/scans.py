"""Scans: what a client asks for (``ScanCreate``) and what it reads back (``ScanPublic``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import Query
from pydantic import BaseModel, ConfigDict, Field

from app.schemas.common import BARCODE_PATTERN, MAX_ID, WELL_PATTERN
from store.orm import Scan, ScanStatus


class ScanCreate(BaseModel):
    # strict: JSON's true is not the integer 1, nor "2" the integer 2.
    model_config = ConfigDict(extra="forbid", strict=True)

    plate_barcode: str = Field(pattern=BARCODE_PATTERN, examples=["MSC-2026-0001"])
    objective: Literal["40x", "100x"] = "40x"
    fields_per_well: int = Field(default=1, ge=1, le=25)
    wells: list[Annotated[str, Field(pattern=WELL_PATTERN)]] | None = Field(
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
