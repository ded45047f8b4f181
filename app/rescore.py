"""Re-score a stored plate with any model version: a batched fast path (issue 16).

Online, :meth:`app.classifier.WellClassifier.classify` prepares a well's fields in the scan
worker and runs one small onnxruntime batch per well. Re-scoring a stored plate needs neither
the microscope nor the per-well latency, so here the fields are read back from the OME-Zarr
plate (each checked against the SHA-256 recorded when it was written) and prepared by a
:class:`PreparePool` of worker processes, while the calling thread batches prepared fields
*across* wells into onnxruntime batches of ``batch_size``. Each well is decided with
:func:`app.classifier.decide_fields` as soon as all its fields are scored, with exactly the
inputs :meth:`WellClassifier.classify` would give it, so the probabilities and calls match the
serial path (tests/test_rescore.py checks that).

Where the time goes, per 528 x 720 uint16 field on this 2-core machine (benchmarks/reanalysis.py;
a shared VM, so +-30 % from run to run): reading the zarr chunk 2.4-4.8 ms (of which the SHA-256
0.45), opening the group again for its bit depth 0.45-0.9, :func:`models.pipeline.prepare`
7.5-9.3 (QC 2.4-3.2, normalise 1.2-1.7, mask 1.4-1.7, bands + SSN 2.2-2.7), the guard's
descriptor 0.9-1.2, and onnxruntime 1.5-1.9 with one intra-op thread, nearly flat in batch size.
Reading and preparing are ~85 % of the work and independent per field, so a
:class:`PreparePool` of two processes does them while the calling thread runs onnxruntime
(which releases the GIL). That thread's session should then run one intra-op thread
(``OnnxClassifier(..., intra_op_threads=1)``): onnxruntime's default, a thread a core, fights
the workers for the cores. Pickling a prepared field (~1.9 MB) through a pipe cost ~3 ms, more
than onnxruntime, so the workers write fields into shared memory instead (:class:`_SharedRing`),
which the caller copies straight into its onnxruntime batch. Whenever the next field is not
ready yet, the caller scores the fields it has rather than wait: the workers, not the batch
size, set the pace, wells are decided sooner, and no last batch runs alone at the end.

A :class:`PreparePool` is created once and reused for many plates: starting a spawn worker
(imports, numba's SSN kernel) takes one to several seconds, longer than re-scoring a 96-well
plate.

Memory is bounded: the caller holds one batch (``batch_size`` x ~1.85 MB), the pool lends each
running re-scoring a shared ring of ``4 * (2 * workers + 5)`` field slots (~1.65 MB each, 59 MB
for two workers), kept for the next plate, and pool tasks are submitted in a sliding window,
never the whole plate at once. :func:`iter_rescore` yields each well as soon as it is decided,
so a caller can commit it while later wells are still being scored.

A field that cannot be read as written (missing, a changed chunk, a checksum mismatch) fails
its own well with the reason; the other wells are still scored.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import shared_memory
from types import TracebackType
from typing import Literal

import cv2
import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.classifier import WellClassifier, decide_fields
from models.decision import CallPolicy
from models.ood import field_descriptor
from models.pipeline import PipelineConfig, prepare, ssn_features
from store.images import CorruptImageError, ImageStore
from store.orm import Image, Well

logger = logging.getLogger(__name__)

# Fields per pool task: enough that a task's overhead (a few pickled paths and descriptors,
# the arrays go through shared memory) is small against ~12 ms a field, few enough that the
# sliding window of tasks keeps both workers busy.
_CHUNK = 4
# How long a starting worker may take (imports, loading numba's cached kernel) before
# PreparePool.start gives up waiting for it.
_STARTUP_TIMEOUT_S = 120.0

StartMethod = Literal["spawn", "forkserver"]


@dataclass(frozen=True)
class StoredField:
    """One stored field to re-score.

    ``bit_depth``: significant bits for a 16-bit frame that did not record its own (the
    instrument's, :func:`app.runtime.serving_bit_depth`); bits recorded with the frame win, and
    8-bit frames ignore it -- the rule training on stored plates uses
    (``training.imagesets.database``), so a frame prepares as serving prepared it.
    """

    well: str
    field_index: int
    path: str
    sha256: str
    bit_depth: int | None = None


@dataclass
class WellRescore:
    """A well's call from stored fields: the decision fields of :class:`app.classifier.WellCall`.

    ``error`` is set (and the call empty) when a field of the well could not be read as written.

    ``preprocessing_ms`` and ``inference_ms`` mean what they mean online (the results rows'
    columns): the well's fields' :func:`models.pipeline.prepare` time (reading the stored frame
    is not included, as acquiring it is not online), and the model's time on them: their guard
    descriptors plus, as fields share onnxruntime batches with other wells, each field's equal
    share of its batch's predict and guard scoring. Milliseconds of the process that did the
    work (a pool worker's prepare overlaps the caller's inference), so they add up to more than
    the plate's wall time.
    """

    well: str
    label: str | None
    leaning: str | None = None
    probability: float | None = None
    confidence: float | None = None
    spread: float | None = None
    ood_score: float | None = None
    qc_flags: list[str] = field(default_factory=list)
    fields_used: int = 0
    reason: str | None = None
    error: str | None = None
    field_probabilities: list[float | None] = field(default_factory=list)
    preprocessing_ms: float = 0.0
    inference_ms: float = 0.0


def stored_fields(
    session: Session, scan_id: int, *, bit_depth: int | None = None
) -> list[StoredField]:
    """The stored fields of a scan from the ``images`` table, in well then field order.

    ``bit_depth``: the fallback for 16-bit frames that recorded none (see :class:`StoredField`).
    """
    rows = session.execute(
        select(Well.name, Image.field_index, Image.path, Image.sha256)
        .join(Well, Image.well_id == Well.id)
        .where(Image.scan_id == scan_id)
        .order_by(Image.well_id, Image.field_index)
    ).all()
    return [
        StoredField(name, int(index), path, sha256, bit_depth) for name, index, path, sha256 in rows
    ]


def load_frame(stored: StoredField) -> tuple[np.ndarray, int | None]:
    """The stored frame, checksum verified, and the bit depth to prepare it with.

    Only a 16-bit frame reads its recorded bit depth (a second open of the image group's
    metadata, ~0.5 ms): :func:`models.pipeline.to_uint8` ignores it for any other dtype.

    Raises FileNotFoundError or CorruptImageError (see :meth:`ImageStore.load`).
    """
    frame = ImageStore.load(stored.path, sha256=stored.sha256)
    if frame.dtype != np.uint16:
        return frame, None
    return frame, ImageStore.bit_depth(stored.path) or stored.bit_depth


@dataclass
class _Prepared:
    """What a pool worker sends back for one field (no normalised image, no maps).

    A pool worker writes features and mask into the call's :class:`_SharedRing` (``slot``)
    rather than pickling them through a pipe (~3 ms a field, more than reading it). ``mask`` is
    (H, W) bool (a quarter of float32); the caller makes it the (1, H, W) float32 that classify
    stacks, an exact conversion.
    """

    index: int
    error: str | None = None
    excluded: bool = True
    flags: tuple[str, ...] = ()
    features: np.ndarray | None = None  # (B, H, W) float32; None when in the ring's ``slot``
    mask: np.ndarray | None = None  # (H, W) bool; None when in the ring's ``slot``
    descriptor: np.ndarray | None = None  # (D,) float64
    slot: int | None = None  # where in the call's shared ring the worker put features and mask
    prepare_ms: float = 0.0
    descriptor_ms: float = 0.0


def _prepare_one(index: int, stored: StoredField, config: PipelineConfig) -> _Prepared:
    try:
        frame, bit_depth = load_frame(stored)
    except (CorruptImageError, FileNotFoundError) as exc:
        return _Prepared(index, error=f"field {stored.field_index}: {exc}")
    expects_channels = config.band_source == "channels"
    if expects_channels != (frame.ndim == 3):
        return _Prepared(
            index,
            error=f"field {stored.field_index}: a frame of shape {frame.shape} does not fit the "
            f"model (band_source={config.band_source!r})",
        )
    started = time.perf_counter()
    prepared = prepare(frame, config, bit_depth=bit_depth)
    prepare_ms = (time.perf_counter() - started) * 1000.0
    if prepared.qc.excluded or prepared.features is None or prepared.mask is None:
        return _Prepared(index, flags=prepared.qc.flags, prepare_ms=prepare_ms)
    started = time.perf_counter()
    # A bool mask gives the same descriptor as classify's float32 one (> 0.5 is the same set).
    descriptor = field_descriptor(prepared.features, prepared.mask)
    return _Prepared(
        index,
        excluded=False,
        flags=prepared.qc.flags,
        features=prepared.features,
        mask=prepared.mask,
        descriptor=descriptor,
        prepare_ms=prepare_ms,
        descriptor_ms=(time.perf_counter() - started) * 1000.0,
    )


@dataclass(frozen=True)
class _RingSpec:
    """Where a pool task writes its fields' arrays: a shared-memory block of ``slots`` slots,
    each the (B, H, W) float32 features of a field, then, after every slot's features, the
    (H, W) bool masks. A field goes to slot ``index % slots``."""

    name: str
    slots: int
    shape: tuple[int, int, int]

    @property
    def features_bytes(self) -> int:
        return self.slots * int(np.prod(self.shape)) * 4

    @property
    def size(self) -> int:
        return self.features_bytes + self.slots * self.shape[1] * self.shape[2]

    def views(self, buffer: memoryview | None) -> tuple[np.ndarray, np.ndarray]:
        """(slots, B, H, W) float32 features and (slots, H, W) bool masks over ``buffer``."""
        if buffer is None:
            raise RuntimeError(f"shared memory {self.name} is closed")
        features = np.ndarray((self.slots, *self.shape), np.float32, buffer=buffer)
        masks = np.ndarray(
            (self.slots, *self.shape[1:]), np.bool_, buffer=buffer, offset=self.features_bytes
        )
        return features, masks


class _SharedRing:
    """The caller's side of a :class:`_RingSpec`, lent by a :class:`PreparePool` to one
    re-scoring at a time and kept for the next (workers keep it mapped: mapping it afresh for
    each task, and faulting its pages in again, cost more than the copy into it).

    A slot is reused ``slots`` fields later; the caller copies each field out of its slot when
    it receives it and keeps fewer than ``slots`` fields in flight (:func:`_prepared_in_order`),
    so a worker never overwrites a field not yet copied.
    """

    def __init__(self, slots: int, shape: tuple[int, int, int]) -> None:
        size = _RingSpec("", slots, shape).size
        self._memory = shared_memory.SharedMemory(create=True, size=size)
        self.spec = _RingSpec(self._memory.name, slots, shape)
        self.features, self.masks = self.spec.views(self._memory.buf)
        self.features.fill(0.0)  # fault every page in once, now, not in the first plate
        self.masks.fill(False)

    def take(self, prepared: _Prepared) -> tuple[np.ndarray, np.ndarray]:
        """The field's features and mask: its own arrays, or views of its slot (valid until
        the next field is asked for)."""
        if prepared.slot is None:
            return _arrays(prepared)
        return self.features[prepared.slot], self.masks[prepared.slot]

    def close(self) -> None:
        del self.features, self.masks  # the buffer cannot close while views of it exist
        self._memory.close()
        self._memory.unlink()


# -- the worker processes --------------------------------------------------------------------------
_worker_config: PipelineConfig | None = None
# The rings this worker has mapped, by name, with their (features, masks) views. A pool's
# rings live as long as the pool, and so do its workers: nothing is unmapped before exit.
_worker_rings: dict[str, tuple[shared_memory.SharedMemory, np.ndarray, np.ndarray]] = {}


def _write_to_ring(results: list[_Prepared], ring: _RingSpec) -> None:
    """Move each prepared field's arrays into its slot (those of another shape stay pickled)."""
    if ring.name not in _worker_rings:
        memory = shared_memory.SharedMemory(name=ring.name)
        _worker_rings[ring.name] = (memory, *ring.views(memory.buf))
    _, features, masks = _worker_rings[ring.name]
    for p in results:
        if p.features is None or p.mask is None or p.features.shape != ring.shape:
            continue
        slot = p.index % ring.slots
        features[slot] = p.features
        masks[slot] = p.mask
        p.features = p.mask = None
        p.slot = slot


def _init_worker(config: PipelineConfig) -> None:
    """Pool initializer: the pool's pipeline config travels once per worker, not per field.

    OpenCV runs one thread here: the pool's processes are the parallelism, and OpenCV's own
    threads (one per core each) would only contend with them and the caller's inference. The
    SSN kernel is loaded (numba compiles it or reads its cache) now, not on the first field.
    """
    global _worker_config
    _worker_config = config
    cv2.setNumThreads(1)
    ssn_features(np.zeros((16, 16, 1), np.float32), config)


def _worker_ready() -> int:
    """A task that only says which worker ran it: :meth:`PreparePool.start` waits for each."""
    time.sleep(0.02)  # long enough that one worker does not take every warm-up task
    return os.getpid()


def _prepare_chunk(
    chunk: list[tuple[int, StoredField]], config: PipelineConfig | None, ring: _RingSpec | None
) -> list[_Prepared]:
    """Pool task (top level, so spawn can pickle it): load and prepare a few fields.

    ``config``: None for the pool's own config (sent once, by the initializer). ``ring``: where
    to put the fields' arrays (None: return them pickled).
    """
    config = config or _worker_config
    if config is None:
        raise RuntimeError("the pool worker was not initialised with a pipeline config")
    results = [_prepare_one(index, stored, config) for index, stored in chunk]
    if ring is not None:
        _write_to_ring(results, ring)
    return results


class PreparePool:
    """A persistent pool of processes that load and prepare stored fields, for many plates.

    Use it as a context manager, created once and passed to every :func:`iter_rescore` /
    :func:`rescore` call::

        with PreparePool(classifier.config, workers=2) as pool:
            for scan_id in scans:
                for well in iter_rescore(stored_fields(session, scan_id), classifier, pool=pool):
                    ...

    Args:
        config: the pipeline config sent to each worker once, at its start. A classifier with
            another config (another model version) can still use the pool: its config then
            travels with each task (a small dataclass).
        workers: processes; ``workers <= 1`` starts none, and fields are prepared in the
            calling thread.
        start_method: "spawn" (default) or "forkserver"; never "fork": forking a parent that
            runs onnxruntime's (or any) threads can deadlock the child.

    :meth:`start` (``__enter__``) starts every worker and waits until each is ready, so the
    cost of starting (:attr:`startup_s`, one to several seconds) is paid once, not per plate.
    Spawned workers import the parent's ``__main__``: a script that starts a pool needs the
    ``if __name__ == "__main__":`` guard (uvicorn and pytest have it).
    The pool may be created in, used from and closed by any thread, and several threads may
    re-score with it at once (they share its workers). If a worker dies, the running
    re-scoring fails with :class:`concurrent.futures.process.BrokenProcessPool` and the next
    one starts fresh workers.
    """

    def __init__(
        self, config: PipelineConfig, workers: int = 2, *, start_method: StartMethod = "spawn"
    ) -> None:
        if start_method not in ("spawn", "forkserver"):
            raise ValueError(f"start_method must be 'spawn' or 'forkserver', not {start_method!r}")
        self.config = config
        self.workers = max(int(workers), 0)
        self.start_method: StartMethod = start_method
        self.startup_s: float | None = None  # seconds the last start took; None: none yet
        self._executor: ProcessPoolExecutor | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._free_rings: list[_SharedRing] = []  # rings no re-scoring holds now
        self._lent_rings = 0

    @property
    def in_process(self) -> bool:
        """True when fields are prepared in the calling thread (``workers <= 1``)."""
        return self.workers <= 1

    def __enter__(self) -> PreparePool:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        """Start the workers now (a no-op when they run, or for an in-process pool).

        Raises:
            RuntimeError: the pool was closed, or a worker did not start in time.
        """
        with self._lock:
            self._start_locked()

    def close(self) -> None:
        """Stop the workers (tasks not yet started are cancelled) and free the shared memory.
        The pool cannot restart."""
        with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
            rings, self._free_rings = self._free_rings, []
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        for ring in rings:
            ring.close()

    def _borrow_ring(self, slots: int, shape: tuple[int, int, int]) -> _SharedRing:
        """A ring for one re-scoring: a free one of this size, else a new one."""
        with self._lock:
            for k, ring in enumerate(self._free_rings):
                if ring.spec.slots == slots and ring.spec.shape == shape:
                    self._lent_rings += 1
                    return self._free_rings.pop(k)
        ring = _SharedRing(slots, shape)
        with self._lock:
            self._lent_rings += 1
        logger.debug("prepare pool: shared ring %s of %d slots %s", ring.spec.name, slots, shape)
        return ring

    def _return_ring(self, ring: _SharedRing) -> None:
        with self._lock:
            self._lent_rings -= 1
            if not self._closed:
                self._free_rings.append(ring)
                return
        ring.close()  # the pool closed while this re-scoring ran

    def _start_locked(self) -> ProcessPoolExecutor | None:
        if self._closed:
            raise RuntimeError("this PreparePool is closed")
        if self.in_process or self._executor is not None:
            return self._executor
        started = time.perf_counter()
        executor = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context(self.start_method),
            initializer=_init_worker,
            initargs=(self.config,),
        )
        # The executor starts processes as tasks arrive: keep submitting until each worker
        # has run one, so every worker has imported and initialised before the first plate.
        ready: set[int] = set()
        deadline = started + _STARTUP_TIMEOUT_S
        try:
            while len(ready) < self.workers:
                timeout = deadline - time.perf_counter()
                if timeout <= 0:
                    raise RuntimeError(
                        f"{self.workers - len(ready)} prepare worker(s) did not start within "
                        f"{_STARTUP_TIMEOUT_S:g} s"
                    )
                probes = [executor.submit(_worker_ready) for _ in range(self.workers)]
                try:
                    ready.update(probe.result(timeout=timeout) for probe in probes)
                except TimeoutError:
                    continue  # the deadline check above says how many did not start
        except BaseException:
            executor.shutdown(wait=False, cancel_futures=True)
            raise
        self._executor = executor
        self.startup_s = time.perf_counter() - started
        logger.info(
            "prepare pool: %d %s workers ready in %.2f s",
            self.workers,
            self.start_method,
            self.startup_s,
        )
        return executor

    def _submit(
        self,
        chunk: list[tuple[int, StoredField]],
        config: PipelineConfig,
        ring: _RingSpec | None,
    ) -> Future[list[_Prepared]]:
        """One task for the workers, starting them first if needed (and again if they died)."""
        sent = None if config == self.config else config
        with self._lock:
            executor = self._start_locked()
            if executor is None:
                raise RuntimeError("an in-process PreparePool has no workers to submit to")
            try:
                return executor.submit(_prepare_chunk, chunk, sent, ring)
            except BrokenProcessPool:
                logger.warning("prepare pool: a worker died; starting fresh workers")
                self._executor = None
                executor.shutdown(wait=False, cancel_futures=True)
                restarted = self._start_locked()
                if restarted is None:  # cannot happen: a pool with workers restarts them
                    raise
                return restarted.submit(_prepare_chunk, chunk, sent, ring)


def _chunks(fields: Sequence[StoredField]) -> Iterator[list[tuple[int, StoredField]]]:
    for start in range(0, len(fields), _CHUNK):
        yield [(start + k, f) for k, f in enumerate(fields[start : start + _CHUNK])]


def _prepared_in_order(
    fields: Sequence[StoredField],
    config: PipelineConfig,
    pool: PreparePool | None,
    window: int,
    ring: _SharedRing | None,
) -> Generator[_Prepared | None, None, None]:
    """Every field prepared, in input order; at most ``window`` pool tasks in flight.

    None, between fields, says that the next field is not ready yet: the caller can score what
    it has instead of waiting idle (with a pool, that keeps its thread's core busy, and the
    last batch does not run alone after the workers have finished).

    A field's arrays in ``ring`` are valid until the next field is asked for: at most
    ``window * _CHUNK`` fields are in flight (a task is submitted only after every field of the
    task before the window has been taken), and a slot is reused ``ring.spec.slots`` fields
    later, which is more.
    """
    if pool is None or pool.in_process:
        for index, stored in enumerate(fields):
            yield _prepare_one(index, stored, config)
        return
    spec = ring.spec if ring is not None else None
    if spec is not None and spec.slots <= window * _CHUNK:
        raise AssertionError(f"a ring of {spec.slots} slots is too small for {window} tasks")
    pending: deque[Future[list[_Prepared]]] = deque()
    try:
        for chunk in _chunks(fields):
            pending.append(pool._submit(chunk, config, spec))
            if len(pending) >= window:
                if not pending[0].done():
                    yield None
                yield from pending.popleft().result()
        while pending:
            if not pending[0].done():
                yield None
            yield from pending.popleft().result()
    finally:  # the caller stopped early (or failed): do not leave tasks queued on the pool
        for future in pending:
            future.cancel()
        # Tasks already running still write to the ring: let them finish before it goes.
        wait([future for future in pending if not future.cancelled()])


# -- scoring and deciding ------------------------------------------------------------------------
@dataclass
class _WellState:
    name: str
    indices: list[int]
    prepared: dict[int, _Prepared] = field(default_factory=dict)
    probabilities: dict[int, float] = field(default_factory=dict)
    ood_scores: dict[int, float] = field(default_factory=dict)
    error: str | None = None
    preprocessing_ms: float = 0.0
    inference_ms: float = 0.0

    @property
    def usable(self) -> list[int]:
        return [i for i in self.indices if not self.prepared[i].excluded]


def _decide(state: _WellState, policy: CallPolicy) -> WellRescore:
    """The well's call, from the same inputs :meth:`WellClassifier.classify` decides on."""
    if state.error is not None:
        return WellRescore(state.name, label=None, error=state.error)
    flags = sorted({flag for i in state.indices for flag in state.prepared[i].flags})
    result = WellRescore(
        state.name,
        label=None,
        qc_flags=flags,
        field_probabilities=[state.probabilities.get(i) for i in state.indices],
        preprocessing_ms=state.preprocessing_ms,
        inference_ms=state.inference_ms,
    )
    usable = state.usable
    if not usable:
        return result
    decision, result.qc_flags = decide_fields(
        usable, state.probabilities, state.ood_scores, flags, policy
    )
    result.label, result.leaning = decision.label, decision.leaning
    result.probability, result.confidence = decision.probability, decision.confidence
    result.spread, result.ood_score = decision.spread, decision.ood_score
    result.reason = decision.reason or None
    result.fields_used = decision.fields_in_distribution
    return result


def _well_states(fields: Sequence[StoredField]) -> tuple[list[_WellState], list[int]]:
    """The wells in first-seen order, and each field's well (its position in that list).

    Raises:
        ValueError: a well's fields are not contiguous.
    """
    states: list[_WellState] = []
    seen: set[str] = set()
    owner: list[int] = []
    for index, stored in enumerate(fields):
        if not states or states[-1].name != stored.well:
            if stored.well in seen:
                raise ValueError(f"the fields of well {stored.well} are not contiguous")
            seen.add(stored.well)
            states.append(_WellState(stored.well, []))
        states[-1].indices.append(index)
        owner.append(len(states) - 1)
    return states, owner


def iter_rescore(
    fields: Sequence[StoredField],
    classifier: WellClassifier,
    *,
    policy: CallPolicy | None = None,
    pool: PreparePool | None = None,
    batch_size: int = 64,
) -> Generator[WellRescore, None, None]:
    """Call every well of ``fields`` with ``classifier``'s model, yielding each in first-seen
    well order as soon as it is decided (its fields' batches scored).

    Fields of a well must be contiguous in ``fields`` (as :func:`stored_fields` gives them).
    ``pool``: the workers that prepare the fields (None: prepare in this thread).
    ``policy``: how to call the wells (None: the classifier's default policy).
    ``batch_size``: the most fields per onnxruntime batch (batches span wells; with a pool, a
    batch is scored early whenever the workers have nothing ready). With one intra-op thread
    the per-field cost hardly depends on it; the batch buffer is ``batch_size`` x ~1.85 MB.

    The arguments are checked when this is called, not at the first ``next``. Closing the
    iterator early cancels its queued pool tasks.

    Raises:
        ValueError: a well's fields are not contiguous, or ``batch_size`` < 1.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    states, owner = _well_states(fields)
    return _rescored(
        fields, classifier, policy or classifier.default_policy, pool, batch_size, states, owner
    )


def _field_shape(classifier: WellClassifier) -> tuple[int, int, int] | None:
    """(B, H, W) of a prepared field as the model takes it; None when the model leaves an axis
    open (the fields' arrays then travel pickled)."""
    inputs = {i.name: i for i in classifier.model.session.get_inputs()}
    shape = inputs["features"].shape if "features" in inputs else []
    if len(shape) != 4 or not all(isinstance(n, int) for n in shape[1:]):
        return None
    return int(shape[1]), int(shape[2]), int(shape[3])


class _Batch:
    """Up to ``capacity`` fields' model inputs, copied in as they arrive (the copy np.stack
    would make, which also frees a field's ring slot at once)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.items: list[_Prepared] = []
        self._features: np.ndarray | None = None  # (capacity, B, H, W) float32
        self._masks: np.ndarray | None = None  # (capacity, 1, H, W) float32

    def add(self, prepared: _Prepared, features: np.ndarray, mask: np.ndarray) -> None:
        if self._features is None or self._masks is None:
            self._features = np.empty((self.capacity, *features.shape), np.float32)
            self._masks = np.empty((self.capacity, 1, *mask.shape), np.float32)
        if features.shape != self._features.shape[1:] or mask.shape != self._masks.shape[2:]:
            raise ValueError(
                f"field {prepared.index}: prepared features {features.shape} do not match the "
                f"batch's {self._features.shape[1:]}"
            )
        k = len(self.items)
        self._features[k] = features
        self._masks[k, 0] = mask  # bool -> 0.0 / 1.0, as classify's astype(np.float32)
        self.items.append(prepared)

    @property
    def full(self) -> bool:
        return len(self.items) >= self.capacity

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The filled rows: (N, B, H, W) features and (N, 1, H, W) masks (views, no copy)."""
        if self._features is None or self._masks is None:
            raise AssertionError("an empty batch has no arrays")
        n = len(self.items)
        return self._features[:n], self._masks[:n]


def _rescored(
    fields: Sequence[StoredField],
    classifier: WellClassifier,
    policy: CallPolicy,
    pool: PreparePool | None,
    batch_size: int,
    states: list[_WellState],
    owner: list[int],
) -> Generator[WellRescore, None, None]:
    model = classifier.model
    remaining = [len(s.indices) for s in states]  # fields of each well not yet scored
    next_to_decide = 0

    def score(batch: _Batch) -> None:
        if not batch.items:
            return
        started = time.perf_counter()
        features, masks = batch.arrays()
        probs, _ = model.predict(features, masks)
        ood = None
        if model.ood_guard is not None:
            ood = model.ood_guard.score(np.stack([_required(p.descriptor) for p in batch.items]))
        share_ms = (time.perf_counter() - started) * 1000.0 / len(batch.items)
        for k, p in enumerate(batch.items):
            state = states[owner[p.index]]
            state.probabilities[p.index] = float(probs[k])
            if ood is not None:
                state.ood_scores[p.index] = float(ood[k])
            state.inference_ms += share_ms + p.descriptor_ms
            remaining[owner[p.index]] -= 1
        batch.items.clear()

    def decided() -> Iterator[WellRescore]:
        nonlocal next_to_decide
        while next_to_decide < len(states) and remaining[next_to_decide] == 0:
            state = states[next_to_decide]
            result = _decide(state, policy)
            state.prepared.clear()
            next_to_decide += 1
            yield result

    # Enough tasks queued that the workers keep preparing while this thread runs a batch.
    window = 2 * (pool.workers if pool else 1) + 4
    shape = _field_shape(classifier)
    ring = None
    if pool is not None and not pool.in_process and shape is not None and fields:
        ring = pool._borrow_ring((window + 1) * _CHUNK, shape)
    batch = _Batch(batch_size)
    source = _prepared_in_order(fields, classifier.config, pool, window, ring)
    try:
        for prepared in source:
            if prepared is None:  # the workers are still preparing the next field
                score(batch)
                yield from decided()
                continue
            position = owner[prepared.index]
            state = states[position]
            state.preprocessing_ms += prepared.prepare_ms
            if prepared.error is not None and state.error is None:
                state.error = prepared.error
                logger.warning("rescore: well %s failed: %s", state.name, prepared.error)
            if prepared.excluded or state.error is not None:
                remaining[position] -= 1  # nothing to infer for this field
            else:
                features, mask = ring.take(prepared) if ring else _arrays(prepared)
                batch.add(prepared, features, mask)
                prepared.features = prepared.mask = None  # copied: keep what decides the well
                if batch.full:
                    score(batch)
            state.prepared[prepared.index] = prepared
            yield from decided()
        score(batch)
        yield from decided()
    finally:
        source.close()  # its pool tasks finished or cancelled: none still writes to the ring
        if pool is not None and ring is not None:
            pool._return_ring(ring)


def rescore(
    fields: Sequence[StoredField],
    classifier: WellClassifier,
    *,
    policy: CallPolicy | None = None,
    pool: PreparePool | None = None,
    workers: int = 2,
    batch_size: int = 64,
) -> list[WellRescore]:
    """Every well of ``fields`` called, in first-seen well order (:func:`iter_rescore`, listed).

    ``pool``: a running :class:`PreparePool` to prepare with. Without one, ``workers`` > 1
    starts a temporary pool of that size for this call (about a second per worker: for more
    than one plate, keep a :class:`PreparePool`); ``workers`` <= 1 prepares in this thread.

    Raises:
        ValueError: a well's fields are not contiguous, or ``batch_size`` < 1.
    """
    if pool is not None or workers <= 1:
        return list(
            iter_rescore(fields, classifier, policy=policy, pool=pool, batch_size=batch_size)
        )
    with PreparePool(classifier.config, workers=workers) as temporary:
        return list(
            iter_rescore(fields, classifier, policy=policy, pool=temporary, batch_size=batch_size)
        )


def _arrays(prepared: _Prepared) -> tuple[np.ndarray, np.ndarray]:
    return _required(prepared.features), _required(prepared.mask)


def _required(array: np.ndarray | None) -> np.ndarray:
    if array is None:  # a field that passed QC always has features, mask and descriptor
        raise AssertionError("a prepared field that passed QC has no arrays")
    return array
