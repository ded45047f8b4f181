"""Two model versions on the same wells: paired accuracy and AUC, and their preprocessing cost.

Both versions (default: the bundled ``hscnn-sim`` v1, the paper's HSM with SSNs, and v2, the
no-SSN retrain) classify the very same acquired fields of simulated plates of seeds neither
trained on, through :class:`app.classifier.WellClassifier` (each with its own pipeline, from its
card). Truth is the simulated FCT. Reported: accuracy and AUC with 95 % bootstrap intervals
(:func:`models.metrics.evaluate`), the exact McNemar test on the paired calls at 0.5 and
DeLong's test on the paired probabilities, and the preprocessing milliseconds per frame of each,
measured well by well in alternation in this one run (their ratio is the figure; the machine is
shared). Wells either version leaves without a probability (QC) are left out of both.

The figures are printed, and the last line is ``RESULT {json}``.

Usage::

    .venv/bin/python benchmarks/model_versions.py                  # 10 plates, seeds 950-959
    .venv/bin/python benchmarks/model_versions.py --quick          # 2 plates, every 2nd well
    .venv/bin/python benchmarks/model_versions.py --a hscnn-sim:1 --b hscnn-sim:2
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from app.classifier import WellClassifier
from hardware.microscope import ScanPlan, StepScanner
from hardware.sim import SimulatedMicroscope, SimulationConfig
from hardware.sim.truth import plate_truth
from models.inference import OnnxClassifier
from models.metrics import delong, evaluate, mcnemar
from models.repository import BUNDLED_REPOSITORY, ModelRepository

logger = logging.getLogger("benchmarks.model_versions")


def _classifier(spec: str) -> tuple[str, WellClassifier]:
    name, _, version = spec.partition(":")
    artifact = ModelRepository(BUNDLED_REPOSITORY).get(name, int(version) if version else None)
    return artifact.label, WellClassifier(OnnxClassifier(artifact.model_path, intra_op_threads=1))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", default="hscnn-sim:1", help="NAME:VERSION (bundled)")
    parser.add_argument("--b", default="hscnn-sim:2", help="NAME:VERSION (bundled)")
    parser.add_argument("--plates", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=950)
    parser.add_argument("--quick", action="store_true", help="2 plates, every 2nd well")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    load_before = round(os.getloadavg()[0], 2)
    label_a, a = _classifier(args.a)
    label_b, b = _classifier(args.b)
    plates, stride = (2, 2) if args.quick else (args.plates, 1)

    truth: list[int] = []
    p_a: list[float] = []
    p_b: list[float] = []
    ms_a: list[float] = []
    ms_b: list[float] = []
    no_call = {"a": 0, "b": 0}
    for seed in range(args.first_seed, args.first_seed + plates):
        config = SimulationConfig(seed=seed)
        barcode = f"VERSIONS-{seed}"
        labels = plate_truth(config, barcode)
        scanner = StepScanner(SimulatedMicroscope(config, barcode=barcode))
        wells = list(config.plate.well_names[::stride])
        for index, well in enumerate(scanner.scan(ScanPlan(barcode, wells, objective="40x"))):
            if well.failed:
                continue
            # Alternate which version goes first, so neither always meets a warm cache.
            order = [(a, ms_a), (b, ms_b)] if index % 2 == 0 else [(b, ms_b), (a, ms_a)]
            calls = {}
            for classifier, timings in order:
                call = classifier.classify(well.fields)
                calls[id(classifier)] = call
                timings.append(call.preprocessing_ms / max(len(well.fields), 1))
            call_a, call_b = calls[id(a)], calls[id(b)]
            no_call["a"] += call_a.label == "no call"
            no_call["b"] += call_b.label == "no call"
            if call_a.probability is None or call_b.probability is None:
                continue
            truth.append(int(labels[well.well].label == "high"))
            p_a.append(call_a.probability)
            p_b.append(call_b.probability)
        logger.info("plate seed %d: %d paired wells so far", seed, len(truth))

    y = np.array(truth)
    score_a, score_b = np.array(p_a), np.array(p_b)
    report_a = evaluate(y, score_a)
    report_b = evaluate(y, score_b)
    paired_calls = mcnemar(y, (score_a >= 0.5).astype(int), (score_b >= 0.5).astype(int))
    paired_auc = delong(y, score_a, score_b)
    median_a, median_b = statistics.median(ms_a), statistics.median(ms_b)

    def summary(report: dict[str, Any]) -> dict[str, Any]:
        metrics, ci = report["metrics"], report["ci95"]
        return {
            "accuracy": round(metrics["accuracy"], 4),
            "accuracy_ci95": [round(v, 4) for v in ci["accuracy"]],
            "auc": round(metrics["auc"], 4),
            "auc_ci95": [round(v, 4) for v in ci["auc"]],
        }

    result: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "load_before": load_before,
        "quick": args.quick,
        "seeds": [args.first_seed, args.first_seed + plates - 1],
        "paired_wells": len(y),
        "a": {"model": label_a, **summary(report_a), "no_call": no_call["a"]},
        "b": {"model": label_b, **summary(report_b), "no_call": no_call["b"]},
        "mcnemar": {
            "only_a_correct": paired_calls.only_a_correct,
            "only_b_correct": paired_calls.only_b_correct,
            "p_value": round(paired_calls.p_value, 4),
        },
        "delong": {
            "auc_difference": round(paired_auc.difference, 4),
            "ci95": [round(v, 4) for v in paired_auc.ci95],
            "p_value": round(paired_auc.p_value, 4),
        },
        "preprocessing_ms_per_frame": {
            "a_median": round(median_a, 2),
            "b_median": round(median_b, 2),
            "ratio_a_over_b": round(median_a / median_b, 2),
        },
        "wall_s": round(time.perf_counter() - started, 1),
    }
    for key in ("a", "b"):
        part = result[key]
        print(
            f"{part['model']}: accuracy {part['accuracy']} {part['accuracy_ci95']}, "
            f"AUC {part['auc']} {part['auc_ci95']}, no call {part['no_call']}"
        )
    print(f"McNemar: {result['mcnemar']}; DeLong: {result['delong']}")
    print(f"preprocessing per frame: {result['preprocessing_ms_per_frame']}")
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
