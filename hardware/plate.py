"""Multi-well plate geometry: the SBS 96-well plate and useq-schema's registry of plate types.

Coordinates are stage coordinates in micrometres (um), with the origin at the plate's top-left
corner, x growing along columns (1 -> 12) and y growing along rows (A -> H), as in
Micro-Manager's HCS site generator. Drivers convert to their own sign conventions at the edge.

Plate types other than the 96-well plate come from useq-schema's registry
(``useq.registered_well_plate_keys()``): rows, columns, pitch and well size in mm there, um
here. useq's stage frame has y pointing *up* (row B lies below A at a smaller y); this one has y
pointing down, so a useq layout is mirrored about A1's centre (see :mod:`hardware.plans`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import cache, cached_property

# ASCII only: without it \d also matches other scripts' digits ("A١", "A１" would name A1).
# One or two row letters: a 1536-well plate has 32 rows, A..Z then AA..AF (useq's names).
_WELL_NAME = re.compile(r"^\s*([A-Za-z]{1,2})\s*0*(\d{1,2})\s*$", re.ASCII)

# ANSI/SLAS 1-2004 footprint of a microplate, in um: the well array is centred on it, which
# puts the 96-well plate's A1 at (14380, 11240) and the 384-well plate's at (12130, 8990).
SBS_FOOTPRINT_UM = (127760.0, 85480.0)


class WellNameError(ValueError):
    """A string that does not name a well of the plate."""


def row_name(row: int) -> str:
    """Name of zero-based row ``row``: A..Z, then AA, AB, ... (as useq-schema names them)."""
    if row < 0:
        raise ValueError(f"row must be >= 0, got {row}")
    name = ""
    index = row
    while index >= 0:
        name = chr(ord("A") + index % 26) + name
        index = index // 26 - 1
    return name


def row_index(name: str) -> int:
    """Zero-based row of a row name (``"A"`` -> 0, ``"AF"`` -> 31); the inverse of
    :func:`row_name`."""
    index = 0
    for letter in name.upper():
        index = index * 26 + (ord(letter) - ord("A") + 1)
    return index - 1


@dataclass(frozen=True)
class PlateGeometry:
    """A rectangular multi-well plate.

    Attributes:
        rows: number of rows (A, B, ...).
        columns: number of columns (1, 2, ...).
        pitch_um: centre-to-centre well spacing, in um (the same along x and y).
        a1_center_um: (x, y) of well A1's centre from the plate's top-left corner, in um.
        well_diameter_um: inner diameter of a round well at the bottom, or the side of a
            square one, in um.
        name: the plate type, as stored in ``plates.plate_type`` ("SBS-96", "384-well").
        circular_wells: round wells (True) or square ones (False): decides what is inside.
        rotation_deg: rotation of the plate on the stage about A1's centre, in degrees,
            anti-clockwise as seen with y pointing down (useq-schema's ``rotation`` once its
            y-up frame is mirrored to this one). 0: rows run exactly along x.
    """

    rows: int = 8
    columns: int = 12
    pitch_um: float = 9000.0
    a1_center_um: tuple[float, float] = (14380.0, 11240.0)
    well_diameter_um: float = 6400.0
    name: str = "SBS-96"
    circular_wells: bool = True
    rotation_deg: float = 0.0

    @cached_property
    def well_names(self) -> tuple[str, ...]:
        """All wells in row-major order: A1, A2, ..., A12, B1, ..., H12."""
        return tuple(f"{row_name(r)}{c + 1}" for r in range(self.rows) for c in range(self.columns))

    @property
    def last_well(self) -> str:
        """The bottom-right well's name ("H12" on a 96-well plate)."""
        return f"{row_name(self.rows - 1)}{self.columns}"

    def parse(self, name: str) -> tuple[int, int]:
        """Return the zero-based (row, column) of a well name such as ``"B7"`` or ``"b07"``."""
        match = _WELL_NAME.match(name)
        if match is None:
            raise WellNameError(
                f"{name!r} is not a well name "
                "(expected a row letter and a column number, e.g. 'B7')"
            )
        row = row_index(match.group(1))
        column = int(match.group(2)) - 1
        if not (0 <= row < self.rows and 0 <= column < self.columns):
            raise WellNameError(
                f"well {name!r} is outside this plate ({self.name}: A1..{self.last_well})"
            )
        return row, column

    def normalise(self, name: str) -> str:
        """Canonical spelling of a well name: ``"b07"`` -> ``"B7"``."""
        row, column = self.parse(name)
        return f"{row_name(row)}{column + 1}"

    def _rotate(self, dx: float, dy: float, sign: float = 1.0) -> tuple[float, float]:
        """(dx, dy) turned by ``sign * rotation_deg`` in this y-down frame (anti-clockwise on
        screen for a positive angle)."""
        if not self.rotation_deg:
            return dx, dy
        theta = math.radians(sign * self.rotation_deg)
        cos, sin = math.cos(theta), math.sin(theta)
        return cos * dx + sin * dy, -sin * dx + cos * dy

    def well_center_um(self, name: str) -> tuple[float, float]:
        """Stage (x, y) of a well's centre, in um (the plate rotated about A1's centre)."""
        row, column = self.parse(name)
        x0, y0 = self.a1_center_um
        dx, dy = self._rotate(column * self.pitch_um, row * self.pitch_um)
        return x0 + dx, y0 + dy

    def inside_well(self, dx_um: float, dy_um: float, clearance_um: float = 0.0) -> bool:
        """True if a disc of radius ``clearance_um`` about (dx, dy) from a well's centre lies
        inside the well (round or square; offsets in the plate's own axes)."""
        half = self.well_diameter_um / 2.0 - clearance_um
        if half < 0:
            return False
        if self.circular_wells:
            return math.hypot(dx_um, dy_um) <= half
        return abs(dx_um) <= half and abs(dy_um) <= half

    def well_at(self, x_um: float, y_um: float) -> str | None:
        """The well whose inside contains stage point (x, y), or None (between wells, off the
        plate): the inverse of :meth:`well_center_um`, rotation included."""
        x0, y0 = self.a1_center_um
        # Undo the rotation: plate-aligned offsets from A1's centre.
        px, py = self._rotate(x_um - x0, y_um - y0, sign=-1.0)
        column = round(px / self.pitch_um)
        row = round(py / self.pitch_um)
        if not (0 <= row < self.rows and 0 <= column < self.columns):
            return None
        if not self.inside_well(px - column * self.pitch_um, py - row * self.pitch_um):
            return None
        return f"{row_name(row)}{column + 1}"

    def is_edge_well(self, name: str) -> bool:
        """True for wells on the plate's outer ring (they evaporate faster in culture)."""
        row, column = self.parse(name)
        return row in (0, self.rows - 1) or column in (0, self.columns - 1)

    def field_offsets_um(self, n_fields: int, spacing_um: float) -> list[tuple[float, float]]:
        """Offsets from the well centre for ``n_fields`` fields on a centred square grid, in um.

        Fields are laid out row by row on the smallest square grid that holds them, ``spacing_um``
        apart, and the grid is centred on the well, so one field sits at the centre.
        """
        if n_fields < 1:
            raise ValueError(f"n_fields must be >= 1, got {n_fields}")
        side = 1
        while side * side < n_fields:
            side += 1
        half = (side - 1) / 2.0
        offsets = []
        for index in range(n_fields):
            r, c = divmod(index, side)
            offsets.append(((c - half) * spacing_um, (r - half) * spacing_um))
        return offsets


SBS_96 = PlateGeometry()

# Names the 96-well plate goes by: the product's stored name and useq-schema's key.
_SBS_96_NAMES = frozenset({"SBS-96", "96-well"})


@cache
def plate_geometry(plate_type: str) -> PlateGeometry:
    """The geometry of a plate type: "SBS-96" or "96-well" (both :data:`SBS_96`), or a key of
    useq-schema's registry ("6-well", "12-well", "24-well", "48-well", "384-well",
    "1536-well"). A1's centre is the nominal one (the well array centred on the SBS footprint);
    a plan's or a calibration's A1 replaces it with :func:`dataclasses.replace`.

    Raises:
        ValueError: an unknown type (naming the known ones), or one that is not a multi-well
            plate of square pitch (the coverslips).
    """
    if plate_type in _SBS_96_NAMES:
        return SBS_96
    import useq  # the registry's only user; keeps plain 96-well use free of the import

    keys = sorted(useq.registered_well_plate_keys())
    if plate_type not in keys:
        raise ValueError(f"unknown plate type {plate_type!r}; known: {', '.join(keys)}")
    plate = useq.WellPlate.from_str(plate_type)
    sx, sy = plate.well_spacing
    wx, wy = plate.well_size
    if plate.rows * plate.columns < 6 or sx != sy or wx != wy:
        raise ValueError(
            f"plate type {plate_type!r} is not a multi-well plate with square pitch and wells "
            f"({plate.rows}x{plate.columns}, spacing {plate.well_spacing} mm, well size "
            f"{plate.well_size} mm); use one of 6-well .. 1536-well"
        )
    pitch_um = float(sx) * 1000.0
    a1 = (
        (SBS_FOOTPRINT_UM[0] - (plate.columns - 1) * pitch_um) / 2.0,
        (SBS_FOOTPRINT_UM[1] - (plate.rows - 1) * pitch_um) / 2.0,
    )
    return PlateGeometry(
        rows=int(plate.rows),
        columns=int(plate.columns),
        pitch_um=pitch_um,
        a1_center_um=(round(a1[0], 3), round(a1[1], 3)),
        well_diameter_um=float(wx) * 1000.0,
        name=plate_type,
        circular_wells=bool(plate.circular_wells),
    )
