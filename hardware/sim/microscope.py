"""The simulated microscope: a :class:`hardware.microscope.Microscope` over a simulated plate,
with a focus drive, a reflection autofocus and an instrument clock."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection

import numpy as np
import numpy.typing as npt

from hardware.microscope import (
    OBJECTIVES,
    AutofocusError,
    HardwareError,
    Objective,
    WellAcquisitionError,
)
from hardware.plate import SBS_96, PlateGeometry
from hardware.sim.channels import PHASE, SIM_CHANNELS, SimChannel, sim_channel
from hardware.sim.config import SimulationConfig
from hardware.sim.focus import FocusTruth, surface_z_um, well_at
from hardware.sim.optics import _field_defocus, _frame_key, _render, pixel_size_um
from hardware.sim.timing import InstrumentClock

logger = logging.getLogger(__name__)

__all__ = ["SimulatedMicroscope", "well_at"]


class SimulatedMicroscope:
    """A :class:`hardware.microscope.ChannelMicroscope` that renders frames with
    :func:`render_field`, through the light path :meth:`set_channel` chose ("Phase" at first),
    at the focus drive's z.

    Focus: the drive starts at ``config.focus_z_nominal_um``. With continuous focus on (the
    default, ``config.continuous_focus``) the reflection autofocus keeps z on the plate's focus
    surface plus :attr:`autofocus_offset_um` after every XY move (:mod:`hardware.sim.focus`), so
    with offset 0 every frame is bit-identical to :func:`render_field` without ``z_um``. Over an
    ``af_fail_wells`` well, out of capture range or beyond the drive's limits the lock is lost:
    z stays where it was (:attr:`continuous_focus_locked` is False) until a later move
    re-locks. With continuous focus off, :meth:`move_z` and :meth:`full_focus` set z.

    Time: every move, lock, autofocus and snap is charged to an instrument clock by
    ``config.timing`` (:attr:`instrument_time_s`; ``config.timing_mode`` "realtime" also
    sleeps it, see :mod:`hardware.sim.timing`).

    Args:
        config: simulation settings; defaults to ``SimulationConfig()``.
        barcode: plate barcode to render; :meth:`load_plate` or plain assignment changes it.
        fail_wells: wells whose snaps raise :class:`WellAcquisitionError` (injected camera
            failure, for tests).
        af_fail_wells: wells where the reflection autofocus finds no surface:
            :meth:`full_focus` raises :class:`AutofocusError` and continuous focus loses its
            lock (injected autofocus failure, for tests).
    """

    name: str = "simulated"

    def __init__(
        self,
        config: SimulationConfig | None = None,
        *,
        barcode: str = "",
        fail_wells: Collection[str] = (),
        af_fail_wells: Collection[str] = (),
    ) -> None:
        self.config = config if config is not None else SimulationConfig()
        self.barcode = barcode
        self.fail_wells = frozenset(self.config.plate.normalise(w) for w in fail_wells)
        self.af_fail_wells = frozenset(self.config.plate.normalise(w) for w in af_fail_wells)
        self.exposure_ms = 10.0  # charged per snap; frames render at the simulator's exposure
        self._objective: Objective = "40x"
        self._channel: SimChannel = PHASE
        self._position = (0.0, 0.0)  # the plate corner: no well under the objective
        self._z_um = float(self.config.focus_z_nominal_um)
        self._offset_um = 0.0
        self._continuous = bool(self.config.continuous_focus)
        self._locked = False
        self._clock = InstrumentClock()
        self._closed = False
        if self._continuous:
            self._locked = self._lock_failure(self._z_um) is None  # ready at start: no time

    # optics -------------------------------------------------------------------------------

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

    def load_plate(self, barcode: str, plate: PlateGeometry = SBS_96) -> None:
        """Render plate ``barcode``, of geometry ``plate``, from now on.

        Continuous focus (when on) tracks the new plate's surface at once.
        """
        self._check_open()
        logger.info("simulated plate %s loaded", barcode)
        if plate != self.config.plate:
            self.config = dataclasses.replace(self.config, plate=plate)
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
    def depth_of_field_um(self) -> float:
        """Depth of field of the current objective, um (``config.depth_of_field_um``)."""
        return self.config.depth_of_field(self._objective)

    # stage --------------------------------------------------------------------------------

    @property
    def position_um(self) -> tuple[float, float]:
        """Current stage (x, y), in um."""
        return self._position

    def move_to(self, x_um: float, y_um: float) -> None:
        """Move the XY stage (charged by the timing model); with continuous focus on, z then
        locks on the surface under the new position (lock time charged) or the lock is lost."""
        self._check_open()
        z_before = self.z_um
        old_x, old_y = self._position
        target = (float(x_um), float(y_um))
        self._charge(self.config.timing.xy_move_s(target[0] - old_x, target[1] - old_y), "xy move")
        moved = target != self._position
        self._position = target
        if self._continuous and (moved or not self._locked):
            self._relock(z_before)

    # focus --------------------------------------------------------------------------------

    @property
    def z_um(self) -> float:
        """Focus drive position, um (larger = objective closer to the sample)."""
        if self._continuous and self._locked:
            return self._lock_target()
        return self._z_um

    @property
    def z_limits_um(self) -> tuple[float, float]:
        """Travel of the focus drive, (lower, upper) um."""
        low, high = self.config.z_limits_um
        return float(low), float(high)

    def move_z(self, z_um: float) -> None:
        """Move the focus drive to ``z_um`` (charged by the timing model).

        Raises:
            HardwareError: continuous focus is on (it owns the drive; switch it off first).
            ValueError: ``z_um`` outside :attr:`z_limits_um` (the message names the limits).
        """
        self._check_open()
        if self._continuous:
            raise HardwareError(
                "continuous focus is on and holds the focus drive: "
                "set_continuous_focus(False) before moving z"
            )
        z = float(z_um)
        low, high = self.z_limits_um
        if not low <= z <= high:
            raise ValueError(
                f"z {z:g} um is outside the focus drive's limits [{low:g}, {high:g}] um"
            )
        self._charge(self.config.timing.z_move_s(z - self._z_um), "z move")
        self._z_um = z

    @property
    def continuous_focus(self) -> bool:
        """True while continuous (reflection) focus is switched on."""
        return self._continuous

    @property
    def continuous_focus_locked(self) -> bool:
        """True while continuous focus is on and holds the surface (False over an
        ``af_fail_wells`` well, out of capture range, or with continuous focus off)."""
        return self._continuous and self._locked

    def set_continuous_focus(self, on: bool) -> None:
        """Switch continuous focus on (it locks at once, lock time charged) or off (z stays)."""
        self._check_open()
        if bool(on) == self._continuous:
            return
        z_now = self.z_um
        if on:
            self._continuous = True
            self._relock(z_now)
        else:
            self._continuous = False
            self._locked = False
            self._z_um = z_now
        logger.info("continuous focus %s", "on" if on else "off")

    @property
    def autofocus_offset_um(self) -> float:
        """Where the reflection autofocus puts z relative to the surface, um (default 0)."""
        return self._offset_um

    @autofocus_offset_um.setter
    def autofocus_offset_um(self, offset_um: float) -> None:
        self._check_open()
        z_now = self.z_um
        self._offset_um = float(offset_um)
        if self._continuous:
            self._relock(z_now)

    def full_focus(self) -> float:
        """One reflection-autofocus search at the current XY: z goes to the surface plus
        :attr:`autofocus_offset_um` (search and move charged). Returns the new z, um.

        Raises:
            AutofocusError: over an ``af_fail_wells`` well, with the surface beyond the capture
                range of the current z, or the target beyond the drive's limits; z stays.
        """
        self._check_open()
        z_now = self.z_um
        failure = self._lock_failure(z_now)
        if failure is not None:
            self._charge(self.config.timing.af_lock_s, "autofocus search (failed)")
            if self._continuous:
                self._locked = False
                self._z_um = z_now
            raise AutofocusError(failure)
        target = self._lock_target()
        timing = self.config.timing
        self._charge(timing.af_lock_s + timing.z_move_s(target - z_now), "autofocus")
        self._z_um = target
        if self._continuous:
            self._locked = True
        return target

    def focus_truth(self, x_um: float, y_um: float) -> FocusTruth:
        """Ground truth of focus at (x_um, y_um) on the loaded plate at the current objective:
        the reflection surface, the z where the field's cells are sharp, the depth of field."""
        config = self.config
        surface = surface_z_um(config, self.barcode, x_um, y_um)
        well = well_at(config.plate, x_um, y_um)
        key = _frame_key(config, self.barcode, well, x_um, y_um, self._objective)
        drawn, sign = _field_defocus(key)
        cell_z = surface + sign * drawn / config.blur_per_um(self._objective)
        return FocusTruth(surface, cell_z, self.depth_of_field_um)

    # time ---------------------------------------------------------------------------------

    @property
    def instrument_time_s(self) -> float:
        """Instrument seconds charged so far (moves, focus, locks, exposure, readout)."""
        return self._clock.elapsed_s

    # camera -------------------------------------------------------------------------------

    def snap(self, well: str, field_index: int) -> npt.NDArray[np.uint16]:
        """Render the frame at the current stage position and z through the current channel
        (exposure and readout charged); ``well`` is only checked against ``fail_wells`` and
        logged. Returns (H, W) uint16."""
        self._check_open()
        x, y = self._position
        under = well_at(self.config.plate, x, y)
        try:
            named: str | None = self.config.plate.normalise(well)
        except ValueError:
            named = None
        self._charge(self.config.timing.snap_s(self.exposure_ms), "exposure + readout")
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
        return _render(
            self.config, self.barcode, under, x, y, self._objective, self._channel, self.z_um
        )

    def close(self) -> None:
        self._closed = True

    # internals ----------------------------------------------------------------------------

    def _lock_target(self) -> float:
        x, y = self._position
        return surface_z_um(self.config, self.barcode, x, y) + self._offset_um

    def _lock_failure(self, z_from: float) -> str | None:
        """Why the reflection autofocus cannot lock from ``z_from`` here, or None if it can."""
        x, y = self._position
        well = well_at(self.config.plate, x, y)
        if well is not None and well in self.af_fail_wells:
            return f"simulated autofocus found no reflection in well {well}"
        target = self._lock_target()
        low, high = self.z_limits_um
        if not low <= target <= high:
            return (
                f"autofocus target z {target:g} um is outside the drive's limits "
                f"[{low:g}, {high:g}] um"
            )
        if abs(target - z_from) > self.config.af_capture_range_um:
            return (
                f"surface at z {target:g} um is beyond the autofocus capture range "
                f"({self.config.af_capture_range_um:g} um) of z {z_from:g} um"
            )
        return None

    def _relock(self, z_from: float) -> None:
        """Continuous focus after a move: lock on the surface (lock time charged) or lose it."""
        failure = self._lock_failure(z_from)
        self._charge(self.config.timing.af_lock_s, "continuous focus lock")
        if failure is None:
            self._locked = True
        else:
            if self._locked:
                logger.info("continuous focus lost its lock: %s", failure)
            self._locked = False
            self._z_um = z_from

    def _charge(self, seconds: float, what: str) -> None:
        self._clock.charge(seconds, self.config.timing_mode, what)

    def _check_open(self) -> None:
        if self._closed:
            raise HardwareError("the simulated microscope is closed")
