"""Ground-truth uploads: flow cytometry (FCT) per well, and manual visual calls.

An upload is validated whole before anything is written: every problem is reported with its
row (1-based data row, as a person counts them in the file) and field, and one bad row rejects
the upload. Then the upload *replaces* the plate's set (its FCT, or one operator's manual
calls) in the caller's transaction: wells it does not list lose their earlier row, so what is
stored is exactly the last file sent, and a corrected file never leaves stale wells behind.

Accepted shapes (see docs/ground-truth.md):
- a cytometer export: optional ``key,value`` preamble lines (a ``Plate``/``Plate ID``/
  ``Barcode`` line must name the URL's plate), then a table whose header has a ``Well`` column
  and ``CD73...%`` and ``CD90...%`` columns (optionally ``Events``), e.g. the simulator's
  :func:`hardware.sim.fct_export_csv`;
- a plain table ``well,cd73_pct,cd90_pct[,event_count]`` (manual calls:
  ``well,label[,seconds_spent]``);
- CSV separated by ``,``, ``;`` or tab (found from the header line); with ``;`` or tab a decimal
  comma (``97,5``) is read as a decimal point, as European spreadsheets write it;
- JSON: a list of row objects, or ``{"plate": ..., "rows": [...]}``.

Uploads are small by nature (96 wells: an FCT table is < 10 KB), so every size is bounded: at
most :data:`MAX_ROWS` data rows (refused at the first row beyond, before the rest is read),
cells of at most :data:`MAX_CELL_CHARS` characters, and values echoed in messages cut to
:data:`SHOWN_CHARS`. The request body's byte size is capped before it is read (app/api/guard.py).

A well is "high" iff CD73 % > 95 and CD90 % > 95 (both); values are percentages unless the
caller says ``units="fraction"``. Percent uploads whose every value is <= 1 are refused as
"looks like fractions": silently storing 0.97 % for a 97 % well would turn it "low".
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.auth import audit
from app.errors import ConflictError, NotFoundError
from app.schemas.plates import ManualCallPublic
from hardware.cytometry import fct_label
from hardware.plate import SBS_96, PlateGeometry, WellNameError
from store.orm import FctMeasurement, ManualCall, Plate, Well, utcnow
from store.queries import find_plate, get_or_create_plate

MAX_EVENTS = 2**31 - 1  # the event_count column is a 32-bit integer
MAX_ROWS = 96  # one row per well of a 96-well plate
MAX_CELL_CHARS = 64  # longer than any well name, number or label a real file holds
MAX_PREAMBLE_LINES = 200  # key,value lines above the table (cytometers write a dozen or so)
SHOWN_CHARS = 40  # how much of a bad value a message echoes
MAX_REPORTED_ERRORS = 20  # problems listed in a 422 (error_count says how many in all)

FctUnits = Literal["percent", "fraction"]
DELIMITERS = (",", ";", "\t")
WELL_HEADERS = frozenset({"well", "well id", "well name", "well_id", "well_name"})
# Preamble keys (and table columns) that name the plate the file is about.
PLATE_KEYS = frozenset({"plate", "plate id", "plate_id", "barcode", "plate barcode"})
PLATE_JSON_KEYS = ("plate", "plate_barcode", "barcode")
_DECIMAL_COMMA = re.compile(r"[+-]?\d*,\d+")

T = TypeVar("T")


@dataclass(frozen=True)
class RowError:
    row: int  # 1-based data row; 0 for the file as a whole (header, body, units)
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


def shown(value: object) -> str:
    """``repr(value)``, cut to :data:`SHOWN_CHARS` so a message never echoes a huge cell."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + "…"


@dataclass(frozen=True)
class FctRow:
    well: str
    cd73_pct: float
    cd90_pct: float
    event_count: int | None

    @property
    def label(self) -> str:
        return fct_label(self.cd73_pct, self.cd90_pct)

    def values(self) -> dict[str, Any]:
        return {
            "cd73_pct": self.cd73_pct,
            "cd90_pct": self.cd90_pct,
            "event_count": self.event_count,
            "label": self.label,
        }


@dataclass(frozen=True)
class ManualRow:
    well: str
    label: str
    seconds_spent: float | None

    def values(self) -> dict[str, Any]:
        return {"label": self.label, "seconds_spent": self.seconds_spent}


@dataclass(frozen=True)
class UploadOutcome:
    """What an upload did: rows now stored, earlier rows it removed, whether the plate is new."""

    rows: int
    removed: int
    plate_created: bool


# -- reading the file --------------------------------------------------------------------------
def _normalise_header(name: str) -> str:
    return " ".join(name.strip().strip('"').lower().split())


def _too_many_rows(row: int) -> UploadError:
    return UploadError.single(
        row,
        "rows",
        f"more than {MAX_ROWS} data rows: a 96-well plate has one row per well at most; "
        "send one plate's table per upload",
    )


@dataclass(frozen=True)
class Table:
    """A delimited table: its header, data rows (blank rows dropped), the delimiter, and the
    ``key -> value`` preamble lines above the header (keys normalised)."""

    header: list[str]
    rows: list[list[str]]
    delimiter: str
    preamble: dict[str, str]


def _split(line: str, delimiter: str) -> list[str]:
    return next(csv.reader([line], delimiter=delimiter), [])


def _header_delimiter(line: str) -> str | None:
    """The delimiter under which ``line`` is a table header (one cell names the well)."""
    for delimiter in DELIMITERS:
        if delimiter not in line:
            continue
        cells = _split(line, delimiter)
        if len(cells) >= 2 and any(_normalise_header(c) in WELL_HEADERS for c in cells):
            return delimiter
    return None


def read_table(text: str, expected: str) -> Table:
    """The table of a CSV upload: the first line that has a ``Well`` column under one of the
    delimiters ``,``/``;``/tab is its header; the lines above it are the preamble.

    Lines are read lazily and :class:`UploadError` is raised at the first data row past
    :data:`MAX_ROWS`, so an oversized file costs no more than reading that far.
    """
    stream = io.StringIO(text, newline="")  # newline="": csv sees quoted line breaks intact
    preamble_lines: list[str] = []
    header_line, delimiter = "", None
    for line in stream:
        delimiter = _header_delimiter(line.rstrip("\r\n"))
        if delimiter is not None:
            header_line = line
            break
        if len(preamble_lines) == MAX_PREAMBLE_LINES:
            break
        preamble_lines.append(line)
    if delimiter is None:
        message = (
            f"no table header with a 'Well' column found in the first {MAX_PREAMBLE_LINES} "
            f"lines (expected e.g. {expected!r}, separated by ',', ';' or tab)"
        )
        raise UploadError.single(0, "header", message)
    preamble: dict[str, str] = {}
    for line in preamble_lines:
        line = line.rstrip("\r\n")
        cells = _split(line, delimiter) if delimiter in line else _split(line, ",")
        if len(cells) >= 2 and cells[0].strip():
            preamble.setdefault(_normalise_header(cells[0])[:MAX_CELL_CHARS], cells[1].strip())
    reader = csv.reader(itertools.chain([header_line], stream), delimiter=delimiter)
    rows: list[list[str]] = []
    try:
        header = next(reader)
        for cells in reader:
            if not any(cell.strip() for cell in cells):
                continue
            if len(rows) == MAX_ROWS:
                raise _too_many_rows(len(rows) + 1)
            rows.append(cells)
    except csv.Error as exc:  # e.g. a cell over the csv module's field size limit
        raise UploadError.single(len(rows) + 1, "body", f"not readable as CSV: {exc}") from exc
    return Table(header=header, rows=rows, delimiter=delimiter, preamble=preamble)


def _column(table: Table, *names: str) -> int | None:
    for index, name in enumerate(table.header):
        if _normalise_header(name).replace(" ", "_") in names:
            return index
    return None


def _marker_column(header: Sequence[str], marker: str) -> int | None:
    """A CD73/CD90 percentage column: ``cd73``, ``cd73_pct``, ``CD73-FITC+ %``, ... (not e.g.
    ``CD73 MFI``, which is an intensity, not a share of events)."""
    for index, name in enumerate(header):
        key = _normalise_header(name)
        if key == marker or (
            key.startswith(marker) and any(t in key for t in ("%", "pct", "percent", "frac"))
        ):
            return index
    return None


def _cell(cells: Sequence[str], index: int | None, decimal_comma: bool = False) -> str | None:
    if index is None or index >= len(cells):
        return None
    value = cells[index].strip()
    if decimal_comma and _DECIMAL_COMMA.fullmatch(value):
        value = value.replace(",", ".")
    return value


def _plate_of_table(table: Table) -> tuple[str, str] | None:
    for key, value in table.preamble.items():
        if key in PLATE_KEYS and value:
            return key, value
    return None


def _records(table: Table, columns: Mapping[str, int | None], numeric: set[str]) -> list[dict]:
    decimal_comma = table.delimiter != ","
    plate = _column(table, *(k.replace(" ", "_") for k in PLATE_KEYS))
    records: list[dict[str, Any]] = []
    for cells in table.rows:
        record: dict[str, Any] = {
            name: _cell(cells, index, decimal_comma and name in numeric)
            for name, index in columns.items()
            if index is not None
        }
        if plate is not None:
            record["plate"] = _cell(cells, plate)
        records.append(record)
    return records


def fct_records_from_table(table: Table) -> list[dict[str, Any]]:
    """FCT rows of a table (either CSV shape) as dicts with the canonical keys."""
    cd73, cd90 = _marker_column(table.header, "cd73"), _marker_column(table.header, "cd90")
    missing = [name for name, index in (("cd73_pct", cd73), ("cd90_pct", cd90)) if index is None]
    if missing:
        raise UploadError([RowError(0, m, "column missing from the header") for m in missing])
    columns = {
        "well": _column(table, *WELL_HEADERS),
        "cd73_pct": cd73,
        "cd90_pct": cd90,
        "event_count": _column(table, "events", "event_count"),
    }
    return _records(table, columns, numeric={"cd73_pct", "cd90_pct", "event_count"})


def manual_records_from_table(table: Table) -> list[dict[str, Any]]:
    """Manual-call rows of a table (``well,label[,seconds_spent]``) as canonical dicts."""
    label = _column(table, "label", "call")
    if label is None:
        raise UploadError.single(0, "label", "column missing from the header")
    columns = {
        "well": _column(table, *WELL_HEADERS),
        "label": label,
        "seconds_spent": _column(table, "seconds_spent", "seconds"),
    }
    return _records(table, columns, numeric={"seconds_spent"})


def _decode(body: bytes) -> str:
    # Spreadsheets save "Unicode text" as UTF-16 with a byte-order mark.
    if body.startswith((b"\xff\xfe", b"\xfe\xff")):
        return body.decode("utf-16", errors="replace")
    return body.decode("utf-8-sig", errors="replace")


def _is_json(text: str, content_type: str, filename: str | None) -> bool:
    content_type = content_type.lower()
    if "json" in content_type or (filename or "").lower().endswith(".json"):
        return True
    if "csv" in content_type or "tab-separated" in content_type:
        return False
    return text.lstrip()[:1] in ("[", "{")  # no content type said which (curl's defaults)


def _json_records(text: str) -> tuple[list[Any], str | None]:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # ValueError: also ints over 4300 digits
        message = f"not valid JSON: {str(exc)[:200]}"
        raise UploadError.single(0, "body", message) from exc
    plate: str | None = None
    if isinstance(data, dict):
        found = next((data[k] for k in PLATE_JSON_KEYS if k in data), None)
        if found is not None and found != "":  # an empty plate key names no plate
            plate = found if isinstance(found, str) else shown(found)
        data = data.get("rows")
    if not isinstance(data, list):
        raise UploadError.single(0, "body", 'expected a JSON list of rows (or {"rows": [...]})')
    if len(data) > MAX_ROWS:
        raise _too_many_rows(MAX_ROWS + 1)
    return data, plate


def _check_plate(barcode: str, named: str | None, where: str) -> None:
    if named is not None and named.strip() != barcode:
        message = (
            f"the file is for plate {shown(named.strip())} ({where}) but was sent to plate "
            f"{barcode!r}; send it to that plate's URL, or correct the file"
        )
        raise UploadError.single(0, "plate", message)


def parse_records(
    body: bytes,
    content_type: str,
    barcode: str,
    from_table: Callable[[Table], list[dict[str, Any]]],
    *,
    expected: str,
    filename: str | None = None,
) -> list[Any]:
    """Rows of an upload, JSON or CSV (by content type, file name, else content), after
    checking that a plate the file names is ``barcode``."""
    text = _decode(body)
    if _is_json(text, content_type, filename):
        records, plate = _json_records(text)
        _check_plate(barcode, plate, "its 'plate' key")
        return records
    table = read_table(text, expected)
    named = _plate_of_table(table)
    if named is not None:
        key, value = named
        _check_plate(barcode, value, f"its {key.title()!r} line")
    return from_table(table)


# -- validating rows ---------------------------------------------------------------------------
def _too_long(value: Any, row: int, field: str, errors: list[RowError]) -> bool:
    if isinstance(value, str) and len(value) > MAX_CELL_CHARS:
        errors.append(
            RowError(row, field, f"{shown(value)} is longer than {MAX_CELL_CHARS} characters")
        )
        return True
    return False


def _number(value: Any, row: int, field: str, errors: list[RowError]) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        errors.append(RowError(row, field, "missing"))
        return None
    if _too_long(value, row, field, errors):
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        errors.append(RowError(row, field, f"expected a number, got {shown(value)}"))
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        errors.append(RowError(row, field, f"expected a number, got {shown(value)}"))
        return None
    if not math.isfinite(number):
        errors.append(RowError(row, field, f"expected a finite number, got {shown(value)}"))
        return None
    return number


def _well(
    value: Any, row: int, seen: dict[str, int], geometry: PlateGeometry, errors: list[RowError]
) -> str | None:
    if not isinstance(value, str) or not value.strip():
        message = f"expected a well name such as 'B7', got {shown(value)}"
        errors.append(RowError(row, "well", message))
        return None
    if _too_long(value, row, "well", errors):
        return None
    try:
        name = geometry.normalise(value.strip())
    except WellNameError as exc:
        errors.append(RowError(row, "well", str(exc)))
        return None
    if name in seen:
        errors.append(RowError(row, "well", f"well {name} already given in row {seen[name]}"))
        return None
    seen[name] = row
    return name


def _validate(
    records: Iterable[Any],
    barcode: str | None,
    geometry: PlateGeometry,
    parse_row: Callable[[Mapping[str, Any], int, str | None, list[RowError]], T | None],
) -> list[T]:
    """Check every record with ``parse_row`` (after the shared well and plate checks); raise
    :class:`UploadError` listing all problems, or return the parsed rows."""
    errors: list[RowError] = []
    rows: list[T] = []
    seen: dict[str, int] = {}
    for row_number, record in enumerate(records, start=1):
        if row_number > MAX_ROWS:
            raise _too_many_rows(row_number)
        if not isinstance(record, Mapping):
            errors.append(RowError(row_number, "row", f"expected an object, got {shown(record)}"))
            continue
        plate = record.get("plate")
        if barcode is not None and plate not in (None, "") and plate != barcode:
            message = f"row is for plate {shown(plate)}, but the upload is for {barcode!r}"
            errors.append(RowError(row_number, "plate", message))
        well = _well(record.get("well"), row_number, seen, geometry, errors)
        row = parse_row(record, row_number, well, errors)
        if row is not None:
            rows.append(row)
    if not rows and not errors:
        errors.append(RowError(0, "rows", "the upload holds no rows"))
    if errors:
        raise UploadError(errors)
    return rows


def _fct_row_parser(
    units: FctUnits,
) -> Callable[[Mapping[str, Any], int, str | None, list[RowError]], FctRow | None]:
    top, scale = (100.0, 1.0) if units == "percent" else (1.0, 100.0)
    unit = "%" if units == "percent" else "(a fraction; units=fraction)"

    def parse(
        record: Mapping[str, Any], row_number: int, well: str | None, errors: list[RowError]
    ) -> FctRow | None:
        percentages: dict[str, float | None] = {}
        for field in ("cd73_pct", "cd90_pct"):
            value = _number(record.get(field), row_number, field, errors)
            if value is not None and not 0.0 <= value <= top:
                errors.append(RowError(row_number, field, f"{value} is outside 0..{top:g} {unit}"))
                value = None
            # round(): 0.97 * 100 is 97.00000000000001, which should not show (or count) as such
            percentages[field] = None if value is None else round(value * scale, 9)
        event_count: int | None = None
        raw_events = record.get("event_count")
        if raw_events not in (None, ""):
            number = _number(raw_events, row_number, "event_count", errors)
            if number is not None and (number < 0 or number != int(number) or number > MAX_EVENTS):
                message = f"expected a whole number in 0..{MAX_EVENTS}, got {shown(raw_events)}"
                errors.append(RowError(row_number, "event_count", message))
            elif number is not None:
                event_count = int(number)
        cd73, cd90 = percentages["cd73_pct"], percentages["cd90_pct"]
        if well and cd73 is not None and cd90 is not None:
            return FctRow(well, cd73, cd90, event_count)
        return None

    return parse


def _manual_row(
    record: Mapping[str, Any], row_number: int, well: str | None, errors: list[RowError]
) -> ManualRow | None:
    label = record.get("label")
    label = label.strip().lower() if isinstance(label, str) else label
    if label not in ("high", "low"):
        message = f"expected 'high' or 'low', got {shown(label)}"
        errors.append(RowError(row_number, "label", message))
    seconds: float | None = None
    if record.get("seconds_spent") not in (None, ""):
        seconds = _number(record.get("seconds_spent"), row_number, "seconds_spent", errors)
        if seconds is not None and seconds < 0:
            errors.append(RowError(row_number, "seconds_spent", f"{seconds} is negative"))
            seconds = None
    if well and label in ("high", "low"):
        return ManualRow(well, str(label), seconds)
    return None


def validate_fct(
    records: Iterable[Any],
    geometry: PlateGeometry = SBS_96,
    *,
    units: FctUnits = "percent",
    barcode: str | None = None,
) -> list[FctRow]:
    """FCT rows: ``well``, ``cd73_pct`` and ``cd90_pct`` (percent 0..100, or with
    ``units="fraction"`` 0..1, stored x100), optional ``event_count``.

    Percentages that are all <= 1 (some > 0) are refused: they are almost surely fractions,
    and stored as percentages every such well would be "low".
    """
    rows = _validate(records, barcode, geometry, _fct_row_parser(units))
    if units == "percent":
        values = [v for row in rows for v in (row.cd73_pct, row.cd90_pct)]
        if max(values) <= 1.0 and max(values) > 0.0:
            message = (
                "every CD73/CD90 value is <= 1: these look like fractions (0.97 for 97 %); "
                "send percentages (0..100), or pass ?units=fraction to have them multiplied "
                "by 100"
            )
            raise UploadError.single(0, "units", message)
    return rows


def validate_manual(
    records: Iterable[Any], geometry: PlateGeometry = SBS_96, *, barcode: str | None = None
) -> list[ManualRow]:
    """Manual calls: ``well``, ``label`` (high|low), optional ``seconds_spent`` >= 0."""
    return _validate(records, barcode, geometry, _manual_row)


def parse_fct(
    body: bytes,
    content_type: str,
    barcode: str,
    *,
    units: FctUnits = "percent",
    filename: str | None = None,
) -> list[FctRow]:
    """A whole FCT upload, read and validated (nothing is written)."""
    records = parse_records(
        body,
        content_type,
        barcode,
        fct_records_from_table,
        expected="well,cd73_pct,cd90_pct",
        filename=filename,
    )
    return validate_fct(records, units=units, barcode=barcode)


def parse_manual(
    body: bytes, content_type: str, barcode: str, *, filename: str | None = None
) -> list[ManualRow]:
    """A whole manual-call upload, read and validated (nothing is written)."""
    records = parse_records(
        body,
        content_type,
        barcode,
        manual_records_from_table,
        expected="well,label,seconds_spent",
        filename=filename,
    )
    return validate_manual(records, barcode=barcode)


# -- writing -----------------------------------------------------------------------------------
def _plate_wells(session: Session, plate: Plate) -> dict[str, Well]:
    """The plate's wells by name, in plate order (row-major)."""
    query = select(Well).where(Well.plate_id == plate.id).order_by(Well.row, Well.column)
    return {w.name: w for w in session.scalars(query)}


def _fct_values(measurement: FctMeasurement) -> dict[str, Any]:
    return {
        "cd73_pct": measurement.cd73_pct,
        "cd90_pct": measurement.cd90_pct,
        "event_count": measurement.event_count,
        "label": measurement.label,
    }


def _manual_values(call: ManualCall) -> dict[str, Any]:
    return {"label": call.label, "seconds_spent": call.seconds_spent}


def _stored_fct(session: Session, plate: Plate) -> dict[str, FctMeasurement]:
    query = (
        select(Well.name, FctMeasurement)
        .join(FctMeasurement, FctMeasurement.well_id == Well.id)
        .where(Well.plate_id == plate.id)
        .order_by(Well.row, Well.column)
    )
    return {name: fct for name, fct in session.execute(query).all()}


def _stored_manual(session: Session, plate: Plate, operator: str) -> dict[str, ManualCall]:
    query = (
        select(Well.name, ManualCall)
        .join(ManualCall, ManualCall.well_id == Well.id)
        .where(Well.plate_id == plate.id, ManualCall.operator == operator)
        .order_by(Well.row, Well.column)
    )
    return {name: call for name, call in session.execute(query).all()}


@dataclass
class _Change:
    """Old and new values of the wells a replacement changed (plate order), for the audit."""

    before_rows: int
    after_rows: int
    before: dict[str, dict[str, Any]]
    after: dict[str, dict[str, Any]]

    @property
    def removed(self) -> int:
        return sum(1 for well in self.before if well not in self.after)

    def audit_values(self) -> tuple[dict[str, Any], dict[str, Any]]:
        # At most one entry per well (96) each: bounded by the plate, not by the upload.
        return (
            {"rows": self.before_rows, "wells": self.before},
            {"rows": self.after_rows, "wells": self.after},
        )


def _replace_set(
    session: Session,
    wells: Mapping[str, Well],
    existing: Mapping[str, Any],
    new: Mapping[str, Any],
    values_of: Callable[[Any], dict[str, Any]],
    write: Callable[[Any, Any, Well], Any],
) -> _Change:
    """Make ``new`` (well -> parsed row) the stored set ``existing`` (well -> ORM row): delete
    wells it does not list, write the ones that changed (``write(old_or_None, row, well)``
    returns the ORM row to add), and record the old and new values of each."""
    change = _Change(len(existing), len(new), {}, {})
    for name in wells:
        old, row = existing.get(name), new.get(name)
        if old is not None and row is None:
            change.before[name] = values_of(old)
            session.delete(old)
        elif row is not None and (old is None or values_of(old) != row.values()):
            if old is not None:
                change.before[name] = values_of(old)
            session.add(write(old, row, wells[name]))
            change.after[name] = row.values()
    session.flush()
    return change


def store_fct(session: Session, plate: Plate, rows: Sequence[FctRow], source: str) -> _Change:
    """Make ``rows`` the plate's whole FCT: update changed wells, add new ones, delete the
    wells ``rows`` does not list."""

    def write(old: FctMeasurement | None, row: FctRow, well: Well) -> FctMeasurement:
        measurement = old or FctMeasurement(well_id=well.id)
        measurement.cd73_pct = row.cd73_pct
        measurement.cd90_pct = row.cd90_pct
        measurement.event_count = row.event_count
        measurement.label = row.label
        measurement.source = source
        measurement.measured_at = utcnow()
        return measurement

    new = {row.well: row for row in rows}
    return _replace_set(
        session,
        _plate_wells(session, plate),
        _stored_fct(session, plate),
        new,
        _fct_values,
        write,
    )


def store_manual(
    session: Session, plate: Plate, rows: Sequence[ManualRow], operator: str
) -> _Change:
    """Make ``rows`` ``operator``'s whole set of calls on the plate (other operators' calls
    are untouched)."""

    def write(old: ManualCall | None, row: ManualRow, well: Well) -> ManualCall:
        call = old or ManualCall(well_id=well.id, operator=operator)
        call.label = row.label
        call.seconds_spent = row.seconds_spent
        call.recorded_at = utcnow()
        return call

    new = {row.well: row for row in rows}
    return _replace_set(
        session,
        _plate_wells(session, plate),
        _stored_manual(session, plate, operator),
        new,
        _manual_values,
        write,
    )


def _plate_for_upload(session: Session, barcode: str) -> tuple[Plate, bool]:
    # Ground truth may arrive before the plate's first scan: the plate is created then.
    existing = find_plate(session, barcode)
    if existing is not None:
        return existing, False
    return get_or_create_plate(session, barcode), True


def _concurrent(barcode: str) -> ConflictError:
    # Two uploads to one plate at once: the second's inserts collide with the first's rows
    # (unique well / plate barcode) when it flushes; it is refused whole, so it can be re-sent.
    return ConflictError(
        f"another upload to plate {barcode!r} was written at the same time; send this one again"
    )


def upload_fct(
    session: Session,
    barcode: str,
    body: bytes,
    content_type: str,
    *,
    uploaded_by: str,
    units: FctUnits = "percent",
    filename: str | None = None,
    reason: str | None = None,
) -> UploadOutcome:
    """Validate a whole FCT upload, then make it the plate's FCT (replacing all earlier rows)."""
    rows = parse_fct(body, content_type, barcode, units=units, filename=filename)
    try:
        plate, created = _plate_for_upload(session, barcode)
        change = store_fct(session, plate, rows, source=f"upload by {uploaded_by}")
    except IntegrityError as exc:
        raise _concurrent(barcode) from exc
    before, after = change.audit_values()
    audit(
        session,
        uploaded_by,
        "fct.upload",
        f"plate:{barcode}",
        reason=reason,
        before=before,
        after=after,
        rows=len(rows),
        removed=change.removed,
        units=units,
        plate_created=created,
    )
    return UploadOutcome(rows=len(rows), removed=change.removed, plate_created=created)


def upload_manual(
    session: Session,
    barcode: str,
    body: bytes,
    content_type: str,
    *,
    operator: str,
    uploaded_by: str,
    filename: str | None = None,
    reason: str | None = None,
) -> UploadOutcome:
    """Validate a whole upload of ``operator``'s manual calls, then make it that operator's
    set for the plate (replacing their earlier calls)."""
    rows = parse_manual(body, content_type, barcode, filename=filename)
    try:
        plate, created = _plate_for_upload(session, barcode)
        change = store_manual(session, plate, rows, operator=operator)
    except IntegrityError as exc:
        raise _concurrent(barcode) from exc
    before, after = change.audit_values()
    audit(
        session,
        uploaded_by,
        "manual.upload",
        f"plate:{barcode}",
        reason=reason,
        before=before,
        after=after,
        operator=operator,
        rows=len(rows),
        removed=change.removed,
        plate_created=created,
    )
    return UploadOutcome(rows=len(rows), removed=change.removed, plate_created=created)


def _plate_or_error(session: Session, barcode: str) -> Plate:
    plate = find_plate(session, barcode)
    if plate is None:
        raise NotFoundError(f"no plate {barcode!r}")
    return plate


def delete_fct(session: Session, barcode: str, *, actor: str, reason: str | None = None) -> int:
    """Remove the plate's whole FCT (audited with the removed values); the count removed."""
    plate = _plate_or_error(session, barcode)
    existing = _stored_fct(session, plate)
    if not existing:
        raise NotFoundError(f"plate {barcode!r} has no FCT to delete")
    removed = {name: _fct_values(m) for name, m in existing.items()}
    for measurement in existing.values():
        session.delete(measurement)
    session.flush()
    audit(
        session,
        actor,
        "fct.delete",
        f"plate:{barcode}",
        reason=reason,
        before={"rows": len(removed), "wells": removed},
        after={"rows": 0, "wells": {}},
    )
    return len(removed)


def delete_manual(
    session: Session, barcode: str, *, operator: str, actor: str, reason: str | None = None
) -> int:
    """Remove ``operator``'s manual calls on the plate (audited); the count removed."""
    plate = _plate_or_error(session, barcode)
    existing = _stored_manual(session, plate, operator)
    if not existing:
        raise NotFoundError(f"plate {barcode!r} has no manual calls by {shown(operator)}")
    removed = {name: _manual_values(c) for name, c in existing.items()}
    for call in existing.values():
        session.delete(call)
    session.flush()
    audit(
        session,
        actor,
        "manual.delete",
        f"plate:{barcode}",
        reason=reason,
        operator=operator,
        before={"rows": len(removed), "wells": removed},
        after={"rows": 0, "wells": {}},
    )
    return len(removed)


def manual_calls(
    session: Session, barcode: str, *, operator: str | None = None
) -> list[ManualCallPublic]:
    """The plate's manual calls (all operators, or one), in plate order, then by operator."""
    plate = _plate_or_error(session, barcode)
    query = (
        select(Well.name, ManualCall)
        .join(ManualCall, ManualCall.well_id == Well.id)
        .where(Well.plate_id == plate.id)
        .order_by(Well.row, Well.column, ManualCall.operator)
    )
    if operator is not None:
        query = query.where(ManualCall.operator == operator)
    return [
        ManualCallPublic(
            well=name,
            operator=call.operator,
            label=call.label,  # type: ignore[arg-type]  # stored as "high" | "low"
            seconds_spent=call.seconds_spent,
            recorded_at=call.recorded_at,
        )
        for name, call in session.execute(query).all()
    ]
