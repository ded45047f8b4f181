"""(4) Grouped k-fold cross-validation on an ImageFolder dataset, with and without HSM (SSN off =
``ws=1``), paired McNemar / DeLong between the two."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from models.metrics import auc_score, binary_metrics, delong, mcnemar
from models.metrics import evaluate as evaluate_scores
from models.pipeline import PipelineConfig
from training.experiments.common import ModelSpec, fit_predict, train_config_for
from training.experiments.reports import write_cv_report
from training.imagesets import ImageSet, image_folder_set
from training.splits import grouped_kfold, grouped_split
from training.trainer import TrainConfig

logger = logging.getLogger(__name__)


def cross_validate(
    data: ImageSet,
    spec: ModelSpec,
    config: TrainConfig,
    *,
    folds: int = 5,
    seed: int = 0,
    val_fraction: float = 0.15,
    progress: bool = False,
    tta: bool = False,
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Grouped, label-stratified k-fold CV; a grouped validation split inside each fold.

    Returns per-fold rows (accuracy, AUC, sizes, epochs) and the out-of-fold P(class 1), (N,).
    """
    out_of_fold = np.full(len(data), np.nan, np.float32)
    rows: list[dict[str, Any]] = []
    for fold, (train_index, test_index) in enumerate(
        grouped_kfold(data.groups, folds, seed=seed, labels=data.labels)
    ):
        inner = data.subset(train_index)
        fit, val = grouped_split(inner.groups, (1 - val_fraction, val_fraction), seed=seed + fold)
        test_set = data.subset(test_index)
        probability, info = fit_predict(
            spec, inner.subset(fit), inner.subset(val), test_set, config, progress, tta
        )
        out_of_fold[test_index] = probability
        metrics = binary_metrics(test_set.labels, probability)
        rows.append(
            {
                "fold": fold,
                "n_train": len(fit),
                "n_val": len(val),
                "n_test": len(test_index),
                "test_groups": len(set(test_set.groups)),
                "accuracy": metrics.accuracy,
                "auc": auc_score(test_set.labels, probability),
                **info,
            }
        )
        logger.info("fold %d: acc %.3f auc %s", fold, metrics.accuracy, rows[-1]["auc"])
    return rows, out_of_fold


@dataclass
class CVSettings:
    """Settings of :func:`cv_experiment` (recorded in its summary.json)."""

    folds: int = 5
    size: int = 112  # celltype crops are 224 x 224 single cells; pipeline height = width = size
    ablation: bool = True  # also run without HSM (ws=1)
    ws: int = 9  # SSCD window of the main variant (1 = no SSN: then there is no ablation)
    k: int = 12
    seed: int = 0
    workers: int | None = None
    group_by: str | None = None
    tta: bool = False  # average test predictions over the 8 symmetries of the square input
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=25, patience=8))


def cv_experiment(
    data_dir: Path, out_dir: Path, settings: CVSettings, *, progress: bool = True
) -> dict[str, Any]:
    """Grouped k-fold CV on ``data_dir`` (ImageFolder) with HSM, and without it as ablation."""
    started = time.perf_counter()
    main = PipelineConfig(height=settings.size, width=settings.size, ws=settings.ws, k=settings.k)
    variants = {"hsm" if main.ws > 1 else "no_hsm (ws=1)": main}
    if settings.ablation and main.ws > 1:
        variants["no_hsm (ws=1)"] = replace(main, ws=1)
    rows: list[dict[str, Any]] = []
    scores: dict[str, np.ndarray] = {}
    summary_rows: list[dict[str, Any]] = []
    labels = np.zeros(0, np.int64)
    class_names: tuple[str, ...] = ()
    for variant, pipeline in variants.items():
        t0 = time.perf_counter()
        data = image_folder_set(
            data_dir,
            pipeline,
            group_by=settings.group_by,
            workers=settings.workers,
            progress=progress,
        )
        prepare_seconds = time.perf_counter() - t0
        labels, class_names = data.labels, data.class_names
        fold_rows, scores[variant] = cross_validate(
            data,
            settings.model,
            train_config_for(settings.train, pipeline),
            folds=settings.folds,
            seed=settings.seed,
            progress=progress,
            tta=settings.tta,
        )
        rows += [{"variant": variant, **row} for row in fold_rows]
        accuracy = np.array([r["accuracy"] for r in fold_rows])
        auc = np.array([r["auc"] for r in fold_rows], dtype=float)
        pooled = binary_metrics(data.labels, scores[variant])
        summary_rows.append(
            {
                "variant": variant,
                "ws": pipeline.ws,
                "k": pipeline.k if pipeline.ws > 1 else "-",
                "images": len(data),
                "groups": len(set(data.groups)),
                "accuracy mean": float(accuracy.mean()),
                "accuracy sd": float(accuracy.std(ddof=1)),
                "AUC mean": float(np.nanmean(auc)),
                "AUC sd": float(np.nanstd(auc, ddof=1)),
                "pooled OOF accuracy": pooled.accuracy,
                "pooled OOF AUC": auc_score(data.labels, scores[variant]),
                "prepare s": round(prepare_seconds, 1),
                "wall s": round(time.perf_counter() - t0, 1),
            }
        )
    paired: dict[str, Any] = {}
    if len(scores) == 2:
        (name_a, a), (name_b, b) = scores.items()
        paired = {
            "a": name_a,
            "b": name_b,
            "mcnemar": asdict(mcnemar(labels, a >= 0.5, b >= 0.5)),
            "delong": asdict(delong(labels, a, b)),
        }
    roc = {
        variant: evaluate_scores(labels, score, resamples=200, seed=settings.seed)["roc"]
        for variant, score in scores.items()
    }
    summary = {
        "experiment": "cv",
        "data": str(data_dir),
        "classes": list(class_names),
        "positive_class": class_names[1] if len(class_names) > 1 else None,
        "settings": asdict(settings),
        "pipeline": main.to_dict(),
        "summary": summary_rows,
        "paired": paired,
    }
    return write_cv_report(
        out_dir, summary, data_dir=data_dir, settings=settings, rows=rows, roc=roc, started=started
    )
