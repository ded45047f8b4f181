"""Focus QC against the simulator's true defocus: the focus ratio falls with the distance from a
field's cell plane whatever the confluence, the old Laplacian rule misses defocus, and
``prepare`` flags (or excludes) what is out of the depth of field."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from hardware.sim import SimulatedMicroscope, SimulationConfig, render_field
from models.pipeline import PipelineConfig, focus_ratio, prepare, to_uint8
from models.pipeline.normalise import FOCUS_RATIO_MIN_SIDE

CONFIG = SimulationConfig(seed=21)
BARCODE = "FOCUS-QC-T"
WELLS = ("B3", "D7", "G10")


def _frame_at(well: str, dz_um: float, objective: str = "40x") -> tuple[np.ndarray, float]:
    """A frame of ``well``'s centre ``dz_um`` from its cells' plane, and the depth of field."""
    microscope = SimulatedMicroscope(CONFIG, barcode=BARCODE)
    microscope.set_objective(objective)  # type: ignore[arg-type]
    x, y = CONFIG.plate.well_center_um(well)
    truth = microscope.focus_truth(x, y)
    frame = render_field(CONFIG, BARCODE, well, x, y, objective, z_um=truth.cell_z_um + dz_um)
    return frame, truth.depth_of_field_um


@pytest.mark.parametrize("well", WELLS)
def test_focus_ratio_falls_with_distance_from_the_cell_plane(well: str) -> None:
    _, dof = _frame_at(well, 0.0)
    distances = [0.0, dof / 4, dof, 2 * dof, 5 * dof, 30.0]
    ratios = [focus_ratio(to_uint8(_frame_at(well, dz)[0], CONFIG.bit_depth)) for dz in distances]
    assert all(a > b for a, b in itertools.pairwise(ratios[:-1])), ratios
    threshold = PipelineConfig().min_focus_ratio
    assert ratios[0] > threshold > ratios[2], ratios  # in focus vs one depth of field off
    assert ratios[-1] == 0.0  # 30 um off: nothing above the noise


def test_focus_ratio_does_not_depend_on_exposure() -> None:
    frame, _ = _frame_at("D7", 0.0)
    bright = to_uint8(frame, CONFIG.bit_depth)
    dim = (bright.astype(np.float32) * 0.6).round().astype(np.uint8)
    assert focus_ratio(dim) == pytest.approx(focus_ratio(bright), rel=0.05)


def test_focus_ratio_of_frames_without_detail_is_zero() -> None:
    rng = np.random.default_rng(0)
    flat = np.full((240, 320), 128, np.uint8)
    noise = np.clip(128 + 3 * rng.standard_normal((240, 320)), 0, 255).astype(np.uint8)
    assert focus_ratio(flat) == 0.0
    assert focus_ratio(noise) == 0.0


def test_focus_ratio_refuses_what_it_cannot_measure() -> None:
    with pytest.raises(ValueError, match="uint8"):
        focus_ratio(np.zeros((64, 64), np.uint16))
    with pytest.raises(ValueError, match=str(FOCUS_RATIO_MIN_SIDE)):
        focus_ratio(np.zeros((FOCUS_RATIO_MIN_SIDE - 1, 64), np.uint8))


def test_old_laplacian_rule_misses_defocus_and_the_ratio_does_not() -> None:
    config = PipelineConfig()
    _, dof = _frame_at("D7", 0.0)
    frame, _ = _frame_at("D7", 2 * dof)  # twice the depth of field off: visibly blurred
    qc = prepare(frame, config, bit_depth=CONFIG.bit_depth).qc
    assert qc.focus_score > config.min_focus  # what the issue measured: 20 never fires
    assert qc.focus_ratio < config.min_focus_ratio
    assert "out_of_focus" in qc.flags and not qc.excluded


def test_prepare_flags_by_default_and_excludes_when_asked() -> None:
    sharp, dof = _frame_at("B3", 0.0)
    blurred, _ = _frame_at("B3", 3 * dof)
    config = PipelineConfig()
    assert "out_of_focus" not in prepare(sharp, config, bit_depth=CONFIG.bit_depth).qc.flags
    flagged = prepare(blurred, config, bit_depth=CONFIG.bit_depth)
    assert flagged.qc.flags == ("out_of_focus",) and flagged.features is not None
    strict = dataclasses.replace(config, exclude_out_of_focus=True)
    excluded = prepare(blurred, strict, bit_depth=CONFIG.bit_depth)
    assert excluded.qc.excluded and excluded.features is None
    assert excluded.qc.reason is not None and "focus ratio" in excluded.qc.reason
    off = dataclasses.replace(config, min_focus_ratio=0.0)
    assert "out_of_focus" not in prepare(blurred, off, bit_depth=CONFIG.bit_depth).qc.flags


def test_min_focus_ratio_is_validated() -> None:
    with pytest.raises(ValueError, match="min_focus_ratio"):
        PipelineConfig(min_focus_ratio=-1.0)
    legacy = PipelineConfig().to_dict()
    del legacy["min_focus_ratio"]  # a card written before the ratio existed
    assert PipelineConfig.from_dict(legacy).min_focus_ratio == PipelineConfig().min_focus_ratio
