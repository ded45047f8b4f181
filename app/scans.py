"""Creating, reading and cancelling scans (the logic behind the scans router and the CLI)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app.auth import audit
from app.classifier import WellClassifier
from app.errors import ConflictError, InvalidRequestError, NotFoundError
from app.schemas.plates import WellResultPublic
from app.schemas.scans import ScanCreate, ScanPage, ScanPublic
from app.settings import Settings
from hardware.microscope import Objective
from hardware.plans import scan_plan_from_useq, simulated_field_of_view_um
from hardware.plate import SBS_96, PlateGeometry, plate_geometry
from models.decision import REQUEST_FIELDS, CallPolicy, ThresholdPolicy
from store import queries
from store.db import session_scope
from store.orm import Scan, ScanStatus


class IdempotencyConflictError(InvalidRequestError):
    """The Idempotency-Key was used before with a different request body."""


# The call-policy request fields (issue 15) are left out of the fingerprint when unset, so a
# request that does not name them fingerprints as it did before (a retry of a scan queued before
# the upgrade still finds it).
_POLICY_FIELDS = REQUEST_FIELDS


def request_fingerprint(request: ScanCreate) -> str:
    """SHA-256 of the request's canonical JSON (defaults filled in, keys sorted; the call-policy
    fields only when given)."""
    body = request.model_dump(mode="json")
    for name in _POLICY_FIELDS:
        if body.get(name) is None:
            body.pop(name, None)
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class PolicyDefaults:
    """The service's call policy (MSCREEN_THRESHOLD_POLICY, _SELECTIVE_ALPHA, _SELECTIVE_DELTA),
    for the requests that name none. The defaults here are the models' own behaviour."""

    threshold_policy: str = "default"
    alpha: float | None = None
    delta: float = 0.1

    @classmethod
    def of(cls, settings: Settings) -> PolicyDefaults:
        return cls(settings.threshold_policy, settings.selective_alpha, settings.selective_delta)

    def to_dict(self) -> dict[str, Any]:
        """The request a scan that names no call policy makes."""
        return {name: getattr(self, name) for name in REQUEST_FIELDS}


def requested_policy(request: ScanCreate, defaults: PolicyDefaults) -> dict[str, Any]:
    """What the scan asks for: ``{threshold_policy, alpha, delta}``, the request's choices and
    the service's where it names none (stored in ``Scan.decision_policy`` at creation)."""
    asked = {name: getattr(request, name) for name in REQUEST_FIELDS}
    return defaults.to_dict() | {name: v for name, v in asked.items() if v is not None}


class ModelCannotServePolicyError(ConflictError):
    """The request asks for thresholds the serving model cannot choose: it has no decision set
    (held-out calibration fields). A 409, not a 422: the same request is valid on a model that
    carries one, so it is the service's state, not the request, that is in the way."""


_SETTING_OF = {
    "threshold_policy": "MSCREEN_THRESHOLD_POLICY",
    "alpha": "MSCREEN_SELECTIVE_ALPHA",
    "delta": "MSCREEN_SELECTIVE_DELTA",
}


def service_defaults_used(request: ScanCreate) -> list[str]:
    """The call-policy fields ``request`` leaves to the service's settings."""
    return [name for name in _POLICY_FIELDS if getattr(request, name) is None]


def check_policy(
    classifier: WellClassifier, policy: dict[str, Any], *, from_service: Sequence[str] = ()
) -> CallPolicy:
    """``policy`` resolved against ``classifier``'s model, as the worker will resolve it.

    ``from_service``: the fields that came from the service's settings, named in a refusal
    (a lab that never sent an alpha must learn where it came from).

    Raises:
        ModelCannotServePolicyError: it needs a decision set and the model has none (409).
        InvalidRequestError: anything else the model refuses (a policy under which no field is
            high, so no selective threshold exists), naming it (422).
    """
    try:
        return classifier.policy(**policy)
    except ValueError as exc:
        model = classifier.model
        # The choices that need a decision set: only those are named when it is missing.
        needing = [
            name
            for name, needs in (
                ("threshold_policy", _needs_decision_set(policy.get("threshold_policy", ""))),
                ("alpha", policy.get("alpha") is not None),
            )
            if needs
        ]
        if model.decision_set is None and needing:
            raise ModelCannotServePolicyError(
                f"the serving model {model.name} v{model.version} cannot serve this call "
                f"policy{_origin(needing, from_service)}: {exc}"
            ) from exc
        raise InvalidRequestError(
            f"call policy{_origin(list(_POLICY_FIELDS), from_service)}: {exc}"
        ) from exc


def _origin(names: Sequence[str], from_service: Sequence[str]) -> str:
    """`` (alpha from the service's MSCREEN_SELECTIVE_ALPHA)`` for those of ``names`` that the
    service's settings supplied; "" when the request chose them all."""
    settings = [
        f"{name} from the service's {_SETTING_OF[name]}" for name in names if name in from_service
    ]
    return f" ({'; '.join(settings)})" if settings else ""


def _needs_decision_set(text: str) -> bool:
    try:
        return ThresholdPolicy.parse(text).needs_decision_set
    except ValueError:
        return False


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


class PlateTypeConflictError(ConflictError):
    """The plate is already stored with another plate type than the request's plan."""


def create_scan(
    session: Session,
    request: ScanCreate,
    *,
    microscope: str,
    requested_by: str | None = None,
    idempotency_key: str | None = None,
    geometry: PlateGeometry = SBS_96,
    field_of_view: Callable[[Objective], tuple[float, float]] = simulated_field_of_view_um,
    policy_defaults: PolicyDefaults = PolicyDefaults(),
) -> Scan:
    """Queue the scan ``request`` asks for (default: every well) on ``microscope``.

    Its call policy (:func:`requested_policy`, ``policy_defaults`` filling in what the request
    leaves unset) is recorded in ``Scan.decision_policy``; the worker resolves it against its
    model when the scan starts. Checking it against the serving model first is the caller's
    (:func:`check_policy`): this function needs no model.

    A request with a ``plate_plan`` scans the plan's wells and points on a plate of the plan's
    type; otherwise the wells are checked against the plate's own geometry (a stored plate's
    type, or ``geometry`` for a new one).

    Args:
        geometry: the geometry of a new plate scanned without a plan (the 96-well plate).
        field_of_view: (width, height) in um of a camera field at an objective: every field of
            a plan must lie inside its well.
        policy_defaults: the service's call policy settings.

    Raises:
        WellNameError or ValueError: naming the offending well, or what is wrong with the plan
            (a point too near the wall, an unsupported plate type).
        PlateTypeConflictError: the plate is stored with another type than the plan's.
    """
    plan_json = request.plate_plan
    fields_per_well = request.fields_per_well
    existing = queries.find_plate(session, request.plate_barcode)
    if plan_json is not None:
        plan = scan_plan_from_useq(
            plan_json,
            barcode=request.plate_barcode,
            objective=request.objective,
            field_of_view_um=field_of_view(request.objective),
        )
        geometry = plan.plate
        names = list(plan.wells)
        fields_per_well = plan.fields_per_well
        if existing is not None and plate_geometry(existing.plate_type).name != geometry.name:
            raise PlateTypeConflictError(
                f"plate {request.plate_barcode!r} is stored as a {existing.plate_type} plate; "
                f"the plate plan is for a {geometry.name} plate"
            )
    else:
        if existing is not None:
            geometry = plate_geometry(existing.plate_type)
        wells = request.wells
        names = list(geometry.well_names) if not wells else [geometry.normalise(w) for w in wells]
    duplicates = sorted(w for w, n in Counter(names).items() if n > 1)
    if duplicates:
        raise ValueError(f"wells listed twice: {', '.join(duplicates)}")
    plate = existing or queries.get_or_create_plate(session, request.plate_barcode, geometry)
    scan = Scan(
        plate=plate,
        objective=request.objective,
        fields_per_well=fields_per_well,
        wells_requested=names,
        microscope=microscope,
        wells_done=0,
        requested_by=requested_by,
        idempotency_key=idempotency_key,
        request_fingerprint=request_fingerprint(request),
        plate_plan=plan_json,
        decision_policy=requested_policy(request, policy_defaults),
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
    policy_defaults: PolicyDefaults = PolicyDefaults(),
    classifier: WellClassifier | None = None,
) -> Scan:
    """Queue ``request`` (committed), or return the scan an earlier same-key request queued.

    With ``classifier`` (the serving model) a new scan's call policy is checked against it
    first (:func:`check_policy`), so a policy the model cannot serve is refused now rather
    than failing the scan when the worker starts it. A same-key retry returns its scan
    unchecked: it was accepted once.

    Raises InvalidRequestError (a bad well list, plate plan or call policy, a key reused for
    another body: whether that earlier request committed long ago or a moment ago in a
    concurrent race) or ConflictError (the serving model has no decision set for the policy
    asked; the plate is stored with another type than the plan's; concurrent requests kept
    changing this plate: retry).
    """
    for attempt in range(START_ATTEMPTS):
        if idempotency_key:
            existing = session.scalar(select(Scan).where(Scan.idempotency_key == idempotency_key))
            if existing is not None:
                # Decided outside any except block: a reused key is this request's own 422.
                return same_request_or_error(existing, idempotency_key, request)
        if classifier is not None and attempt == 0:
            check_policy(
                classifier,
                requested_policy(request, policy_defaults),
                from_service=service_defaults_used(request),
            )
        try:
            scan = create_scan(
                session,
                request,
                microscope=microscope,
                requested_by=requested_by,
                idempotency_key=idempotency_key,
                policy_defaults=policy_defaults,
            )
            audit(session, requested_by, "scan.create", f"scan:{scan.id}", **request.model_dump())
            session.commit()
            return scan
        except IntegrityError:
            # A concurrent request committed first: the same key (the next look finds its
            # scan), or the same new plate (the next attempt uses the plate it created).
            session.rollback()
        except ValueError as exc:  # WellNameError, wells listed twice, a bad plate plan
            session.rollback()
            raise InvalidRequestError(str(exc)) from exc
        except PlateTypeConflictError:
            session.rollback()
            raise
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
