"""Evaluation of selective calls (issue 15): the "everything called" metrics at the scan's
recorded threshold without out-of-distribution wells, ECE and reliability table of P(high),
and what the labels a lab acts on achieved, on hand-built plates with known answers."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy.orm import Session, sessionmaker

from app import evaluation
from app.evaluation import evaluate_plate, evaluate_plates
from models.metrics import evaluate
from store import queries
from store.db import make_engine, make_session_factory
from store.orm import Base, FctMeasurement, Plate, Scan, ScanStatus, WellResult, WellStatus

# (well, FCT high?, stored label, P(high)); a None label: no field passed QC (status excluded).
SELECTIVE_WELLS: list[tuple[str, bool, str | None, float | None]] = [
    ("A1", True, "high", 0.95),
    ("A2", True, "high", 0.95),
    ("A3", False, "high", 0.95),  # the one wrong call
    ("A4", False, "low", 0.05),
    ("A5", False, "low", 0.05),
    ("A6", True, "uncertain", 0.65),  # leans high at 0.6
    ("A7", False, "uncertain", 0.55),  # leans low at 0.6 (but high at 0.5)
    ("A8", True, "no call", 0.30),  # out of distribution: not in the model's metrics
    ("A9", False, None, None),
]
POLICY = {
    "requested": {"threshold_policy": "youden", "alpha": 0.1},
    "threshold": 0.6,
    "threshold_policy": "youden",
    "alpha": 0.1,
    "delta": 0.1,
    "selective": {"threshold": 0.9, "n_calibration": 200, "alpha": 0.1, "delta": 0.1},
    "ood_threshold": 12.5,
    "calibration": "temperature",
}


@pytest.fixture
def factory(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(f"sqlite:///{tmp_path / 'eval.db'}")
    Base.metadata.create_all(engine)
    evaluation._reports.clear()  # reports of other tests' databases must not answer here
    yield make_session_factory(engine)
    engine.dispose()


def _plate(
    session: Session,
    barcode: str,
    wells: Sequence[tuple[str, bool, str | None, float | None]],
    policy: dict | None,
) -> Plate:
    """A plate with one completed scan holding these results and FCT rows (plus one result
    without FCT, which nothing may count)."""
    plate = queries.get_or_create_plate(session, barcode)
    started = datetime(2026, 1, 1, tzinfo=UTC)
    scan = Scan(
        plate_id=plate.id,
        status=ScanStatus.completed,
        objective="40x",
        wells_requested=[w[0] for w in wells] + ["H12"],
        microscope="sim",
        started_at=started,
        finished_at=started + timedelta(seconds=90),
        decision_policy=policy,
    )
    session.add(scan)
    session.flush()
    by_name = {w.name: w for w in plate.wells}
    for name, high, label, probability in [*wells, ("H12", False, "high", 0.99)]:
        well = by_name[name]
        session.add(
            WellResult(
                scan_id=scan.id,
                well_id=well.id,
                status=WellStatus.ok if label is not None else WellStatus.excluded,
                label=label,
                probability=probability,
                qc_flags=[],
            )
        )
        if name != "H12":
            session.add(
                FctMeasurement(
                    well_id=well.id,
                    cd73_pct=99.0 if high else 80.0,
                    cd90_pct=99.0,
                    label="high" if high else "low",
                    source="test",
                )
            )
    session.flush()
    return plate


def test_selective_block_coverage_error_and_what_goes_to_fct(factory) -> None:
    with factory() as session:
        plate = _plate(session, "SEL-1", SELECTIVE_WELLS, POLICY)
        session.commit()
        report = evaluate_plate(session, plate, resamples=200)
    selective = report["selective"]
    assert selective["wells_labelled"] == 8  # A9 got no label (QC), H12 has no FCT
    assert (selective["wells_called"], selective["uncertain"], selective["no_call"]) == (5, 2, 1)
    assert selective["coverage"] == pytest.approx(5 / 8)
    assert selective["errors"] == 1
    assert selective["error_among_called"] == pytest.approx(1 / 5)
    assert selective["sent_to_fct"] == pytest.approx(3 / 8)
    assert 0.2 < selective["error_upper_95"] < 1.0
    assert selective["metrics"] == {
        "tp": 2,
        "tn": 2,
        "fp": 1,
        "fn": 0,
        "accuracy": pytest.approx(0.8),
        "sensitivity": 1.0,
        "specificity": pytest.approx(2 / 3),
        "ppv": pytest.approx(2 / 3),
        "npv": 1.0,
    }
    assert selective["alpha"] == 0.1
    assert selective["policy"] == {
        "threshold": 0.6,
        "threshold_policy": "youden",
        "alpha": 0.1,
        "delta": 0.1,
        "selective_threshold": 0.9,
        "selective_calibration_fields": 200,
        "ood_threshold": 12.5,
        "calibration": "temperature",
    }


def test_model_metrics_use_the_recorded_threshold_and_leave_out_of_distribution_wells(
    factory,
) -> None:
    with factory() as session:
        plate = _plate(session, "SEL-2", SELECTIVE_WELLS, POLICY)
        session.commit()
        report = evaluate_plate(session, plate, resamples=200)
        at_half = evaluate_plate(session, plate, threshold=0.5, resamples=200)
    assert (report["wells_with_fct"], report["wells_called"], report["wells_no_call"]) == (9, 7, 1)
    metrics = report["model"]["metrics"]
    assert report["model"]["threshold"] == 0.6
    # A1-A7 (A8 is out of distribution): high at 0.6 are A1, A2, A3 (wrong), A6.
    assert (metrics["tp"], metrics["tn"], metrics["fp"], metrics["fn"]) == (3, 3, 1, 0)
    assert metrics["n"] == 7
    # An explicit threshold still wins: at 0.5, A7 (0.55, FCT low) is a false positive too.
    half = at_half["model"]["metrics"]
    assert (half["tp"], half["tn"], half["fp"], half["fn"]) == (3, 2, 2, 0)


def test_ece_and_reliability_table_on_a_case_with_a_known_answer(factory) -> None:
    with factory() as session:
        plate = _plate(session, "SEL-3", SELECTIVE_WELLS, POLICY)
        session.commit()
        calibration = evaluate_plate(session, plate, resamples=200)["calibration"]
    # 15 bins over A1-A7: bin 14 holds 0.95 x3 (2 of 3 high), bin 0 0.05 x2 (none high),
    # bin 9 0.65 (high), bin 8 0.55 (low): ECE = (3|0.95-2/3| + 2(0.05) + 0.35 + 0.55) / 7.
    want = (3 * abs(0.95 - 2 / 3) + 2 * 0.05 + 0.35 + 0.55) / 7
    assert calibration["ece"] == pytest.approx(want)
    assert (calibration["bins"], calibration["wells"], calibration["method"]) == (
        15,
        7,
        "temperature",
    )
    table = calibration["reliability"]
    assert len(table) == 15 and sum(b["count"] for b in table) == 7
    assert {i: b["count"] for i, b in enumerate(table) if b["count"]} == {0: 2, 8: 1, 9: 1, 14: 3}
    assert table[14]["mean_confidence"] == pytest.approx(0.95)
    assert table[14]["observed_frequency"] == pytest.approx(2 / 3)
    assert table[1] == {
        "lower": pytest.approx(1 / 15),
        "upper": pytest.approx(2 / 15),
        "count": 0,
        "mean_confidence": None,
        "observed_frequency": None,
    }


def test_prevalence_adds_predictive_values_of_the_selective_calls(factory) -> None:
    with factory() as session:
        plate = _plate(session, "SEL-4", SELECTIVE_WELLS, POLICY)
        session.commit()
        plain = evaluate_plate(session, plate, resamples=200)
        report = evaluate_plate(session, plate, resamples=200, prevalence=0.9)
    assert "at_prevalence" not in plain["selective"]
    # Among the called wells: sensitivity 1, specificity 2/3.
    at = report["selective"]["at_prevalence"]
    assert at["prevalence"] == 0.9
    assert at["ppv"] == pytest.approx(0.9 / (0.9 + (1 / 3) * 0.1))
    assert at["npv"] == pytest.approx(1.0)
    assert "at_prevalence" in report["model"]


def test_a_plate_with_nothing_called_has_no_selective_predictive_values(factory) -> None:
    wells = [("A1", True, "uncertain", 0.6), ("A2", False, "no call", 0.4)]
    with factory() as session:
        plate = _plate(session, "SEL-5", wells, POLICY)
        session.commit()
        report = evaluate_plate(session, plate, resamples=200, prevalence=0.5)
    selective = report["selective"]
    assert (selective["wells_called"], selective["coverage"], selective["sent_to_fct"]) == (
        0,
        0.0,
        1.0,
    )
    assert selective["error_among_called"] is None and selective["error_upper_95"] is None
    assert "metrics" not in selective and "at_prevalence" not in selective
    assert report["wells_called"] == 1 and report["wells_no_call"] == 1
    json.dumps(report, allow_nan=False)  # strict JSON: no NaN anywhere


def test_an_old_scan_gives_the_old_report_plus_the_new_blocks(factory) -> None:
    rng = np.random.default_rng(7)
    wells = []
    for i in range(12):
        p = float(np.round(rng.uniform(), 4))
        high = bool(rng.uniform() < p)
        wells.append((f"B{i + 1}", high, "high" if p >= 0.5 else "low", p))
    with factory() as session:
        plate = _plate(session, "OLD-1", wells, None)
        session.commit()
        report = evaluate_plate(session, plate, resamples=300)
        pooled = evaluate_plates(session, [plate], resamples=300)
    y = np.array([int(w[1]) for w in wells])
    p = np.array([w[3] for w in wells])
    # Exactly what the report held before issue 15 (same wells, threshold 0.5, same bootstrap).
    assert report["model"] == json.loads(
        json.dumps(evaluate(y, p, threshold=0.5, resamples=300), allow_nan=False)
    )
    old_keys = {"wells_with_fct", "wells_called", "model", "manual", "model_vs_manual"}
    old_keys |= {"plate_barcode", "scan_id", "time_seconds"}
    # analysis_id (issue 16): None, the scan's own calls.
    assert set(report) == old_keys | {"wells_no_call", "calibration", "selective", "analysis_id"}
    assert report["analysis_id"] is None
    counts = (report["wells_with_fct"], report["wells_called"], report["wells_no_call"])
    assert counts == (12, 12, 0)
    assert report["time_seconds"] == {"model_scan": 90.0, "manual": {}}
    errors = sum(int(w[3] >= 0.5) != int(w[1]) for w in wells)
    selective = report["selective"]
    assert (selective["wells_called"], selective["uncertain"], selective["no_call"]) == (12, 0, 0)
    assert (selective["coverage"], selective["sent_to_fct"]) == (1.0, 0.0)
    assert selective["error_among_called"] == pytest.approx(errors / 12)
    assert selective["alpha"] is None and selective["policy"] is None
    assert report["calibration"]["method"] is None  # not recorded before issue 15
    assert report["calibration"]["wells"] == 12 and math.isfinite(report["calibration"]["ece"])
    assert pooled["model"] == report["model"] and pooled["selective"] == selective
    assert pooled["decision_thresholds"] == {"OLD-1": 0.5}


def test_pooled_plates_share_a_recorded_threshold_or_fall_back_to_the_default(factory) -> None:
    other = {**POLICY, "threshold": 0.4, "alpha": 0.05}
    with factory() as session:
        first = _plate(session, "POOL-1", SELECTIVE_WELLS, POLICY)
        second = _plate(session, "POOL-2", SELECTIVE_WELLS, POLICY)
        third = _plate(session, "POOL-3", SELECTIVE_WELLS, other)
        session.commit()
        same = evaluate_plates(session, [first, second], resamples=200)
        mixed = evaluate_plates(session, [first, third], resamples=200)
    assert same["model"]["threshold"] == 0.6
    assert same["selective"]["alpha"] == 0.1 and same["selective"]["policy"]["threshold"] == 0.6
    assert same["selective"]["coverage"] == pytest.approx(10 / 16)
    assert same["selective"]["error_among_called"] == pytest.approx(2 / 10)
    assert mixed["decision_thresholds"] == {"POOL-1": 0.6, "POOL-3": 0.4}
    assert mixed["model"]["threshold"] == 0.5
    assert mixed["selective"]["alpha"] is None and mixed["selective"]["policy"] is None
    assert mixed["decision_policies"]["POOL-3"]["alpha"] == 0.05
    assert mixed["calibration"]["method"] == "temperature"  # both plates say so


def test_a_label_change_is_a_new_report_not_a_cached_one(factory) -> None:
    with factory() as session:
        plate = _plate(session, "SEL-6", SELECTIVE_WELLS, POLICY)
        session.commit()
        before = evaluate_plate(session, plate, resamples=200)["selective"]
        result = session.query(WellResult).filter(WellResult.label == "uncertain").first()
        assert result is not None
        result.label = "high"
        session.commit()
        after = evaluate_plate(session, plate, resamples=200)["selective"]
    assert (before["wells_called"], after["wells_called"]) == (5, 6)


# -- plate-eval experiment -------------------------------------------------------------------
def test_calibration_summary_reports_raw_and_calibrated_ece() -> None:
    from models.calibration import Calibration
    from training.experiments.plate_eval import calibration_summary

    labels = np.array([1, 1, 0, 0, 0])
    raw = np.array([0.95, 0.95, 0.95, 0.05, 0.05])
    cal = Calibration(method="temperature", temperature=2.0)
    calibrated = cal.apply(raw)
    out = calibration_summary(labels, raw, calibrated, cal, val_wells=6)
    assert (out["bins"], out["wells"], out["method"]) == (15, 5, "temperature")
    assert out["ece_raw"] == pytest.approx((3 * abs(0.95 - 2 / 3) + 2 * 0.05) / 5)
    p = float(calibrated[0])  # sigmoid(logit(0.95) / 2), in a lower bin than 0.95
    assert out["ece_calibrated"] == pytest.approx((3 * abs(p - 2 / 3) + 2 * (1 - p)) / 5)
    assert sum(b["count"] for b in out["reliability_calibrated"]) == 5
    none = calibration_summary(labels, raw, None, None, val_wells=6)
    assert none["ece_calibrated"] is None and none["reliability_calibrated"] is None


@pytest.mark.slow
def test_plate_eval_reports_ece_and_the_reliability_table(tmp_path) -> None:
    import csv

    from hardware.sim import SimulationConfig
    from models.pipeline import PipelineConfig
    from training.experiments import ModelSpec, SimulatedSettings, plate_eval_experiment
    from training.trainer import TrainConfig

    settings = SimulatedSettings(
        train_plates=1,
        simulation=SimulationConfig(seed=5, overexposure_rate=0.0),
        pipeline=PipelineConfig(height=44, width=60, ws=3, k=4),
        model=ModelSpec("scnn"),
        train=TrainConfig(epochs=1, batch_size=4),
        workers=1,
        wells=("A1", "A2", "B3", "C4", "D5", "E6"),
    )
    summary = plate_eval_experiment(tmp_path / "pe", settings, progress=False)
    calibration = summary["calibration"]
    assert calibration["bins"] == 15 and calibration["wells"] == 6
    assert 0.0 <= calibration["ece_raw"] <= 1.0
    assert sum(b["count"] for b in calibration["reliability_raw"]) == 6
    if calibration["method"] is not None:  # the validation wells held both classes
        assert 0.0 <= calibration["ece_calibrated"] <= 1.0
    rows = list(csv.DictReader((tmp_path / "pe" / "reliability.csv").open()))
    assert len(rows) == 15 and sum(int(r["raw count"]) for r in rows) == 6
    assert "ECE raw" in (tmp_path / "pe" / "summary.md").read_text()
    written = json.loads((tmp_path / "pe" / "summary.json").read_text())
    assert written["calibration"]["ece_raw"] == pytest.approx(calibration["ece_raw"])
