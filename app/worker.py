"""The scan worker: takes queued scans from the database and runs them, one at a time.

Scans never run inside a request. Each well is classified as soon as its fields arrive; its
images are written (and checksummed) first, then its image rows, result and the scan's
progress are committed in one short transaction, so a crash loses at most the well in flight
and never leaves a result without its images. A crash between the write and the commit leaves
orphan fields on disk (no ``images`` row): the resumed scan writes the well again, and
:func:`reconcile_scan_images` removes orphans when a scan finishes (and ``mscreen admin
reconcile-images`` for any scan).

Durability: a worker holds a *lease* on the scan it runs (``lease_owner``, ``lease_expires_at``)
and renews it from a heartbeat thread. A scan is claimable when it is queued, or running with
an expired lease (its worker died: SIGKILL, power cut). The claim is one conditional UPDATE, so
two workers can never both win it; every well commit re-checks the lease in the same
transaction, so a worker that lost its lease cannot record anything. Its image files cannot
clobber a successor's either: only a scan's first claim writes the plain field paths, every
takeover writes per-attempt paths (see :meth:`ScanWorker._commit_well`). A resumed scan
continues from the first requested well without a result; the unique (scan, well) constraint
makes a duplicate result impossible. One scan runs per microscope at a time; the others wait
in id order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from app.classifier import WellCall, WellClassifier
from app.leases import Heartbeat, LeasedWorker, LeaseLostError
from app.leases import now as _now
from app.ngff_results import write_results
from hardware.microscope import HardwareError, Objective, PlateScanner, ScanPlan, WellAcquisition
from hardware.plans import scan_plan_from_useq, simulated_field_of_view_um
from hardware.plate import SBS_96, PlateGeometry, plate_geometry
from models.decision import REQUEST_FIELDS, CallPolicy
from store.db import session_scope
from store.images import ImageStore, StoredImage
from store.orm import Image, Scan, ScanStatus, Well, WellResult, WellStatus

logger = logging.getLogger(__name__)


@dataclass
class WorkerContext:
    """What the worker needs, built once by the application."""

    session_factory: sessionmaker[Session]
    scanner: PlateScanner
    # None when no model could be loaded (the service runs degraded, ``model_problem`` says
    # why): the worker then claims nothing, and queued scans wait untouched for a good model.
    classifier: WellClassifier | None
    model_version_id: int | None
    image_store: ImageStore
    microscope_name: str
    plate: PlateGeometry = SBS_96  # calibrated geometry: where A1's centre is on this stage
    model_problem: str | None = None
    # (width, height) in um of a camera field at an objective, to check a plan's fields lie
    # inside their wells (as create_scan checked them).
    field_of_view: Callable[[Objective], tuple[float, float]] = simulated_field_of_view_um
    # Write each completed scan's calls into its OME-Zarr plate (MSCREEN_PLATE_RESULTS), with
    # the bit depth of stored frames that recorded none (app.runtime.serving_bit_depth).
    plate_results: bool = True
    bit_depth: int | None = None


def _lock_key(microscope: str) -> int:
    """A stable signed 64-bit key for PostgreSQL's advisory lock on a microscope."""
    digest = hashlib.sha256(microscope.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class ScanWorker(LeasedWorker):
    """Runs queued scans in a background thread (or synchronously with :meth:`run_pending`).

    Args:
        context: database, scanner, classifier, storage.
        poll_seconds: how often an idle worker looks for work.
        lease_seconds: how long a claim lasts without renewal; renewed every third of it.
    """

    job = Scan
    kind = "scan"

    def __init__(
        self, context: WorkerContext, *, poll_seconds: float = 0.5, lease_seconds: float = 30.0
    ) -> None:
        super().__init__(
            context.session_factory, poll_seconds=poll_seconds, lease_seconds=lease_seconds
        )
        self.context = context
        # Image stores of other plate types than the service's (one HCS grid per type).
        self._stores: dict[str, ImageStore] = {}
        # Per scan claimed: the attempt token its fields are written under; None (or absent)
        # for a scan's first claim (plain field paths; see _commit_well). A subclass whose
        # _claim can take a scan over must set a token here, as _claim does.
        self._attempts: dict[int, str | None] = {}

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        try:
            reconcile_finished_scans(
                self.context.session_factory,
                self.context.image_store,
                microscope=self.context.microscope_name,
                since=_now() - timedelta(hours=24),
            )
        except Exception:  # orphans cost disk, not correctness: never block the worker on them
            logger.exception("reconciling recent scans' images failed")
        super().start()

    def use_model(self, classifier: WellClassifier, model_version_id: int) -> None:
        """Switch models; a scan in flight finishes with the model it started with. Ends a
        degraded start: scans waiting for a model are claimed from the next poll on."""
        self.context.classifier = classifier
        self.context.model_version_id = model_version_id
        self.context.model_problem = None

    # -- claiming and leases -------------------------------------------------------------------
    def run_next(self) -> bool:
        """Claim the next scan of this microscope and run it. False if there is none to claim
        (or no model to run it with: a scan is never claimed, so never failed, for want of one).
        """
        if self.context.classifier is None:
            return False
        scan_id = self._claim()
        if scan_id is None:
            return False
        heartbeat = Heartbeat(self, scan_id)
        heartbeat.start()
        try:
            self._run(scan_id)
        except LeaseLostError:
            logger.warning("scan %d: lease lost to another worker; stopping", scan_id)
        except PolicyUnavailableError as exc:
            # Expected, not a bug: the model serving now (activated after the scan was queued)
            # cannot serve the call policy the scan asked for. The scan fails saying so.
            logger.warning("scan %d failed: %s", scan_id, exc)
            self.finish(scan_id, ScanStatus.failed, str(exc))
        except Exception as exc:
            logger.exception("scan %d failed", scan_id)
            self.finish(scan_id, ScanStatus.failed, f"{type(exc).__name__}: {exc}")
        finally:
            heartbeat.stop()
            self._attempts.pop(scan_id, None)
        self._reconcile_if_finished(scan_id)
        return True

    def _reconcile_if_finished(self, scan_id: int) -> None:
        """Remove orphan fields of a scan that has finished (after a takeover or a crashed
        attempt some may be left); a scan still running (taken over) is left to its worker."""
        try:
            reconcile_scan_images(
                self.context.session_factory,
                self.context.image_store,
                scan_id,
                only_finished=True,
            )
        except Exception:  # orphans cost disk, not correctness: the scan's outcome stands
            logger.exception("scan %d: reconciling its images failed", scan_id)

    def _claimable(self, now: datetime) -> object:
        # A running scan without a lease (left by a version before leases) counts as expired.
        lapsed = or_(Scan.lease_expires_at.is_(None), Scan.lease_expires_at < now)
        expired = and_(Scan.status == ScanStatus.running, lapsed)
        return and_(
            Scan.microscope == self.context.microscope_name,
            or_(Scan.status == ScanStatus.queued, expired),
        )

    def _busy(self, session: Session, now: datetime) -> bool:
        """Another worker holds a live lease on a scan of this microscope."""
        other = session.scalar(
            select(Scan.id).where(
                Scan.microscope == self.context.microscope_name,
                Scan.status == ScanStatus.running,
                Scan.lease_expires_at >= now,
                Scan.lease_owner != self.owner,
            )
        )
        return other is not None

    def _claim(self) -> int | None:
        now = _now()
        with session_scope(self.context.session_factory) as session:
            if session.get_bind().dialect.name == "postgresql":
                # Claims on one microscope are serialised; released at commit.
                session.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"),
                    {"key": _lock_key(self.context.microscope_name)},
                )
            if self._busy(session, now):
                return None  # another live worker drives this microscope
            # Interrupted scans first (they were started earlier), then the queue in order.
            candidates = session.scalars(
                select(Scan.id)
                .where(self._claimable(now))  # type: ignore[arg-type]
                .order_by((Scan.status == ScanStatus.running).desc(), Scan.id)
                .limit(5)
            ).all()
            for scan_id in candidates:
                claimed = session.execute(
                    update(Scan)
                    .where(Scan.id == scan_id, self._claimable(now))  # type: ignore[arg-type]
                    .values(
                        status=ScanStatus.running,
                        lease_owner=self.owner,
                        lease_expires_at=now + timedelta(seconds=self.lease_seconds),
                    )
                )
                if getattr(claimed, "rowcount", 0) != 1:
                    return None  # another worker claimed it first; try again next poll
                if self._busy(session, now):
                    # Another worker's claim committed in the meantime (SQLite serialises
                    # writers only at the UPDATE): back off, keeping one scan per microscope.
                    session.rollback()
                    return None
                scan = session.get_one(Scan, scan_id)
                # Only a scan's first claim (never started before) writes the plain field
                # paths; a takeover writes under a token of its own (see _commit_well).
                self._attempts[scan_id] = None if scan.started_at is None else _attempt_token()
                scan.started_at = scan.started_at or now
                # The model that started the scan stays its model of record; each well
                # result records the model that actually classified it.
                scan.model_version_id = scan.model_version_id or self.context.model_version_id
                return scan_id
        return None

    # -- one scan ------------------------------------------------------------------------------
    def _run(self, scan_id: int) -> None:
        with session_scope(self.context.session_factory) as session:
            scan = session.get_one(Scan, scan_id)
            done = set(
                session.scalars(
                    select(Well.name)
                    .join(WellResult, WellResult.well_id == Well.id)
                    .where(WellResult.scan_id == scan_id)
                )
            )
            remaining = [w for w in scan.wells_requested if w not in done]
            plan = dataclasses.replace(self._plan(scan), wells=remaining)
            well_ids = {w.name: w.id for w in scan.plate.wells}
            total = scan.wells_total
            # The model is fixed for the whole scan, even if another is activated meanwhile.
            classifier, model_version_id = self.context.classifier, self.context.model_version_id
            if classifier is None or model_version_id is None:  # run_next checked; never unset
                raise RuntimeError("no model is loaded")
            # The call policy asked for at creation, resolved against this model and recorded.
            # Resolution is deterministic, so a scan resumed on the same model records the same
            # thresholds; resumed on another (activated meanwhile), the earlier record is kept
            # under "superseded", since the wells already done were called under it.
            policy = resolve_scan_policy(classifier, scan.decision_policy)
            scan.decision_policy = recorded_policy(
                scan.decision_policy, policy, model=model_version_id
            )
        if done:
            logger.info(
                "scan %d resumes: %d wells done, %d to go", scan_id, len(done), len(remaining)
            )
        try:
            for acquisition in self.context.scanner.scan(plan, lambda: self._should_stop(scan_id)):
                call = (
                    None if acquisition.failed else classifier.classify(acquisition.fields, policy)
                )
                committed = self._commit_well(
                    scan_id, plan, well_ids, acquisition, call, model_version_id
                )
                if committed is None:
                    logger.info("scan %d cancelled: well %s discarded", scan_id, acquisition.well)
                    return
                wells_done, stored = committed
                self._publish_well(scan_id, plan, acquisition.well, stored)
                if self.on_progress is not None:
                    self.on_progress(scan_id, wells_done, total)
        except HardwareError as exc:
            self.finish(scan_id, ScanStatus.failed, f"microscope: {exc}")
            return
        if self._should_stop(scan_id):
            logger.info("scan %d stopped before its end (cancelled or shutting down)", scan_id)
            return
        if self.finish(scan_id, ScanStatus.completed, None) and self.context.plate_results:
            self._write_plate_results(scan_id, classifier, policy.threshold)

    def _plan(self, scan: Scan) -> ScanPlan:
        """What ``scan`` acquires: its plate plan's geometry, wells and points when it has one;
        else its wells on the plate's own geometry (the calibrated one for the 96-well plate)."""
        objective: Objective = scan.objective  # type: ignore[assignment]  # validated by the API
        if scan.plate_plan is not None:
            return scan_plan_from_useq(
                scan.plate_plan,
                barcode=scan.plate.barcode,
                objective=objective,
                field_of_view_um=self.context.field_of_view(objective),
            )
        geometry = plate_geometry(scan.plate.plate_type)
        if geometry.name == self.context.plate.name:
            geometry = self.context.plate
        return ScanPlan(
            barcode=scan.plate.barcode,
            wells=list(scan.wells_requested),
            objective=objective,
            fields_per_well=scan.fields_per_well,
            plate=geometry,
        )

    def _should_stop(self, scan_id: int) -> bool:
        with session_scope(self.context.session_factory) as session:
            status = session.scalar(select(Scan.status).where(Scan.id == scan_id))
        return status == ScanStatus.cancelled or self._stop.is_set()

    def _commit_well(
        self,
        scan_id: int,
        plan: ScanPlan,
        well_ids: dict[str, int],
        acquisition: WellAcquisition,
        call: WellCall | None,
        model_version_id: int,
    ) -> tuple[int, list[StoredImage]] | None:
        """Write one well's images, then record them, its result and the progress bump in one
        short transaction. Returns the new ``wells_done`` and the fields written, or None if
        the scan was cancelled meanwhile (nothing is recorded; the fields written are removed).

        Order: the fields are written and checksummed *before* the transaction (a field costs
        ~7 ms; it used to be written under the scan row's lock, blocking a cancel meanwhile), so
        a crash in between leaves orphan fields, never a result without its images; orphans
        are removed by :func:`reconcile_scan_images`. The fields are not listed in the plate
        until committed (:meth:`_publish_well`).

        The progress bump is a conditional UPDATE (still running, still our lease) issued
        first in the transaction: it takes the scan row's write lock before anything else is
        written, so a cancel either commits before it (the well is dropped, and the cancel's
        ``wells_done`` is the final count) or waits for this commit (and then reports this
        well as done). Checking the status on a row read earlier was not enough: SQLite
        ignores FOR UPDATE, and a cancel committed between that read and the commit left a
        well the cancel never saw.

        A worker that lost its lease without knowing it (stalled past its expiry, then taken
        over) cannot record anything: the bump finds the lease gone. Its files must not clobber
        a field the successor committed either, and no lease check before the write could
        promise that (the stall can fall between the check and the write's last byte, and
        the file system knows no lease). So paths, not timing: only the scan's first claim
        writes the plain ``<index>`` field paths, and a takeover writes ``<index>t<token>``
        with a token of its own claim (:meth:`_claim`), so two workers never write the same
        field path. A stale worker's files are orphans, removed here when its bump fails, or
        by reconciliation. Not removed on any other error (the commit may have reached the
        database before the connection failed): reconciliation looks at the rows.
        """
        well_id = well_ids[acquisition.well]
        image_store = self._image_store(plan.plate)
        # Not set by a claim that only ever starts queued scans (the importer's): a first claim.
        attempt = self._attempts.get(scan_id)
        stored: list[StoredImage] = []
        outcomes = call.fields if call else []
        try:
            for field, _outcome in zip(acquisition.fields, outcomes, strict=True):
                stored.append(
                    image_store.save(
                        plan.barcode,
                        scan_id,
                        field,
                        fields_per_well=plan.fields_per_well,
                        attempt=attempt,
                        list_in_plate=False,
                    )
                )
        except BaseException:
            _remove_fields(stored, "its write failed")
            raise
        try:
            with session_scope(self.context.session_factory) as session:
                bumped = self.bump_progress(session, scan_id)
                if bumped is not None:
                    rows = zip(acquisition.fields, outcomes, stored, strict=True)
                    for field, outcome, image in rows:
                        session.add(_image_row(scan_id, well_id, field, outcome, image))
                    session.add(_result_row(scan_id, well_id, acquisition, call, model_version_id))
        except LeaseLostError:
            _remove_fields(stored, "the scan is no longer ours")  # nothing was recorded
            raise
        if bumped is None:  # cancelled: nothing was recorded, the files are nobody's
            _remove_fields(stored, "the scan was cancelled")
            return None
        return bumped, stored

    def _publish_well(
        self, scan_id: int, plan: ScanPlan, well: str, stored: list[StoredImage]
    ) -> None:
        """List a committed well's fields in its plate's metadata (for ome-zarr readers and
        napari; the service reads fields through their rows). A failure is logged, not fatal:
        reconciliation rewrites the listings from the rows when the scan finishes."""
        if not stored:
            return
        try:
            self._image_store(plan.plate).publish_well(
                plan.barcode,
                scan_id,
                well,
                [image.path for image in stored],
                fields_per_well=plan.fields_per_well,
            )
        except Exception:
            logger.exception("scan %d: listing well %s in its plate failed", scan_id, well)

    def _image_store(self, plate: PlateGeometry) -> ImageStore:
        """The image store for a plate of ``plate``'s type: the service's own for its plate
        type, else one on the same root with that plate's HCS grid (rows x columns)."""
        store = self.context.image_store
        if store.plate.name == plate.name:
            return store
        cached = self._stores.get(plate.name)
        if cached is None:
            cached = self._stores[plate.name] = ImageStore(store.root, plate=plate)
        return cached

    def _write_plate_results(
        self, scan_id: int, classifier: WellClassifier, threshold: float
    ) -> None:
        """The completed scan's calls into its OME-Zarr plate (app.ngff_results: label images,
        well attributes, a plate table) for napari; a failure is logged, the scan stands."""
        try:
            with session_scope(self.context.session_factory) as session:
                write_results(
                    session,
                    scan_id,
                    classifier,
                    threshold=threshold,
                    bit_depth=self.context.bit_depth,
                )
        except Exception:  # the calls are committed; the plate copy can be written again
            logger.exception("scan %d: writing its calls into the plate failed", scan_id)


def _attempt_token() -> str:
    """A new attempt token: 8 lowercase hex digits (field paths ``<index>t<token>``)."""
    return uuid.uuid4().hex[:8]


def _remove_fields(stored: Iterable[StoredImage], why: str) -> None:
    """Delete fields this worker wrote and nobody recorded (each path is unique to this
    worker's claim, so no one else's field is touched)."""
    for image in stored:
        try:
            if ImageStore.remove_field(image.path):
                logger.info("removed unrecorded field %s (%s)", image.path, why)
        except OSError:
            logger.exception("could not remove unrecorded field %s", image.path)


def _image_row(scan_id: int, well_id: int, field: Any, outcome: Any, stored: StoredImage) -> Image:
    qc = outcome.prepared.qc
    return Image(
        scan_id=scan_id,
        well_id=well_id,
        field_index=field.field_index,
        path=stored.path,
        sha256=stored.sha256,
        height=int(field.image.shape[0]),
        width=int(field.image.shape[1]),
        dtype=str(field.image.dtype),
        objective=field.objective,
        pixel_size_um=field.pixel_size_um,
        x_um=field.x_um,
        y_um=field.y_um,
        acquired_at=field.acquired_at,
        mean_v=qc.mean_v,
        focus_score=qc.focus_score,
        qc_excluded=qc.excluded,
        qc_flags=list(qc.flags),
        probability=outcome.probability,
        ood_score=outcome.ood_score,
        confluence_pct=outcome.prepared.confluence_pct,
        z_um=field.z_um,
        autofocus=field.autofocus.to_dict() if field.autofocus else None,
    )


_FINISHED = (ScanStatus.completed, ScanStatus.cancelled, ScanStatus.failed)


def reconcile_scan_images(
    session_factory: sessionmaker[Session],
    image_store: ImageStore,
    scan_id: int,
    *,
    dry_run: bool = False,
    only_finished: bool = False,
) -> list[str]:
    """Remove the fields on disk of scan ``scan_id`` that have no ``images`` row (orphans of
    a crash between a well's write and its commit, or of a worker that lost its lease) and
    rewrite its plate's listings from its rows. Returns the orphans' paths (with ``dry_run``
    only listed, nothing changed). A field with a row is never removed.

    ``image_store``: the service's store (its root); the scan's own plate type gives the grid.
    ``only_finished``: do nothing unless the scan is completed, cancelled or failed (a running
    scan's well in flight is written before its row exists).
    """
    with session_scope(session_factory) as session:
        scan = session.get(Scan, scan_id)
        if scan is None or (only_finished and scan.status not in _FINISHED):
            return []
        barcode, plate_type = scan.plate.barcode, scan.plate.plate_type
        fields_per_well = scan.fields_per_well
        recorded = list(session.scalars(select(Image.path).where(Image.scan_id == scan_id)))
    store, geometry = image_store, plate_geometry(plate_type)
    if geometry.name != image_store.plate.name:
        store = ImageStore(image_store.root, plate=geometry)
    orphans = store.reconcile(
        barcode, scan_id, recorded, fields_per_well=fields_per_well, dry_run=dry_run
    )
    if orphans:
        logger.info(
            "scan %d: %s %d orphan field(s)",
            scan_id,
            "found" if dry_run else "removed",
            len(orphans),
        )
    return orphans


def reconcile_finished_scans(
    session_factory: sessionmaker[Session],
    image_store: ImageStore,
    *,
    microscope: str | None = None,
    since: datetime | None = None,
    dry_run: bool = False,
) -> dict[int, list[str]]:
    """:func:`reconcile_scan_images` for every finished scan (of ``microscope``, finished at or
    after ``since``, when given); the orphans found, by scan id (scans without any left out)."""
    with session_scope(session_factory) as session:
        query = select(Scan.id).where(Scan.status.in_(_FINISHED)).order_by(Scan.id)
        if microscope is not None:
            query = query.where(Scan.microscope == microscope)
        if since is not None:
            query = query.where(Scan.finished_at >= since)
        scan_ids = list(session.scalars(query))
    found: dict[int, list[str]] = {}
    for scan_id in scan_ids:
        orphans = reconcile_scan_images(
            session_factory, image_store, scan_id, dry_run=dry_run, only_finished=True
        )
        if orphans:
            found[scan_id] = orphans
    return found


def _result_row(
    scan_id: int,
    well_id: int,
    acquisition: WellAcquisition,
    call: WellCall | None,
    model_version_id: int,
) -> WellResult:
    common = {
        "scan_id": scan_id,
        "well_id": well_id,
        "model_version_id": model_version_id,
        "acquisition_ms": sum(f.acquisition_ms for f in acquisition.fields),
        "instrument_ms": acquisition.instrument_ms,
    }
    if call is None:
        return WellResult(
            status=WellStatus.failed,
            qc_flags=["acquisition_failed"],
            error=acquisition.error,
            fields_used=0,
            **common,
        )
    flags = list(call.qc_flags)
    if acquisition.focus_failed and "focus_failed" not in flags:
        flags.append("focus_failed")  # the fields were acquired at autofocus's best guess
    return WellResult(
        status=WellStatus.ok if call.label is not None else WellStatus.excluded,
        label=call.label,
        probability=call.probability,
        leaning=call.leaning,
        call_reason=call.reason,
        confidence=call.confidence,
        field_spread=call.spread,
        ood_score=call.ood_score,
        qc_flags=flags,
        fields_used=call.fields_used,
        confluence_pct=call.confluence_pct,
        preprocessing_ms=call.preprocessing_ms,
        inference_ms=call.inference_ms,
        **common,
    )


def requested_fields(recorded: dict[str, Any] | None) -> dict[str, Any]:
    """What the scan asked for: ``recorded["requested"]`` once resolved, else the creation record
    (None for scans created before issue 15: the default policy)."""
    if not recorded:
        return {}
    source = recorded.get("requested", recorded)
    return {key: source[key] for key in REQUEST_FIELDS if source.get(key) is not None}


def recorded_policy(
    recorded: dict[str, Any] | None, policy: CallPolicy, *, model: int
) -> dict[str, Any]:
    """What ``Scan.decision_policy`` holds once the scan runs: the request, the resolved policy
    and the model version it was resolved on, plus any earlier, different resolution."""
    resolved = {"requested": requested_fields(recorded), "model_version_id": model}
    resolved |= policy.to_dict()
    if not recorded or "requested" not in recorded:
        return resolved
    earlier = {k: v for k, v in recorded.items() if k != "superseded"}
    history = list(recorded.get("superseded", []))
    if earlier != resolved:
        history.append(earlier)
    return resolved | ({"superseded": history} if history else {})


class PolicyUnavailableError(ValueError):
    """The serving model cannot serve the call policy a scan asked for (it was checked against
    the model active when the scan was queued; another may serve by the time it starts)."""


def resolve_scan_policy(classifier: WellClassifier, recorded: dict[str, Any] | None) -> CallPolicy:
    """The scan's call policy on ``classifier``'s model; PolicyUnavailableError (the scan fails,
    saying why) when the request needs what the model lacks (a decision set for alpha or
    Youden)."""
    try:
        return classifier.policy(**requested_fields(recorded))
    except ValueError as exc:
        model = classifier.model
        raise PolicyUnavailableError(
            f"call policy: {exc} (serving model {model.name} v{model.version})"
        ) from None
