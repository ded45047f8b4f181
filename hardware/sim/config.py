"""What fixes a simulated plate: :class:`SimulationConfig`, and the stable seeding every part of
the simulator draws its randomness from (so that identical arguments render identical frames in
any process)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from hardware.plate import SBS_96, PlateGeometry
from hardware.sim.timing import TIMING_MODES, InstrumentTiming, TimingMode

FloatArray = npt.NDArray[np.float32]
Float64Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class SimulationConfig:
    """Everything that fixes what the simulator renders.

    Attributes:
        seed: master seed; with the barcode it determines every well, cell and noise pixel.
        difficulty: 0..1, how much the classes overlap. Senescent fractions are Beta
            distributed per well with means 0.06 (high) vs 0.55 (low) at 0, 0.13 vs 0.45 at
            0.5 and 0.20 vs 0.35 at 1, and spread widening with difficulty; the non-senescent
            cells of low wells are 30 % larger at 0, 15 % at 0.5, equal at 1. At the default
            0.5 about 1.5 % of wells are ambiguous from morphology alone, on top of
            ``label_noise``: a classifier that knew each well's true senescent fraction would
            score about 95 %, one counting cells in a single 40x field about 93-94 %.
        label_noise: share of wells whose morphology is drawn from the *other* class while the
            FCT label stays put (biology that morphology does not show).
        high_fraction: prior probability that a well is "high".
        camera_shape: (H, W) of a frame, in pixels.
        camera_pixel_um: physical camera pixel, in um.
        bit_depth: ADC depth; frames are uint16 holding values < 2**bit_depth.
        overexposure_rate: share of frames that come out overexposed (8-bit mean > 240).
        plate: plate geometry (stage coordinates of wells).
        focus_z_nominal_um: focus drive position of the plate's mean well-bottom surface, um.
        focus_tilt_um: largest tilt of the plate across its wells, in x and in y, um (each
            plate draws a tilt of 50-100 % of it per axis, either sign).
        focus_bow_um: largest bow of the plate (centre against corners, quadratic), um (each
            plate draws 50-100 % of it, either sign).
        focus_well_sd_um: standard deviation of each well bottom's own offset, um.
        depth_of_field_um: depth of field per objective, um, as (objective, um) pairs: a field
            is sharp (defocus blur sigma <= 1.5 um) within +-DoF/2 of its cells' z.
        z_limits_um: travel of the focus drive, (lower, upper) um.
        af_capture_range_um: the reflection autofocus finds the surface only within this
            distance of the focus drive's position, um.
        timing: the instrument's timing figures (:class:`InstrumentTiming`).
        timing_mode: "fast" records instrument time without waiting; "realtime" also sleeps it.
        continuous_focus: reflection autofocus tracks the surface after every XY move (on at
            start; :meth:`SimulatedMicroscope.set_continuous_focus` switches it).
    """

    seed: int = 0
    difficulty: float = 0.5
    label_noise: float = 0.03
    high_fraction: float = 0.5
    camera_shape: tuple[int, int] = (528, 720)
    camera_pixel_um: float = 6.5
    bit_depth: int = 12
    overexposure_rate: float = 0.03
    plate: PlateGeometry = SBS_96
    focus_z_nominal_um: float = 1500.0
    focus_tilt_um: float = 15.0
    focus_bow_um: float = 10.0
    focus_well_sd_um: float = 1.5
    depth_of_field_um: tuple[tuple[str, float], ...] = (("40x", 2.0), ("100x", 1.0))
    z_limits_um: tuple[float, float] = (0.0, 5000.0)
    af_capture_range_um: float = 200.0
    timing: InstrumentTiming = field(default_factory=InstrumentTiming)
    timing_mode: TimingMode = "fast"
    continuous_focus: bool = True

    def __post_init__(self) -> None:
        for name in ("difficulty", "label_noise", "high_fraction", "overexposure_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value}")
        if not 8 <= self.bit_depth <= 16:
            raise ValueError(f"bit_depth must be within [8, 16], got {self.bit_depth}")
        low, high = self.z_limits_um
        if not low < high:
            raise ValueError(
                f"z_limits_um must be (lower, upper) with lower < upper, got {low, high}"
            )
        if not low <= self.focus_z_nominal_um <= high:
            raise ValueError(
                f"focus_z_nominal_um {self.focus_z_nominal_um} is outside z_limits_um {low, high}"
            )
        if any(dof <= 0 for _, dof in self.depth_of_field_um):
            raise ValueError(f"depth_of_field_um must be positive, got {self.depth_of_field_um}")
        if self.timing_mode not in TIMING_MODES:
            raise ValueError(f"timing_mode must be one of {TIMING_MODES}, got {self.timing_mode!r}")
        if self.af_capture_range_um <= 0:
            raise ValueError(
                f"af_capture_range_um must be positive, got {self.af_capture_range_um}"
            )

    def depth_of_field(self, objective: str) -> float:
        """Depth of field of ``objective``, um.

        Raises:
            ValueError: an objective without a depth of field.
        """
        for name, dof in self.depth_of_field_um:
            if name == objective:
                return float(dof)
        known = [name for name, _ in self.depth_of_field_um]
        raise ValueError(f"no depth of field for objective {objective!r}; known: {known}")

    def blur_per_um(self, objective: str) -> float:
        """Growth of the defocus blur sigma per um of focus error at ``objective``: chosen so
        that DoF/2 from the cells' z gives a sigma of 1.5 um."""
        return 1.5 / (self.depth_of_field(objective) / 2.0)


def _stable_seed(*parts: object) -> int:
    """A 64-bit seed from a stable hash of ``parts`` (Python's hash() is salted per process)."""
    text = "\x1f".join(repr(part) for part in parts)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def _rng(*parts: object) -> np.random.Generator:
    return np.random.default_rng(_stable_seed(*parts))
