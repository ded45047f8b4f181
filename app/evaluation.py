"""Model (and manual) calls against FCT ground truth, per plate or pooled over plates.

The bootstrap confidence intervals cost ~1 s of CPU per 1000 resamples on a 96-well plate, so
finished reports are cached. The key is a digest of everything the report is computed from
(each evaluated well's plate, name, FCT label, model probability from the chosen scan and
manual calls, in order) plus the threshold and resample count: any new scan result, FCT or
manual call upload changes the key, so a cached answer is never stale, and there is no
invalidation to forget (this also holds with several service processes). Reading those inputs
is a few small queries; only the bootstrap is skipped.

Since issue 15 a well's label may be "uncertain" (confirm by FCT) or "no call" (out of
distribution) besides high/low, and a scan records the policy it called under. The report then
has, beside the model's metrics over everything it called (at the scan's recorded decision
threshold; "no call" wells left out, counted in ``wells_no_call``):

* ``calibration``: the ECE and reliability table of P(high) over those wells, so a lab can see
  whether "P(high) = 0.9" means nine in ten;
* ``selective``: what the labels a lab acts on achieved: how many wells were called, how many
  went to FCT, and the error among the called ones (the figure ``alpha`` promises to bound).

Scans from before issue 15 (no policy, labels high/low) report as before, plus these blocks
(every labelled well called: coverage 1).
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

from app.analyses import ModelSpec, results_for
from app.errors import InvalidRequestError, NotFoundError
from app.schemas.common import BARCODE_PATTERN
from app.wells import plate_or_error, scan_or_error
from models.calibration import expected_calibration_error, reliability_table
from models.decision import HIGH, LOW, NO_CALL, UNCERTAIN
from models.metrics import (
    delong,
    evaluate,
    json_safe,
    mcnemar,
    predictive_values_at_prevalence,
)
from models.selective import clopper_pearson_upper
from store import queries
from store.orm import (
    Analysis,
    AnalysisResult,
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
DEFAULT_THRESHOLD = 0.5  # the decision threshold of scans that recorded none (before issue 15)
CALIBRATION_BINS = 15  # equal-width bins of P(high) for the ECE and the reliability table
ERROR_BOUND_DELTA = 0.05  # the selective block's error upper bound is one-sided 95 %


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
    digest = hashlib.sha256(repr((threshold, resamples, CALIBRATION_BINS)).encode())
    for r in records:
        inputs = (r.plate, r.well, r.fct, r.probability, r.label, sorted(r.manual.items()))
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
    label: str | None = None  # the scan's label: high / low / uncertain / no call (None: none)

    @property
    def model_called(self) -> bool:
        """In the "everything called" metrics: has a probability and is in distribution."""
        return self.probability is not None and self.label != NO_CALL


def _latest_completed_scan(session: Session, plate: Plate) -> Scan | None:
    return session.scalar(
        select(Scan)
        .where(Scan.plate_id == plate.id, Scan.status == ScanStatus.completed)
        .order_by(Scan.id.desc())
        .limit(1)
    )


def _collect(
    session: Session, plate: Plate, scan: Scan | None, analysis: Analysis | None = None
) -> tuple[list[_WellRecord], dict[str, float]]:
    """Wells of ``plate`` with an FCT label, their model probability (from ``scan``'s own
    results, or from its re-analysis ``analysis``) and manual calls."""
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
    calls: Any = None
    if analysis is not None:
        calls = select(
            AnalysisResult.well_id, AnalysisResult.probability, AnalysisResult.label
        ).where(AnalysisResult.analysis_id == analysis.id, AnalysisResult.status == WellStatus.ok)
    elif scan is not None:
        calls = select(WellResult.well_id, WellResult.probability, WellResult.label).where(
            WellResult.scan_id == scan.id, WellResult.status == WellStatus.ok
        )
    if calls is not None:
        for well_id, probability, label in session.execute(calls):
            if well_id in records:
                records[well_id].probability = probability
                records[well_id].label = label
    seconds: dict[str, float] = {}
    manual_calls = select(ManualCall).where(ManualCall.well_id.in_(list(records)))
    for call in session.scalars(manual_calls.order_by(ManualCall.id)):
        records[call.well_id].manual[call.operator] = int(call.label == "high")
        seconds[call.operator] = seconds.get(call.operator, 0.0) + (call.seconds_spent or 0.0)
    return list(records.values()), seconds


def scan_threshold(scan: Scan | Analysis | None) -> float:
    """The decision threshold ``scan`` (or a re-analysis) called under (its recorded policy),
    else the default."""
    policy = scan.decision_policy if scan is not None else None
    value = policy.get("threshold") if isinstance(policy, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
        return DEFAULT_THRESHOLD
    return float(value)


def policy_summary(policy: dict[str, Any] | None) -> dict[str, Any] | None:
    """The parts of a scan's ``decision_policy`` a reader of its evaluation needs (None: the
    scan predates recorded policies); the selective threshold without its provenance."""
    if not isinstance(policy, dict):
        return None
    selective = policy.get("selective")
    selective = selective if isinstance(selective, dict) else {}
    return {
        "threshold": policy.get("threshold"),
        "threshold_policy": policy.get("threshold_policy"),
        "alpha": policy.get("alpha"),
        "delta": policy.get("delta"),
        "selective_threshold": selective.get("threshold"),
        "selective_calibration_fields": selective.get("n_calibration"),
        "ood_threshold": policy.get("ood_threshold"),
        "calibration": policy.get("calibration"),
    }


def _calibration(called: Sequence[_WellRecord]) -> dict[str, Any]:
    """ECE and reliability table of P(high) vs FCT over ``called`` (non-empty)."""
    y = np.array([r.fct for r in called])
    p = np.array([r.probability for r in called], dtype=float)
    table = reliability_table(p, y, CALIBRATION_BINS)
    return {
        "wells": len(called),
        "bins": CALIBRATION_BINS,
        "ece": expected_calibration_error(p, y, CALIBRATION_BINS),
        "reliability": [b.to_dict() for b in table],
    }


def _selective(records: Sequence[_WellRecord]) -> dict[str, Any] | None:
    """What the labels a lab acts on achieved (None: no well of ``records`` got a label).

    Denominator of ``coverage`` and ``sent_to_fct``: wells with FCT that got a label (wells no
    field of which passed QC have none), so the two add up to 1.
    """
    labelled = [r for r in records if r.label is not None]
    if not labelled:
        return None
    decided = [r for r in labelled if r.label in (HIGH, LOW)]
    uncertain = sum(r.label == UNCERTAIN for r in labelled)
    no_call = sum(r.label == NO_CALL for r in labelled)
    y = np.array([r.fct for r in decided], dtype=np.int64)
    pred = np.array([int(r.label == HIGH) for r in decided], dtype=np.int64)
    errors = int(np.sum(y != pred))
    bound = clopper_pearson_upper(np.array([errors]), np.array([len(decided)]), ERROR_BOUND_DELTA)
    block: dict[str, Any] = {
        "wells_labelled": len(labelled),
        "wells_called": len(decided),
        "uncertain": uncertain,
        "no_call": no_call,
        "coverage": len(decided) / len(labelled),
        "errors": errors,
        "error_among_called": errors / len(decided) if decided else None,
        "error_upper_95": float(bound[0]) if decided else None,
        "sent_to_fct": (uncertain + no_call) / len(labelled),
    }
    if decided:
        tp = int(np.sum((y == 1) & (pred == 1)))
        tn = int(np.sum((y == 0) & (pred == 0)))
        fp = int(np.sum((y == 0) & (pred == 1)))
        fn = int(np.sum((y == 1) & (pred == 0)))
        block["metrics"] = {
            "tp": tp,
            "tn": tn,
            "fp": fp,
            "fn": fn,
            "accuracy": (tp + tn) / len(decided),
            "sensitivity": tp / (tp + fn) if tp + fn else None,
            "specificity": tn / (tn + fp) if tn + fp else None,
            "ppv": tp / (tp + fp) if tp + fp else None,
            "npv": tn / (tn + fn) if tn + fn else None,
        }
    return block


def _report(records: Sequence[_WellRecord], *, threshold: float, resamples: int) -> dict[str, Any]:
    called = [r for r in records if r.model_called]
    report: dict[str, Any] = {
        "wells_with_fct": len(records),
        "wells_called": len(called),
        "wells_no_call": sum(r.label == NO_CALL for r in records),
    }
    if called:
        y = np.array([r.fct for r in called])
        p = np.array([r.probability for r in called], dtype=float)
        report["model"] = evaluate(y, p, threshold=threshold, resamples=resamples)
        report["calibration"] = _calibration(called)
    selective = _selective(records)
    if selective is not None:
        report["selective"] = selective
    operators = sorted({op for r in records for op in r.manual})
    report["manual"] = {}
    report["model_vs_manual"] = {}
    for operator in operators:
        judged = [r for r in records if operator in r.manual]
        y_m = np.array([r.fct for r in judged])
        calls = np.array([r.manual[operator] for r in judged], dtype=float)
        report["manual"][operator] = evaluate(y_m, calls, threshold=0.5, resamples=resamples)
        both = [r for r in judged if r.model_called]
        if len(both) >= 2:
            y_b = np.array([r.fct for r in both])
            prob = np.array([r.probability for r in both], dtype=float)
            manual = np.array([r.manual[operator] for r in both], dtype=float)
            comparison: dict[str, Any] = {"wells": len(both)}
            comparison |= paired_tests(
                y_b, (prob >= threshold, prob), (manual >= 0.5, manual), names=("model", "manual")
            )
            report["model_vs_manual"][operator] = comparison
    return report


def paired_tests(
    y: np.ndarray,
    a: tuple[np.ndarray, np.ndarray],
    b: tuple[np.ndarray, np.ndarray],
    *,
    names: tuple[str, str],
) -> dict[str, Any]:
    """Two classifiers on the same wells against FCT labels ``y``: McNemar's exact test on
    their calls and DeLong's on their AUCs. ``a`` and ``b``: (calls, scores); ``names`` spell
    the keys (``model_only_correct``, ``auc_model``, ...)."""
    (calls_a, scores_a), (calls_b, scores_b) = a, b
    first, second = names
    test = mcnemar(y, calls_a, calls_b)
    result: dict[str, Any] = {
        "mcnemar": {
            f"{first}_only_correct": test.only_a_correct,
            f"{second}_only_correct": test.only_b_correct,
            "p_value": test.p_value,
        }
    }
    try:
        auc = delong(y, scores_a, scores_b)
        result["delong"] = {
            f"auc_{first}": auc.auc_a,
            f"auc_{second}": auc.auc_b,
            "difference": auc.difference,
            "ci95": list(auc.ci95),
            "p_value": auc.p_value,
        }
    except ValueError as exc:  # too few wells of one class
        result["delong"] = {"error": str(exc)}
    return result


def _at_prevalence(report: dict[str, Any], prevalence: float | None) -> dict[str, Any]:
    """Add PPV and NPV at ``prevalence`` (share of "high" wells) to each evaluated classifier
    (the model, its selective calls when it called any, each operator): the plate's own PPV/NPV
    hold only at the plate's own share of high wells."""
    if prevalence is None:
        return report
    report = dict(report)
    report["prevalence"] = prevalence
    selective = report.get("selective")
    called = selective if isinstance(selective, dict) and selective.get("wells_called") else None
    judged = [report.get("model"), called, *(report.get("manual") or {}).values()]
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


def _with_policy(report: dict[str, Any], policies: dict[str, dict[str, Any] | None]) -> None:
    """Add what the scans called under (``policies``: barcode -> :func:`policy_summary`) to the
    selective and calibration blocks, in place; one value where the plates share it, else None."""

    def common(key: str) -> Any:
        values = {repr(p.get(key) if p else None) for p in policies.values()}
        if len(values) != 1:
            return None
        first = next(iter(policies.values()))
        return first.get(key) if first else None

    if "selective" in report:
        report["selective"]["alpha"] = common("alpha")
        shared = {repr(p) for p in policies.values()}
        report["selective"]["policy"] = next(iter(policies.values())) if len(shared) == 1 else None
    if "calibration" in report:
        report["calibration"]["method"] = common("calibration")


def _analysis_of(session: Session, scan: Scan | None, spec: ModelSpec | None) -> Analysis | None:
    """The re-analysis of ``scan`` whose calls ``spec`` selects (None: the scan's own)."""
    if spec is None or scan is None:
        if spec is not None:
            raise NotFoundError(f"no completed scan to read {spec}'s calls of")
        return None
    analysis, _ = results_for(session, scan, spec)
    return analysis


def evaluate_plate(
    session: Session,
    plate: Plate,
    *,
    scan: Scan | None = None,
    model: ModelSpec | None = None,
    threshold: float | None = None,
    resamples: int = 2000,
    prevalence: float | None = None,
) -> dict[str, Any]:
    """Metrics of the plate's latest completed scan (or ``scan``) and manual calls vs FCT;
    with ``prevalence``, also PPV and NPV where that share of wells is "high". ``model``: the
    calls of that version (a re-analysis of the scan); None: the scan's own.

    ``threshold`` (None: the calls' recorded decision threshold, else 0.5) applies to the
    "everything called" metrics; the selective block uses the stored labels as they are.
    """
    scan = scan or _latest_completed_scan(session, plate)
    analysis = _analysis_of(session, scan, model)
    records, manual_seconds = _collect(session, plate, scan, analysis)
    if not records:
        raise NothingToEvaluateError(f"plate {plate.barcode!r} has no FCT ground truth yet")
    called_by = analysis or scan
    threshold = scan_threshold(called_by) if threshold is None else threshold
    report = _at_prevalence(
        copy.deepcopy(_cached_report(records, threshold=threshold, resamples=resamples)),
        prevalence,
    )
    policy = called_by.decision_policy if called_by else None
    _with_policy(report, {plate.barcode: policy_summary(policy)})
    report["plate_barcode"] = plate.barcode
    report["scan_id"] = scan.id if scan else None
    report["analysis_id"] = analysis.id if analysis else None
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
    model: ModelSpec | None = None,
    threshold: float | None = None,
    resamples: int = 2000,
    prevalence: float | None = None,
) -> dict[str, Any]:
    """Pooled over ``plates`` (each with its latest completed scan): wells are the unit.

    ``threshold`` None: the scans' recorded decision threshold when they all share one, else
    0.5 (pooled metrics need one threshold); ``decision_thresholds`` lists each plate's.
    ``model``: the calls of that version (each scan's re-analysis with it; a plate whose
    latest completed scan has none is a 404 naming it).
    """
    records: list[_WellRecord] = []
    thresholds: dict[str, float] = {}
    policies: dict[str, dict[str, Any] | None] = {}
    for plate in plates:
        scan = _latest_completed_scan(session, plate)
        analysis = _analysis_of(session, scan, model) if scan is not None else None
        plate_records, _ = _collect(session, plate, scan, analysis)
        records.extend(plate_records)
        called_by = analysis or scan
        if called_by is not None:
            thresholds[plate.barcode] = scan_threshold(called_by)
            policies[plate.barcode] = policy_summary(called_by.decision_policy)
    if not records:
        raise NothingToEvaluateError("none of these plates has FCT ground truth")
    if threshold is None:
        shared = set(thresholds.values())
        threshold = shared.pop() if len(shared) == 1 else DEFAULT_THRESHOLD
    report = _at_prevalence(
        copy.deepcopy(_cached_report(records, threshold=threshold, resamples=resamples)),
        prevalence,
    )
    _with_policy(report, policies)
    report["decision_thresholds"] = thresholds
    report["decision_policies"] = policies
    report["plates"] = [p.barcode for p in plates]
    return dict(json_safe(report))


def evaluate_barcode(
    session: Session,
    barcode: str,
    *,
    scan_id: int | None = None,
    model: ModelSpec | None = None,
    resamples: int = 2000,
    prevalence: float | None = None,
) -> dict[str, Any]:
    """:func:`evaluate_plate` for the plate called ``barcode`` (and one of its scans)."""
    plate = plate_or_error(session, barcode)
    scan = scan_or_error(session, plate, scan_id) if scan_id is not None else None
    return evaluate_plate(
        session, plate, scan=scan, model=model, resamples=resamples, prevalence=prevalence
    )


def evaluate_barcodes(
    session: Session,
    barcodes: Sequence[str] | None,
    *,
    model: ModelSpec | None = None,
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
    return evaluate_plates(session, plates, model=model, resamples=resamples, prevalence=prevalence)


def _version_of(scan: Scan, analysis: Analysis | None) -> dict[str, Any] | None:
    """{"name", "version"} of the model whose calls these are (None: the scan has no model)."""
    model = analysis.model_version if analysis is not None else scan.model_version
    return None if model is None else {"name": model.name, "version": model.version}


def compare_versions(
    session: Session,
    barcode: str,
    first: ModelSpec | None,
    second: ModelSpec,
    *,
    scan_id: int | None = None,
    resamples: int = 2000,
) -> dict[str, Any]:
    """Two model versions on the same wells of one scan (``first`` None: its model of record).

    Each version's own report (:func:`evaluate_plate`), and the paired comparison on the wells
    with FCT that both called (a probability, in distribution): McNemar's exact test on their
    calls at each version's recorded decision threshold, DeLong's test on their AUCs; plus the
    wells whose label changed between the versions, with the FCT label.

    Raises NotFoundError (plate, scan, or no analysis of one version), NothingToEvaluateError.
    """
    plate = plate_or_error(session, barcode)
    scan = (
        scan_or_error(session, plate, scan_id)
        if scan_id is not None
        else _latest_completed_scan(session, plate)
    )
    if scan is None:
        raise NotFoundError(f"plate {barcode!r} has no completed scan to compare versions on")
    sides = []
    for spec in (first, second):
        analysis = _analysis_of(session, scan, spec)
        records, _ = _collect(session, plate, scan, analysis)
        if not records:
            raise NothingToEvaluateError(f"plate {plate.barcode!r} has no FCT ground truth yet")
        report = evaluate_plate(session, plate, scan=scan, model=spec, resamples=resamples)
        sides.append((analysis, records, scan_threshold(analysis or scan), report))
    (
        (analysis_a, records_a, threshold_a, report_a),
        (analysis_b, records_b, threshold_b, report_b),
    ) = sides
    by_well_b = {r.well: r for r in records_b}
    both = [
        (a, by_well_b[a.well])
        for a in records_a
        if a.model_called and by_well_b[a.well].model_called
    ]
    paired: dict[str, Any] = {"wells": len(both)}
    if both:
        y = np.array([a.fct for a, _ in both])
        p_a = np.array([a.probability for a, _ in both], dtype=float)
        p_b = np.array([b.probability for _, b in both], dtype=float)
        paired["accuracy_a"] = float(np.mean((p_a >= threshold_a) == y))
        paired["accuracy_b"] = float(np.mean((p_b >= threshold_b) == y))
        paired |= paired_tests(
            y, (p_a >= threshold_a, p_a), (p_b >= threshold_b, p_b), names=("a", "b")
        )
    changed = [
        {"well": a.well, "a": a.label, "b": by_well_b[a.well].label, "fct": HIGH if a.fct else LOW}
        for a in records_a
        if a.label != by_well_b[a.well].label
    ]
    return dict(
        json_safe(
            {
                "plate_barcode": plate.barcode,
                "scan_id": scan.id,
                "a": {
                    "model": _version_of(scan, analysis_a),
                    "analysis_id": analysis_a.id if analysis_a else None,
                    "threshold": threshold_a,
                    "report": report_a,
                },
                "b": {
                    "model": _version_of(scan, analysis_b),
                    "analysis_id": analysis_b.id if analysis_b else None,
                    "threshold": threshold_b,
                    "report": report_b,
                },
                "paired": paired,
                "labels_changed": changed,
            }
        )
    )
