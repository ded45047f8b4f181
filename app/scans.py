"""Creating and reading scans (the logic behind the scans router and the CLI)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.api.schemas import ScanCreate
from app.orm import Scan, ScanStatus
from app.plates import get_or_create_plate
from hardware.plate import SBS_96, PlateGeometry


class IdempotencyConflictError(ValueError):
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


class ScanStateError(ValueError):
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
