"""Importing existing plates: folders in every layout, written here (tifffile 12-bit TIFFs, cv2
PNGs, an OME-Zarr HCS plate from the image store), registered and classified with the bundled
model through the scan worker, and the API's folder and role checks."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from sqlalchemy import func, select
from typer.testing import CliRunner

from app.imports import (
    ImportContext,
    ImportLayoutError,
    NameParser,
    fail_abandoned_imports,
    outcome,
    pipeline_problem,
    plan_import,
    run_import,
)
from app.runtime import Runtime, build_runtime
from app.schemas.imports import ImportOptions
from app.settings import Settings, get_settings
from hardware.microscope import AcquiredField
from hardware.plate import SBS_96
from hardware.sim import SimulationConfig, render_field
from models.pipeline import PipelineConfig
from store.db import session_scope
from store.images import ImageStore, pixel_sha256
from store.orm import AuditEvent, Image, Scan, ScanStatus, Well, WellResult, WellStatus

SIM = SimulationConfig(camera_shape=(120, 164))  # small frames: fast to write and classify
WELLS = ("A1", "B7")
FIELDS = 2


def _frame(well: str, field: int, channels: int = 1) -> np.ndarray:
    """A simulated 12-bit phase-contrast field (uint16 < 4096): (H, W), or (H, W, C) whose
    extra channels are defocused copies (what a focal-offset channel looks like)."""
    x, y = SBS_96.well_center_um(well)
    frame = render_field(SIM, "IMPORT", well, x + 1500.0 * field, y, "40x")
    planes = [frame] + [
        cv2.GaussianBlur(frame, (0, 0), sigmaX=1.0 + c).astype(np.uint16)
        for c in range(1, channels)
    ]
    return frame if channels == 1 else np.stack(planes, axis=-1)


def _metaxpress(folder: Path, channels: int = 2) -> dict[tuple[str, int], np.ndarray]:
    """MetaXpress names, one 12-bit TIFF per wavelength (with MetaXpress's GUID suffix)."""
    frames = {}
    for well in WELLS:
        for field in range(FIELDS):
            stack = _frame(well, field, channels)
            frames[(well, field)] = stack
            for c in range(channels):
                plane = stack if channels == 1 else stack[:, :, c]
                name = f"Exp1_{well[0]}{int(well[1:]):02d}_s{field + 1}_w{c + 1}6A3F01B2.tif"
                tifffile.imwrite(folder / name, plane)
    return frames


def _operetta(folder: Path, planes: int = 1) -> dict[tuple[str, int], np.ndarray]:
    images = folder / "Images"
    images.mkdir(parents=True)
    frames = {}
    for well in WELLS:
        row, column = SBS_96.parse(well)
        for field in range(FIELDS):
            frames[(well, field)] = frame = _frame(well, field)
            for plane in range(planes):
                name = (
                    f"r{row + 1:02d}c{column + 1:02d}f{field + 1:02d}p{plane + 1:02d}-ch1sk1fk1fl1"
                )
                tifffile.imwrite(images / f"{name}.tiff", frame)
    (images / "Index.idx.xml").write_text("<EvaluationInputData/>")
    return frames


def _incucyte(folder: Path) -> dict[tuple[str, int], np.ndarray]:
    """Incucyte names, 8-bit PNGs written by OpenCV."""
    frames = {}
    for well in WELLS:
        for field in range(FIELDS):
            frames[(well, field)] = frame = (_frame(well, field) >> 4).astype(np.uint8)
            assert cv2.imwrite(
                str(folder / f"VID42_{well}_{field + 1}_2026y05m01d_10h00m.png"), frame
            )
    return frames


def _regex_stacks(folder: Path, channels: int = 3) -> dict[tuple[str, int], np.ndarray]:
    """One channel-first (CYX) OME-TIFF per field in a folder per well, 12 significant bits."""
    frames = {}
    for well in WELLS:
        (folder / well).mkdir()
        for field in range(FIELDS):
            frames[(well, field)] = stack = _frame(well, field, channels)
            tifffile.imwrite(
                folder / well / f"field{field + 1}.ome.tif",
                np.moveaxis(stack, -1, 0),
                ome=True,
                metadata={
                    "axes": "CYX",
                    "SignificantBits": 12,
                    "Channel": {"Name": [f"ch{c}" for c in range(channels)]},
                },
            )
    return frames


REGEX = r"(?P<well>[A-H]\d{1,2})/field(?P<field>\d+)\.ome\.tif$"


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    """The service's runtime (database, bundled model, image store), no microscope needed."""
    runtime = build_runtime(settings.model_copy(update={"microscope": "simulated"}))
    yield runtime
    runtime.close()


def _import(runtime: Runtime, folder: Path, **options: object) -> tuple[int, ImportOptions]:
    parsed = ImportOptions.model_validate(options)
    plan = plan_import(folder, parsed, geometry=SBS_96)
    return run_import(ImportContext.of(runtime), plan, requested_by="test"), parsed


def _check_registered(
    runtime: Runtime, scan_id: int, layout: str, frames: dict[tuple[str, int], np.ndarray]
) -> None:
    """The scan, its images (checksums of exactly the source pixels) and calls are stored as a
    microscope scan stores them."""
    with session_scope(runtime.session_factory) as session:
        scan = session.get_one(Scan, scan_id)
        assert scan.status == ScanStatus.completed, scan.error
        assert scan.microscope == f"import:{layout}"
        assert scan.wells_requested == list(WELLS) and scan.wells_done == len(WELLS)
        assert scan.fields_per_well == FIELDS and scan.model_version_id is not None
        images = session.execute(
            select(Image, Well.name)
            .join(Well, Image.well_id == Well.id)
            .where(Image.scan_id == scan_id)
        ).all()
        assert len(images) == len(frames)
        for image, well in images:
            assert image.sha256 == pixel_sha256(frames[(well, image.field_index)])
            assert ImageStore.verify(image.path, image.sha256)
        results = session.scalars(select(WellResult).where(WellResult.scan_id == scan_id)).all()
        assert len(results) == len(WELLS)
        for result in results:
            assert result.status == WellStatus.ok, (result.status, result.error, result.qc_flags)
            # The frames are 120 x 164 crops (fast to write): the serving model's guard finds
            # them unlike its 528 x 720 training frames, so a model with a guard makes no call.
            assert result.label in ("high", "low", "no call")
            assert 0.0 <= (result.probability or -1) <= 1.0
            assert result.fields_used == (0 if result.label == "no call" else FIELDS)


# -- name parsing ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("layout", "path", "expected"),
    [
        ("metaxpress", "Exp1_B07_s2_w1AB12CD.tif", ("B7", "2", "1", None)),
        ("metaxpress", "plate_1_H12.TIF", ("H12", None, None, None)),
        ("metaxpress", "TimePoint_1/ZStep_3/Exp_A01_w2.tif", ("A1", None, "2", "3")),
        ("operetta", "Images/r02c07f03p01-ch2sk1fk1fl1.tiff", ("B7", "3", "2", "1")),
        ("incucyte", "VID42_C3_4_2026y05m01d_10h00m.png", ("C3", "4", None, None)),
        ("incucyte", "C03_1.tif", ("C3", "1", None, None)),
    ],
)
def test_presets_parse_well_field_channel_plane(layout, path, expected):
    from pathlib import PurePosixPath

    name = NameParser(layout, SBS_96).parse(PurePosixPath(path))
    assert (name.well, name.field, name.channel, name.plane) == expected


def test_names_that_fit_no_well_are_listed_not_dropped(tmp_path):
    folder = tmp_path / "plate"
    folder.mkdir()
    _metaxpress(folder, channels=1)
    tifffile.imwrite(folder / "Exp1_A01_s1_w1_thumb6A3F.tif", _frame("A1", 0))  # a thumbnail
    tifffile.imwrite(folder / "Exp1_Q01_s1_w1.tif", _frame("A1", 0))  # no row Q on 96 wells
    tifffile.imwrite(folder / "overview.tif", _frame("A1", 0))
    (folder / "notes.txt").write_text("plate notes")
    plan = plan_import(folder, ImportOptions(layout="metaxpress"), geometry=SBS_96)
    unmatched = {u.path: u.reason for u in plan.unmatched}
    assert set(unmatched) == {"Exp1_A01_s1_w1_thumb6A3F.tif", "Exp1_Q01_s1_w1.tif", "overview.tif"}
    assert "outside this plate" in unmatched["Exp1_Q01_s1_w1.tif"]
    assert plan.other_files == ["notes.txt"]
    summary = plan.summary()
    assert [(w.well, w.fields) for w in summary.wells] == [("A1", 2), ("B7", 2)]
    assert summary.files == 4 and summary.channels == ["w1"]
    assert summary.bit_depth == 12 and summary.bit_depth_source == "data"


def test_duplicate_files_are_an_error_naming_them(tmp_path):
    folder = tmp_path / "plate"
    for timepoint in ("TimePoint_1", "TimePoint_2"):
        (folder / timepoint).mkdir(parents=True)
        tifffile.imwrite(folder / timepoint / "Exp_A01_s1_w1.tif", _frame("A1", 0))
    with pytest.raises(ImportLayoutError, match="A1 field 1 channel 1: TimePoint_1/Exp_A01"):
        plan_import(folder, ImportOptions(layout="metaxpress"), geometry=SBS_96)


def test_nothing_matching_and_a_pattern_without_well_are_errors(tmp_path):
    folder = tmp_path / "plate"
    folder.mkdir()
    tifffile.imwrite(folder / "image_1.tif", _frame("A1", 0))
    with pytest.raises(ImportLayoutError, match=r"no image file .* fits the operetta layout"):
        plan_import(folder, ImportOptions(layout="operetta"), geometry=SBS_96)
    regex = ImportOptions(layout="regex", pattern=r"image_(?P<field>\d)")
    with pytest.raises(ImportLayoutError, match="named group 'well'"):
        plan_import(folder, regex, geometry=SBS_96)
    with pytest.raises(ValueError, match="needs a pattern"):
        ImportOptions(layout="regex")
    with pytest.raises(ValueError, match="not a valid regular expression"):
        ImportOptions(layout="regex", pattern="(?P<well>[A-H")


def test_planes_become_channels_and_channels_are_chosen_by_position(tmp_path):
    folder = tmp_path / "operetta"
    _operetta(folder, planes=2)
    plan = plan_import(folder, ImportOptions(layout="operetta"), geometry=SBS_96)
    assert plan.channel_names == ["ch1 z1", "ch1 z2"] and plan.planes == ["z1", "z2"]
    assert plan.shape == (120, 164, 2)
    assert [u.path for u in plan.unmatched] == [] and plan.other_files == ["Images/Index.idx.xml"]
    second = plan_import(folder, ImportOptions(layout="operetta", channels=[1]), geometry=SBS_96)
    assert second.channel_names == ["ch1 z2"] and second.shape == (120, 164)
    with pytest.raises(ImportLayoutError, match=r"channels \[5\] do not exist.*0: ch1 z1"):
        plan_import(folder, ImportOptions(layout="operetta", channels=[5]), geometry=SBS_96)


def test_a_missing_channel_fails_only_its_well(tmp_path):
    folder = tmp_path / "plate"
    folder.mkdir()
    _metaxpress(folder, channels=2)
    (folder / "Exp1_B07_s2_w26A3F01B2.tif").unlink()
    plan = plan_import(folder, ImportOptions(layout="metaxpress"), geometry=SBS_96)
    assert plan.well("A1").problem is None
    assert plan.well("B7").problem == "field 2 has no file for w2"


def test_channel_first_ome_tiffs_keep_their_names_and_metadata_bit_depth(tmp_path):
    folder = tmp_path / "stacks"
    folder.mkdir()
    _regex_stacks(folder, channels=3)
    plan = plan_import(folder, ImportOptions(layout="regex", pattern=REGEX), geometry=SBS_96)
    assert plan.channel_names == ["ch0", "ch1", "ch2"] and plan.shape == (120, 164, 3)
    assert plan.bit_depth == 12 and plan.bit_depth_source == "metadata (ome:SignificantBits)"
    chosen = ImportOptions(layout="regex", pattern=REGEX, channels=[2, 0], bit_depth=14)
    plan = plan_import(folder, chosen, geometry=SBS_96)
    assert plan.channel_names == ["ch2", "ch0"] and plan.shape == (120, 164, 2)
    assert (plan.bit_depth, plan.bit_depth_source) == (14, "explicit")


def test_pipeline_problem_names_the_channel_count_the_model_takes():
    grey, two = np.zeros((8, 8), np.uint8), np.zeros((8, 8, 2), np.uint8)
    assert pipeline_problem(grey, False, PipelineConfig()) is None
    assert pipeline_problem(np.zeros((8, 8, 3), np.uint8), True, PipelineConfig()) is None
    assert "one grey channel; this field has 2" in (
        pipeline_problem(two, False, PipelineConfig()) or ""
    )
    channels = PipelineConfig(band_source="channels", channels=2)
    assert pipeline_problem(two, False, channels) is None
    assert "takes 2 channels" in (pipeline_problem(grey, False, channels) or "")


# -- registration and classification -----------------------------------------------------------
def test_metaxpress_12_bit_tiffs_are_registered_and_classified(runtime, tmp_path):
    folder = tmp_path / "Plate-MX-1"
    folder.mkdir()
    frames = _metaxpress(folder, channels=2)
    scan_id, _ = _import(runtime, folder, layout="metaxpress", channels=[0])
    _check_registered(runtime, scan_id, "metaxpress", {k: v[:, :, 0] for k, v in frames.items()})
    result = outcome(
        runtime.session_factory,
        plan_import(folder, ImportOptions(layout="metaxpress", channels=[0]), geometry=SBS_96),
        scan_id,
    )
    assert result.scan is not None and result.scan.plate_barcode == "Plate-MX-1"
    assert sum(result.calls.values()) == 2 and result.calls["failed"] == 0
    with session_scope(runtime.session_factory) as session:
        event = session.scalars(select(AuditEvent).where(AuditEvent.action == "scan.import")).one()
        assert event.target == f"scan:{scan_id}" and event.details["layout"] == "metaxpress"


def test_two_channels_for_a_one_channel_model_fail_each_well_clearly(runtime, tmp_path):
    folder = tmp_path / "plate"
    folder.mkdir()
    _metaxpress(folder, channels=2)
    scan_id, _ = _import(runtime, folder, layout="metaxpress", barcode="MX-2CH")
    with session_scope(runtime.session_factory) as session:
        scan = session.get_one(Scan, scan_id)
        assert scan.status == ScanStatus.completed  # the plate went on: each well failed alone
        results = session.scalars(select(WellResult).where(WellResult.scan_id == scan_id)).all()
        assert [r.status for r in results] == [WellStatus.failed] * 2
        assert all("takes one grey channel; this field has 2" in (r.error or "") for r in results)
        assert (
            session.scalar(select(func.count()).select_from(Image).where(Image.scan_id == scan_id))
            == 0
        )


@pytest.mark.parametrize("layout", ["operetta", "incucyte", "regex"])
def test_each_file_layout_is_registered_and_classified(runtime, tmp_path, layout):
    folder = tmp_path / f"plate-{layout}"
    folder.mkdir()
    options: dict[str, object] = {"layout": layout}
    if layout == "operetta":
        frames = _operetta(folder)
    elif layout == "incucyte":
        frames = _incucyte(folder)
    else:
        frames = {k: v[:, :, 1] for k, v in _regex_stacks(folder, channels=2).items()}
        options |= {"pattern": REGEX, "channels": [1]}
    scan_id, _ = _import(runtime, folder, **options)
    _check_registered(runtime, scan_id, layout, frames)


def test_an_ome_zarr_hcs_plate_is_imported_with_its_pixels(runtime, tmp_path):
    source = ImageStore(tmp_path / "elsewhere")
    frames = {}
    for well in WELLS:
        for field in range(FIELDS):
            frames[(well, field)] = frame = _frame(well, field)
            source.save(
                "ZARR-1",
                7,
                AcquiredField(well, field, frame, 0.0, 0.0, "40x", 0.5, datetime.now(UTC), 1.0, 12),
                fields_per_well=FIELDS,
            )
    folder = source.plate_path("ZARR-1", 7)
    plan = plan_import(folder, ImportOptions(layout="ome-zarr", bit_depth=12), geometry=SBS_96)
    assert plan.barcode == "ZARR-1" and plan.field_count == 4 and plan.shape == (120, 164)
    scan_id = run_import(ImportContext.of(runtime), plan, requested_by="test")
    _check_registered(runtime, scan_id, "ome-zarr", frames)


def test_a_failure_midway_leaves_the_scan_failed_not_completed(runtime, tmp_path, monkeypatch):
    folder = tmp_path / "plate"
    folder.mkdir()
    _metaxpress(folder, channels=1)
    saved: list[str] = []
    original = ImageStore.save

    def save_then_fail(self, barcode, scan_id, field, **kwargs):
        if field.well == "B7":
            raise OSError("disk full")
        saved.append(field.well)
        return original(self, barcode, scan_id, field, **kwargs)

    monkeypatch.setattr(ImageStore, "save", save_then_fail)
    scan_id, _ = _import(runtime, folder, layout="metaxpress")
    with session_scope(runtime.session_factory) as session:
        scan = session.get_one(Scan, scan_id)
        assert scan.status == ScanStatus.failed and "disk full" in (scan.error or "")
        assert scan.wells_done == 1 and scan.lease_owner is None
        wells = [
            r.well.name
            for r in session.scalars(select(WellResult).where(WellResult.scan_id == scan_id))
        ]
        assert wells == ["A1"]  # the well committed before the failure stays; B7 left nothing


def test_an_interrupted_import_is_marked_failed_by_the_next(runtime):
    with session_scope(runtime.session_factory) as session:
        from store import queries

        plate = queries.get_or_create_plate(session, "DEAD-1")
        scan = Scan(
            plate=plate,
            objective="40x",
            fields_per_well=1,
            wells_requested=["A1"],
            microscope="import:operetta",
            status=ScanStatus.running,
            lease_owner="gone",
        )
        session.add(scan)
        session.flush()
        scan_id = scan.id
    assert fail_abandoned_imports(runtime.session_factory, lease_seconds=30.0) == 1
    with session_scope(runtime.session_factory) as session:
        scan = session.get_one(Scan, scan_id)
        assert scan.status == ScanStatus.failed and "interrupted" in (scan.error or "")


# -- CLI ---------------------------------------------------------------------------------------
def test_cli_dry_run_then_import(tmp_path, monkeypatch):
    from cli.main import cli

    folder = tmp_path / "CLI-PLATE"
    folder.mkdir()
    _metaxpress(folder, channels=1)
    tifffile.imwrite(folder / "stray.tif", _frame("A1", 0))
    monkeypatch.setenv("MSCREEN_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        dry = runner.invoke(cli, ["import", str(folder), "--layout", "metaxpress", "--dry-run"])
        assert dry.exit_code == 0, dry.output
        assert "plate CLI-PLATE, 2 wells, 4 fields, 4 files" in dry.output
        assert "bit depth 12 (data)" in dry.output and "stray.tif" in dry.output
        assert "dry run: nothing was written" in dry.output
        assert not (tmp_path / "data" / "mscreen.db").exists()
        done = runner.invoke(cli, ["import", str(folder), "--layout", "metaxpress"])
        assert done.exit_code == 0, done.output
        assert "(import:metaxpress) completed" in done.output and "failed 0" in done.output
        results = runner.invoke(cli, ["results", "--plate", "CLI-PLATE", "--csv"])
        assert [line.split(",")[0] for line in results.output.splitlines()[1:]] == list(WELLS)
        # The 12 bits travel with the stored frames: display and retraining scale by them.
        (plate,) = (tmp_path / "data").rglob("scan-*.ome.zarr")
        well = WELLS[0]
        assert ImageStore.bit_depth(plate / well[0] / well[1:] / "0") == 12
    finally:
        get_settings.cache_clear()


@pytest.mark.slow
def test_cli_user_errors_are_one_line(tmp_path):
    folder = tmp_path / "plate"
    (folder / "t1").mkdir(parents=True)
    (folder / "t2").mkdir()
    for sub in ("t1", "t2"):
        tifffile.imwrite(folder / sub / "r01c01f01p01-ch1sk1fk1fl1.tiff", _frame("A1", 0))
    env = dict(os.environ, MSCREEN_DATA_DIR=str(tmp_path / "data"))
    run = subprocess.run(
        [sys.executable, "-m", "cli", "import", str(folder), "--layout", "operetta"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().startswith("error: 1 fields have more than one file")


# -- API ---------------------------------------------------------------------------------------
@pytest.fixture
def import_root(service, tmp_path) -> Path:
    root = tmp_path / "imports"
    root.mkdir()
    service.runtime.settings.import_root = root
    return root


def test_api_is_off_without_an_import_root(service):
    response = service.client.post("/api/v1/imports", json={"path": "x", "layout": "operetta"})
    assert response.status_code == 403  # a 4xx: the fuzzer counts any 5xx as a server error
    assert "imports over the API are off" in response.json()["detail"]
    assert "MSCREEN_IMPORT_ROOT" in response.json()["detail"]


def test_api_refuses_paths_out_of_the_root_and_other_roles(service, import_root, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    _operetta(outside)
    (import_root / "link").symlink_to(outside, target_is_directory=True)
    post = service.client.post
    for path, code, words in [
        ("/etc", 422, "must be relative"),
        ("C:\\plates", 422, "must be relative"),
        ("a/../../outside", 422, "'..'"),
        ("link", 403, "leads out of the import root"),
        ("missing", 404, "no folder 'missing'"),
    ]:
        response = post("/api/v1/imports", json={"path": path, "layout": "operetta"})
        assert response.status_code == code, (path, response.text)
        assert words in response.json()["detail"], response.text
    viewer = post(
        "/api/v1/imports",
        json={"path": "x", "layout": "operetta"},
        headers=service.headers("viewer"),
    )
    assert viewer.status_code == 403
    nokey = post(
        "/api/v1/imports", json={"path": "x", "layout": "operetta"}, headers={"X-API-Key": ""}
    )
    assert nokey.status_code == 401
    extra = post("/api/v1/imports", json={"path": "x", "layout": "operetta", "root": "/"})
    assert extra.status_code == 422


def test_api_links_to_files_outside_the_root_are_not_read(service, import_root, tmp_path):
    folder = import_root / "plate"
    _operetta(folder)
    secret = tmp_path / "secret.tif"
    tifffile.imwrite(secret, _frame("C3", 0))
    (folder / "Images" / "r03c03f01p01-ch1sk1fk1fl1.tiff").symlink_to(secret)
    response = service.client.post(
        "/api/v1/imports", json={"path": "plate", "layout": "operetta", "dry_run": True}
    )
    assert response.status_code == 200, response.text
    summary = response.json()["summary"]
    assert [w["well"] for w in summary["wells"]] == list(WELLS)
    assert summary["unmatched"] == [
        {
            "path": "Images/r03c03f01p01-ch1sk1fk1fl1.tiff",
            "reason": "a link leaving the import root",
        }
    ]


def test_api_dry_run_then_import(service, import_root):
    folder = import_root / "lab" / "API-PLATE"
    folder.mkdir(parents=True)
    _incucyte(folder)
    body = {"path": "lab/API-PLATE", "layout": "incucyte"}
    client = service.client
    dry = client.post("/api/v1/imports", json=body | {"dry_run": True})
    assert dry.status_code == 200, dry.text
    assert dry.json()["scan"] is None and dry.json()["summary"]["fields"] == 4
    assert dry.json()["summary"]["bit_depth"] == 8
    assert client.get("/api/v1/scans").json()["total"] == 0

    response = client.post("/api/v1/imports", json=body)
    assert response.status_code == 201, response.text
    scan = response.json()["scan"]
    assert response.headers["Location"] == f"/api/v1/scans/{scan['id']}"
    assert scan["status"] == "completed" and scan["microscope"] == "import:incucyte"
    assert scan["plate_barcode"] == "API-PLATE" and scan["wells_done"] == 2
    assert response.json()["calls"]["failed"] == 0
    wells = client.get("/api/v1/plates/API-PLATE/wells").json()["wells"]
    assert [w["well"] for w in wells] == list(WELLS)
    assert all(w["status"] == "ok" and len(w["images"]) == FIELDS for w in wells)
