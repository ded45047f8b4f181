"""Re-score a stored plate with any model version: a batched fast path (issue 16).

Online, :meth:`app.classifier.WellClassifier.classify` prepares a well's fields in the scan
worker and runs one small onnxruntime batch per well. Re-scoring a stored plate needs neither
the microscope nor the per-well latency, so here the fields are read back from the OME-Zarr
plate (each checked against the SHA-256 recorded when it was written) and prepared in a process
pool, while the parent batches prepared fields *across* wells into onnxruntime batches of
``batch_size``. Each well is decided with :func:`models.decision.decide_well` as soon as all its
fields are scored, with exactly the inputs :meth:`WellClassifier.classify` would give it, so the
probabilities and calls match the serial path (tests/test_rescore.py checks that).

Memory is bounded: at most a few batches of prepared fields are in flight at any time (futures
are submitted in a sliding window, never the whole plate at once).

A field that cannot be read as written (missing, a changed chunk, a checksum mismatch) fails
its own well with the reason; the other wells are still scored.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.classifier import WellClassifier, decide_fields
from models.decision import CallPolicy
from models.ood import field_descriptor
from models.pipeline import PipelineConfig, prepare
from store.images import CorruptImageError, ImageStore
from store.orm import Image, Well

logger = logging.getLogger(__name__)

# Fields per pool task: large enough that pickling and queueing do not dominate a ~5 ms
# prepare, small enough that the window below keeps both workers busy.
_CHUNK = 4


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


@dataclass
class _Prepared:
    """What a pool worker sends back for one field (small: no normalised image, no maps)."""

    index: int
    error: str | None = None
    excluded: bool = True
    flags: tuple[str, ...] = ()
    features: np.ndarray | None = None
    mask: np.ndarray | None = None  # (1, H, W) float32, as classify stacks it
    descriptor: np.ndarray | None = None


_config: PipelineConfig | None = None


def _init_worker(config: PipelineConfig) -> None:
    """Pool initializer: the pipeline config travels once per worker, not once per field."""
    global _config
    _config = config


def load_frame(stored: StoredField) -> tuple[np.ndarray, int | None]:
    """The stored frame, checksum verified, and the bit depth to prepare it with.

    Raises FileNotFoundError or CorruptImageError (see :meth:`ImageStore.load`).
    """
    frame = ImageStore.load(stored.path, sha256=stored.sha256)
    bit_depth = ImageStore.bit_depth(stored.path) or stored.bit_depth
    return frame, bit_depth if frame.dtype == np.uint16 else None


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
    prepared = prepare(frame, config, bit_depth=bit_depth)
    if prepared.qc.excluded or prepared.features is None or prepared.mask is None:
        return _Prepared(index, flags=prepared.qc.flags)
    mask = prepared.mask[None].astype(np.float32)
    return _Prepared(
        index,
        excluded=False,
        flags=prepared.qc.flags,
        features=prepared.features,
        mask=mask,
        descriptor=field_descriptor(prepared.features, mask[0]),
    )


def _prepare_chunk(chunk: list[tuple[int, StoredField]]) -> list[_Prepared]:
    """Pool task (top level, so spawn can pickle it): load and prepare a few fields."""
    if _config is None:
        raise RuntimeError("the pool worker was not initialised with a pipeline config")
    return [_prepare_one(index, stored, _config) for index, stored in chunk]


def _chunks(fields: Sequence[StoredField]) -> Iterator[list[tuple[int, StoredField]]]:
    for start in range(0, len(fields), _CHUNK):
        yield [(start + k, f) for k, f in enumerate(fields[start : start + _CHUNK])]


def _prepared_in_order(
    fields: Sequence[StoredField], config: PipelineConfig, workers: int, window: int
) -> Iterator[_Prepared]:
    """Every field prepared, in input order; at most ``window`` chunks in flight."""
    if workers <= 1:
        for chunk in _chunks(fields):
            yield from (_prepare_one(index, stored, config) for index, stored in chunk)
        return
    context = multiprocessing.get_context("spawn")  # no fork of a threaded onnxruntime parent
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_init_worker, initargs=(config,)
    ) as pool:
        pending: deque[Future[list[_Prepared]]] = deque()
        chunks = _chunks(fields)
        for chunk in chunks:
            pending.append(pool.submit(_prepare_chunk, chunk))
            if len(pending) >= window:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


@dataclass
class _WellState:
    name: str
    indices: list[int]
    prepared: dict[int, _Prepared] = field(default_factory=dict)
    probabilities: dict[int, float] = field(default_factory=dict)
    ood_scores: dict[int, float] = field(default_factory=dict)
    error: str | None = None

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


def rescore(
    fields: Sequence[StoredField],
    classifier: WellClassifier,
    *,
    policy: CallPolicy | None = None,
    workers: int = 2,
    batch_size: int = 64,
) -> list[WellRescore]:
    """Call every well of ``fields`` with ``classifier``'s model, in first-seen well order.

    Fields of a well must be contiguous in ``fields`` (as :func:`stored_fields` gives them).
    ``workers`` <= 1 prepares in this process; more starts a spawn process pool of that size.
    ``policy``: how to call the wells (None: the classifier's default policy).

    Raises:
        ValueError: a well's fields are not contiguous, or ``batch_size`` < 1.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    policy = policy or classifier.default_policy
    model = classifier.model
    states: list[_WellState] = []
    owner: list[int] = []  # field index -> its well's position in states
    for index, stored in enumerate(fields):
        if not states or states[-1].name != stored.well:
            if any(s.name == stored.well for s in states):
                raise ValueError(f"the fields of well {stored.well} are not contiguous")
            states.append(_WellState(stored.well, []))
        states[-1].indices.append(index)
        owner.append(len(states) - 1)

    results: dict[int, WellRescore] = {}
    batch: list[_Prepared] = []
    remaining = [len(s.indices) for s in states]  # fields of each well not yet scored
    next_to_decide = 0

    def score(items: list[_Prepared]) -> None:
        if not items:
            return
        features = np.stack([_required(p.features) for p in items])
        masks = np.stack([_required(p.mask) for p in items])
        probs, _ = model.predict(features, masks)
        ood = None
        if model.ood_guard is not None:
            ood = model.ood_guard.score(np.stack([_required(p.descriptor) for p in items]))
        for k, p in enumerate(items):
            state = states[owner[p.index]]
            state.probabilities[p.index] = float(probs[k])
            if ood is not None:
                state.ood_scores[p.index] = float(ood[k])
            remaining[owner[p.index]] -= 1

    def decide_ready() -> None:
        nonlocal next_to_decide
        while next_to_decide < len(states) and remaining[next_to_decide] == 0:
            state = states[next_to_decide]
            results[next_to_decide] = _decide(state, policy)
            state.prepared.clear()  # free the well's arrays
            next_to_decide += 1

    window = max(2, (2 * batch_size) // _CHUNK + 2 * max(workers, 1))
    for prepared in _prepared_in_order(fields, classifier.config, workers, window):
        position = owner[prepared.index]
        state = states[position]
        state.prepared[prepared.index] = prepared
        if prepared.error is not None and state.error is None:
            state.error = prepared.error
            logger.warning("rescore: well %s failed: %s", state.name, prepared.error)
        if prepared.excluded or state.error is not None:
            remaining[position] -= 1  # nothing to infer for this field
        else:
            batch.append(prepared)
            if len(batch) >= batch_size:
                score(batch)
                batch = []
        decide_ready()
    score(batch)
    decide_ready()
    return [results[i] for i in range(len(states))]


def _required(array: np.ndarray | None) -> np.ndarray:
    if array is None:  # a field that passed QC always has features, mask and descriptor
        raise AssertionError("a prepared field that passed QC has no arrays")
    return array
