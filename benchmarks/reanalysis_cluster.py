"""Archives on Dask: stored plates re-analysed on a 2-worker LocalCluster vs a local process pool.

``--plates`` simulated plates (96 wells, one field each) are scanned through the service's own
worker into a database (PostgreSQL by default, as on a cluster; ``--database-url`` to choose)
and an image store in a temporary folder, on the bundled model's newest version. Each plate's
re-analysis with ``--model`` is then run, in this one run, by:

* **process pool**: :func:`app.distributed.run_in_processes`, ``--workers`` spawn processes,
  one plate per task;
* **dask**: :func:`app.distributed.run_on_dask` on a LocalCluster of ``--workers`` single-
  threaded worker processes (started inside the timed region: a cluster's start is part of
  what it costs), the same tasks.

Between the runs the analyses' results are deleted, the label images they wrote into the plates
removed and the analyses re-queued, so every run does the same work; the order alternates over
``--repeats``. Wall time of each, the ratio dask / pool (the issue's goal: <= 1.25), and
whether the calls are identical are printed; the last line is ``RESULT {json}``.

Usage::

    .venv/bin/python benchmarks/reanalysis_cluster.py                   # 20 plates, PostgreSQL
    .venv/bin/python benchmarks/reanalysis_cluster.py --plates 4 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, delete, select, text, update
from sqlalchemy.engine import make_url

import migrations
from app.analyses import ModelSpec, request_analysis
from app.distributed import TaskConfig, TaskOutcome, run_in_processes, run_on_dask
from app.runtime import build_runtime
from app.scans import create_scan
from app.schemas.scans import ScanCreate
from app.settings import Settings
from store.db import session_scope
from store.orm import Analysis, AnalysisResult, ScanStatus

logger = logging.getLogger("benchmarks.reanalysis_cluster")

DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def _throwaway_database(admin_url: str) -> tuple[str, Callable[[], None]]:
    """A new PostgreSQL database for this run, and how to drop it."""
    name = f"mscreen_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return make_url(admin_url).set(database=name).render_as_string(hide_password=False), drop


def _stored_plates(settings: Settings, plates: int) -> list[int]:
    """Scan ``plates`` full plates through the service's worker; their scan ids."""
    runtime = build_runtime(settings)
    try:
        with session_scope(runtime.session_factory) as session:
            for k in range(plates):
                create_scan(
                    session,
                    ScanCreate(plate_barcode=f"ARCHIVE-{k:03d}"),
                    microscope=runtime.microscope_name,
                )
        started = time.perf_counter()
        runtime.worker.run_pending()
        logger.info("%d plates scanned in %.0f s", plates, time.perf_counter() - started)
        return list(range(1, plates + 1))
    finally:
        runtime.close()


def _queue(settings: Settings, scans: list[int], spec: ModelSpec) -> list[int]:
    runtime = build_runtime(settings)
    try:
        with session_scope(runtime.session_factory) as session:
            return [
                request_analysis(
                    session,
                    scan_id,
                    spec,
                    repository=runtime.model_repository,
                    classifiers=runtime.classifiers,
                    requested_by="benchmark",
                )[0].id
                for scan_id in scans
            ]
    finally:
        runtime.close()


def _reset(url: str, ids: list[int]) -> None:
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(delete(AnalysisResult).where(AnalysisResult.analysis_id.in_(ids)))
        connection.execute(
            update(Analysis)
            .where(Analysis.id.in_(ids))
            .values(
                status=ScanStatus.queued,
                wells_done=0,
                fields_scored=0,
                compute_s=0.0,
                finished_at=None,
                lease_owner=None,
                lease_expires_at=None,
            )
        )
    engine.dispose()


def _remove_labels(image_dir: Path, spec: ModelSpec) -> None:
    """Remove the label images an earlier run wrote, so that every run writes them afresh: a
    re-run replaces them (deleting the old ones first), which costs more, and only the arm that
    ran first would have been spared it."""
    name = f"calls-{spec.name}-v{spec.version}"  # app.ngff_results.label_name
    for target in image_dir.glob(f"*/*.ome.zarr/*/*/*/labels/{name}"):
        shutil.rmtree(target)


def _calls(url: str, ids: list[int]) -> dict[tuple[int, int], tuple[str | None, float | None]]:
    engine = create_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(
            select(
                AnalysisResult.analysis_id,
                AnalysisResult.well_id,
                AnalysisResult.label,
                AnalysisResult.probability,
            ).where(AnalysisResult.analysis_id.in_(ids))
        ).all()
    engine.dispose()
    return {(a, w): (label, p) for a, w, label, p in rows}


def _timed(run: Callable[[], list[TaskOutcome]]) -> tuple[float, list[TaskOutcome]]:
    started = time.perf_counter()
    outcomes = run()
    return time.perf_counter() - started, outcomes


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plates", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="pool/dask pairs, alternating")
    parser.add_argument("--model", default="hscnn-sim:1", help="the version to re-score with")
    parser.add_argument(
        "--database-url",
        default=None,
        help=f"default: a throwaway database on {DEFAULT_POSTGRES} (dropped after)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("distributed", "pymmcore-plus"):  # a cluster's own start/stop lines
        logging.getLogger(noisy).setLevel(logging.WARNING)
    spec = ModelSpec.parse(args.model)

    drop: Callable[[], None] | None = None
    url = args.database_url
    if url is None:
        url, drop = _throwaway_database(os.environ.get("MSCREEN_BENCH_POSTGRES", DEFAULT_POSTGRES))
    try:
        with tempfile.TemporaryDirectory(prefix="mscreen-cluster-") as folder:
            settings = Settings(
                data_dir=Path(folder),
                database_url=url,
                onnx_provider="cpu",
                _env_file=None,  # type: ignore[call-arg]
            )
            migrations.upgrade(url)
            scans = _stored_plates(settings, args.plates)
            ids = _queue(settings, scans, spec)
            config = TaskConfig(database_url=url, model_repository=str(settings.model_repository))
            runs: dict[str, list[float]] = {"pool": [], "dask": []}
            calls: dict[str, Any] = {}
            fields = 0
            for repeat in range(args.repeats):
                order = ["pool", "dask"] if repeat % 2 == 0 else ["dask", "pool"]
                for name in order:
                    _reset(url, ids)
                    _remove_labels(settings.resolved_image_dir, spec)
                    if name == "pool":
                        seconds, outcomes = _timed(
                            lambda: run_in_processes(ids, config, workers=args.workers)
                        )
                    else:
                        seconds, outcomes = _timed(
                            lambda: run_on_dask(ids, config, local_workers=args.workers)
                        )
                    assert all(o.status == "completed" for o in outcomes), outcomes
                    fields = sum(o.fields for o in outcomes)
                    runs[name].append(seconds)
                    calls[name] = _calls(url, ids)
                    logger.info(
                        "%-4s %5.1f s  %d plates  %d fields  %.1f fields/s  workers %s",
                        name,
                        seconds,
                        len(ids),
                        fields,
                        fields / seconds,
                        sorted({o.worker for o in outcomes}),
                    )
    finally:
        if drop is not None:
            drop()
    pool, dask = statistics.median(runs["pool"]), statistics.median(runs["dask"])
    result = {
        "plates": args.plates,
        "workers": args.workers,
        "fields": fields,
        "model": str(spec),
        "pool_s": runs["pool"],
        "dask_s": runs["dask"],
        "dask_over_pool": dask / pool,
        "goal_met": dask / pool <= 1.25,
        "calls_identical": calls["pool"] == calls["dask"],
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    logger.info(
        "dask / pool (median wall time): %.2f (goal <= 1.25); calls identical: %s",
        result["dask_over_pool"],
        result["calls_identical"],
    )
    print("RESULT " + json.dumps(result))
    return result


if __name__ == "__main__":
    main()
