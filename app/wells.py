"""Reading a plate: its per-well calls, one well, a field's stored frame, its FCT ground truth.

The logic behind the plates router and the CLI's ``results``; refusals are
:mod:`app.errors` exceptions, which the API turns into 404 / 410 / 422.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from app.analyses import ModelSpec, results_for
from app.errors import ConflictError, GoneError, InvalidRequestError, NotFoundError
from app.schemas.analyses import AnalysisPublic
from app.schemas.common import QcFlag
from app.schemas.plates import (
    ConfirmCounts,
    ConfirmListPublic,
    ConfirmWellPublic,
    FctWellPublic,
    PlatePage,
    PlateSummary,
    PlateWellsPublic,
    WellResultPublic,
)
from app.schemas.scans import ScanPublic
from hardware.plate import WellNameError, plate_geometry
from store import queries
from store.images import CorruptImageError, ImageStore
from store.orm import (
    Analysis,
    AnalysisResult,
    ModelVersion,
    Plate,
    Scan,
    WellResult,
    WellStatus,
)


def plate_or_error(session: Session, barcode: str) -> Plate:
    plate = queries.find_plate(session, barcode)
    if plate is None:
        raise NotFoundError(f"no plate {barcode!r}")
    return plate


def scan_or_error(session: Session, plate: Plate, scan_id: int | None) -> Scan:
    """Scan ``scan_id`` of ``plate``, or (None) its latest started scan."""
    if scan_id is None:
        scan = queries.latest_scan(session, plate)
        if scan is None:
            raise NotFoundError(f"plate {plate.barcode!r} has no started scan yet")
        return scan
    scan = queries.scan_of_plate(session, plate, scan_id)
    if scan is None:
        raise NotFoundError(f"plate {plate.barcode!r} has no scan {scan_id}")
    return scan


@dataclass
class PlateWells:
    plate: Plate
    scan: Scan
    wells: list[WellResultPublic]
    analysis: Analysis | None = None  # the re-analysis the calls come from (None: the scan's)

    def public(self) -> PlateWellsPublic:
        return PlateWellsPublic(
            plate_barcode=self.plate.barcode,
            scan=ScanPublic.of(self.scan),
            analysis=AnalysisPublic.of(self.analysis) if self.analysis else None,
            wells=self.wells,
        )

    @property
    def decision_policy(self) -> dict[str, Any] | None:
        """The policy the calls were made under (the analysis's, else the scan's)."""
        return (self.analysis or self.scan).decision_policy


def plate_wells(
    session: Session,
    barcode: str,
    *,
    scan_id: int | None = None,
    model: ModelSpec | None = None,
    label: str | None = None,
    qc_flag: QcFlag | None = None,
) -> PlateWells:
    """The calls of the latest (or a given) scan by its model of record, or by ``model`` (a
    re-analysis of it), optionally only one label or QC flag; each well with its stored
    images' checksums (all loaded in one query)."""
    plate = plate_or_error(session, barcode)
    scan = scan_or_error(session, plate, scan_id)
    analysis, results = results_for(session, scan, model)
    images = queries.images_by_well(session, scan.id)
    wells = [WellResultPublic.of(r, images.get(r.well_id, ())) for r in results]
    if label is not None:
        wells = [w for w in wells if w.label == label]
    if qc_flag is not None:
        wells = [w for w in wells if qc_flag in w.qc_flags]
    return PlateWells(plate, scan, wells, analysis)


def _well_name(plate: Plate, well: str) -> str:
    try:
        return plate_geometry(plate.plate_type).normalise(well)
    except WellNameError as exc:
        raise InvalidRequestError(str(exc)) from exc


def well_result(session: Session, barcode: str, well: str, scan_id: int | None) -> WellResult:
    """The scan's own result of one well (the one its stored fields belong to)."""
    plate = plate_or_error(session, barcode)
    name = _well_name(plate, well)
    scan = scan_or_error(session, plate, scan_id)
    result = queries.well_result(session, scan, name)
    if result is None:
        raise NotFoundError(f"well {name} has no result in scan {scan.id}")
    return result


def well_public(
    session: Session,
    barcode: str,
    well: str,
    scan_id: int | None,
    model: ModelSpec | None = None,
) -> WellResultPublic:
    """One well's result as the API shows it (by the scan's model of record, or ``model``),
    with its stored images' checksums."""
    result: WellResult | AnalysisResult = well_result(session, barcode, well, scan_id)
    if model is not None:
        scan = session.get_one(Scan, result.scan_id)
        analysis, results = results_for(session, scan, model)
        if analysis is not None:
            found = next((r for r in results if r.well_id == result.well_id), None)
            if found is None:
                raise NotFoundError(
                    f"well {result.well.name} has no result in analysis {analysis.id} "
                    f"({model}, {analysis.status.value})"
                )
            result = found
    images = queries.images_by_well(session, result.scan_id, [result.well_id])
    return WellResultPublic.of(result, images.get(result.well_id, ()))


def list_plates(
    session: Session, *, limit: int, offset: int, barcode_prefix: str | None = None
) -> PlatePage:
    """Plates newest first, each with its newest scan and whether FCT exists (discovery: what
    is there to read, scan or evaluate)."""
    rows, total = queries.list_plates(
        session, limit=limit, offset=offset, barcode_prefix=barcode_prefix
    )
    return PlatePage(
        items=[PlateSummary.of(row.plate, row.latest_scan, row.has_fct) for row in rows],
        total=total,
        limit=limit,
        offset=offset,
    )


class ImageCorruptError(ConflictError):
    """A stored image that no longer reads back as written (checksum, chunk or metadata)."""


def field_frame(
    session: Session,
    image_store: ImageStore,
    barcode: str,
    well: str,
    *,
    scan_id: int | None,
    field: int,
) -> tuple[np.ndarray, int | None]:
    """The frame of one field as it was acquired ((H, W) or (H, W, C), camera dtype), checked
    against the SHA-256 recorded when it was written: a damaged or incomplete image is a 409
    (ImageCorruptError), never a silently black or wrong picture. With it, the significant bits
    recorded with the frame (None: not recorded; the caller's camera default applies)."""
    result = well_result(session, barcode, well, scan_id)
    image = queries.field_image(session, result, field)
    if image is None:
        raise NotFoundError(f"well {well} has no field {field}")
    where = f"well {well} field {field} of scan {result.scan_id}"
    try:
        return image_store.load(image.path, sha256=image.sha256), image_store.bit_depth(image.path)
    except FileNotFoundError as exc:
        raise GoneError(
            f"the stored image of {where} is gone from the image store; re-scan the well"
        ) from exc
    except CorruptImageError as exc:
        raise ImageCorruptError(f"image corrupt: {where}: {exc}; re-scan the well") from exc


def overlay_version(
    session: Session, barcode: str, well: str, scan_id: int | None, model: ModelSpec | None
) -> ModelVersion | None:
    """The model version whose per-pixel call a well's overlay shows: the scan's model of
    record, or (``model``) a version that re-analysed the scan, as for every well query (so the
    overlay never shows another model's map than the call beside it). None for a scan that
    recorded no model (the serving one is used).

    Raises NotFoundError (no such well or result; no analysis of the scan with ``model``).
    """
    result = well_result(session, barcode, well, scan_id)
    scan = session.get_one(Scan, result.scan_id)
    analysis, _ = results_for(session, scan, model)
    if analysis is not None:
        return analysis.model_version
    # The well's own result names the model that called it (a resumed scan may have another).
    return result.model_version or scan.model_version


def fct_wells(session: Session, barcode: str) -> list[FctWellPublic]:
    """The plate's FCT ground truth, one row per measured well, in plate order."""
    plate = plate_or_error(session, barcode)
    return [
        FctWellPublic(
            well=name,
            cd73_pct=fct.cd73_pct,
            cd90_pct=fct.cd90_pct,
            label=fct.label,  # type: ignore[arg-type]  # stored as "high" | "low"
            event_count=fct.event_count,
        )
        for name, fct in queries.fct_measurements(session, plate)
    ]


# The call's columns (issue 15) come last, so the earlier ones keep their positions.
CSV_COLUMNS = (
    "well",
    "status",
    "label",
    "probability",
    "qc_flags",
    "fields_used",
    "confluence_pct",
    "model",
    "scan_id",
    "error",
    "leaning",
    "call_reason",
    "confidence",
    "field_spread",
    "ood_score",
)


def _number(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def results_csv(results: Sequence[WellResultPublic]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in results:
        writer.writerow(
            [
                r.well,
                r.status.value,
                r.label or "",
                "" if r.probability is None else f"{r.probability:.4f}",
                ";".join(r.qc_flags),
                r.fields_used,
                "" if r.confluence_pct is None else f"{r.confluence_pct:.1f}",
                f"{r.model.name}:v{r.model.version}" if r.model else "",
                r.scan_id,
                r.error or "",
                r.leaning or "",
                r.call_reason or "",
                _number(r.confidence, 4),
                _number(r.field_spread, 4),
                _number(r.ood_score, 2),
            ]
        )
    return buffer.getvalue()


@dataclass
class ConfirmList:
    """A scan's confirm list, with its plate and scan (for a download's file name)."""

    plate: Plate
    scan: Scan
    public: ConfirmListPublic


def _confirm_reason(result: WellResultPublic) -> str | None:
    """Why ``result`` needs confirming, or None for a call (high or low)."""
    if result.label in ("high", "low"):
        return None
    if result.label is not None:  # uncertain, no call: the decision says why
        return result.call_reason or result.label
    if result.status == WellStatus.failed:
        return f"acquisition failed: {result.error}" if result.error else "acquisition failed"
    flags = ", ".join(result.qc_flags) if result.qc_flags else "no field passed QC"
    return f"excluded by QC ({flags}): re-image the well or confirm by FCT"


def confirm_list(
    session: Session,
    barcode: str,
    *,
    scan_id: int | None = None,
    model: ModelSpec | None = None,
) -> ConfirmList:
    """The wells of the latest (or a given) scan that the model did not call, for FCT.

    Listed: "uncertain" (not called at the scan's alpha) and "no call" (out of distribution),
    and also the wells without any call because QC excluded every field or the acquisition
    failed: for the lab they are as undecided as the others, and leaving them out would let
    a well drop out of both the calls and the list. Every result is counted.
    """
    found = plate_wells(session, barcode, scan_id=scan_id, model=model)
    listed: list[ConfirmWellPublic] = []
    for r in found.wells:
        reason = _confirm_reason(r)
        if reason is None:
            continue
        listed.append(
            ConfirmWellPublic(
                well=r.well,
                label=r.label,
                status=r.status,
                reason=reason,
                probability=r.probability,
                leaning=r.leaning,
                confidence=r.confidence,
                ood_score=r.ood_score,
            )
        )
    labels = [r.label for r in found.wells]
    counts = ConfirmCounts(
        total=len(found.wells),
        called=sum(label in ("high", "low") for label in labels),
        high=labels.count("high"),
        low=labels.count("low"),
        uncertain=labels.count("uncertain"),
        no_call=labels.count("no call"),
        excluded=sum(r.label is None and r.status == WellStatus.excluded for r in found.wells),
        failed=sum(r.label is None and r.status == WellStatus.failed for r in found.wells),
        to_confirm=len(listed),
    )
    public = ConfirmListPublic(
        plate_barcode=found.plate.barcode,
        scan_id=found.scan.id,
        scan_status=found.scan.status,
        analysis_id=found.analysis.id if found.analysis else None,
        decision_policy=found.decision_policy,
        counts=counts,
        wells=listed,
    )
    return ConfirmList(found.plate, found.scan, public)


CONFIRM_CSV_COLUMNS = (
    "well",
    "label",
    "status",
    "reason",
    "probability",
    "leaning",
    "confidence",
    "ood_score",
)


def confirm_csv(wells: Sequence[ConfirmWellPublic]) -> str:
    """The confirm list as CSV (a label column left empty: no field passed QC or it failed)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CONFIRM_CSV_COLUMNS)
    for w in wells:
        writer.writerow(
            [
                w.well,
                w.label or "",
                w.status.value,
                w.reason,
                _number(w.probability, 4),
                w.leaning or "",
                _number(w.confidence, 4),
                _number(w.ood_score, 2),
            ]
        )
    return buffer.getvalue()
