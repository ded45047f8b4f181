"""Running an import: its plate and scan registered, then every well read and classified.

:class:`FolderScanner` is the "microscope" of an import (a PlateScanner whose acquisition reads
a plan's files); :func:`run_import` registers the plate and a queued scan and runs that scan
through the scan worker, which claims it alone; :func:`fail_abandoned_imports` fails the
imports whose process died; :func:`outcome` is the answer to an import. The API's checks of
its folder and size (:func:`resolve_folder`, :func:`check_api_size`) are here too.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app.auth import audit
from app.classifier import WellClassifier
from app.errors import NotFoundError, UnavailableError
from app.imports.layouts import (
    ImportDisabledError,
    ImportLayoutError,
    ImportPathError,
    OutsideImportRootError,
)
from app.imports.plan import FieldSource, ImportPlan, pipeline_problem, read_field
from app.runtime import Runtime
from app.scans import PolicyDefaults, check_policy
from app.schemas.imports import ImportPublic
from app.schemas.scans import ScanPublic
from app.worker import ScanWorker, WorkerContext
from hardware.microscope import AcquiredField, ScanPlan, WellAcquisition
from hardware.plate import PlateGeometry
from models.pipeline import PipelineConfig
from models.readers import ImageReadError
from store import queries
from store.db import session_scope
from store.images import ImageStore
from store.orm import Scan, ScanStatus, WellResult, WellStatus

logger = logging.getLogger(__name__)

MICROSCOPE_PREFIX = "import:"
# The API imports synchronously, inside the request: larger plates go through the CLI.
API_MAX_FIELDS = 384  # 96 wells x 4 fields, about a minute of classification on one core


# -- reading the wells: the "microscope" of an import ------------------------------------------
class FieldProblemError(Exception):
    """One field cannot be classified as read; its well is recorded as failed."""


class FolderScanner:
    """A :class:`hardware.microscope.PlateScanner` over an :class:`ImportPlan`: each well's
    "acquisition" reads its files. A well whose files cannot be read, or whose frames the
    model cannot take, is a failed well (the plate goes on), as a camera error would be."""

    def __init__(self, plan: ImportPlan, config: PipelineConfig) -> None:
        self.plan = plan
        self.config = config

    def scan(
        self, plan: ScanPlan, should_stop: Callable[[], bool] = lambda: False
    ) -> Iterator[WellAcquisition]:
        offsets = plan.plate.field_offsets_um(plan.fields_per_well, plan.field_spacing_um)
        for well in plan.wells:
            if should_stop():
                logger.info("import of %s stopped before well %s", plan.barcode, well)
                return
            source = self.plan.well(well)
            if source.problem is not None:
                yield WellAcquisition(well=well, fields=[], error=source.problem)
                continue
            centre = plan.plate.well_center_um(well)
            try:
                fields = [self._field(plan, f, centre, offsets[f.index]) for f in source.fields]
            except (ImageReadError, FieldProblemError, OSError) as exc:
                logger.warning("import of %s: well %s failed: %s", plan.barcode, well, exc)
                yield WellAcquisition(well=well, fields=[], error=str(exc))
                continue
            yield WellAcquisition(well=well, fields=fields)

    def _field(
        self,
        plan: ScanPlan,
        source: FieldSource,
        centre: tuple[float, float],
        offset: tuple[float, float],
    ) -> AcquiredField:
        started = time.perf_counter()
        read = read_field(source, self.plan.read_channels, self.plan.bit_depth)
        frame = read.frame
        if frame.ndim == 3 and frame.shape[2] == 1:
            frame = frame[:, :, 0]
        where = f"field {source.label} ({source.first.name})"
        problem = pipeline_problem(frame, bool(read.info.colour), self.config)
        if problem is not None:
            raise FieldProblemError(f"{where}: {problem}")
        depth = self.plan.bit_depth
        return AcquiredField(
            well=source.well,
            field_index=source.index,
            image=frame,
            x_um=centre[0] + offset[0],
            y_um=centre[1] + offset[1],
            objective=plan.objective,
            pixel_size_um=self.plan.options.pixel_size_um,
            acquired_at=datetime.fromtimestamp(source.first.stat().st_mtime, UTC),
            acquisition_ms=(time.perf_counter() - started) * 1000.0,
            bit_depth=depth if frame.dtype == np.uint16 else None,
            metadata={"source": [str(p) for p in source.files] or [str(source.zarr_image)]},
        )


# -- running an import -------------------------------------------------------------------------
@dataclass
class ImportContext:
    """What an import needs from the service: its database, model and image store."""

    session_factory: sessionmaker[Session]
    classifier: WellClassifier
    model_version_id: int
    image_store: ImageStore
    geometry: PlateGeometry
    lease_seconds: float = 30.0
    # The service's call policy ({threshold_policy, alpha, delta}; app.scans.requested_policy),
    # recorded with the import's scan as with any other; empty: the model's default.
    decision_policy: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, runtime: Runtime) -> ImportContext:
        """From a built runtime; UnavailableError (503, with the reason) while no model serves,
        ConflictError (409) when the service's call policy needs what the model lacks."""
        classifier = runtime.require_model()
        context = runtime.worker.context
        if context.model_version_id is None:  # set together with the classifier
            raise UnavailableError("no model version is registered for the serving model")
        policy = PolicyDefaults.of(runtime.settings).to_dict()
        check_policy(classifier, policy, from_service=list(policy))
        return cls(
            session_factory=runtime.session_factory,
            classifier=classifier,
            model_version_id=context.model_version_id,
            image_store=runtime.image_store,
            geometry=context.plate,
            lease_seconds=runtime.settings.lease_seconds,
            decision_policy=policy,
        )


class _ImportWorker(ScanWorker):
    """The scan worker on one import's scan: it claims that scan only (by id), never a queue,
    so imports do not wait for each other or for a microscope, and no import reads another's
    folder. Everything after the claim is the worker's own code."""

    def __init__(self, context: WorkerContext, scan_id: int, *, lease_seconds: float) -> None:
        super().__init__(context, lease_seconds=lease_seconds)
        self.scan_id = scan_id

    def _claim(self) -> int | None:
        now = datetime.now(UTC)
        with session_scope(self.context.session_factory) as session:
            claimed = session.execute(
                update(Scan)
                .where(Scan.id == self.scan_id, Scan.status == ScanStatus.queued)
                .values(
                    status=ScanStatus.running,
                    lease_owner=self.owner,
                    lease_expires_at=now + timedelta(seconds=self.lease_seconds),
                    started_at=now,
                    model_version_id=self.context.model_version_id,
                )
            )
            return self.scan_id if getattr(claimed, "rowcount", 0) == 1 else None


def fail_abandoned_imports(session_factory: sessionmaker[Session], *, lease_seconds: float) -> int:
    """Mark failed the imports whose process died (running with a lapsed lease, or queued and
    never claimed); no worker of a microscope ever claims them. Returns how many."""
    now = datetime.now(UTC)
    with session_scope(session_factory) as session:
        result = session.execute(
            update(Scan)
            .where(
                Scan.microscope.startswith(MICROSCOPE_PREFIX),
                or_(
                    and_(
                        Scan.status == ScanStatus.running,
                        or_(Scan.lease_expires_at.is_(None), Scan.lease_expires_at < now),
                    ),
                    and_(
                        Scan.status == ScanStatus.queued,
                        Scan.requested_at < now - timedelta(seconds=lease_seconds),
                    ),
                ),
            )
            .values(
                status=ScanStatus.failed,
                error="import interrupted (its process stopped); import the folder again",
                finished_at=now,
                lease_owner=None,
                lease_expires_at=None,
            )
        )
    count = int(getattr(result, "rowcount", 0) or 0)
    if count:
        logger.warning("%d interrupted imports marked failed", count)
    return count


def _register(context: ImportContext, plan: ImportPlan, microscope: str, requested_by: str) -> int:
    """The plate (created if new) and a queued scan of the plan's wells, audited; committed."""
    with session_scope(context.session_factory) as session:
        plate = queries.get_or_create_plate(session, plan.barcode, context.geometry)
        scan = Scan(
            plate=plate,
            objective=plan.options.objective,
            fields_per_well=plan.fields_per_well,
            wells_requested=[w.well for w in plan.wells],
            microscope=microscope,
            wells_done=0,
            requested_by=requested_by,
            decision_policy=dict(context.decision_policy) or None,
        )
        session.add(scan)
        session.flush()
        scan_id = scan.id
        audit(
            session,
            requested_by,
            "scan.import",
            f"scan:{scan_id}",
            folder=str(plan.folder),
            files=plan.file_count,
            unmatched=len(plan.unmatched),
            **plan.options.model_dump(mode="json"),
        )
    return scan_id


def run_import(
    context: ImportContext,
    plan: ImportPlan,
    *,
    requested_by: str,
    on_progress: Callable[[int, int, int], None] | None = None,
) -> int:
    """Register ``plan``'s plate and a scan of its wells, then read, store and classify every
    well through the scan worker. Returns the scan's id; its status says how it ended
    (completed, or failed with the error; wells already committed stay)."""
    fail_abandoned_imports(context.session_factory, lease_seconds=context.lease_seconds)
    microscope = f"{MICROSCOPE_PREFIX}{plan.layout}"
    try:
        scan_id = _register(context, plan, microscope, requested_by)
    except IntegrityError:  # a concurrent request created the same new plate: use it
        scan_id = _register(context, plan, microscope, requested_by)
    worker = _ImportWorker(
        WorkerContext(
            session_factory=context.session_factory,
            scanner=FolderScanner(plan, context.classifier.config),
            classifier=context.classifier,
            model_version_id=context.model_version_id,
            image_store=context.image_store,
            microscope_name=microscope,
            plate=context.geometry,
        ),
        scan_id,
        lease_seconds=context.lease_seconds,
    )
    worker.on_progress = on_progress
    logger.info("import of %s as scan %d: %d wells", plan.folder, scan_id, len(plan.wells))
    worker.run_next()  # the worker marks the scan completed or failed (with its error)
    return scan_id


def outcome(
    session_factory: sessionmaker[Session], plan: ImportPlan, scan_id: int | None
) -> ImportPublic:
    """The answer to an import: its plan's summary, and the scan with its calls counted."""
    if scan_id is None:
        return ImportPublic(dry_run=True, summary=plan.summary(), scan=None)
    with session_scope(session_factory) as session:
        scan = session.get_one(Scan, scan_id)
        rows = session.execute(
            select(WellResult.status, WellResult.label, func.count())
            .where(WellResult.scan_id == scan_id)
            .group_by(WellResult.status, WellResult.label)
        ).all()
        calls = {"high": 0, "low": 0, "excluded": 0, "failed": 0}
        for status, label, count in rows:
            key = label if status == WellStatus.ok and label else status.value
            calls[key] = calls.get(key, 0) + int(count)
        return ImportPublic(
            dry_run=False, summary=plan.summary(), scan=ScanPublic.of(scan), calls=calls
        )


# -- the API's folder --------------------------------------------------------------------------
def resolve_folder(root: Path | None, relative: str) -> Path:
    """The folder ``relative`` names under the import root, refusing every way out of it.

    Raises ImportDisabledError (403: no root configured), ImportPathError (422: absolute, a
    drive, '..'), OutsideImportRootError (403: a link leads out of the root), NotFoundError.
    """
    if root is None:
        raise ImportDisabledError(
            "imports over the API are off on this service: set MSCREEN_IMPORT_ROOT to the "
            "folder it may import from, or run `mscreen import DIR` on its machine"
        )
    windows = PureWindowsPath(relative)
    posix = PurePosixPath(relative)
    if posix.is_absolute() or windows.drive or windows.root or relative.startswith("~"):
        raise ImportPathError(
            f"path {relative!r} must be relative to the import root (no leading '/', '\\', "
            "drive or '~')"
        )
    if ".." in posix.parts or ".." in windows.parts:
        raise ImportPathError(f"path {relative!r} may not contain '..'")
    try:
        base = root.resolve()
        folder = (base / posix).resolve()
        exists = folder.is_dir()
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:  # no folder can have that name
            raise NotFoundError(f"no folder {relative!r} under the import root") from exc
        raise ImportPathError(f"path {relative!r} cannot be opened: {exc.strerror}") from exc
    except (RuntimeError, ValueError) as exc:  # a link loop, a name the file system cannot spell
        raise ImportPathError(f"path {relative!r} cannot be opened: {exc}") from exc
    if not folder.is_relative_to(base):
        raise OutsideImportRootError(
            f"path {relative!r} leads out of the import root through a symbolic link"
        )
    if not exists:
        raise NotFoundError(f"no folder {relative!r} under the import root")
    return folder


def check_api_size(plan: ImportPlan) -> None:
    """The API imports inside the request: refuse a plate too large for that (422)."""
    if plan.field_count > API_MAX_FIELDS:
        raise ImportLayoutError(
            f"{plan.field_count} fields are more than the API imports in one request "
            f"({API_MAX_FIELDS}); run `mscreen import` on the service's machine"
        )
