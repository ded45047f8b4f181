"""The walking path through the API: POST a scan, follow it, read 96 well results."""

import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.main import create_app
from app.orm import Image, Scan, ScanStatus, WellResult, WellStatus
from hardware.plate import SBS_96

pytestmark = pytest.mark.slow


def _wait_for(client: TestClient, location: str, timeout_s: float = 300.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = client.get(location).json()
        if body["status"] in ("completed", "failed", "cancelled"):
            return body
        time.sleep(0.2)
    raise AssertionError(f"scan did not finish in {timeout_s} s: {body}")


def test_scan_from_post_to_96_results_in_the_database(settings):
    with TestClient(create_app(settings)) as client:
        health = client.get("/api/v1/health")
        assert health.status_code == 200, health.text
        assert health.json()["model"]["provider"] == "CPUExecutionProvider"
        assert health.json()["microscope"] == "simulated"

        response = client.post(
            "/api/v1/scans", json={"plate_barcode": "SIM-API-0001", "objective": "40x"}
        )
        assert response.status_code == 202, response.text
        location = response.headers["Location"]
        assert location == f"/api/v1/scans/{response.json()['id']}"
        assert response.json()["status"] == "queued"
        assert response.json()["wells_total"] == 96

        final = _wait_for(client, location)
        assert final["status"] == "completed", final
        assert final["wells_done"] == 96 and final["progress"] == 1.0
        assert final["model"]["name"] == settings.model_name

        plate = client.get("/api/v1/plates/SIM-API-0001/wells").json()
        wells = plate["wells"]
        assert [w["well"] for w in wells] == list(SBS_96.well_names)
        called = [w for w in wells if w["status"] == "ok"]
        assert called, "no well was called"
        for w in called:
            assert w["label"] in ("high", "low")
            assert 0.0 <= w["probability"] <= 1.0
            assert (w["label"] == "high") == (w["probability"] >= 0.5)
            assert w["fields_used"] == 1
        for w in wells:
            if w["status"] == "excluded":
                assert w["label"] is None and "overexposed" in w["qc_flags"]

        runtime = client.app.state.runtime
        with runtime.session_factory() as session:
            scan = session.get_one(Scan, final["id"])
            assert scan.status == ScanStatus.completed
            assert (
                session.scalar(
                    select(func.count())
                    .select_from(WellResult)
                    .where(WellResult.scan_id == scan.id)
                )
                == 96
            )
            images = session.scalars(select(Image).where(Image.scan_id == scan.id)).all()
            assert len(images) == 96
            assert all(len(i.sha256) == 64 and i.objective == "40x" for i in images)
            statuses = set(
                session.scalars(select(WellResult.status).where(WellResult.scan_id == scan.id))
            )
            assert statuses <= {WellStatus.ok, WellStatus.excluded}


def test_bad_requests_name_the_problem(settings):
    settings.worker_enabled = False
    with TestClient(create_app(settings)) as client:
        bad_well = client.post("/api/v1/scans", json={"plate_barcode": "P1", "wells": ["A1", "Z9"]})
        assert bad_well.status_code == 422
        assert "Z9" in bad_well.text
        bad_objective = client.post(
            "/api/v1/scans", json={"plate_barcode": "P1", "objective": "63x"}
        )
        assert bad_objective.status_code == 422
        assert "objective" in bad_objective.text
        assert client.get("/api/v1/scans/999").status_code == 404
        assert client.get("/api/v1/plates/NOPE/wells").status_code == 404
        assert client.get("/openapi.json").json()["info"]["title"] == "mscreen"
