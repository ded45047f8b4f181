"""Re-analysis through the real API (issue 16): a finished scan re-scored with another model
version, its calls kept beside the scan's own, selected per well query, compared paired, and
cancelled / resumed; on SQLite and PostgreSQL.

The scans run on the bundled hscnn-sim v2 (the default, newest version); the re-analyses use
the bundled v1, so the two versions' calls of the same stored fields can be compared.
"""

from __future__ import annotations

import csv
import io
import time

import numpy as np
import pytest
from sqlalchemy import func, select

from app.classifier import WellClassifier
from app.overlay import overlay_png
from app.rescore import load_frame, stored_fields
from hardware.microscope import AcquiredField
from hardware.sim import SimulationConfig, fct_export_csv
from models.inference import OnnxClassifier
from models.repository import BUNDLED_REPOSITORY
from store.db import session_scope
from store.orm import AnalysisResult, AuditEvent, Image, Scan, Well, WellResult
from tests.conftest import Service, wait_for_scan

pytestmark = pytest.mark.slow

BARCODE = "REAN-2026-0001"
WELLS = ["A1", "A2", "A3", "B1", "B8", "C2", "C11", "D4", "E5", "F6", "G7", "H9"]
V1 = {"model": "hscnn-sim", "version": 1}


def _scan(service: Service, wells: list[str] = WELLS, barcode: str = BARCODE) -> dict:
    response = service.client.post("/api/v1/scans", json={"plate_barcode": barcode, "wells": wells})
    assert response.status_code == 202, response.text
    scan = wait_for_scan(service.client, response.headers["Location"])
    assert scan["status"] == "completed", scan
    assert scan["model"] == {"name": "hscnn-sim", "version": 2}
    return scan


def _wait_for_analysis(service: Service, location: str, timeout_s: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        body = service.client.get(location).json()
        if body["status"] not in ("queued", "running"):
            return body
        assert time.monotonic() < deadline, f"analysis did not finish: {body}"
        time.sleep(0.05)


def _v1_serial(service: Service, scan_id: int) -> dict[str, float | None]:
    """v1's P(high) of each well by the serial per-well path, from the stored frames."""
    classifier = WellClassifier(
        OnnxClassifier(BUNDLED_REPOSITORY / "hscnn-sim" / "1" / "model.onnx", providers="cpu")
    )
    with session_scope(service.runtime.session_factory) as session:
        fields = stored_fields(session, scan_id)
    by_well: dict[str, list[AcquiredField]] = {}
    for f in fields:
        frame, bit_depth = load_frame(f)
        by_well.setdefault(f.well, []).append(
            AcquiredField(
                f.well,
                f.field_index,
                frame,
                0.0,
                0.0,
                "40x",
                1.0,
                None,
                0.0,
                bit_depth,  # type: ignore[arg-type]
            )
        )
    return {w: classifier.classify(fs).probability for w, fs in by_well.items()}


def test_reanalysis_side_by_side_paired_comparison_and_idempotence(service: Service) -> None:
    client = service.client
    scan = _scan(service)
    scan_id = scan["id"]
    own = client.get(f"/api/v1/plates/{BARCODE}/wells").json()

    response = client.post(f"/api/v1/scans/{scan_id}/analyses", json=V1)
    assert response.status_code == 202, response.text
    location = response.headers["Location"]
    assert location == f"/api/v1/scans/{scan_id}/analyses/{response.json()['id']}"
    analysis = _wait_for_analysis(service, location)
    assert analysis["status"] == "completed", analysis
    assert (analysis["wells_done"], analysis["wells_total"]) == (len(WELLS), len(WELLS))
    assert analysis["model"] == {"name": "hscnn-sim", "version": 1}
    assert analysis["decision_policy"]["requested"] == own["scan"]["decision_policy"]["requested"]
    assert analysis["fields_per_second"] > 0

    # Asking again is the same analysis (200, not a second one).
    again = client.post(f"/api/v1/scans/{scan_id}/analyses", json=V1)
    assert again.status_code == 200 and again.json()["id"] == analysis["id"]
    assert [a["id"] for a in client.get(f"/api/v1/scans/{scan_id}/analyses").json()] == [
        analysis["id"]
    ]

    # Side by side: the scan's own calls are unchanged; ?model= selects the re-analysis.
    assert client.get(f"/api/v1/plates/{BARCODE}/wells").json() == own
    assert client.get(f"/api/v1/plates/{BARCODE}/wells?model=hscnn-sim:2").json() == own
    rean = client.get(f"/api/v1/plates/{BARCODE}/wells?model=hscnn-sim:1").json()
    assert rean["analysis"]["id"] == analysis["id"]
    assert [w["well"] for w in rean["wells"]] == [w["well"] for w in own["wells"]]
    assert {w["model"]["version"] for w in rean["wells"]} == {1}
    assert {w["analysis_id"] for w in rean["wells"]} == {analysis["id"]}
    # The re-analysis's probabilities are v1's, exactly as the serial per-well path gives them.
    expected = _v1_serial(service, scan_id)
    for w in rean["wells"]:
        if expected[w["well"]] is None:
            assert w["probability"] is None
        else:
            assert w["probability"] == pytest.approx(expected[w["well"]], abs=1e-6)
    changed = [
        a["well"]
        for a, b in zip(own["wells"], rean["wells"], strict=True)
        if a["probability"] != b["probability"]
    ]
    assert changed, "two different networks gave the same probabilities on every well"

    one = client.get(f"/api/v1/plates/{BARCODE}/wells/A1?model=hscnn-sim:1").json()
    assert one["analysis_id"] == analysis["id"] and one["images"]  # the scan's stored fields
    assert one["probability"] == rean["wells"][0]["probability"]
    # The overlay follows the same selection: the map of the model that called the well (v2),
    # v1's with ?model=, never the serving model's by accident (checked again at the end).
    overlays = _expected_overlays(service, scan_id, "A1")
    overlay_url = f"/api/v1/plates/{BARCODE}/wells/A1/overlay"
    assert client.get(overlay_url).content == overlays[2]
    assert client.get(f"{overlay_url}?model=hscnn-sim:1").content == overlays[1]
    assert overlays[1] != overlays[2]
    missing = client.get(f"{overlay_url}?model=hscnn-sim:7")
    assert missing.status_code == 404 and "no analysis with hscnn-sim:7" in missing.text
    download = client.get(f"/api/v1/plates/{BARCODE}/wells?model=hscnn-sim:1&format=csv")
    assert f"{BARCODE}-scan{scan_id}-hscnn-sim-v1.csv" in download.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(download.text)))
    assert {r["model"] for r in rows} == {"hscnn-sim:v1"}
    confirm = client.get(f"/api/v1/plates/{BARCODE}/confirm?model=hscnn-sim:1").json()
    assert confirm["analysis_id"] == analysis["id"]
    assert confirm["counts"]["total"] == len(WELLS)

    # Paired comparison against FCT: the same wells, McNemar and DeLong.
    fct = fct_export_csv(SimulationConfig(seed=service.runtime.settings.simulation_seed), BARCODE)
    put = client.put(
        f"/api/v1/plates/{BARCODE}/fct", content=fct, headers={"Content-Type": "text/csv"}
    )
    assert put.status_code == 200, put.text
    comparison = client.get(f"/api/v1/plates/{BARCODE}/comparison?b=hscnn-sim:1").json()
    assert comparison["a"]["model"] == {"name": "hscnn-sim", "version": 2}
    assert comparison["b"]["model"] == {"name": "hscnn-sim", "version": 1}
    assert comparison["b"]["analysis_id"] == analysis["id"]
    paired = comparison["paired"]
    assert 0 < paired["wells"] <= len(WELLS)
    assert 0.0 <= paired["mcnemar"]["p_value"] <= 1.0
    assert "delong" in paired
    evaluation = client.get(f"/api/v1/plates/{BARCODE}/evaluation?model=hscnn-sim:1").json()
    assert evaluation["analysis_id"] == analysis["id"]
    assert 0 < evaluation["wells_called"] <= len(WELLS)
    pooled = client.get(f"/api/v1/evaluation?plates={BARCODE}&model=hscnn-sim:1").json()
    assert pooled["plates"] == [BARCODE]

    with session_scope(service.runtime.session_factory) as session:
        count = session.scalar(
            select(func.count(AnalysisResult.id)).where(
                AnalysisResult.analysis_id == analysis["id"]
            )
        )
        assert count == len(WELLS)
        actions = set(session.scalars(select(AuditEvent.action)))
        assert "analysis.create" in actions

    # With v1 serving now, the scan's overlay is still the map of v2, which called its wells.
    service.runtime.activate_model("hscnn-sim", 1)
    assert client.get(overlay_url).content == overlays[2]
    assert client.get(f"{overlay_url}?model=hscnn-sim:1").content == overlays[1]


def _expected_overlays(service: Service, scan_id: int, well: str) -> dict[int, bytes]:
    """The overlay PNG of ``well``'s first stored field by each bundled version, made here."""
    with session_scope(service.runtime.session_factory) as session:
        field = next(f for f in stored_fields(session, scan_id) if f.well == well)
    frame, bit_depth = load_frame(field)
    return {
        version: overlay_png(
            frame,
            WellClassifier(
                OnnxClassifier(
                    BUNDLED_REPOSITORY / "hscnn-sim" / str(version) / "model.onnx", providers="cpu"
                )
            ),
            bit_depth or service.runtime.bit_depth,
        )
        for version in (1, 2)
    }


def test_refusals_name_the_problem(service: Service) -> None:
    client = service.client
    scan_id = _scan(service, ["A1", "A2"])["id"]
    post = f"/api/v1/scans/{scan_id}/analyses"
    assert client.post(post, json={"model": "hscnn-sim", "version": 9}).status_code == 404
    assert client.post("/api/v1/scans/999999/analyses", json=V1).status_code == 404
    own = client.post(post, json={"model": "hscnn-sim", "version": 2})
    assert own.status_code == 409 and "itself" in own.json()["detail"]
    assert client.post(post, json={"model": "hscnn-sim", "version": "1"}).status_code == 422
    assert client.post(post, json={**V1, "alpha": 2}).status_code == 422
    viewer = client.post(post, json=V1, headers=service.headers("viewer"))
    assert viewer.status_code == 403
    # v1 has no decision set: a policy that needs one is a 409, as for a scan.
    youden = client.post(post, json={**V1, "threshold_policy": "youden"})
    assert youden.status_code == 409, youden.text

    missing = client.get(f"/api/v1/plates/{BARCODE}/wells?model=hscnn-sim:1")
    assert missing.status_code == 404
    assert f"/api/v1/scans/{scan_id}/analyses" in missing.json()["detail"]
    for bad in ("hscnn-sim", "hscnn-sim:0", "hscnn-sim:99999999999", "../x:1"):
        response = client.get(f"/api/v1/plates/{BARCODE}/wells", params={"model": bad})
        assert response.status_code == 422, (bad, response.text)

    # A scan that has not finished cannot be re-analysed yet.
    queued = client.post("/api/v1/scans", json={"plate_barcode": "REAN-QUEUED"}).json()
    early = client.post(f"/api/v1/scans/{queued['id']}/analyses", json=V1)
    assert early.status_code == 409 and "finished" in early.json()["detail"]
    client.post(f"/api/v1/scans/{queued['id']}/cancel")


def test_cancel_keeps_the_wells_done_and_asking_again_resumes(service: Service) -> None:
    client = service.client
    scan_id = _scan(service)["id"]
    runtime = service.runtime
    runtime.analyses.stop()  # the test drives the worker itself, one well at a time
    analysis = client.post(f"/api/v1/scans/{scan_id}/analyses", json=V1).json()
    worker = runtime.analyses
    cancelled_after = 4

    def cancel_midway(analysis_id: int, done: int, total: int) -> None:
        if done == cancelled_after:
            response = client.post(f"/api/v1/scans/{scan_id}/analyses/{analysis_id}/cancel")
            assert response.status_code == 200, response.text

    worker.on_progress = cancel_midway
    worker.run_one(analysis["id"])
    location = f"/api/v1/scans/{scan_id}/analyses/{analysis['id']}"
    state = client.get(location).json()
    assert state["status"] == "cancelled"
    assert state["wells_done"] == cancelled_after
    assert client.post(location + "/cancel").status_code == 409

    worker.on_progress = None
    resumed = client.post(f"/api/v1/scans/{scan_id}/analyses", json=V1)
    assert resumed.status_code == 202 and resumed.json()["status"] == "queued"
    outcome = worker.run_one(analysis["id"])
    assert outcome.wells == len(WELLS) - cancelled_after
    state = client.get(location).json()
    assert (state["status"], state["wells_done"]) == ("completed", len(WELLS))
    with session_scope(runtime.session_factory) as session:
        wells = session.scalars(
            select(AnalysisResult.well_id).where(AnalysisResult.analysis_id == analysis["id"])
        ).all()
        assert len(wells) == len(set(wells)) == len(WELLS)
        own = session.scalar(select(func.count(WellResult.id)).where(WellResult.scan_id == scan_id))
        assert own == len(WELLS)
        assert session.get_one(Scan, scan_id).status.value == "completed"


def test_a_field_that_no_longer_matches_its_checksum_fails_only_its_well(
    service: Service,
) -> None:
    client = service.client
    scan_id = _scan(service, ["A1", "A2", "A3"], barcode="REAN-CORRUPT")["id"]
    with session_scope(service.runtime.session_factory) as session:
        a2 = session.scalars(
            select(Image)
            .join(Well, Image.well_id == Well.id)
            .where(Image.scan_id == scan_id, Well.name == "A2")
        ).one()
        a2.sha256 = "0" * 64  # as if the stored pixels had changed since they were written
    response = client.post(f"/api/v1/scans/{scan_id}/analyses", json=V1)
    analysis = _wait_for_analysis(service, response.headers["Location"])
    assert analysis["status"] == "completed"
    wells = {
        w["well"]: w
        for w in client.get("/api/v1/plates/REAN-CORRUPT/wells?model=hscnn-sim:1").json()["wells"]
    }
    assert wells["A2"]["status"] == "failed" and "SHA-256" in wells["A2"]["error"]
    assert wells["A1"]["status"] == "ok" and wells["A3"]["status"] == "ok"
    assert np.isfinite(wells["A1"]["probability"])
