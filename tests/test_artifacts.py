"""Bad artifacts and expensive reads are refusals with a reason, never 500s or a dead service:
model names and paths kept inside the repository, broken model versions reported, a degraded
start when the serving model cannot load, stored images checked against their SHA-256, and
evaluation capped and cached."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app import evaluation
from app.auth import create_key
from app.main import create_app
from models.repository import (
    BUNDLED_REPOSITORY,
    InvalidModelNameError,
    ModelNotFoundError,
    ModelRepository,
)
from store.db import session_scope
from store.orm import AuditEvent, FctMeasurement, Image, Role, Scan, ScanStatus
from tests.conftest import copy_bundled_v1, wait_for_scan

GOOD = BUNDLED_REPOSITORY / "hscnn-sim" / "1"


def _repository(root: Path, versions: int = 1) -> Path:
    """A model repository with ``versions`` copies of the bundled model."""
    copy_bundled_v1(root)
    for version in range(2, versions + 1):
        shutil.copytree(root / "hscnn-sim" / "1", root / "hscnn-sim" / str(version))
    return root


def _random_onnx(root: Path, version: int) -> None:
    (root / "hscnn-sim" / str(version) / "model.onnx").write_bytes(os.urandom(4096))


def _admin(client: TestClient) -> dict[str, str]:
    """An admin key's headers, also the client's default (wait_for_scan sends no headers)."""
    with session_scope(client.app.state.runtime.session_factory) as session:
        headers = {"X-API-Key": create_key(session, f"admin-{os.urandom(3).hex()}", Role.admin)}
    client.headers.update(headers)
    return headers


# -- the repository --------------------------------------------------------------------------
def test_repository_keeps_names_and_paths_inside_its_root(tmp_path):
    root = _repository(tmp_path / "repo", versions=2)
    outside = tmp_path / "elsewhere"
    shutil.copytree(GOOD, outside / "1")
    (root / "linked-out").symlink_to(outside, target_is_directory=True)
    (root / "hscnn-sim" / "3").mkdir()
    (root / "hscnn-sim" / "3" / "model.onnx").symlink_to(outside / "1" / "model.onnx")
    shutil.copy(GOOD / "model_card.json", root / "hscnn-sim" / "3")
    repository = ModelRepository(root)

    assert repository.names() == ["hscnn-sim"]  # the link to a folder outside is not a model
    assert repository.versions("hscnn-sim") == [1, 2]  # nor a version whose network links out
    assert repository.versions("linked-out") == []
    for name in ("..", "../elsewhere", "/etc", "a/b", "a" * 300, "", ".hidden"):
        with pytest.raises(InvalidModelNameError) as refused:
            repository.get(name, 1)
        assert str(tmp_path) not in str(refused.value)
    with pytest.raises(ModelNotFoundError) as missing:
        repository.get("hscnn-sim", 9)
    assert str(root) not in str(missing.value) and "[1, 2]" in str(missing.value)

    assert repository.problem(repository.get("hscnn-sim", 1)) is None
    (root / "hscnn-sim" / "2" / "model_card.json").write_text("{not json")
    card_problem = repository.problem(repository.get("hscnn-sim", 2))
    assert card_problem is not None and "model_card.json" in card_problem
    shutil.copy(GOOD / "model_card.json", root / "hscnn-sim" / "2")
    assert repository.problem(repository.get("hscnn-sim", 2)) is None  # re-checked on change
    _random_onnx(root, 2)
    onnx_problem = repository.problem(repository.get("hscnn-sim", 2))
    assert onnx_problem is not None and "cannot be loaded" in onnx_problem
    assert str(tmp_path) not in onnx_problem


# -- listing and activation ------------------------------------------------------------------
def test_broken_versions_are_listed_and_refused_not_500(tmp_path, settings):
    root = _repository(tmp_path / "repo", versions=4)
    _random_onnx(root, 2)
    (root / "hscnn-sim" / "3" / "model_card.json").write_text("{not json")
    settings.model_repository = root
    settings.model_version = 1
    with TestClient(create_app(settings)) as client:
        headers = _admin(client)
        listed = client.get("/api/v1/models", headers=headers)
        assert listed.status_code == 200, listed.text
        by_version = {m["version"]: m for m in listed.json()}
        assert [by_version[v]["valid"] for v in (1, 2, 3, 4)] == [True, False, False, True]
        assert "cannot be loaded" in by_version[2]["problem"]
        assert "model_card.json" in by_version[3]["problem"] and by_version[3]["card"] == {}
        assert by_version[1]["problem"] is None and by_version[1]["active"]

        for version, why in ((2, "cannot be loaded"), (3, "model_card.json")):
            refused = client.post(f"/api/v1/models/hscnn-sim/{version}/activate", headers=headers)
            assert refused.status_code == 409, refused.text
            assert why in refused.json()["detail"] and str(tmp_path) not in refused.text
        for name in ("%2E%2E", "a" * 300, "-x"):
            bad = client.post(f"/api/v1/models/{name}/1/activate", headers=headers)
            assert bad.status_code == 422, (name, bad.text)
        assert (
            client.post("/api/v1/models/hscnn-sim/0/activate", headers=headers).status_code == 422
        )
        assert client.get("/api/v1/health").json()["model"]["version"] == 1  # still serving v1

        activated = client.post(
            "/api/v1/models/hscnn-sim/4/activate?reason=validated%20on%20plate%20P7",
            headers=headers,
        )
        assert activated.status_code == 200, activated.text
        health = client.get("/api/v1/health").json()
        assert health["model"]["version"] == 4 and health["problems"] == []
        with session_scope(client.app.state.runtime.session_factory) as session:
            event = session.scalars(
                select(AuditEvent).where(AuditEvent.action == "model.activate")
            ).one()
            assert event.reason == "validated on plate P7"
            assert event.details["before"] == {"name": "hscnn-sim", "version": 1}
            assert event.details["after"] == {"name": "hscnn-sim", "version": 4}


# -- degraded start --------------------------------------------------------------------------
def test_an_unloadable_active_model_starts_the_service_degraded(tmp_path, settings):
    root = _repository(tmp_path / "repo", versions=2)
    settings.model_repository = root
    settings.model_version = None  # serve the active version (v2, the newest, at first start)
    with TestClient(create_app(settings)) as client:
        _admin(client)
        scan = client.post("/api/v1/scans", json={"plate_barcode": "DEG-1", "wells": ["A1"]})
        assert wait_for_scan(client, scan.headers["Location"])["status"] == "completed"
    _random_onnx(root, 2)  # the active model is damaged while the service is down

    with TestClient(create_app(settings)) as client:  # starts instead of failing
        headers = _admin(client)
        health = client.get("/api/v1/health")
        assert health.status_code == 503, health.text
        body = health.json()
        assert body["status"] == "degraded" and body["model"]["version"] is None
        assert any("hscnn-sim v2" in p and "cannot be loaded" in p for p in body["problems"])
        assert str(tmp_path) not in health.text
        # Reading results still works; the model listing says what is wrong.
        wells = client.get("/api/v1/plates/DEG-1/wells", headers=headers)
        assert wells.status_code == 200 and wells.json()["wells"][0]["well"] == "A1"
        assert client.get("/api/v1/plates/DEG-1/wells/A1/image", headers=headers).status_code == 200
        overlay = client.get("/api/v1/plates/DEG-1/wells/A1/overlay", headers=headers)
        assert overlay.status_code == 503 and "activate" in overlay.json()["detail"]
        listed = {m["version"]: m for m in client.get("/api/v1/models", headers=headers).json()}
        assert listed[2]["active"] and not listed[2]["valid"]
        # A scan queued now (or left queued) waits; the worker claims nothing without a model.
        queued_id = _queue_scan(client, "DEG-2")
        client.app.state.runtime.worker.run_pending()
        assert _scan_status(client, queued_id) == ScanStatus.queued

        activated = client.post("/api/v1/models/hscnn-sim/1/activate", headers=headers)
        assert activated.status_code == 200, activated.text
        recovered = client.get("/api/v1/health")
        assert recovered.status_code == 200 and recovered.json()["model"]["version"] == 1
        finished = wait_for_scan(client, f"/api/v1/scans/{queued_id}")
        assert finished["status"] == "completed", finished


def test_scans_are_refused_while_degraded(tmp_path, settings):
    root = _repository(tmp_path / "repo")
    _random_onnx(root, 1)
    settings.model_repository = root
    with TestClient(create_app(settings)) as client:
        refused = client.post(
            "/api/v1/scans",
            json={"plate_barcode": "DEG-3", "wells": ["A1"]},
            headers={"X-API-Key": _key(client, Role.operator)},
        )
        assert refused.status_code == 503 and "activate" in refused.json()["detail"]


@pytest.mark.parametrize("damage", ["random_bytes", "missing_version", "bad_name"])
def test_a_bad_configured_default_model_also_starts_degraded(tmp_path, settings, damage):
    root = _repository(tmp_path / "repo")
    settings.model_repository = root
    if damage == "random_bytes":
        _random_onnx(root, 1)
    elif damage == "missing_version":
        settings.model_version = 5
    else:
        settings.model_name = "../hscnn-sim"
    with TestClient(create_app(settings)) as client:
        health = client.get("/api/v1/health")
        assert health.status_code == 503 and health.json()["status"] == "degraded"
        assert health.json()["problems"] and str(tmp_path) not in health.text


def test_health_names_the_backend_and_the_instrument(service):
    health = service.client.get("/api/v1/health")
    assert health.status_code == 200
    body = health.json()
    assert body["microscope"] == "pycromanager-sim" and body["instrument"] == "simulated"
    newest = ModelRepository(BUNDLED_REPOSITORY).get("hscnn-sim").version  # served by default
    assert body["model"]["version"] == newest and body["model"]["name"] == "hscnn-sim"
    assert body["problems"] == [] and body["status"] == "ok"


def _key(client: TestClient, role: Role) -> str:
    with session_scope(client.app.state.runtime.session_factory) as session:
        return create_key(session, f"{role.value}-{os.urandom(3).hex()}", role)


def _queue_scan(client: TestClient, barcode: str) -> int:
    """A queued scan, written as the service would (the route may refuse while degraded)."""
    from app.scans import create_scan
    from app.schemas.scans import ScanCreate

    runtime = client.app.state.runtime
    with session_scope(runtime.session_factory) as session:
        scan = create_scan(
            session,
            ScanCreate(plate_barcode=barcode, wells=["A1"]),
            microscope=runtime.microscope_name,
        )
        return scan.id


def _scan_status(client: TestClient, scan_id: int) -> ScanStatus:
    with session_scope(client.app.state.runtime.session_factory) as session:
        return session.get_one(Scan, scan_id).status


# -- stored images ---------------------------------------------------------------------------
def _scanned_field(service, barcode: str) -> Path:
    scan = service.client.post("/api/v1/scans", json={"plate_barcode": barcode, "wells": ["B7"]})
    assert scan.status_code == 202, scan.text
    assert wait_for_scan(service.client, scan.headers["Location"])["status"] == "completed"
    with session_scope(service.runtime.session_factory) as session:
        return Path(session.scalars(select(Image.path)).one())


@pytest.mark.parametrize(
    "damage", ["delete_chunk", "garble_chunk", "garble_group_json", "garble_array_json"]
)
def test_a_damaged_stored_image_is_409_image_corrupt(service, damage):
    field = _scanned_field(service, "IMG-1")
    url = "/api/v1/plates/IMG-1/wells/B7/image"
    assert service.client.get(url).status_code == 200
    chunk = next(p for p in (field / "s0").rglob("*") if p.is_file() and p.name != "zarr.json")
    if damage == "delete_chunk":  # zarr would read it back as a black frame
        chunk.unlink()
    elif damage == "garble_chunk":
        chunk.write_bytes(b"not zstd at all")
    elif damage == "garble_group_json":
        (field / "zarr.json").write_text("{oops")
    else:
        (field / "s0" / "zarr.json").write_text("[]")
    for kind in ("image", "overlay"):
        response = service.client.get(f"/api/v1/plates/IMG-1/wells/B7/{kind}")
        assert response.status_code == 409, (kind, response.status_code, response.text[:200])
        detail = response.json()["detail"]
        assert detail.startswith("image corrupt") and "B7 field 0" in detail
        assert str(field.parent) not in detail and "zarr" not in detail


def test_a_missing_stored_image_is_410_without_a_path(service):
    field = _scanned_field(service, "IMG-2")
    shutil.rmtree(field)
    response = service.client.get("/api/v1/plates/IMG-2/wells/B7/image")
    assert response.status_code == 410
    assert "B7" in response.json()["detail"] and str(field.parent) not in response.text


# -- evaluation ------------------------------------------------------------------------------
def test_evaluation_is_capped_validated_and_cached_until_its_data_changes(service):
    client = service.client
    wells = ["A1", "A2", "B3", "C4", "D5", "E6"]
    scan = client.post("/api/v1/scans", json={"plate_barcode": "EV-1", "wells": wells})
    assert wait_for_scan(client, scan.headers["Location"])["status"] == "completed"
    fct = "well,cd73_pct,cd90_pct\n" + "".join(
        f"{w},{99 if i % 2 else 80},98\n" for i, w in enumerate(wells)
    )
    uploaded = client.put(
        "/api/v1/plates/EV-1/fct", content=fct, headers={"Content-Type": "text/csv"}
    )
    assert uploaded.status_code == 200, uploaded.text

    assert client.get("/api/v1/plates/EV-1/evaluation?resamples=20000").status_code == 422
    assert client.get("/api/v1/evaluation?plates=EV-1&resamples=20000").status_code == 422
    assert client.get("/api/v1/plates/EV-1/evaluation?scan_id=0").status_code == 422
    bad = client.get("/api/v1/evaluation?plates=EV-1,../etc")
    assert bad.status_code == 422 and "../etc" in bad.json()["detail"]
    many = ",".join(f"P{i}" for i in range(201))
    assert client.get(f"/api/v1/evaluation?plates={many}").status_code == 422

    evaluation._reports.clear()
    hits, misses = evaluation._reports.hits, evaluation._reports.misses
    first = client.get("/api/v1/plates/EV-1/evaluation?resamples=200")
    again = client.get("/api/v1/plates/EV-1/evaluation?resamples=200")
    assert first.status_code == again.status_code == 200 and first.json() == again.json()
    assert (evaluation._reports.hits - hits, evaluation._reports.misses - misses) == (1, 1)

    # Any change to what is evaluated (here an FCT label edited in place) is a new answer.
    with session_scope(service.runtime.session_factory) as session:
        measurement = session.scalars(select(FctMeasurement)).first()
        measurement.label = "low" if measurement.label == "high" else "high"
    changed = client.get("/api/v1/plates/EV-1/evaluation?resamples=200")
    assert evaluation._reports.misses - misses == 2
    assert changed.json()["model"]["metrics"] != first.json()["model"]["metrics"]


def test_the_report_cache_is_bounded_and_computes_once():
    import threading

    cache = evaluation._ReportCache(size=2)
    calls = []
    gate = threading.Event()

    def slow() -> dict:
        calls.append(1)
        gate.wait(5)
        return {"value": 1}

    threads = [threading.Thread(target=cache.get, args=("k", slow)) for _ in range(4)]
    for thread in threads:
        thread.start()
    gate.set()
    for thread in threads:
        thread.join(5)
    assert len(calls) == 1  # four identical requests, one computation
    for key in ("a", "b", "c"):
        cache.get(key, lambda: {"value": 2})
    assert list(cache._items) == ["b", "c"]
