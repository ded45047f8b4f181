"""Plates: per-well calls (filtered, CSV), one well, its images and overlays, and evaluation
against FCT. HTTP only: the logic is in app.wells and app.evaluation. Ground truth (FCT,
manual calls) has its own router, app/api/routes/ground_truth.py."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response

from app import wells
from app.analyses import ModelSpec
from app.api.deps import RuntimeDep, SessionDep, Viewer
from app.evaluation import MAX_RESAMPLES, compare_versions, evaluate_barcode
from app.overlay import image_png, overlay_png
from app.schemas import common
from app.schemas.common import (
    BARCODE_PATTERN,
    BarcodePath,
    ModelQuery,
    QcFlag,
    ScanIdQuery,
    WellPath,
)
from app.schemas.plates import (
    CallLabel,
    ConfirmListPublic,
    PlatePage,
    PlateWellsPublic,
    WellResultPublic,
)
from app.schemas.scans import LimitQuery, OffsetQuery

router = APIRouter(prefix="/plates", tags=["plates"])


def _spec(model: str | None) -> ModelSpec | None:
    return None if model is None else ModelSpec.parse(model)


def _suffix(model: str | None) -> str:
    """The model's part of a download's file name (``-hscnn-sim-v1``; "" for the scan's own)."""
    if model is None:
        return ""
    spec = ModelSpec.parse(model)
    return f"-{spec.name}-v{spec.version}"


CSV_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/csv": {"schema": {"type": "string"}}}}
}


@router.get("", response_model=PlatePage)
def list_plates(
    session: SessionDep,
    _: Viewer,
    barcode_prefix: Annotated[
        str | None,
        Query(pattern=BARCODE_PATTERN, description="Only plates whose barcode starts so."),
    ] = None,
    limit: LimitQuery = 50,
    offset: OffsetQuery = 0,
) -> PlatePage:
    """Plates, newest first: each with its newest scan (id, status, finished_at) and whether
    FCT ground truth exists; paged."""
    return wells.list_plates(session, limit=limit, offset=offset, barcode_prefix=barcode_prefix)


@router.get("/{barcode}/wells", response_model=PlateWellsPublic, responses=CSV_RESPONSE)
def plate_wells(
    barcode: BarcodePath,
    session: SessionDep,
    _: Viewer,
    scan_id: ScanIdQuery = None,
    label: Annotated[
        CallLabel | None,
        Query(
            description="Only this call: high, low, uncertain or no call (a space: "
            "?label=no%20call or ?label=no+call)."
        ),
    ] = None,
    qc_flag: Annotated[QcFlag | None, Query(description="Only wells with this QC flag.")] = None,
    model: ModelQuery = None,
    format: Annotated[Literal["json", "csv"], Query(description="csv: a download.")] = "json",
) -> Any:
    """Per-well call (high, low, uncertain, no call), probability, why and QC flags of the
    latest (or a given) scan, by its model of record or (``model``) a re-analysis of it."""
    found = wells.plate_wells(
        session, barcode, scan_id=scan_id, model=_spec(model), label=label, qc_flag=qc_flag
    )
    if format == "csv":
        filename = f"{found.plate.barcode}-scan{found.scan.id}{_suffix(model)}.csv"
        return Response(
            wells.results_csv(found.wells),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )
    return found.public()


@router.get("/{barcode}/confirm", response_model=ConfirmListPublic, responses=CSV_RESPONSE)
def confirm_list(
    barcode: BarcodePath,
    session: SessionDep,
    _: Viewer,
    scan_id: ScanIdQuery = None,
    model: ModelQuery = None,
    format: Annotated[Literal["json", "csv"], Query(description="csv: a download.")] = "json",
) -> Any:
    """The wells to confirm by flow cytometry in the latest (or a given) scan: uncertain (not
    called at the scan's alpha), no call (out of distribution), and those without a call
    because QC excluded every field or the acquisition failed; each with why, P(high) and
    its leaning. With the counts (total, called, uncertain, no call, ...) of the whole scan."""
    found = wells.confirm_list(session, barcode, scan_id=scan_id, model=_spec(model))
    if format == "csv":
        filename = f"{found.plate.barcode}-scan{found.scan.id}{_suffix(model)}-confirm.csv"
        return Response(
            wells.confirm_csv(found.public.wells),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )
    return found.public


@router.get("/{barcode}/wells/{well}", response_model=WellResultPublic)
def plate_well(
    barcode: BarcodePath,
    well: WellPath,
    session: SessionDep,
    _: Viewer,
    scan_id: ScanIdQuery = None,
    model: ModelQuery = None,
) -> WellResultPublic:
    """One well's call in the latest (or a given) scan (by its model of record, or ``model``),
    with its images' SHA-256."""
    return wells.well_public(session, barcode, well, scan_id, _spec(model))


# A scan takes at most 25 fields per well (ScanCreate.fields_per_well), indexed from 0.
FieldQuery = Annotated[int, Query(ge=0, le=24, description="Field index within the well.")]
PNG: dict[int | str, dict[str, Any]] = {200: {"content": {"image/png": {}}}}


@router.get("/{barcode}/wells/{well}/image", response_class=Response, responses=PNG)
def well_image(
    barcode: BarcodePath,
    well: WellPath,
    session: SessionDep,
    runtime: RuntimeDep,
    _: Viewer,
    scan_id: ScanIdQuery = None,
    field: FieldQuery = 0,
) -> Response:
    """The field as acquired, scaled to 8 bits for display."""
    frame, bit_depth = wells.field_frame(
        session, runtime.image_store, barcode, well, scan_id=scan_id, field=field
    )
    return Response(image_png(frame, bit_depth or runtime.bit_depth), media_type="image/png")


@router.get("/{barcode}/wells/{well}/overlay", response_class=Response, responses=PNG)
def well_overlay(
    barcode: BarcodePath,
    well: WellPath,
    session: SessionDep,
    runtime: RuntimeDep,
    _: Viewer,
    scan_id: ScanIdQuery = None,
    field: FieldQuery = 0,
    model: ModelQuery = None,
) -> Response:
    """The model's per-pixel call (green high, red low) over the normalised field: by the
    model that called the well, or (``model``) by a version that re-analysed the scan."""
    version = wells.overlay_version(session, barcode, well, scan_id, _spec(model))
    frame, bit_depth = wells.field_frame(
        session, runtime.image_store, barcode, well, scan_id=scan_id, field=field
    )
    classifier = runtime.classifier_for(version)
    return Response(
        overlay_png(frame, classifier, bit_depth or runtime.bit_depth), media_type="image/png"
    )


@router.get("/{barcode}/evaluation")
def plate_evaluation(
    barcode: common.BarcodePath,
    session: SessionDep,
    _: Viewer,
    scan_id: common.ScanIdQuery = None,
    resamples: Annotated[
        int, Query(ge=100, le=MAX_RESAMPLES, description="Bootstrap resamples for the CIs.")
    ] = 2000,
    prevalence: common.PrevalenceQuery = None,
    model: ModelQuery = None,
) -> dict[str, Any]:
    """The seven metrics with 95 % CIs and ROC points, model vs FCT (and manual vs FCT, with
    McNemar and DeLong tests, when manual calls exist), and time per plate; with
    ``prevalence``, PPV and NPV at that share of high wells too; with ``model``, of that
    version's calls (a re-analysis of the scan). Cached until a scan result, FCT or manual
    call of the plate changes."""
    return evaluate_barcode(
        session,
        barcode,
        scan_id=scan_id,
        model=_spec(model),
        resamples=resamples,
        prevalence=prevalence,
    )


@router.get("/{barcode}/comparison")
def version_comparison(
    barcode: common.BarcodePath,
    session: SessionDep,
    _: Viewer,
    b: Annotated[
        str,
        Query(
            pattern=common.MODEL_SPEC_PATTERN,
            max_length=75,
            description="The version to compare, NAME:VERSION (a re-analysis of the scan).",
            examples=["hscnn-sim:1"],
        ),
    ],
    a: ModelQuery = None,
    scan_id: common.ScanIdQuery = None,
    resamples: Annotated[
        int, Query(ge=100, le=MAX_RESAMPLES, description="Bootstrap resamples for the CIs.")
    ] = 2000,
) -> dict[str, Any]:
    """Two model versions on the same wells of the latest completed (or a given) scan, against
    FCT: each version's report, and the paired tests on the wells both called (McNemar's exact
    test on the calls, DeLong's on the AUCs), with the wells whose label changed. ``a``
    defaults to the scan's model of record."""
    return compare_versions(
        session, barcode, _spec(a), ModelSpec.parse(b), scan_id=scan_id, resamples=resamples
    )
