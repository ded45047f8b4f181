"""The hidden ground truth of a simulated plate, and its flow-cytometry (FCT) export.

Every well gets a hidden ground truth (:class:`WellTruth`): an FCT label ("high" iff CD73+ and
CD90+ are both > 95 %), the morphology actually rendered (the other class for a small
``label_noise`` share of wells), a senescent-cell fraction and a confluence. The cells drawn
from it live in :mod:`hardware.sim.cells`.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np

from hardware.cytometry import FCT_THRESHOLD_PCT
from hardware.sim.config import SimulationConfig, _rng

FCT_COLUMNS: tuple[str, ...] = ("Well", "Sample ID", "Events", "CD73-FITC+ %", "CD90-PE+ %")


@dataclass(frozen=True)
class WellTruth:
    """Hidden ground truth of one well.

    Attributes:
        well: canonical well name ("B7").
        label: the FCT label, "high" iff ``cd73_pct`` and ``cd90_pct`` are both > 95.
        morphology: the class whose morphology is rendered; differs from ``label`` in
            label-noise wells.
        senescent_fraction: share of cells (by count) that are enlarged and flattened, 0..1.
        confluence: target share of the well bottom covered by cells, 0..1.
        cd73_pct: CD73-positive events, in %, one decimal.
        cd90_pct: CD90-positive events, in %, one decimal.
        event_count: events recorded by the cytometer.
    """

    well: str
    label: Literal["high", "low"]
    morphology: Literal["high", "low"]
    senescent_fraction: float
    confluence: float
    cd73_pct: float
    cd90_pct: float
    event_count: int


def _class_means(difficulty: float) -> tuple[float, float]:
    """Mean senescent fraction of (high, low) morphology at a difficulty."""
    return 0.06 + 0.14 * difficulty, 0.55 - 0.20 * difficulty


def _marker_pct(rng: np.random.Generator, passing: bool) -> float:
    """One marker's positive share, in %, rounded as the export prints it: > 95 iff passing."""
    if passing:  # 95.2..99.9, most near 99 as in healthy MSC lots
        return float(min(99.9, round(100.0 - 4.8 * rng.beta(1.5, 4.0), 1)))
    return float(min(FCT_THRESHOLD_PCT, round(95.0 - 25.0 * rng.beta(1.3, 3.0), 1)))


@lru_cache(maxsize=4096)
def _well_truth(config: SimulationConfig, barcode: str, well: str) -> WellTruth:
    rng = _rng(config.seed, barcode, well, "truth")
    label: Literal["high", "low"] = "high" if rng.random() < config.high_fraction else "low"
    flipped = rng.random() < config.label_noise
    morphology: Literal["high", "low"] = label
    if flipped:
        morphology = "low" if label == "high" else "high"
    mean_high, mean_low = _class_means(config.difficulty)
    mean = mean_high if morphology == "high" else mean_low
    concentration = 45.0 - 25.0 * config.difficulty  # Beta concentration: lower = wider spread
    senescent = float(rng.beta(mean * concentration, (1.0 - mean) * concentration))
    confluence = float(rng.uniform(0.15, 0.70))
    if config.plate.is_edge_well(well):
        confluence *= 0.85  # outer wells evaporate faster and grow a little less
    if label == "high":
        cd73, cd90 = _marker_pct(rng, True), _marker_pct(rng, True)
    else:
        failing = rng.choice(3)  # 0: CD73 fails, 1: CD90 fails, 2: both fail
        cd73 = _marker_pct(rng, failing == 1)
        cd90 = _marker_pct(rng, failing == 0)
    return WellTruth(
        well=well,
        label=label,
        morphology=morphology,
        senescent_fraction=round(senescent, 4),
        confluence=round(confluence, 4),
        cd73_pct=cd73,
        cd90_pct=cd90,
        event_count=int(rng.integers(8000, 20001)),
    )


def well_truth(config: SimulationConfig, barcode: str, well: str) -> WellTruth:
    """Ground truth of one well (any spelling of its name, e.g. ``"b07"``)."""
    return _well_truth(config, barcode, config.plate.normalise(well))


def plate_truth(config: SimulationConfig, barcode: str) -> dict[str, WellTruth]:
    """Ground truth of every well of the plate, keyed by well name in row-major order."""
    return {name: _well_truth(config, barcode, name) for name in config.plate.well_names}


def fct_export_csv(config: SimulationConfig, barcode: str) -> str:
    """The plate's flow-cytometry results, shaped like a cytometer's per-well CSV export.

    Format: a few ``key,value`` header lines, one empty line, then a table with the columns
    :data:`FCT_COLUMNS` (``Well,Sample ID,Events,CD73-FITC+ %,CD90-PE+ %``), one row per well,
    percentages with one decimal. A well is "high" iff both percentages are > 95.
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["Experiment", "MSC identity panel (CD73/CD90)"])
    writer.writerow(["Plate", barcode])
    writer.writerow(["Instrument", "Simulated flow cytometer"])
    writer.writerow(["Gates", "CD73-FITC+ and CD90-PE+ set on isotype controls"])
    writer.writerow([])
    writer.writerow(FCT_COLUMNS)
    for name, truth in plate_truth(config, barcode).items():
        writer.writerow(
            [
                name,
                f"{barcode}_{name}",
                truth.event_count,
                f"{truth.cd73_pct:.1f}",
                f"{truth.cd90_pct:.1f}",
            ]
        )
    return out.getvalue()
