"""Experiment outputs: CSV, Markdown tables and simple plots rasterised with OpenCV.

matplotlib is not a dependency; these plots are deliberately plain (axes, ticks, lines or bars,
a legend) and drawn with ``cv2`` on a white canvas.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

# BGR colours, distinguishable in print and for common colour-vision deficiencies.
PALETTE = [(178, 114, 0), (0, 94, 213), (115, 158, 0), (167, 121, 204), (66, 228, 240)]
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_W, _H = 640, 480
_LEFT, _RIGHT, _TOP, _BOTTOM = 70, 20, 40, 60


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Rows of dicts -> CSV with the union of their keys as columns (first-seen order)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_json(data: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def _cell(value: Any) -> str:
    if isinstance(value, float | np.floating):
        return f"{float(value):.3f}"
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A GitHub Markdown table; floats with three decimals."""
    if not rows:
        return "(no rows)\n"
    columns = list(columns or rows[0].keys())
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


class _Axes:
    """Maps data coordinates onto a fixed-size canvas with margins for labels."""

    def __init__(
        self,
        xlim: tuple[float, float],
        ylim: tuple[float, float],
        title: str,
        xlabel: str,
        ylabel: str,
    ) -> None:
        self.image = np.full((_H, _W, 3), 255, np.uint8)
        self.xlim, self.ylim = xlim, ylim
        cv2.rectangle(self.image, (_LEFT, _TOP), (_W - _RIGHT, _H - _BOTTOM), (0, 0, 0), 1)
        self.text(title, (_LEFT, 25), 0.55)
        self.text(xlabel, ((_W - len(xlabel) * 8) // 2, _H - 15), 0.5)
        for i in range(len(ylabel)):  # vertical y label, one character per line
            self.text(ylabel[i], (8, _TOP + 40 + 14 * i), 0.45)

    def text(self, text: str, origin: tuple[int, int], scale: float = 0.45) -> None:
        cv2.putText(self.image, text, origin, _FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)

    def px(self, x: float, y: float) -> tuple[int, int]:
        (x0, x1), (y0, y1) = self.xlim, self.ylim
        u = _LEFT + (x - x0) / max(x1 - x0, 1e-12) * (_W - _RIGHT - _LEFT)
        v = _H - _BOTTOM - (y - y0) / max(y1 - y0, 1e-12) * (_H - _BOTTOM - _TOP)
        return round(u), round(v)

    def yticks(self, count: int = 5) -> None:
        step = (self.ylim[1] - self.ylim[0]) / max(count - 1, 1)
        # Enough decimals that neighbouring ticks never print the same label.
        decimals = min(max(2, int(np.ceil(-np.log10(step))) + 1 if step > 0 else 2), 6)
        for value in np.linspace(*self.ylim, count):
            u, v = self.px(self.xlim[0], float(value))
            cv2.line(self.image, (u - 4, v), (u, v), (0, 0, 0), 1)
            self.text(f"{value:.{decimals}f}", (u - 56, v + 5), 0.4)

    def xticks(self, values: Sequence[float], labels: Sequence[str] | None = None) -> None:
        for i, value in enumerate(values):
            u, v = self.px(float(value), self.ylim[0])
            cv2.line(self.image, (u, v), (u, v + 4), (0, 0, 0), 1)
            label = labels[i] if labels is not None else f"{value:g}"
            self.text(label, (u - 4 * len(label), v + 20), 0.4)

    def legend(self, names: Sequence[str], bottom: bool = False) -> None:
        for i, name in enumerate(names):
            y = _H - _BOTTOM - 12 - 18 * (len(names) - 1 - i) if bottom else _TOP + 20 + 18 * i
            cv2.line(self.image, (_W - 190, y - 4), (_W - 165, y - 4), PALETTE[i % 5], 3)
            self.text(name, (_W - 158, y), 0.42)

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(path), self.image):
            raise OSError(f"could not write {path}")
        return path


def line_plot(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: Path,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    ylim: tuple[float, float] | None = None,
    diagonal: bool = False,
    errors: Mapping[str, Sequence[float]] | None = None,
    legend_bottom: bool | None = None,
) -> Path:
    """One polyline with markers per series {name: (xs, ys)}; PNG at ``path``.

    ``errors``: optional +-whisker half-lengths per series (e.g. sd over seeds).
    ``legend_bottom``: legend in the lower right (default: only for ROC-style ``diagonal``
    plots, whose lower right is empty); rising curves such as learning curves want it there too.
    """
    errors = errors or {}
    xs = np.concatenate([np.asarray(x, float) for x, _ in series.values()])
    ys = np.concatenate(
        [
            np.asarray(y, float) - np.asarray(errors.get(name, 0.0))
            for name, (_, y) in series.items()
        ]
        + [
            np.asarray(y, float) + np.asarray(errors.get(name, 0.0))
            for name, (_, y) in series.items()
        ]
    )
    xlim = (float(xs.min()), float(xs.max()) if xs.max() > xs.min() else float(xs.min()) + 1)
    if ylim is None:
        pad = 0.05 * max(float(ys.max() - ys.min()), 1e-3)
        ylim = (float(ys.min()) - pad, float(ys.max()) + pad)
    axes = _Axes(xlim, ylim, title, xlabel, ylabel)
    axes.yticks()
    unique = np.unique(xs)
    if len(unique) <= 12:
        axes.xticks(unique.tolist())
    else:  # many distinct x (an ROC curve): evenly spaced, rounded ticks
        ticks = np.linspace(*xlim, 6)
        axes.xticks(ticks.tolist(), [f"{t:.2f}" for t in ticks])
    if diagonal:
        cv2.line(axes.image, axes.px(xlim[0], ylim[0]), axes.px(xlim[1], ylim[1]), (160,) * 3, 1)
    for i, (name, (x, y)) in enumerate(series.items()):
        points = np.array([axes.px(float(a), float(b)) for a, b in zip(x, y, strict=True)])
        colour = PALETTE[i % 5]
        for a, b, e in zip(x, y, errors.get(name, []), strict=False):
            top, bottom = axes.px(float(a), float(b) + float(e)), axes.px(float(a), float(b) - e)
            cv2.line(axes.image, top, bottom, colour, 1, cv2.LINE_AA)
        cv2.polylines(axes.image, [points.reshape(-1, 1, 2)], False, colour, 2, cv2.LINE_AA)
        if len(points) <= 30:
            for point in points:
                cv2.circle(axes.image, (int(point[0]), int(point[1])), 4, colour, -1)
    axes.legend(list(series), bottom=diagonal if legend_bottom is None else legend_bottom)
    return axes.save(path)


def bar_plot(
    labels: Sequence[str],
    values: Sequence[float],
    path: Path,
    *,
    errors: Sequence[float] | None = None,
    points: Sequence[Sequence[float]] | None = None,
    title: str,
    ylabel: str,
    ylim: tuple[float, float] = (0.0, 1.0),
) -> Path:
    """Bars with optional +-error whiskers and the individual points (e.g. folds) on top."""
    axes = _Axes((-0.5, len(labels) - 0.5), ylim, title, "", ylabel)
    axes.yticks()
    axes.xticks(list(range(len(labels))), list(labels))
    for i, value in enumerate(values):
        colour = PALETTE[i % 5]
        left, top = axes.px(i - 0.3, float(value))
        right, bottom = axes.px(i + 0.3, ylim[0])
        cv2.rectangle(axes.image, (left, top), (right, bottom), colour, -1)
        if errors is not None:
            _, high = axes.px(i, float(value) + float(errors[i]))
            centre, low = axes.px(i, float(value) - float(errors[i]))
            cv2.line(axes.image, (centre, low), (centre, high), (0, 0, 0), 2)
            cv2.line(axes.image, (centre - 8, high), (centre + 8, high), (0, 0, 0), 2)
            cv2.line(axes.image, (centre - 8, low), (centre + 8, low), (0, 0, 0), 2)
        for point in points[i] if points is not None else []:
            cv2.circle(axes.image, axes.px(i + 0.15, float(point)), 4, (0, 0, 0), 1)
    return axes.save(path)


def roc_plot(
    curves: Mapping[str, Sequence[Mapping[str, float]]],
    path: Path,
    *,
    title: str,
    xlabel: str = "false positive rate",
) -> Path:
    """ROC curves ``{name: points}``, each point a mapping with ``fpr`` and ``tpr`` (as
    :func:`models.metrics.roc_points` gives them), over the chance diagonal; PNG at ``path``."""
    return line_plot(
        {
            name: ([p["fpr"] for p in points], [p["tpr"] for p in points])
            for name, points in curves.items()
        },
        path,
        title=title,
        xlabel=xlabel,
        ylabel="TPR",
        ylim=(0.0, 1.0),
        diagonal=True,
    )
