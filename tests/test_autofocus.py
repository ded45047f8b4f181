"""Autofocus: the focus metric, the focus map, the strategies on a synthetic focus drive, and
both scan paths (StepScanner on the simulator, pycromanager's engine in-process on the
simulated core) landing every field within the depth of field of the simulator's truth."""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from hardware.autofocus import (
    CoreFocusDrive,
    FocusMap,
    HardwareAutofocus,
    MapAutofocus,
    MicroscopeFocusDrive,
    ScanFocus,
    SoftwareAutofocus,
    check_autofocus_mode,
    focus_metric,
)
from hardware.backends import BackendOptions, get_backend
from hardware.microscope import AutofocusError, ScanPlan, StepScanner, WellAcquisition
from hardware.pycromanager import PycromanagerScanner, PycromanagerSettings
from hardware.sim import SimulatedMicroscope, SimulationConfig
from hardware.sim.mm_devices import SimulatedMMCore, build_simulated_core, set_plate

# Half-size frames render four times faster and focus the same way; no overexposed frames (a
# saturated field has no contrast to focus on and would fail by design).
SIM = SimulationConfig(seed=5, camera_shape=(264, 360), overexposure_rate=0.0)
BARCODE = "AF-TEST-1"
WELLS = ["B2", "B3", "B4", "C4", "C3", "C2"]
FAST = dict(snap_timeout_s=5.0, device_timeout_s=5.0, stall_timeout_s=30.0, camera_bit_depth=12)


# -- the metric ------------------------------------------------------------------------------------
def _texture(seed: int = 0, shape: tuple[int, int] = (256, 320)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return gaussian_filter(rng.normal(0.0, 1.0, shape), 2.0) * 400.0 + 2000.0


def test_focus_metric_falls_with_blur_and_ignores_exposure():
    sharp = _texture()
    scores = [focus_metric(gaussian_filter(sharp, sigma)) for sigma in (0.0, 1.0, 2.0, 4.0, 8.0)]
    assert all(a > b for a, b in itertools.pairwise(scores)), scores
    assert scores[0] > 20 * scores[-1]
    # exposure (a gain) does not change the score; a flat frame scores nothing
    assert focus_metric(sharp * 3.0) == pytest.approx(focus_metric(sharp), rel=1e-4)
    assert focus_metric(np.full((64, 64), 4095, np.uint16)) == 0.0
    assert focus_metric(np.zeros((64, 64))) == 0.0
    # channels are scored on their mean
    stacked = np.stack([sharp, sharp], axis=-1)
    assert focus_metric(stacked) == pytest.approx(focus_metric(sharp), rel=1e-4)
    with pytest.raises(ValueError, match="binning"):
        focus_metric(sharp, binning=0)


def test_autofocus_modes_are_checked():
    assert check_autofocus_mode("map") == "map"
    with pytest.raises(ValueError, match="unknown autofocus mode 'laser'"):
        check_autofocus_mode("laser")
    with pytest.raises(ValueError, match="unknown autofocus mode"):
        ScanFocus("auto")


# -- the focus map ---------------------------------------------------------------------------------
def _grid(n: int = 12) -> list[tuple[float, float]]:
    rng = np.random.default_rng(1)
    return [(rng.uniform(10_000, 110_000), rng.uniform(10_000, 75_000)) for _ in range(n)]


def test_focus_map_recovers_a_tilted_plane():
    def plane(x, y):
        return 1500.0 + 0.2 * x / 1000.0 - 0.15 * y / 1000.0

    focus_map = FocusMap()
    rng = np.random.default_rng(2)
    sites = _grid(4)
    assert focus_map.predict(*sites[0]) is None  # no map before three sites
    for x, y in sites:
        focus_map.add(x, y, plane(x, y) + rng.normal(0.0, 0.1))
    prediction = focus_map.predict(60_000, 40_000)
    assert prediction is not None and prediction.model == "plane"
    assert prediction.z_um == pytest.approx(plane(60_000, 40_000), abs=0.5)


def test_focus_map_recovers_a_bowed_plate_and_ignores_an_outlier():
    def bowed(x, y):
        u, v = (x - 60_000) / 50_000, (y - 42_000) / 32_000
        return 1500.0 + 6.0 * u - 4.0 * v + 8.0 * (1 - (u * u + v * v) / 2)

    focus_map = FocusMap()
    rng = np.random.default_rng(3)
    sites = _grid(14)
    for x, y in sites:
        focus_map.add(x, y, bowed(x, y) + rng.normal(0.0, 0.2))
    focus_map.add(50_000, 50_000, bowed(50_000, 50_000) + 25.0)  # focused on debris
    assert focus_map.outliers == [(50_000.0, 50_000.0, bowed(50_000, 50_000) + 25.0)]
    for x, y in [(30_000, 20_000), (90_000, 60_000), (60_000, 42_000)]:
        prediction = focus_map.predict(x, y)
        assert prediction is not None and prediction.model == "quadratic"
        assert prediction.z_um == pytest.approx(bowed(x, y), abs=0.6)
        assert prediction.sigma_um < 1.0
    # far outside the sites the fit is less sure
    inside = focus_map.predict(60_000, 42_000)
    outside = focus_map.predict(300_000, 200_000)
    assert inside is not None and outside is not None and outside.sigma_um > 3 * inside.sigma_um


# -- strategies on a synthetic drive ---------------------------------------------------------------
class FakeDrive:
    """A focus drive over a synthetic sample whose sharpest z is ``focus_z`` (blur sigma
    1.5 px per um of defocus), charging 0.1 s per move and 0.04 s per frame."""

    def __init__(self, focus_z: float | None, *, z: float = 100.0, limits=(0.0, 200.0)) -> None:
        self.focus_z = focus_z
        self.z = z
        self.z_limits_um = limits
        self.clock = 0.0
        self.frames = 0
        self.sample = _texture(4)
        self.has_autofocus_device = False

    @property
    def z_um(self) -> float:
        return self.z

    def move_z(self, z_um: float) -> None:
        low, high = self.z_limits_um
        assert low <= z_um <= high, "the search left the drive's limits"
        self.clock += 0.1
        self.z = z_um

    def snap_focus_frame(self) -> np.ndarray:
        self.clock += 0.04
        self.frames += 1
        if self.focus_z is None:  # a blank well: noise only
            return np.full(self.sample.shape, 2000.0) + np.random.default_rng(0).normal(
                0, 5, self.sample.shape
            )
        return gaussian_filter(self.sample, 0.5 + 1.5 * abs(self.z - self.focus_z))

    def instrument_time_s(self) -> float:
        return self.clock

    def full_focus(self) -> float:
        raise AutofocusError("no device")

    def set_continuous_focus(self, on: bool) -> None:
        pass


def test_software_autofocus_finds_the_peak_within_its_budget():
    drive = FakeDrive(focus_z=113.3)
    report = SoftwareAutofocus().focus(drive, 0.0, 0.0)
    assert report.ok and report.method == "software" and report.error is None
    assert report.z_um == pytest.approx(113.3, abs=0.3)
    assert drive.z == pytest.approx(report.z_um)  # left at focus
    assert report.steps == drive.frames <= 16
    assert report.seconds == pytest.approx(drive.clock)


def test_software_autofocus_follows_a_peak_past_its_range_but_not_forever():
    drive = FakeDrive(focus_z=140.0)  # 40 um away, range +-24: one extension finds it
    report = SoftwareAutofocus().focus(drive, 0.0, 0.0)
    assert report.ok and report.z_um == pytest.approx(140.0, abs=0.3)
    drive = FakeDrive(focus_z=140.0)
    tiny = SoftwareAutofocus(coarse_range_um=4.0, coarse_step_um=2.0, max_extensions=0)
    report = tiny.focus(drive, 0.0, 0.0)
    assert not report.ok and "edge of the search" in (report.error or "")
    assert report.z_um == pytest.approx(104.0)  # the best guess: the top of what it saw
    assert drive.z == pytest.approx(104.0)


def test_software_autofocus_fails_on_a_blank_well_and_at_the_drive_limit():
    drive = FakeDrive(focus_z=None, z=50.0)
    report = SoftwareAutofocus().focus(drive, 0.0, 0.0)
    assert not report.ok and "flat focus curve" in (report.error or "")
    assert report.z_um == 50.0 and drive.z == 50.0  # nothing learnt: back where it started
    drive = FakeDrive(focus_z=230.0, z=190.0)  # sharpest beyond the drive's travel
    report = SoftwareAutofocus().focus(drive, 0.0, 0.0)
    assert not report.ok and report.z_um == 200.0
    budget = SoftwareAutofocus(max_steps=5).focus(FakeDrive(focus_z=120.0), 0.0, 0.0)
    assert not budget.ok and "gave up after 5 steps" in (budget.error or "")


def test_map_autofocus_searches_narrowly_once_the_map_has_sites():
    def surface(x, y):
        return 100.0 + 0.1 * x / 1000.0 + 0.05 * y / 1000.0

    autofocus = MapAutofocus()
    reports = []
    for i, (x, y) in enumerate(_grid(10)):
        focus_z = surface(x, y) + (0.8 if i % 2 else -0.8)
        reports.append(autofocus.focus(FakeDrive(focus_z=focus_z), x, y))
        assert reports[-1].ok and abs(reports[-1].z_um - focus_z) < 0.5
    assert [r.method for r in reports[:3]] == ["software"] * 3
    assert all(r.method == "map" and r.predicted_z_um is not None for r in reports[3:])
    seeds = np.mean([r.steps for r in reports[:3]])
    mapped = np.mean([r.steps for r in reports[4:]])
    assert mapped <= 4 and seeds >= 3 * mapped
    # a blank site fails and stays out of the map
    blank = autofocus.focus(FakeDrive(focus_z=None), 50_000, 40_000)
    assert not blank.ok and "flat focus curve" in (blank.error or "")
    assert len(autofocus.focus_map) == 10
    autofocus.start_plate()
    assert len(autofocus.focus_map) == 0


def test_hardware_autofocus_reports_a_failure_instead_of_raising():
    drive = FakeDrive(focus_z=120.0)
    report = HardwareAutofocus(attempts=2).focus(drive, 0.0, 0.0)
    assert not report.ok and report.steps == 2 and "no device" in (report.error or "")


def test_map_autofocus_needs_three_seed_sites():
    with pytest.raises(ValueError, match="seed_sites"):
        MapAutofocus(seed_sites=2)


# -- the direct path: StepScanner on the simulator -------------------------------------------------
def _within_dof(scope: SimulatedMicroscope, wells: list[WellAcquisition]) -> list[float]:
    errors = []
    for well in wells:
        for f in well.fields:
            assert f.z_um is not None
            truth = scope.focus_truth(f.x_um, f.y_um)
            errors.append(abs(f.z_um - truth.cell_z_um) / truth.depth_of_field_um)
    return errors


@pytest.mark.parametrize("mode", ["software", "map"])
def test_step_scanner_focuses_every_field_within_the_depth_of_field(mode):
    scope = SimulatedMicroscope(SIM)
    wells = list(StepScanner(scope, autofocus=mode).scan(ScanPlan(BARCODE, WELLS)))
    assert [w.well for w in wells] == WELLS and not any(w.failed or w.focus_failed for w in wells)
    assert max(_within_dof(scope, wells)) <= 0.5  # |z - cell z| <= DoF / 2
    assert scope.continuous_focus  # a search owned the drive; the lock is back after the scan
    for well in wells:
        (f,) = well.fields
        assert f.autofocus is not None and f.autofocus.ok
        assert f.autofocus.z_um == pytest.approx(f.z_um)
        # instrument time: move + autofocus + exposure, on the simulator's clock
        assert f.instrument_ms is not None and f.instrument_ms > 1000 * f.autofocus.seconds > 0
    if mode == "map":
        assert [w.fields[0].autofocus.method for w in wells[3:]] == ["map"] * 3  # type: ignore[union-attr]


def test_step_scanner_flags_a_hardware_autofocus_failure_and_goes_on():
    scope = SimulatedMicroscope(SIM, af_fail_wells=["B3"])
    wells = list(StepScanner(scope, autofocus="hardware").scan(ScanPlan(BARCODE, WELLS[:3])))
    assert [w.focus_failed for w in wells] == [False, True, False]
    assert not any(w.failed for w in wells)  # the frame was still taken
    failed = wells[1].fields[0].autofocus
    assert failed is not None and failed.method == "hardware" and "B3" in (failed.error or "")
    assert wells[2].fields[0].autofocus.ok  # type: ignore[union-attr]


def test_step_scanner_default_keeps_continuous_focus_and_records_z_and_time():
    scope = SimulatedMicroscope(SIM)
    (well,) = StepScanner(scope).scan(ScanPlan(BARCODE, ["D5"]))
    (f,) = well.fields
    assert f.autofocus is None and scope.continuous_focus
    x, y = SIM.plate.well_center_um("D5")
    assert f.z_um == pytest.approx(scope.focus_truth(x, y).surface_z_um)
    assert f.instrument_ms is not None and f.instrument_ms > 0
    assert well.instrument_ms == pytest.approx(f.instrument_ms)


def test_step_scanner_flags_a_lost_continuous_focus_lock():
    scope = SimulatedMicroscope(SIM, af_fail_wells=["B3"])
    wells = list(StepScanner(scope).scan(ScanPlan(BARCODE, WELLS[:3])))
    assert [w.focus_failed for w in wells] == [False, True, False]
    lost = wells[1].fields[0].autofocus
    assert lost is not None and lost.method == "hardware" and "lost its lock" in (lost.error or "")
    assert wells[0].fields[0].autofocus is None and wells[2].fields[0].autofocus is None


def test_scans_put_continuous_focus_back_as_they_found_it():
    scope = SimulatedMicroscope(SIM)
    assert scope.continuous_focus
    list(StepScanner(scope, autofocus="software").scan(ScanPlan(BARCODE, ["C4"])))
    assert scope.continuous_focus  # the operator's lock is on again after the scan
    scope.set_continuous_focus(False)
    list(StepScanner(scope, autofocus="continuous").scan(ScanPlan(BARCODE, ["C4"])))
    assert not scope.continuous_focus


def test_step_scanner_refuses_autofocus_without_a_focus_drive():
    class NoZ:
        name = "no-z"

    with pytest.raises(ValueError, match="no focus drive"):
        StepScanner(NoZ(), autofocus="software")  # type: ignore[arg-type]


# -- the pycromanager path, in-process on the simulated core ---------------------------------------
@pytest.fixture
def make_core():
    cores: list[SimulatedMMCore] = []

    def make(**kwargs) -> SimulatedMMCore:
        core = build_simulated_core(SIM, **kwargs)
        cores.append(core)
        return core

    yield make
    for core in cores:
        core.unloadAllDevices()


def _scan(core: SimulatedMMCore, plan: ScanPlan, autofocus) -> list[WellAcquisition]:
    scanner = PycromanagerScanner(
        core=core,
        load_plate=functools.partial(set_plate, core),
        settings=PycromanagerSettings(autofocus=autofocus, **FAST),  # type: ignore[arg-type]
    )
    return list(scanner.scan(plan))


def _simulator(core: SimulatedMMCore) -> SimulatedMicroscope:
    camera = core.simulated_device("Camera")
    return camera.simulator  # type: ignore[union-attr]


@pytest.mark.parametrize("mode", ["software", "hardware", "map"])
def test_pycromanager_engine_focuses_fields_with_each_autofocus(make_core, mode):
    core = make_core()
    wells = _scan(core, ScanPlan(BARCODE, WELLS), mode)
    scope = _simulator(core)
    assert [w.well for w in wells] == WELLS and not any(w.failed or w.focus_failed for w in wells)
    for well in wells:
        (f,) = well.fields
        assert f.autofocus is not None and f.autofocus.ok
        assert f.z_um == pytest.approx(f.autofocus.z_um, abs=1e-6)  # exposed where AF put it
        assert f.metadata["z_um"] == pytest.approx(f.z_um)
        assert f.instrument_ms is not None and f.instrument_ms >= 1000 * f.autofocus.seconds
    errors = _within_dof(scope, wells)
    if mode == "hardware":
        # the reflection lock finds the well bottom; the cells sit a little off it
        surface = [
            scope.focus_truth(w.fields[0].x_um, w.fields[0].y_um).surface_z_um for w in wells
        ]
        assert [w.fields[0].z_um for w in wells] == pytest.approx(surface, abs=1e-6)
    else:
        assert max(errors) <= 0.5
    if mode == "map":
        assert [w.fields[0].autofocus.method for w in wells] == ["software"] * 3 + ["map"] * 3  # type: ignore[union-attr]


def test_pycromanager_flags_autofocus_failures_and_the_plate_goes_on(make_core):
    core = make_core(af_fail_wells=["B3"])
    wells = _scan(core, ScanPlan(BARCODE, WELLS[:3]), "hardware")
    assert [w.focus_failed for w in wells] == [False, True, False]
    assert not any(w.failed for w in wells) and all(len(w.fields) == 1 for w in wells)
    assert "no reflection" in (wells[1].fields[0].autofocus.error or "")  # type: ignore[union-attr]
    # software autofocus over a blank position (between wells: no cells) fails flat
    core = make_core()
    x, y = SIM.plate.well_center_um("B2")
    plan = ScanPlan(BARCODE, ["B2", "B3"], fields_per_well=2,
                    field_offsets_um=((0.0, 0.0), (SIM.plate.pitch_um / 2, 0.0)))  # fmt: skip
    wells = _scan(core, plan, "software")
    assert [w.focus_failed for w in wells] == [True, True]
    for well in wells:
        centre, between = well.fields
        assert centre.autofocus.ok  # type: ignore[union-attr]
        assert not between.autofocus.ok  # type: ignore[union-attr]
        assert "flat focus curve" in (between.autofocus.error or "")  # type: ignore[union-attr]
    # a range too tiny to reach the peak (the drive starts 8 um off it): the edge of the search
    tiny = SoftwareAutofocus(coarse_range_um=2.0, coarse_step_um=1.0, max_extensions=0)
    core = make_core()
    scope = _simulator(core)
    scope.load_plate(BARCODE)
    x, y = SIM.plate.well_center_um("C5")
    scope.set_continuous_focus(False)
    scope.move_z(scope.focus_truth(x, y).cell_z_um + 8.0)
    (well,) = _scan(core, ScanPlan(BARCODE, ["C5"]), tiny)
    report = well.fields[0].autofocus
    assert well.focus_failed and report is not None and not well.failed
    assert "edge of the search" in (report.error or "") and report.steps == 5


def test_pycromanager_flags_a_lost_continuous_focus_lock(make_core):
    core = make_core(af_fail_wells=["B3"])
    wells = _scan(core, ScanPlan(BARCODE, WELLS[:3]), "continuous")
    assert [w.focus_failed for w in wells] == [False, True, False]
    assert not any(w.failed for w in wells)
    lost = wells[1].fields[0].autofocus
    assert lost is not None and "lost its lock" in (lost.error or "")


def test_pycromanager_scan_restores_continuous_focus(make_core):
    core = make_core()
    assert core.isContinuousFocusEnabled()
    _scan(core, ScanPlan(BARCODE, ["C4"]), "map")
    assert core.isContinuousFocusEnabled()


def test_focus_map_of_a_scan_follows_the_simulators_surface(make_core):
    core = make_core()
    autofocus = MapAutofocus()
    wells = ["B2", "B6", "B10", "D3", "D8", "F2", "F6", "F11", "G4", "G9"]
    _scan(core, ScanPlan(BARCODE, wells), autofocus)
    scope = _simulator(core)
    assert len(autofocus.focus_map) == len(wells)
    errors = []
    for well in ["C5", "E4", "E9", "C9"]:  # wells the scan never visited
        x, y = SIM.plate.well_center_um(well)
        prediction = autofocus.focus_map.predict(x, y)
        assert prediction is not None
        truth = scope.focus_truth(x, y)
        errors.append(prediction.z_um - truth.cell_z_um)
        # within its own uncertainty (3 sigma) of the cells' z
        assert abs(errors[-1]) <= 3 * prediction.sigma_um
    # the map explains the plate's tilt and bow: what is left is the wells' own scatter
    assert math.sqrt(np.mean(np.square(errors))) < 3 * SIM.focus_well_sd_um


def test_core_focus_drive_reads_limits_and_the_instrument_clock(make_core):
    core = make_core()
    drive = CoreFocusDrive(core)
    assert drive.z_limits_um == SIM.z_limits_um
    assert drive.has_instrument_clock and drive.has_autofocus_device
    before = drive.instrument_time_s()
    drive.set_continuous_focus(False)
    drive.move_z(drive.z_um + 5.0)
    assert drive.instrument_time_s() > before
    assert drive.snap_focus_frame().shape == SIM.camera_shape


def test_microscope_focus_drive_over_the_simulator():
    scope = SimulatedMicroscope(SIM, barcode=BARCODE)
    drive = MicroscopeFocusDrive(scope)
    assert drive.z_limits_um == SIM.z_limits_um and drive.has_autofocus_device
    ScanFocus("software").prepare(drive)
    assert not scope.continuous_focus
    ScanFocus("continuous").prepare(drive)
    assert scope.continuous_focus


# -- backends --------------------------------------------------------------------------------------
def test_backend_options_validate_autofocus_and_timing():
    with pytest.raises(ValueError, match="unknown autofocus mode 'magic'"):
        BackendOptions(autofocus="magic")
    with pytest.raises(ValueError, match="unknown simulator timing 'slow'"):
        BackendOptions(sim_timing="slow")
    options = BackendOptions(simulation_seed=5, autofocus="hardware", sim_timing="realtime")
    assert options.simulation_config().timing_mode == "realtime"


@pytest.mark.parametrize("name", ["simulated", "pycromanager-sim"])
def test_simulated_backends_scan_with_the_autofocus_option(name):
    options = BackendOptions(simulation_seed=5, autofocus="hardware")
    (well,) = get_backend(name).build(options).scan(ScanPlan(BARCODE, ["B2"]))
    (f,) = well.fields
    assert f.autofocus is not None and f.autofocus.method == "hardware" and f.autofocus.ok
    assert f.z_um is not None and f.instrument_ms is not None and f.instrument_ms > 0


def test_a_fields_channels_share_one_focus_on_both_paths(make_core):
    channels = ("Phase", "Brightfield")
    scope = SimulatedMicroscope(SIM)
    (direct,) = StepScanner(scope, channels=channels, autofocus="software").scan(
        ScanPlan(BARCODE, ["C3"])
    )
    core = make_core()
    settings = PycromanagerSettings(autofocus="software", channels=channels, **FAST)  # type: ignore[arg-type]
    scanner = PycromanagerScanner(
        core=core, settings=settings, load_plate=lambda barcode: set_plate(core, barcode)
    )
    (engine,) = scanner.scan(ScanPlan(BARCODE, ["C3"]))
    for well, simulator in ((direct, scope), (engine, _simulator(core))):
        (f,) = well.fields
        assert f.image.shape[2] == 2 and f.autofocus is not None and f.autofocus.ok
        assert f.z_um == pytest.approx(f.autofocus.z_um, abs=1e-6)
        truth = simulator.focus_truth(f.x_um, f.y_um)
        assert f.z_um is not None and abs(f.z_um - truth.cell_z_um) <= truth.depth_of_field_um / 2
