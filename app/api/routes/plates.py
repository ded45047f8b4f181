"""Plates: per-well calls (filtered, CSV), one well, its images and overlays, ground truth
uploads (FCT, manual calls) and evaluation against FCT. HTTP only: the logic is in
app.wells, app.ground_truth and app.evaluation."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request, Response

from app import wells
from app.api.deps import Operator, RuntimeDep, SessionDep, Viewer
from app.evaluation import evaluate_barcode
from app.ground_truth import upload_fct as store_fct_upload
from app.ground_truth import upload_manual
from app.overlay import image_png, overlay_png
from app.schemas.plates import FctWellPublic, PlateWellsPublic, UploadResult, WellResultPublic
from app.schemas.scans import BARCODE_PATTERN

router = APIRouter(prefix="/plates", tags=["plates"])

ScanIdQuery = Annotated[int | None, Query(description="A given scan; default: the latest.")]
BarcodePath = Annotated[str, Path(pattern=BARCODE_PATTERN, description="Plate barcode.")]


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
    found = wells.plate_wells(session, barcode, scan_id=scan_id, label=label, qc_flag=qc_flag)
    if format == "csv":
        filename = f"{found.plate.barcode}-scan{found.scan.id}.csv"
        return Response(
            wells.results_csv(found.wells),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )
    return found.public()


@router.get("/{barcode}/wells/{well}", response_model=WellResultPublic)
def plate_well(
    barcode: str, well: str, session: SessionDep, _: Viewer, scan_id: ScanIdQuery = None
) -> WellResultPublic:
    """One well's call in the latest (or a given) scan."""
    return WellResultPublic.of(wells.well_result(session, barcode, well, scan_id))


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
    frame = wells.field_frame(
        session, runtime.image_store, barcode, well, scan_id=scan_id, field=field
    )
    return Response(image_png(frame, runtime.bit_depth), media_type="image/png")


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
    frame = wells.field_frame(
        session, runtime.image_store, barcode, well, scan_id=scan_id, field=field
    )
    return Response(
        overlay_png(frame, runtime.classifier, runtime.bit_depth), media_type="image/png"
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
    barcode: BarcodePath, request: Request, session: SessionDep, caller: Operator
) -> UploadResult:
    """Flow-cytometry ground truth (CSV: a cytometer export or ``well,cd73_pct,cd90_pct``;
    or JSON rows). Validated whole: any bad row is a 422 naming row and field, and nothing
    is written. Replaces earlier measurements of the wells it lists."""
    count = store_fct_upload(
        session,
        barcode,
        await request.body(),
        request.headers.get("content-type", ""),
        uploaded_by=caller.name,
    )
    return UploadResult(plate_barcode=barcode, rows=count)


@router.put("/{barcode}/manual-calls", response_model=UploadResult, openapi_extra=UPLOAD_BODY)
async def upload_manual_calls(
    barcode: BarcodePath,
    request: Request,
    session: SessionDep,
    caller: Operator,
    operator: Annotated[str, Query(min_length=1, max_length=64, description="Who judged.")],
) -> UploadResult:
    """Manual visual-inspection calls (``well,label,seconds_spent``), the paper's MV group."""
    count = upload_manual(
        session,
        barcode,
        await request.body(),
        request.headers.get("content-type", ""),
        operator=operator,
        uploaded_by=caller.name,
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
    return evaluate_barcode(session, barcode, scan_id=scan_id, resamples=resamples)


# -- per-well FCT ground truth (read back, e.g. for the plate map's agreement view) -------------
@router.get("/{barcode}/fct", response_model=list[FctWellPublic])
def plate_fct(barcode: str, session: SessionDep, _: Viewer) -> list[FctWellPublic]:
    """The plate's flow-cytometry ground truth, one row per measured well, in plate order
    (an empty list when none was uploaded yet)."""
    return wells.fct_wells(session, barcode)
