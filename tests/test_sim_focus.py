"""The simulator's focus: the plate's focus surface, defocus that follows the focus drive, the
reflection autofocus (direct and through Micro-Manager's autofocus API) and the timing model
(hardware.sim.focus, hardware.sim.timing, hardware.sim.microscope, hardware.sim.mm_devices)."""

from __future__ import annotations

import itertools
import time

import cv2
import numpy as np
import pytest

from hardware.microscope import AutofocusError, HardwareError, Objective
from hardware.plate import plate_geometry
from hardware.sim import (
    InstrumentTiming,
    SimulatedMicroscope,
    SimulationConfig,
    focus_surface,
    render_field,
    surface_z_um,
)
from hardware.sim import optics as sim_optics
from hardware.sim.timing import InstrumentClock, move_time_s

BARCODE = "PLATE-FOCUS-1"
SMALL = SimulationConfig(seed=5, camera_shape=(132, 180), overexposure_rate=0.0)


def sharpness(frame: np.ndarray) -> float:
    """Variance of the Laplacian after a light smoothing (so that pixel noise, which does not
    blur, does not dominate): falls as the frame blurs."""
    smooth = cv2.GaussianBlur(frame.astype(np.float32), (0, 0), 2.0)
    return float(cv2.Laplacian(smooth, cv2.CV_32F).var())


def scope_at(well: str, config: SimulationConfig = SMALL, **kwargs) -> SimulatedMicroscope:
    scope = SimulatedMicroscope(config, barcode=BARCODE, **kwargs)
    scope.move_to(*config.plate.well_center_um(well))
    return scope


# ----------------------------------------------------------------------------------------------
# The default path: continuous focus on the surface renders today's frames


@pytest.mark.parametrize("objective", ["40x", "100x"])
@pytest.mark.parametrize("well", ["A1", "D7", "H12"])
def test_continuous_focus_snaps_are_bit_identical_to_render_field(well, objective):
    scope = SimulatedMicroscope(SMALL, barcode=BARCODE)
    assert scope.continuous_focus
    scope.set_objective(objective)
    x, y = SMALL.plate.well_center_um(well)
    scope.move_to(x + 210.0, y - 95.0)
    assert scope.continuous_focus_locked
    assert scope.z_um == surface_z_um(SMALL, BARCODE, x + 210.0, y - 95.0)
    expected = render_field(SMALL, BARCODE, well, x + 210.0, y - 95.0, objective)
    assert np.array_equal(scope.snap(well, 0), expected)
    # render_field at the surface's z is the same frame as render_field without a z
    on_surface = render_field(SMALL, BARCODE, well, x + 210.0, y - 95.0, objective, z_um=scope.z_um)
    assert np.array_equal(on_surface, expected)
    scope.set_channel("Phase+2um")
    assert np.array_equal(
        scope.snap(well, 0),
        render_field(SMALL, BARCODE, well, x + 210.0, y - 95.0, objective, channels=["Phase+2um"])[
            ..., 0
        ],
    )


def test_full_focus_with_offset_zero_gives_the_default_frame_too():
    config = SimulationConfig(seed=5, camera_shape=(132, 180), continuous_focus=False)
    scope = scope_at("C5", config)
    assert not scope.continuous_focus
    x, y = scope.position_um
    assert scope.full_focus() == surface_z_um(config, BARCODE, x, y)
    assert np.array_equal(scope.snap("C5", 0), render_field(config, BARCODE, "C5", x, y, "40x"))


# ----------------------------------------------------------------------------------------------
# Defocus follows z


@pytest.mark.parametrize("objective", ["40x", "100x"])
def test_blur_grows_with_distance_from_the_cells_z(objective):
    scope = SimulatedMicroscope(SMALL, barcode=BARCODE)
    scope.set_objective(objective)
    scope.move_to(*SMALL.plate.well_center_um("E4"))
    scope.set_continuous_focus(False)
    x, y = scope.position_um
    truth = scope.focus_truth(x, y)
    assert truth.depth_of_field_um == {"40x": 2.0, "100x": 1.0}[objective]
    for direction in (1.0, -1.0):
        scores = []
        for distance in (0.0, 0.5, 1.0, 2.0, 4.0, 8.0):
            scope.move_z(truth.cell_z_um + direction * distance)
            scores.append(sharpness(scope.snap("E4", 0)))
        assert all(a > b for a, b in itertools.pairwise(scores)), scores
        assert scores[0] > 2.0 * scores[-1]


def test_depth_of_field_edge_is_a_blur_sigma_of_one_and_a_half_um():
    objectives: tuple[tuple[Objective, float], ...] = (("40x", 2.0), ("100x", 1.0))
    for objective, dof in objectives:
        scope = SimulatedMicroscope(SMALL, barcode=BARCODE)
        scope.set_objective(objective)
        x, y = SMALL.plate.well_center_um("B9")
        truth = scope.focus_truth(x, y)
        assert truth.in_focus(truth.cell_z_um + dof / 2.0)
        assert not truth.in_focus(truth.cell_z_um + dof / 2.0 + 0.01)
        for z, sigma in ((truth.cell_z_um + dof / 2.0, 1.5), (truth.cell_z_um, 0.0)):
            scene = sim_optics._scene(SMALL, BARCODE, "B9", x, y, objective, z)
            assert scene.cond.defocus_um == pytest.approx(sigma, abs=1e-9)
        # on the surface: the drawn defocus, |surface - cell_z| * k
        scene = sim_optics._scene(SMALL, BARCODE, "B9", x, y, objective)
        k = SMALL.blur_per_um(objective)
        expected = abs(truth.surface_z_um - truth.cell_z_um) * k
        assert scene.cond.defocus_um == pytest.approx(expected, abs=1e-9)


def test_cells_lie_near_the_surface_within_the_drawn_defocus():
    scope = SimulatedMicroscope(SMALL, barcode=BARCODE)
    offsets = []
    for well in SMALL.plate.well_names[:48]:
        truth = scope.focus_truth(*SMALL.plate.well_center_um(well))
        offsets.append(truth.cell_z_um - truth.surface_z_um)
    offsets_um = np.abs(offsets)
    assert offsets_um.max() <= 4.0 / SMALL.blur_per_um("40x") + 1e-9  # d <= 4 um of sigma
    assert 0.5 < np.mean(offsets_um <= 1.0) < 1.0  # most within DoF/2 of the surface, not all
    assert min(offsets) < 0 < max(offsets)  # both signs


# ----------------------------------------------------------------------------------------------
# The focus surface


def test_surface_spans_tens_of_um_and_is_seeded():
    heights = [
        surface_z_um(SMALL, BARCODE, *SMALL.plate.well_center_um(w)) for w in SMALL.plate.well_names
    ]
    span = max(heights) - min(heights)
    assert 10.0 <= span <= 60.0, span
    assert abs(np.mean(heights) - SMALL.focus_z_nominal_um) < 20.0
    again = focus_surface(SimulationConfig(seed=5), BARCODE)
    assert again.z_um(20000.0, 30000.0) == surface_z_um(SMALL, BARCODE, 20000.0, 30000.0)
    other_plate = focus_surface(SMALL, "PLATE-FOCUS-2")
    other_seed = focus_surface(SimulationConfig(seed=6), BARCODE)
    here = focus_surface(SMALL, BARCODE)
    assert other_plate.tilt_x_um != here.tilt_x_um
    assert other_seed.well_offsets_um != here.well_offsets_um
    # per-well offsets: sd about focus_well_sd_um
    sd = np.std([z for _, z in here.well_offsets_um])
    assert 0.9 < sd < 2.2


def test_surface_spans_tens_of_um_on_every_plate():
    for index in range(12):
        surface = focus_surface(SMALL, f"PLATE-{index}")
        heights = [surface.z_um(*SMALL.plate.well_center_um(w)) for w in SMALL.plate.well_names]
        assert 15.0 <= max(heights) - min(heights) <= 45.0


# ----------------------------------------------------------------------------------------------
# Focus drive, autofocus


def test_focus_drive_limits_are_refused_with_the_limits_named():
    scope = scope_at("B2")
    with pytest.raises(HardwareError, match="continuous focus"):
        scope.move_z(1500.0)
    scope.set_continuous_focus(False)
    assert scope.z_limits_um == (0.0, 5000.0)
    for z in (-1.0, 5000.5):
        with pytest.raises(ValueError, match=r"\[0, 5000\]"):
            scope.move_z(z)
    scope.move_z(5000.0)
    assert scope.z_um == 5000.0


def test_full_focus_lands_on_surface_plus_offset():
    scope = scope_at("F3")
    scope.set_continuous_focus(False)
    x, y = scope.position_um
    surface = scope.focus_truth(x, y).surface_z_um
    scope.move_z(surface - 40.0)
    scope.autofocus_offset_um = 1.25
    assert scope.full_focus() == pytest.approx(surface + 1.25)
    assert scope.z_um == pytest.approx(surface + 1.25)


def test_full_focus_fails_over_af_fail_wells_and_out_of_capture_range():
    scope = scope_at("C3", af_fail_wells=["c03"])
    scope.set_continuous_focus(False)
    z_before = scope.z_um
    spent = scope.instrument_time_s
    with pytest.raises(AutofocusError, match="C3"):
        scope.full_focus()
    assert scope.z_um == z_before
    assert scope.instrument_time_s > spent  # the failed search took its time
    scope.move_to(*SMALL.plate.well_center_um("C4"))
    surface = scope.focus_truth(*scope.position_um).surface_z_um
    scope.move_z(surface - SMALL.af_capture_range_um - 5.0)
    with pytest.raises(AutofocusError, match="capture range"):
        scope.full_focus()
    scope.move_z(surface - SMALL.af_capture_range_um + 5.0)
    assert scope.full_focus() == pytest.approx(surface)


def test_continuous_focus_loses_its_lock_over_af_fail_wells_and_relocks_after():
    scope = scope_at("D4", af_fail_wells=["D5"])
    z_d4 = scope.z_um
    scope.move_to(*SMALL.plate.well_center_um("D5"))
    assert scope.continuous_focus and not scope.continuous_focus_locked
    assert scope.z_um == z_d4  # held where it was
    with pytest.raises(AutofocusError):
        scope.full_focus()
    scope.move_to(*SMALL.plate.well_center_um("D6"))
    assert scope.continuous_focus_locked
    assert scope.z_um == surface_z_um(SMALL, BARCODE, *SMALL.plate.well_center_um("D6"))


def test_continuous_focus_follows_the_offset():
    scope = scope_at("G8")
    surface = scope.z_um
    scope.autofocus_offset_um = -0.8
    assert scope.z_um == pytest.approx(surface - 0.8)
    scope.set_continuous_focus(False)
    assert scope.z_um == pytest.approx(surface - 0.8)  # switching off leaves z where it is


def test_load_plate_renders_another_geometry():
    plate = plate_geometry("384-well")
    scope = SimulatedMicroscope(SMALL)
    scope.load_plate("PLATE-384", plate)
    assert scope.config.plate == plate and scope.barcode == "PLATE-384"
    x, y = plate.well_center_um("P24")
    scope.move_to(x, y)
    config = scope.config
    assert scope.z_um == surface_z_um(config, "PLATE-384", x, y)
    assert np.array_equal(
        scope.snap("P24", 0), render_field(config, "PLATE-384", "P24", x, y, "40x")
    )


# ----------------------------------------------------------------------------------------------
# Timing


def test_move_times_follow_a_trapezoidal_profile():
    assert move_time_s(0.0, 1000.0, 1000.0) == 0.0
    # triangle: never reaches 1000 um/s over 100 um at 1000 um/s^2 (needs 1000 um)
    assert move_time_s(100.0, 1000.0, 1000.0) == pytest.approx(2.0 * np.sqrt(0.1))
    # trapezoid: 1 s up and 1 s down (500 um each), 1000 um at full speed in between
    assert move_time_s(2000.0, 1000.0, 1000.0) == pytest.approx(3.0)
    timing = InstrumentTiming()
    hop = timing.xy_move_s(9000.0, 0.0)
    assert 0.5 <= hop <= 0.7, hop
    assert timing.xy_move_s(9000.0, 9000.0) == pytest.approx(hop)  # axes move at once
    assert 0.08 <= timing.z_move_s(2.0) <= 0.12
    assert timing.snap_s(10.0) == pytest.approx(0.04)
    with pytest.raises(ValueError):
        InstrumentTiming(xy_max_speed_um_s=0.0)


def test_instrument_time_is_charged_per_action_in_fast_mode_without_sleeping():
    scope = SimulatedMicroscope(SMALL, barcode=BARCODE)
    timing = SMALL.timing
    scope.move_to(*SMALL.plate.well_center_um("A1"))
    start = scope.instrument_time_s
    started = time.perf_counter()
    scope.move_to(*SMALL.plate.well_center_um("A2"))  # one 9 mm hop + continuous-focus lock
    assert scope.instrument_time_s - start == pytest.approx(
        timing.xy_move_s(9000.0, 0.0) + timing.af_lock_s
    )
    mark = scope.instrument_time_s
    scope.snap("A2", 0)
    assert scope.instrument_time_s - mark == pytest.approx(0.01 + timing.camera_readout_s)
    for well in SMALL.plate.well_names[:24]:
        scope.move_to(*SMALL.plate.well_center_um(well))
        scope.snap(well, 0)
    wall = time.perf_counter() - started
    assert scope.instrument_time_s > 10.0
    assert wall < 0.25 * (scope.instrument_time_s - start)


def test_realtime_mode_sleeps_the_charged_time():
    timing = InstrumentTiming(camera_readout_s=0.05)
    config = SimulationConfig(seed=5, camera_shape=(66, 90), timing=timing, timing_mode="realtime")
    scope = SimulatedMicroscope(config, barcode=BARCODE)
    scope.exposure_ms = 50.0
    started = time.perf_counter()
    scope.snap("A1", 0)
    scope.snap("A1", 0)
    assert time.perf_counter() - started >= 0.2
    assert scope.instrument_time_s == pytest.approx(0.2)
    clock = InstrumentClock()
    with pytest.raises(ValueError):
        clock.charge(1.0, "warp")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------
# Micro-Manager devices: the Z drive and the reflection autofocus


pytest.importorskip("pymmcore_plus")

from hardware.sim import mm_devices  # noqa: E402
from hardware.sim.mm_devices import (  # noqa: E402
    build_simulated_core,
    load_simulated_core,
    set_plate,
)


@pytest.fixture
def make_core():
    cores = []

    def make(config: SimulationConfig = SMALL, **kwargs):
        core = build_simulated_core(config, **kwargs)
        cores.append(core)
        return core

    yield make
    for core in cores:
        core.unloadAllDevices()


def _check_autofocus_api(core, config: SimulationConfig) -> None:
    """What a Micro-Manager user would do with a reflection autofocus, on ``core``."""
    assert core.getAutoFocusDevice() == "ReflectionAF"
    x, y = config.plate.well_center_um("B4")
    core.setXYPosition(x, y)
    assert core.isContinuousFocusEnabled() and core.isContinuousFocusLocked()
    surface = surface_z_um(config, BARCODE, x, y)
    assert core.getPosition() == pytest.approx(surface)
    core.snapImage()
    assert np.array_equal(core.getImage(), render_field(config, BARCODE, "B4", x, y, "40x"))
    with pytest.raises(RuntimeError, match="continuous focus"):
        core.setPosition(surface + 3.0)
    core.enableContinuousFocus(False)
    assert not core.isContinuousFocusEnabled() and not core.isContinuousFocusLocked()
    assert core.getProperty("ReflectionAF", "Status") == "Off"
    core.setPosition(surface + 3.0)
    core.snapImage()
    defocused = render_field(config, BARCODE, "B4", x, y, "40x", z_um=surface + 3.0)
    assert np.array_equal(core.getImage(), defocused)
    with pytest.raises(ValueError, match="limits"):
        core.setPosition(9000.0)
    core.setAutoFocusOffset(0.5)
    assert core.getAutoFocusOffset() == pytest.approx(0.5)
    core.fullFocus()
    assert core.getPosition() == pytest.approx(surface + 0.5)
    assert core.getLastFocusScore() == 1.0 and core.getCurrentFocusScore() == pytest.approx(1.0)
    core.incrementalFocus()
    assert core.getPosition() == pytest.approx(surface + 0.5)
    core.setProperty("ReflectionAF", "FailWells", "b04")
    with pytest.raises(RuntimeError, match="B4"):
        core.fullFocus()
    assert core.getLastFocusScore() == 0.0 and core.getCurrentFocusScore() == 0.0
    core.setAutoFocusOffset(0.0)
    core.enableContinuousFocus(True)
    assert core.isContinuousFocusEnabled() and not core.isContinuousFocusLocked()
    assert core.getProperty("ReflectionAF", "Status") == "Unlocked"
    core.setXYPosition(*config.plate.well_center_um("B5"))
    assert core.isContinuousFocusLocked()
    assert core.getProperty("ReflectionAF", "Status") == "Locked"


def test_core_autofocus_api_on_build_simulated_core(make_core):
    core = make_core(barcode=BARCODE)
    _check_autofocus_api(core, SMALL)


def test_core_autofocus_api_on_the_cfg_file(monkeypatch):
    config = SimulationConfig(seed=0, camera_shape=(66, 90), overexposure_rate=0.0)
    fresh = SimulatedMicroscope(config)
    monkeypatch.setitem(mm_devices._simulators, "default", fresh)
    core = load_simulated_core()
    try:
        assert core.isPyDevice("ReflectionAF")
        set_plate(core, BARCODE)
        _check_autofocus_api(core, config)
        assert core.getProperty("Z", "SettleTime(ms)") == pytest.approx(80.0)
    finally:
        core.unloadAllDevices()


def test_core_reports_instrument_time_and_timing_properties(make_core):
    core = make_core(barcode=BARCODE)
    assert core.getProperty("Camera", "TimingMode") == "fast"
    assert core.isPropertyReadOnly("Camera", "InstrumentTimeS")
    assert core.getProperty("Camera", "ReadoutTime") == pytest.approx(30.0)
    assert core.getProperty("XY", "MaxSpeed(mm/s)") == pytest.approx(25.0)
    assert core.getProperty("XY", "Acceleration(mm/s^2)") == pytest.approx(150.0)
    assert core.getDeviceDelayMs("XY") == pytest.approx(50.0)
    assert core.usesDeviceDelay("XY")
    core.setDeviceDelayMs("XY", 120.0)
    assert core.getProperty("XY", "SettleTime(ms)") == pytest.approx(120.0)
    x, y = SMALL.plate.well_center_um("A1")
    core.setXYPosition(x, y)
    start = float(core.getProperty("Camera", "InstrumentTimeS"))
    core.setXYPosition(x + 9000.0, y)
    hop = float(core.getProperty("Camera", "InstrumentTimeS")) - start
    expected = InstrumentTiming(xy_settle_s=0.12).xy_move_s(9000.0, 0.0) + 0.25
    assert hop == pytest.approx(expected)
    core.setExposure(20.0)
    core.snapImage()
    after = float(core.getProperty("Camera", "InstrumentTimeS"))
    assert after - start - hop == pytest.approx(0.02 + 0.03)
    core.setProperty("Camera", "ReadoutTime", 5.0)
    core.snapImage()
    assert float(core.getProperty("Camera", "InstrumentTimeS")) - after == pytest.approx(0.025)


def test_frame_metadata_carries_instrument_time(make_core):
    core = make_core(barcode=BARCODE)
    core.setXYPosition(*SMALL.plate.well_center_um("C2"))
    core.startSequenceAcquisition(2, 0.0, True)  # UniMMCore keeps metadata of sequences only
    deadline = time.monotonic() + 10.0
    while core.isSequenceRunning() and time.monotonic() < deadline:
        time.sleep(0.01)
    _image, metadata = core.getLastImageAndMD()
    assert float(metadata["InstrumentTimeS"]) == pytest.approx(
        float(core.getProperty("Camera", "InstrumentTimeS")), abs=1e-6
    )
    assert float(metadata["InstrumentTimeS"]) > 0.0


def test_set_plate_hands_the_geometry_to_the_simulator(make_core):
    core = make_core()
    plate = plate_geometry("384-well")
    set_plate(core, "PLATE-384", plate)
    assert core.getProperty("Camera", "Barcode") == "PLATE-384"
    assert core.getProperty("Camera", "PlateType") == "384-well"
    x, y = plate.well_center_um("B3")
    core.setXYPosition(x, y)
    core.snapImage()
    config = SimulationConfig(seed=5, camera_shape=(132, 180), overexposure_rate=0.0, plate=plate)
    assert np.array_equal(core.getImage(), render_field(config, "PLATE-384", "B3", x, y, "40x"))
    core.setProperty("Camera", "PlateType", "96-well")
    assert core.getProperty("Camera", "PlateType") == plate_geometry("96-well").name
