"""The paper's experiments, runnable at small scale on a CPU: each writes CSV, Markdown and PNG.

- :func:`cv_experiment`: grouped k-fold cross-validation on an ImageFolder dataset, with and
  without HSM (SSN off = ``ws=1``), paired McNemar / DeLong between the two.
- :func:`plate_eval_experiment`: train on simulated plates, evaluate one held-out 96-well plate
  against its FCT labels with the seven metrics and bootstrap CIs, and an ROC curve.
- :func:`ws_k_grid_experiment`: accuracy over the SSCD window size WS and SSN count K.
- :func:`learning_curve_experiment`: test accuracy, training time and parameter count of each
  network against the number of training images (20..100), mean +- sd over seeds.

Everything goes under ``out_dir`` (``reports/<name>/`` from the CLI).
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from hardware.simulation import SimulationConfig, well_truth
from models.metrics import auc_score, binary_metrics, delong, evaluate, mcnemar
from models.networks import create_model, parameter_count
from models.pipeline import PipelineConfig
from training.data import ImageSet, simulated_image_set
from training.reports import (
    bar_plot,
    line_plot,
    markdown_table,
    write_csv,
    write_json,
)
from training.splits import grouped_kfold, grouped_split
from training.trainer import TrainConfig, jitter_bands, predict, train

logger = logging.getLogger(__name__)


@dataclass
class ModelSpec:
    """Which registered network to train, and its keyword options (e.g. ``base_width``)."""

    name: str = "scnn"
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``resnet18 (base_width 64)``-style name for tables and legends."""
        extras = ", ".join(f"{key} {value}" for key, value in sorted(self.options.items()))
        return f"{self.name} ({extras})" if extras else self.name


def _train_config(base: TrainConfig, pipeline: PipelineConfig) -> TrainConfig:
    in_bands = pipeline.channels or len(pipeline.bands)
    return replace(base, intensity_bands=jitter_bands(pipeline, in_bands))


def _fit_predict(
    spec: ModelSpec,
    train_set: ImageSet,
    val_set: ImageSet,
    test_set: ImageSet,
    config: TrainConfig,
    progress: bool,
    tta: bool = False,
) -> tuple[np.ndarray, dict[str, Any]]:
    model = create_model(spec.name, in_bands=int(train_set.features.shape[1]), **spec.options)
    result = train(model, train_set, val_set, config, progress=progress)
    return predict(result.model, test_set, tta=tta), {
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "train_seconds": round(result.seconds, 1),
    }


# -- (4) grouped k-fold cross-validation on an ImageFolder dataset ---------------------------


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
        probability, info = _fit_predict(
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
    from training.datasets import image_folder_set

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
            _train_config(settings.train, pipeline),
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
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out_dir / "folds.csv")
    write_csv(summary_rows, out_dir / "summary.csv")
    bar_plot(
        [r["variant"] for r in summary_rows],
        [r["accuracy mean"] for r in summary_rows],
        out_dir / "accuracy.png",
        errors=[r["accuracy sd"] for r in summary_rows],
        points=[[r["accuracy"] for r in rows if r["variant"] == v] for v in variants],
        title=f"{data_dir.name}: {settings.folds}-fold grouped CV accuracy (mean, sd, folds)",
        ylabel="accuracy",
        ylim=(0.5, 1.0),
    )
    roc = {}
    for variant, score in scores.items():
        report = evaluate(labels, score, resamples=200, seed=settings.seed)
        roc[variant] = (
            [p["fpr"] for p in report["roc"]],
            [p["tpr"] for p in report["roc"]],
        )
    line_plot(
        roc,
        out_dir / "roc.png",
        title=f"{data_dir.name}: out-of-fold ROC",
        xlabel="false positive rate",
        ylabel="TPR",
        ylim=(0.0, 1.0),
        diagonal=True,
    )
    summary = {
        "experiment": "cv",
        "data": str(data_dir),
        "classes": list(class_names),
        "positive_class": class_names[1] if len(class_names) > 1 else None,
        "settings": asdict(settings),
        "pipeline": main.to_dict(),
        "summary": summary_rows,
        "paired": paired,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    write_json(summary, out_dir / "summary.json")
    table = markdown_table(
        summary_rows,
        [
            "variant",
            "ws",
            "k",
            "images",
            "groups",
            "accuracy mean",
            "accuracy sd",
            "AUC mean",
            "AUC sd",
            "pooled OOF AUC",
            "wall s",
        ],
    )
    extra = ""
    if paired:
        extra = (
            f"\nPaired on the same out-of-fold images: McNemar p = "
            f"{paired['mcnemar']['p_value']:.3g}, DeLong p = {paired['delong']['p_value']:.3g}.\n"
        )
    (out_dir / "summary.md").write_text(
        f"# Grouped {settings.folds}-fold CV on `{data_dir.name}`\n\n"
        f"Model `{settings.model.name}` {settings.model.options or ''}, input "
        f"{settings.size} x {settings.size}, TTA {'on' if settings.tta else 'off'}, "
        f"classes {list(class_names)} (label 1 = "
        f"{class_names[1] if len(class_names) > 1 else '?'}).\n\n{table}{extra}\n"
        f"Per fold: `folds.csv`. Figures: `accuracy.png`, `roc.png`.\n"
    )
    return summary


# -- simulated plates -----------------------------------------------------------------------


@dataclass
class SimulatedSettings:
    """Simulated plates for (1)-(3); plates never straddle train / val / test."""

    train_plates: int = 3
    val_plates: int = 1
    test_plates: int = 1
    objective: str = "40x"
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=20, patience=6))
    workers: int | None = None
    wells: tuple[str, ...] | None = None  # only these wells of each plate (tests); None = all

    def barcodes(self, role: str, count: int) -> list[str]:
        return [f"SIM-{role.upper()}-{self.simulation.seed}-{i:03d}" for i in range(count)]

    def images(
        self, role: str, count: int, pipeline: PipelineConfig | None, progress: bool
    ) -> ImageSet:
        return simulated_image_set(
            self.barcodes(role, count),
            sim=self.simulation,
            pipeline=pipeline or self.pipeline,
            objective=self.objective,
            wells=self.wells,
            workers=self.workers,
            progress=progress,
        )


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
    probability, info = _fit_predict(
        settings.model,
        train_set,
        val_set,
        test_set,
        _train_config(settings.train, settings.pipeline),
        progress,
    )
    report = evaluate(test_set.labels, probability, seed=settings.simulation.seed)
    diagnostic = _morphology_diagnostic(settings.simulation, test_set, probability)
    metric_rows = [
        {
            "metric": name,
            "value": value,
            "ci95 low": report["ci95"][name][0],
            "ci95 high": report["ci95"][name][1],
        }
        for name, value in report["metrics"].items()
        if name in report["ci95"]
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(metric_rows, out_dir / "metrics.csv")
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
    write_csv(per_plate, out_dir / "plates.csv")
    write_csv(
        [
            {
                "plate": str(name).split("/")[0],
                "well": str(name).split("/")[1],
                "fct_label": "high" if label else "low",
                "p_high": float(p),
                "call": "high" if p >= 0.5 else "low",
            }
            for name, label, p in zip(test_set.names, test_set.labels, probability, strict=True)
        ],
        out_dir / "wells.csv",
    )
    line_plot(
        {
            "SCNN" if settings.model.name == "scnn" else settings.model.name: (
                [p["fpr"] for p in report["roc"]],
                [p["tpr"] for p in report["roc"]],
            )
        },
        out_dir / "roc.png",
        title=f"{len(test_plates)} held-out plate(s), {len(test_set)} wells: ROC vs FCT",
        xlabel="false positive rate (1 - specificity)",
        ylabel="TPR",
        ylim=(0.0, 1.0),
        diagonal=True,
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
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    write_json(summary, out_dir / "summary.json")
    counts = report["metrics"]
    (out_dir / "summary.md").write_text(
        f"# Held-out simulated plates vs FCT\n\n"
        f"Trained on {settings.train_plates} simulated plates ({len(train_set)} wells), "
        f"validated on {settings.val_plates}; tested on {', '.join(test_plates)}: "
        f"{len(test_set)} wells evaluated ({test_set.excluded} excluded by QC). "
        f"Confusion: TP {counts['tp']}, TN {counts['tn']}, "
        f"FP {counts['fp']}, FN {counts['fn']}.\n\n"
        + markdown_table(metric_rows)
        + "\n95 % percentile bootstrap over wells (all test plates pooled).\n\n"
        + "What the images allow (simulator only; `morphology_diagnostic` in summary.json): "
        f"{diagnostic['label_noise_wells']} of these wells are label-noise wells, rendered "
        "with the other class's morphology. A perfect reader of the rendered class (ranking by "
        "the hidden senescent fraction within it) would score AUC "
        f"{diagnostic['ceiling_auc']:.3f} and accuracy {diagnostic['ceiling_accuracy']:.3f} "
        "against FCT here: the ceiling. Against the rendered class itself the model scores "
        f"AUC {diagnostic['auc_vs_morphology']:.3f}, accuracy "
        f"{diagnostic['accuracy_vs_morphology']:.3f}.\n\n"
        + "Per plate:\n\n"
        + markdown_table(per_plate)
        + "\nPer well: `wells.csv`; per plate: `plates.csv`; figure: `roc.png`.\n"
    )
    return summary


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


def ws_k_grid_experiment(
    out_dir: Path,
    settings: SimulatedSettings,
    *,
    ws_values: Sequence[int] = (1, 5, 9),
    k_values: Sequence[int] = (4, 12),
    progress: bool = True,
) -> dict[str, Any]:
    """Test accuracy / AUC on held-out simulated plates for each valid (WS, K); ws=1 = no SSN."""
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for ws in ws_values:
        for k in k_values if ws > 1 else k_values[:1]:
            if ws > 1 and k > ws * ws - 1:
                continue
            t0 = time.perf_counter()
            pipeline = replace(settings.pipeline, ws=ws, k=k)
            train_set = settings.images("train", settings.train_plates, pipeline, progress)
            val_set = settings.images("val", settings.val_plates, pipeline, progress)
            test_set = settings.images("test", settings.test_plates, pipeline, progress)
            probability, info = _fit_predict(
                settings.model,
                train_set,
                val_set,
                test_set,
                _train_config(settings.train, pipeline),
                progress,
            )
            rows.append(
                {
                    "ws": ws,
                    "k": k if ws > 1 else "-",
                    "test_images": len(test_set),
                    "accuracy": binary_metrics(test_set.labels, probability).accuracy,
                    "auc": auc_score(test_set.labels, probability),
                    **info,
                    "wall_s": round(time.perf_counter() - t0, 1),
                }
            )
            logger.info("ws %d k %d: %s", ws, k, rows[-1])
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out_dir / "grid.csv")
    grid_plot(rows, k_values, out_dir / "accuracy.png")
    intro = (
        f"# WS x K grid on simulated plates\n\n{settings.train_plates} train / "
        f"{settings.val_plates} val / {settings.test_plates} test plates; one seed."
    )
    return _write_summary(out_dir, "ws-k-grid", rows, settings, started, intro, "accuracy.png")


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


def grid_plot(rows: Sequence[dict[str, Any]], k_values: Sequence[int], path: Path) -> Path:
    """Accuracy over K, one line per WS; WS 1 (no SSN, K unused) as a flat reference line."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for row in rows:
        if int(row["ws"]) == 1:
            series["ws=1 (no SSN)"] = (
                list(map(float, k_values)),
                [float(row["accuracy"])] * len(k_values),
            )
        else:
            xs, ys = series.setdefault(f"ws={row['ws']}", ([], []))
            xs.append(float(row["k"]))
            ys.append(float(row["accuracy"]))
    return line_plot(
        series,
        path,
        title="held-out simulated plates: accuracy over WS and K",
        xlabel="K (number of SSNs)",
        ylabel="accuracy",
        # A fixed, not fitted, range: one well of 184 is 0.005, and a fitted axis would make
        # differences of a few wells look like a trend.
        ylim=(0.8, 1.0),
        legend_bottom=True,
    )


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
                config = _train_config(replace(settings.train, seed=seed), settings.pipeline)
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


def write_learning_curve_report(
    out_dir: Path,
    rows: Sequence[dict[str, Any]],
    *,
    description: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Aggregate table (CSV + Markdown), ``accuracy.png``, ``seconds.png`` and summary.json
    from the per-run ``rows`` of a learning curve (also a partial one read back from CSV)."""
    aggregate = _learning_curve_table(rows)
    labels = list(dict.fromkeys(str(r["model"]) for r in rows))

    def series(metric: str) -> dict[str, tuple[list[float], list[float]]]:
        return {
            label: (
                [float(r["train_images"]) for r in aggregate if r["model"] == label],
                [float(r[f"{metric} mean"]) for r in aggregate if r["model"] == label],
            )
            for label in labels
        }

    def spread(metric: str) -> dict[str, list[float]]:
        return {
            label: [float(r[f"{metric} sd"]) for r in aggregate if r["model"] == label]
            for label in labels
        }

    out_dir.mkdir(parents=True, exist_ok=True)
    line_plot(
        series("accuracy"),
        out_dir / "accuracy.png",
        title="held-out simulated plates: accuracy vs training images (mean +- sd over seeds)",
        xlabel="training images",
        ylabel="accuracy",
        errors=spread("accuracy"),
        legend_bottom=True,
    )
    devices = sorted({str(r["device"]) for r in rows})
    slowest = max(float(r["train_seconds mean"]) for r in aggregate)
    line_plot(
        series("train_seconds"),
        out_dir / "seconds.png",
        title=f"training time on {', '.join(devices)} (mean over seeds)",
        xlabel="training images",
        ylabel="seconds",
        ylim=(0.0, 1.35 * slowest),  # from zero, with headroom for the legend
    )
    summary = {
        "experiment": "learning-curve",
        "description": description,
        "devices": devices,
        "rows": list(rows),
        "aggregate": aggregate,
        **(extra or {}),
    }
    write_json(summary, out_dir / "summary.json")
    write_csv(aggregate, out_dir / "summary.csv")
    (out_dir / "summary.md").write_text(
        "# Learning curve on simulated plates\n\n"
        f"{description} Trained on {', '.join(devices)}.\n\n"
        + markdown_table(aggregate)
        + "\nPer run: `curve.csv`. Figures: `accuracy.png`, `seconds.png`.\n"
    )
    return summary


def read_learning_curve_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``curve.csv`` with numbers as numbers (for rebuilding a report)."""
    integers = ("parameters", "train_images", "seed", "best_epoch", "epochs_run")
    floats = ("accuracy", "auc", "train_seconds")
    with path.open(newline="") as handle:
        rows: list[dict[str, Any]] = list(csv.DictReader(handle))
    if not rows:
        raise ValueError(f"{path} holds no runs")
    missing = set(integers + floats + ("model", "device")) - set(rows[0])
    if missing:
        raise ValueError(f"{path} is not a learning-curve CSV: no column(s) {sorted(missing)}")
    for row in rows:
        row.update({key: int(row[key]) for key in integers})
        row.update({key: float(row[key]) for key in floats})
    return rows


def _learning_curve_table(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sd over seeds per (model, size), in first-seen model order."""
    table: list[dict[str, Any]] = []
    models = list(dict.fromkeys(r["model"] for r in rows))
    for label in models:
        for size in sorted({r["train_images"] for r in rows if r["model"] == label}):
            runs = [r for r in rows if r["model"] == label and r["train_images"] == size]
            entry: dict[str, Any] = {
                "model": label,
                "parameters": runs[0]["parameters"],
                "train_images": size,
                "seeds": len(runs),
            }
            for metric in ("accuracy", "auc", "train_seconds"):
                values = np.asarray([float(r[metric]) for r in runs], dtype=float)
                entry[f"{metric} mean"] = round(float(np.nanmean(values)), 4)
                entry[f"{metric} sd"] = (
                    round(float(np.nanstd(values, ddof=1)), 4) if len(runs) > 1 else 0.0
                )
            table.append(entry)
    return table


def _write_summary(
    out_dir: Path,
    experiment: str,
    rows: list[dict[str, Any]],
    settings: Any,
    started: float,
    intro: str,
    figure: str,
) -> dict[str, Any]:
    """``summary.json`` (rows, settings, wall time) and ``summary.md`` (intro, table, figure)."""
    summary = {
        "experiment": experiment,
        "rows": rows,
        "settings": asdict(settings),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    write_json(summary, out_dir / "summary.json")
    (out_dir / "summary.md").write_text(
        f"{intro}\n\n" + markdown_table(rows) + f"\nFigure: `{figure}`.\n"
    )
    return summary
