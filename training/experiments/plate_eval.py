"""(1) Train on simulated plates, evaluate held-out 96-well plates against their FCT labels with
the seven metrics and bootstrap CIs, an ROC curve, and how well P(high) is calibrated.

Calibration: the trained network's raw P(high) on the validation plates fits a
:class:`models.calibration.Calibration` (what an exported model would carry), which is applied
to the test plates; the ECE and reliability table of both the raw and the calibrated P(high)
against FCT are reported. The metrics themselves stay on the raw P(high), as before. The
validation plates also stop training early, so the calibration is fitted on data the network
was selected on (not strictly held out): a small optimism, stated in the report.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from hardware.sim import SimulationConfig, well_truth
from models.calibration import (
    Calibration,
    expected_calibration_error,
    fit_calibration,
    reliability_table,
)
from models.metrics import auc_score, binary_metrics, json_safe
from models.metrics import evaluate as evaluate_scores
from training.experiments.common import ModelSpec, SimulatedSettings, fit, train_config_for
from training.experiments.reports import write_plate_eval_report
from training.imagesets import ImageSet
from training.trainer import TrainConfig, predict

logger = logging.getLogger(__name__)

CALIBRATION_BINS = 15  # equal-width bins of P(high), as the service's evaluation uses
AUTO_CALIBRATION_MIN = 10  # fewer validation wells: temperature only (auto cross-validates)


def plate_eval_experiment(
    out_dir: Path, settings: SimulatedSettings, *, progress: bool = True
) -> dict[str, Any]:
    """Train on simulated plates; evaluate held-out 96-well plates against their FCT labels
    (wells of all test plates pooled for the metrics; per-plate accuracy / AUC alongside)."""
    started = time.perf_counter()
    train_set = settings.images("train", settings.train_plates, None, progress)
    val_set = settings.images("val", settings.val_plates, None, progress)
    test_set = settings.images("test", settings.test_plates, None, progress)
    test_plates = settings.barcodes("test", settings.test_plates)
    val_probability, probability, info = _fit_predict_val_and_test(
        settings.model,
        train_set,
        val_set,
        test_set,
        train_config_for(settings.train, settings.pipeline),
        progress,
    )
    report = evaluate_scores(test_set.labels, probability, seed=settings.simulation.seed)
    calibration = fit_val_calibration(val_probability, val_set.labels)
    calibrated = calibration.apply(probability) if calibration is not None else None
    calibration_report = calibration_summary(
        test_set.labels, probability, calibrated, calibration, val_wells=len(val_set)
    )
    diagnostic = _morphology_diagnostic(settings.simulation, test_set, probability)
    per_plate = []
    for barcode in test_plates:
        on_plate = np.asarray(test_set.groups) == barcode
        per_plate.append(
            {
                "plate": barcode,
                "wells": int(on_plate.sum()),
                "accuracy": binary_metrics(
                    test_set.labels[on_plate], probability[on_plate]
                ).accuracy,
                "auc": auc_score(test_set.labels[on_plate], probability[on_plate]),
            }
        )
    summary = {
        "experiment": "plate-eval",
        "train_plates": settings.barcodes("train", settings.train_plates),
        "val_plates": settings.barcodes("val", settings.val_plates),
        "test_plates": test_plates,
        "per_plate": per_plate,
        "morphology_diagnostic": diagnostic,
        "wells_evaluated": len(test_set),
        "wells_excluded_by_qc": test_set.excluded,
        "positive_rate": float(np.mean(test_set.labels)),
        "report": report,
        "calibration": calibration_report,
        "training": info,
        "settings": asdict(settings),
    }
    return write_plate_eval_report(
        out_dir,
        summary,
        settings=settings,
        train_images=len(train_set),
        test_set=test_set,
        probability=probability,
        calibrated=calibrated,
        started=started,
    )


def _fit_predict_val_and_test(
    spec: ModelSpec,
    train_set: ImageSet,
    val_set: ImageSet,
    test_set: ImageSet,
    config: TrainConfig,
    progress: bool,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """:func:`training.experiments.common.fit_predict`, also scoring ``val_set``: the raw
    P(high) a calibration is fitted on. Returns (val P(high), test P(high), run info)."""
    model, info = fit(spec, train_set, val_set, config, progress)
    return predict(model, val_set), predict(model, test_set), info


def fit_val_calibration(probability: np.ndarray, labels: np.ndarray) -> Calibration | None:
    """The calibration fitted on the validation wells' raw P(high): ``auto`` (temperature or
    isotonic by cross-validated NLL) with enough wells, temperature alone with fewer; None
    without both classes (nothing to fit a map on)."""
    y = np.asarray(labels).astype(np.int64)
    if y.size < 2 or len(set(y.tolist())) < 2:
        logger.warning("plate-eval: validation wells hold one class only; no calibration fitted")
        return None
    raw = np.asarray(probability, dtype=np.float64)
    if y.size >= AUTO_CALIBRATION_MIN:
        return fit_calibration(raw, y, method="auto")
    return fit_calibration(raw, y, method="temperature")


def calibration_summary(
    labels: np.ndarray,
    raw: np.ndarray,
    calibrated: np.ndarray | None,
    calibration: Calibration | None,
    *,
    val_wells: int,
    bins: int = CALIBRATION_BINS,
) -> dict[str, Any]:
    """ECE and reliability table of the raw and (when fitted) calibrated test P(high)."""
    y = np.asarray(labels).astype(np.int64)
    p_raw = np.asarray(raw, dtype=np.float64)
    out: dict[str, Any] = {
        "bins": bins,
        "wells": int(y.size),
        "fitted_on": f"validation plates, {val_wells} wells (also used to stop training early)",
        "method": calibration.method if calibration is not None else None,
        "calibration": calibration.to_dict() if calibration is not None else None,
        "ece_raw": expected_calibration_error(p_raw, y, bins),
        "ece_calibrated": None,
        "reliability_raw": [b.to_dict() for b in reliability_table(p_raw, y, bins)],
        "reliability_calibrated": None,
    }
    if calibrated is not None:
        p_cal = np.asarray(calibrated, dtype=np.float64)
        out["ece_calibrated"] = expected_calibration_error(p_cal, y, bins)
        out["reliability_calibrated"] = [b.to_dict() for b in reliability_table(p_cal, y, bins)]
    result: dict[str, Any] = json_safe(out)
    return result


def _morphology_diagnostic(
    simulation: SimulationConfig, test_set: ImageSet, probability: np.ndarray
) -> dict[str, Any]:
    """How the model reads what was *rendered*, and the best any image reader could do.

    Label-noise wells (``WellTruth.morphology != label``) show the other class's cells, so no
    image classifier can get them right; scoring each well by its rendered class (ties broken
    by the hidden senescent fraction) gives the ceiling on AUC and accuracy against FCT.
    """
    truths = [well_truth(simulation, *str(name).split("/")[:2]) for name in test_set.names]
    morphology = np.asarray([t.morphology == "high" for t in truths], dtype=np.int64)
    fraction = np.asarray([t.senescent_fraction for t in truths])
    ceiling_score = morphology - 0.5 * fraction  # rendered class first, then fewer senescent
    return {
        "label_noise_wells": int(np.sum(morphology != test_set.labels)),
        "ceiling_auc": auc_score(test_set.labels, ceiling_score),
        "ceiling_accuracy": float(np.mean(morphology == test_set.labels)),
        "auc_vs_morphology": auc_score(morphology, probability),
        "accuracy_vs_morphology": binary_metrics(morphology, probability).accuracy,
    }
