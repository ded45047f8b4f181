"""SBS 96-well plate geometry.

Coordinates are stage coordinates in micrometres (um), with the origin at the plate's top-left
corner, x growing along columns (1 -> 12) and y growing along rows (A -> H), as in
Micro-Manager's HCS site generator. Drivers convert to their own sign conventions at the edge.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

# ASCII only: without it \d also matches other scripts' digits ("A١", "A１" would name A1).
_WELL_NAME = re.compile(r"^\s*([A-Za-z])\s*0*(\d{1,2})\s*$", re.ASCII)


class WellNameError(ValueError):
    """A string that does not name a well of the plate."""


@dataclass(frozen=True)
class PlateGeometry:
    """A rectangular multi-well plate.

    Attributes:
        rows: number of rows (A, B, ...).
        columns: number of columns (1, 2, ...).
        pitch_um: centre-to-centre well spacing, in um.
        a1_center_um: (x, y) of well A1's centre from the plate's top-left corner, in um.
        well_diameter_um: inner diameter of a well at the bottom, in um.
    """

    rows: int = 8
    columns: int = 12
    pitch_um: float = 9000.0
    a1_center_um: tuple[float, float] = (14380.0, 11240.0)
    well_diameter_um: float = 6400.0

    @cached_property
    def well_names(self) -> tuple[str, ...]:
        """All wells in row-major order: A1, A2, ..., A12, B1, ..., H12."""
        return tuple(
            f"{chr(ord('A') + r)}{c + 1}" for r in range(self.rows) for c in range(self.columns)
        )

    def parse(self, name: str) -> tuple[int, int]:
        """Return the zero-based (row, column) of a well name such as ``"B7"`` or ``"b07"``."""
        match = _WELL_NAME.match(name)
        if match is None:
            raise WellNameError(
                f"{name!r} is not a well name "
                "(expected a row letter and a column number, e.g. 'B7')"
            )
        row = ord(match.group(1).upper()) - ord("A")
        column = int(match.group(2)) - 1
        if not (0 <= row < self.rows and 0 <= column < self.columns):
            last = f"{chr(ord('A') + self.rows - 1)}{self.columns}"
            raise WellNameError(f"well {name!r} is outside this plate (A1..{last})")
        return row, column

    def normalise(self, name: str) -> str:
        """Canonical spelling of a well name: ``"b07"`` -> ``"B7"``."""
        row, column = self.parse(name)
        return f"{chr(ord('A') + row)}{column + 1}"

    def well_center_um(self, name: str) -> tuple[float, float]:
        """Stage (x, y) of a well's centre, in um."""
        row, column = self.parse(name)
        x0, y0 = self.a1_center_um
        return x0 + column * self.pitch_um, y0 + row * self.pitch_um

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
