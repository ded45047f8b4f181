"""Re-scoring a stored plate: the batched fast path (app/rescore.py) against the serial path.

One simulated 96-well plate (one field per well, 40x) is acquired and stored as the scan
worker stores it (OME-Zarr, SHA-256 per field) in a temporary folder. It is then re-scored,
in this one run, by:

* **serial**: today's per-well path: load each well's fields (checksum verified) and
  :meth:`app.classifier.WellClassifier.classify` them, one small onnxruntime batch per well;
* **batched**: :func:`app.rescore.rescore` with a process pool of ``workers`` preparing fields
  while the parent runs onnxruntime batches of ``batch_size`` across wells.

Images per second of each, and the ratio to serial, are printed (the machine is shared, so the
ratio measured in the same run is the figure); the batched calls are checked equal to the
serial ones. The last line is ``RESULT {json}``.

Usage::

    .venv/bin/python benchmarks/reanalysis.py                    # bundled hscnn-sim, newest
    .venv/bin/python benchmarks/reanalysis.py --model hscnn-sim:1 --quick
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app.classifier import WellClassifier
from app.rescore import StoredField, load_frame, rescore
from hardware.microscope import AcquiredField, ScanPlan, StepScanner
from hardware.sim import SimulatedMicroscope, SimulationConfig
from models.inference import OnnxClassifier
from models.repository import BUNDLED_REPOSITORY, ModelRepository
from store.images import ImageStore

logger = logging.getLogger("benchmarks.reanalysis")

BARCODE = "REANALYSIS-1"


def _store_plate(root: Path, wells: Sequence[str]) -> list[StoredField]:
    store = ImageStore(root)
    scanner = StepScanner(SimulatedMicroscope(SimulationConfig(seed=960), barcode=BARCODE))
    stored = []
    for acquisition in scanner.scan(ScanPlan(BARCODE, list(wells), objective="40x")):
        for f in acquisition.fields:
            saved = store.save(BARCODE, 1, f, fields_per_well=1)
            stored.append(StoredField(f.well, f.field_index, saved.path, saved.sha256))
    return stored


def _serial(fields: Sequence[StoredField], classifier: WellClassifier) -> dict[str, Any]:
    calls = {}
    for f in fields:  # one field per well
        frame, bit_depth = load_frame(f)
        acquired = AcquiredField(
            f.well,
            f.field_index,
            frame,
            0.0,
            0.0,
            "40x",
            1.0,
            None,
            0.0,
            bit_depth,  # type: ignore[arg-type]
        )
        calls[f.well] = classifier.classify([acquired])
    return calls


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="hscnn-sim", help="NAME or NAME:VERSION (bundled)")
    parser.add_argument("--quick", action="store_true", help="48 wells, one repeat")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    load_before = round(os.getloadavg()[0], 2)
    name, _, version = args.model.partition(":")
    artifact = ModelRepository(BUNDLED_REPOSITORY).get(name, int(version) if version else None)
    classifier = WellClassifier(OnnxClassifier(artifact.model_path))
    wells = SimulationConfig().plate.well_names[:: 2 if args.quick else 1]
    repeats = 1 if args.quick else args.repeats
    arms: list[tuple[str, int, int]] = [("serial", 0, 0)] + [
        (f"batched w{w} b{b}", w, b) for w in (1, 2) for b in (32, 64)
    ]
    seconds: dict[str, list[float]] = {arm: [] for arm, _, _ in arms}
    with tempfile.TemporaryDirectory() as tmp:
        fields = _store_plate(Path(tmp), wells)
        serial = _serial(fields, classifier)  # warm-up, and the reference calls
        mismatches = 0
        for _ in range(repeats):
            for arm, workers, batch in arms:
                started = time.perf_counter()
                if arm == "serial":
                    _serial(fields, classifier)
                else:
                    results = rescore(fields, classifier, workers=workers, batch_size=batch)
                    mismatches += sum(
                        r.label != serial[r.well].label
                        or (r.probability is None) != (serial[r.well].probability is None)
                        or (
                            r.probability is not None
                            and abs(r.probability - serial[r.well].probability) > 1e-5
                        )
                        for r in results
                    )
                seconds[arm].append(time.perf_counter() - started)
                logger.info("%s: %.2f s", arm, seconds[arm][-1])
    best = {arm: min(values) for arm, values in seconds.items()}
    result: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "load_before": load_before,
        "model": artifact.label,
        "images": len(fields),
        "repeats": repeats,
        "calls_differing_from_serial": mismatches,
        "images_per_s": {arm: round(len(fields) / s, 1) for arm, s in best.items()},
        "ratio_to_serial": {arm: round(best["serial"] / s, 2) for arm, s in best.items()},
        "seconds": {arm: [round(v, 3) for v in values] for arm, values in seconds.items()},
    }
    for arm in best:
        print(
            f"{arm:>16}: {result['images_per_s'][arm]:7.1f} images/s "
            f"({result['ratio_to_serial'][arm]}x serial)"
        )
    print(f"calls differing from serial: {mismatches}")
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
