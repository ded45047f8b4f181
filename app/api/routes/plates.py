"""Plates: per-well calls of the latest scan."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status

from app.api.deps import SessionDep
from app.api.schemas import PlateWellsPublic, ScanPublic, WellResultPublic
from app.plates import find_plate, latest_scan, scan_results

router = APIRouter(prefix="/plates", tags=["plates"])


@router.get("/{barcode}/wells", response_model=PlateWellsPublic)
def plate_wells(barcode: str, session: SessionDep) -> PlateWellsPublic:
    """Per-well call, probability and QC flags from the plate's latest scan."""
    plate = find_plate(session, barcode)
    if plate is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no plate {barcode!r}")
    scan = latest_scan(session, plate)
    if scan is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, detail=f"plate {barcode!r} has no started scan yet"
        )
    return PlateWellsPublic(
        plate_barcode=plate.barcode,
        scan=ScanPublic.of(scan),
        wells=[WellResultPublic.of(r) for r in scan_results(session, scan)],
    )
