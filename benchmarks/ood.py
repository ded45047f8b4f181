"""Out-of-distribution guard: does it tell the fields the model was trained for from others?

The bundled model (trained on plates ``SIM-TRAIN-0-*`` of simulator seed 0 at 40x, see its model
card) carries an :class:`models.ood.OodGuard` in its ONNX metadata (key ``"ood"``) when it was
exported with one; otherwise one is fitted here with :func:`models.ood.fit_ood_guard` on the
training plates its card lists (grouped by plate) and the output says so. Every field is
prepared with the model's own pipeline config.

In distribution: one field per well of held-out plates of other simulator seeds (default
900-919), 40x. Out of distribution, each scored as ROC AUC of the guard's score against the
in-distribution fields:

(a) **celltype**: the real brightfield single-cell crops of ``../shared/data/celltype-brightfield``
    (HEK-293A and HT1080, another cell type, microscope and normalisation), skipped with a message
    when the folder is absent;
(b) **blank**: the simulator's plate between wells (flat field, dust, illumination gradient,
    camera noise, no cells), and **debris**: the same frames with a few small bright and dark
    specks;
(c) **100x**: the same held-out plates at the other objective (cells 2.5x bigger in pixels).

QC (:func:`models.pipeline.prepare`) may exclude some frames before the guard sees them (e.g.
an underexposed frame); the AUROC is over every frame that has features, and the count QC
excluded is reported beside it. The share of each set flagged at the guard's threshold is
reported too; for the in-distribution fields it is the false positive rate, which the guard's
quantile (default 0.995) aims at 1 - quantile.

The descriptor was tuned on plates of seeds 800-819 (``--first-seed 800``), never on the
benchmark's default seeds. The celltype folder is one fixed set, used for both.

The figures are printed, and the last line is ``RESULT {json}``.

Usage::

    .venv/bin/python benchmarks/ood.py             # 20 plates x 96 wells
    .venv/bin/python benchmarks/ood.py --quick     # 20 plates x 12 wells, guard on 1/4 wells
    .venv/bin/python benchmarks/ood.py --first-seed 800   # the tuning plates
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
from pathlib import Path
from typing import Any

import numpy as np

from hardware.plate import SBS_96
from hardware.sim import SimulationConfig
from hardware.sim.optics import _render
from models.metrics import auc_score
from models.ood import METADATA_KEY, OodGuard, descriptors, field_descriptor, fit_ood_guard
from models.pipeline import PipelineConfig, prepare
from models.repository import BUNDLED_REPOSITORY, ModelRepository
from training.imagesets import ImageSet
from training.imagesets.folder import _image_files, read_frame
from training.imagesets.simulated import simulated_image_set

logger = logging.getLogger("benchmarks.ood")

CELLTYPE = Path(__file__).resolve().parents[2] / "shared" / "data" / "celltype-brightfield"


def _r(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) else round(float(x), 4)


class _Set:
    """Descriptors of one set of frames, and how many frames QC excluded."""

    def __init__(self, name: str, x: np.ndarray, excluded: int, seconds: float) -> None:
        self.name, self.x, self.excluded, self.seconds = name, x, excluded, seconds
        logger.info(
            "%s: %d fields with features, %d excluded by QC, %.1f s",
            name,
            len(x),
            excluded,
            seconds,
        )


def _image_set_descriptors(name: str, images: ImageSet, started: float) -> _Set:
    return _Set(
        name,
        descriptors(images.features, images.masks),
        images.excluded,
        time.perf_counter() - started,
    )


def _simulated(
    name: str,
    seeds: Sequence[int],
    wells: Sequence[str],
    objective: str,
    pipeline: PipelineConfig,
    workers: int,
) -> _Set:
    started = time.perf_counter()
    xs: list[np.ndarray] = []
    excluded = 0
    for seed in seeds:
        images = simulated_image_set(
            [f"OOD-{seed}"],
            sim=SimulationConfig(seed=seed),
            pipeline=pipeline,
            objective=objective,
            wells=list(wells),
            workers=workers,
            progress=False,
        )
        excluded += images.excluded
        xs.append(descriptors(images.features, images.masks))
    return _Set(name, np.concatenate(xs), excluded, time.perf_counter() - started)


def _prepared_descriptors(
    name: str, frames: Sequence[np.ndarray], pipeline: PipelineConfig, bit_depth: int | None
) -> tuple[list[np.ndarray], int]:
    xs: list[np.ndarray] = []
    excluded = 0
    for frame in frames:
        prepared = prepare(frame, pipeline, bit_depth=bit_depth)
        if prepared.qc.excluded or prepared.features is None or prepared.mask is None:
            excluded += 1
            logger.debug("%s: QC excluded a frame: %s", name, prepared.qc.reason)
            continue
        xs.append(field_descriptor(prepared.features, prepared.mask))
    return xs, excluded


def _between_wells(sim: SimulationConfig, barcode: str, index: int) -> np.ndarray:
    """A frame of the plate between wells: the simulator's optics and camera, no cells."""
    wells = SBS_96.well_names
    well = wells[(index * 37) % len(wells)]
    cx, cy = SBS_96.well_center_um(well)
    pitch = 9000.0  # SBS 96 well pitch, um: half of it diagonally is the plate between wells
    return _render(sim, barcode, None, cx + pitch / 2.0, cy + pitch / 2.0, "40x")


def _add_debris(frame: np.ndarray, rng: np.random.Generator, bit_depth: int) -> np.ndarray:
    """A few small bright and dark specks (dust, dead-cell debris) on an empty frame."""
    height, width = frame.shape
    out = frame.astype(np.float32)
    background = float(np.median(out))
    yy, xx = np.mgrid[0:height, 0:width]
    for _ in range(int(rng.integers(3, 16))):
        y, x = rng.uniform(0, height), rng.uniform(0, width)
        sigma = rng.uniform(1.5, 6.0)
        amplitude = rng.choice([-1.0, 1.0]) * rng.uniform(0.1, 0.5) * background
        box = (
            slice(max(int(y - 4 * sigma), 0), int(y + 4 * sigma) + 1),
            slice(max(int(x - 4 * sigma), 0), int(x + 4 * sigma) + 1),
        )
        r2 = (yy[box] - y) ** 2 + (xx[box] - x) ** 2
        out[box] += amplitude * np.exp(-r2 / (2 * sigma * sigma))
    return np.clip(np.rint(out), 0, 2**bit_depth - 1).astype(np.uint16)


def _blank_and_debris(
    seeds: Sequence[int], per_seed: int, pipeline: PipelineConfig
) -> tuple[_Set, _Set]:
    started = time.perf_counter()
    blank: list[np.ndarray] = []
    debris: list[np.ndarray] = []
    for seed in seeds:
        sim = SimulationConfig(seed=seed)
        rng = np.random.default_rng(seed)
        for i in range(per_seed):
            frame = _between_wells(sim, f"OOD-{seed}", i)
            blank.append(frame)
            debris.append(_add_debris(frame, rng, sim.bit_depth))
    bit_depth = SimulationConfig().bit_depth
    xb, eb = _prepared_descriptors("blank", blank, pipeline, bit_depth)
    middle = time.perf_counter()
    xd, ed = _prepared_descriptors("debris", debris, pipeline, bit_depth)
    end = time.perf_counter()
    return (
        _Set("blank", np.array(xb), eb, middle - started),
        _Set("debris", np.array(xd), ed, end - middle),
    )


def _celltype(pipeline: PipelineConfig) -> _Set | None:
    if not CELLTYPE.is_dir():
        logger.warning("celltype: %s is absent, set (a) skipped", CELLTYPE)
        return None
    started = time.perf_counter()
    files = [
        path
        for folder in sorted(p for p in CELLTYPE.iterdir() if p.is_dir())
        for path in _image_files(folder)
    ]
    xs, excluded = _prepared_descriptors(
        "celltype", [read_frame(path) for path in files], pipeline, None
    )
    return _Set("celltype", np.array(xs), excluded, time.perf_counter() - started)


def _guard(
    metadata: dict[str, str],
    card: dict[str, Any],
    pipeline: PipelineConfig,
    stride: int,
    workers: int,
) -> tuple[OodGuard, str]:
    """The model's own guard, or one fitted on its card's training plates (and which)."""
    text = metadata.get(METADATA_KEY)
    if text is not None:
        return OodGuard.from_dict(json.loads(text)), "model metadata"
    data = card["data"]
    simulation = data["simulation"]
    sim = SimulationConfig(
        seed=simulation["seed"],
        difficulty=simulation["difficulty"],
        label_noise=simulation["label_noise"],
        high_fraction=simulation["high_fraction"],
        overexposure_rate=simulation["overexposure_rate"],
    )
    plates = list(data["train_plates"])
    wells = SBS_96.well_names[::stride]
    logger.info(
        "the model carries no %r metadata: fitting a guard on its %d training plates (seed %d, "
        "%s, %d wells each)",
        METADATA_KEY,
        len(plates),
        sim.seed,
        data["objective"],
        len(wells),
    )
    started = time.perf_counter()
    images = simulated_image_set(
        plates,
        sim=sim,
        pipeline=pipeline,
        objective=data["objective"],
        wells=wells,
        workers=workers,
        progress=False,
    )
    guard = fit_ood_guard(images.features, images.masks, groups=list(images.groups))
    logger.info("guard fitted on %d fields in %.1f s", len(images), time.perf_counter() - started)
    source = f"fitted here on {len(plates)} card training plates x {len(wells)} wells"
    return guard, source


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="every 8th well, fewer blanks")
    parser.add_argument("--first-seed", type=int, default=900, help="first held-out plate seed")
    parser.add_argument("--plates", type=int, default=20, help="held-out plates (>= 20)")
    parser.add_argument("--workers", type=int, default=1, help="processes preparing fields")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("training.imagesets").setLevel(logging.WARNING)  # a line per plate
    started = time.perf_counter()
    load_before = round(os.getloadavg()[0], 2)

    artifact = ModelRepository(BUNDLED_REPOSITORY).get("hscnn-sim")
    import onnxruntime

    session = onnxruntime.InferenceSession(
        str(artifact.model_path), providers=["CPUExecutionProvider"]
    )
    metadata = dict(session.get_modelmeta().custom_metadata_map)
    pipeline = PipelineConfig.from_dict(json.loads(metadata["pipeline_config"]))
    card = artifact.card()
    guard, guard_source = _guard(metadata, card, pipeline, 4 if args.quick else 1, args.workers)

    seeds = list(range(args.first_seed, args.first_seed + args.plates))
    wells = SBS_96.well_names[:: 8 if args.quick else 1]
    wells_100x = SBS_96.well_names[:: 8 if args.quick else 4]
    in_set = _simulated("in-distribution 40x", seeds, wells, "40x", pipeline, args.workers)
    sets: list[_Set] = []
    celltype = _celltype(pipeline)
    if celltype is not None:
        sets.append(celltype)
    sets.extend(_blank_and_debris(seeds, 3 if args.quick else 10, pipeline))
    sets.append(_simulated("100x", seeds, wells_100x, "100x", pipeline, args.workers))

    in_scores = guard.score(in_set.x)
    fpr = float(np.mean(guard.is_out(in_scores)))
    results: dict[str, Any] = {}
    for s in sets:
        scores = guard.score(s.x) if len(s.x) else np.zeros(0)
        y = np.r_[np.zeros(len(in_scores)), np.ones(len(scores))].astype(int)
        auc = auc_score(y, np.r_[in_scores, scores]) if len(scores) else None
        results[s.name] = {
            "fields": len(scores),
            "excluded_by_qc": s.excluded,
            "auroc": _r(auc),
            "flagged": _r(float(np.mean(guard.is_out(scores)))) if len(scores) else None,
            "median_score": _r(float(np.median(scores))) if len(scores) else None,
            "seconds": round(s.seconds, 1),
        }
    result: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "load_before": load_before,
        "quick": args.quick,
        "model": artifact.label,
        "guard": guard_source,
        "guard_n_train": guard.n_train,
        "descriptor_dimension": guard.dimension,
        "threshold": _r(guard.threshold),
        "quantile": guard.quantile,
        "seeds_in_distribution": [seeds[0], seeds[-1]],
        "in_distribution": {
            "fields": len(in_scores),
            "excluded_by_qc": in_set.excluded,
            "flagged_fpr": _r(fpr),
            "median_score": _r(float(np.median(in_scores))),
            "p99_score": _r(float(np.quantile(in_scores, 0.99))),
        },
        "ood": results,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(f"guard: {guard_source}; threshold {guard.threshold:.2f} at quantile {guard.quantile}")
    print(
        f"in-distribution ({len(in_scores)} fields of seeds {seeds[0]}-{seeds[-1]}): "
        f"flagged {fpr:.4f} (aim {1 - guard.quantile:.4f}), median score "
        f"{np.median(in_scores):.2f}, QC excluded {in_set.excluded}"
    )
    print(f"{'set':<10} {'fields':>6} {'qc_excl':>7} {'auroc':>7} {'flagged':>8} {'median':>8}")
    for name, row in results.items():
        print(
            f"{name:<10} {row['fields']:>6} {row['excluded_by_qc']:>7} {row['auroc']!s:>7} "
            f"{row['flagged']!s:>8} {row['median_score']!s:>8}"
        )
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
