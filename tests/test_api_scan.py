"""The walking path through the API: POST a scan, follow it, read 96 well results."""

import pytest
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Plate, Reader
from sqlalchemy import func, select

from hardware.plate import SBS_96
from store.images import ImageStore
from store.orm import Image, Scan, ScanStatus, WellResult, WellStatus
from tests.conftest import wait_for_scan

pytestmark = pytest.mark.slow


def test_scan_from_post_to_96_results_in_the_database(service):
    settings = service.runtime.settings
    client = service.client
    health = client.get("/api/v1/health")
    assert health.status_code == 200, health.text
    assert health.json()["model"]["provider"] == "CPUExecutionProvider"
    assert health.json()["microscope"] == "pycromanager-sim"
    assert health.json()["instrument"] == "simulated"

    response = client.post(
        "/api/v1/scans", json={"plate_barcode": "SIM-API-0001", "objective": "40x"}
    )
    assert response.status_code == 202, response.text
    location = response.headers["Location"]
    assert location == f"/api/v1/scans/{response.json()['id']}"
    assert response.json()["status"] == "queued"
    assert response.json()["wells_total"] == 96

    final = wait_for_scan(client, location)
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
                select(func.count()).select_from(WellResult).where(WellResult.scan_id == scan.id)
            )
            == 96
        )
        images = session.scalars(select(Image).where(Image.scan_id == scan.id)).all()
        assert len(images) == 96
        assert all(len(i.sha256) == 64 and i.objective == "40x" for i in images)
        # Images are fields of one OME-Zarr HCS plate per scan; a handful load and verify.
        plate_path = settings.resolved_image_dir / "SIM-API-0001" / f"scan-{scan.id}.ome.zarr"
        wells_by_id = {w.id: w.name for w in scan.plate.wells}
        for image in images[:: len(images) // 5]:
            well = wells_by_id[image.well_id]
            expected = plate_path / well[0] / well[1:] / str(image.field_index)
            assert image.path == str(expected)
            frame = ImageStore.load(image.path)
            assert frame.shape == (image.height, image.width)
            assert str(frame.dtype) == image.dtype
            assert ImageStore.verify(image.path, image.sha256)
            # Stage position = the well centre (1 field), recorded in the DB and in the
            # image's coordinate transform (frame centre at the stage position, um).
            assert (image.x_um, image.y_um) == pytest.approx(SBS_96.well_center_um(well))
            level = zarr.open_group(image.path, mode="r").attrs["ome"]["multiscales"][0]
            scale, translation = (
                {
                    t["type"]: t[t["type"]]
                    for t in level["datasets"][0]["coordinateTransformations"]
                }[k]
                for k in ("scale", "translation")
            )
            assert scale == pytest.approx([image.pixel_size_um] * 2)
            centre_y = translation[0] + scale[0] * (image.height - 1) / 2
            centre_x = translation[1] + scale[1] * (image.width - 1) / 2
            assert (centre_x, centre_y) == pytest.approx((image.x_um, image.y_um), abs=1e-3)
        (plate_node,) = [
            n
            for n in Reader(parse_url(str(plate_path)))()
            if any(isinstance(spec, Plate) for spec in n.specs)
        ]
        assert len(plate_node.specs[0].plate_data["wells"]) == 96
        statuses = set(
            session.scalars(select(WellResult.status).where(WellResult.scan_id == scan.id))
        )
        assert statuses <= {WellStatus.ok, WellStatus.excluded}


def test_bad_requests_name_the_problem(service):
    client = service.client
    bad_well = client.post("/api/v1/scans", json={"plate_barcode": "P1", "wells": ["A1", "Z9"]})
    assert bad_well.status_code == 422
    assert "Z9" in bad_well.text
    bad_objective = client.post("/api/v1/scans", json={"plate_barcode": "P1", "objective": "63x"})
    assert bad_objective.status_code == 422
    assert "objective" in bad_objective.text
    assert client.get("/api/v1/scans/999").status_code == 404
    assert client.get("/api/v1/plates/NOPE/wells").status_code == 404
    assert client.get("/openapi.json").json()["info"]["title"] == "mscreen"
