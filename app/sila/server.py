"""The SiLA 2 server: PlateScreening on the service's own runtime, with its API keys.

Contract (what a scheduler can rely on):

- **Same services as REST.** Every call goes through ``app.scans`` and ``app.wells`` with the
  :class:`~app.runtime.Runtime` the worker runs on, so a scan queued here is the scan
  ``GET /api/v1/scans/{id}`` shows, audited under the key's name.
- **Same keys and roles.** The key travels as the SiLA core AuthorizationService's
  ``AccessToken`` metadata on every PlateScreening call (SiLAService, the discovery feature,
  takes none). Reads need viewer, ScanPlate and CancelScan operator. A missing token is the
  framework's InvalidMetadata; an invalid or revoked one is InvalidAccessToken, except on
  ScanPlate, whose checks run inside the observable command's execution, where sila2's client
  only maps the command's own errors: there it is NotAuthorized, as a role that is too low is
  on every call.
- **One scan per microscope, refused rather than queued.** ScanPlate answers MicroscopeBusy
  while a scan is queued or running on this microscope (a scheduler plans around a busy
  instrument; REST queues instead). The check and the queueing are atomic among this
  server's calls; a REST request racing them is queued behind as REST always does.
- **The stream is the database.** ScanPlate's intermediate responses are the scan's committed
  well results (``store.queries.results_after`` via :func:`app.scans.snapshot`), polled every
  ``poll_seconds``, in commit order: nothing is sent that a restart could lose, and a scan the
  worker resumes after a crash goes on streaming. Stopping this server ends its ScanPlate
  executions (an undefined execution error); the scans themselves go on in the worker.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from time import monotonic
from typing import Any, NoReturn, cast

import pydantic
from sila2.features.authorizationservice import (
    AuthorizationServiceBase,
    AuthorizationServiceFeature,
    InvalidAccessToken,
)
from sila2.framework import (
    Command,
    DefinedExecutionError,
    Feature,
    FullyQualifiedIdentifier,
    Metadata,
)
from sila2.framework import Property as SilaProperty
from sila2.server import (
    FeatureImplementationBase,
    MetadataDict,
    ObservableCommandInstanceWithIntermediateResponses,
    SilaServer,
)
from sqlalchemy import select
from sqlalchemy.orm import Session

from app import scans, wells
from app.auth import Principal, authenticate
from app.errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    ServiceError,
    UnavailableError,
)
from app.runtime import Runtime
from app.schemas.plates import WellResultPublic
from app.schemas.scans import ScanCreate
from app.sila.feature import (
    NO_PROBABILITY,
    ActiveModel,
    CancelScanResponses,
    GetWellCallResponses,
    GetWellCallsResponses,
    InvalidRequest,
    MicroscopeBusy,
    ModelNotLoaded,
    NotAuthorized,
    NotFound,
    PlateScreeningFeature,
    QcRejected,
    ScanAlreadyFinished,
    ScanCancelled,
    ScanFailed,
    ScanPlateIntermediateResponses,
    ScanPlateResponses,
    ScanSummary,
    WellCall,
)
from store.db import session_scope
from store.orm import Role, Scan, ScanStatus, WellStatus

logger = logging.getLogger(__name__)

DEFAULT_PORT = 50052
SERVER_TYPE = "MscreenPlateScreener"
SERVER_VERSION = "0.1"
SERVER_VENDOR_URL = "https://github.com/mscreen/mscreen"
# The principal of every call while MSCREEN_AUTH_DISABLED (development only), as in REST.
ANONYMOUS = Principal(name="anonymous", role=Role.admin)

ACCESS_TOKEN = cast(Metadata, AuthorizationServiceFeature["AccessToken"])
_FINISHED = (ScanStatus.completed, ScanStatus.failed, ScanStatus.cancelled)

ErrorMap = Sequence[tuple[type[ServiceError], Callable[[str], DefinedExecutionError]]]


@contextmanager
def _service_errors(mapping: ErrorMap) -> Iterator[None]:
    """Turn the service's refusals into this call's defined execution errors (first match);
    any other ServiceError stays undefined, with its message."""
    try:
        yield
    except ServiceError as exc:
        for kind, error in mapping:
            if isinstance(exc, kind):
                raise error(str(exc)) from exc
        raise


def well_call(result: WellResultPublic) -> WellCall:
    """A well result as the WellCall data type."""
    return WellCall(
        Well=result.well,
        Status=result.status.value,
        Call=result.label or "",
        Probability=NO_PROBABILITY if result.probability is None else result.probability,
        QcFlags=list(result.qc_flags),
        FieldsUsed=result.fields_used,
        ScanId=result.scan_id,
    )


def summarise(scan_status: str, wells_total: int, calls: Sequence[WellCall]) -> ScanSummary:
    """Counts by call of a finished scan's wells."""
    labels = Counter(c.Call for c in calls)
    statuses = Counter(c.Status for c in calls)
    return ScanSummary(
        Status=scan_status,
        WellsDone=len(calls),
        WellsTotal=wells_total,
        High=labels["high"],
        Low=labels["low"],
        Uncertain=labels["uncertain"],
        NoCall=labels["no call"],
        Excluded=statuses[WellStatus.excluded.value],
        Failed=statuses[WellStatus.failed.value],
    )


class ApiKeyAuthorization(AuthorizationServiceBase):
    """The SiLA core AuthorizationService: its AccessToken metadata carries an mscreen API key
    on every PlateScreening call (none while MSCREEN_AUTH_DISABLED)."""

    def __init__(self, parent_server: SilaServer, runtime: Runtime) -> None:
        super().__init__(parent_server=parent_server)
        self.runtime = runtime

    def get_calls_affected_by_AccessToken(  # noqa: N802 (sila2's name)
        self,
    ) -> list[Feature | Command | SilaProperty | FullyQualifiedIdentifier]:
        return [] if self.runtime.settings.auth_disabled else [PlateScreeningFeature]


class PlateScreening(FeatureImplementationBase):
    """The PlateScreening feature on ``runtime`` (method names and signatures are sila2's:
    one method per command and ``get_<Property>``; parameters arrive positionally, in the
    definition's order, so they keep Python names here)."""

    def __init__(
        self, parent_server: SilaServer, runtime: Runtime, *, poll_seconds: float = 0.2
    ) -> None:
        super().__init__(parent_server=parent_server)
        self.runtime = runtime
        self.poll_seconds = poll_seconds
        # Serialises "is the microscope free?" and queueing among this server's calls.
        self._start_lock = threading.Lock()
        self._stopping = threading.Event()

    def stop(self) -> None:
        # The server waits for its running commands before it stops: ScanPlate must let go.
        self._stopping.set()
        super().stop()

    # --- auth -------------------------------------------------------------------------------

    def _caller(
        self,
        metadata: MetadataDict,
        needed: Role,
        invalid: Callable[[str], DefinedExecutionError] = InvalidAccessToken,
    ) -> Principal:
        """The key's principal if its role is at least ``needed``; ``invalid`` for a key that is
        unknown or revoked, NotAuthorized for a role too low (REST's 401 and 403)."""
        if self.runtime.settings.auth_disabled:
            return ANONYMOUS
        secret = metadata[ACCESS_TOKEN]
        principal = self.runtime.key_cache.get(secret)
        if principal is None:
            with session_scope(self.runtime.session_factory) as session:
                principal = authenticate(session, secret)
            if principal is not None:
                self.runtime.key_cache.put(secret, principal)
        if principal is None:
            raise invalid("invalid or revoked API key")
        if not principal.allows(needed):
            raise NotAuthorized(
                f"this needs the {needed.value} role; key {principal.name!r} is "
                f"{principal.role.value}"
            )
        return principal

    # --- ScanPlate --------------------------------------------------------------------------

    def ScanPlate(  # noqa: N802 (sila2 calls the command's identifier)
        self,
        plate_barcode: str,
        well_names: list[str],
        objective: str,
        fields_per_well: int,
        *,
        metadata: MetadataDict,
        instance: ObservableCommandInstanceWithIntermediateResponses[
            ScanPlateIntermediateResponses
        ],
    ) -> ScanPlateResponses:
        """Queue the scan (as POST /api/v1/scans), then stream its wells until it finishes."""
        principal = self._caller(metadata, Role.operator, invalid=NotAuthorized)
        try:
            request = ScanCreate.model_validate(
                {
                    "plate_barcode": plate_barcode,
                    "objective": objective,
                    "fields_per_well": fields_per_well,
                    "wells": list(well_names) or None,
                }
            )
        except pydantic.ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
            )
            raise InvalidRequest(problems) from exc
        scan_id = self._queue(request, principal)
        logger.info("SiLA ScanPlate: scan %d of %s queued by %s", scan_id, plate_barcode, principal)
        return self._follow(scan_id, instance)

    def _queue(self, request: ScanCreate, principal: Principal) -> int:
        runtime = self.runtime
        errors: ErrorMap = [
            (UnavailableError, ModelNotLoaded),
            (InvalidRequestError, InvalidRequest),
            (ConflictError, InvalidRequest),  # a policy the model cannot serve, a plate type
        ]
        with self._start_lock, _service_errors(errors):
            classifier = runtime.require_model()
            with session_scope(runtime.session_factory) as session:
                busy = _active_scan(session, runtime.microscope_name)
                if busy is not None:
                    raise MicroscopeBusy(
                        f"scan {busy.id} of plate {busy.plate.barcode!r} is {busy.status.value} "
                        f"on microscope {runtime.microscope_name!r}; retry when it has finished"
                    )
                scan = scans.start_scan(
                    session,
                    request,
                    microscope=runtime.microscope_name,
                    requested_by=principal.name,
                    policy_defaults=scans.PolicyDefaults.of(runtime.settings),
                    classifier=classifier,
                )
                return scan.id

    def _follow(
        self,
        scan_id: int,
        instance: ObservableCommandInstanceWithIntermediateResponses[
            ScanPlateIntermediateResponses
        ],
    ) -> ScanPlateResponses:
        """Stream the scan's committed wells until it is finished; its summary, or the error
        it ended with."""
        instance.begin_execution()
        calls: list[WellCall] = []
        last_result_id = 0
        started = monotonic()
        while True:
            # One snapshot reads the status and the results in one transaction: once it says
            # finished, every result is in it.
            public, results = scans.snapshot(self.runtime.session_factory, scan_id, last_result_id)
            for result_id, result in results:
                last_result_id = result_id
                calls.append(well_call(result))
                instance.send_intermediate_response(
                    ScanPlateIntermediateResponses(
                        WellResult=calls[-1], WellsDone=len(calls), WellsTotal=public.wells_total
                    )
                )
            if results and public.wells_total:
                # (mypy misreads sila2's progress property, whose setter is defined apart)
                instance.progress = min(1.0, len(calls) / public.wells_total)  # type: ignore[misc]
                per_well = (monotonic() - started) / len(calls)
                left = max(0, public.wells_total - len(calls))
                instance.estimated_remaining_time = timedelta(seconds=per_well * left)
            if public.status in _FINISHED:
                break
            if self._stopping.wait(self.poll_seconds):
                raise RuntimeError(
                    f"the SiLA server stopped; scan {scan_id} goes on in the service "
                    "(read it with GetWellCalls)"
                )
        done = f"{len(calls)} of {public.wells_total} wells committed"
        if public.status == ScanStatus.cancelled:
            raise ScanCancelled(f"scan {scan_id} was cancelled; {done}")
        if public.status == ScanStatus.failed:
            raise ScanFailed(f"scan {scan_id} failed: {public.error}; {done}")
        return ScanPlateResponses(
            ScanId=scan_id, Summary=summarise(public.status.value, public.wells_total, calls)
        )

    # --- the other commands -----------------------------------------------------------------

    def CancelScan(  # noqa: N802
        self, scan_id: int, *, metadata: MetadataDict
    ) -> CancelScanResponses:
        """Cancel a queued or running scan (as POST /api/v1/scans/{id}/cancel)."""
        principal = self._caller(metadata, Role.operator)
        errors: ErrorMap = [(NotFoundError, NotFound), (ConflictError, ScanAlreadyFinished)]
        with _service_errors(errors), session_scope(self.runtime.session_factory) as session:
            scan = scans.cancel(session, scan_id, actor=principal.name)
            return CancelScanResponses(Status=scan.status.value, WellsDone=scan.wells_done)

    def GetWellCalls(  # noqa: N802
        self, plate_barcode: str, scan_id: int, *, metadata: MetadataDict
    ) -> GetWellCallsResponses:
        """The plate's calls (as GET /api/v1/plates/{barcode}/wells); ScanId 0: latest."""
        self._caller(metadata, Role.viewer)
        errors: ErrorMap = [(NotFoundError, NotFound), (InvalidRequestError, InvalidRequest)]
        with _service_errors(errors), session_scope(self.runtime.session_factory) as session:
            found = wells.plate_wells(session, plate_barcode, scan_id=scan_id or None)
            return GetWellCallsResponses(
                ScanId=found.scan.id,
                ScanStatus=found.scan.status.value,
                WellCalls=[well_call(w) for w in found.wells],
            )

    def GetWellCall(  # noqa: N802
        self, plate_barcode: str, well: str, *, metadata: MetadataDict
    ) -> GetWellCallResponses:
        """One well's call in the plate's latest scan (as GET .../wells/{well}); QcRejected when
        QC excluded every field, so that a scheduler cannot take a missing call for one."""
        self._caller(metadata, Role.viewer)
        errors: ErrorMap = [(NotFoundError, NotFound), (InvalidRequestError, InvalidRequest)]
        with _service_errors(errors), session_scope(self.runtime.session_factory) as session:
            result = wells.well_public(session, plate_barcode, well, None)
        if result.status == WellStatus.excluded:
            flags = ", ".join(result.qc_flags) or "no field passed QC"
            raise QcRejected(
                f"well {result.well} of scan {result.scan_id} has no call: QC excluded every "
                f"field ({flags}); re-image the well or confirm by flow cytometry"
            )
        return GetWellCallResponses(WellCall=well_call(result))

    def get_ActiveModel(self, *, metadata: MetadataDict) -> ActiveModel:  # noqa: N802
        """The serving model and its provider in use (as /api/v1/health's ``model``)."""
        self._caller(metadata, Role.viewer)
        with _service_errors([(UnavailableError, ModelNotLoaded)]):
            model = self.runtime.require_model().model
        name, version = self.runtime.serving or (model.name, int(model.version))
        return ActiveModel(Name=name, Version=version, Provider=model.provider)


def _active_scan(session: Session, microscope: str) -> Scan | None:
    """The oldest scan queued or running on ``microscope``, if any."""
    return session.scalar(
        select(Scan)
        .where(
            Scan.microscope == microscope,
            Scan.status.in_([ScanStatus.queued, ScanStatus.running]),
        )
        .order_by(Scan.id)
        .limit(1)
    )


def build_sila_server(
    runtime: Runtime, *, poll_seconds: float = 0.2, server_name: str = "mscreen"
) -> SilaServer:
    """A SiLA server (not started) serving PlateScreening and AuthorizationService on
    ``runtime``; its UUID is stable per data directory (a scheduler keeps recognising it)."""
    server = SilaServer(
        server_name=server_name,
        server_type=SERVER_TYPE,
        server_description="96-well MSC functionality screening from label-free phase-contrast "
        f"images; microscope {runtime.microscope_name!r}",
        server_version=SERVER_VERSION,
        server_vendor_url=SERVER_VENDOR_URL,
        server_uuid=_server_uuid(runtime.settings.data_dir),
    )
    server.set_feature_implementation(
        AuthorizationServiceFeature, ApiKeyAuthorization(server, runtime)
    )
    server.set_feature_implementation(
        PlateScreeningFeature, PlateScreening(server, runtime, poll_seconds=poll_seconds)
    )
    return server


def _server_uuid(data_dir: Path) -> str | None:
    """The UUID kept in ``<data_dir>/sila-server-uuid`` (written on first start); None (a new
    one each start) where the directory cannot be written."""
    path = Path(data_dir) / "sila-server-uuid"
    try:
        if path.exists():
            return str(uuid.UUID(path.read_text().strip()))
        path.parent.mkdir(parents=True, exist_ok=True)
        value = str(uuid.uuid4())
        path.write_text(value + "\n")
        return value
    except (OSError, ValueError) as exc:
        logger.warning("SiLA server UUID not kept (%s): a new one this start", exc)
        return None


@dataclass(frozen=True)
class SilaOptions:
    """Where and how the SiLA server listens.

    ``insecure``: plain gRPC (the SiLA specification requires TLS; tests and a closed lab
    network only). Otherwise TLS with ``cert_file`` and ``key_file`` (PEM), or without them a
    self-signed certificate whose CA is written to ``<data_dir>/sila-ca.pem`` for clients.
    ``discovery``: announce the server by mDNS (SiLA Server Discovery).
    """

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    insecure: bool = False
    discovery: bool = True
    cert_file: Path | None = None
    key_file: Path | None = None
    poll_seconds: float = 0.2


def start_sila_server(runtime: Runtime, options: SilaOptions = SilaOptions()) -> SilaServer:
    """Build the server on ``runtime`` and start it (returns at once; ``server.stop()``)."""
    server = build_sila_server(runtime, poll_seconds=options.poll_seconds)
    where = f"{options.host}:{options.port}"
    if options.insecure:
        server.start_insecure(options.host, options.port, enable_discovery=options.discovery)
        logger.warning("SiLA server on %s WITHOUT encryption (--insecure)", where)
        return server
    if (options.cert_file is None) != (options.key_file is None):
        _refuse("give both --cert and --key, or neither (a self-signed certificate)")
    tls: dict[str, Any] = {}
    if options.cert_file is not None and options.key_file is not None:
        tls = {
            "cert_chain": options.cert_file.read_bytes(),
            "private_key": options.key_file.read_bytes(),
        }
    elif not options.discovery:
        _refuse("a self-signed certificate needs discovery on; give --cert and --key")
    server.start(options.host, options.port, enable_discovery=options.discovery, **tls)
    if server.generated_ca is not None:
        ca_path = Path(runtime.settings.data_dir) / "sila-ca.pem"
        ca_path.parent.mkdir(parents=True, exist_ok=True)
        ca_path.write_bytes(server.generated_ca)
        logger.info("SiLA server self-signed CA written to %s", ca_path)
    logger.info("SiLA server on %s (TLS)", where)
    return server


def _refuse(message: str) -> NoReturn:
    raise InvalidRequestError(message)
