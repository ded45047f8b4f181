"""Does the service keep up with the instrument? Compute per well against instrument time per well.

Runs a real scan through the service's own code path (:func:`app.runtime.build_runtime`: the
worker, the bundled model on onnxruntime, OME-Zarr image storage, SQLite) on the simulated
microscope with its timing model in fast mode, so the instrument's time is recorded rather
than waited for. Per well it measures:

* **compute**: classification (QC + features + inference, :meth:`WellClassifier.classify`) plus
  storing the images and committing the well (the worker's ``_commit_well``), wall clock;
* **instrument time**: what the simulated stage, focus, autofocus and camera took for that well
  (:attr:`WellAcquisition.instrument_ms`), with the chosen autofocus (default: one reflection
  autofocus per well, ``hardware``) at 40x;
* **frame-to-committed-call latency**: from the moment the scanner hands the well over (after
  its last frame is rendered, so the simulator's own rendering is excluded) to the moment its
  call is committed (``_commit_well`` returns), split into classify, write (the image writes,
  every field) and commit (the rest of ``_commit_well``: its transaction). Listing the well in
  the plate's metadata (``_publish_well``, after the commit) is reported beside it as publish.

The keep-up ratio is compute / instrument time (the issue's goal: <= 0.1 on one CPU core). The
process is pinned to one core (``sched_setaffinity``) and every library runs one thread, unless
``--cores`` says otherwise. The last line is ``RESULT {json}``.

Usage::

    .venv/bin/python benchmarks/keepup.py                 # 48 wells, about a minute
    .venv/bin/python benchmarks/keepup.py --wells 96 --autofocus map
"""

from __future__ import annotations

import os

# One thread per library before numpy / onnxruntime / OpenCV load their pools.
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from app.runtime import build_runtime  # noqa: E402
from app.scans import start_scan  # noqa: E402
from app.schemas.scans import ScanCreate  # noqa: E402
from app.settings import Settings  # noqa: E402
from hardware.microscope import ScanPlan, WellAcquisition  # noqa: E402
from store.db import session_scope  # noqa: E402
from store.images import ImageStore  # noqa: E402

logger = logging.getLogger("benchmarks.keepup")


def _percentile(values: Sequence[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values), q)), 2)


def run(
    wells: int, autofocus: str, cores: int, data_dir: Path, *, fields_per_well: int = 1
) -> dict[str, Any]:
    if cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:cores]))
    cv2.setNumThreads(1 if cores == 1 else 0)
    settings = Settings(
        data_dir=data_dir,
        microscope="simulated",
        autofocus=autofocus,  # type: ignore[arg-type]
        sim_timing="fast",
        onnx_provider="cpu",
        inference_threads=1 if cores == 1 else 0,
    )
    runtime = build_runtime(settings)
    worker = runtime.worker
    scanner = worker.context.scanner
    classifier = worker.context.classifier
    assert classifier is not None, runtime.model_problem

    handed_over: dict[str, float] = {}
    instrument_ms: dict[str, float] = {}
    classify_ms: dict[str, float] = {}
    commit_ms: dict[str, float] = {}
    latency_ms: dict[str, float] = {}
    write_ms: dict[str, float] = {}  # the well's image writes (every field), inside the commit
    publish_ms: dict[str, float] = {}  # listing the committed well (after the commit)

    original_scan = scanner.scan

    def timed_scan(
        plan: ScanPlan, should_stop: Callable[[], bool] = lambda: False
    ) -> Iterator[WellAcquisition]:
        for well in original_scan(plan, should_stop):
            handed_over[well.well] = time.perf_counter()
            if well.instrument_ms is not None:
                instrument_ms[well.well] = well.instrument_ms
            yield well

    original_classify = classifier.classify

    def timed_classify(fields: list[Any], *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        call = original_classify(fields, *args, **kwargs)
        if fields:
            classify_ms[fields[0].well] = (time.perf_counter() - started) * 1000.0
        return call

    original_commit = worker._commit_well

    def timed_commit(
        scan_id: int, plan: ScanPlan, well_ids: Any, acquisition: Any, *rest: Any
    ) -> Any:
        started = time.perf_counter()
        done = original_commit(scan_id, plan, well_ids, acquisition, *rest)
        ended = time.perf_counter()
        commit_ms[acquisition.well] = (ended - started) * 1000.0
        latency_ms[acquisition.well] = (ended - handed_over[acquisition.well]) * 1000.0
        return done

    original_publish = getattr(worker, "_publish_well", None)

    def timed_publish(scan_id: int, plan: ScanPlan, well: str, *rest: Any) -> Any:
        started = time.perf_counter()
        assert original_publish is not None
        done = original_publish(scan_id, plan, well, *rest)
        publish_ms[well] = (time.perf_counter() - started) * 1000.0
        return done

    original_save = ImageStore.save

    def timed_save(store: ImageStore, barcode: str, scan_id: int, field: Any, **kw: Any) -> Any:
        started = time.perf_counter()
        stored = original_save(store, barcode, scan_id, field, **kw)
        elapsed = (time.perf_counter() - started) * 1000.0
        write_ms[field.well] = write_ms.get(field.well, 0.0) + elapsed
        return stored

    # Benchmark instrumentation: wrap the instance's methods (the product code is unchanged).
    scanner.scan = timed_scan  # type: ignore[method-assign]
    classifier.classify = timed_classify  # type: ignore[method-assign]
    worker._commit_well = timed_commit  # type: ignore[method-assign,assignment]
    ImageStore.save = timed_save  # type: ignore[method-assign,assignment]
    if original_publish is not None:  # the worker before issue 16 listed inside the commit
        worker._publish_well = timed_publish  # type: ignore[method-assign,assignment]

    names = list(runtime.worker.context.plate.well_names[:wells])
    with session_scope(runtime.session_factory) as session:
        start_scan(
            session,
            ScanCreate(plate_barcode="KEEPUP-0001", wells=names, fields_per_well=fields_per_well),
            microscope=runtime.microscope_name,
            requested_by="benchmark",
        )
    started = time.perf_counter()
    worker.run_next()
    wall_s = time.perf_counter() - started
    runtime.close()
    ImageStore.save = original_save  # type: ignore[method-assign]

    measured = [w for w in names if w in classify_ms and w in commit_ms and w in instrument_ms]
    compute = [classify_ms[w] + commit_ms[w] for w in measured]
    instrument = [instrument_ms[w] for w in measured]
    ratios = [c / i for c, i in zip(compute, instrument, strict=True)]
    return {
        "wells": len(measured),
        "autofocus": autofocus,
        "cores": cores or os.cpu_count(),
        "compute_ms_per_well": {
            "median": _percentile(compute, 50),
            "p95": _percentile(compute, 95),
        },
        "classify_ms_median": _percentile([classify_ms[w] for w in measured], 50),
        "store_and_commit_ms_median": _percentile([commit_ms[w] for w in measured], 50),
        "instrument_ms_per_well": {
            "median": _percentile(instrument, 50),
            "p95": _percentile(instrument, 95),
        },
        "keep_up_ratio": {
            "of_means": round(float(np.mean(compute) / np.mean(instrument)), 4),
            "median": _percentile(ratios, 50),
            "p95": _percentile(ratios, 95),
        },
        "latency_ms": {
            "p50": _percentile([latency_ms[w] for w in measured], 50),
            "p95": _percentile([latency_ms[w] for w in measured], 95),
        },
        # Where the latency goes, per well (median / p95): the classification, the image
        # writes (every field), and the rest of ``_commit_well`` (its transaction(s)).
        "split_ms": {
            name: {"median": _percentile(values, 50), "p95": _percentile(values, 95)}
            for name, values in {
                "classify": [classify_ms[w] for w in measured],
                "write": [write_ms.get(w, 0.0) for w in measured],
                "commit": [commit_ms[w] - write_ms.get(w, 0.0) for w in measured],
                "publish": [publish_ms.get(w, 0.0) for w in measured],
            }.items()
        },
        "fields_per_well": fields_per_well,
        "scan_wall_s": round(wall_s, 1),
        "instrument_s_total": round(sum(instrument) / 1000.0, 1),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wells", type=int, default=48)
    parser.add_argument(
        "--autofocus", default="hardware", choices=["none", "continuous", "hardware", "map"]
    )
    parser.add_argument("--fields", type=int, default=1, help="fields per well (1..25)")
    parser.add_argument("--cores", type=int, default=1, help="CPU cores to pin to (0: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    with tempfile.TemporaryDirectory(prefix="mscreen-keepup-") as tmp:
        result = run(args.wells, args.autofocus, args.cores, Path(tmp), fields_per_well=args.fields)
    result["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    result["load"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=1))
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
