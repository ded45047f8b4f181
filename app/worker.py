"""The scan worker: takes queued scans from the database and runs them, one at a time.

Scans never run inside a request. Each well is classified as soon as its fields arrive, and its
images, result and the scan's progress are committed in one transaction, so a crash loses at
most the well in flight. On start, a scan left ``running`` by a dead process is queued again
and resumes from the first well without a result.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from app.classifier import WellCall, WellClassifier
from app.db import session_scope
from app.orm import Image, Scan, ScanStatus, Well, WellResult, WellStatus
from app.storage import ImageStore
from hardware.microscope import HardwareError, PlateScanner, ScanPlan, WellAcquisition

logger = logging.getLogger(__name__)


@dataclass
class WorkerContext:
    """What the worker needs, built once by the application."""

    session_factory: sessionmaker[Session]
    scanner: PlateScanner
    classifier: WellClassifier
    model_version_id: int
    image_store: ImageStore
    microscope_name: str


class ScanWorker:
    """Runs queued scans in a background thread (or synchronously with :meth:`run_pending`)."""

    def __init__(self, context: WorkerContext, *, poll_seconds: float = 0.5) -> None:
        self.context = context
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Progress callback (e.g. the CLI's progress bar): (scan_id, wells_done, wells_total).
        self.on_progress: Callable[[int, int, int], None] | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self.requeue_interrupted()
        self._thread = threading.Thread(target=self._loop, name="scan-worker", daemon=True)
        self._thread.start()

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                ran = self.run_next()
            except Exception:  # keep the worker alive; the scan itself is marked failed
                logger.exception("scan worker iteration failed")
                ran = False
            if not ran:
                self._stop.wait(self.poll_seconds)

    def requeue_interrupted(self) -> int:
        """Queue again scans a dead process left ``running`` on this microscope."""
        with session_scope(self.context.session_factory) as session:
            result = session.execute(
                update(Scan)
                .where(
                    Scan.status == ScanStatus.running,
                    Scan.microscope == self.context.microscope_name,
                )
                .values(status=ScanStatus.queued)
            )
            count = int(getattr(result, "rowcount", 0) or 0)
        if count:
            logger.warning(
                "re-queued %d interrupted scan(s); they resume where they stopped", count
            )
        return count

    def run_pending(self) -> int:
        """Run every queued scan now, in this thread. Returns how many ran."""
        count = 0
        while self.run_next():
            count += 1
        return count

    # -- one scan ------------------------------------------------------------------------------
    def run_next(self) -> bool:
        """Claim the oldest queued scan of this microscope and run it. False if none queued."""
        scan_id = self._claim()
        if scan_id is None:
            return False
        try:
            self._run(scan_id)
        except Exception as exc:
            logger.exception("scan %d failed", scan_id)
            self._finish(scan_id, ScanStatus.failed, f"{type(exc).__name__}: {exc}")
        return True

    def _claim(self) -> int | None:
        with session_scope(self.context.session_factory) as session:
            scan = session.scalar(
                select(Scan)
                .where(
                    Scan.status == ScanStatus.queued,
                    Scan.microscope == self.context.microscope_name,
                )
                .order_by(Scan.id)
                .limit(1)
            )
            if scan is None:
                return None
            scan.status = ScanStatus.running
            scan.started_at = scan.started_at or datetime.now(UTC)
            scan.model_version_id = self.context.model_version_id
            return scan.id

    def _run(self, scan_id: int) -> None:
        factory = self.context.session_factory
        with session_scope(factory) as session:
            scan = session.get_one(Scan, scan_id)
            done = set(
                session.scalars(
                    select(Well.name)
                    .join(WellResult, WellResult.well_id == Well.id)
                    .where(WellResult.scan_id == scan_id)
                )
            )
            remaining = [w for w in scan.wells_requested if w not in done]
            plan = ScanPlan(
                barcode=scan.plate.barcode,
                wells=remaining,
                objective=scan.objective,  # type: ignore[arg-type]  # validated by the API
                fields_per_well=scan.fields_per_well,
            )
            well_ids = {w.name: w.id for w in scan.plate.wells}
            total = scan.wells_total
        if done:
            logger.info(
                "scan %d resumes: %d wells done, %d to go", scan_id, len(done), len(remaining)
            )

        try:
            for acquisition in self.context.scanner.scan(plan, lambda: self._cancelled(scan_id)):
                call = (
                    None
                    if acquisition.failed
                    else self.context.classifier.classify(acquisition.fields)
                )
                wells_done = self._commit_well(scan_id, plan.barcode, well_ids, acquisition, call)
                if self.on_progress is not None:
                    self.on_progress(scan_id, wells_done, total)
        except HardwareError as exc:
            self._finish(scan_id, ScanStatus.failed, f"microscope: {exc}")
            return
        if self._cancelled(scan_id):
            logger.info("scan %d cancelled", scan_id)
            return
        self._finish(scan_id, ScanStatus.completed, None)

    def _cancelled(self, scan_id: int) -> bool:
        with session_scope(self.context.session_factory) as session:
            status = session.scalar(select(Scan.status).where(Scan.id == scan_id))
        return status == ScanStatus.cancelled or self._stop.is_set()

    def _commit_well(
        self,
        scan_id: int,
        barcode: str,
        well_ids: dict[str, int],
        acquisition: WellAcquisition,
        call: WellCall | None,
    ) -> int:
        """Write one well's images and result and bump progress, in one transaction."""
        well_id = well_ids[acquisition.well]
        with session_scope(self.context.session_factory) as session:
            for field, outcome in zip(acquisition.fields, call.fields if call else [], strict=True):
                stored = self.context.image_store.save(
                    barcode, scan_id, acquisition.well, field.field_index, field.image
                )
                session.add(
                    Image(
                        scan_id=scan_id,
                        well_id=well_id,
                        field_index=field.field_index,
                        path=str(stored.path),
                        sha256=stored.sha256,
                        height=int(field.image.shape[0]),
                        width=int(field.image.shape[1]),
                        dtype=str(field.image.dtype),
                        objective=field.objective,
                        pixel_size_um=field.pixel_size_um,
                        x_um=field.x_um,
                        y_um=field.y_um,
                        acquired_at=field.acquired_at,
                        mean_v=outcome.prepared.qc.mean_v,
                        focus_score=outcome.prepared.qc.focus_score,
                        qc_excluded=outcome.prepared.qc.excluded,
                        qc_flags=list(outcome.prepared.qc.flags),
                        probability=outcome.probability,
                        confluence_pct=outcome.prepared.confluence_pct,
                    )
                )
            session.add(self._result_row(scan_id, well_id, acquisition, call))
            scan = session.get_one(Scan, scan_id)
            scan.wells_done += 1
            return scan.wells_done

    def _result_row(
        self, scan_id: int, well_id: int, acquisition: WellAcquisition, call: WellCall | None
    ) -> WellResult:
        common = {
            "scan_id": scan_id,
            "well_id": well_id,
            "model_version_id": self.context.model_version_id,
            "acquisition_ms": sum(f.acquisition_ms for f in acquisition.fields),
        }
        if call is None:
            return WellResult(
                status=WellStatus.failed,
                qc_flags=["acquisition_failed"],
                error=acquisition.error,
                fields_used=0,
                **common,
            )
        return WellResult(
            status=WellStatus.ok if call.label is not None else WellStatus.excluded,
            label=call.label,
            probability=call.probability,
            qc_flags=call.qc_flags,
            fields_used=call.fields_used,
            confluence_pct=call.confluence_pct,
            preprocessing_ms=call.preprocessing_ms,
            inference_ms=call.inference_ms,
            **common,
        )

    def _finish(self, scan_id: int, status: ScanStatus, error: str | None) -> None:
        with session_scope(self.context.session_factory) as session:
            scan = session.get_one(Scan, scan_id)
            if scan.status == ScanStatus.cancelled:
                scan.finished_at = scan.finished_at or datetime.now(UTC)
                return
            scan.status = status
            scan.error = error
            scan.finished_at = datetime.now(UTC)
        logger.info("scan %d %s", scan_id, status.value)
