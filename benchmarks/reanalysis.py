"""Re-scoring a stored plate: the batched fast path (app/rescore.py) against the serial path.

One simulated 96-well plate (one field per well, 40x, 528 x 720 uint16) is acquired and stored
as the scan worker stores it (OME-Zarr, SHA-256 per field) in a temporary folder. It is then
re-scored, in this one run, by:

* **serial**: today's per-well path: load each well's fields (checksum verified) and
  :meth:`app.classifier.WellClassifier.classify` them, one small onnxruntime batch per well;
  with the service's default onnxruntime threads (``inference_threads=0``: one a core), the
  baseline, and with one intra-op thread;
* **in-process**: :func:`app.rescore.iter_rescore` without a pool: fields prepared in this
  process, onnxruntime batches of ``b`` fields across wells;
* **pool**: the same with a persistent :class:`app.rescore.PreparePool` of ``w`` workers
  preparing while this process runs onnxruntime (``t`` intra-op threads). The pools are started
  once, before any timing (their start-up is reported apart), and reused for every repeat;
* **analysis**: the whole re-analysis a user runs (``mscreen reanalyse``, the service's
  worker): :class:`app.analysis_worker.AnalysisWorker` with a 2-worker pool claims the
  analysis, re-scores the plate and commits each well's result (its lease re-checked) to a
  SQLite database, without and with writing the calls into the plate as NGFF labels
  (:mod:`app.ngff_results`); its results are deleted and the analysis re-queued between repeats.

Images per second of each (the best of the repeats; the medians are in the JSON), and the
ratios to the serial baseline and to the faster of the two serial settings, are printed, one
line per configuration (the machine is shared, so the ratio measured in the same run is the
figure; the arms alternate within each repeat, so load from elsewhere hits them alike). Every
configuration's calls are checked against the serial ones (label, leaning, QC flags, fields
used, and the probabilities bit for bit). The last line is
``RESULT {json}``.

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
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.classifier import WellCall, WellClassifier
from app.rescore import PreparePool, StoredField, WellRescore, iter_rescore, load_frame
from hardware.microscope import AcquiredField, ScanPlan, StepScanner
from hardware.sim import SimulatedMicroscope, SimulationConfig
from models.inference import OnnxClassifier
from models.repository import BUNDLED_REPOSITORY, ModelRepository
from store.images import ImageStore

logger = logging.getLogger("benchmarks.reanalysis")

BARCODE = "REANALYSIS-1"
BASELINE = "serial t0"


def _store_plate(root: Path, wells: Sequence[str]) -> list[StoredField]:
    store = ImageStore(root)
    scanner = StepScanner(SimulatedMicroscope(SimulationConfig(seed=960), barcode=BARCODE))
    stored = []
    for acquisition in scanner.scan(ScanPlan(BARCODE, list(wells), objective="40x")):
        for f in acquisition.fields:
            saved = store.save(BARCODE, 1, f, fields_per_well=1)
            stored.append(StoredField(f.well, f.field_index, saved.path, saved.sha256))
    return stored


def _database(root: Path, fields: Sequence[StoredField], artifact: Any) -> tuple[Any, int]:
    """A SQLite database holding the stored plate as a finished scan, and a queued analysis of
    it with ``artifact``: (session factory, analysis id)."""
    import migrations
    from app.analyses import ClassifierCache, ModelSpec, request_analysis
    from store import db, queries
    from store.orm import Image, Scan, ScanStatus, WellResult, WellStatus

    url = f"sqlite:///{root / 'bench.db'}"
    migrations.upgrade(url)
    factory = db.make_session_factory(db.make_engine(url))
    with db.session_scope(factory) as session:
        plate = queries.get_or_create_plate(session, BARCODE)
        ids = {w.name: w.id for w in plate.wells}
        scan = Scan(
            plate=plate,
            objective="40x",
            fields_per_well=1,
            wells_requested=[f.well for f in fields],
            microscope="benchmark",
            status=ScanStatus.completed,
        )
        session.add(scan)
        session.flush()
        now = datetime.now(UTC)
        for f in fields:
            frame, _ = load_frame(f)
            session.add(
                Image(
                    scan_id=scan.id,
                    well_id=ids[f.well],
                    field_index=f.field_index,
                    path=f.path,
                    sha256=f.sha256,
                    height=frame.shape[0],
                    width=frame.shape[1],
                    dtype=str(frame.dtype),
                    objective="40x",
                    pixel_size_um=1.0,
                    x_um=0.0,
                    y_um=0.0,
                    acquired_at=now,
                    mean_v=0.0,
                    focus_score=0.0,
                    qc_excluded=False,
                    qc_flags=[],
                )
            )
            session.add(
                WellResult(scan_id=scan.id, well_id=ids[f.well], status=WellStatus.ok, qc_flags=[])
            )
        session.flush()
        analysis, _ = request_analysis(
            session,
            scan.id,
            ModelSpec(artifact.name, artifact.version),
            repository=ModelRepository(BUNDLED_REPOSITORY),
            classifiers=ClassifierCache(),
            requested_by="benchmark",
        )
        return factory, analysis.id


def _requeue(factory: Any, analysis_id: int) -> None:
    from sqlalchemy import delete, update

    from store.db import session_scope
    from store.orm import Analysis, AnalysisResult, ScanStatus

    with session_scope(factory) as session:
        session.execute(delete(AnalysisResult).where(AnalysisResult.analysis_id == analysis_id))
        session.execute(
            update(Analysis)
            .where(Analysis.id == analysis_id)
            .values(status=ScanStatus.queued, wells_done=0, lease_owner=None)
        )


def _analysis_results(factory: Any, analysis_id: int) -> dict[str, Signature]:
    from sqlalchemy import select

    from store.db import session_scope
    from store.orm import AnalysisResult, Well

    with session_scope(factory) as session:
        rows = session.execute(
            select(Well.name, AnalysisResult)
            .join(Well, AnalysisResult.well_id == Well.id)
            .where(AnalysisResult.analysis_id == analysis_id)
            .order_by(Well.row, Well.column)
        ).all()
        return {
            name: (
                r.error,
                r.label,
                r.leaning,
                list(r.qc_flags),
                r.fields_used,
                r.probability,
                list(r.field_probabilities),
            )
            for name, r in rows
        }


def _serial(fields: Sequence[StoredField], classifier: WellClassifier) -> dict[str, WellCall]:
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
            datetime.now(UTC),
            0.0,
            bit_depth,
        )
        calls[f.well] = classifier.classify([acquired])
    return calls


Signature = tuple[Any, ...]


def _signature(call: WellCall | WellRescore) -> Signature:
    """What must not change: the call, its flags and every probability (compared exactly)."""
    if isinstance(call, WellCall):
        probabilities = [f.probability for f in call.fields]
        error = None
    else:
        probabilities, error = call.field_probabilities, call.error
    return (
        error,
        call.label,
        call.leaning,
        call.qc_flags,
        call.fields_used,
        call.probability,
        probabilities,
    )


@dataclass
class _Arm:
    name: str
    run: Callable[[], dict[str, Signature]]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="hscnn-sim", help="NAME or NAME:VERSION (bundled)")
    parser.add_argument("--quick", action="store_true", help="48 wells, one repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--device",
        action="store_true",
        help="a lent GPU machine (benchmarks/gpu.sh): the serial baseline and pools of up to 8 "
        "workers feeding onnxruntime with provider auto (CUDA when this onnxruntime has it) "
        "at batch 32 and 96; the provider really used is recorded",
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the RESULT JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    load_before = round(os.getloadavg()[0], 2)
    name, _, version = args.model.partition(":")
    artifact = ModelRepository(BUNDLED_REPOSITORY).get(name, int(version) if version else None)
    # The service's session (onnxruntime's default threads), and one with a single intra-op
    # thread, which leaves the cores to the prepare workers.
    default = WellClassifier(OnnxClassifier(artifact.model_path))
    single = WellClassifier(OnnxClassifier(artifact.model_path, intra_op_threads=1))
    wells = SimulationConfig().plate.well_names[:: 2 if args.quick else 1]
    repeats = 1 if args.quick else args.repeats

    def serial(classifier: WellClassifier) -> Callable[[], dict[str, Signature]]:
        return lambda: {w: _signature(c) for w, c in _serial(fields, classifier).items()}

    def batched(
        classifier: WellClassifier, pool: PreparePool | None, batch: int
    ) -> Callable[[], dict[str, Signature]]:
        return lambda: {
            r.well: _signature(r)
            for r in iter_rescore(fields, classifier, pool=pool, batch_size=batch)
        }

    if args.device:
        _device_run(artifact, wells, repeats, args.out)
        return
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        fields = _store_plate(Path(tmp), wells)
        pools = {w: stack.enter_context(PreparePool(default.config, workers=w)) for w in (2, 3)}
        startup_s = {f"w{w}": round(p.startup_s or 0.0, 2) for w, p in pools.items()}
        factory, analysis_id = _database(Path(tmp), fields, artifact)

        def analysis(write_plate: bool) -> Callable[[], dict[str, Signature]]:
            from app.analyses import ClassifierCache
            from app.analysis_worker import AnalysisContext, AnalysisWorker

            worker = AnalysisWorker(
                AnalysisContext(
                    session_factory=factory,
                    repository=ModelRepository(BUNDLED_REPOSITORY),
                    classifiers=ClassifierCache(intra_op_threads=1),
                    prepare_workers=2,
                    write_plate_results=write_plate,
                )
            )
            stack.callback(worker.close)
            _requeue(factory, analysis_id)
            worker.run_one(analysis_id)  # warm: its pool started and its model loaded

            def run() -> dict[str, Signature]:
                _requeue(factory, analysis_id)
                worker.run_one(analysis_id)
                return _analysis_results(factory, analysis_id)

            return run

        arms = [
            _Arm(BASELINE, serial(default)),
            _Arm("serial t1", serial(single)),
            _Arm("in-process b64 t0", batched(default, None, 64)),
            _Arm("pool w2 b16 t1", batched(single, pools[2], 16)),
            _Arm("pool w2 b64 t1", batched(single, pools[2], 64)),
            _Arm("pool w2 b64 t0", batched(default, pools[2], 64)),
            _Arm("pool w3 b16 t1", batched(single, pools[3], 16)),
            _Arm("analysis w2 b64 t1", analysis(False)),
            _Arm("analysis + labels", analysis(True)),
        ]
        reference = serial(default)()  # warm-up, and the reference calls
        seconds: dict[str, list[float]] = {arm.name: [] for arm in arms}
        differing: dict[str, int] = {arm.name: 0 for arm in arms}
        for _ in range(repeats):
            for arm in arms:
                started = time.perf_counter()
                results = arm.run()
                seconds[arm.name].append(time.perf_counter() - started)
                assert list(results) == list(reference), "wells out of order"
                differing[arm.name] += sum(results[w] != want for w, want in reference.items())
                logger.debug("%s: %.2f s", arm.name, seconds[arm.name][-1])
    best = {label: min(values) for label, values in seconds.items()}
    result: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "load_before": load_before,
        "load_after": round(os.getloadavg()[0], 2),
        "model": artifact.label,
        "images": len(fields),
        "repeats": repeats,
        "baseline": BASELINE,
        "pool_startup_s": startup_s,
        "wells_differing_from_serial": differing,
        "images_per_s": {label: round(len(fields) / s, 1) for label, s in best.items()},
        "ratio_to_serial": {label: round(best[BASELINE] / s, 2) for label, s in best.items()},
        # The serial path with the faster of its two thread settings in this run: the ratio
        # that a better-configured serial path could not close.
        "ratio_to_best_serial": {
            label: round(min(best[BASELINE], best["serial t1"]) / s, 2) for label, s in best.items()
        },
        "median_images_per_s": {
            label: round(len(fields) / statistics.median(values), 1)
            for label, values in seconds.items()
        },
        "seconds": {label: [round(v, 3) for v in values] for label, values in seconds.items()},
    }
    print(f"pool start-up (excluded from the timings): {startup_s} s")
    for label in best:
        print(
            f"{label:>18}: {result['images_per_s'][label]:7.1f} images/s "
            f"({result['ratio_to_serial'][label]:.2f}x serial, "
            f"{result['ratio_to_best_serial'][label]:.2f}x the faster serial)  "
            f"wells differing from serial: {differing[label]}"
        )
    _emit(result, args.out)


def _emit(result: dict[str, Any], out: Path | None) -> None:
    if out is not None:
        out.write_text(json.dumps(result, indent=2))
    print("RESULT " + json.dumps(result))


def _device_run(artifact: Any, wells: Sequence[str], repeats: int, out: Path | None) -> None:
    """The re-analysis path on a lent accelerator: serial (provider auto) against pools feeding
    batches of 32 and 96; every arm's calls checked against the serial ones."""
    workers = max(2, min(8, (os.cpu_count() or 2) - 1))
    auto = WellClassifier(OnnxClassifier(artifact.model_path, providers="auto"))
    single = WellClassifier(
        OnnxClassifier(artifact.model_path, providers="auto", intra_op_threads=1)
    )
    with tempfile.TemporaryDirectory() as tmp, PreparePool(auto.config, workers=workers) as pool:
        fields = _store_plate(Path(tmp), wells)
        reference = {w: _signature(c) for w, c in _serial(fields, auto).items()}
        arms: dict[str, Callable[[], dict[str, Signature]]] = {
            BASELINE: lambda: {w: _signature(c) for w, c in _serial(fields, auto).items()},
        }
        for batch in (32, 96):
            arms[f"pool w{workers} b{batch}"] = lambda b=batch: {  # type: ignore[misc]
                r.well: _signature(r) for r in iter_rescore(fields, single, pool=pool, batch_size=b)
            }
        seconds: dict[str, list[float]] = {name: [] for name in arms}
        differing = dict.fromkeys(arms, 0)
        for _ in range(repeats):
            for name, run in arms.items():
                started = time.perf_counter()
                results = run()
                seconds[name].append(time.perf_counter() - started)
                differing[name] += sum(results[w] != want for w, want in reference.items())
        startup = pool.startup_s
    best = {name: min(values) for name, values in seconds.items()}
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "provider": auto.model.provider,
        "model": artifact.label,
        "images": len(fields),
        "workers": workers,
        "pool_startup_s": startup,
        "images_per_s": {name: round(len(fields) / s, 1) for name, s in best.items()},
        "ratio_to_serial": {name: round(best[BASELINE] / s, 2) for name, s in best.items()},
        "wells_differing_from_serial": differing,
    }
    for name in best:
        print(
            f"{name:>18}: {result['images_per_s'][name]:7.1f} images/s on {result['provider']} "
            f"({result['ratio_to_serial'][name]:.2f}x serial), differing: {differing[name]}"
        )
    _emit(result, out)


if __name__ == "__main__":
    main()
