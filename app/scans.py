"""Creating and reading scans (the logic behind the scans router and the CLI)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from app.orm import Scan
from app.plates import get_or_create_plate
from hardware.microscope import Objective
from hardware.plate import SBS_96, PlateGeometry


def create_scan(
    session: Session,
    *,
    barcode: str,
    objective: Objective,
    fields_per_well: int,
    microscope: str,
    wells: Sequence[str] | None = None,
    geometry: PlateGeometry = SBS_96,
) -> Scan:
    """Queue a scan of ``wells`` (default: the whole plate). Raises WellNameError/ValueError."""
    names = list(geometry.well_names) if not wells else [geometry.normalise(w) for w in wells]
    duplicates = sorted({w for w in names if names.count(w) > 1})
    if duplicates:
        raise ValueError(f"wells listed twice: {', '.join(duplicates)}")
    plate = get_or_create_plate(session, barcode, geometry)
    scan = Scan(
        plate=plate,
        objective=objective,
        fields_per_well=fields_per_well,
        wells_requested=names,
        microscope=microscope,
        wells_done=0,
    )
    session.add(scan)
    session.flush()
    return scan
