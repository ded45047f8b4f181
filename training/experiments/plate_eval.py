"""(1) Train on simulated plates, evaluate held-out 96-well plates against their FCT labels with
the seven metrics and bootstrap CIs, and an ROC curve."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from hardware.sim import SimulationConfig, well_truth
from models.metrics import auc_score, binary_metrics
from models.metrics import evaluate as evaluate_scores
from training.experiments.common import SimulatedSettings, fit_predict, train_config_for
from training.experiments.reports import write_plate_eval_report
from training.imagesets import ImageSet


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
    probability, info = fit_predict(
        settings.model,
        train_set,
        val_set,
        test_set,
        train_config_for(settings.train, settings.pipeline),
        progress,
    )
    report = evaluate_scores(test_set.labels, probability, seed=settings.simulation.seed)
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
        started=started,
    )


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
