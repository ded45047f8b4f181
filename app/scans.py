"""Creating and reading scans (the logic behind the scans router and the CLI)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.api.schemas import ScanCreate
from app.orm import Scan
from app.plates import get_or_create_plate
from hardware.plate import SBS_96, PlateGeometry


def create_scan(
    session: Session,
    request: ScanCreate,
    *,
    microscope: str,
    geometry: PlateGeometry = SBS_96,
) -> Scan:
    """Queue the scan ``request`` asks for (default: every well) on ``microscope``.

    Raises WellNameError or ValueError naming the offending well.
    """
    wells = request.wells
    names = list(geometry.well_names) if not wells else [geometry.normalise(w) for w in wells]
    duplicates = sorted({w for w in names if names.count(w) > 1})
    if duplicates:
        raise ValueError(f"wells listed twice: {', '.join(duplicates)}")
    plate = get_or_create_plate(session, request.plate_barcode, geometry)
    scan = Scan(
        plate=plate,
        objective=request.objective,
        fields_per_well=request.fields_per_well,
        wells_requested=names,
        microscope=microscope,
        wells_done=0,
    )
    session.add(scan)
    session.flush()
    return scan
