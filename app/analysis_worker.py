"""The re-analysis worker: claims queued re-analyses (app.analyses) and runs them.

Durability is the scan worker's (:mod:`app.worker`): an :class:`AnalysisWorker` claims an
analysis with one conditional UPDATE and holds a lease it renews from a heartbeat; each well's
result and the progress bump commit in one short transaction that re-checks the lease, so a
worker that lost its lease cannot write, and the unique (analysis, well) constraint makes a
duplicate impossible. A killed re-analysis is claimed again once its lease expires and resumes
from its first well without a result; a cancel stops it before its next well.

The fields are re-scored by the batched fast path (:func:`app.rescore.iter_rescore`, with a
persistent :class:`app.rescore.PreparePool` when ``prepare_workers`` > 1), one commit per well
as each is decided. The same runner serves the service's background thread, ``mscreen
reanalyse`` and the Dask tasks of :mod:`app.distributed`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.analyses import ClassifierCache
from app.classifier import WellClassifier
from app.errors import ConflictError
from app.leases import Heartbeat, LeasedWorker, LeaseLostError
from app.ngff_results import write_results
from app.rescore import PreparePool, StoredField, WellRescore, iter_rescore, stored_fields
from app.worker import PolicyUnavailableError, recorded_policy, resolve_scan_policy
from models.repository import ModelRepository
from store.db import session_scope
from store.orm import Analysis, AnalysisResult, ScanStatus, Well, WellResult, WellStatus

logger = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class AnalysisContext:
    """What an analysis worker needs: the database, the model repository, the classifiers,
    and the bit depth of the instrument's stored frames (app.runtime.serving_bit_depth)."""

    session_factory: sessionmaker[Session]
    repository: ModelRepository
    classifiers: ClassifierCache
    bit_depth: int | None = None
    prepare_workers: int = 0  # processes preparing fields (<= 1: in the worker's own thread)
    batch_size: int = 64
    # Also write the calls into the scan's OME-Zarr plate (label images, well attributes, a
    # plate table: app.ngff_results) when an analysis completes.
    write_plate_results: bool = True


@dataclass(frozen=True)
class RunOutcome:
    """What one run of an analysis did: wells committed and fields scored, in ``seconds``."""

    analysis_id: int
    status: ScanStatus | None  # the analysis's status after the run (None: not ours to run)
    wells: int
    fields: int
    seconds: float

    @property
    def fields_per_second(self) -> float:
        return self.fields / self.seconds if self.seconds > 0 else 0.0


class AnalysisWorker(LeasedWorker):
    """Runs queued re-analyses in a background thread (or synchronously: :meth:`run_one`).

    Args:
        context: database, models, prepare pool size.
        poll_seconds: how often an idle worker looks for work.
        lease_seconds: how long a claim lasts without renewal; renewed every third of it.
    """

    job = Analysis
    kind = "analysis"

    def __init__(
        self, context: AnalysisContext, *, poll_seconds: float = 0.5, lease_seconds: float = 30.0
    ) -> None:
        super().__init__(
            context.session_factory, poll_seconds=poll_seconds, lease_seconds=lease_seconds
        )
        self.context = context
        self._pool: PreparePool | None = None
        self._pool_config: object = None

    # -- lifecycle ---------------------------------------------------------------------------
    def stop(self, timeout: float = 30.0) -> None:
        super().stop(timeout)
        self.close()

    def close(self) -> None:
        """Shut the prepare pool down (the next run starts a new one)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    # -- claiming and leases -----------------------------------------------------------------
    @staticmethod
    def _claimable(now: datetime) -> Any:
        lapsed = or_(Analysis.lease_expires_at.is_(None), Analysis.lease_expires_at < now)
        return or_(
            Analysis.status == ScanStatus.queued,
            and_(Analysis.status == ScanStatus.running, lapsed),
        )

    def _claim(self, analysis_id: int | None = None) -> int | None:
        """Claim ``analysis_id`` (or the oldest claimable analysis) with one conditional
        UPDATE; its id, or None when there is none or another worker won it."""
        now = _now()
        with session_scope(self.context.session_factory) as session:
            if analysis_id is None:
                candidate = session.scalar(
                    select(Analysis.id)
                    .where(self._claimable(now))
                    .order_by((Analysis.status == ScanStatus.running).desc(), Analysis.id)
                    .limit(1)
                )
                if candidate is None:
                    return None
                analysis_id = candidate
            claimed = session.execute(
                update(Analysis)
                .where(Analysis.id == analysis_id, self._claimable(now))
                .values(
                    status=ScanStatus.running,
                    lease_owner=self.owner,
                    lease_expires_at=now + timedelta(seconds=self.lease_seconds),
                )
            )
            if getattr(claimed, "rowcount", 0) != 1:
                return None
            analysis = session.get_one(Analysis, analysis_id)
            analysis.started_at = analysis.started_at or now
            return analysis_id

    def run_next(self) -> bool:
        """Claim the next analysis and run it; False if there is none to claim."""
        analysis_id = self._claim()
        if analysis_id is None:
            return False
        self._run_claimed(analysis_id)
        return True

    def run_one(self, analysis_id: int) -> RunOutcome:
        """Run analysis ``analysis_id`` now, in this thread, if it is claimable (queued, or
        running under an expired lease); a finished one, or one another worker holds, is left
        as it is (``status`` says which; ``wells`` is 0)."""
        if self._claim(analysis_id) is None:
            with session_scope(self.context.session_factory) as session:
                status = session.scalar(select(Analysis.status).where(Analysis.id == analysis_id))
            return RunOutcome(analysis_id, status, 0, 0, 0.0)
        return self._run_claimed(analysis_id)

    def _run_claimed(self, analysis_id: int) -> RunOutcome:
        heartbeat = Heartbeat(self, analysis_id)
        heartbeat.start()
        started = time.perf_counter()
        wells = fields = 0
        try:
            wells, fields = self._run(analysis_id)
        except LeaseLostError:
            logger.warning("analysis %d: lease lost to another worker; stopping", analysis_id)
        except PolicyUnavailableError as exc:
            logger.warning("analysis %d failed: %s", analysis_id, exc)
            self.finish(analysis_id, ScanStatus.failed, str(exc))
        except Exception as exc:
            logger.exception("analysis %d failed", analysis_id)
            self.finish(analysis_id, ScanStatus.failed, f"{type(exc).__name__}: {exc}")
        finally:
            heartbeat.stop()
        seconds = time.perf_counter() - started
        with session_scope(self.context.session_factory) as session:
            status = session.scalar(select(Analysis.status).where(Analysis.id == analysis_id))
        return RunOutcome(analysis_id, status, wells, fields, seconds)

    # -- one analysis ------------------------------------------------------------------------
    def _run(self, analysis_id: int) -> tuple[int, int]:
        """Re-score the wells of the analysis without a result; (wells, fields) scored."""
        context = self.context
        with session_scope(context.session_factory) as session:
            analysis = session.get_one(Analysis, analysis_id)
            version = analysis.model_version
            artifact = context.repository.get(version.name, version.version)
            if context.repository.sha256(artifact) != version.sha256:
                raise ConflictError(
                    f"model {version.name} v{version.version} on disk is not the file "
                    "registered under that version"
                )
            classifier = context.classifiers.get(version.id, artifact)
            policy = resolve_scan_policy(classifier, analysis.decision_policy)
            analysis.decision_policy = recorded_policy(
                analysis.decision_policy, policy, model=version.id
            )
            scan_id, model_version_id = analysis.scan_id, version.id
            done = set(
                session.scalars(
                    select(AnalysisResult.well_id).where(AnalysisResult.analysis_id == analysis_id)
                )
            )
            # The scan's wells in plate order: those with stored fields are re-scored; those
            # without (the acquisition failed) get a failed result saying so.
            wells = session.execute(
                select(Well.id, Well.name)
                .join(WellResult, WellResult.well_id == Well.id)
                .where(WellResult.scan_id == scan_id)
                .order_by(Well.row, Well.column)
            ).all()
            to_do = {name for well_id, name in wells if well_id not in done}
            fields = [
                f
                for f in stored_fields(session, scan_id, bit_depth=context.bit_depth)
                if f.well in to_do
            ]
            total = analysis.wells_total
        well_ids = {name: well_id for well_id, name in wells}
        with_fields = {f.well for f in fields}
        if done:
            logger.info("analysis %d resumes: %d wells done", analysis_id, len(done))
        committed = scored = 0
        for well_id, name in wells:
            if well_id in done or name in with_fields:
                continue
            if (
                self._commit(analysis_id, scan_id, model_version_id, well_id, _no_fields(name))
                is None
            ):
                return committed, scored
            committed += 1
        started = time.perf_counter()
        fields_of = _count_by_well(fields)
        pool = self._prepare_pool(classifier) if fields else None
        # closing(): a cancel or a lost lease stops the generator now, and with it the pool's
        # queued work for this plate (the pool itself stays, for the next analysis).
        with closing(
            iter_rescore(
                fields, classifier, policy=policy, pool=pool, batch_size=context.batch_size
            )
        ) as rescored_wells:
            for rescored in rescored_wells:
                wells_done = self._commit(
                    analysis_id, scan_id, model_version_id, well_ids[rescored.well], rescored
                )
                if wells_done is None:
                    logger.info(
                        "analysis %d cancelled: well %s discarded", analysis_id, rescored.well
                    )
                    return committed, scored
                committed += 1
                scored += fields_of[rescored.well]
                if self.on_progress is not None:
                    self.on_progress(analysis_id, wells_done, total)
        finished = self.finish(
            analysis_id,
            ScanStatus.completed,
            None,
            fields_scored=Analysis.fields_scored + scored,
            compute_s=Analysis.compute_s + (time.perf_counter() - started),
        )
        if finished and self.context.write_plate_results:
            self._write_plate_results(scan_id, analysis_id, classifier, policy.threshold)
        return committed, scored

    def _write_plate_results(
        self, scan_id: int, analysis_id: int, classifier: WellClassifier, threshold: float
    ) -> None:
        """The calls into the scan's OME-Zarr plate beside its own (app.ngff_results), once
        the analysis is complete; a failure here is logged, never undoes the analysis."""
        try:
            with session_scope(self.context.session_factory) as session:
                write_results(
                    session,
                    scan_id,
                    classifier,
                    threshold=threshold,
                    bit_depth=self.context.bit_depth,
                    analysis_id=analysis_id,
                )
        except Exception:  # the calls are committed; the plate copy can be written again
            logger.exception("analysis %d: writing its calls into the plate failed", analysis_id)

    def _prepare_pool(self, classifier: WellClassifier) -> PreparePool | None:
        """The persistent prepare pool for ``classifier``'s pipeline (None: prepare in this
        thread), restarted when another pipeline config is needed."""
        if self.context.prepare_workers <= 1:
            return None
        if self._pool is not None and self._pool_config != classifier.config:
            self.close()
        if self._pool is None:
            self._pool = PreparePool(classifier.config, workers=self.context.prepare_workers)
            self._pool_config = classifier.config
        return self._pool

    def _commit(
        self,
        analysis_id: int,
        scan_id: int,
        model_version_id: int,
        well_id: int,
        rescored: WellRescore,
    ) -> int | None:
        """Write one well's result and bump progress in one transaction; the new
        ``wells_done``, or None if the analysis was cancelled meanwhile (nothing written).

        The bump is a conditional UPDATE (still running, still our lease) issued first, so a
        cancel either commits before it or waits for it, as in the scan worker.
        """
        with session_scope(self.context.session_factory) as session:
            bumped = self.bump_progress(session, analysis_id)
            if bumped is None:
                return None
            session.add(_result_row(analysis_id, scan_id, model_version_id, well_id, rescored))
            return bumped


def _no_fields(well: str) -> WellRescore:
    return WellRescore(
        well,
        label=None,
        qc_flags=["acquisition_failed"],
        error="no stored field to re-score (the scan's acquisition of this well failed)",
    )


def _count_by_well(fields: Sequence[StoredField]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for f in fields:
        counts[f.well] = counts.get(f.well, 0) + 1
    return counts


def _result_row(
    analysis_id: int, scan_id: int, model_version_id: int, well_id: int, rescored: WellRescore
) -> AnalysisResult:
    if rescored.error is not None:
        status = WellStatus.failed
    else:
        status = WellStatus.ok if rescored.label is not None else WellStatus.excluded
    return AnalysisResult(
        analysis_id=analysis_id,
        scan_id=scan_id,
        well_id=well_id,
        model_version_id=model_version_id,
        status=status,
        label=rescored.label,
        probability=rescored.probability,
        leaning=rescored.leaning,
        call_reason=rescored.reason,
        confidence=rescored.confidence,
        field_spread=rescored.spread,
        ood_score=rescored.ood_score,
        qc_flags=list(rescored.qc_flags),
        fields_used=rescored.fields_used,
        error=rescored.error,
        field_probabilities=list(rescored.field_probabilities),
        preprocessing_ms=getattr(rescored, "preprocessing_ms", 0.0),
        inference_ms=getattr(rescored, "inference_ms", 0.0),
    )
