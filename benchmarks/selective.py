"""Calls a lab can act on, measured on simulated plates: calibration, selective calls with a
guaranteed error rate, the out-of-distribution guard's false no-calls, threshold policies, and a
prevalence of 0.9 high.

A model (default: the newest bundled ``hscnn-sim``) classifies every well of simulated plates of
other seeds than it trained on (one field per well, 40x, continuous reflection focus, through
:class:`hardware.microscope.StepScanner` and :class:`app.classifier.WellClassifier`: the served
path, calibration and guard included); truth is the simulated FCT
(:func:`hardware.sim.truth.plate_truth`). Plates (seeds in :data:`SEEDS`):

* **calibration plates** (10): the benchmark's own Learn-then-Test threshold
  (:func:`models.selective.risk_controlled_threshold`) at ``alpha`` / ``delta``;
* **test plates** (20): ECE of the network's raw P(high) and of the served, calibrated one
  (:func:`models.calibration.expected_calibration_error`, 15 bins); coverage and realised error
  among called wells at the benchmark's threshold and at the threshold the served policy takes
  from the model's own decision set (:class:`models.decision.CallPolicy`); the error-vs-coverage
  curve; accuracy, sensitivity and specificity at each threshold policy; the share of wells the
  guard sent to "no call" (all of them in distribution, so every one is a false alarm);
* **prevalence plates** (10, ``SimulationConfig(high_fraction=0.9)``): accuracy, PPV, NPV and the
  share sent to FCT at both thresholds.

The simulator's ``label_noise`` (default 0.03) gives that share of wells the morphology of the
other class while their FCT label stays: no image model can call them right, so they put a
floor under the error among called wells at any confidence threshold; ``--label-noise 0``
shows what the method does without it.

The figures are printed, and the last line is ``RESULT {json}``.

Usage::

    .venv/bin/python benchmarks/selective.py            # 10 + 20 + 10 plates
    .venv/bin/python benchmarks/selective.py --quick    # 4 + 4 + 4 plates, every 2nd well
    .venv/bin/python benchmarks/selective.py --label-noise 0
    .venv/bin/python benchmarks/selective.py --model hscnn-sim:1
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
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.classifier import WellClassifier
from hardware.microscope import ScanPlan, StepScanner
from hardware.sim import SimulatedMicroscope, SimulationConfig
from hardware.sim.truth import plate_truth
from models.calibration import expected_calibration_error, fit_calibration, reliability_table
from models.decision import NO_CALL, CallPolicy
from models.inference import OnnxClassifier
from models.metrics import binary_metrics
from models.repository import BUNDLED_REPOSITORY, ModelRepository
from models.selective import (
    CALL_NOTHING,
    confidence,
    error_coverage_curve,
    risk_controlled_threshold,
    selective_labels,
)

logger = logging.getLogger("benchmarks.selective")

#: Seeds of the benchmark's plates; the bundled models were trained on seed 0 only.
SEEDS = range(900, 940)


@dataclass
class Wells:
    """Per well of a set of plates: served (calibrated) and raw P(high), truth, served label."""

    served: list[float] = field(default_factory=list)
    raw: list[float] = field(default_factory=list)
    truth: list[str] = field(default_factory=list)
    label: list[str] = field(default_factory=list)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return np.array(self.served), np.array(self.raw), np.array(self.truth, dtype=object)


def _plate(
    classifier: WellClassifier,
    seed: int,
    high_fraction: float,
    stride: int,
    label_noise: float,
    into: Wells,
) -> None:
    """Classify every ``stride``-th well of one plate into ``into`` (wells that got a P(high))."""
    config = SimulationConfig(seed=seed, high_fraction=high_fraction, label_noise=label_noise)
    barcode = f"SELECTIVE-{seed}-{round(high_fraction * 100)}"
    truth = plate_truth(config, barcode)
    wells = config.plate.well_names[::stride]
    scanner = StepScanner(SimulatedMicroscope(config, barcode=barcode))
    model = classifier.model
    for well in scanner.scan(ScanPlan(barcode, list(wells), objective="40x")):
        if well.failed:
            continue
        call = classifier.classify(well.fields)
        used = [f.prepared for f in call.fields if f.probability is not None]
        if call.probability is None or not used:
            continue
        features = np.stack([p.features for p in used])  # type: ignore[misc]
        masks = np.stack([p.mask[None] for p in used]).astype(np.float32)  # type: ignore[index]
        raw, _ = model.predict(features, masks, calibrated=False)
        into.served.append(call.probability)
        into.raw.append(float(np.mean(raw)))
        into.truth.append(truth[well.well].label)
        into.label.append(call.label or "")


def _collect(
    classifier: WellClassifier,
    seeds: Sequence[int],
    high_fraction: float,
    stride: int,
    label_noise: float,
) -> Wells:
    wells = Wells()
    for seed in seeds:
        started = time.perf_counter()
        before = len(wells.truth)
        _plate(classifier, seed, high_fraction, stride, label_noise, wells)
        logger.info(
            "plate seed %d (high %.2f): %d wells, %.1f s",
            seed,
            high_fraction,
            len(wells.truth) - before,
            time.perf_counter() - started,
        )
    return wells


def _r(x: float) -> float | None:
    return None if math.isnan(x) else round(float(x), 4)


def _summary(
    p: np.ndarray, y: np.ndarray, threshold: float, decision: float = 0.5
) -> dict[str, Any]:
    """Coverage and error among called, plus accuracy, PPV and NPV of the called wells."""
    calls = selective_labels(p, min(threshold, CALL_NOTHING), decision)
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


def _policies(p: np.ndarray, y: np.ndarray, classifier: WellClassifier) -> dict[str, Any]:
    """Accuracy, sensitivity and specificity at each threshold policy the model supports."""
    out: dict[str, Any] = {}
    truth = (y == "high").astype(int)
    for policy in ("default", "youden", "sensitivity:0.95", "specificity:0.95"):
        try:
            threshold = classifier.policy(threshold_policy=policy).threshold
        except ValueError as exc:
            out[policy] = {"unavailable": str(exc)}
            continue
        metrics = binary_metrics(truth, p, threshold)
        out[policy] = {"threshold": round(threshold, 4)} | {
            k: _r(getattr(metrics, k)) for k in ("accuracy", "sensitivity", "specificity")
        }
    return out


def _svg_panel(
    x0: float,
    title: str,
    xlabel: str,
    ylabel: str,
    ymax: float,
    series: Sequence[tuple[str, str, Sequence[tuple[float, float]]]],
) -> list[str]:
    """One 300 x 240 plot panel at ``x0``: axes 0..1 on x and 0..ymax on y, one polyline with
    dots per series (name, colour, points)."""
    left, top, width, height = x0 + 50, 30, 230, 170

    def xy(x: float, y: float) -> tuple[float, float]:
        return left + x * width, top + height - min(y, ymax) / ymax * height

    out = [
        f'<text x="{left + width / 2}" y="18" text-anchor="middle" font-size="13">{title}</text>',
        f'<rect x="{left}" y="{top}" width="{width}" height="{height}" fill="none" stroke="#888"/>',
        f'<text x="{left + width / 2}" y="{top + height + 32}" text-anchor="middle" '
        f'font-size="11">{xlabel}</text>',
        f'<text x="{x0 + 12}" y="{top + height / 2}" font-size="11" text-anchor="middle" '
        f'transform="rotate(-90 {x0 + 12} {top + height / 2})">{ylabel}</text>',
    ]
    for i in range(6):
        tx, _ = xy(i / 5, 0)
        _, ty = xy(0, ymax * i / 5)
        out.append(
            f'<text x="{tx}" y="{top + height + 14}" font-size="10" '
            f'text-anchor="middle">{i / 5:.1f}</text>'
        )
        out.append(
            f'<text x="{left - 4}" y="{ty + 3}" font-size="10" '
            f'text-anchor="end">{ymax * i / 5:.2g}</text>'
        )
    for row, (name, colour, points) in enumerate(series):
        drawn = [xy(x, y) for x, y in points]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in drawn)
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}"/>')
        out += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2" fill="{colour}"/>' for x, y in drawn]
        out.append(
            f'<text x="{left + 6}" y="{top + 14 + 13 * row}" font-size="10" '
            f'fill="{colour}">{name}</text>'
        )
    return out


def write_plot(path: str, result: dict[str, Any]) -> None:
    """An SVG of the test plates' error-vs-coverage curve and reliability diagram."""
    curve = [
        (row["coverage"], row["error_among_called"])
        for row in result["curve_test"]
        if row["error_among_called"] is not None
    ]
    alpha = result["alpha"]
    reliability = [
        (b["mean_confidence"], b["observed_frequency"])
        for b in result["reliability_test_calibrated"]
    ]
    parts = [
        '<svg xmlns="http://www.w3.org/2000/svg" width="620" height="250" font-family="sans-serif">'
    ]
    parts += _svg_panel(
        0,
        "error among called vs coverage",
        "coverage (share of wells called)",
        "error among called",
        0.1,
        [
            ("test plates", "#1f77b4", curve),
            (f"alpha {alpha}", "#d62728", [(0, alpha), (1, alpha)]),
        ],
    )
    parts += _svg_panel(
        310,
        f"reliability (served), ECE {result['ece_test']['calibrated']}",
        "served P(high)",
        "observed share high",
        1.0,
        [("test plates", "#1f77b4", reliability), ("ideal", "#888", [(0, 0), (1, 1)])],
    )
    parts.append("</svg>")
    with open(path, "w") as handle:
        handle.write("\n".join(parts) + "\n")
    logger.info("wrote %s", path)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer plates, every 2nd well")
    parser.add_argument("--alpha", type=float, default=0.02)
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument("--model", default="hscnn-sim", help="NAME or NAME:VERSION (bundled)")
    parser.add_argument("--plot", help="write the curve and reliability diagram to this SVG")
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

    name, _, version = args.model.partition(":")
    artifact = ModelRepository(BUNDLED_REPOSITORY).get(name, int(version) if version else None)
    classifier = WellClassifier(OnnxClassifier(artifact.model_path, intra_op_threads=1))
    model = classifier.model
    n_cal, n_test, n_prev, stride = (4, 4, 4, 2) if args.quick else (10, 20, 10, 1)
    seeds = list(SEEDS)
    cal_seeds = seeds[:n_cal]
    test_seeds = seeds[n_cal : n_cal + n_test]
    prevalence_seeds = seeds[n_cal + n_test : n_cal + n_test + n_prev]

    p_cal, raw_cal, y_cal = _collect(classifier, cal_seeds, 0.5, stride, args.label_noise).arrays()
    test = _collect(classifier, test_seeds, 0.5, stride, args.label_noise)
    p_test, raw_test, y_test = test.arrays()
    chosen = risk_controlled_threshold(p_cal, y_cal, alpha=args.alpha, delta=args.delta)
    logger.info("benchmark threshold: %s", chosen)
    served: CallPolicy | None = None
    try:
        served = classifier.policy(alpha=args.alpha, delta=args.delta)
    except ValueError as exc:
        logger.info("no served selective policy: %s", exc)
    truth_01 = (y_test == "high").astype(int)
    # What a lab would do with its own labelled plates: refit the calibration on the benchmark's
    # calibration plates (other seeds than the model's validation plates) and score the test
    # plates with it.
    refit = fit_calibration(raw_cal, (y_cal == "high").astype(int), method="auto")

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
        "calibration_method": model.calibration.method,
        "seeds_calibration": cal_seeds,
        "seeds_test": test_seeds,
        "wells_per_plate": len(range(0, 96, stride)),
        "label_noise": args.label_noise,
        "alpha": args.alpha,
        "delta": args.delta,
        "ece_test": {
            "bins": 15,
            "raw": _r(expected_calibration_error(raw_test, truth_01, 15)),
            "calibrated": _r(expected_calibration_error(p_test, truth_01, 15)),
            "refit_on_calibration_plates": _r(
                expected_calibration_error(refit.apply(raw_test), truth_01, 15)
            ),
            "refit_method": refit.to_dict(),
        },
        "reliability_test_calibrated": [
            b.to_dict() for b in reliability_table(p_test, truth_01, 15) if b.count
        ],
        "no_call_test": _r(float(np.mean(np.array(test.label) == NO_CALL))),
        "selective": chosen.to_dict(),
        "test": _summary(p_test, y_test, chosen.threshold),
        "served_policy": served.to_dict() if served is not None else None,
        "test_at_served_threshold": (
            _summary(p_test, y_test, served.selective.threshold, served.threshold)
            if served is not None and served.selective is not None
            else None
        ),
        "test_all_called_at_0.5": _summary(p_test, y_test, 0.5),
        "test_policies": _policies(p_test, y_test, classifier),
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
    print("ECE on the test plates:", json.dumps(result["ece_test"]))
    print("benchmark threshold:", json.dumps(result["selective"], indent=1))
    print("test plates at the benchmark threshold:", json.dumps(result["test"], indent=1))
    print("served policy:", json.dumps(result["served_policy"], indent=1))
    print("test plates at the served threshold:", json.dumps(result["test_at_served_threshold"]))
    print("test plates, every well called:", json.dumps(result["test_all_called_at_0.5"]))
    print("threshold policies:", json.dumps(result["test_policies"], indent=1))
    print("other alphas:", json.dumps(result["other_alphas"], indent=1))
    print("error vs coverage (test plates):")
    for row in curve:
        t, c, e = row["threshold"], row["coverage"], row["error_among_called"]
        print(f"  t={t:.3f} coverage={c} error={e}")

    p_prev, _, y_prev = _collect(
        classifier, prevalence_seeds, 0.9, stride, args.label_noise
    ).arrays()
    result["seeds_prevalence_0.9"] = prevalence_seeds
    result["prevalence_0.9"] = {
        "at_benchmark_threshold": _summary(p_prev, y_prev, chosen.threshold),
        "at_served_threshold": (
            _summary(p_prev, y_prev, served.selective.threshold, served.threshold)
            if served is not None and served.selective is not None
            else None
        ),
        "all_called_at_0.5": _summary(p_prev, y_prev, 0.5),
    }
    print("prevalence 0.9:", json.dumps(result["prevalence_0.9"], indent=1))
    result["wall_s"] = round(time.perf_counter() - started, 1)
    if args.plot:
        write_plot(args.plot, result)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
