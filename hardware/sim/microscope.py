"""The simulated microscope: a :class:`hardware.microscope.Microscope` over a simulated plate."""

from __future__ import annotations

import logging
import math
from collections.abc import Collection

import numpy as np
import numpy.typing as npt

from hardware.microscope import OBJECTIVES, HardwareError, Objective, WellAcquisitionError
from hardware.plate import PlateGeometry
from hardware.sim.channels import PHASE, SIM_CHANNELS, SimChannel, sim_channel
from hardware.sim.config import SimulationConfig
from hardware.sim.optics import _render, pixel_size_um

logger = logging.getLogger(__name__)


def well_at(plate: PlateGeometry, x_um: float, y_um: float) -> str | None:
    """The well whose bottom contains stage position (x_um, y_um), or None between wells."""
    x0, y0 = plate.a1_center_um
    column = round((x_um - x0) / plate.pitch_um)
    row = round((y_um - y0) / plate.pitch_um)
    if not (0 <= row < plate.rows and 0 <= column < plate.columns):
        return None
    name = f"{chr(ord('A') + row)}{column + 1}"
    cx, cy = plate.well_center_um(name)
    return name if math.hypot(x_um - cx, y_um - cy) <= plate.well_diameter_um / 2.0 else None


class SimulatedMicroscope:
    """A :class:`hardware.microscope.ChannelMicroscope` that renders frames with
    :func:`render_field`, through the light path :meth:`set_channel` chose ("Phase" at first).

    Args:
        config: simulation settings; defaults to ``SimulationConfig()``.
        barcode: plate barcode to render; :meth:`load_plate` or plain assignment changes it.
        fail_wells: wells whose snaps raise :class:`WellAcquisitionError` (injected camera
            failure, for tests).
    """

    name: str = "simulated"

    def __init__(
        self,
        config: SimulationConfig | None = None,
        *,
        barcode: str = "",
        fail_wells: Collection[str] = (),
    ) -> None:
        self.config = config if config is not None else SimulationConfig()
        self.barcode = barcode
        self.fail_wells = frozenset(self.config.plate.normalise(w) for w in fail_wells)
        self._objective: Objective = "40x"
        self._channel: SimChannel = PHASE
        self._position = (0.0, 0.0)  # the plate corner: no well under the objective
        self._closed = False

    @property
    def objective(self) -> Objective:
        return self._objective

    def set_objective(self, objective: Objective) -> None:
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; expected one of {OBJECTIVES}")
        self._check_open()
        self._objective = objective

    @property
    def channel(self) -> str:
        """The light path frames are snapped through (see :mod:`hardware.sim.channels`)."""
        return self._channel.name

    @property
    def channel_names(self) -> tuple[str, ...]:
        """Every channel :meth:`set_channel` accepts."""
        return tuple(SIM_CHANNELS)

    def set_channel(self, channel: str) -> None:
        """Snap through light path ``channel`` from now on ("Phase", "Brightfield", ...).

        Raises:
            ValueError: an unknown channel (the message lists the known ones).
        """
        self._check_open()
        self._channel = sim_channel(channel)

    def load_plate(self, barcode: str) -> None:
        """Render plate ``barcode`` from now on (same as setting :attr:`barcode`)."""
        self._check_open()
        logger.info("simulated plate %s loaded", barcode)
        self.barcode = barcode

    @property
    def pixel_size_um(self) -> float:
        """Size of one camera pixel in the sample plane for the current objective, in um."""
        return pixel_size_um(self.config, self._objective)

    @property
    def bit_depth(self) -> int:
        """The simulated camera's ADC depth (its frames are uint16 with values < 2**bit_depth)."""
        return self.config.bit_depth

    @property
    def position_um(self) -> tuple[float, float]:
        """Current stage (x, y), in um."""
        return self._position

    def move_to(self, x_um: float, y_um: float) -> None:
        self._check_open()
        self._position = (float(x_um), float(y_um))

    def snap(self, well: str, field_index: int) -> npt.NDArray[np.uint16]:
        """Render the frame at the current stage position through the current channel;
        ``well`` is only checked against ``fail_wells`` and logged. Returns (H, W) uint16."""
        self._check_open()
        x, y = self._position
        under = well_at(self.config.plate, x, y)
        try:
            named: str | None = self.config.plate.normalise(well)
        except ValueError:
            named = None
        if (named in self.fail_wells) or (under in self.fail_wells):
            raise WellAcquisitionError(f"simulated camera timeout in well {named or under}")
        if under != named:
            logger.debug(
                "snap for %s field %d: stage at (%.0f, %.0f) um is over %s",
                well,
                field_index,
                x,
                y,
                under,
            )
        return _render(self.config, self.barcode, under, x, y, self._objective, self._channel)

    def close(self) -> None:
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise HardwareError("the simulated microscope is closed")
