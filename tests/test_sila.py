"""The SiLA 2 server (issue 17) driven by sila2's own client, in-process, over plain gRPC.

The server runs on the service's runtime (SQLite, the simulated microscope, the bundled model)
with the scan worker held back until the client is listening, so that every intermediate
response is seen: SiLA's intermediate responses are live, and a simulated well takes
milliseconds.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import pytest

pytest.importorskip("sila2")

from sila2.client import SilaClient
from sila2.framework import DefinedExecutionError, FrameworkError
from sila2.server import SilaServer

from app import wells
from app.auth import create_key
from app.runtime import Runtime, build_runtime
from app.settings import Settings
from app.sila.feature import NO_PROBABILITY, PlateScreeningFeature
from app.sila.server import SilaOptions, start_sila_server
from store.db import session_scope
from store.orm import AuditEvent, Role, Scan, ScanStatus

# On this plate (simulation seed 0) C11's only field is overexposed: QC excludes the well
# (as tests/test_call_policy_api.py finds on the same plate).
BARCODE = "MSC-2026-0002"
WELLS = ["A1", "C11", "H9"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Sila:
    runtime: Runtime
    server: SilaServer
    client: Any  # SilaClient; its features are attributes made from the server's definitions
    keys: dict[str, str]

    def token(self, role: str) -> list[Any]:
        """The metadata that carries ``role``'s API key."""
        return [self.client.AuthorizationService.AccessToken(self.keys[role])]

    def scan_plate(self, role: str = "operator", wells: list[str] = WELLS) -> Any:
        return self.client.PlateScreening.ScanPlate(
            PlateBarcode=BARCODE,
            Wells=wells,
            Objective="40x",
            FieldsPerWell=1,
            metadata=self.token(role),
        )


@pytest.fixture
def sila(settings: Settings) -> Iterator[Sila]:
    """The SiLA server on a fresh runtime whose worker is NOT started (tests start it), one
    API key per role, and a client connected to it."""
    runtime = build_runtime(settings)
    with session_scope(runtime.session_factory) as session:
        keys = {role.value: create_key(session, f"test-{role.value}", role) for role in Role}
    keys["revoked"] = "msk_not-a-key"
    port = _free_port()
    server = start_sila_server(
        runtime,
        SilaOptions(port=port, insecure=True, discovery=False, poll_seconds=0.02),
    )
    client = SilaClient("127.0.0.1", port, insecure=True)
    try:
        yield Sila(runtime, server, client, keys)
    finally:
        client.close()
        server.stop(grace_period=1)
        runtime.close()


def _finished(instance: Any, timeout_s: float = 60.0) -> Any:
    """Wait until the command instance has finished; return it."""
    deadline = time.monotonic() + timeout_s
    while not instance.done:
        assert time.monotonic() < deadline, f"ScanPlate still {instance.status}"
        time.sleep(0.02)
    return instance


def _wait_for_subscriber(server: SilaServer, execution_uuid: UUID) -> None:
    """Until the server has registered the client's intermediate-response subscription.

    Reads sila2's private state (pinned < 0.15): its public API has no such signal, and
    without it the first wells could be committed before the subscription arrives."""
    servicer = server.feature_servicers["PlateScreening"]
    manager = servicer.observable_command_managers["ScanPlate"][execution_uuid]
    thread = manager.intermediate_response_subscription_thread
    deadline = time.monotonic() + 10
    streams = "_SubscriptionManagerThread__subscriber_streams"  # name-mangled private list
    while not getattr(thread, streams):
        assert time.monotonic() < deadline, "the subscription never reached the server"
        time.sleep(0.01)


def _queued_scan(runtime: Runtime, timeout_s: float = 10.0) -> Scan:
    """The scan a ScanPlate queued (it runs in the command's own thread)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with session_scope(runtime.session_factory) as session:
            scan = session.query(Scan).order_by(Scan.id.desc()).first()
            if scan is not None:
                session.expunge(scan)
                return scan
        time.sleep(0.02)
    raise AssertionError("ScanPlate queued no scan")


def _defined_error(excinfo: pytest.ExceptionInfo[BaseException]) -> str:
    assert isinstance(excinfo.value, DefinedExecutionError), repr(excinfo.value)
    return excinfo.value.identifier


def test_scan_plate_streams_one_response_per_well_then_a_summary(sila: Sila) -> None:
    instance = sila.scan_plate()
    subscription = instance.subscribe_to_intermediate_responses()
    _wait_for_subscriber(sila.server, instance.execution_uuid)
    sila.runtime.worker.start()

    streamed = list(subscription)  # ends when the command finishes
    responses = _finished(instance).get_responses()

    assert [r.WellsDone for r in streamed] == [1, 2, 3]
    assert {r.WellsTotal for r in streamed} == {3}
    assert sorted(r.WellResult.Well for r in streamed) == sorted(WELLS)
    scan_id = responses.ScanId
    assert {r.WellResult.ScanId for r in streamed} == {scan_id}
    assert instance.status.name == "finishedSuccessfully" and instance.progress == 1

    by_well = {r.WellResult.Well: r.WellResult for r in streamed}
    excluded = by_well["C11"]
    assert excluded.Status == "excluded" and excluded.Call == ""
    assert excluded.Probability == NO_PROBABILITY and "overexposed" in excluded.QcFlags
    for name in ("A1", "H9"):
        call = by_well[name]
        assert call.Status == "ok" and call.Call in ("high", "low") and call.FieldsUsed == 1
        assert 0.0 <= call.Probability <= 1.0

    summary = responses.Summary
    assert summary.Status == "completed"
    assert (summary.WellsDone, summary.WellsTotal, summary.Excluded, summary.Failed) == (3, 3, 1, 0)
    calls = [c.Call for c in by_well.values()]
    assert (summary.High, summary.Low) == (calls.count("high"), calls.count("low"))

    # The same scan and calls as REST reads them, requested and audited under the key's name.
    with session_scope(sila.runtime.session_factory) as session:
        rest = {w.well: w for w in wells.plate_wells(session, BARCODE).wells}
        scan = session.get_one(Scan, scan_id)
        assert scan.status == ScanStatus.completed and scan.requested_by == "test-operator"
        assert (
            session.query(AuditEvent)
            .filter_by(action="scan.create", actor="test-operator", target=f"scan:{scan_id}")
            .count()
            == 1
        )
    for name, call in by_well.items():
        assert call.Call == (rest[name].label or "")
        assert call.Probability == pytest.approx(rest[name].probability or NO_PROBABILITY)

    listed = sila.client.PlateScreening.GetWellCalls(
        PlateBarcode=BARCODE, ScanId=0, metadata=sila.token("viewer")
    )
    assert listed.ScanId == scan_id and listed.ScanStatus == "completed"
    assert {c.Well: c for c in listed.WellCalls} == by_well

    one = sila.client.PlateScreening.GetWellCall(
        PlateBarcode=BARCODE, Well="a1", metadata=sila.token("viewer")
    )
    assert one.WellCall == by_well["A1"]
    with pytest.raises(Exception) as excinfo:
        sila.client.PlateScreening.GetWellCall(
            PlateBarcode=BARCODE, Well="C11", metadata=sila.token("viewer")
        )
    assert _defined_error(excinfo) == "QcRejected"
    assert "overexposed" in str(excinfo.value)


def test_cancel_scan_and_a_busy_microscope(sila: Sila) -> None:
    first = sila.scan_plate()
    scan = _queued_scan(sila.runtime)  # queued; the worker is not running, so it waits

    second = _finished(sila.scan_plate(wells=["B2"]))
    with pytest.raises(Exception) as excinfo:
        second.get_responses()
    assert _defined_error(excinfo) == "MicroscopeBusy"
    assert f"scan {scan.id}" in str(excinfo.value)

    plate_screening = sila.client.PlateScreening
    with pytest.raises(Exception) as excinfo:
        plate_screening.CancelScan(ScanId=scan.id, metadata=sila.token("viewer"))
    assert _defined_error(excinfo) == "NotAuthorized"

    cancelled = plate_screening.CancelScan(ScanId=scan.id, metadata=sila.token("operator"))
    assert (cancelled.Status, cancelled.WellsDone) == ("cancelled", 0)
    with pytest.raises(Exception) as excinfo:
        _finished(first).get_responses()
    assert _defined_error(excinfo) == "ScanCancelled"

    with pytest.raises(Exception) as excinfo:
        plate_screening.CancelScan(ScanId=scan.id, metadata=sila.token("operator"))
    assert _defined_error(excinfo) == "ScanAlreadyFinished"
    with pytest.raises(Exception) as excinfo:
        plate_screening.CancelScan(ScanId=scan.id + 100, metadata=sila.token("operator"))
    assert _defined_error(excinfo) == "NotFound"
    with session_scope(sila.runtime.session_factory) as session:
        assert session.get_one(Scan, scan.id).status == ScanStatus.cancelled
        assert session.query(Scan).count() == 1  # the busy refusal queued nothing


def test_active_model_and_model_not_loaded(sila: Sila, monkeypatch: pytest.MonkeyPatch) -> None:
    model = sila.client.PlateScreening.ActiveModel.get(metadata=sila.token("viewer"))
    assert (model.Name, model.Version) == sila.runtime.serving
    assert model.Provider == "CPUExecutionProvider"

    # A degraded service (no model can serve): the property and ScanPlate say so.
    monkeypatch.setattr(sila.runtime.worker.context, "classifier", None)
    with pytest.raises(Exception) as excinfo:
        sila.client.PlateScreening.ActiveModel.get(metadata=sila.token("viewer"))
    assert _defined_error(excinfo) == "ModelNotLoaded"
    with pytest.raises(Exception) as excinfo:
        _finished(sila.scan_plate()).get_responses()
    assert _defined_error(excinfo) == "ModelNotLoaded"


def test_requests_the_service_refuses(sila: Sila) -> None:
    plate_screening = sila.client.PlateScreening
    with pytest.raises(Exception) as excinfo:
        _finished(sila.scan_plate(wells=["A1", "Z99"])).get_responses()
    assert _defined_error(excinfo) == "InvalidRequest"
    assert "Z99" in str(excinfo.value)
    with pytest.raises(Exception) as excinfo:
        plate_screening.GetWellCalls(
            PlateBarcode="NO-SUCH-PLATE", ScanId=0, metadata=sila.token("viewer")
        )
    assert _defined_error(excinfo) == "NotFound"
    # A value outside the definition's constraints never reaches the service.
    with pytest.raises(Exception) as excinfo:
        plate_screening.ScanPlate(
            PlateBarcode=BARCODE,
            Wells=[],
            Objective="20x",
            FieldsPerWell=1,
            metadata=sila.token("operator"),
        )
    assert "ValidationError" in type(excinfo.value).__name__


def test_same_keys_and_roles_as_rest(sila: Sila) -> None:
    plate_screening = sila.client.PlateScreening
    # No token at all: refused by the framework before the implementation runs.
    with pytest.raises(FrameworkError):
        plate_screening.ActiveModel.get()
    # A key that is not (or no longer) valid: the AuthorizationService's error.
    with pytest.raises(Exception) as excinfo:
        plate_screening.ActiveModel.get(metadata=sila.token("revoked"))
    assert _defined_error(excinfo) == "InvalidAccessToken"
    with pytest.raises(Exception) as excinfo:
        plate_screening.CancelScan(ScanId=1, metadata=sila.token("revoked"))
    assert _defined_error(excinfo) == "InvalidAccessToken"
    # ScanPlate: a viewer key, and an invalid one, are NotAuthorized; nothing is queued.
    for role in ("viewer", "revoked"):
        with pytest.raises(Exception) as excinfo:
            _finished(sila.scan_plate(role=role)).get_responses()
        assert _defined_error(excinfo) == "NotAuthorized", role
    with session_scope(sila.runtime.session_factory) as session:
        assert session.query(Scan).count() == 0
    # Discovery needs no key: the scheduler reads the feature definition first.
    implemented = sila.client.SiLAService.ImplementedFeatures.get()
    assert PlateScreeningFeature.fully_qualified_identifier in implemented


def test_serve_with_sila_shares_the_apps_runtime(settings: Settings) -> None:
    """`mscreen serve --sila`: the SiLA server starts and stops with the app, on its runtime."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from cli.sila import attach_sila, sila_options

    port = _free_port()
    app = attach_sila(create_app(settings), sila_options(port=port, insecure=True, discovery=False))
    with TestClient(app) as rest:
        runtime: Runtime = app.state.runtime
        with session_scope(runtime.session_factory) as session:
            key = create_key(session, "scheduler", Role.viewer)
        client: Any = SilaClient("127.0.0.1", port, insecure=True)  # features: dynamic
        try:
            token = [client.AuthorizationService.AccessToken(key)]
            model = client.PlateScreening.ActiveModel.get(metadata=token)
            health = rest.get("/api/v1/health").json()
            assert (model.Name, model.Version) == (
                health["model"]["name"],
                health["model"]["version"],
            )
        finally:
            client.close()
    with socket.socket() as s:  # the server stopped with the app: its port is free again
        s.bind(("127.0.0.1", port))


def test_run_sila_standalone_until_stopped(settings: Settings) -> None:
    """`mscreen sila`: its own runtime and worker, served until the stop event is set."""
    import threading

    from cli.sila import run_sila, sila_options

    port = _free_port()
    stop = threading.Event()
    thread = threading.Thread(
        target=run_sila,
        args=(settings, sila_options(port=port, insecure=True, discovery=False), stop),
    )
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                client = SilaClient("127.0.0.1", port, insecure=True)
                break
            except Exception:
                assert time.monotonic() < deadline, "the SiLA server did not come up"
                time.sleep(0.1)
        implemented = client.SiLAService.ImplementedFeatures.get()
        client.close()
        assert PlateScreeningFeature.fully_qualified_identifier in implemented
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
