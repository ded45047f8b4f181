"""What each experiment writes under ``out_dir``: CSV, Markdown, ``summary.json`` and PNG figures.

The generic writers and plots (CSV, Markdown tables, line / bar / ROC plots) are
:mod:`training.reports`; this module lays out each experiment's report with them.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from training.reports import (
    bar_plot,
    line_plot,
    markdown_table,
    roc_plot,
    write_csv,
    write_json,
)

if TYPE_CHECKING:
    from training.experiments.common import SimulatedSettings
    from training.experiments.cv import CVSettings
    from training.imagesets import ImageSet

RocCurves = Mapping[str, Sequence[Mapping[str, float]]]


def _wall_seconds(started: float) -> float:
    return round(time.perf_counter() - started, 1)


# -- cv ----------------------------------------------------------------------------------------


def write_cv_report(
    out_dir: Path,
    summary: dict[str, Any],
    *,
    data_dir: Path,
    settings: CVSettings,
    rows: Sequence[Mapping[str, Any]],
    roc: RocCurves,
    started: float,
) -> dict[str, Any]:
    """``folds.csv``, ``summary.csv``, ``accuracy.png``, ``roc.png``, ``summary.json`` and
    ``summary.md`` of a CV run; returns ``summary`` with its ``wall_seconds``.

    ``summary`` holds the run's ``summary`` rows (one per arm), ``paired`` tests (the default
    against each other arm) and ``classes``; ``rows`` are the per-fold rows; ``roc`` the
    out-of-fold ROC points per arm.
    """
    summary_rows = summary["summary"]
    paired = summary["paired"]
    class_names = summary["classes"]
    variants = [r["variant"] for r in summary_rows]
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out_dir / "folds.csv")
    write_csv(summary_rows, out_dir / "summary.csv")
    bar_plot(
        variants,
        [r["accuracy mean"] for r in summary_rows],
        out_dir / "accuracy.png",
        errors=[r["accuracy sd"] for r in summary_rows],
        points=[[r["accuracy"] for r in rows if r["variant"] == v] for v in variants],
        title=f"{data_dir.name}: {settings.folds}-fold grouped CV accuracy (mean, sd, folds)",
        ylabel="accuracy",
        ylim=(0.5, 1.0),
    )
    roc_plot(roc, out_dir / "roc.png", title=f"{data_dir.name}: out-of-fold ROC")
    summary = {**summary, "wall_seconds": _wall_seconds(started)}
    write_json(summary, out_dir / "summary.json")
    table = markdown_table(
        summary_rows,
        [
            "variant",
            "model",
            "preprocess",
            "size",
            "seeds",
            "accuracy mean",
            "accuracy sd (seeds)",
            "accuracy sd",
            "AUC mean",
            "pooled OOF AUC",
            "wall s",
        ],
    )
    extra = "".join(
        f"\n`default` vs `{name}`, paired on the same out-of-fold images (first seed): "
        f"McNemar p = {test['mcnemar']['p_value']:.3g}, DeLong p = {test['delong']['p_value']:.3g}."
        for name, test in paired.items()
    )
    default = summary.get("arms", {}).get("default", {})
    (out_dir / "summary.md").write_text(
        f"# Grouped {settings.folds}-fold CV on `{data_dir.name}`\n\n"
        f"Default arm: model `{default.get('model', settings.model.label)}`, preprocessing "
        f"`{settings.preprocess}`, input {settings.size} x {settings.size}, TTA "
        f"{'on' if settings.tta else 'off'}; seeds {summary.get('seeds')}; classes "
        f"{list(class_names)} (label 1 = {class_names[1] if len(class_names) > 1 else '?'}).\n"
        f"`accuracy mean` is the mean over seeds of each seed's mean fold accuracy, `accuracy "
        f"sd (seeds)` its sd over seeds, `accuracy sd` the sd over all folds of all seeds.\n\n"
        f"{table}\n{extra}\n\n"
        f"Per fold: `folds.csv`. Figures: `accuracy.png`, `roc.png` (first seed).\n"
    )
    return summary


# -- plate-eval --------------------------------------------------------------------------------


def write_plate_eval_report(
    out_dir: Path,
    summary: dict[str, Any],
    *,
    settings: SimulatedSettings,
    train_images: int,
    test_set: ImageSet,
    probability: np.ndarray,
    started: float,
    calibrated: np.ndarray | None = None,
) -> dict[str, Any]:
    """``metrics.csv``, ``plates.csv``, ``wells.csv``, ``reliability.csv``, ``roc.png``,
    ``summary.json`` and ``summary.md`` of a held-out plate evaluation; returns ``summary`` with
    its ``wall_seconds``.

    ``summary`` holds the pooled ``report`` (metrics, CIs, ROC), ``per_plate`` rows,
    ``test_plates``, the ``morphology_diagnostic`` and (optional) ``calibration`` (ECE and
    reliability tables, raw and calibrated); ``probability`` is the raw P(high) per test well,
    ``calibrated`` the calibrated one (None: no calibration fitted).
    """
    report = summary["report"]
    per_plate = summary["per_plate"]
    test_plates = summary["test_plates"]
    diagnostic = summary["morphology_diagnostic"]
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
    write_csv(per_plate, out_dir / "plates.csv")
    write_csv(
        [
            {
                "plate": str(name).split("/")[0],
                "well": str(name).split("/")[1],
                "fct_label": "high" if label else "low",
                "p_high": float(p),
                "call": "high" if p >= 0.5 else "low",
                **({"p_high_calibrated": float(calibrated[i])} if calibrated is not None else {}),
            }
            for i, (name, label, p) in enumerate(
                zip(test_set.names, test_set.labels, probability, strict=True)
            )
        ],
        out_dir / "wells.csv",
    )
    calibration = summary.get("calibration")
    calibration_text = ""
    if calibration:
        write_csv(_reliability_rows(calibration), out_dir / "reliability.csv")
        calibration_text = _calibration_markdown(calibration)
    roc_plot(
        {"SCNN" if settings.model.name == "scnn" else settings.model.name: report["roc"]},
        out_dir / "roc.png",
        title=f"{len(test_plates)} held-out plate(s), {len(test_set)} wells: ROC vs FCT",
        xlabel="false positive rate (1 - specificity)",
    )
    summary = {**summary, "wall_seconds": _wall_seconds(started)}
    write_json(summary, out_dir / "summary.json")
    counts = report["metrics"]
    (out_dir / "summary.md").write_text(
        f"# Held-out simulated plates vs FCT\n\n"
        f"Trained on {settings.train_plates} simulated plates ({train_images} wells), "
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
        + calibration_text
        + "Per plate:\n\n"
        + markdown_table(per_plate)
        + "\nPer well: `wells.csv`; per plate: `plates.csv`; figure: `roc.png`"
        + ("; reliability: `reliability.csv`" if calibration else "")
        + ".\n"
    )
    return summary


def _reliability_rows(calibration: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per P(high) bin: count, mean P(high) and fraction FCT-high, raw and calibrated."""
    raw = calibration["reliability_raw"]
    calibrated = calibration.get("reliability_calibrated") or [None] * len(raw)
    rows = []
    for before, after in zip(raw, calibrated, strict=True):
        row = {
            "bin": f"[{before['lower']:.3f}, {before['upper']:.3f})",
            "raw count": before["count"],
            "raw mean p_high": before["mean_confidence"],
            "raw fraction high": before["observed_frequency"],
        }
        if after is not None:
            row["calibrated count"] = after["count"]
            row["calibrated mean p_high"] = after["mean_confidence"]
            row["calibrated fraction high"] = after["observed_frequency"]
        rows.append(row)
    return rows


def _calibration_markdown(calibration: Mapping[str, Any]) -> str:
    """The calibration paragraph of ``summary.md``: ECE raw vs calibrated, the non-empty bins."""
    bins = calibration["bins"]
    if calibration.get("ece_calibrated") is None:
        after = "no calibration fitted (the validation wells hold one class only)"
    else:
        after = (
            f"calibrated ({calibration['method']}, fitted on the {calibration['fitted_on']}) "
            f"{calibration['ece_calibrated']:.3f}"
        )
    rows = [
        row
        for row in _reliability_rows(calibration)
        if row["raw count"] or row.get("calibrated count")
    ]
    return (
        f"Calibration of P(high) against FCT ({calibration['wells']} test wells, {bins} "
        f"equal-width bins): ECE raw {calibration['ece_raw']:.3f}, {after}. The metrics above "
        "use the raw P(high). Non-empty bins:\n\n" + markdown_table(rows) + "\n"
    )


# -- ws-k-grid ---------------------------------------------------------------------------------


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


def write_ws_k_grid_report(
    out_dir: Path,
    rows: list[dict[str, Any]],
    settings: SimulatedSettings,
    *,
    k_values: Sequence[int],
    started: float,
) -> dict[str, Any]:
    """``grid.csv``, ``accuracy.png``, ``summary.json`` (rows, settings, wall time) and
    ``summary.md`` (intro, table, figure) of a WS x K grid."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out_dir / "grid.csv")
    grid_plot(rows, k_values, out_dir / "accuracy.png")
    intro = (
        f"# WS x K grid on simulated plates\n\n{settings.train_plates} train / "
        f"{settings.val_plates} val / {settings.test_plates} test plates; one seed."
    )
    summary = {
        "experiment": "ws-k-grid",
        "rows": rows,
        "settings": asdict(settings),
        "wall_seconds": _wall_seconds(started),
    }
    write_json(summary, out_dir / "summary.json")
    (out_dir / "summary.md").write_text(
        f"{intro}\n\n" + markdown_table(rows) + "\nFigure: `accuracy.png`.\n"
    )
    return summary


# -- learning-curve ----------------------------------------------------------------------------


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
