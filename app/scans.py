"""Creating, reading and cancelling scans (the logic behind the scans router and the CLI)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app.auth import audit
from app.errors import ConflictError, InvalidRequestError, NotFoundError
from app.schemas.plates import WellResultPublic
from app.schemas.scans import ScanCreate, ScanPublic
from hardware.plate import SBS_96, PlateGeometry
from store.db import session_scope
from store.orm import Scan, ScanStatus
from store.queries import get_or_create_plate, results_after


class IdempotencyConflictError(InvalidRequestError):
    """The Idempotency-Key was used before with a different request body."""


def request_fingerprint(request: ScanCreate) -> str:
    """SHA-256 of the request's canonical JSON (defaults filled in, keys sorted)."""
    canonical = json.dumps(request.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def find_idempotent(session: Session, key: str, request: ScanCreate) -> Scan | None:
    """The scan an earlier request with ``key`` created, if it asked for the same thing."""
    scan = session.scalar(select(Scan).where(Scan.idempotency_key == key))
    if scan is None:
        return None
    if scan.request_fingerprint != request_fingerprint(request):
        raise IdempotencyConflictError(
            f"Idempotency-Key {key!r} was already used for a different request (scan {scan.id})"
        )
    return scan


def create_scan(
    session: Session,
    request: ScanCreate,
    *,
    microscope: str,
    requested_by: str | None = None,
    idempotency_key: str | None = None,
    geometry: PlateGeometry = SBS_96,
) -> Scan:
    """Queue the scan ``request`` asks for (default: every well) on ``microscope``.

    Raises WellNameError or ValueError naming the offending well.
    """
    wells = request.wells
    names = list(geometry.well_names) if not wells else [geometry.normalise(w) for w in wells]
    duplicates = sorted({w for w in names if names.count(w) > 1})
    if duplicates:
        raise ValueError(f"wells listed twice: {', '.join(duplicates)}")
    plate = get_or_create_plate(session, request.plate_barcode, geometry)
    scan = Scan(
        plate=plate,
        objective=request.objective,
        fields_per_well=request.fields_per_well,
        wells_requested=names,
        microscope=microscope,
        wells_done=0,
        requested_by=requested_by,
        idempotency_key=idempotency_key,
        request_fingerprint=request_fingerprint(request),
    )
    session.add(scan)
    session.flush()
    return scan


class ScanStateError(ConflictError):
    """The scan is not in a state that allows the operation."""


def cancel_scan(session: Session, scan: Scan) -> None:
    """Cancel a queued or running scan; the worker stops before its next well.

    One conditional UPDATE, so a scan that finishes at the same moment is never turned from
    completed into cancelled (nor a confirmed cancel into completed: the worker's own finish is
    conditional too).
    """
    result = session.execute(
        update(Scan)
        .where(Scan.id == scan.id, Scan.status.in_([ScanStatus.queued, ScanStatus.running]))
        .values(
            status=ScanStatus.cancelled,
            finished_at=datetime.now(UTC),
            lease_owner=None,
            lease_expires_at=None,
        )
    )
    if getattr(result, "rowcount", 0) != 1:
        session.refresh(scan)
        raise ScanStateError(f"scan {scan.id} is already {scan.status.value}")
    session.refresh(scan)


def start_scan(
    session: Session,
    request: ScanCreate,
    *,
    microscope: str,
    requested_by: str,
    idempotency_key: str | None = None,
) -> Scan:
    """Queue ``request`` (committed), or return the scan an earlier same-key request queued.

    Raises InvalidRequestError (a bad well list, a key reused for another body) or
    ConflictError (a concurrent request created the same new plate: retry).
    """
    try:
        scan = find_idempotent(session, idempotency_key, request) if idempotency_key else None
        if scan is None:
            scan = create_scan(
                session,
                request,
                microscope=microscope,
                requested_by=requested_by,
                idempotency_key=idempotency_key,
            )
            audit(session, requested_by, "scan.create", f"scan:{scan.id}", **request.model_dump())
            session.commit()
    except IntegrityError as exc:
        # A concurrent retry with the same key won the insert: answer with its scan. Without a
        # key, a concurrent first scan of the same new plate created it first: retry.
        session.rollback()
        scan = find_idempotent(session, idempotency_key, request) if idempotency_key else None
        if scan is None:
            raise ConflictError("a concurrent request changed this plate; retry") from exc
    except ValueError as exc:  # WellNameError, or wells listed twice
        raise InvalidRequestError(str(exc)) from exc
    return scan


def scan_or_error(session: Session, scan_id: int) -> Scan:
    scan = session.get(Scan, scan_id)
    if scan is None:
        raise NotFoundError(f"no scan {scan_id}")
    return scan


def cancel(session: Session, scan_id: int, *, actor: str) -> Scan:
    """:func:`cancel_scan`, audited (ConflictError if the scan is already finished)."""
    scan = scan_or_error(session, scan_id)
    cancel_scan(session, scan)
    audit(session, actor, "scan.cancel", f"scan:{scan.id}")
    return scan


def snapshot(
    session_factory: sessionmaker[Session], scan_id: int, after_result_id: int
) -> tuple[ScanPublic, list[tuple[int, WellResultPublic]]]:
    """The scan's state and the results committed after ``after_result_id`` (for live events).

    Its own short transaction: an event stream must not hold a session open for its lifetime.
    """
    with session_scope(session_factory) as session:
        scan = session.get_one(Scan, scan_id)
        results = results_after(session, scan_id, after_result_id)
        return ScanPublic.of(scan), [(r.id, WellResultPublic.of(r)) for r in results]
