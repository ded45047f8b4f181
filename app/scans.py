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
from app.schemas.scans import ScanCreate, ScanPage, ScanPublic
from hardware.plate import SBS_96, PlateGeometry
from store import queries
from store.db import session_scope
from store.orm import Scan, ScanStatus


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
    return same_request_or_error(scan, key, request)


def same_request_or_error(scan: Scan, key: str, request: ScanCreate) -> Scan:
    """``scan`` (created under ``key``) if ``request`` asks for what it was created for."""
    if scan.request_fingerprint != request_fingerprint(request):
        raise IdempotencyConflictError(
            f"Idempotency-Key {key!r} was already used for a different request (scan {scan.id});"
            " send this request with a new key, or resend the original body"
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
    plate = queries.get_or_create_plate(session, request.plate_barcode, geometry)
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


# A request that loses an insert race looks again; each retry follows a committed winner, so
# a few are enough (two racing new plates, then the key), and more means something else is wrong.
START_ATTEMPTS = 3


def start_scan(
    session: Session,
    request: ScanCreate,
    *,
    microscope: str,
    requested_by: str,
    idempotency_key: str | None = None,
) -> Scan:
    """Queue ``request`` (committed), or return the scan an earlier same-key request queued.

    Raises InvalidRequestError (a bad well list, a key reused for another body: whether that
    earlier request committed long ago or a moment ago in a concurrent race) or ConflictError
    (concurrent requests kept changing this plate: retry).
    """
    for _attempt in range(START_ATTEMPTS):
        if idempotency_key:
            existing = session.scalar(select(Scan).where(Scan.idempotency_key == idempotency_key))
            if existing is not None:
                # Decided outside any except block: a reused key is this request's own 422.
                return same_request_or_error(existing, idempotency_key, request)
        try:
            scan = create_scan(
                session,
                request,
                microscope=microscope,
                requested_by=requested_by,
                idempotency_key=idempotency_key,
            )
            audit(session, requested_by, "scan.create", f"scan:{scan.id}", **request.model_dump())
            session.commit()
            return scan
        except IntegrityError:
            # A concurrent request committed first: the same key (the next look finds its
            # scan), or the same new plate (the next attempt uses the plate it created).
            session.rollback()
        except ValueError as exc:  # WellNameError, or wells listed twice
            session.rollback()
            raise InvalidRequestError(str(exc)) from exc
    raise ConflictError(
        f"concurrent requests kept changing plate {request.plate_barcode!r}; retry the request"
    )


def list_scans(
    session: Session,
    *,
    limit: int,
    offset: int,
    plate: str | None = None,
    status: ScanStatus | None = None,
) -> ScanPage:
    """Scans newest first, optionally of one plate (barcode) or in one status."""
    rows, total = queries.list_scans(
        session, limit=limit, offset=offset, barcode=plate, status=status
    )
    return ScanPage(
        items=[ScanPublic.of(scan) for scan in rows], total=total, limit=limit, offset=offset
    )


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
        results = queries.results_after(session, scan_id, after_result_id)
        images = (
            queries.images_by_well(session, scan_id, [r.well_id for r in results])
            if results
            else {}
        )
        return ScanPublic.of(scan), [
            (r.id, WellResultPublic.of(r, images.get(r.well_id, ()))) for r in results
        ]
