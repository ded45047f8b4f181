"""Where the simulated plate is in focus: its focus surface, and what a focus error does.

A real plate is not flat against the focus drive: it sits tilted in its holder, its bottom bows
by some um, and each well bottom lies a little above or below its neighbours. Across a 96-well
plate that is tens of um, against a depth of field of 1-2 um at 40x, which is why every well
needs focusing. Each simulated plate (seed, barcode) has such a surface, in focus drive
coordinates (um; larger z = objective closer to the sample):

    surface(x, y) = focus_z_nominal_um + tilt_x * u / 2 + tilt_y * v / 2
                    + bow * (1 - (u^2 + v^2) / 2) + offset(well under (x, y))

with u, v in [-1, 1] across the well grid (centre of A1 to the last well), tilts and bow drawn
per plate (50-100 % of ``focus_tilt_um`` / ``focus_bow_um``, either sign) and a per-well offset
~ N(0, ``focus_well_sd_um``) inside each well bottom (none between wells). The reflection
autofocus locks on this surface.

The cells of a field do not lie exactly on it: each field's cells sit at their own z (a
per-field draw in :mod:`hardware.sim.optics`), and the frame's defocus blur sigma is
``blur_per_um * |z - cell_z|`` (see :meth:`SimulationConfig.blur_per_um`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from hardware.plate import PlateGeometry
from hardware.sim.config import SimulationConfig, _rng


def well_at(plate: PlateGeometry, x_um: float, y_um: float) -> str | None:
    """The well whose bottom contains stage position (x_um, y_um), or None between wells
    (:meth:`PlateGeometry.well_at`: rotation and square wells included)."""
    return plate.well_at(x_um, y_um)


@dataclass(frozen=True)
class FocusTruth:
    """Ground truth of focus at one site, for tests and benchmarks.

    Attributes:
        surface_z_um: the reflection surface (well bottom) under the site: where the
            reflection autofocus locks with offset 0, um.
        cell_z_um: the z of zero defocus blur for the field at the site at the current
            objective (the cells' own z), um.
        depth_of_field_um: the current objective's depth of field: frames within +-DoF/2 of
            ``cell_z_um`` are sharp (blur sigma <= 1.5 um).
    """

    surface_z_um: float
    cell_z_um: float
    depth_of_field_um: float

    def in_focus(self, z_um: float) -> bool:
        """True when a frame exposed at ``z_um`` lies within the depth of field."""
        return abs(z_um - self.cell_z_um) <= self.depth_of_field_um / 2.0


@dataclass(frozen=True)
class FocusSurface:
    """One plate's focus surface (see the module docstring).

    Attributes:
        nominal_um: mean height, um.
        tilt_x_um, tilt_y_um: change across the well grid in x and in y, um.
        bow_um: height of the grid's centre over its corners, um.
        well_offsets_um: each well bottom's own offset, um, as (well, offset) pairs.
        plate: the geometry the surface is laid over.
    """

    nominal_um: float
    tilt_x_um: float
    tilt_y_um: float
    bow_um: float
    well_offsets_um: tuple[tuple[str, float], ...]
    plate: PlateGeometry

    def __post_init__(self) -> None:
        # a lookup table beside the (hashable) pairs; frozen, so set through object
        object.__setattr__(self, "_offsets", dict(self.well_offsets_um))

    def z_um(self, x_um: float, y_um: float) -> float:
        """Surface height under stage position (x_um, y_um), um."""
        plate = self.plate
        x0, y0 = plate.a1_center_um
        half_x = max((plate.columns - 1) * plate.pitch_um / 2.0, plate.pitch_um / 2.0)
        half_y = max((plate.rows - 1) * plate.pitch_um / 2.0, plate.pitch_um / 2.0)
        u = (x_um - (x0 + (plate.columns - 1) * plate.pitch_um / 2.0)) / half_x
        v = (y_um - (y0 + (plate.rows - 1) * plate.pitch_um / 2.0)) / half_y
        z = self.nominal_um + self.tilt_x_um * u / 2.0 + self.tilt_y_um * v / 2.0
        z += self.bow_um * (1.0 - (u * u + v * v) / 2.0)
        well = well_at(plate, x_um, y_um)
        if well is not None:
            offsets: dict[str, float] = self.__dict__["_offsets"]
            z += offsets[well]
        return float(z)


@lru_cache(maxsize=64)
def focus_surface(config: SimulationConfig, barcode: str) -> FocusSurface:
    """The focus surface of plate ``barcode`` under ``config`` (seeded by seed and barcode:
    identical arguments give an identical surface in any process)."""
    rng = _rng(config.seed, barcode, "focus surface")

    def signed(amplitude: float) -> float:
        magnitude = amplitude * rng.uniform(0.5, 1.0)
        return float(magnitude if rng.random() < 0.5 else -magnitude)

    tilt_x = signed(config.focus_tilt_um)
    tilt_y = signed(config.focus_tilt_um)
    bow = signed(config.focus_bow_um)
    offsets = tuple(
        (well, float(_rng(config.seed, barcode, well, "well bottom").normal(0.0, 1.0)))
        for well in config.plate.well_names
    )
    scaled = tuple((well, config.focus_well_sd_um * z) for well, z in offsets)
    return FocusSurface(config.focus_z_nominal_um, tilt_x, tilt_y, bow, scaled, config.plate)


def surface_z_um(config: SimulationConfig, barcode: str, x_um: float, y_um: float) -> float:
    """Height of plate ``barcode``'s focus surface under (x_um, y_um), in um."""
    return focus_surface(config, barcode).z_um(x_um, y_um)
