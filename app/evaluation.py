"""Model (and manual) calls against FCT ground truth, per plate or pooled over plates.

The bootstrap confidence intervals cost ~1 s of CPU per 1000 resamples on a 96-well plate, so
finished reports are cached. The key is a digest of everything the report is computed from
(each evaluated well's plate, name, FCT label, model probability from the chosen scan and
manual calls, in order) plus the threshold and resample count: any new scan result, FCT or
manual call upload changes the key, so a cached answer is never stale, and there is no
invalidation to forget (this also holds with several service processes). Reading those inputs
is a few small queries; only the bootstrap is skipped.
"""

from __future__ import annotations

import copy
import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import InvalidRequestError, NotFoundError
from app.schemas.common import BARCODE_PATTERN
from app.wells import plate_or_error, scan_or_error
from models.metrics import (
    delong,
    evaluate,
    json_safe,
    mcnemar,
    predictive_values_at_prevalence,
)
from store import queries
from store.orm import (
    FctMeasurement,
    ManualCall,
    Plate,
    Scan,
    ScanStatus,
    Well,
    WellResult,
    WellStatus,
)


class NothingToEvaluateError(NotFoundError):
    """No well has both a call and an FCT label."""


MAX_RESAMPLES = 5000  # bootstrap resamples a request may ask for (~5 s of CPU per plate)
MAX_POOLED_PLATES = 200  # barcodes one pooled evaluation may name


def parse_barcodes(text: str | None) -> list[str] | None:
    """The comma-separated barcodes of ``?plates=`` (None: none named), each checked against
    BARCODE_PATTERN, duplicates dropped; InvalidRequestError (422) naming the bad one."""
    barcodes = list(dict.fromkeys(b.strip() for b in (text or "").split(",") if b.strip()))
    if not barcodes:
        return None
    if len(barcodes) > MAX_POOLED_PLATES:
        raise InvalidRequestError(
            f"plates names {len(barcodes)} barcodes; at most {MAX_POOLED_PLATES} per request"
        )
    for barcode in barcodes:
        if re.fullmatch(BARCODE_PATTERN, barcode) is None:
            raise InvalidRequestError(
                f"plates: {barcode[:70]!r} is not a barcode (1-64 letters, digits, '.', '_' "
                "or '-', starting with a letter or digit)"
            )
    return barcodes


class _ReportCache:
    """A bounded LRU of finished reports. Identical requests arriving together compute once:
    the others wait for the first instead of each burning the same CPU."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._running: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        while True:
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                    self.hits += 1
                    return copy.deepcopy(self._items[key])
                running = self._running.get(key)
                if running is None:
                    done = self._running[key] = threading.Event()
                    self.misses += 1
                    break
            running.wait()  # then look again; if that computation failed, this one runs it
        try:
            value = compute()
            with self._lock:
                self._items[key] = value
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
        finally:
            with self._lock:
                del self._running[key]
            done.set()
        return copy.deepcopy(value)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


_reports = _ReportCache(size=128)


def _cached_report(
    records: Sequence[_WellRecord], *, threshold: float, resamples: int
) -> dict[str, Any]:
    """:func:`_report`, from the cache when the same inputs were evaluated before."""
    digest = hashlib.sha256(repr((threshold, resamples)).encode())
    for r in records:
        inputs = (r.plate, r.well, r.fct, r.probability, sorted(r.manual.items()))
        digest.update(repr(inputs).encode())
    return _reports.get(
        digest.hexdigest(),
        lambda: dict(json_safe(_report(records, threshold=threshold, resamples=resamples))),
    )


@dataclass
class _WellRecord:
    plate: str
    well: str
    fct: int  # 1 = high
    probability: float | None = None
    manual: dict[str, int] = field(default_factory=dict)  # operator -> 1/0


def _latest_completed_scan(session: Session, plate: Plate) -> Scan | None:
    return session.scalar(
        select(Scan)
        .where(Scan.plate_id == plate.id, Scan.status == ScanStatus.completed)
        .order_by(Scan.id.desc())
        .limit(1)
    )


def _collect(
    session: Session, plate: Plate, scan: Scan | None
) -> tuple[list[_WellRecord], dict[str, float]]:
    """Wells of ``plate`` with an FCT label, their model probability and manual calls."""
    rows = session.execute(
        select(Well.id, Well.name, FctMeasurement.label)
        .join(FctMeasurement, FctMeasurement.well_id == Well.id)
        .where(Well.plate_id == plate.id)
        .order_by(Well.id)  # the bootstrap depends on the order; keep it (and the cache) stable
    ).all()
    records = {
        well_id: _WellRecord(plate.barcode, name, int(label == "high"))
        for well_id, name, label in rows
    }
    if scan is not None:
        for well_id, probability in session.execute(
            select(WellResult.well_id, WellResult.probability).where(
                WellResult.scan_id == scan.id, WellResult.status == WellStatus.ok
            )
        ):
            if well_id in records:
                records[well_id].probability = probability
    seconds: dict[str, float] = {}
    manual_calls = select(ManualCall).where(ManualCall.well_id.in_(list(records)))
    for call in session.scalars(manual_calls.order_by(ManualCall.id)):
        records[call.well_id].manual[call.operator] = int(call.label == "high")
        seconds[call.operator] = seconds.get(call.operator, 0.0) + (call.seconds_spent or 0.0)
    return list(records.values()), seconds


def _report(records: Sequence[_WellRecord], *, threshold: float, resamples: int) -> dict[str, Any]:
    called = [r for r in records if r.probability is not None]
    report: dict[str, Any] = {"wells_with_fct": len(records), "wells_called": len(called)}
    if called:
        y = np.array([r.fct for r in called])
        p = np.array([r.probability for r in called], dtype=float)
        report["model"] = evaluate(y, p, threshold=threshold, resamples=resamples)
    operators = sorted({op for r in records for op in r.manual})
    report["manual"] = {}
    report["model_vs_manual"] = {}
    for operator in operators:
        judged = [r for r in records if operator in r.manual]
        y_m = np.array([r.fct for r in judged])
        calls = np.array([r.manual[operator] for r in judged], dtype=float)
        report["manual"][operator] = evaluate(y_m, calls, threshold=0.5, resamples=resamples)
        both = [r for r in judged if r.probability is not None]
        if len(both) >= 2:
            y_b = np.array([r.fct for r in both])
            prob = np.array([r.probability for r in both], dtype=float)
            manual = np.array([r.manual[operator] for r in both], dtype=float)
            comparison: dict[str, Any] = {"wells": len(both)}
            test = mcnemar(y_b, prob >= threshold, manual >= 0.5)
            comparison["mcnemar"] = {
                "model_only_correct": test.only_a_correct,
                "manual_only_correct": test.only_b_correct,
                "p_value": test.p_value,
            }
            try:
                auc = delong(y_b, prob, manual)
                comparison["delong"] = {
                    "auc_model": auc.auc_a,
                    "auc_manual": auc.auc_b,
                    "difference": auc.difference,
                    "ci95": list(auc.ci95),
                    "p_value": auc.p_value,
                }
            except ValueError as exc:  # too few wells of one class
                comparison["delong"] = {"error": str(exc)}
            report["model_vs_manual"][operator] = comparison
    return report


def _at_prevalence(report: dict[str, Any], prevalence: float | None) -> dict[str, Any]:
    """Add PPV and NPV at ``prevalence`` (share of "high" wells) to each evaluated classifier:
    the plate's own PPV/NPV hold only at the plate's own share of high wells."""
    if prevalence is None:
        return report
    report = dict(report)
    report["prevalence"] = prevalence
    judged = [report.get("model"), *(report.get("manual") or {}).values()]
    for entry in judged:
        if not isinstance(entry, dict):
            continue
        metrics = entry.get("metrics") or {}
        sensitivity, specificity = metrics.get("sensitivity"), metrics.get("specificity")
        if sensitivity is None or specificity is None:  # one class only: undefined
            entry["at_prevalence"] = {"prevalence": prevalence, "ppv": None, "npv": None}
            continue
        ppv, npv = predictive_values_at_prevalence(sensitivity, specificity, prevalence)
        entry["at_prevalence"] = {"prevalence": prevalence, "ppv": ppv, "npv": npv}
    return report


def evaluate_plate(
    session: Session,
    plate: Plate,
    *,
    scan: Scan | None = None,
    threshold: float = 0.5,
    resamples: int = 2000,
    prevalence: float | None = None,
) -> dict[str, Any]:
    """Metrics of the plate's latest completed scan (or ``scan``) and manual calls vs FCT;
    with ``prevalence``, also PPV and NPV where that share of wells is "high"."""
    scan = scan or _latest_completed_scan(session, plate)
    records, manual_seconds = _collect(session, plate, scan)
    if not records:
        raise NothingToEvaluateError(f"plate {plate.barcode!r} has no FCT ground truth yet")
    report = _at_prevalence(
        copy.deepcopy(_cached_report(records, threshold=threshold, resamples=resamples)),
        prevalence,
    )
    report["plate_barcode"] = plate.barcode
    report["scan_id"] = scan.id if scan else None
    report["time_seconds"] = {
        "model_scan": (scan.finished_at - scan.started_at).total_seconds()
        if scan and scan.started_at and scan.finished_at
        else None,
        "manual": manual_seconds,
    }
    return dict(json_safe(report))


def evaluate_plates(
    session: Session,
    plates: Sequence[Plate],
    *,
    threshold: float = 0.5,
    resamples: int = 2000,
    prevalence: float | None = None,
) -> dict[str, Any]:
    """Pooled over ``plates`` (each with its latest completed scan): wells are the unit."""
    records: list[_WellRecord] = []
    for plate in plates:
        plate_records, _ = _collect(session, plate, _latest_completed_scan(session, plate))
        records.extend(plate_records)
    if not records:
        raise NothingToEvaluateError("none of these plates has FCT ground truth")
    report = _at_prevalence(
        copy.deepcopy(_cached_report(records, threshold=threshold, resamples=resamples)),
        prevalence,
    )
    report["plates"] = [p.barcode for p in plates]
    return dict(json_safe(report))


def evaluate_barcode(
    session: Session,
    barcode: str,
    *,
    scan_id: int | None = None,
    resamples: int = 2000,
    prevalence: float | None = None,
) -> dict[str, Any]:
    """:func:`evaluate_plate` for the plate called ``barcode`` (and one of its scans)."""
    plate = plate_or_error(session, barcode)
    scan = scan_or_error(session, plate, scan_id) if scan_id is not None else None
    return evaluate_plate(session, plate, scan=scan, resamples=resamples, prevalence=prevalence)


def evaluate_barcodes(
    session: Session,
    barcodes: Sequence[str] | None,
    *,
    resamples: int = 2000,
    prevalence: float | None = None,
) -> dict[str, Any]:
    """:func:`evaluate_plates` over these barcodes (None: every plate with FCT ground truth)."""
    if barcodes is not None:
        plates = queries.plates_by_barcode(session, barcodes)
        missing = sorted(set(barcodes) - {p.barcode for p in plates})
        if missing:
            raise NotFoundError(f"no plate(s) {missing}")
    else:
        plates = queries.plates_with_fct(session)
    return evaluate_plates(session, plates, resamples=resamples, prevalence=prevalence)
