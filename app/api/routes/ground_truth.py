"""Ground truth of a plate: flow cytometry (FCT) per well and manual visual calls.

Upload (PUT, replacing the plate's whole set), read back (GET) and delete (DELETE). HTTP only:
reading, validating and storing are in app.ground_truth. Bodies are CSV (text/csv), JSON, or
one file in a multipart/form-data form (``curl -F file=@fct.csv``); the request guard caps the
body's size before it is read (app/api/guard.py), so reading it here is bounded.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import ground_truth, wells
from app.api.deps import Operator, SessionDep, Viewer
from app.ground_truth import MAX_REPORTED_ERRORS, MAX_ROWS, FctUnits, UploadError, UploadOutcome
from app.schemas.common import (
    BARCODE_PATTERN,
    TEXT_PATTERN,
    BarcodePath,
    ErrorBody,
    ReasonQuery,
)
from app.schemas.plates import FctWellPublic, ManualCallPublic, UploadResult

router = APIRouter(prefix="/plates", tags=["ground truth"])

OperatorText = Query(
    min_length=1, max_length=64, pattern=TEXT_PATTERN, description="Who judged the wells."
)
OperatorQuery = Annotated[str, OperatorText]
OperatorFilter = Annotated[
    str | None,
    Query(min_length=1, max_length=64, pattern=TEXT_PATTERN, description="Only this operator."),
]
UnitsQuery = Annotated[
    FctUnits,
    Query(
        description="What the CD73/CD90 numbers are: `percent` (0..100, default) or "
        "`fraction` (0..1, stored x100). Percent uploads whose values are all <= 1 are refused "
        "as looking like fractions."
    ),
]

# Multipart: enough parts to say "several files" rather than the parser's own refusal.
MAX_FORM_FILES = 8
MAX_FORM_FIELDS = 16

UPLOAD_422 = {
    "model": ErrorBody,
    "description": "The upload (or a parameter) failed validation; nothing was written. "
    f"`detail.errors` lists the first {MAX_REPORTED_ERRORS} problems as {{row, field, "
    "message} (row 0: the file as a whole), `detail.error_count` how many there are in all",
}
NOT_FOUND = {"model": ErrorBody, "description": "No such plate, or nothing to delete"}
PLATE_NOT_FOUND = {"model": ErrorBody, "description": "No such plate"}


def _upload_body(row_schema: dict[str, Any], csv_example: str) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "text/csv": {"schema": {"type": "string"}, "example": csv_example},
                "application/json": {
                    "schema": {
                        "oneOf": [
                            {"type": "array", "maxItems": MAX_ROWS, "items": row_schema},
                            {
                                "type": "object",
                                "properties": {
                                    "plate": {
                                        "type": "string",
                                        "pattern": BARCODE_PATTERN,
                                        "description": "If given, the URL's barcode",
                                    },
                                    "rows": {
                                        "type": "array",
                                        "maxItems": MAX_ROWS,
                                        "items": row_schema,
                                    },
                                },
                                "required": ["rows"],
                            },
                        ]
                    }
                },
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "file": {
                                "type": "string",
                                "format": "binary",
                                "description": "The CSV or JSON file (any field name; one file)",
                            }
                        },
                        "required": ["file"],
                    }
                },
            },
        }
    }


FCT_ROW = {
    "type": "object",
    "properties": {
        "well": {"type": "string", "example": "B7"},
        "cd73_pct": {"type": "number", "minimum": 0, "maximum": 100},
        "cd90_pct": {"type": "number", "minimum": 0, "maximum": 100},
        "event_count": {"type": ["integer", "null"], "minimum": 0},
    },
    "required": ["well", "cd73_pct", "cd90_pct"],
}
MANUAL_ROW = {
    "type": "object",
    "properties": {
        "well": {"type": "string", "example": "B7"},
        "label": {"type": "string", "enum": ["high", "low"]},
        "seconds_spent": {"type": ["number", "null"], "minimum": 0},
    },
    "required": ["well", "label"],
}
FCT_BODY = _upload_body(FCT_ROW, "well,cd73_pct,cd90_pct,event_count\nA1,98.7,99.1,15234\n")
MANUAL_BODY = _upload_body(MANUAL_ROW, "well,label,seconds_spent\nA1,high,30\n")


async def _upload(request: Request) -> tuple[bytes, str, str | None]:
    """The uploaded bytes, their content type and file name: the body itself, or the one
    file part of a multipart/form-data form."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        return await request.body(), content_type, None
    try:
        form = await request.form(max_files=MAX_FORM_FILES, max_fields=MAX_FORM_FIELDS)
    except StarletteHTTPException as exc:  # a malformed form, or too many parts
        raise UploadError.single(0, "body", f"not a readable multipart form: {exc.detail}") from exc
    try:
        files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
        if len(files) != 1:
            found = "no file part" if not files else f"{len(files)} file parts"
            message = (
                f"expected one file part in the multipart form, found {found}; send e.g. "
                "`curl -F file=@fct.csv` (the file, not its text: -F file=@..., not file=<...)"
            )
            raise UploadError.single(0, "body", message)
        upload = files[0]
        return await upload.read(), upload.content_type or "", upload.filename
    finally:
        await form.close()


def _result(barcode: str, outcome: UploadOutcome) -> UploadResult:
    return UploadResult(
        plate_barcode=barcode,
        rows=outcome.rows,
        removed=outcome.removed,
        plate_created=outcome.plate_created,
    )


@router.put(
    "/{barcode}/fct",
    response_model=UploadResult,
    openapi_extra=FCT_BODY,
    responses={422: UPLOAD_422},
)
async def upload_fct(
    barcode: BarcodePath,
    request: Request,
    session: SessionDep,
    caller: Operator,
    units: UnitsQuery = "percent",
    reason: ReasonQuery = None,
) -> UploadResult:
    """Flow-cytometry ground truth of the plate: **replaces its whole FCT**.

    CSV (a cytometer export, e.g. `Plate,P1` lines, a blank line, then
    `Well,...,CD73-FITC+ %,CD90-PE+ %`; or `well,cd73_pct,cd90_pct[,event_count]`; separated
    by `,`, `;` or tab, decimal commas with `;`), JSON rows, or one such file in a multipart
    form. At most 96 rows. A well is high iff CD73 % > 95 and CD90 % > 95.

    Validated whole: any bad row is a 422 naming row and field, and nothing is written. A
    `Plate`/`Plate ID`/`Barcode` line naming another plate is a 422. Then the upload becomes
    the plate's FCT: wells it does not list lose their earlier measurement (`removed` counts
    them); the audit trail keeps the old and new values of every changed well. A plate not
    seen yet is created (ground truth may arrive before the scan; `plate_created`).
    """
    body, content_type, filename = await _upload(request)
    outcome = ground_truth.upload_fct(
        session,
        barcode,
        body,
        content_type,
        uploaded_by=caller.name,
        units=units,
        filename=filename,
        reason=reason,
    )
    return _result(barcode, outcome)


@router.get("/{barcode}/fct", response_model=list[FctWellPublic], responses={404: PLATE_NOT_FOUND})
def plate_fct(barcode: BarcodePath, session: SessionDep, _: Viewer) -> list[FctWellPublic]:
    """The plate's flow-cytometry ground truth, one row per measured well, in plate order
    (an empty list when none was uploaded yet)."""
    return wells.fct_wells(session, barcode)


@router.delete(
    "/{barcode}/fct",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={404: NOT_FOUND},
)
def delete_fct(
    barcode: BarcodePath, session: SessionDep, caller: Operator, reason: ReasonQuery = None
) -> Response:
    """Remove the plate's whole FCT (404 when it has none); the audit trail keeps what was
    removed."""
    ground_truth.delete_fct(session, barcode, actor=caller.name, reason=reason)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.put(
    "/{barcode}/manual-calls",
    response_model=UploadResult,
    openapi_extra=MANUAL_BODY,
    responses={422: UPLOAD_422},
)
async def upload_manual_calls(
    barcode: BarcodePath,
    request: Request,
    session: SessionDep,
    caller: Operator,
    operator: OperatorQuery,
    reason: ReasonQuery = None,
) -> UploadResult:
    """One operator's manual visual calls of the plate (the paper's MV group): **replaces
    that operator's whole set** (other operators' calls stay).

    CSV `well,label[,seconds_spent]` (label `high` or `low`; `,`, `;` or tab separated), JSON
    rows, or one such file in a multipart form; at most 96 rows. Validated whole (a 422 names
    row and field; nothing is written); wells the upload does not list lose this operator's
    earlier call (`removed`), audited with old and new values. A plate not seen yet is
    created (`plate_created`).
    """
    body, content_type, filename = await _upload(request)
    outcome = ground_truth.upload_manual(
        session,
        barcode,
        body,
        content_type,
        operator=operator,
        uploaded_by=caller.name,
        filename=filename,
        reason=reason,
    )
    return _result(barcode, outcome)


@router.get(
    "/{barcode}/manual-calls",
    response_model=list[ManualCallPublic],
    responses={404: PLATE_NOT_FOUND},
)
def plate_manual_calls(
    barcode: BarcodePath, session: SessionDep, _: Viewer, operator: OperatorFilter = None
) -> list[ManualCallPublic]:
    """The plate's manual calls (all operators, or `?operator=`), in plate order then by
    operator; an empty list when none were uploaded."""
    return ground_truth.manual_calls(session, barcode, operator=operator)


@router.delete(
    "/{barcode}/manual-calls",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={404: NOT_FOUND},
)
def delete_manual_calls(
    barcode: BarcodePath,
    session: SessionDep,
    caller: Operator,
    operator: OperatorQuery,
    reason: ReasonQuery = None,
) -> Response:
    """Remove one operator's manual calls of the plate (404 when there are none); the audit
    trail keeps what was removed."""
    ground_truth.delete_manual(
        session, barcode, operator=operator, actor=caller.name, reason=reason
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)
