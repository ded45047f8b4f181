"""The simulated phase-contrast microscope: determinism, geometry, optics, truth, protocol."""

from __future__ import annotations

import csv
import io
import time

import cv2
import numpy as np
import pytest

from hardware.microscope import (
    HardwareError,
    Microscope,
    ScanPlan,
    StepScanner,
    WellAcquisitionError,
)
from hardware.sim import (
    SimulatedMicroscope,
    SimulationConfig,
    fct_export_csv,
    pixel_size_um,
    plate_truth,
    render_field,
    well_at,
    well_truth,
)
from hardware.sim import cells as sim_cells
from hardware.sim import truth as sim_truth

BARCODE = "PLATE-0001"
CONFIG = SimulationConfig(seed=7, overexposure_rate=0.0)
SMALL = SimulationConfig(seed=7, overexposure_rate=0.0, camera_shape=(132, 180))


def centre(config: SimulationConfig, well: str) -> tuple[float, float]:
    return config.plate.well_center_um(well)


def to_8bit(frame: np.ndarray, bit_depth: int = 12) -> np.ndarray:
    return (frame >> (bit_depth - 8)).astype(np.uint8)


def test_render_is_bit_identical_on_repeat_and_after_cache_clear():
    x, y = centre(CONFIG, "C4")
    first = render_field(CONFIG, BARCODE, "C4", x + 123.4, y - 56.7, "40x")
    again = render_field(CONFIG, BARCODE, "c04", x + 123.4, y - 56.7, "40x")
    sim_cells._tile_cells.cache_clear()
    sim_truth._well_truth.cache_clear()
    cold = render_field(CONFIG, BARCODE, "C4", x + 123.4, y - 56.7, "40x")
    assert np.array_equal(first, again)
    assert np.array_equal(first, cold)
    other_plate = render_field(CONFIG, "PLATE-0002", "C4", x + 123.4, y - 56.7, "40x")
    assert not np.array_equal(first, other_plate)


@pytest.mark.parametrize("bit_depth", [12, 14])
@pytest.mark.parametrize("objective", ["40x", "100x"])
def test_frame_dtype_shape_and_range(objective, bit_depth):
    config = SimulationConfig(seed=1, bit_depth=bit_depth, camera_shape=(132, 180))
    frame = render_field(config, BARCODE, "D6", *centre(config, "D6"), objective)
    assert frame.dtype == np.uint16
    assert frame.shape == (132, 180)
    assert int(frame.max()) < 2**bit_depth
    assert 90 <= to_8bit(frame, bit_depth).mean() <= 170
    assert frame.std() > 0  # cells and noise, not a flat frame


def test_pixel_size_follows_objective():
    assert pixel_size_um(CONFIG, "40x") == pytest.approx(6.5 / 4.0)
    assert pixel_size_um(CONFIG, "100x") == pytest.approx(6.5 / 10.0)
    with pytest.raises(ValueError):
        pixel_size_um(CONFIG, "20x")


def _centre_match(low: np.ndarray, high: np.ndarray, scale: float, dx: int = 0) -> float:
    """Correlation of ``high`` resized by ``scale`` with the same-size centre crop of ``low``
    (moved ``dx`` pixels to the right)."""
    small = cv2.resize(high, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    (h, w), (sh, sw) = low.shape, small.shape
    top, left = (h - sh) // 2, (w - sw) // 2 + dx
    return float(np.corrcoef(small.ravel(), low[top : top + sh, left : left + sw].ravel())[0, 1])


def test_100x_frame_shows_the_same_cells_larger():
    x, y = centre(CONFIG, "E5")
    low = render_field(CONFIG, BARCODE, "E5", x, y, "40x").astype(np.float32)
    high = render_field(CONFIG, BARCODE, "E5", x, y, "100x").astype(np.float32)
    # Shrunk by the magnification ratio 40/100, the 100x frame is the centre of the 40x frame;
    # at any other scale, or off centre, it matches much worse.
    scales = (0.25, 0.4, 0.6, 1.0)
    matches = [_centre_match(low, high, scale) for scale in scales]
    assert scales[int(np.argmax(matches))] == 0.4
    assert matches[1] > 0.7
    assert matches[1] > _centre_match(low, high, 0.4, dx=120) + 0.4


def test_moving_the_stage_shifts_the_content():
    x, y = centre(CONFIG, "B3")
    px = pixel_size_um(CONFIG, "40x")
    shift = (83.0, -41.0)  # pixels
    a = render_field(CONFIG, BARCODE, "B3", x, y, "40x").astype(np.float32)
    b = render_field(CONFIG, BARCODE, "B3", x + shift[0] * px, y + shift[1] * px, "40x").astype(
        np.float32
    )
    window = cv2.createHanningWindow(a.shape[::-1], cv2.CV_32F)
    (dx, dy), response = cv2.phaseCorrelate(a, b, window)
    # Moving the stage by +d moves the content by -d in the image.
    assert dx == pytest.approx(-shift[0], abs=2.0)
    assert dy == pytest.approx(-shift[1], abs=2.0)
    assert response > 0.3


def test_overexposed_frames_occur_at_about_the_configured_rate():
    config = SimulationConfig(seed=3, overexposure_rate=0.1, camera_shape=(66, 90))
    means = []
    for well in config.plate.well_names:
        x, y = centre(config, well)
        for dx in (0.0, 500.0):
            means.append(to_8bit(render_field(config, BARCODE, well, x + dx, y, "40x")).mean())
    means_arr = np.array(means)
    over = means_arr > 240
    assert 8 <= over.sum() <= 35  # 192 frames at 10 %: 19 expected
    assert means_arr[~over].max() < 200  # the rest are normal exposures, far from saturation


def test_normal_frames_are_mid_grey():
    means = [
        to_8bit(render_field(CONFIG, BARCODE, well, *centre(CONFIG, well), "40x")).mean()
        for well in ("A1", "D7", "H12")
    ]
    assert all(90 <= m <= 170 for m in means), means


def test_no_cells_beyond_the_well_wall():
    radius = CONFIG.plate.well_diameter_um / 2.0
    x, y = centre(CONFIG, "D4")
    px = pixel_size_um(CONFIG, "40x")
    frame = render_field(CONFIG, BARCODE, "D4", x + radius + 300.0, y, "40x").astype(np.float32)
    h, w = frame.shape
    cols = x + radius + 300.0 + (np.arange(w) - (w - 1) / 2) * px - x
    rows = (np.arange(h) - (h - 1) / 2) * px
    beyond = np.hypot(cols[None, :], rows[:, None]) > radius + 150.0
    inside = np.hypot(cols[None, :], rows[:, None]) < radius - 100.0
    # The wall region holds only smooth shading plus noise: no cell edges.
    grad = np.abs(cv2.Laplacian(cv2.GaussianBlur(frame, (0, 0), 1.0), cv2.CV_32F))
    assert grad[beyond].mean() < 0.5 * grad[inside].mean()


def _detail(frame: np.ndarray) -> float:
    """Mean absolute detail at the scale of cell edges: blind to pixel noise and shading."""
    image = frame.astype(np.float32)
    band = cv2.GaussianBlur(image, (0, 0), 1.5) - cv2.GaussianBlur(image, (0, 0), 6.0)
    return float(np.abs(band).mean())


def test_plate_truth_and_fct_are_consistent():
    truth = plate_truth(CONFIG, BARCODE)
    assert list(truth) == list(CONFIG.plate.well_names)
    assert len(truth) == 96
    labels = {t.label for t in truth.values()}
    assert labels == {"high", "low"}
    for t in truth.values():
        assert (t.label == "high") == (t.cd73_pct > 95.0 and t.cd90_pct > 95.0)
        assert 0.0 <= t.senescent_fraction <= 1.0
        assert 0.1 <= t.confluence <= 0.7
        assert t.event_count > 1000
    assert well_truth(CONFIG, BARCODE, "b07") == truth["B7"]


def test_edge_wells_grow_a_little_less():
    truths = [t for code in ("P1", "P2", "P3", "P4") for t in plate_truth(CONFIG, code).values()]
    edge = [t.confluence for t in truths if CONFIG.plate.is_edge_well(t.well)]
    inner = [t.confluence for t in truths if not CONFIG.plate.is_edge_well(t.well)]
    assert np.mean(edge) < np.mean(inner)


def test_label_noise_flips_morphology_only():
    config = SimulationConfig(seed=2, label_noise=0.25)
    truths = [t for code in ("P1", "P2") for t in plate_truth(config, code).values()]
    flipped = [t for t in truths if t.morphology != t.label]
    assert 0.15 < len(flipped) / len(truths) < 0.35
    clean = [
        t
        for code in ("P1", "P2")
        for t in plate_truth(SimulationConfig(label_noise=0.0), code).values()
    ]
    assert all(t.morphology == t.label for t in clean)


def test_difficulty_sets_how_far_apart_the_classes_are():
    def gap(difficulty: float) -> float:
        config = SimulationConfig(seed=5, difficulty=difficulty, label_noise=0.0)
        truths = [t for code in ("A", "B", "C") for t in plate_truth(config, code).values()]
        high = [t.senescent_fraction for t in truths if t.label == "high"]
        low = [t.senescent_fraction for t in truths if t.label == "low"]
        return float(np.mean(low) - np.mean(high))

    assert gap(0.0) > gap(0.5) > gap(1.0) > 0.0


def test_fct_export_parses_back_to_the_labels():
    text = fct_export_csv(CONFIG, BARCODE)
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("Well,"))
    assert BARCODE in "\n".join(lines[:header])
    rows = list(csv.DictReader(io.StringIO("\n".join(lines[header:]))))
    assert len(rows) == 96
    assert list(rows[0]) == ["Well", "Sample ID", "Events", "CD73-FITC+ %", "CD90-PE+ %"]
    truth = plate_truth(CONFIG, BARCODE)
    for row in rows:
        high = float(row["CD73-FITC+ %"]) > 95 and float(row["CD90-PE+ %"]) > 95
        assert ("high" if high else "low") == truth[row["Well"]].label
        assert int(row["Events"]) == truth[row["Well"]].event_count


def test_well_at_finds_the_well_under_the_stage():
    plate = CONFIG.plate
    x, y = plate.well_center_um("F9")
    assert well_at(plate, x, y) == "F9"
    assert well_at(plate, x + 3000.0, y) == "F9"
    assert well_at(plate, x + 4500.0, y) is None  # between wells
    assert well_at(plate, 0.0, 0.0) is None


def test_simulated_microscope_satisfies_the_protocol():
    scope = SimulatedMicroscope(SMALL, barcode=BARCODE, fail_wells=["b2"])
    assert isinstance(scope, Microscope)
    assert scope.name == "simulated"
    assert scope.objective == "40x"
    assert scope.pixel_size_um == pytest.approx(1.625)
    scope.set_objective("100x")
    assert scope.pixel_size_um == pytest.approx(0.65)
    with pytest.raises(ValueError):
        scope.set_objective("20x")  # type: ignore[arg-type]

    x, y = centre(SMALL, "C3")
    scope.move_to(x + 10.0, y)
    frame = scope.snap("C3", 0)
    assert np.array_equal(frame, render_field(SMALL, BARCODE, "C3", x + 10.0, y, "100x"))
    scope.barcode = "OTHER"
    other = scope.snap("C3", 0)
    assert not np.array_equal(other, frame)
    scope.load_plate(BARCODE)
    assert scope.barcode == BARCODE
    assert np.array_equal(scope.snap("C3", 0), frame)

    scope.move_to(*centre(SMALL, "B2"))
    with pytest.raises(WellAcquisitionError):
        scope.snap("B2", 0)

    # Between wells there is nothing to see but background and noise.
    scope.move_to(x + 4500.0, y)
    empty = scope.snap("C3", 1)
    assert _detail(empty) < 0.5 * _detail(frame)

    scope.close()
    with pytest.raises(HardwareError):
        scope.snap("C3", 0)


def test_step_scanner_runs_a_plate_on_the_simulator():
    scope = SimulatedMicroscope(SMALL, fail_wells=["A2"])
    plan = ScanPlan(barcode=BARCODE, wells=["A1", "A2", "B1"], fields_per_well=2)
    wells = list(StepScanner(scope, retries=0).scan(plan))
    assert [w.well for w in wells] == ["A1", "A2", "B1"]
    assert [w.failed for w in wells] == [False, True, False]
    assert all(f.image.shape == (132, 180) for w in wells for f in w.fields)
    first = wells[0].fields
    assert not np.array_equal(first[0].image, first[1].image)


def _dark_fraction(frame: np.ndarray) -> float:
    image = frame.astype(np.float32)
    return float((image < 0.85 * np.median(image)).mean())


def test_classes_differ_on_average_but_overlap_on_one_statistic():
    config = SimulationConfig(seed=11, overexposure_rate=0.0, camera_shape=(264, 360))
    truth = plate_truth(config, BARCODE)
    stat = {
        well: _dark_fraction(render_field(config, BARCODE, well, *centre(config, well), "40x"))
        for well in truth
    }
    high = np.array([stat[w] for w, t in truth.items() if t.label == "high"])
    low = np.array([stat[w] for w, t in truth.items() if t.label == "low"])
    # Flattened senescent cells shade off towards the background, so high wells hold more
    # dark pixels on average ...
    assert high.mean() > low.mean() + 0.02
    # ... but confluence varies from well to well, so one statistic cannot separate them.
    assert low.max() > high.min()
    accuracy = max(
        ((np.r_[high, low] > t) == np.r_[np.ones(high.size), np.zeros(low.size)]).mean()
        for t in np.r_[high, low]
    )
    assert accuracy < 0.95


def test_config_rejects_out_of_range_values():
    with pytest.raises(ValueError):
        SimulationConfig(difficulty=1.5)
    with pytest.raises(ValueError):
        SimulationConfig(overexposure_rate=-0.1)


def test_rendering_is_fast_enough():
    x, y = centre(CONFIG, "G8")
    render_field(CONFIG, BARCODE, "G8", x, y, "40x")  # warm the tile cache
    started = time.perf_counter()
    for i in range(5):
        render_field(CONFIG, BARCODE, "G8", x + i, y, "40x")
    per_frame = (time.perf_counter() - started) / 5
    # The budget is about 40 ms on one core; the bound leaves room for slow CI machines.
    assert per_frame < 0.25, f"{per_frame * 1000:.0f} ms per frame"
