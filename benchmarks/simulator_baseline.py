"""Simulator figures: render time per frame and deliberately simple morphology baselines.

Measures, at the default simulation settings unless told otherwise:

(a) render time of one 528 x 720 frame at 40x and 100x: ``--frames`` frames per objective, each
    in a different well or plate, so the per-well tile cache is cold (median and p95); and the
    same frames again 1 um away, tile cache warm (median), in this process only;
(b) two baselines that see one 40x field (the well centre) per well, trained on
    ``--train-plates`` simulated plates and tested on ``--test-plates`` other plates (so the
    split is grouped by plate), each a standardised logistic regression (scikit-learn):

    * ``mean_area``: the mean connected-component area, in um^2, of
      :func:`models.pipeline.foreground_mask` on the :func:`models.pipeline.normalise` output
      (the pipeline's own mask, default :class:`PipelineConfig`; 8-connected components). These
      are blobs, not cells: touching cells merge into one component;
    * ``three_features``: the mean area plus the component count and the dark-area fraction
      (share of 8-bit frame pixels below 0.85 x the frame median, as in the simulator tests);

    frames that fail exposure QC (overexposed) give the well no features and drop it, as the
    service would give such a single-field well no call. For scale, a logistic regression on each
    well's hidden senescent fraction (``oracle``) and the majority class are reported too;
(c) the FCT label balance, parsed from :func:`hardware.sim.fct_export_csv` of every plate.

The figures are printed, and the last line is ``RESULT {json}``.

Usage::

    .venv/bin/python benchmarks/simulator_baseline.py --train-plates 4 --test-plates 2 --seed 0
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from hardware.plate import SBS_96
from hardware.sim import (
    FCT_THRESHOLD_PCT,
    SimulationConfig,
    fct_export_csv,
    pixel_size_um,
    plate_truth,
    render_field,
)
from models.pipeline import PipelineConfig, foreground_mask, normalise, quality_check, to_uint8

logger = logging.getLogger(__name__)

DARK_FRACTION_OF_MEDIAN = 0.85  # a pixel is "dark" below this share of the frame median


@dataclass(frozen=True)
class WellFeatures:
    """Features of one well's centre field at 40x; None when the frame failed QC.

    Attributes:
        barcode: plate barcode.
        well: well name.
        high: FCT label is "high".
        senescent_fraction: hidden ground truth, for the oracle only.
        mean_area_um2: mean connected-component area of the foreground mask, in um^2.
        n_components: number of connected components of the foreground mask.
        dark_fraction: share of 8-bit frame pixels below 0.85 x the frame median, 0..1.
        mask_fraction: share of the normalised image the foreground mask covers, 0..1 (reported,
            not a baseline feature).
    """

    barcode: str
    well: str
    high: bool
    senescent_fraction: float
    mean_area_um2: float | None
    n_components: int | None
    dark_fraction: float | None
    mask_fraction: float | None = None


# ----------------------------------------------------------------------------------------------
# (a) render time


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def time_rendering(config: SimulationConfig, objective: str, frames: int) -> dict[str, float]:
    """Render ``frames`` frames at ``objective``, each in a new well (96 per plate, then a new
    plate), and the same positions 1 um to the side again.

    Returns milliseconds: ``cold_median``, ``cold_p95``, ``warm_median``.
    """
    positions = []
    for i in range(frames):
        barcode = f"BENCH-RENDER-{objective}-{i // len(SBS_96.well_names):03d}"
        well = SBS_96.well_names[i % len(SBS_96.well_names)]
        positions.append((barcode, well, *SBS_96.well_center_um(well)))
    # One throw-away frame: the camera's flat field is computed once per process.
    render_field(config, "BENCH-WARMUP", "A1", *SBS_96.well_center_um("A1"), objective)
    cold, warm = [], []
    for barcode, well, x, y in positions:
        started = time.perf_counter()
        render_field(config, barcode, well, x, y, objective)
        cold.append((time.perf_counter() - started) * 1000.0)
    for barcode, well, x, y in positions:
        started = time.perf_counter()
        render_field(config, barcode, well, x + 1.0, y, objective)
        warm.append((time.perf_counter() - started) * 1000.0)
    return {
        "cold_median": statistics.median(cold),
        "cold_p95": _percentile(cold, 95),
        "warm_median": statistics.median(warm),
    }


# ----------------------------------------------------------------------------------------------
# (b) baselines


def well_features(config: SimulationConfig, barcode: str, well: str) -> WellFeatures:
    """Render the well's centre field at 40x and compute the baseline features."""
    pipeline = PipelineConfig()
    truth = plate_truth(config, barcode)[well]
    frame = render_field(config, barcode, well, *SBS_96.well_center_um(well), "40x")
    frame8 = to_uint8(frame, config.bit_depth)
    base = WellFeatures(
        barcode, well, truth.label == "high", truth.senescent_fraction, None, None, None
    )
    if quality_check(frame8, pipeline).excluded:
        return base
    norm = normalise(frame8, pipeline)
    mask = foreground_mask(norm, pipeline)
    # normalise() resizes the whole frame, so one normalised pixel covers this many um.
    norm_px_um = pixel_size_um(config, "40x") * frame.shape[1] / norm.shape[1]
    n_labels, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA].astype(np.float64) * norm_px_um**2
    dark = float((frame8 < DARK_FRACTION_OF_MEDIAN * np.median(frame8)).mean())
    return WellFeatures(
        barcode,
        well,
        base.high,
        base.senescent_fraction,
        float(areas.mean()) if areas.size else 0.0,
        n_labels - 1,
        dark,
        float(mask.mean()),
    )


def _well_features_job(job: tuple[int, float, str, str]) -> WellFeatures:
    seed, difficulty, barcode, well = job
    return well_features(SimulationConfig(seed=seed, difficulty=difficulty), barcode, well)


def collect_features(
    config: SimulationConfig, barcodes: Sequence[str], workers: int
) -> list[WellFeatures]:
    """Features of every well of ``barcodes``, in ``workers`` processes."""
    jobs = [(config.seed, config.difficulty, b, w) for b in barcodes for w in SBS_96.well_names]
    if workers <= 1:
        return [_well_features_job(job) for job in jobs]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_well_features_job, jobs, chunksize=16))


def _matrix(rows: Sequence[WellFeatures], names: Sequence[str]) -> np.ndarray:
    return np.array([[float(getattr(r, n)) for n in names] for r in rows], dtype=np.float64)


def evaluate(
    train: Sequence[WellFeatures], test: Sequence[WellFeatures], names: Sequence[str]
) -> dict[str, float]:
    """Fit a standardised logistic regression on ``names`` and score it on ``test``."""
    model = make_pipeline(StandardScaler(), LogisticRegression())
    y_train = np.array([r.high for r in train])
    y_test = np.array([r.high for r in test])
    model.fit(_matrix(train, names), y_train)
    x_test = _matrix(test, names)
    return {
        "accuracy": float(accuracy_score(y_test, model.predict(x_test))),
        "auc": float(roc_auc_score(y_test, model.predict_proba(x_test)[:, 1])),
    }


# ----------------------------------------------------------------------------------------------
# (c) FCT labels


def fct_high_counts(config: SimulationConfig, barcode: str) -> tuple[int, int]:
    """(high, total) wells of a plate, read back from its FCT CSV export.

    Raises:
        AssertionError: if the export disagrees with the plate's ground truth.
    """
    lines = fct_export_csv(config, barcode).splitlines()
    table = lines[lines.index("") + 1 :]  # header block, one empty line, then the table
    rows = list(csv.DictReader(io.StringIO("\n".join(table))))
    high = {
        r["Well"]
        for r in rows
        if float(r["CD73-FITC+ %"]) > FCT_THRESHOLD_PCT
        and float(r["CD90-PE+ %"]) > FCT_THRESHOLD_PCT
    }
    truth = plate_truth(config, barcode)
    if high != {w for w, t in truth.items() if t.label == "high"}:
        raise AssertionError(f"FCT export of {barcode} disagrees with the ground truth")
    return len(high), len(rows)


# ----------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-plates", type=int, default=4, help="simulated training plates")
    parser.add_argument("--test-plates", type=int, default=2, help="simulated test plates")
    parser.add_argument("--seed", type=int, default=0, help="SimulationConfig.seed")
    parser.add_argument("--frames", type=int, default=100, help="frames per objective, timing")
    parser.add_argument("--difficulty", type=float, default=SimulationConfig().difficulty)
    parser.add_argument("--workers", type=int, default=2, help="processes for the baselines")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    config = SimulationConfig(seed=args.seed, difficulty=args.difficulty)
    load = os.getloadavg()[0]
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {load:.2f} at start (shared machine); python {platform.python_version()}"
    )
    started = time.perf_counter()

    render: dict[str, dict[str, float]] = {}
    for objective in ("40x", "100x"):
        logger.info("timing %d frames at %s", args.frames, objective)
        render[objective] = time_rendering(config, objective, args.frames)
        r = render[objective]
        print(
            f"render {objective} {config.camera_shape[0]}x{config.camera_shape[1]}: cold median "
            f"{r['cold_median']:.1f} ms, p95 {r['cold_p95']:.1f} ms; warm median "
            f"{r['warm_median']:.1f} ms  (n={args.frames})"
        )

    train_codes = [f"BENCH-TRAIN-{i:02d}" for i in range(args.train_plates)]
    test_codes = [f"BENCH-TEST-{i:02d}" for i in range(args.test_plates)]
    logger.info("features of %d wells", 96 * (len(train_codes) + len(test_codes)))
    feats_started = time.perf_counter()
    rows = collect_features(config, train_codes + test_codes, args.workers)
    feats_s = time.perf_counter() - feats_started
    usable = [r for r in rows if r.mean_area_um2 is not None]
    train = [r for r in usable if r.barcode in train_codes]
    test = [r for r in usable if r.barcode in test_codes]
    excluded = len(rows) - len(usable)
    print(
        f"baseline data: {len(train)} train wells ({len(train_codes)} plates), {len(test)} test "
        f"wells ({len(test_codes)} plates), {excluded} wells dropped by exposure QC; "
        f"features in {feats_s:.1f} s with {args.workers} processes"
    )
    truths = {
        (code, well): t.confluence
        for code in train_codes
        for well, t in plate_truth(config, code).items()
    }
    for cls in (True, False):
        sel = [r for r in train if r.high == cls]
        print(
            f"  train {'high' if cls else 'low '}: mean area "
            f"{statistics.median(r.mean_area_um2 or 0.0 for r in sel):.0f} um^2 (median), "
            f"components {statistics.median(r.n_components or 0 for r in sel):.0f}, dark fraction "
            f"{statistics.median(r.dark_fraction or 0.0 for r in sel):.3f}, mask cover "
            f"{statistics.median(r.mask_fraction or 0.0 for r in sel):.2f} (true confluence "
            f"{statistics.median(truths[(r.barcode, r.well)] for r in sel):.2f})"
        )

    results = {
        "mean_area": evaluate(train, test, ["mean_area_um2"]),
        "three_features": evaluate(train, test, ["mean_area_um2", "n_components", "dark_fraction"]),
        "oracle_senescent_fraction": evaluate(train, test, ["senescent_fraction"]),
    }
    test_high = float(np.mean([r.high for r in test]))
    majority = max(test_high, 1.0 - test_high)
    for name, res in results.items():
        print(f"baseline {name}: test accuracy {res['accuracy']:.3f}, AUC {res['auc']:.3f}")
    print(f"majority class on test: accuracy {majority:.3f}")

    counts = {code: fct_high_counts(config, code) for code in train_codes + test_codes}
    n_high = sum(h for h, _ in counts.values())
    n_all = sum(n for _, n in counts.values())
    noisy = sum(
        t.label != t.morphology for code in counts for t in plate_truth(config, code).values()
    )
    print(
        f"FCT labels: {n_high}/{n_all} high ({n_high / n_all:.1%}); per plate "
        + ", ".join(f"{c} {h}/{n}" for c, (h, n) in counts.items())
        + f"; label-noise wells {noisy}"
    )
    total_s = time.perf_counter() - started
    print(f"total {total_s:.1f} s")

    result = {
        "seed": args.seed,
        "difficulty": args.difficulty,
        "frames": args.frames,
        "frame_shape": list(config.camera_shape),
        "render_ms": {k: {m: round(v, 2) for m, v in r.items()} for k, r in render.items()},
        "train_plates": args.train_plates,
        "test_plates": args.test_plates,
        "train_wells": len(train),
        "test_wells": len(test),
        "qc_dropped_wells": excluded,
        "baselines": {k: {m: round(v, 4) for m, v in r.items()} for k, r in results.items()},
        "majority_accuracy": round(majority, 4),
        "fct_high": n_high,
        "fct_wells": n_all,
        "fct_high_fraction": round(n_high / n_all, 4),
        "label_noise_wells": noisy,
        "cpus": os.cpu_count(),
        "load_at_start": round(load, 2),
        "total_s": round(total_s, 1),
    }
    print("RESULT " + json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
