"""Ground-truth uploads: flow cytometry (FCT) per well, and manual visual calls.

An upload is validated whole before anything is written: every problem is reported with its
row (1-based data row, as a person counts them in the file) and field, and one bad row rejects
the upload. Then the rows are written in the caller's transaction.

Accepted FCT shapes:
- a cytometer export: optional ``key,value`` header lines, a blank line, then a table whose
  header starts with ``Well`` and has ``CD73...%`` and ``CD90...%`` columns (and optionally
  ``Events``), e.g. the simulator's :func:`hardware.sim.fct_export_csv`;
- a plain table ``well,cd73_pct,cd90_pct[,event_count]``;
- JSON: a list of ``{"well", "cd73_pct", "cd90_pct", "event_count"?}`` objects.
A well is "high" iff CD73 % > 95 and CD90 % > 95 (both).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth import audit
from hardware.cytometry import fct_label
from hardware.plate import SBS_96, PlateGeometry, WellNameError
from store.orm import FctMeasurement, ManualCall, Plate, Well
from store.queries import get_or_create_plate

MAX_EVENTS = 2**31 - 1  # the event_count column is a 32-bit integer

T = TypeVar("T")


@dataclass(frozen=True)
class RowError:
    row: int  # 1-based data row
    field: str
    message: str

    def to_dict(self) -> dict[str, object]:
        return {"row": self.row, "field": self.field, "message": self.message}


class UploadError(ValueError):
    """An upload with at least one bad row; nothing of it is written."""

    def __init__(self, errors: Sequence[RowError]) -> None:
        self.errors = list(errors)
        first = self.errors[0]
        more = f" (and {len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
        super().__init__(f"row {first.row}, field {first.field!r}: {first.message}{more}")

    @classmethod
    def single(cls, row: int, field: str, message: str) -> UploadError:
        return cls([RowError(row, field, message)])


@dataclass(frozen=True)
class FctRow:
    well: str
    cd73_pct: float
    cd90_pct: float
    event_count: int | None

    @property
    def label(self) -> str:
        return fct_label(self.cd73_pct, self.cd90_pct)


@dataclass(frozen=True)
class ManualRow:
    well: str
    label: str
    seconds_spent: float | None


# -- parsing -----------------------------------------------------------------------------------
def _normalise_header(name: str) -> str:
    return name.strip().lower()


def _fct_column(header: Sequence[str], marker: str) -> int | None:
    for index, name in enumerate(header):
        key = _normalise_header(name)
        if key in (f"{marker}_pct", marker) or (key.startswith(marker) and "%" in key):
            return index
    return None


def fct_records_from_csv(text: str) -> list[dict[str, Any]]:
    """Rows of an FCT CSV (either accepted shape) as dicts with the canonical keys."""
    lines = text.splitlines()
    start = next(
        (i for i, line in enumerate(lines) if _normalise_header(line).startswith("well,")), None
    )
    if start is None:
        raise UploadError([RowError(0, "header", "no table header starting with 'Well' found")])
    reader = csv.reader(lines[start:])
    header = next(reader)
    cd73, cd90 = _fct_column(header, "cd73"), _fct_column(header, "cd90")
    events = next(
        (i for i, h in enumerate(header) if _normalise_header(h) in ("events", "event_count")),
        None,
    )
    missing = [name for name, index in (("cd73_pct", cd73), ("cd90_pct", cd90)) if index is None]
    if missing:
        raise UploadError([RowError(0, m, "column missing from the header") for m in missing])
    records = []
    for cells in reader:
        if not any(cell.strip() for cell in cells):
            continue
        record: dict[str, Any] = {
            "well": cells[0] if cells else "",
            "cd73_pct": _cell(cells, cd73),
            "cd90_pct": _cell(cells, cd90),
        }
        if events is not None:
            record["event_count"] = _cell(cells, events)
        records.append(record)
    return records


def _cell(cells: Sequence[str], index: int | None) -> str | None:
    if index is None or index >= len(cells):
        return None
    return cells[index].strip()


def _number(value: Any, row: int, field: str, errors: list[RowError]) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        errors.append(RowError(row, field, "missing"))
        return None
    if isinstance(value, bool):
        errors.append(RowError(row, field, f"expected a number, got {value!r}"))
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        errors.append(RowError(row, field, f"expected a number, got {value!r}"))
        return None
    if not math.isfinite(number):
        errors.append(RowError(row, field, f"expected a finite number, got {value!r}"))
        return None
    return number


def _well(
    value: Any, row: int, seen: dict[str, int], geometry: PlateGeometry, errors: list[RowError]
) -> str | None:
    if not isinstance(value, str) or not value.strip():
        errors.append(RowError(row, "well", f"expected a well name such as 'B7', got {value!r}"))
        return None
    try:
        name = geometry.normalise(value)
    except WellNameError as exc:
        errors.append(RowError(row, "well", str(exc)))
        return None
    if name in seen:
        errors.append(RowError(row, "well", f"well {name} already given in row {seen[name]}"))
        return None
    seen[name] = row
    return name


def _validate(
    records: Iterable[Mapping[str, Any]],
    geometry: PlateGeometry,
    parse_row: Callable[[Mapping[str, Any], int, str | None, list[RowError]], T | None],
) -> list[T]:
    """Check every record with ``parse_row`` (after the shared well checks); raise
    :class:`UploadError` listing all problems, or return the parsed rows."""
    errors: list[RowError] = []
    rows: list[T] = []
    seen: dict[str, int] = {}
    for row_number, record in enumerate(records, start=1):
        if not isinstance(record, Mapping):
            errors.append(RowError(row_number, "row", f"expected an object, got {record!r}"))
            continue
        well = _well(record.get("well"), row_number, seen, geometry, errors)
        row = parse_row(record, row_number, well, errors)
        if row is not None:
            rows.append(row)
    if not rows and not errors:
        errors.append(RowError(0, "rows", "the upload holds no rows"))
    if errors:
        raise UploadError(errors)
    return rows


def _fct_row(
    record: Mapping[str, Any], row_number: int, well: str | None, errors: list[RowError]
) -> FctRow | None:
    percentages = {}
    for field in ("cd73_pct", "cd90_pct"):
        value = _number(record.get(field), row_number, field, errors)
        if value is not None and not 0.0 <= value <= 100.0:
            errors.append(RowError(row_number, field, f"{value} is outside 0..100 %"))
            value = None
        percentages[field] = value
    event_count: int | None = None
    raw_events = record.get("event_count")
    if raw_events not in (None, ""):
        number = _number(raw_events, row_number, "event_count", errors)
        if number is not None and (number < 0 or number != int(number) or number > MAX_EVENTS):
            message = f"expected a whole number in 0..{MAX_EVENTS}, got {raw_events!r}"
            errors.append(RowError(row_number, "event_count", message))
        elif number is not None:
            event_count = int(number)
    cd73, cd90 = percentages["cd73_pct"], percentages["cd90_pct"]
    if well and cd73 is not None and cd90 is not None:
        return FctRow(well, cd73, cd90, event_count)
    return None


def _manual_row(
    record: Mapping[str, Any], row_number: int, well: str | None, errors: list[RowError]
) -> ManualRow | None:
    label = record.get("label")
    label = label.strip().lower() if isinstance(label, str) else label
    if label not in ("high", "low"):
        errors.append(RowError(row_number, "label", f"expected 'high' or 'low', got {label!r}"))
    seconds: float | None = None
    if record.get("seconds_spent") not in (None, ""):
        seconds = _number(record.get("seconds_spent"), row_number, "seconds_spent", errors)
        if seconds is not None and seconds < 0:
            errors.append(RowError(row_number, "seconds_spent", f"{seconds} is negative"))
    if well and label in ("high", "low"):
        return ManualRow(well, str(label), seconds)
    return None


def validate_fct(
    records: Iterable[Mapping[str, Any]], geometry: PlateGeometry = SBS_96
) -> list[FctRow]:
    """FCT rows: ``well``, ``cd73_pct`` and ``cd90_pct`` in 0..100, optional ``event_count``."""
    return _validate(records, geometry, _fct_row)


def validate_manual(
    records: Iterable[Mapping[str, Any]], geometry: PlateGeometry = SBS_96
) -> list[ManualRow]:
    """Manual calls: ``well``, ``label`` (high|low), optional ``seconds_spent`` >= 0."""
    return _validate(records, geometry, _manual_row)


def manual_records_from_csv(text: str) -> list[dict[str, Any]]:
    reader = csv.DictReader(io.StringIO(text.strip()))
    if reader.fieldnames is None or "well" not in [_normalise_header(f) for f in reader.fieldnames]:
        raise UploadError([RowError(0, "header", "expected a header 'well,label[,seconds_spent]'")])
    return [{_normalise_header(k): v for k, v in row.items() if k is not None} for row in reader]


# -- writing -----------------------------------------------------------------------------------
def _wells_by_name(session: Session, plate: Plate) -> dict[str, Well]:
    return {w.name: w for w in session.scalars(select(Well).where(Well.plate_id == plate.id))}


def store_fct(session: Session, plate: Plate, rows: Sequence[FctRow], source: str) -> int:
    """Insert or replace the FCT measurement of each well in ``rows``."""
    wells = _wells_by_name(session, plate)
    existing = {
        m.well_id: m
        for m in session.scalars(
            select(FctMeasurement).where(FctMeasurement.well_id.in_([w.id for w in wells.values()]))
        )
    }
    for row in rows:
        well = wells[row.well]
        measurement = existing.get(well.id) or FctMeasurement(well_id=well.id)
        measurement.cd73_pct = row.cd73_pct
        measurement.cd90_pct = row.cd90_pct
        measurement.event_count = row.event_count
        measurement.label = row.label
        measurement.source = source
        session.add(measurement)
    session.flush()
    return len(rows)


def store_manual(session: Session, plate: Plate, rows: Sequence[ManualRow], operator: str) -> int:
    """Insert or replace ``operator``'s manual call of each well in ``rows``."""
    wells = _wells_by_name(session, plate)
    existing = {
        m.well_id: m
        for m in session.scalars(
            select(ManualCall).where(
                ManualCall.operator == operator,
                ManualCall.well_id.in_([w.id for w in wells.values()]),
            )
        )
    }
    for row in rows:
        well = wells[row.well]
        call = existing.get(well.id) or ManualCall(well_id=well.id, operator=operator)
        call.label = row.label
        call.seconds_spent = row.seconds_spent
        session.add(call)
    session.flush()
    return len(rows)


def parse_upload(
    body: bytes, content_type: str, csv_parser: Callable[[str], list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """Rows of an upload: JSON (a list, or ``{"rows": [...]}``) or CSV (by ``csv_parser``)."""
    text = body.decode("utf-8-sig", errors="replace")
    if "json" in content_type:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UploadError.single(0, "body", f"not valid JSON: {exc}") from exc
        rows = data.get("rows") if isinstance(data, dict) else data
        if not isinstance(rows, list):
            raise UploadError.single(0, "body", "expected a JSON list of rows")
        return rows
    return list(csv_parser(text))


def upload_fct(
    session: Session, barcode: str, body: bytes, content_type: str, *, uploaded_by: str
) -> int:
    """Validate a whole FCT upload, then store it (replacing earlier rows of its wells)."""
    rows = validate_fct(parse_upload(body, content_type, fct_records_from_csv))
    plate = get_or_create_plate(session, barcode)
    count = store_fct(session, plate, rows, source=f"upload by {uploaded_by}")
    audit(session, uploaded_by, "fct.upload", f"plate:{barcode}", rows=count)
    return count


def upload_manual(
    session: Session,
    barcode: str,
    body: bytes,
    content_type: str,
    *,
    operator: str,
    uploaded_by: str,
) -> int:
    """Validate a whole upload of ``operator``'s manual calls, then store it."""
    rows = validate_manual(parse_upload(body, content_type, manual_records_from_csv))
    plate = get_or_create_plate(session, barcode)
    count = store_manual(session, plate, rows, operator=operator)
    audit(session, uploaded_by, "manual.upload", f"plate:{barcode}", operator=operator, rows=count)
    return count
