"""(2) Test accuracy, training time and parameter count of each network against the number of
training images (20..100), mean +- sd over seeds (the paper's Fig. 5a-c)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from models.metrics import auc_score, binary_metrics
from models.networks import create_model, parameter_count
from training.experiments.common import ModelSpec, SimulatedSettings, train_config_for
from training.experiments.reports import write_learning_curve_report
from training.reports import write_csv
from training.trainer import predict, train

logger = logging.getLogger(__name__)

LEARNING_CURVE_SIZES = (20, 30, 40, 50, 60, 70, 80, 90, 100)


def balanced_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """A seeded order of all indices that alternates the two classes while both last.

    Its first ``n`` entries are a class-balanced sample of ``n`` (as near as the pool allows),
    and samples of growing ``n`` are nested, as in a real learning curve where more images are
    added to those already labelled.
    """
    rng = np.random.default_rng(seed)
    by_class = [rng.permutation(np.flatnonzero(labels == c)).tolist() for c in (1, 0)]
    order: list[int] = []
    while by_class[0] or by_class[1]:
        for members in by_class:
            if members:
                order.append(members.pop(0))
    return np.asarray(order, dtype=np.int64)


def learning_curve_experiment(
    out_dir: Path,
    settings: SimulatedSettings,
    *,
    sizes: Sequence[int] = LEARNING_CURVE_SIZES,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    models: Sequence[ModelSpec] = (ModelSpec(),),
    progress: bool = True,
) -> dict[str, Any]:
    """Held-out accuracy / AUC, training time and size for each network against the number of
    training images (the paper's Fig. 5a-c).

    For each seed, one class-balanced order of the training-plate pool is drawn and every size
    takes its first ``n`` images, so sizes are nested and every network sees the same images.
    Validation (early stopping) and test plates are fixed. ``curve.csv`` is rewritten after each
    run, so an interrupted run keeps what it finished.
    """
    started = time.perf_counter()
    pool = settings.images("train", settings.train_plates, None, progress)
    if max(sizes) > len(pool):
        raise ValueError(
            f"the largest size ({max(sizes)}) exceeds the {len(pool)} images of "
            f"{settings.train_plates} training plate(s): raise --train-plates"
        )
    val_set = settings.images("val", settings.val_plates, None, progress)
    test_set = settings.images("test", settings.test_plates, None, progress)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    total = len(seeds) * len(sizes) * len(models)
    for seed in seeds:
        order = balanced_order(pool.labels, seed)
        for size in sizes:
            train_set = pool.subset(np.sort(order[:size]))
            for spec in models:
                config = train_config_for(replace(settings.train, seed=seed), settings.pipeline)
                model = create_model(
                    spec.name, in_bands=int(pool.features.shape[1]), **spec.options
                )
                result = train(model, train_set, val_set, config, progress=False)
                probability = predict(result.model, test_set)
                rows.append(
                    {
                        "model": spec.label,
                        "parameters": parameter_count(model),
                        "train_images": size,
                        "seed": seed,
                        "accuracy": binary_metrics(test_set.labels, probability).accuracy,
                        "auc": auc_score(test_set.labels, probability),
                        "best_epoch": result.best_epoch,
                        "epochs_run": len(result.history),
                        "train_seconds": round(result.seconds, 2),
                        "device": str(next(result.model.parameters()).device),
                    }
                )
                write_csv(rows, out_dir / "curve.csv")
                logger.info("learning curve run %d/%d: %s", len(rows), total, rows[-1])

    description = (
        f"Training images drawn class-balanced and nested from {settings.train_plates} plate(s) "
        f"({len(pool)} images); early stopping on {settings.val_plates} validation plate(s) "
        f"({len(val_set)} images); test on {settings.test_plates} held-out plate(s) "
        f"({len(test_set)} images). Seeds {list(seeds)}."
    )
    return write_learning_curve_report(
        out_dir,
        rows,
        description=description,
        extra={
            "settings": asdict(settings),
            "sizes": list(sizes),
            "seeds": list(seeds),
            "test_images": len(test_set),
            "val_images": len(val_set),
            "wall_seconds": round(time.perf_counter() - started, 1),
        },
    )
