"""Images written before their well's transaction (issue 16): a crash in between leaves an
orphan that is reconciled, never a result without its image; a worker that lost its lease
cannot clobber a committed image; a cancel still either drops the well or counts it."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from ome_zarr.io import parse_url
from ome_zarr.reader import Plate, Reader
from sqlalchemy import select
from typer.testing import CliRunner

import app.worker as worker_module
from app.runtime import Runtime, build_runtime
from app.scans import cancel_scan, create_scan
from app.schemas.scans import ScanCreate
from app.settings import Settings, get_settings
from app.worker import LeaseLostError, ScanWorker, reconcile_finished_scans
from hardware.microscope import WellAcquisition
from store.db import session_scope
from store.images import ImageStore
from store.orm import Image, Scan, ScanStatus, Well, WellResult, WellStatus

WELLS = ["A1", "A2", "A3", "A4"]


class _Crash(BaseException):
    """Stands for the process dying (not an Exception: nothing in the worker catches it)."""


@pytest.fixture
def runtime(settings: Settings):
    settings.microscope = "simulated"
    built = build_runtime(settings)
    try:
        yield built
    finally:
        built.close()


def _scan(runtime: Runtime, barcode: str, wells: list[str] = WELLS) -> int:
    with session_scope(runtime.session_factory) as session:
        return create_scan(
            session,
            ScanCreate(plate_barcode=barcode, wells=wells),
            microscope=runtime.microscope_name,
        ).id


def _crash_in_transaction_of_well(monkeypatch: pytest.MonkeyPatch, nth: int) -> None:
    """The process dies inside the ``nth`` well's transaction (0-based), its fields written."""
    original = worker_module._image_row
    calls = {"n": 0}

    def dying(*args, **kwargs):
        index, calls["n"] = calls["n"], calls["n"] + 1
        if index == nth:
            raise _Crash
        return original(*args, **kwargs)

    monkeypatch.setattr(worker_module, "_image_row", dying)


def _plate_node(plate: Path):
    """The plate node ome-zarr's reader makes of ``plate`` (what napari shows)."""
    nodes = list(Reader(parse_url(str(plate)))())
    (node,) = [n for n in nodes if any(isinstance(s, Plate) for s in n.specs)]
    return node


def _field_dirs(plate: Path) -> set[Path]:
    return {p for p in plate.glob("*/*/*") if p.is_dir()}


def _every_result_has_its_images(runtime: Runtime, scan_id: int) -> dict[str, list[Image]]:
    """Each well result's images: recorded, on disk, with the recorded checksum."""
    with session_scope(runtime.session_factory) as session:
        results = session.execute(
            select(Well.name, WellResult.status)
            .join(Well, WellResult.well_id == Well.id)
            .where(WellResult.scan_id == scan_id)
        ).all()
        images = session.execute(
            select(Well.name, Image)
            .join(Well, Image.well_id == Well.id)
            .where(Image.scan_id == scan_id)
        ).all()
        by_well: dict[str, list[Image]] = {}
        for name, image in images:
            session.expunge(image)
            by_well.setdefault(name, []).append(image)
    for name, status in results:
        if status == WellStatus.failed:  # an acquisition that failed has no image
            continue
        assert by_well.get(name), f"{name} has a result but no image"
        for image in by_well[name]:
            assert ImageStore.verify(image.path, image.sha256), f"{image.path} changed"
    assert set(by_well) <= {name for name, _ in results}, "an image without its result"
    return by_well


def _expire_lease(runtime: Runtime, scan_id: int) -> None:
    with session_scope(runtime.session_factory) as session:
        session.get_one(Scan, scan_id).lease_expires_at = datetime.now(UTC) - timedelta(seconds=1)


def test_a_crash_between_write_and_commit_leaves_an_orphan_that_is_reconciled(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    scan_id = _scan(runtime, "ORPHAN-1")
    plate = runtime.worker.context.image_store.plate_path("ORPHAN-1", scan_id)
    _crash_in_transaction_of_well(monkeypatch, nth=2)
    with pytest.raises(_Crash):
        runtime.worker.run_next()
    monkeypatch.undo()

    # A3's field is on disk (written before its transaction), but nothing recorded it.
    by_well = _every_result_has_its_images(runtime, scan_id)
    assert sorted(by_well) == ["A1", "A2"]
    orphan = plate / "A" / "3" / "0"
    assert (orphan / "zarr.json").is_file()
    # Not listed in the plate either: the plate lists committed wells only.
    node = _plate_node(plate)
    assert [w["path"] for w in node.specs[0].plate_data["wells"]] == ["A/1", "A/2"]

    # Another worker takes the dead one's scan over, writes A3 again under its own attempt
    # path and finishes; finishing reconciles the orphan away.
    _expire_lease(runtime, scan_id)
    successor = ScanWorker(runtime.worker.context)
    assert successor.run_next()
    with session_scope(runtime.session_factory) as session:
        assert session.get_one(Scan, scan_id).status == ScanStatus.completed
    by_well = _every_result_has_its_images(runtime, scan_id)
    assert sorted(by_well) == WELLS
    (redone,) = by_well["A3"]
    assert Path(redone.path).parent == orphan.parent and Path(redone.path).name.startswith("0t")
    assert not orphan.exists()
    recorded = {Path(i.path) for images in by_well.values() for i in images}
    assert _field_dirs(plate) == recorded  # nothing else left on disk
    # ome-zarr's reader still reads the plate: every well, each listing its recorded field.
    node = _plate_node(plate)
    assert [w["path"] for w in node.specs[0].plate_data["wells"]] == ["A/1", "A/2", "A/3", "A/4"]
    assert np.asarray(node.data[0]).shape[0] > 0
    well_meta = (plate / "A" / "3" / "zarr.json").read_text()
    assert Path(redone.path).name in well_meta and '"0"' not in well_meta


def test_orphans_of_a_cancelled_scan_are_reconciled_and_dry_run_changes_nothing(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    scan_id = _scan(runtime, "ORPHAN-2")
    plate = runtime.worker.context.image_store.plate_path("ORPHAN-2", scan_id)
    _crash_in_transaction_of_well(monkeypatch, nth=1)
    with pytest.raises(_Crash):
        runtime.worker.run_next()
    monkeypatch.undo()
    with session_scope(runtime.session_factory) as session:
        cancel_scan(session, session.get_one(Scan, scan_id))  # no worker is alive to notice
    orphan = plate / "A" / "2" / "0"
    assert orphan.is_dir()

    store = runtime.worker.context.image_store
    found = reconcile_finished_scans(runtime.session_factory, store, dry_run=True)
    assert found == {scan_id: [str(orphan)]}
    assert orphan.is_dir()  # a dry run removes nothing

    # A new worker's start reconciles recently finished scans of its microscope (before its
    # thread polls for work).
    restarted = ScanWorker(runtime.worker.context)
    restarted.start()
    restarted.stop()
    assert not orphan.exists() and not (plate / "A" / "2").exists()
    by_well = _every_result_has_its_images(runtime, scan_id)
    assert sorted(by_well) == ["A1"]
    assert reconcile_finished_scans(runtime.session_factory, store) == {}  # idempotent


def test_admin_reconcile_images_command(
    settings: Settings, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    import typer

    from cli.admin import admin_cli

    root = typer.Typer()  # as cli/main.py mounts it: `mscreen admin ...`
    root.add_typer(admin_cli, name="admin")

    scan_id = _scan(runtime, "ORPHAN-3", ["B1"])
    runtime.worker.run_next()
    field_dir = runtime.worker.context.image_store.plate_path("ORPHAN-3", scan_id) / "B" / "1"
    stray = field_dir / "1tdeadbeef"  # e.g. a stale worker's field that was never recorded
    stray.mkdir()
    (stray / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group"}')
    monkeypatch.setenv("MSCREEN_DATABASE_URL", settings.resolved_database_url)
    monkeypatch.setenv("MSCREEN_DATA_DIR", str(settings.data_dir))
    get_settings.cache_clear()
    try:
        cli = CliRunner()
        dry = cli.invoke(root, ["admin", "reconcile-images", "--dry-run"])
        assert dry.exit_code == 0, dry.output
        assert f"scan {scan_id}: orphan {stray}" in dry.output and stray.is_dir()
        done = cli.invoke(root, ["admin", "reconcile-images"])
        assert done.exit_code == 0, done.output
        assert "removed 1 orphan field(s) in 1 scan(s)" in done.output
    finally:
        get_settings.cache_clear()
    assert not stray.exists()
    _every_result_has_its_images(runtime, scan_id)


def _stale_acquisition(runtime: Runtime, scan_id: int, well: str):
    """What a stalled worker still holds for ``well``: an acquisition (other pixels than the
    successor's) and its call, ready to commit."""
    worker = runtime.worker
    with session_scope(runtime.session_factory) as session:
        scan = session.get_one(Scan, scan_id)
        plan = dataclasses.replace(worker._plan(scan), wells=[well])
        well_ids = {w.name: w.id for w in scan.plate.wells}
    acquisition: WellAcquisition = next(iter(worker.context.scanner.scan(plan)))
    for field in acquisition.fields:
        field.image = field.image ^ np.uint16(1)
    classifier = worker.context.classifier
    assert classifier is not None
    return plan, well_ids, acquisition, classifier.classify(acquisition.fields)


@pytest.mark.parametrize("stale_is_takeover", [False, True], ids=["first-claim", "takeover"])
def test_a_worker_that_lost_its_lease_cannot_clobber_a_committed_image(
    runtime: Runtime, stale_is_takeover: bool
) -> None:
    scan_id = _scan(runtime, "STALE-1", ["C1", "C2"])
    stale = runtime.worker
    if stale_is_takeover:  # the stale worker had itself taken the scan over from another
        assert ScanWorker(stale.context)._claim() == scan_id
        _expire_lease(runtime, scan_id)
    assert stale._claim() == scan_id
    plan, well_ids, acquisition, call = _stale_acquisition(runtime, scan_id, "C1")

    # The stale worker stalls past its lease; a successor takes over and completes the plate.
    _expire_lease(runtime, scan_id)
    successor = ScanWorker(stale.context)
    assert successor.run_next()
    committed = _every_result_has_its_images(runtime, scan_id)
    committed_paths = {Path(i.path) for images in committed.values() for i in images}

    # The stale worker wakes and commits C1: its files go to paths of its own, its commit is
    # refused, and what it wrote is removed. The committed image keeps its checksum.
    plate = stale.context.image_store.plate_path("STALE-1", scan_id)
    before = _field_dirs(plate)
    model = stale.context.model_version_id
    assert model is not None
    with pytest.raises(LeaseLostError):
        stale._commit_well(scan_id, plan, well_ids, acquisition, call, model)
    assert _field_dirs(plate) == before == committed_paths
    after = _every_result_has_its_images(runtime, scan_id)
    assert {i.sha256 for i in after["C1"]} == {i.sha256 for i in committed["C1"]}
    with session_scope(runtime.session_factory) as session:
        assert session.get_one(Scan, scan_id).wells_done == 2


def test_two_attempts_never_share_a_field_path(runtime: Runtime) -> None:
    """The scan's first claim writes plain paths; every takeover a token of its own."""
    scan_id = _scan(runtime, "PATHS-1", ["D1"])
    first = runtime.worker
    assert first._claim() == scan_id
    assert first._attempts[scan_id] is None
    tokens = set()
    for _ in range(3):
        _expire_lease(runtime, scan_id)
        other = ScanWorker(first.context)
        assert other._claim() == scan_id
        token = other._attempts[scan_id]
        assert token is not None and token not in tokens
        tokens.add(token)


def test_a_cancel_before_the_wells_commit_drops_it_and_removes_its_files(
    runtime: Runtime,
) -> None:
    scan_id = _scan(runtime, "CANCEL-3", ["E1", "E2"])
    worker = runtime.worker
    assert worker._claim() == scan_id
    plan, well_ids, first, first_call = _stale_acquisition(runtime, scan_id, "E1")
    model = worker.context.model_version_id
    assert model is not None
    committed = worker._commit_well(scan_id, plan, well_ids, first, first_call, model)
    assert committed is not None and committed[0] == 1
    worker._publish_well(scan_id, plan, "E1", committed[1])

    _, _, second, second_call = _stale_acquisition(runtime, scan_id, "E2")
    with session_scope(runtime.session_factory) as session:
        cancel_scan(session, session.get_one(Scan, scan_id))
        session.flush()
    assert worker._commit_well(scan_id, plan, well_ids, second, second_call, model) is None
    plate = worker.context.image_store.plate_path("CANCEL-3", scan_id)
    assert not (plate / "E" / "2").exists() or not any((plate / "E" / "2").iterdir())
    with session_scope(runtime.session_factory) as session:
        scan = session.get_one(Scan, scan_id)
        assert scan.status == ScanStatus.cancelled and scan.wells_done == 1
    assert sorted(_every_result_has_its_images(runtime, scan_id)) == ["E1"]
