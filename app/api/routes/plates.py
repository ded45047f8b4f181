"""Plates: per-well calls (filtered, CSV), one well, its images and overlays, ground truth
uploads (FCT, manual calls) and evaluation against FCT."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, HTTPException, Path, Query, Request, Response, status
from sqlalchemy import select
from sqlalchemy.orm import contains_eager, joinedload

from app.api.deps import Operator, RuntimeDep, SessionDep, Viewer
from app.api.schemas import (
    BARCODE_PATTERN,
    FctWellPublic,
    PlateWellsPublic,
    ScanPublic,
    UploadResult,
    WellResultPublic,
)
from app.auth import audit
from app.classifier import WellClassifier
from app.db import session_scope
from app.evaluation import NothingToEvaluateError, evaluate_plate
from app.ground_truth import (
    UploadError,
    fct_records_from_csv,
    manual_records_from_csv,
    store_fct,
    store_manual,
    validate_fct,
    validate_manual,
)
from app.orm import FctMeasurement, Image, Plate, Scan, Well, WellResult
from app.overlay import image_png, overlay_png
from app.platemap import results_csv
from app.plates import find_plate, get_or_create_plate, latest_scan, scan_results
from hardware.plate import SBS_96, WellNameError

router = APIRouter(prefix="/plates", tags=["plates"])

ScanIdQuery = Annotated[int | None, Query(description="A given scan; default: the latest.")]
BarcodePath = Annotated[str, Path(pattern=BARCODE_PATTERN, description="Plate barcode.")]


def _plate_or_404(session: SessionDep, barcode: str) -> Plate:
    plate = find_plate(session, barcode)
    if plate is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no plate {barcode!r}")
    return plate


def _scan_of(session: SessionDep, plate: Plate, scan_id: int | None) -> Scan:
    if scan_id is None:
        scan = latest_scan(session, plate)
        if scan is None:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND, detail=f"plate {plate.barcode!r} has no started scan yet"
            )
        return scan
    scan = session.get(Scan, scan_id)
    if scan is None or scan.plate_id != plate.id:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, detail=f"plate {plate.barcode!r} has no scan {scan_id}"
        )
    return scan


@router.get("/{barcode}/wells", response_model=PlateWellsPublic)
def plate_wells(
    barcode: str,
    session: SessionDep,
    _: Viewer,
    scan_id: ScanIdQuery = None,
    label: Annotated[Literal["high", "low"] | None, Query(description="Only this call.")] = None,
    qc_flag: Annotated[str | None, Query(description="Only wells with this QC flag.")] = None,
    format: Annotated[Literal["json", "csv"], Query(description="csv: a download.")] = "json",
) -> Any:
    """Per-well call, probability and QC flags of the latest (or a given) scan."""
    plate = _plate_or_404(session, barcode)
    scan = _scan_of(session, plate, scan_id)
    wells = [WellResultPublic.of(r) for r in scan_results(session, scan)]
    if label is not None:
        wells = [w for w in wells if w.label == label]
    if qc_flag is not None:
        wells = [w for w in wells if qc_flag in w.qc_flags]
    if format == "csv":
        return Response(
            results_csv(wells),
            media_type="text/csv",
            headers={
                "Content-Disposition": f'attachment; filename="{plate.barcode}-scan{scan.id}.csv"'
            },
        )
    return PlateWellsPublic(plate_barcode=plate.barcode, scan=ScanPublic.of(scan), wells=wells)


def _well_result(session: SessionDep, plate: Plate, well: str, scan_id: int | None) -> WellResult:
    try:
        name = SBS_96.normalise(well)
    except WellNameError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from exc
    scan = _scan_of(session, plate, scan_id)
    result = session.scalar(
        select(WellResult)
        .join(Well, WellResult.well_id == Well.id)
        .where(WellResult.scan_id == scan.id, Well.name == name)
        .options(contains_eager(WellResult.well), joinedload(WellResult.model_version))
    )
    if result is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, detail=f"well {name} has no result in scan {scan.id}"
        )
    return result


@router.get("/{barcode}/wells/{well}", response_model=WellResultPublic)
def plate_well(
    barcode: str, well: str, session: SessionDep, _: Viewer, scan_id: ScanIdQuery = None
) -> WellResultPublic:
    """One well's call in the latest (or a given) scan."""
    return WellResultPublic.of(
        _well_result(session, _plate_or_404(session, barcode), well, scan_id)
    )


def _field_image(
    session: SessionDep, barcode: str, well: str, scan_id: int | None, field: int
) -> Image:
    result = _well_result(session, _plate_or_404(session, barcode), well, scan_id)
    image = session.scalar(
        select(Image).where(
            Image.scan_id == result.scan_id,
            Image.well_id == result.well_id,
            Image.field_index == field,
        )
    )
    if image is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"well {well} has no field {field}")
    return image


FieldQuery = Annotated[int, Query(ge=0, description="Field index within the well.")]
PNG: dict[int | str, dict[str, Any]] = {200: {"content": {"image/png": {}}}}


@router.get("/{barcode}/wells/{well}/image", response_class=Response, responses=PNG)
def well_image(
    barcode: str,
    well: str,
    session: SessionDep,
    runtime: RuntimeDep,
    _: Viewer,
    scan_id: ScanIdQuery = None,
    field: FieldQuery = 0,
) -> Response:
    """The field as acquired, scaled to 8 bits for display."""
    return _field_png(image_png, session, runtime, barcode, well, scan_id, field)


@router.get("/{barcode}/wells/{well}/overlay", response_class=Response, responses=PNG)
def well_overlay(
    barcode: str,
    well: str,
    session: SessionDep,
    runtime: RuntimeDep,
    _: Viewer,
    scan_id: ScanIdQuery = None,
    field: FieldQuery = 0,
) -> Response:
    """The model's per-pixel call (green high, red low) over the normalised field."""
    return _field_png(overlay_png, session, runtime, barcode, well, scan_id, field)


def _field_png(
    render: Callable[[np.ndarray, WellClassifier], bytes],
    session: SessionDep,
    runtime: RuntimeDep,
    barcode: str,
    well: str,
    scan_id: int | None,
    field: int,
) -> Response:
    image = _field_image(session, barcode, well, scan_id, field)
    try:
        frame = runtime.image_store.load(image.path)
    except FileNotFoundError as exc:
        raise HTTPException(
            status.HTTP_410_GONE, detail=f"the image file of {well} is gone: {image.path}"
        ) from exc
    return Response(render(frame, runtime.classifier), media_type="image/png")


async def _records(request: Request, csv_parser: Any) -> list[dict[str, Any]]:
    """Rows of a CSV (text/csv) or JSON (a list, or {"rows": [...]}) upload."""
    body = (await request.body()).decode("utf-8-sig", errors="replace")
    content_type = request.headers.get("content-type", "")
    if "json" in content_type:
        try:
            data = json.loads(body)
        except json.JSONDecodeError as exc:
            raise UploadError.single(0, "body", f"not valid JSON: {exc}") from exc
        rows = data.get("rows") if isinstance(data, dict) else data
        if not isinstance(rows, list):
            raise UploadError.single(0, "body", "expected a JSON list of rows")
        return rows
    return list(csv_parser(body))


def _upload_error(exc: UploadError) -> HTTPException:
    return HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        detail={"message": str(exc), "errors": [e.to_dict() for e in exc.errors]},
    )


UPLOAD_BODY = {
    "requestBody": {
        "content": {
            "text/csv": {"schema": {"type": "string"}},
            "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
        }
    }
}


@router.put("/{barcode}/fct", response_model=UploadResult, openapi_extra=UPLOAD_BODY)
async def upload_fct(
    barcode: BarcodePath, request: Request, runtime: RuntimeDep, caller: Operator
) -> UploadResult:
    """Flow-cytometry ground truth (CSV: a cytometer export or ``well,cd73_pct,cd90_pct``;
    or JSON rows). Validated whole: any bad row is a 422 naming row and field, and nothing
    is written. Replaces earlier measurements of the wells it lists."""
    try:
        rows = validate_fct(await _records(request, fct_records_from_csv))
    except UploadError as exc:
        raise _upload_error(exc) from exc
    with session_scope(runtime.session_factory) as session:
        plate = get_or_create_plate(session, barcode)
        count = store_fct(session, plate, rows, source=f"upload by {caller.name}")
        audit(session, caller.name, "fct.upload", f"plate:{barcode}", rows=count)
    return UploadResult(plate_barcode=barcode, rows=count)


@router.put("/{barcode}/manual-calls", response_model=UploadResult, openapi_extra=UPLOAD_BODY)
async def upload_manual_calls(
    barcode: BarcodePath,
    request: Request,
    runtime: RuntimeDep,
    caller: Operator,
    operator: Annotated[str, Query(min_length=1, max_length=64, description="Who judged.")],
) -> UploadResult:
    """Manual visual-inspection calls (``well,label,seconds_spent``), the paper's MV group."""
    try:
        rows = validate_manual(await _records(request, manual_records_from_csv))
    except UploadError as exc:
        raise _upload_error(exc) from exc
    with session_scope(runtime.session_factory) as session:
        plate = get_or_create_plate(session, barcode)
        count = store_manual(session, plate, rows, operator=operator)
        audit(
            session, caller.name, "manual.upload", f"plate:{barcode}", operator=operator, rows=count
        )
    return UploadResult(plate_barcode=barcode, rows=count)


@router.get("/{barcode}/evaluation")
def plate_evaluation(
    barcode: str,
    session: SessionDep,
    _: Viewer,
    scan_id: ScanIdQuery = None,
    resamples: Annotated[int, Query(ge=100, le=20000)] = 2000,
) -> dict[str, Any]:
    """The seven metrics with 95 % CIs and ROC points, model vs FCT (and manual vs FCT, with
    McNemar and DeLong tests, when manual calls exist), and time per plate."""
    plate = _plate_or_404(session, barcode)
    scan = _scan_of(session, plate, scan_id) if scan_id is not None else None
    try:
        return evaluate_plate(session, plate, scan=scan, resamples=resamples)
    except NothingToEvaluateError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from exc


# -- per-well FCT ground truth (read back, e.g. for the plate map's agreement view) -------------
@router.get("/{barcode}/fct", response_model=list[FctWellPublic])
def plate_fct(barcode: str, session: SessionDep, _: Viewer) -> list[FctWellPublic]:
    """The plate's flow-cytometry ground truth, one row per measured well, in plate order
    (an empty list when none was uploaded yet)."""
    plate = _plate_or_404(session, barcode)
    rows = session.execute(
        select(Well.name, FctMeasurement)
        .join(FctMeasurement, FctMeasurement.well_id == Well.id)
        .where(Well.plate_id == plate.id)
        .order_by(Well.row, Well.column)
    ).all()
    return [
        FctWellPublic(
            well=name,
            cd73_pct=fct.cd73_pct,
            cd90_pct=fct.cd90_pct,
            label=fct.label,  # type: ignore[arg-type]  # stored as "high" | "low"
            event_count=fct.event_count,
        )
        for name, fct in rows
    ]
