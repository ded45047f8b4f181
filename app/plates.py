"""Plates and wells: get-or-create, and the latest per-well results of a plate."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from app.orm import Plate, Scan, ScanStatus, Well, WellResult
from hardware.plate import SBS_96, PlateGeometry


def get_or_create_plate(session: Session, barcode: str, geometry: PlateGeometry = SBS_96) -> Plate:
    plate = session.scalar(select(Plate).where(Plate.barcode == barcode))
    if plate is not None:
        return plate
    plate = Plate(barcode=barcode)
    session.add(plate)
    for name in geometry.well_names:
        row, column = geometry.parse(name)
        plate.wells.append(Well(name=name, row=row, column=column))
    session.flush()
    return plate


def find_plate(session: Session, barcode: str) -> Plate | None:
    return session.scalar(select(Plate).where(Plate.barcode == barcode))


def latest_scan(session: Session, plate: Plate) -> Scan | None:
    """The newest scan of ``plate`` that has produced results (or is still producing them)."""
    return session.scalar(
        select(Scan)
        .where(Scan.plate_id == plate.id, Scan.status != ScanStatus.queued)
        .order_by(Scan.id.desc())
        .limit(1)
    )


def scan_results(session: Session, scan: Scan) -> list[WellResult]:
    """Results of ``scan`` in plate order (A1, A2, ..., H12)."""
    return list(
        session.scalars(
            select(WellResult)
            .join(Well, WellResult.well_id == Well.id)
            .where(WellResult.scan_id == scan.id)
            .options(selectinload(WellResult.well), selectinload(WellResult.model_version))
            .order_by(Well.row, Well.column)
        )
    )
