"""What fixes a simulated plate: :class:`SimulationConfig`, and the stable seeding every part of
the simulator draws its randomness from (so that identical arguments render identical frames in
any process)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from hardware.plate import SBS_96, PlateGeometry

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

    def __post_init__(self) -> None:
        for name in ("difficulty", "label_noise", "high_fraction", "overexposure_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value}")
        if not 8 <= self.bit_depth <= 16:
            raise ValueError(f"bit_depth must be within [8, 16], got {self.bit_depth}")


def _stable_seed(*parts: object) -> int:
    """A 64-bit seed from a stable hash of ``parts`` (Python's hash() is salted per process)."""
    text = "\x1f".join(repr(part) for part in parts)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def _rng(*parts: object) -> np.random.Generator:
    return np.random.default_rng(_stable_seed(*parts))
