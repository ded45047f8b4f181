"""Queries the service, the CLI and training share: plates, scans, well results, images, FCT."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session, contains_eager, joinedload, selectinload

from hardware.plate import SBS_96, PlateGeometry
from store.orm import FctMeasurement, Image, Plate, Scan, ScanStatus, Well, WellResult


def get_or_create_plate(session: Session, barcode: str, geometry: PlateGeometry = SBS_96) -> Plate:
    """The plate ``barcode``, or a new one of type ``geometry.name`` with every well of that
    geometry (an existing plate is returned as it is: the caller checks its type)."""
    plate = session.scalar(select(Plate).where(Plate.barcode == barcode))
    if plate is not None:
        return plate
    plate = Plate(barcode=barcode, plate_type=geometry.name)
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


def scan_of_plate(session: Session, plate: Plate, scan_id: int) -> Scan | None:
    """Scan ``scan_id`` if it belongs to ``plate``."""
    scan = session.get(Scan, scan_id)
    return scan if scan is not None and scan.plate_id == plate.id else None


def well_result(session: Session, scan: Scan, well_name: str) -> WellResult | None:
    """The result of well ``well_name`` (normalised, e.g. ``A1``) in ``scan``."""
    return session.scalar(
        select(WellResult)
        .join(Well, WellResult.well_id == Well.id)
        .where(WellResult.scan_id == scan.id, Well.name == well_name)
        .options(contains_eager(WellResult.well), joinedload(WellResult.model_version))
    )


def results_after(session: Session, scan_id: int, after_result_id: int) -> list[WellResult]:
    """Results of a scan committed after ``after_result_id``, in commit order (for live events)."""
    return list(
        session.scalars(
            select(WellResult)
            .join(Well, WellResult.well_id == Well.id)
            .where(WellResult.scan_id == scan_id, WellResult.id > after_result_id)
            .options(contains_eager(WellResult.well), selectinload(WellResult.model_version))
            .order_by(WellResult.id)
        )
    )


def field_image(session: Session, result: WellResult, field_index: int) -> Image | None:
    """The stored image of one field of a well result."""
    return session.scalar(
        select(Image).where(
            Image.scan_id == result.scan_id,
            Image.well_id == result.well_id,
            Image.field_index == field_index,
        )
    )


def images_by_well(
    session: Session, scan_id: int, well_ids: Iterable[int] | None = None
) -> dict[int, list[Image]]:
    """The stored images of a scan (or of some of its wells), grouped by well id, each well's
    in field order: one query for a whole plate's worth of well results."""
    statement = select(Image).where(Image.scan_id == scan_id)
    if well_ids is not None:
        statement = statement.where(Image.well_id.in_(list(well_ids)))
    grouped: dict[int, list[Image]] = {}
    for image in session.scalars(statement.order_by(Image.well_id, Image.field_index)):
        grouped.setdefault(image.well_id, []).append(image)
    return grouped


@dataclass(frozen=True)
class PlateListing:
    """One plate of a listing: its newest scan (any status, None before the first) and
    whether FCT ground truth was uploaded."""

    plate: Plate
    latest_scan: Scan | None
    has_fct: bool


def list_plates(
    session: Session, *, limit: int, offset: int, barcode_prefix: str | None = None
) -> tuple[list[PlateListing], int]:
    """A page of plates, newest first, and how many match in all.

    Two queries whatever the page size: the newest scan per plate is a grouped subquery joined
    in, and FCT presence a correlated EXISTS, so listing never loads scans plate by plate.
    """
    conditions = []
    if barcode_prefix:
        # substr, not LIKE: case-sensitive on both databases (SQLite's LIKE folds ASCII case)
        # and no wildcard characters to escape ('_' is a legal barcode character).
        conditions.append(func.substr(Plate.barcode, 1, len(barcode_prefix)) == barcode_prefix)
    total = session.scalar(select(func.count(Plate.id)).where(*conditions)) or 0
    newest = (
        select(Scan.plate_id, func.max(Scan.id).label("scan_id")).group_by(Scan.plate_id).subquery()
    )
    has_fct = (
        exists()
        .where(Well.plate_id == Plate.id, FctMeasurement.well_id == Well.id)
        .correlate(Plate)
    )
    rows = session.execute(
        select(Plate, Scan, has_fct.label("has_fct"))
        .outerjoin(newest, newest.c.plate_id == Plate.id)
        .outerjoin(Scan, Scan.id == newest.c.scan_id)
        .where(*conditions)
        .order_by(Plate.id.desc())
        .limit(limit)
        .offset(offset)
    ).all()
    return [PlateListing(plate, scan, bool(fct)) for plate, scan, fct in rows], total


def list_scans(
    session: Session,
    *,
    limit: int,
    offset: int,
    barcode: str | None = None,
    status: ScanStatus | None = None,
) -> tuple[list[Scan], int]:
    """A page of scans, newest first, and how many match in all; plate and model loaded with
    them (two queries, not one per scan)."""
    conditions = []
    if barcode is not None:
        conditions.append(Scan.plate.has(Plate.barcode == barcode))
    if status is not None:
        conditions.append(Scan.status == status)
    total = session.scalar(select(func.count(Scan.id)).where(*conditions)) or 0
    scans = session.scalars(
        select(Scan)
        .where(*conditions)
        .options(joinedload(Scan.plate), joinedload(Scan.model_version))
        .order_by(Scan.id.desc())
        .limit(limit)
        .offset(offset)
    ).all()
    return list(scans), total


def fct_measurements(session: Session, plate: Plate) -> list[tuple[str, FctMeasurement]]:
    """(well name, measurement) of every well of ``plate`` with FCT, in plate order."""
    rows = session.execute(
        select(Well.name, FctMeasurement)
        .join(FctMeasurement, FctMeasurement.well_id == Well.id)
        .where(Well.plate_id == plate.id)
        .order_by(Well.row, Well.column)
    ).all()
    return [(name, fct) for name, fct in rows]


def plates_by_barcode(session: Session, barcodes: Sequence[str]) -> list[Plate]:
    return list(session.scalars(select(Plate).where(Plate.barcode.in_(barcodes))))


def plates_with_fct(session: Session) -> list[Plate]:
    """Every plate with at least one FCT measurement, oldest first."""
    with_fct = select(Well.plate_id).join(FctMeasurement, FctMeasurement.well_id == Well.id)
    return list(session.scalars(select(Plate).where(Plate.id.in_(with_fct)).order_by(Plate.id)))
