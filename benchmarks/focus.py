"""Focus on the simulated instrument: focus QC against true defocus, autofocus strategies, and
what focusing does to the calls.

Three parts, each on simulated plates of their own seeds (the Z-aware simulator of
:mod:`hardware.sim.focus`, whose ``focus_truth`` knows where each field's cells are sharp):

(a) **Focus QC calibration.** Frames rendered at known distances from their cells' plane,
    labelled out of focus when that distance exceeds half the depth of field. The threshold of
    the focus ratio (:func:`models.pipeline.focus_ratio`) is chosen on calibration plates
    (Youden's J) and its ROC is reported on held-out plates of other seeds, beside the variance
    of the Laplacian (:func:`models.pipeline.focus_score`) and its old threshold of 20;
(b) **Autofocus.** The same plate scanned with plain software autofocus, with the focus map
    and with the reflection (hardware) autofocus, through :class:`hardware.microscope.StepScanner`
    in the timing model's fast mode: autofocus seconds and steps per well, the share of fields
    within the depth of field, instrument time per well, and the map's speed-up;
(c) **Calls.** Held-out plates scanned with continuous reflection focus (the default), with the
    focus map, and at a fixed z, classified by the bundled model: accuracy against the simulated
    FCT, and the share of wells flagged (QC flags on any field, or ``focus_failed``).

The figures are printed, and the last line is ``RESULT {json}``.

Usage::

    .venv/bin/python benchmarks/focus.py            # about 10 minutes on 2 busy cores
    .venv/bin/python benchmarks/focus.py --quick    # fewer frames, plates and wells
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
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.classifier import WellClassifier
from hardware.autofocus import AutofocusMode
from hardware.microscope import ScanPlan, StepScanner, WellAcquisition
from hardware.sim import SimulatedMicroscope, SimulationConfig, render_field
from hardware.sim.truth import plate_truth
from models.inference import OnnxClassifier
from models.metrics import auc_score
from models.pipeline import PipelineConfig, prepare
from models.repository import BUNDLED_REPOSITORY, ModelRepository

logger = logging.getLogger("benchmarks.focus")


def _load() -> float:
    return round(os.getloadavg()[0], 2)


# -- (a) focus QC ------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Frame:
    defocus_um: float  # |z - cell_z|
    out_of_focus: bool  # beyond half the depth of field
    focus_ratio: float
    focus_score: float


def _qc_frames(seeds: Sequence[int], per_plate: int, objective: str, rng_seed: int) -> list[_Frame]:
    """Frames at random wells and random distances from their cells' plane: 40 % within the
    depth of field, 30 % within two depths of field (where the threshold matters), 30 % anywhere
    up to 40 um away."""
    rng = np.random.default_rng(rng_seed)
    config_pipeline = PipelineConfig()
    frames = []
    for seed in seeds:
        config = SimulationConfig(seed=seed)
        barcode = f"FOCUS-QC-{seed}"
        microscope = SimulatedMicroscope(config, barcode=barcode)
        microscope.set_objective(objective)  # type: ignore[arg-type]
        dof = microscope.depth_of_field_um
        for _ in range(per_plate):
            well = config.plate.well_names[int(rng.integers(len(config.plate.well_names)))]
            cx, cy = config.plate.well_center_um(well)
            x, y = cx + float(rng.uniform(-1500, 1500)), cy + float(rng.uniform(-1500, 1500))
            truth = microscope.focus_truth(x, y)
            kind = rng.random()
            if kind < 0.4:  # within the depth of field
                dz = float(rng.uniform(-dof / 2.0, dof / 2.0))
            elif kind < 0.7:  # near its edge, where the threshold matters
                dz = float(rng.uniform(-2.0 * dof, 2.0 * dof))
            else:  # anywhere a fixed z may leave a field
                dz = float(rng.uniform(-40.0, 40.0))
            frame = render_field(config, barcode, well, x, y, objective, z_um=truth.cell_z_um + dz)
            qc = prepare(frame, config_pipeline, bit_depth=config.bit_depth).qc
            if qc.excluded:  # overexposed frames never reach the focus check
                continue
            frames.append(_Frame(abs(dz), abs(dz) > dof / 2.0, qc.focus_ratio, qc.focus_score))
    return frames


def _auc_sharp(score: np.ndarray, blurred: np.ndarray) -> float:
    """AUC of ``score`` for telling sharp frames (positives) from blurred ones."""
    auc = auc_score((~blurred).astype(int), score)
    return float("nan") if auc is None else auc


def _youden_threshold(sharp: np.ndarray, blurred: np.ndarray) -> float:
    """The threshold t maximising sensitivity + specificity - 1 for "sharp iff score >= t"."""
    candidates = np.unique(np.concatenate([sharp, blurred]))
    best, best_j = float(candidates[0]), -1.0
    for t in candidates:
        j = float(np.mean(sharp >= t) + np.mean(blurred < t) - 1.0)
        if j > best_j:
            best, best_j = float(t), j
    # midway to the next lower value: the boundary, not a sample on it
    lower = candidates[candidates < best]
    return (best + float(lower.max())) / 2.0 if len(lower) else best


def _rates(frames: list[_Frame], flagged: np.ndarray) -> dict[str, float]:
    truth = np.array([f.out_of_focus for f in frames])
    return {
        "sensitivity": round(float(flagged[truth].mean()), 4) if truth.any() else math.nan,
        "specificity": round(float((~flagged[~truth]).mean()), 4) if (~truth).any() else math.nan,
    }


def focus_qc(quick: bool, objective: str) -> dict[str, Any]:
    per_plate = 30 if quick else 80
    calibration = _qc_frames(range(100, 103), per_plate, objective, rng_seed=1)
    held_out = _qc_frames(range(200, 204 if quick else 208), per_plate, objective, rng_seed=2)
    cal_ratio = np.array([f.focus_ratio for f in calibration])
    cal_blur = np.array([f.out_of_focus for f in calibration])
    threshold = _youden_threshold(cal_ratio[~cal_blur], cal_ratio[cal_blur])
    ratio = np.array([f.focus_ratio for f in held_out])
    score = np.array([f.focus_score for f in held_out])
    blurred = np.array([f.out_of_focus for f in held_out])
    default = PipelineConfig()
    result = {
        "objective": objective,
        "frames_calibration": len(calibration),
        "frames_held_out": len(held_out),
        "held_out_out_of_focus": int(blurred.sum()),
        "threshold_from_calibration": round(threshold, 3),
        "pipeline_min_focus_ratio": default.min_focus_ratio,
        "auc_focus_ratio": round(_auc_sharp(ratio, blurred), 4),
        "auc_laplacian_variance": round(_auc_sharp(score, blurred), 4),
        "at_calibrated_threshold": _rates(held_out, ratio < threshold),
        "at_pipeline_default": _rates(held_out, ratio < default.min_focus_ratio),
        "old_rule_laplacian_below_20": _rates(held_out, score < default.min_focus),
        "laplacian_variance_range_20um_plus": [
            round(float(score[[f.defocus_um > 20 for f in held_out]].min()), 1),
            round(float(score[[f.defocus_um > 20 for f in held_out]].max()), 1),
        ]
        if any(f.defocus_um > 20 for f in held_out)
        else None,
    }
    curve = []
    for t in np.linspace(0.0, 6.0, 25):
        flagged = ratio < t
        curve.append(
            {
                "threshold": round(float(t), 2),
                "tpr": round(float(flagged[blurred].mean()), 4),
                "fpr": round(float(flagged[~blurred].mean()), 4),
            }
        )
    result["roc_focus_ratio"] = curve
    return result


# -- (b) autofocus -----------------------------------------------------------------------------
def _scan(
    config: SimulationConfig,
    barcode: str,
    wells: Sequence[str],
    mode: AutofocusMode,
    objective: str = "40x",
) -> tuple[list[WellAcquisition], SimulatedMicroscope]:
    microscope = SimulatedMicroscope(config, barcode=barcode)
    scanner = StepScanner(microscope, autofocus=mode)
    plan = ScanPlan(barcode, list(wells), objective=objective)  # type: ignore[arg-type]
    return list(scanner.scan(plan)), microscope


def _within_dof(
    wells: list[WellAcquisition], microscope: SimulatedMicroscope
) -> list[tuple[bool, bool]]:
    """Per field: (exposed within half the depth of field of its cells, autofocus reported ok
    or did not run)."""
    inside = []
    for well in wells:
        for field in well.fields:
            truth = microscope.focus_truth(field.x_um, field.y_um)
            z = field.z_um if field.z_um is not None else math.nan
            ok = field.autofocus is None or field.autofocus.ok
            inside.append((abs(z - truth.cell_z_um) <= truth.depth_of_field_um / 2.0, ok))
    return inside


def autofocus(quick: bool) -> dict[str, Any]:
    config = SimulationConfig(seed=300)
    barcode = "FOCUS-AF-300"
    wells = config.plate.well_names[:: 4 if quick else 1]
    result: dict[str, Any] = {"wells": len(wells)}
    for mode in ("software", "map", "hardware"):
        started = time.perf_counter()
        acquired, microscope = _scan(config, barcode, wells, mode)  # type: ignore[arg-type]
        reports = [f.autofocus for w in acquired for f in w.fields if f.autofocus is not None]
        inside = _within_dof(acquired, microscope)
        instrument = [w.instrument_ms for w in acquired if w.instrument_ms is not None]
        result[mode] = {
            "af_seconds_per_well": round(float(np.mean([r.seconds for r in reports])), 3),
            "af_steps_per_well": round(float(np.mean([r.steps for r in reports])), 2),
            "af_failed": int(sum(not r.ok for r in reports)),
            "within_depth_of_field": round(float(np.mean([i for i, _ in inside])), 4),
            # the fields whose autofocus found focus (the failures are flagged focus_failed)
            "within_depth_of_field_where_af_ok": round(
                float(np.mean([i for i, ok in inside if ok])), 4
            ),
            "instrument_s_per_well": round(float(np.mean(instrument)) / 1000.0, 3),
            "wall_s": round(time.perf_counter() - started, 1),
        }
        logger.info("autofocus %s: %s", mode, result[mode])
    result["map_speedup_vs_software"] = round(
        result["software"]["af_seconds_per_well"] / result["map"]["af_seconds_per_well"], 2
    )
    return result


# -- (c) calls with and without focusing -------------------------------------------------------
def calls(quick: bool) -> dict[str, Any]:
    artifact = ModelRepository(BUNDLED_REPOSITORY).get("hscnn-sim")
    classifier = WellClassifier(OnnxClassifier(artifact.model_path, intra_op_threads=1))
    seeds = range(500, 501 if quick else 503)
    result: dict[str, Any] = {"plates": len(seeds), "model": artifact.label}
    for mode in ("continuous", "map", "none"):
        correct = called = flagged = total = 0
        for seed in seeds:
            config = SimulationConfig(seed=seed)
            barcode = f"FOCUS-CALLS-{seed}"
            wells = config.plate.well_names[:: 3 if quick else 1]
            truth = plate_truth(config, barcode)
            acquired, _ = _scan(config, barcode, wells, mode)  # type: ignore[arg-type]
            for well in acquired:
                total += 1
                if well.failed:
                    flagged += 1
                    continue
                call = classifier.classify(well.fields)
                if call.qc_flags or well.focus_failed:
                    flagged += 1
                if call.label is not None:
                    called += 1
                    correct += call.label == truth[well.well].label
        result[mode] = {
            "wells": total,
            "accuracy_of_calls": round(correct / called, 4) if called else None,
            "called": called,
            "flagged_fraction": round(flagged / total, 4),
        }
        logger.info("calls %s: %s", mode, result[mode])
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer frames, plates and wells")
    parser.add_argument(
        "--parts", default="qc,autofocus,calls", help="comma-separated: qc, autofocus, calls"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    result: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "load_before": _load(),
        "quick": args.quick,
    }
    started = time.perf_counter()
    if "qc" in parts:
        result["focus_qc_40x"] = focus_qc(args.quick, "40x")
        print("(a) focus QC, 40x:", json.dumps(result["focus_qc_40x"], indent=1))
    if "autofocus" in parts:
        result["autofocus"] = autofocus(args.quick)
        print("(b) autofocus:", json.dumps(result["autofocus"], indent=1))
    if "calls" in parts:
        result["calls"] = calls(args.quick)
        print("(c) calls:", json.dumps(result["calls"], indent=1))
    result["load_after"] = _load()
    result["wall_s"] = round(time.perf_counter() - started, 1)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
