"""Re-analysing archives: analyses fanned out over processes or a Dask cluster (issue 16).

A core facility may hold thousands of stored plates. Each plate's analysis (queued in the
database by :func:`app.analyses.request_analysis`) becomes one task, :func:`run_analysis_task`,
which runs in a worker process: it opens the database and the model repository named in its
:class:`TaskConfig`, reads the plate's OME-Zarr fields and writes the calls through the same
:class:`app.analysis_worker.AnalysisWorker` the service uses. Writes are idempotent: a task
claims its analysis with a lease, and the unique (analysis, well) constraint and the resume
from the first well without a result mean a task run twice (a worker lost and its task
retried by the scheduler) neither duplicates nor loses a well.

Two executors run the same tasks:

* :func:`run_in_processes`: a local spawn process pool (no cluster needed);
* :func:`run_on_dask`: Dask distributed, on a scheduler's address (``tcp://host:8786``) or on a
  :class:`distributed.LocalCluster` started for the run. Every Dask worker must reach the
  database (PostgreSQL for more than one machine) and the image store at the paths recorded in
  the ``images`` table, and have the model repository; docs/operations.md says how.

Each task runs one plate in one thread (``prepare_workers`` 0): the parallelism is across
plates, one per worker process, so no core is shared by two pools.

Dask's nanny starts its workers with ``MALLOC_TRIM_THRESHOLD_=65536`` (to hand freed memory back
to the OS). Setting any malloc tunable switches off glibc's dynamic mmap threshold, so every
array over 128 KiB - each of a field's dozens of temporaries - is mapped and unmapped anew, its
pages faulted in again: 20 plates took 1.45x as long on a LocalCluster (benchmarks/
reanalysis_cluster.py; 8x on a plain numpy loop). The LocalCluster here is started without it,
and a task in a process started with it (a cluster's workers) sets glibc's thresholds back to
what a plate's arrays need (:func:`_heap_for_arrays`).
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from app.analyses import ClassifierCache
from app.analysis_worker import AnalysisContext, AnalysisWorker
from models.inference import ProviderChoice
from models.repository import ModelRepository

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskConfig:
    """What a task needs to run an analysis in another process (picklable, no secrets beyond
    the database URL)."""

    database_url: str
    model_repository: str
    bit_depth: int | None = None
    onnx_provider: ProviderChoice = "cpu"
    intra_op_threads: int = 1  # one plate per process: one inference thread each
    batch_size: int = 64
    lease_seconds: float = 30.0
    write_plate_results: bool = True  # the calls into each plate's OME-Zarr (app.ngff_results)


@dataclass(frozen=True)
class TaskOutcome:
    """What a task did: ``status`` of the analysis afterwards, wells and fields it scored, and
    where (``worker``: host:pid)."""

    analysis_id: int
    status: str | None
    wells: int
    fields: int
    seconds: float
    worker: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# One worker per process and configuration: the engine, the loaded classifiers and their
# onnxruntime sessions are reused by every task the process runs.
_workers: dict[TaskConfig, AnalysisWorker] = {}


# glibc's mallopt parameters (malloc.h) and the values its dynamic threshold grows up to.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 32 * 2**20
_TRIM_THRESHOLD_BYTES = 64 * 2**20


def _heap_for_arrays() -> bool:
    """In a process started with a malloc tunable set (a Dask worker's MALLOC_TRIM_THRESHOLD_),
    serve arrays of up to 32 MiB from the heap and keep up to 64 MiB of it on free, as glibc's
    own dynamic threshold would. True if it changed anything."""
    tunables = [k for k in os.environ if k.startswith("MALLOC_") and k.endswith("_")]
    if not tunables or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        changed = bool(
            libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
            and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES)
        )
    except (OSError, AttributeError):  # not glibc (musl, say): nothing to undo
        return False
    if changed:
        logger.info(
            "%s set: arrays up to %d MiB served from the heap again (mallopt)",
            ", ".join(tunables),
            _MMAP_THRESHOLD_BYTES // 2**20,
        )
    return changed


def _worker_for(config: TaskConfig) -> AnalysisWorker:
    worker = _workers.get(config)
    if worker is None:
        _heap_for_arrays()
        from store import db

        engine = db.make_engine(config.database_url)
        context = AnalysisContext(
            session_factory=db.make_session_factory(engine),
            repository=ModelRepository(Path(config.model_repository)),
            classifiers=ClassifierCache(
                providers=config.onnx_provider, intra_op_threads=config.intra_op_threads
            ),
            bit_depth=config.bit_depth,
            prepare_workers=0,
            batch_size=config.batch_size,
            write_plate_results=config.write_plate_results,
        )
        worker = _workers[config] = AnalysisWorker(context, lease_seconds=config.lease_seconds)
    return worker


def run_analysis_task(analysis_id: int, config: TaskConfig) -> TaskOutcome:
    """Run analysis ``analysis_id`` here (a task: top level, so it pickles by reference).

    An analysis that is finished, or held by another live worker, is left as it is (``wells``
    0); one that fails records why in the database and reports ``status`` failed.
    """
    import socket

    outcome = _worker_for(config).run_one(analysis_id)
    return TaskOutcome(
        analysis_id=analysis_id,
        status=outcome.status.value if outcome.status is not None else None,
        wells=outcome.wells,
        fields=outcome.fields,
        seconds=outcome.seconds,
        worker=f"{socket.gethostname()}:{os.getpid()}",
    )


Progress = Callable[[TaskOutcome], None]


def run_in_processes(
    analysis_ids: Sequence[int],
    config: TaskConfig,
    *,
    workers: int = 2,
    on_done: Progress | None = None,
) -> list[TaskOutcome]:
    """Run the analyses in a local spawn process pool of ``workers`` processes, one plate per
    task; outcomes in ``analysis_ids`` order."""
    context = multiprocessing.get_context("spawn")
    outcomes: dict[int, TaskOutcome] = {}
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {pool.submit(run_analysis_task, i, config): i for i in analysis_ids}
        for future in as_completed(futures):
            outcome = future.result()
            outcomes[outcome.analysis_id] = outcome
            if on_done is not None:
                on_done(outcome)
    return [outcomes[i] for i in analysis_ids]


def run_on_dask(
    analysis_ids: Sequence[int],
    config: TaskConfig,
    *,
    scheduler: str | None = None,
    local_workers: int = 2,
    on_done: Progress | None = None,
) -> list[TaskOutcome]:
    """Run the analyses as Dask tasks: on the cluster at ``scheduler`` (``tcp://host:8786``), or
    (None) on a LocalCluster of ``local_workers`` single-threaded worker processes started for
    this run. Outcomes in ``analysis_ids`` order.

    Raises:
        RuntimeError: Dask distributed is not installed (the ``cluster`` extra).
    """
    try:
        from distributed import Client, LocalCluster
        from distributed import as_completed as dask_completed
    except ImportError as exc:  # pragma: no cover - the extra is part of the dev install
        raise RuntimeError(
            "Dask distributed is not installed: pip install 'mscreen[cluster]'"
        ) from exc

    cluster = None
    if scheduler is None:
        import dask

        # None drops the variable from what the nanny sets (see the module's docstring).
        with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
            cluster = LocalCluster(
                n_workers=local_workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",  # any free port: never clash with a running cluster
            )
    started = time.perf_counter()
    try:
        with Client(cluster if cluster is not None else scheduler) as client:
            # pure=False: a task re-run is a real re-run (it resumes what is left), never a
            # cached answer; retries=1 covers a worker lost mid-plate.
            futures = [
                client.submit(run_analysis_task, i, config, pure=False, retries=1)
                for i in analysis_ids
            ]
            outcomes: dict[int, TaskOutcome] = {}
            for future in dask_completed(futures):
                outcome = future.result()
                outcomes[outcome.analysis_id] = outcome
                if on_done is not None:
                    on_done(outcome)
    finally:
        if cluster is not None:
            cluster.close()
    logger.info("%d analyses on dask in %.1f s", len(analysis_ids), time.perf_counter() - started)
    return [outcomes[i] for i in analysis_ids]
