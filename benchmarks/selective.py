"""Selective calls with a guaranteed error rate, on the bundled model and simulated plates.

The bundled model (trained on plates ``SIM-TRAIN-0-*`` of simulator seed 0, see its model
card) classifies every well of simulated plates of other seeds (one field per well, 40x,
continuous reflection focus, through :class:`hardware.microscope.StepScanner` and
:class:`app.classifier.WellClassifier`); truth is the simulated FCT
(:func:`hardware.sim.truth.plate_truth`). The plates are split into calibration plates, on
which :func:`models.selective.risk_controlled_threshold` picks the confidence threshold at
``alpha`` / ``delta``, and test plates, on which the threshold's coverage and realised error
among called wells are measured, with the error-vs-coverage curve. Test plates are also
simulated at prevalence 0.9 high (``SimulationConfig(high_fraction=0.9)``) for accuracy, PPV,
NPV and the fraction sent to FCT, with the threshold from the 50 % calibration plates.

The simulator's ``label_noise`` (default 0.03) gives that share of wells the morphology of the
other class while their FCT label stays: no image model can call them right, so they put a
floor under the error among called wells at any confidence threshold; ``--label-noise 0``
shows what the method does without it.

The figures are printed, and the last line is ``RESULT {json}``.

Usage::

    .venv/bin/python benchmarks/selective.py            # 10 + 10 plates (+ 10 at 0.9)
    .venv/bin/python benchmarks/selective.py --quick    # 4 + 4 plates, every 2nd well
    .venv/bin/python benchmarks/selective.py --label-noise 0
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from app.classifier import WellClassifier
from hardware.microscope import ScanPlan, StepScanner
from hardware.sim import SimulatedMicroscope, SimulationConfig
from hardware.sim.truth import plate_truth
from models.inference import OnnxClassifier
from models.repository import BUNDLED_REPOSITORY, ModelRepository
from models.selective import (
    confidence,
    error_coverage_curve,
    risk_controlled_threshold,
    selective_labels,
)

logger = logging.getLogger("benchmarks.selective")

#: Seeds of the benchmark's plates; the bundled model was trained on seed 0 only.
SEEDS = range(900, 930)


def _plate_probabilities(
    classifier: WellClassifier, seed: int, high_fraction: float, stride: int, label_noise: float
) -> tuple[list[float], list[str]]:
    """P(high) and the true label of each well of one plate that got a probability."""
    config = SimulationConfig(seed=seed, high_fraction=high_fraction, label_noise=label_noise)
    barcode = f"SELECTIVE-{seed}-{round(high_fraction * 100)}"
    truth = plate_truth(config, barcode)
    wells = config.plate.well_names[::stride]
    scanner = StepScanner(SimulatedMicroscope(config, barcode=barcode))
    probabilities: list[float] = []
    labels: list[str] = []
    for well in scanner.scan(ScanPlan(barcode, list(wells), objective="40x")):
        if well.failed:
            continue
        call = classifier.classify(well.fields)
        if call.probability is not None:
            probabilities.append(call.probability)
            labels.append(truth[well.well].label)
    return probabilities, labels


def _collect(
    classifier: WellClassifier,
    seeds: Sequence[int],
    high_fraction: float,
    stride: int,
    label_noise: float,
) -> tuple[np.ndarray, np.ndarray]:
    p_all: list[float] = []
    y_all: list[str] = []
    for seed in seeds:
        started = time.perf_counter()
        p, y = _plate_probabilities(classifier, seed, high_fraction, stride, label_noise)
        p_all += p
        y_all += y
        logger.info(
            "plate seed %d (high %.2f): %d wells, %.1f s",
            seed,
            high_fraction,
            len(p),
            time.perf_counter() - started,
        )
    return np.array(p_all), np.array(y_all, dtype=object)


def _r(x: float) -> float | None:
    return None if math.isnan(x) else round(float(x), 4)


def _summary(p: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, Any]:
    """Coverage and error among called, plus accuracy, PPV and NPV of the called wells."""
    calls = selective_labels(p, threshold)
    called = calls != "uncertain"
    high, low = calls == "high", calls == "low"
    correct = calls == y
    return {
        "wells": len(p),
        "prevalence_high": _r(float(np.mean(y == "high"))),
        "coverage": _r(float(called.mean())),
        "sent_to_fct": _r(float((~called).mean())),
        "error_among_called": _r(float(1 - correct[called].mean())) if called.any() else None,
        "accuracy_among_called": _r(float(correct[called].mean())) if called.any() else None,
        "ppv": _r(float(np.mean(y[high] == "high"))) if high.any() else None,
        "npv": _r(float(np.mean(y[low] == "low"))) if low.any() else None,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer plates, every 2nd well")
    parser.add_argument("--alpha", type=float, default=0.02)
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument(
        "--label-noise",
        type=float,
        default=SimulationConfig().label_noise,
        help="share of wells whose morphology contradicts their FCT label (simulator default)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    load_before = round(os.getloadavg()[0], 2)

    artifact = ModelRepository(BUNDLED_REPOSITORY).get("hscnn-sim")
    classifier = WellClassifier(OnnxClassifier(artifact.model_path, intra_op_threads=1))
    n_cal, n_test, stride = (4, 4, 2) if args.quick else (10, 10, 1)
    seeds = list(SEEDS)
    cal_seeds = seeds[:n_cal]
    test_seeds = seeds[n_cal : n_cal + n_test]
    prevalence_seeds = seeds[n_cal + n_test : n_cal + 2 * n_test]

    p_cal, y_cal = _collect(classifier, cal_seeds, 0.5, stride, args.label_noise)
    p_test, y_test = _collect(classifier, test_seeds, 0.5, stride, args.label_noise)
    chosen = risk_controlled_threshold(p_cal, y_cal, alpha=args.alpha, delta=args.delta)
    logger.info("threshold: %s", chosen)

    grid = np.round(np.arange(0.5, 1.0001, 0.025), 3)
    curve = [
        {"threshold": t, "coverage": _r(c), "error_among_called": _r(e)}
        for t, c, e in error_coverage_curve(p_test, y_test, grid)
    ]
    result: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "load_before": load_before,
        "quick": args.quick,
        "model": artifact.label,
        "seeds_calibration": cal_seeds,
        "seeds_test": test_seeds,
        "wells_per_plate": len(range(0, 96, stride)),
        "label_noise": args.label_noise,
        "alpha": args.alpha,
        "delta": args.delta,
        "selective": chosen.to_dict(),
        "test": _summary(p_test, y_test, chosen.threshold),
        "test_all_called_at_0.5": _summary(p_test, y_test, 0.5),
        "test_mean_confidence": _r(float(confidence(p_test).mean())),
        "curve_test": curve,
        # the same calibration and test plates at other error rates, and with the test
        # sequence started at half the calibration wells (a label-blind start that skips the
        # strictest candidates, where a few confidently wrong wells end the sequence early)
        "other_alphas": {
            f"{a}{'' if start is None else ', min_calls=' + str(start)}": {
                "threshold": round(t.threshold, 4),
                "coverage_on_calibration": _r(t.coverage_on_calibration),
                "reason": t.reason,
                "test": _summary(p_test, y_test, t.threshold),
            }
            for a in (0.02, 0.05, 0.1)
            for start in (None, len(p_cal) // 2)
            for t in [
                risk_controlled_threshold(p_cal, y_cal, alpha=a, delta=args.delta, min_calls=start)
            ]
        },
    }
    print("threshold:", json.dumps(result["selective"], indent=1))
    print("test plates at the threshold:", json.dumps(result["test"], indent=1))
    print("test plates, every well called:", json.dumps(result["test_all_called_at_0.5"]))
    print("other alphas:", json.dumps(result["other_alphas"], indent=1))
    print("error vs coverage (test plates):")
    for row in curve:
        t, c, e = row["threshold"], row["coverage"], row["error_among_called"]
        print(f"  t={t:.3f} coverage={c} error={e}")

    p_prev, y_prev = _collect(classifier, prevalence_seeds, 0.9, stride, args.label_noise)
    result["seeds_prevalence_0.9"] = prevalence_seeds
    result["prevalence_0.9"] = {
        "at_threshold": _summary(p_prev, y_prev, chosen.threshold),
        "all_called_at_0.5": _summary(p_prev, y_prev, 0.5),
    }
    print("prevalence 0.9:", json.dumps(result["prevalence_0.9"], indent=1))
    result["wall_s"] = round(time.perf_counter() - started, 1)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
