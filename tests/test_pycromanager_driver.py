"""The simulator as Micro-Manager devices on UniMMCore, and pycromanager's own acquisition engine
running on them in-process (hardware.sim.mm_devices, hardware.pycromanager.engine,
hardware.pycromanager)."""

from __future__ import annotations

import ast
import inspect
import logging
import threading
import time

import numpy as np
import pytest

pytest.importorskip("pymmcore_plus")
pytest.importorskip("pycromanager")

from pycromanager.acquisition.acq_eng_py.internal import engine as pycromanager_engine
from pycromanager.acquisition.acq_eng_py.main import acq_eng_metadata
from pycromanager.acquisition.acq_eng_py.main.AcqEngPy_Acquisition import (
    Acquisition as EngineAcquisition,
)

from hardware.microscope import HardwareError, PlateScanner, ScanPlan
from hardware.pycromanager import (
    FrameLost,
    PycromanagerCoreAdapter,
    PycromanagerScanner,
    PycromanagerSettings,
    camel_to_snake,
    in_process_engine,
    plan_events,
    plan_sites,
)
from hardware.sim import (
    SimulatedMicroscope,
    SimulationConfig,
    mm_devices,
    pixel_size_um,
    render_field,
)
from hardware.sim.mm_devices import (
    SimulatedMMCore,
    SimulatedXYStage,
    build_simulated_core,
    load_simulated_core,
    set_plate,
    shared_simulator,
)

BARCODE = "PLATE-PYCRO"
SMALL = SimulationConfig(seed=11, camera_shape=(66, 90), overexposure_rate=0.0)
FAST = PycromanagerSettings(snap_timeout_s=5.0, device_timeout_s=5.0, stall_timeout_s=30.0)


@pytest.fixture
def make_core():
    """Builds simulated cores and unloads them after the test."""
    cores: list[SimulatedMMCore] = []

    def make(config: SimulationConfig = SMALL, **kwargs) -> SimulatedMMCore:
        core = build_simulated_core(config, **kwargs)
        cores.append(core)
        return core

    yield make
    for core in cores:
        core.unloadAllDevices()


def scanner_for(
    core: SimulatedMMCore, settings: PycromanagerSettings = FAST
) -> PycromanagerScanner:
    return PycromanagerScanner(
        core=core, settings=settings, load_plate=lambda barcode: set_plate(core, barcode)
    )


def snap_counter(core: SimulatedMMCore) -> list[str]:
    """Camera labels, one per successful snap."""
    snapped: list[str] = []
    core.events.imageSnapped.connect(snapped.append)
    return snapped


def move_counter(core: SimulatedMMCore) -> list[tuple[float, float]]:
    """Stage positions, one per XY move."""
    moves: list[tuple[float, float]] = []
    core.events.XYStagePositionChanged.connect(lambda _label, x, y: moves.append((x, y)))
    return moves


# ----------------------------------------------------------------------------------------------
# The Micro-Manager devices


def test_devices_snap_render_field_at_the_stage_position(make_core):
    core = make_core(barcode=BARCODE)
    assert core.getCameraDevice() == "Camera"
    assert core.getXYStageDevice() == "XY"
    assert core.getFocusDevice() == "Z"
    assert core.getShutterDevice() == "Shutter"
    assert core.getImageBitDepth() == 12
    x, y = SMALL.plate.well_center_um("C4")
    core.setXYPosition(x + 50.0, y - 20.0)
    core.waitForDevice("XY")
    core.setConfig("Objective", "100x")
    core.snapImage()
    frame = core.getImage()
    assert frame.dtype == np.uint16 and frame.shape == SMALL.camera_shape
    assert int(frame.max()) < 2**12
    assert np.array_equal(frame, render_field(SMALL, BARCODE, "C4", x + 50.0, y - 20.0, "100x"))
    assert core.getXYPosition() == pytest.approx((x + 50.0, y - 20.0))
    core.setExposure(25.0)
    assert core.getExposure() == 25.0


def test_objective_preset_sets_the_pixel_size_from_the_pixel_size_config(make_core):
    core = make_core()
    sizes = {}
    for objective in ("40x", "100x"):
        core.setConfig("Objective", objective)
        assert core.getCurrentPixelSizeConfig() == f"Res{objective}"
        assert core.getState("Objective") == ("40x", "100x").index(objective)
        sizes[objective] = core.getPixelSizeUm()
        assert sizes[objective] == pytest.approx(pixel_size_um(SMALL, objective))
        assert core.getPixelSizeUm(True) == pytest.approx(sizes[objective])
        affine = core.getPixelSizeAffine()
        assert affine[0] == pytest.approx(sizes[objective])
    assert sizes["40x"] == pytest.approx(2.5 * sizes["100x"])


def test_fail_wells_property_injects_a_camera_failure(make_core):
    core = make_core(barcode=BARCODE)
    core.setProperty("Camera", "FailWells", "b02, C3")
    assert core.getProperty("Camera", "FailWells") == "B2,C3"
    core.setXYPosition(*SMALL.plate.well_center_um("B2"))
    with pytest.raises(RuntimeError, match="B2"):
        core.snapImage()
    core.setXYPosition(*SMALL.plate.well_center_um("B3"))
    core.snapImage()  # a neighbour is fine


def test_cfg_file_loads_the_python_devices(monkeypatch):
    fresh = SimulatedMicroscope(SimulationConfig())
    monkeypatch.setitem(mm_devices._simulators, "default", fresh)  # don't share state with others
    core = load_simulated_core()
    try:
        assert set(core.getLoadedDevices()) >= {"Camera", "XY", "Z", "Shutter", "Objective"}
        assert all(core.isPyDevice(d) for d in ("Camera", "XY", "Z", "Shutter", "Objective"))
        assert core.getCameraDevice() == "Camera" and core.getXYStageDevice() == "XY"
        assert core.getFocusDevice() == "Z" and core.getShutterDevice() == "Shutter"
        assert set(core.getAvailableConfigs("Objective")) == {"40x", "100x"}
        assert core.getCurrentConfig("Objective") == "40x"  # System/Startup
        for objective in ("40x", "100x"):
            core.setConfig("Objective", objective)
            default_size = pixel_size_um(SimulationConfig(), objective)
            assert core.getPixelSizeUm() == pytest.approx(default_size)
        set_plate(core, BARCODE)
        assert shared_simulator().barcode == BARCODE
        x, y = fresh.config.plate.well_center_um("H12")
        core.setXYPosition(x, y)
        core.snapImage()
        expected = render_field(fresh.config, BARCODE, "H12", x, y, "100x")
        assert np.array_equal(core.getImage(), expected)
    finally:
        core.unloadAllDevices()


# ----------------------------------------------------------------------------------------------
# The shim, in isolation


def test_camel_to_snake_matches_the_renaming_pycromanager_relies_on():
    mmpycorex_launcher = pytest.importorskip("mmpycorex.launcher")
    names = [n for n in dir(SimulatedMMCore) if not n.startswith("_")]
    assert names
    for name in names:
        assert camel_to_snake(name) == mmpycorex_launcher._camel_to_snake(name)
    assert camel_to_snake("getXYStageDevice") == "get_xy_stage_device"
    assert camel_to_snake("getPixelSizeUm") == "get_pixel_size_um"


def _core_calls_in(module) -> set[str]:
    """Names called as ``core.X(...)`` / ``self.core.X(...)`` in a pycromanager module."""
    names = set()
    for node in ast.walk(ast.parse(inspect.getsource(module))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            if (isinstance(owner, ast.Name) and owner.id == "core") or (
                isinstance(owner, ast.Attribute) and owner.attr in ("core", "core_")
            ):
                names.add(node.func.attr)
    return names


def test_adapter_resolves_every_core_call_of_the_engine_to_the_instance(make_core):
    core = make_core()
    adapter = PycromanagerCoreAdapter(core, snap_timeout_s=1.0)
    called = (
        _core_calls_in(pycromanager_engine)
        | _core_calls_in(acq_eng_metadata)
        | _core_calls_in(inspect.getmodule(EngineAcquisition))
    )
    assert {"get_xy_stage_device", "snap_image", "get_tagged_image", "set_config"} <= called
    missing = [name for name in sorted(called) if not hasattr(adapter, name)]
    assert missing == []
    # resolved on the instance: the Python override, not the C++ method that mmpycorex binds
    core.setConfig("Objective", "100x")
    assert adapter.get_pixel_size_um() == pytest.approx(pixel_size_um(SMALL, "100x"))
    assert adapter.get_xy_stage_device() == "XY"
    assert adapter.getCameraDevice() == "Camera"  # camelCase passes through
    assert adapter.TaggedImage(None, None).pix is None


def test_adapter_snaps_and_tags_the_frame_with_its_stage_position(make_core):
    core = make_core(barcode=BARCODE)
    adapter = PycromanagerCoreAdapter(core, snap_timeout_s=2.0)
    x, y = SMALL.plate.well_center_um("D6")
    core.setXYPosition(x, y)
    core.enableContinuousFocus(False)  # the reflection autofocus holds Z while it is on
    core.setPosition(1512.5)
    adapter.snap_image()
    tagged = adapter.get_tagged_image(0, "Camera", 66, 90)
    expected = render_field(SMALL, BARCODE, "D6", x, y, "40x", z_um=1512.5)
    assert np.array_equal(tagged.pix, expected)
    tags = tagged.tags
    assert tags is not None
    assert tags["XPositionUm"] == pytest.approx(x)
    assert tags["YPositionUm"] == pytest.approx(y)
    assert tags["ZPositionUm"] == pytest.approx(1512.5)
    assert tags["PixelType"] == "GRAY16" and tags["BitDepth"] == 12


def test_adapter_reports_camera_errors_and_late_frames_as_lost_frames(make_core):
    core = make_core(barcode=BARCODE, fail_wells=["A1"])
    lost: list[str] = []
    adapter = PycromanagerCoreAdapter(core, snap_timeout_s=0.3, on_frame_lost=lost.append)
    core.setXYPosition(*SMALL.plate.well_center_um("A1"))
    with pytest.raises(FrameLost, match="A1") as error:
        adapter.snap_image()
    assert isinstance(error.value, TimeoutError)  # what pycromanager's engine survives
    core.setProperty("Camera", "StallWells", "A2")
    core.setProperty("Camera", "StallSeconds", 0.5)
    core.setXYPosition(*SMALL.plate.well_center_um("A2"))
    started = time.monotonic()
    with pytest.raises(FrameLost, match=r"within 0\.3 s"):
        adapter.snap_image()
    assert time.monotonic() - started < 0.45  # did not wait for the stalled camera
    assert len(lost) == 2
    core.setXYPosition(*SMALL.plate.well_center_um("A3"))
    adapter.snap_image()  # waits for the stalled snap to end, then snaps
    assert adapter.get_tagged_image(0, "Camera", 66, 90).pix.shape == SMALL.camera_shape


def test_in_process_engine_borrows_the_engine_singleton_and_gives_it_back(make_core):
    core = make_core()
    with in_process_engine(core, snap_timeout_s=1.0) as engine:
        assert engine.engine.core is engine.adapter
        assert engine.adapter.core is core
        with (
            pytest.raises(RuntimeError, match="singleton"),
            in_process_engine(core, snap_timeout_s=1.0),
        ):
            pass
    assert pycromanager_engine.Engine.get_instance().core is not engine.adapter


# ----------------------------------------------------------------------------------------------
# The driver


@pytest.mark.slow  # about 3 s of acquisition plus 3 s rendering the expected frames
def test_full_plate_through_pycromanagers_engine_matches_render_field(make_core, caplog):
    config = SimulationConfig(seed=5)  # full-size frames: what the service scans
    core = make_core(config)
    scanner: PlateScanner = scanner_for(core)  # the protocol the service drives
    plan = ScanPlan(barcode=BARCODE, wells=config.plate.well_names, objective="40x")
    caplog.set_level(logging.INFO, logger="hardware.pycromanager")
    started = time.perf_counter()
    wells = list(scanner.scan(plan))
    elapsed = time.perf_counter() - started
    logging.getLogger(__name__).info("96 wells in %.2f s: %.1f ms/well", elapsed, elapsed / 0.096)
    assert [w.well for w in wells] == list(config.plate.well_names)
    assert not any(w.failed for w in wells)
    for well in wells:
        (field,) = well.fields
        cx, cy = config.plate.well_center_um(well.well)
        assert (field.x_um, field.y_um) == pytest.approx((cx, cy))
        assert field.objective == "40x" and field.field_index == 0
        assert field.pixel_size_um == pytest.approx(core.getPixelSizeUmByID("Res40x"))
        assert field.metadata["position_label"] == well.well
        assert field.acquisition_ms >= 0.0
        expected = render_field(config, BARCODE, well.well, cx, cy, "40x")
        assert np.array_equal(field.image, expected), well.well
    assert "96 wells" in caplog.text


def test_40x_and_100x_give_the_pixel_sizes_of_the_cores_pixel_size_configs(make_core):
    core = make_core()
    scanner = scanner_for(core)
    sizes = {}
    for objective in ("40x", "100x"):
        plan = ScanPlan(barcode=BARCODE, wells=["A1", "B2", "H12"], objective=objective)
        wells = list(scanner.scan(plan))
        assert [w.well for w in wells] == ["A1", "B2", "H12"]
        fields = [f for w in wells for f in w.fields]
        assert {f.objective for f in fields} == {objective}
        (sizes[objective],) = {f.pixel_size_um for f in fields}
        assert sizes[objective] == pytest.approx(core.getPixelSizeUmByID(f"Res{objective}"))
        for well, field in zip(wells, fields, strict=True):
            expected = render_field(SMALL, BARCODE, well.well, field.x_um, field.y_um, objective)
            assert np.array_equal(field.image, expected)
    assert sizes["40x"] == pytest.approx(pixel_size_um(SMALL, "40x"))
    assert sizes["100x"] == pytest.approx(pixel_size_um(SMALL, "100x"))
    assert sizes["40x"] != pytest.approx(sizes["100x"])


def test_camera_failure_on_one_well_fails_that_well_and_the_plate_goes_on(make_core):
    core = make_core(fail_wells=["D7"])
    plan = ScanPlan(barcode=BARCODE, wells=SMALL.plate.well_names)
    wells = list(scanner_for(core).scan(plan))
    assert [w.well for w in wells] == list(SMALL.plate.well_names)
    failed = [w for w in wells if w.failed]
    assert [w.well for w in failed] == ["D7"]
    assert failed[0].fields == [] and "D7" in str(failed[0].error)
    assert sum(1 for w in wells if not w.failed and len(w.fields) == 1) == 95


def test_several_fields_per_well_are_grouped_and_placed_on_the_grid(make_core):
    core = make_core(fail_wells=["B1"])
    plan = ScanPlan(
        barcode=BARCODE, wells=["A1", "B1", "C3"], fields_per_well=4, field_spacing_um=800.0
    )
    sites = plan_sites(plan)
    assert [s.label for s in sites[:4]] == [f"A1-Site_{i}" for i in range(4)]
    events = plan_events(sites, "40x", "Objective")
    assert events[0]["config_group"] == ["Objective", "40x"]
    moves = move_counter(core)
    wells = list(scanner_for(core).scan(plan))
    assert [w.well for w in wells] == ["A1", "B1", "C3"]
    assert wells[1].failed and wells[1].fields == []
    # B1's later fields are skipped once its first frame is lost: 4 + 1 + 4 moves
    assert len(moves) == 9
    offsets = plan.plate.field_offsets_um(4, 800.0)
    for well in (wells[0], wells[2]):
        assert [f.field_index for f in well.fields] == [0, 1, 2, 3]
        cx, cy = plan.plate.well_center_um(well.well)
        for field, (dx, dy) in zip(well.fields, offsets, strict=True):
            assert (field.x_um, field.y_um) == pytest.approx((cx + dx, cy + dy))
            expected = render_field(SMALL, BARCODE, well.well, cx + dx, cy + dy, "40x")
            assert np.array_equal(field.image, expected)


def test_should_stop_aborts_the_acquisition_early_and_cleanly(make_core):
    core = make_core()
    scanner = scanner_for(core)
    snapped = snap_counter(core)
    received: list[str] = []
    plan = ScanPlan(barcode=BARCODE, wells=SMALL.plate.well_names)
    for well in scanner.scan(plan, should_stop=lambda: len(received) >= 5):
        received.append(well.well)
    assert received == list(SMALL.plate.well_names[:5])
    assert len(snapped) < 40  # the acquisition was aborted, not run to the end
    after_stop = len(snapped)
    time.sleep(0.3)
    assert len(snapped) == after_stop  # and nothing keeps snapping in the background
    # pycromanager's per-acquisition threads are gone and the engine is free again
    assert not {"NotificationDispatcherThread", "StorageMonitorThread"} & {
        t.name for t in threading.enumerate()
    }
    assert [w.well for w in scanner.scan(ScanPlan(barcode=BARCODE, wells=["E5"]))] == ["E5"]


def test_closing_the_scan_generator_aborts_the_acquisition(make_core):
    core = make_core()
    snapped = snap_counter(core)
    scan = scanner_for(core).scan(ScanPlan(barcode=BARCODE, wells=SMALL.plate.well_names))
    assert next(scan).well == "A1"
    scan.close()
    count = len(snapped)
    time.sleep(0.3)
    assert len(snapped) == count < 96
    assert not [t for t in threading.enumerate() if t.name == "pycromanager-wait"]


def test_a_camera_that_hangs_fails_its_well_after_the_snap_timeout(make_core):
    core = make_core()
    core.setProperty("Camera", "StallWells", "A2")
    core.setProperty("Camera", "StallSeconds", 0.6)
    settings = PycromanagerSettings(snap_timeout_s=0.4, device_timeout_s=2.0, stall_timeout_s=10.0)
    plan = ScanPlan(barcode=BARCODE, wells=["A1", "A2", "A3", "A4"])
    wells = list(scanner_for(core, settings).scan(plan))
    assert [w.well for w in wells] == ["A1", "A2", "A3", "A4"]
    assert [w.failed for w in wells] == [False, True, False, False]
    assert "within 0.4 s" in str(wells[1].error)


class BrokenMoveStage(SimulatedXYStage):
    """An XY stage that faults when asked to move to well A3."""

    def set_position_um(self, x: float, y: float) -> None:
        if (x, y) == pytest.approx(SMALL.plate.well_center_um("A3")):
            raise RuntimeError("stage controller fault")
        super().set_position_um(x, y)


def test_a_stage_error_fails_the_well_and_a_new_acquisition_resumes(make_core):
    simulator = SimulatedMicroscope(SMALL)
    core = make_core(simulator=simulator)
    core.unloadDevice("XY")
    core.loadPyDevice("XY", BrokenMoveStage(simulator))
    core.initializeDevice("XY")
    core.setXYStageDevice("XY")
    plan = ScanPlan(barcode=BARCODE, wells=["A1", "A2", "A3", "A4", "A5"])
    wells = list(scanner_for(core).scan(plan))
    assert [w.well for w in wells] == ["A1", "A2", "A3", "A4", "A5"]
    assert [w.failed for w in wells] == [False, False, True, False, False]
    assert "aborted" in str(wells[2].error)
    for well in wells[3:]:
        cx, cy = SMALL.plate.well_center_um(well.well)
        assert np.array_equal(
            well.fields[0].image, render_field(SMALL, BARCODE, well.well, cx, cy, "40x")
        )


def test_wells_failing_in_a_row_stop_the_scan(make_core):
    core = make_core(fail_wells=["A2", "A3", "A4"])
    settings = PycromanagerSettings(
        max_consecutive_failures=3, snap_timeout_s=5.0, device_timeout_s=5.0, stall_timeout_s=30.0
    )
    received = []
    with pytest.raises(HardwareError, match="3 wells failed in a row"):
        for well in scanner_for(core, settings).scan(
            ScanPlan(barcode=BARCODE, wells=["A1", "A2", "A3", "A4", "A5"])
        ):
            received.append(well)
    assert [(w.well, w.failed) for w in received] == [
        ("A1", False),
        ("A2", True),
        ("A3", True),
        ("A4", True),
    ]


def test_settings_refuse_unsafe_timeouts():
    with pytest.raises(ValueError, match="snap_timeout_s"):
        PycromanagerSettings(snap_timeout_s=0)
    with pytest.raises(ValueError, match="stall_timeout_s"):
        PycromanagerSettings(snap_timeout_s=10, device_timeout_s=10, stall_timeout_s=15)
