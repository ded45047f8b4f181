"""Re-analysis: a finished scan's stored fields re-scored with another model version (issue 16).

After a retraining a lab wants to know what the new model says about the plates it already
has. A re-analysis (:class:`store.orm.Analysis`) re-scores the fields a scan stored (each
checked against the SHA-256 recorded when it was written) with one model version, through the
batched fast path of :mod:`app.rescore`, and keeps its calls beside the scan's own (one
:class:`store.orm.AnalysisResult` per well); the scan's results stay the calls of its model of
record. Any well query can then select a version (:func:`results_for`), and the evaluation can
compare two versions on the same wells (:func:`app.evaluation.compare_versions`).

Requests, reads and cancels are here; :mod:`app.analysis_worker` runs them, in the service's
background thread, ``mscreen reanalyse`` and the Dask tasks of :mod:`app.distributed`.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload

from app import model_registry
from app.auth import audit
from app.classifier import WellClassifier
from app.errors import ConflictError, InvalidRequestError, NotFoundError, UnavailableError
from app.scans import check_policy
from app.schemas.common import MAX_ID
from app.worker import requested_fields as requested_of
from models.decision import REQUEST_FIELDS
from models.inference import OnnxClassifier, ProviderChoice, RuntimeUnavailableError
from models.repository import ModelArtifact, ModelNotFoundError, ModelRepository, load_failure
from store import queries
from store.orm import (
    Analysis,
    AnalysisResult,
    ModelVersion,
    Scan,
    ScanStatus,
    Well,
    WellResult,
)

logger = logging.getLogger(__name__)


class AnalysisStateError(ConflictError):
    """The scan or analysis is not in a state that allows the operation (a 409)."""


@dataclass(frozen=True)
class ModelSpec:
    """A model version named as ``NAME:VERSION`` (e.g. ``hscnn-sim:2``)."""

    name: str
    version: int

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        """``NAME:VERSION``; InvalidRequestError naming the expected form otherwise."""
        name, sep, version = text.strip().rpartition(":")
        if not sep or not name or not version.isdigit() or not 1 <= int(version) <= MAX_ID:
            raise InvalidRequestError(
                f"a model version is NAME:VERSION (e.g. hscnn-sim:2), not {text!r}"
            )
        return cls(name, int(version))

    def __str__(self) -> str:
        return f"{self.name}:{self.version}"


def _now() -> datetime:
    return datetime.now(UTC)


# -- requests ------------------------------------------------------------------------------------


def _finished_scan(session: Session, scan_id: int) -> Scan:
    scan = session.get(Scan, scan_id)
    if scan is None:
        raise NotFoundError(f"no scan {scan_id}")
    if not scan.status.finished:
        raise AnalysisStateError(
            f"scan {scan_id} is {scan.status.value}: re-analyse it once it has finished"
        )
    return scan


def _registered_version(
    session: Session, repository: ModelRepository, spec: ModelSpec
) -> tuple[ModelArtifact, ModelVersion]:
    """The artifact of ``spec`` and its database row (registered on first use, never activated).

    Raises NotFoundError (no such version), ConflictError (its parity check failed, or its
    weights changed under a registered version).
    """
    try:
        artifact = repository.get(spec.name, spec.version)
    except ModelNotFoundError as exc:
        raise NotFoundError(str(exc)) from exc
    except ValueError as exc:  # InvalidModelNameError
        raise InvalidRequestError(str(exc)) from exc
    try:
        row = model_registry.register(session, artifact)
    except (ValueError, RuntimeError) as exc:  # ArtifactChangedError, a broken card
        raise ConflictError(str(exc)) from exc
    if not row.parity_passed:
        raise ConflictError(
            f"model {spec} did not pass its ONNX parity check: its calls cannot be trusted"
        )
    return artifact, row


def _asked_policy(scan: Scan, asked: dict[str, Any]) -> dict[str, Any]:
    """The re-analysis's call policy: what it asks for, the rest from what the scan asked for
    (so a re-analysis answers "what would the new model have called in this scan?")."""
    chosen = {k: v for k, v in asked.items() if k in REQUEST_FIELDS and v is not None}
    return requested_of(scan.decision_policy) | chosen


def request_analysis(
    session: Session,
    scan_id: int,
    spec: ModelSpec,
    *,
    repository: ModelRepository,
    classifiers: ClassifierCache,
    requested_by: str,
    policy: dict[str, Any] | None = None,
) -> tuple[Analysis, bool]:
    """Queue the re-analysis of finished scan ``scan_id`` with ``spec`` (committed); the
    analysis and whether this request created (or re-queued) it.

    Asked again for the same scan and version, the analysis is returned as it is; a failed or
    cancelled one is queued again and resumes from its first well without a result. The
    policy (threshold_policy, alpha, delta; unset ones from the scan's own request) is checked
    against the version's model now, as for a scan.

    Raises NotFoundError (scan, version), AnalysisStateError (the scan has not finished, or is
    its model of record's own, or an analysis of this version exists with another policy),
    ConflictError (the version failed its parity check, or cannot serve the policy),
    InvalidRequestError (a malformed policy).
    """
    scan = _finished_scan(session, scan_id)
    artifact, row = _registered_version(session, repository, spec)
    if scan.model_version_id == row.id:
        raise AnalysisStateError(
            f"scan {scan_id} was called by {spec} itself: its own results are that version's "
            "(GET /api/v1/plates/{barcode}/wells?scan_id=...)"
        )
    wells_total = session.scalar(
        select(func.count(WellResult.id)).where(WellResult.scan_id == scan_id)
    )
    if not wells_total:
        raise AnalysisStateError(f"scan {scan_id} has no well results to re-analyse")
    asked = _asked_policy(scan, policy or {})
    check_policy(_load(classifiers, row.id, artifact), asked)
    existing = _existing(session, scan_id, row.id)
    if existing is None:
        analysis = Analysis(
            scan_id=scan_id,
            model_version_id=row.id,
            wells_total=int(wells_total),
            decision_policy=asked,
            requested_by=requested_by,
        )
        session.add(analysis)
        try:
            session.flush()
        except IntegrityError:  # a concurrent request created it first
            session.rollback()
            existing = _existing(session, scan_id, row.id)
            if existing is None:
                raise
        else:
            audit(
                session,
                requested_by,
                "analysis.create",
                f"analysis:{analysis.id}",
                scan_id=scan_id,
                model=str(spec),
                **asked,
            )
            session.commit()
            return analysis, True
    if requested_of(existing.decision_policy) != asked:
        raise AnalysisStateError(
            f"analysis {existing.id} of scan {scan_id} with {spec} exists with call policy "
            f"{requested_of(existing.decision_policy)}; read it, or evaluate that version's "
            "probabilities at other thresholds"
        )
    if existing.status in (ScanStatus.failed, ScanStatus.cancelled):
        session.execute(
            update(Analysis)
            .where(Analysis.id == existing.id, Analysis.status == existing.status)
            .values(status=ScanStatus.queued, error=None, finished_at=None)
        )
        audit(session, requested_by, "analysis.resume", f"analysis:{existing.id}")
        session.commit()
        session.refresh(existing)
        return existing, True
    return existing, False


def _load(classifiers: ClassifierCache, row_id: int, artifact: ModelArtifact) -> WellClassifier:
    """The version's classifier; UnavailableError (503) when onnxruntime or its provider is
    missing here, ConflictError (409) when its network cannot be loaded."""
    try:
        return classifiers.get(row_id, artifact)
    except RuntimeUnavailableError as exc:
        raise UnavailableError(str(exc)) from exc
    except Exception as exc:  # onnxruntime raises its own, non-standard exception classes
        raise ConflictError(load_failure(artifact, exc)) from exc


def _existing(session: Session, scan_id: int, model_version_id: int) -> Analysis | None:
    return session.scalar(
        select(Analysis).where(
            Analysis.scan_id == scan_id, Analysis.model_version_id == model_version_id
        )
    )


def analysis_or_error(session: Session, scan_id: int, analysis_id: int) -> Analysis:
    analysis = session.get(Analysis, analysis_id)
    if analysis is None or analysis.scan_id != scan_id:
        raise NotFoundError(f"scan {scan_id} has no analysis {analysis_id}")
    return analysis


def list_analyses(session: Session, scan_id: int) -> list[Analysis]:
    if session.get(Scan, scan_id) is None:
        raise NotFoundError(f"no scan {scan_id}")
    return list(
        session.scalars(
            select(Analysis)
            .where(Analysis.scan_id == scan_id)
            .options(joinedload(Analysis.model_version))
            .order_by(Analysis.id)
        )
    )


def cancel_analysis(session: Session, analysis: Analysis, *, actor: str) -> Analysis:
    """Cancel a queued or running analysis (one conditional UPDATE, as for a scan); the wells
    done so far are kept, and asking for it again resumes it."""
    result = session.execute(
        update(Analysis)
        .where(
            Analysis.id == analysis.id,
            Analysis.status.in_([ScanStatus.queued, ScanStatus.running]),
        )
        .values(
            status=ScanStatus.cancelled,
            finished_at=_now(),
            lease_owner=None,
            lease_expires_at=None,
        )
    )
    if getattr(result, "rowcount", 0) != 1:
        session.refresh(analysis)
        raise AnalysisStateError(f"analysis {analysis.id} is already {analysis.status.value}")
    audit(session, actor, "analysis.cancel", f"analysis:{analysis.id}")
    session.commit()
    session.refresh(analysis)
    return analysis


def find_analysis(session: Session, scan: Scan, spec: ModelSpec) -> Analysis | None:
    """The analysis of ``scan`` with ``spec``, or None (also when no such version exists)."""
    return session.scalar(
        select(Analysis)
        .join(ModelVersion, Analysis.model_version_id == ModelVersion.id)
        .where(
            Analysis.scan_id == scan.id,
            ModelVersion.name == spec.name,
            ModelVersion.version == spec.version,
        )
    )


def results_for(
    session: Session, scan: Scan, spec: ModelSpec | None
) -> tuple[Analysis | None, Sequence[WellResult | AnalysisResult]]:
    """The calls of ``scan`` by ``spec``, in plate order: its own results for None or its model
    of record, else those of its analysis with that version (so far, if it still runs).

    Raises NotFoundError naming how to make the analysis when there is none.
    """
    record = scan.model_version
    if spec is None or (
        record is not None and (record.name, record.version) == (spec.name, spec.version)
    ):
        return None, queries.scan_results(session, scan)
    analysis = find_analysis(session, scan, spec)
    if analysis is None:
        raise NotFoundError(
            f"scan {scan.id} has no analysis with {spec}; start one with POST "
            f"/api/v1/scans/{scan.id}/analyses (or mscreen reanalyse --scan {scan.id} "
            f"--model {spec})"
        )
    rows = session.scalars(
        select(AnalysisResult)
        .join(Well, AnalysisResult.well_id == Well.id)
        .where(AnalysisResult.analysis_id == analysis.id)
        .options(joinedload(AnalysisResult.well), joinedload(AnalysisResult.model_version))
        .order_by(Well.row, Well.column)
    )
    return analysis, list(rows)


# -- models --------------------------------------------------------------------------------------


class ClassifierCache:
    """Loaded classifiers by model version id: a re-analysis loads its version once, and the
    few most recent stay loaded (a network and its metadata are a few MB)."""

    def __init__(
        self, *, providers: ProviderChoice = "auto", intra_op_threads: int = 0, size: int = 3
    ) -> None:
        self.providers = providers
        self.intra_op_threads = intra_op_threads
        self.size = size
        self._loaded: OrderedDict[int, WellClassifier] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, model_version_id: int, artifact: ModelArtifact) -> WellClassifier:
        with self._lock:
            classifier = self._loaded.get(model_version_id)
            if classifier is not None:
                self._loaded.move_to_end(model_version_id)
                return classifier
        model = OnnxClassifier(
            artifact.model_path, providers=self.providers, intra_op_threads=self.intra_op_threads
        )
        classifier = WellClassifier(model)
        with self._lock:
            self._loaded[model_version_id] = classifier
            while len(self._loaded) > self.size:
                self._loaded.popitem(last=False)
        return classifier
