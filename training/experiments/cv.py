"""(4) Grouped k-fold cross-validation on an ImageFolder dataset: the chosen recipe against the
references, on the same folds, over one or more seeds.

Every run reports, side by side and on the same folds of the same seeds:

- ``default``: the recipe of :class:`CVSettings` (the plain CNN on standardised pixels at
  48 x 48, keep-last cosine, label smoothing 0.1, an EMA of the weights, test-time
  augmentation; docs/experiments.md section 5 has how it and each lever fared on celltype);
- ``plaincnn``: the reference CNN of issue 13 (3 VGG-style blocks 32-64-128, BatchNorm,
  per-image standardised pixels at 48 x 48, 30 epochs OneCycle AdamW, flips and quarter turns);
- ``logreg``: the floor, logistic regression on downsampled per-image standardised pixels;
- optionally the old default (SCNN on the mean-V + CLAHE + HSM bands, ``legacy``) and further
  registered networks (``extra_models``, e.g. ResNet-18 / VGG-11) with the default's recipe.

Paired McNemar (calls) and DeLong (AUC) tests compare the default with each other arm on the
out-of-fold predictions of the first seed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from models.metrics import auc_score, binary_metrics, delong, mcnemar
from models.metrics import evaluate as evaluate_scores
from models.pipeline import PipelineConfig
from models.pipeline.config import IntensityMethod
from training.experiments.common import ModelSpec, fit_predict, train_config_for
from training.experiments.reports import write_cv_report
from training.imagesets import ImageSet, image_folder_set
from training.splits import grouped_kfold, grouped_split
from training.trainer import TrainConfig

logger = logging.getLogger(__name__)

# The logistic-regression floor sees every image area-downsampled to this many pixels a side.
LOGREG_SIZE = 24


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

    ``seed`` draws the folds and the validation splits; ``config.seed`` seeds the training.
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
        rows.append(_fold_row(fold, len(fit), len(val), test_set, probability, info))
        logger.info("fold %d: acc %.3f auc %s", fold, rows[-1]["accuracy"], rows[-1]["auc"])
    return rows, out_of_fold


def _fold_row(
    fold: int,
    n_train: int,
    n_val: int,
    test_set: ImageSet,
    probability: np.ndarray,
    info: dict[str, Any],
) -> dict[str, Any]:
    return {
        "fold": fold,
        "n_train": n_train,
        "n_val": n_val,
        "n_test": len(test_set),
        "test_groups": len(set(test_set.groups)),
        "accuracy": binary_metrics(test_set.labels, probability).accuracy,
        "auc": auc_score(test_set.labels, probability),
        **info,
    }


def pixel_features(data: ImageSet, size: int = LOGREG_SIZE) -> np.ndarray:
    """(N, B * s * s) float32: every band area-downsampled to ``s`` = min(size, H, W) a side and
    standardised per image and band, flattened (the input of the logistic-regression floor)."""
    n, b, h, w = data.features.shape
    side = min(size, h, w)
    out = np.empty((n, b, side, side), np.float32)
    for i in range(n):
        for c in range(b):
            plane = cv2.resize(data.features[i, c], (side, side), interpolation=cv2.INTER_AREA)
            out[i, c] = (plane - plane.mean()) / max(float(plane.std()), 1e-6)
    return out.reshape(n, -1)


def logreg_cross_validate(
    data: ImageSet, *, folds: int = 5, seed: int = 0, c: float = 0.01
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """The pixel floor on the folds of :func:`cross_validate` (same ``seed``, same folds):
    L2 logistic regression (scikit-learn, balanced class weights, ``C`` = ``c``) on
    :func:`pixel_features`, fitted on each fold's training part."""
    from sklearn.linear_model import LogisticRegression  # the `train` extra

    pixels = pixel_features(data)
    out_of_fold = np.full(len(data), np.nan, np.float32)
    rows: list[dict[str, Any]] = []
    for fold, (train_index, test_index) in enumerate(
        grouped_kfold(data.groups, folds, seed=seed, labels=data.labels)
    ):
        t0 = time.perf_counter()
        model = LogisticRegression(C=c, class_weight="balanced", max_iter=2000)
        model.fit(pixels[train_index], data.labels[train_index])
        probability = model.predict_proba(pixels[test_index])[:, 1].astype(np.float32)
        out_of_fold[test_index] = probability
        info = {"train_seconds": round(time.perf_counter() - t0, 1)}
        rows.append(
            _fold_row(fold, len(train_index), 0, data.subset(test_index), probability, info)
        )
    return rows, out_of_fold


def _default_train() -> TrainConfig:
    """The default arm's recipe (docs/experiments.md, section 5): 30 epochs, keep the last
    weights (the validation split is too small to pick an epoch by), cosine, label smoothing
    0.1 and an EMA of the weights (decay 0.99); with TTA, the best 3-seed figure of the
    ablation (plain CNN on standardised pixels)."""
    return TrainConfig(
        epochs=30,
        patience=8,
        restore_best=False,
        validate_every=10,
        label_smoothing=0.1,
        ema_decay=0.99,
    )


def _reference_train() -> TrainConfig:
    """The issue's plain-CNN recipe: 30 epochs, OneCycle AdamW, flips and quarter turns."""
    return TrainConfig(
        epochs=30, patience=8, restore_best=False, schedule="onecycle", validate_every=10
    )


@dataclass
class CVSettings:
    """Settings of :func:`cv_experiment` (recorded in its summary.json).

    These are the `experiment cv` defaults (chosen on the celltype runs of docs/experiments.md
    section 5), not TrainConfig's or PipelineConfig's, which ``mscreen train`` keeps.
    """

    folds: int = 5
    size: int = 48  # pipeline height = width (celltype crops are 224 x 224 single cells)
    # "standardise" (the default: the plain CNN's best recipe used it) keeps what the 8-bit view
    # throws away; "auto": "standardise" for files with more than 8 bits or two or more
    # channels, "mean_v_clahe" for 8-bit grey / colour files (equal for the SCNN on celltype).
    preprocess: IntensityMethod | Literal["auto"] = "standardise"
    ws: int = 1  # SSCD window of the default arm (mean_v_clahe only; 1 = no SSN)
    k: int = 12
    seed: int = 0  # first seed: folds, validation splits and training
    seeds: int = 1  # run seeds seed .. seed + seeds - 1 and report mean +- sd over them
    workers: int | None = None
    group_by: str | None = None
    bit_depth: int | None = None  # significant bits of 16-bit files (None: metadata / inferred)
    channels: tuple[int, ...] | None = None  # 0-based channels to use (None: all)
    tta: bool = True  # average test predictions over the 8 symmetries of the square input
    model: ModelSpec = field(default_factory=lambda: ModelSpec("plaincnn"))
    train: TrainConfig = field(default_factory=_default_train)
    references: bool = True  # also run the plain CNN and the logistic-regression floor
    reference_model: ModelSpec = field(default_factory=lambda: ModelSpec("plaincnn"))
    reference_train: TrainConfig = field(default_factory=_reference_train)
    reference_size: int = 48  # the plain-CNN input (48 x 48)
    # Seeds of the plain CNN (None: all ``seeds``); it costs ~4x the default arm on a CPU.
    reference_seeds: int | None = None
    legacy: bool = False  # also run the old default: SCNN on HSM bands (ws 9, k 12), 112 px
    extra_models: list[ModelSpec] = field(default_factory=list)  # with the default's recipe


@dataclass
class _Arm:
    name: str
    pipeline: PipelineConfig
    spec: ModelSpec | None  # None = the logistic-regression floor
    train: TrainConfig
    tta: bool
    seeds: int | None = None  # None: all of the run's seeds


def _base_pipeline(settings: CVSettings, data_dir: Path) -> PipelineConfig:
    """The default arm's pipeline: band_source "channels" when the files (or the chosen
    channels) have two or more channels; "auto" preprocessing resolved from the files."""
    from training.imagesets.folder import folder_image_info

    info = folder_image_info(data_dir)
    if settings.channels is not None:
        channel_count = len(settings.channels)
    else:
        channel_count = 1 if info.colour else int(info.channels)
    multi = channel_count >= 2
    preprocess = settings.preprocess
    if preprocess == "auto":
        deep = info.dtype != "uint8"
        preprocess = "standardise" if deep or multi else "mean_v_clahe"
        logger.info(
            "preprocess auto -> %s (%s, %d channel(s))", preprocess, info.dtype, channel_count
        )
    standardise = preprocess == "standardise"
    if standardise and settings.ws != 1:
        raise ValueError(
            f"ws={settings.ws} (SSN) needs the mean_v_clahe preprocessing; these files get "
            "'standardise' (pass --preprocess mean_v_clahe, or --ws 1)"
        )
    return PipelineConfig(
        height=settings.size,
        width=settings.size,
        intensity=preprocess,
        ws=1 if standardise else settings.ws,
        k=settings.k,
        band_source="channels" if multi else "filter_bank",
        channels=channel_count if multi else None,
    )


def _arms(settings: CVSettings, main: PipelineConfig) -> list[_Arm]:
    arms = [_Arm("default", main, settings.model, settings.train, settings.tta)]
    side = settings.reference_size
    standardised = replace(main, intensity="standardise", ws=1, height=side, width=side)
    if settings.references:
        arms.append(
            _Arm(
                "plaincnn (reference)",
                standardised,
                settings.reference_model,
                settings.reference_train,
                False,
                settings.reference_seeds,
            )
        )
        arms.append(_Arm("logreg (pixel floor)", standardised, None, settings.train, False))
    for spec in settings.extra_models:
        arms.append(_Arm(spec.label, main, spec, settings.train, settings.tta))
    if settings.legacy:
        legacy = replace(main, intensity="mean_v_clahe", height=112, width=112, ws=9, k=12)
        arms.append(
            _Arm(
                "scnn+hsm (old default)",
                legacy,
                ModelSpec("scnn"),
                TrainConfig(epochs=25, patience=8),
                False,
            )
        )
    return arms


def cv_experiment(
    data_dir: Path, out_dir: Path, settings: CVSettings, *, progress: bool = True
) -> dict[str, Any]:
    """Grouped k-fold CV on ``data_dir`` (ImageFolder): the default recipe and the references on
    the same folds, ``settings.seeds`` seeds; writes the report (see :func:`write_cv_report`)."""
    started = time.perf_counter()
    main = _base_pipeline(settings, data_dir)
    arms = _arms(settings, main)
    sets: dict[PipelineConfig, tuple[ImageSet, float]] = {}
    rows: list[dict[str, Any]] = []
    first_scores: dict[str, np.ndarray] = {}
    summary_rows: list[dict[str, Any]] = []
    labels = np.zeros(0, np.int64)
    class_names: tuple[str, ...] = ()
    seeds = [settings.seed + i for i in range(settings.seeds)]
    for arm in arms:
        if arm.pipeline not in sets:
            t0 = time.perf_counter()
            loaded = image_folder_set(
                data_dir,
                arm.pipeline,
                group_by=settings.group_by,
                bit_depth=settings.bit_depth,
                channels=list(settings.channels) if settings.channels is not None else None,
                workers=settings.workers,
                progress=progress,
            )
            sets[arm.pipeline] = (loaded, time.perf_counter() - t0)
        data, prepare_seconds = sets[arm.pipeline]
        labels, class_names = data.labels, data.class_names
        t0 = time.perf_counter()
        per_seed: list[dict[str, float | None]] = []
        fold_rows: list[dict[str, Any]] = []
        for seed in seeds[: arm.seeds]:
            if arm.spec is None:
                seed_rows, scores = logreg_cross_validate(data, folds=settings.folds, seed=seed)
            else:
                config = train_config_for(
                    replace(arm.train, seed=seed), arm.pipeline, int(data.features.shape[1])
                )
                seed_rows, scores = cross_validate(
                    data, arm.spec, config, folds=settings.folds, seed=seed, tta=arm.tta
                )
            first_scores.setdefault(arm.name, scores)
            fold_rows += [{"seed": seed, **row} for row in seed_rows]
            per_seed.append(
                {
                    "accuracy": float(np.mean([r["accuracy"] for r in seed_rows])),
                    "auc": float(np.nanmean([r["auc"] for r in seed_rows])),
                    "pooled_auc": auc_score(data.labels, scores),
                }
            )
            logger.info("%s seed %d: %s", arm.name, seed, per_seed[-1])
        rows += [{"variant": arm.name, **row} for row in fold_rows]
        summary_rows.append(
            _summary_row(arm, data, fold_rows, per_seed, prepare_seconds, time.perf_counter() - t0)
        )
    paired = _paired(labels, first_scores)
    roc = {
        name: evaluate_scores(labels, score, resamples=200, seed=settings.seed)["roc"]
        for name, score in first_scores.items()
    }
    summary = {
        "experiment": "cv",
        "data": str(data_dir),
        "classes": list(class_names),
        "positive_class": class_names[1] if len(class_names) > 1 else None,
        # What the files held, as read (the default arm's set): the bit depth used and where it
        # came from (metadata, --bit-depth, or inferred from the folder), channels, exclusions.
        "files": {
            "bit_depth": sets[main][0].bit_depth,
            "bit_depth_source": sets[main][0].bit_depth_source,
            "channels": sets[main][0].channels,
            "excluded_by_qc": sets[main][0].excluded,
            "excluded_by_reason": dict(sets[main][0].excluded_by_reason),
        },
        "settings": asdict(settings),
        "seeds": seeds,
        "pipeline": main.to_dict(),
        "arms": {
            arm.name: {
                "model": arm.spec.label if arm.spec else "logistic regression",
                "pipeline": arm.pipeline.to_dict(),
                "train": asdict(arm.train),
                "tta": arm.tta,
            }
            for arm in arms
        },
        "summary": summary_rows,
        "paired": paired,
    }
    return write_cv_report(
        out_dir, summary, data_dir=data_dir, settings=settings, rows=rows, roc=roc, started=started
    )


def _summary_row(
    arm: _Arm,
    data: ImageSet,
    fold_rows: list[dict[str, Any]],
    per_seed: list[dict[str, float | None]],
    prepare_seconds: float,
    seconds: float,
) -> dict[str, Any]:
    """One arm's line: mean +- sd over seeds of the per-seed mean accuracy (sd 0 for one seed),
    the sd over all folds, AUC, and the first seed's pooled out-of-fold AUC."""
    seed_accuracy = np.array([s["accuracy"] for s in per_seed], dtype=float)
    fold_accuracy = np.array([r["accuracy"] for r in fold_rows])
    auc = np.array([r["auc"] for r in fold_rows], dtype=float)
    return {
        "variant": arm.name,
        "model": arm.spec.label if arm.spec else "logistic regression",
        "preprocess": arm.pipeline.intensity,
        "size": arm.pipeline.height,
        "ws": arm.pipeline.ws,
        "images": len(data),
        "groups": len(set(data.groups)),
        "seeds": len(per_seed),
        "accuracy mean": float(seed_accuracy.mean()),
        "accuracy sd (seeds)": float(seed_accuracy.std(ddof=1)) if len(per_seed) > 1 else 0.0,
        "accuracy sd": float(fold_accuracy.std(ddof=1)) if len(fold_accuracy) > 1 else 0.0,
        "AUC mean": float(np.nanmean(auc)),
        "AUC sd": float(np.nanstd(auc, ddof=1)) if len(auc) > 1 else 0.0,
        "pooled OOF AUC": per_seed[0]["pooled_auc"],
        "per-seed accuracy": [round(float(s["accuracy"] or 0.0), 4) for s in per_seed],
        "prepare s": round(prepare_seconds, 1),
        "wall s": round(seconds, 1),
    }


def _paired(labels: np.ndarray, scores: dict[str, np.ndarray]) -> dict[str, Any]:
    """McNemar and DeLong of the default against every other arm (first seed's predictions)."""
    if "default" not in scores:
        return {}
    a = scores["default"]
    return {
        name: {
            "a": "default",
            "b": name,
            "mcnemar": asdict(mcnemar(labels, a >= 0.5, b >= 0.5)),
            "delong": asdict(delong(labels, a, b)),
        }
        for name, b in scores.items()
        if name != "default"
    }
