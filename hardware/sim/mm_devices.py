"""The simulated microscope as pure-Python Micro-Manager devices on pymmcore-plus's UniMMCore.

pymmcore-plus's ``UniMMCore`` (``pymmcore_plus.experimental.unicore``) accepts device adapters
written in Python next to the C++ ones, so the acquisition code that drives a real microscope
(pycromanager's engine, pymmcore-plus's MDA engine) runs unchanged against the simulator.

Devices (default labels in brackets) are views onto one :class:`SimulatedMicroscope`, which
holds the physical state (stage position, objective, plate) and renders frames:

* :class:`SimulatedCamera` ["Camera"]: snaps :func:`hardware.sim.optics.render_field` for the
  current stage position, focus, objective and loaded plate; (H, W) uint16 holding 12-bit
  values. Carries the instrument clock (``InstrumentTimeS``, ``TimingMode``).
* :class:`SimulatedXYStage` ["XY"]: plate stage coordinates, in um; speed, acceleration and
  settle time as properties.
* :class:`SimulatedFocusStage` ["Z"]: the focus drive, in um: it sets the simulator's z, so
  defocus follows it (:mod:`hardware.sim.focus`); limits, speed, acceleration, settle time.
* :class:`ReflectionAutofocus` ["ReflectionAF"]: a reflection (laser) autofocus that locks on
  the plate's well-bottom surface: ``fullFocus``, continuous focus, an offset; the core's
  AutoFocus device.
* :class:`SimulatedShutter` ["Shutter"]: transmitted-light shutter (recorded only, see below).
* :class:`SimulatedObjectiveTurret` ["Objective"]: state device, state 0 = "40x" optics,
  state 1 = "100x" optics.
* :class:`SimulatedLightPath` ["LightPath"]: state device, one state per light path of
  :data:`hardware.sim.channels.SIM_CHANNELS` ("Phase", "Brightfield", "Phase+2um",
  "Phase-2um"): what a condenser turret plus a channel's focus offset do on a real stand.

:func:`build_simulated_core` loads these into a :class:`SimulatedMMCore` and defines the
config group "Objective" (presets "40x", "100x"), the channel group "Channel" (one preset per
light path, named like it; startup "Phase") and one pixel-size config per objective whose size
is :func:`hardware.sim.optics.pixel_size_um`. :data:`SIMULATED_CFG`
(``simulated_microscope.cfg``) declares the same system in Micro-Manager's .cfg format;
:func:`load_simulated_core` loads it.

How devices find their simulator: devices built by :func:`build_simulated_core` are handed one
explicitly. Devices created from a .cfg file are constructed without arguments (UniMMCore
imports the class and calls it), and a Python device only sees a restricted core proxy, not
its sibling devices; they therefore attach, at initialisation, to a process-wide simulator
named by their pre-init property ``"Simulator"`` (default ``"default"``), see
:func:`shared_simulator`. Two cores loaded from .cfg files naming the same simulator share one
stage and plate, as two programs attached to one real microscope would.

Known gaps of UniMMCore 0.18.1 that :class:`SimulatedMMCore` fills (and why it exists):

* The C++ core matches pixel-size configs only against C++ devices, so with a Python
  objective turret ``getCurrentPixelSizeConfig()`` is always "" and ``getPixelSizeUm()`` /
  ``getPixelSizeAffine()`` are 0 (UniMMCore defers to the C++ values at binning 1).
* ``getImageBitDepth()`` of a Python camera is the dtype's size (16); ours reports 12.
* UniMMCore has no Python autofocus device class, and its autofocus API (``fullFocus``,
  ``enableContinuousFocus``, ...) only reaches C++ devices. ``ReflectionAF`` is therefore a
  ``GenericDevice``, and :class:`SimulatedMMCore` overrides ``setAutoFocusDevice`` /
  ``getAutoFocusDevice``, ``fullFocus``, ``incrementalFocus``, ``setAutoFocusOffset`` /
  ``getAutoFocusOffset``, ``enableContinuousFocus``, ``isContinuousFocusEnabled``,
  ``isContinuousFocusLocked``, ``getLastFocusScore`` and ``getCurrentFocusScore`` to route
  to it; a failed ``fullFocus`` raises RuntimeError (:class:`AutofocusError`), as pymmcore
  raises a CMMError.
* Python devices have no device delay (``setDeviceDelayMs`` refuses non-zero values); ours
  map it onto the stages' ``SettleTime(ms)`` property, the settle time the timing model
  charges.

Time: every move, lock, autofocus and snap is charged to the simulator's instrument clock
(:mod:`hardware.sim.timing`); in "realtime" mode (camera property ``TimingMode``) the devices
also take that long. Snap metadata carries ``InstrumentTimeS``.

Not modelled: a closed shutter does not darken frames (UniMMCore 0.18.1's auto-shutter does
not open Python shutters, so tying the frame to it would make every auto-shuttered snap
dark); the exposure time is charged to the clock but frames are rendered at the simulator's
own exposure; devices report ``Busy`` false (a move returns when its time is charged).
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import threading
import time
import weakref
from collections.abc import Callable, Collection, Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from pymmcore_plus import CMMCorePlus, DeviceInitializationState
from pymmcore_plus.experimental.unicore import (
    Device,
    GenericDevice,
    ShutterDevice,
    SimpleCameraDevice,
    StageDevice,
    StateDevice,
    UniMMCore,
    XYStageDevice,
)

from hardware.microscope import OBJECTIVES, AutofocusError, HardwareError
from hardware.plate import SBS_96, PlateGeometry, plate_geometry
from hardware.sim.channels import SIM_CHANNELS
from hardware.sim.config import SimulationConfig
from hardware.sim.microscope import SimulatedMicroscope, well_at
from hardware.sim.optics import pixel_size_um
from hardware.sim.timing import TIMING_MODES

logger = logging.getLogger(__name__)

CAMERA = "Camera"
XY_STAGE = "XY"
FOCUS = "Z"
SHUTTER = "Shutter"
OBJECTIVE = "Objective"
OBJECTIVE_GROUP = "Objective"
"""Config group whose presets ("40x", "100x") select the objective; pycromanager's
``channel_group`` in single-channel scans."""
LIGHT_PATH = "LightPath"
AUTOFOCUS = "ReflectionAF"
CHANNEL_GROUP = "Channel"
"""Config group whose presets ("Phase", "Brightfield", ...) select the light path; pycromanager's
``channel_group`` in multi-channel scans."""

SIMULATOR_PROPERTY = "Simulator"
DEFAULT_SIMULATOR = "default"
BIT_DEPTH_PROPERTY = "BitDepth"
INSTRUMENT_TIME_PROPERTY = "InstrumentTimeS"
TIMING_MODE_PROPERTY = "TimingMode"
SETTLE_PROPERTY = "SettleTime(ms)"
"""Settle time after a move, ms, on the XY and Z stages: what Micro-Manager's per-device delay
(``setDeviceDelayMs``, a .cfg ``Delay`` line) sets for them."""

SIMULATED_CFG = Path(__file__).with_name("simulated_microscope.cfg")
"""The simulated system as a Micro-Manager .cfg file (Python devices on ``#py`` lines)."""

_PACKAGE_DIR = Path(__file__).parent

_simulators: dict[str, SimulatedMicroscope] = {}
_simulators_lock = threading.Lock()


def shared_simulator(name: str = DEFAULT_SIMULATOR) -> SimulatedMicroscope:
    """The process-wide simulator called ``name``, created with ``SimulationConfig()`` on first
    use. Devices loaded from a .cfg file attach to it (see the module docstring)."""
    with _simulators_lock:
        if name not in _simulators:
            _simulators[name] = SimulatedMicroscope(SimulationConfig())
        return _simulators[name]


def pixel_config_name(objective: str) -> str:
    """Name of the pixel-size config of an objective, e.g. ``"Res40x"``."""
    return f"Res{objective}"


def _wells(text: str, config: SimulationConfig) -> frozenset[str]:
    """Canonical well names from a comma/space separated list ("b07, C1" -> {"B7", "C1"})."""
    names = [part for part in text.replace(",", " ").split() if part]
    return frozenset(config.plate.normalise(name) for name in names)


def _set_timing(simulator: SimulatedMicroscope, **changes: float) -> None:
    """Replace fields of the simulator's :class:`InstrumentTiming` (frozen, so by copy)."""
    config = simulator.config
    timing = dataclasses.replace(config.timing, **changes)
    simulator.config = dataclasses.replace(config, timing=timing)


class _SimulatorLink:
    """Which :class:`SimulatedMicroscope` a device drives: the one given at construction, or
    the shared one named by its ``Simulator`` property, resolved when first needed."""

    def __init__(self, explicit: SimulatedMicroscope | None) -> None:
        self._simulator = explicit
        self.name = DEFAULT_SIMULATOR

    def get(self) -> SimulatedMicroscope:
        if self._simulator is None:
            self._simulator = shared_simulator(self.name)
        return self._simulator

    def set_name(self, name: str) -> None:
        if self._simulator is not None and name != self.name:
            raise HardwareError(
                "the Simulator property must be set before the device is initialised"
            )
        self.name = name

    def get_name(self) -> str:
        return self.name


def _register_simulator_property(device: Any, link: _SimulatorLink) -> None:
    """Add the pre-init ``Simulator`` property that names the shared simulator to attach to."""
    device.register_property(
        SIMULATOR_PROPERTY,
        default_value=DEFAULT_SIMULATOR,
        property_type=str,
        is_pre_init=True,
        getter=lambda _dev: link.get_name(),
        setter=lambda _dev, value: link.set_name(str(value)),
    )


class SimulatedCamera(SimpleCameraDevice):
    """Phase-contrast camera of the simulated microscope: (H, W) uint16, 12-bit values.

    Each snap renders what the simulator sees at the XY stage's current position through the
    current objective, bit-identical to :func:`hardware.sim.optics.render_field` over a well.

    Properties besides the standard ``Exposure`` (ms) and ``Binning`` (always 1):
        Barcode: plate on the stage (the simulator renders that plate).
        FailWells: wells (comma separated) whose snaps raise
            :class:`hardware.microscope.WellAcquisitionError`: injected camera failure.
        StallWells / StallSeconds: snaps over these wells return only after this many seconds:
            injected camera hang, to exercise acquisition timeouts.
        Seed, Difficulty: the simulator's :class:`SimulationConfig` fields of the same name.
        BitDepth: read-only ADC depth (12).
        ReadoutTime: sensor readout per frame, ms (charged after each exposure; the name of
            Micro-Manager's ``MM::g_Keyword_ReadoutTime``, as on the DemoCamera).
        InstrumentTimeS: read-only, the simulator's instrument clock, s.
        TimingMode: "fast" (instrument time recorded only) or "realtime" (also slept).
        PlateType: the plate geometry rendered, a name of :func:`hardware.plate.plate_geometry`
            ("SBS-96", "384-well", ...); :func:`set_plate` sets any geometry.
        Simulator: pre-init, the shared simulator to attach to (.cfg loading).
    """

    def __init__(self, simulator: SimulatedMicroscope | None = None) -> None:
        super().__init__()
        self._link = _SimulatorLink(simulator)
        self._exposure_ms = 10.0
        self._stall_wells: frozenset[str] = frozenset()
        self._stall_s = 0.0
        _register_simulator_property(self, self._link)
        cls = type(self)
        self._register("Barcode", str, cls._get_barcode, cls._set_barcode)
        self._register("FailWells", str, cls._get_fail_wells, cls._set_fail_wells)
        self._register("StallWells", str, cls._get_stall_wells, cls._set_stall_wells)
        self._register("StallSeconds", float, cls._get_stall_s, cls._set_stall_s, (0.0, 3600.0))
        self._register("Seed", int, cls._get_seed, cls._set_seed)
        self._register("Difficulty", float, cls._get_difficulty, cls._set_difficulty, (0.0, 1.0))
        self.register_property(
            BIT_DEPTH_PROPERTY, property_type=int, is_read_only=True, getter=cls._get_bit_depth
        )
        self._register(
            "ReadoutTime", float, cls._get_readout_ms, cls._set_readout_ms, (0.0, 10_000.0)
        )
        self.register_property(
            INSTRUMENT_TIME_PROPERTY,
            property_type=float,
            is_read_only=True,
            getter=cls._get_instrument_time_s,
        )
        self.register_property(
            TIMING_MODE_PROPERTY,
            property_type=str,
            allowed_values=[str(mode) for mode in TIMING_MODES],
            getter=cls._get_timing_mode,
            setter=cls._set_timing_mode,
        )
        self._register("PlateType", str, cls._get_plate_type, cls._set_plate_type)
        self.set_property_limits("Exposure", (0.01, 60_000.0))

    def _register(
        self,
        name: str,
        kind: type,
        getter: Callable[[Any], Any],
        setter: Callable[[Any, Any], None],
        limits: tuple[float, float] | None = None,
    ) -> None:
        self.register_property(
            name, property_type=kind, getter=getter, setter=setter, limits=limits
        )

    @property
    def simulator(self) -> SimulatedMicroscope:
        return self._link.get()

    def initialize(self) -> None:
        self._link.get()

    # camera API ---------------------------------------------------------------------------

    def get_exposure(self) -> float:
        """Exposure time in ms (charged to the instrument clock per snap; frames use the
        simulator's own exposure)."""
        return self._exposure_ms

    def set_exposure(self, exposure: float) -> None:
        self._exposure_ms = float(exposure)

    def sensor_shape(self) -> tuple[int, int]:
        """(H, W) of a frame, in pixels."""
        height, width = self.simulator.config.camera_shape
        return height, width

    def dtype(self) -> npt.DTypeLike:
        return np.uint16

    def snap(self, buffer: np.ndarray) -> Mapping[str, Any]:
        """Render the frame at the current stage position into ``buffer`` (H, W) uint16.

        Raises :class:`hardware.microscope.WellAcquisitionError` over a ``FailWells`` well.
        """
        simulator = self.simulator
        x_um, y_um = simulator.position_um
        well = well_at(simulator.config.plate, x_um, y_um)
        if well is not None and well in self._stall_wells:
            logger.info("simulated camera stalls %.1f s over well %s", self._stall_s, well)
            time.sleep(self._stall_s)
        simulator.exposure_ms = self._exposure_ms  # charged with the readout by the snap
        # The simulator checks FailWells and renders; "" names no well (between wells).
        buffer[:] = simulator.snap(well or "", 0)
        return {
            "SimulatedWell": well or "",
            "Barcode": simulator.barcode,
            INSTRUMENT_TIME_PROPERTY: f"{simulator.instrument_time_s:.6f}",
        }

    # properties ---------------------------------------------------------------------------

    def _get_barcode(self) -> str:
        return self.simulator.barcode

    def _set_barcode(self, value: str) -> None:
        self.simulator.load_plate(str(value))

    def _get_fail_wells(self) -> str:
        return ",".join(sorted(self.simulator.fail_wells))

    def _set_fail_wells(self, value: str) -> None:
        simulator = self.simulator
        simulator.fail_wells = _wells(str(value), simulator.config)

    def _get_stall_wells(self) -> str:
        return ",".join(sorted(self._stall_wells))

    def _set_stall_wells(self, value: str) -> None:
        self._stall_wells = _wells(str(value), self.simulator.config)

    def _get_stall_s(self) -> float:
        return self._stall_s

    def _set_stall_s(self, value: float) -> None:
        self._stall_s = float(value)

    def _get_seed(self) -> int:
        return self.simulator.config.seed

    def _set_seed(self, value: int) -> None:
        simulator = self.simulator
        simulator.config = dataclasses.replace(simulator.config, seed=int(value))

    def _get_difficulty(self) -> float:
        return self.simulator.config.difficulty

    def _set_difficulty(self, value: float) -> None:
        simulator = self.simulator
        simulator.config = dataclasses.replace(simulator.config, difficulty=float(value))

    def _get_bit_depth(self) -> int:
        return self.simulator.config.bit_depth

    def _get_readout_ms(self) -> float:
        return self.simulator.config.timing.camera_readout_s * 1000.0

    def _set_readout_ms(self, value: float) -> None:
        _set_timing(self.simulator, camera_readout_s=float(value) / 1000.0)

    def _get_instrument_time_s(self) -> float:
        return self.simulator.instrument_time_s

    def _get_timing_mode(self) -> str:
        return self.simulator.config.timing_mode

    def _set_timing_mode(self, value: str) -> None:
        simulator = self.simulator
        mode = str(value)
        if mode not in TIMING_MODES:
            raise ValueError(f"TimingMode must be one of {TIMING_MODES}, got {mode!r}")
        simulator.config = dataclasses.replace(simulator.config, timing_mode=mode)

    def _get_plate_type(self) -> str:
        return self.simulator.config.plate.name

    def _set_plate_type(self, value: str) -> None:
        simulator = self.simulator
        simulator.load_plate(simulator.barcode, plate_geometry(str(value)))


class SimulatedXYStage(XYStageDevice):
    """XY stage of the simulated microscope, in um (plate stage coordinates, see
    :mod:`hardware.plate`). A move is charged to the instrument clock by a trapezoidal velocity
    profile per axis plus the settle time. ``set_origin*`` shift the reported coordinates; the
    simulator keeps rendering at the physical position.

    Properties (the simulator's :class:`hardware.sim.timing.InstrumentTiming`):
        MaxSpeed(mm/s): top speed per axis.
        Acceleration(mm/s^2): acceleration and deceleration.
        SettleTime(ms): settle time after a move (the core's device delay for this stage).
    """

    def __init__(self, simulator: SimulatedMicroscope | None = None) -> None:
        super().__init__()
        self._link = _SimulatorLink(simulator)
        self._origin_um = (0.0, 0.0)  # physical position reported as (0, 0)
        _register_simulator_property(self, self._link)
        cls = type(self)
        for name, getter, setter, limits in (
            ("MaxSpeed(mm/s)", cls._get_speed, cls._set_speed, (0.01, 1000.0)),
            ("Acceleration(mm/s^2)", cls._get_accel, cls._set_accel, (0.01, 100_000.0)),
            (SETTLE_PROPERTY, cls._get_settle, cls._set_settle, (0.0, 10_000.0)),
        ):
            self.register_property(
                name, property_type=float, getter=getter, setter=setter, limits=limits
            )

    def _get_speed(self) -> float:
        return self._link.get().config.timing.xy_max_speed_um_s / 1000.0

    def _set_speed(self, value: float) -> None:
        _set_timing(self._link.get(), xy_max_speed_um_s=float(value) * 1000.0)

    def _get_accel(self) -> float:
        return self._link.get().config.timing.xy_acceleration_um_s2 / 1000.0

    def _set_accel(self, value: float) -> None:
        _set_timing(self._link.get(), xy_acceleration_um_s2=float(value) * 1000.0)

    def _get_settle(self) -> float:
        return self._link.get().config.timing.xy_settle_s * 1000.0

    def _set_settle(self, value: float) -> None:
        _set_timing(self._link.get(), xy_settle_s=float(value) / 1000.0)

    def initialize(self) -> None:
        self._link.get()

    def set_position_um(self, x: float, y: float) -> None:
        ox, oy = self._origin_um
        self._link.get().move_to(float(x) + ox, float(y) + oy)
        self.core.events.XYStagePositionChanged.emit(self.get_label(), float(x), float(y))

    def get_position_um(self) -> tuple[float, float]:
        x, y = self._link.get().position_um
        ox, oy = self._origin_um
        return x - ox, y - oy

    def set_origin_x(self) -> None:
        self._origin_um = (self._link.get().position_um[0], self._origin_um[1])

    def set_origin_y(self) -> None:
        self._origin_um = (self._origin_um[0], self._link.get().position_um[1])

    def home(self) -> None:
        """Move to the physical origin, the plate's top-left corner (no well there)."""
        self._link.get().move_to(0.0, 0.0)
        self._origin_um = (0.0, 0.0)

    def stop(self) -> None:
        """Nothing to stop: a move is over when its time is charged."""


class SimulatedFocusStage(StageDevice):
    """Focus drive of the simulated microscope, in um: it moves the simulator's z, so the
    defocus of every frame follows it (:mod:`hardware.sim.focus`). ``set_origin`` shifts the
    reported coordinate; the drive's limits are the simulator's ``z_limits_um``.

    While continuous focus is on (``ReflectionAF``), the autofocus holds the drive: a move is
    refused with :class:`hardware.microscope.HardwareError` (switch continuous focus off
    first, as with a locked reflection autofocus on a real stand).

    Properties:
        MaxSpeed(um/s), Acceleration(um/s^2), SettleTime(ms): the drive's timing
            (the core's device delay for this stage is ``SettleTime(ms)``).
        LowerLimit(um), UpperLimit(um): read-only travel, physical coordinates.
        Simulator: pre-init, the shared simulator to attach to (.cfg loading).
    """

    def __init__(self, simulator: SimulatedMicroscope | None = None) -> None:
        super().__init__()
        self._link = _SimulatorLink(simulator)
        self._origin_um = 0.0
        _register_simulator_property(self, self._link)
        cls = type(self)
        for name, getter, setter, limits in (
            ("MaxSpeed(um/s)", cls._get_speed, cls._set_speed, (0.01, 1e6)),
            ("Acceleration(um/s^2)", cls._get_accel, cls._set_accel, (0.01, 1e8)),
            (SETTLE_PROPERTY, cls._get_settle, cls._set_settle, (0.0, 10_000.0)),
        ):
            self.register_property(
                name, property_type=float, getter=getter, setter=setter, limits=limits
            )
        self.register_property(
            "LowerLimit(um)", property_type=float, is_read_only=True, getter=cls._get_lower
        )
        self.register_property(
            "UpperLimit(um)", property_type=float, is_read_only=True, getter=cls._get_upper
        )

    def initialize(self) -> None:
        self._link.get()

    def set_position_um(self, val: float) -> None:
        """Move the drive; ValueError beyond its limits, HardwareError under continuous focus."""
        self._link.get().move_z(float(val) + self._origin_um)
        self.core.events.stagePositionChanged.emit(self.get_label(), float(val))

    def get_position_um(self) -> float:
        return self._link.get().z_um - self._origin_um

    def set_origin(self) -> None:
        self._origin_um = self._link.get().z_um

    def home(self) -> None:
        """Back to the plate's nominal focus (the physical origin of the drive's coordinate is
        kept at 0)."""
        simulator = self._link.get()
        simulator.move_z(simulator.config.focus_z_nominal_um)
        self._origin_um = 0.0

    def stop(self) -> None:
        """Nothing to stop: a move is over when its time is charged."""

    def _get_speed(self) -> float:
        return self._link.get().config.timing.z_max_speed_um_s

    def _set_speed(self, value: float) -> None:
        _set_timing(self._link.get(), z_max_speed_um_s=float(value))

    def _get_accel(self) -> float:
        return self._link.get().config.timing.z_acceleration_um_s2

    def _set_accel(self, value: float) -> None:
        _set_timing(self._link.get(), z_acceleration_um_s2=float(value))

    def _get_settle(self) -> float:
        return self._link.get().config.timing.z_settle_s * 1000.0

    def _set_settle(self, value: float) -> None:
        _set_timing(self._link.get(), z_settle_s=float(value) / 1000.0)

    def _get_lower(self) -> float:
        return self._link.get().z_limits_um[0]

    def _get_upper(self) -> float:
        return self._link.get().z_limits_um[1]


_ON_OFF = ("On", "Off")


class ReflectionAutofocus(GenericDevice):
    """Reflection (laser) autofocus of the simulated microscope: it finds the plate's
    well-bottom surface under the objective (:mod:`hardware.sim.focus`) and puts the focus
    drive at surface + ``Offset``, once (``fullFocus``) or continuously after every XY move.

    A ``GenericDevice`` because UniMMCore 0.18.1 has no Python autofocus class;
    :class:`SimulatedMMCore` routes Micro-Manager's autofocus API to it.

    Properties:
        Offset: um from the surface at which focus is held.
        ContinuousFocus: "On"/"Off" (Micro-Manager's ``enableContinuousFocus``).
        Status: read-only, "Locked", "Unlocked" (continuous focus on, no lock) or "Off".
        LockTime(ms): time of one search-and-lock (``fullFocus``, or a re-lock after a move).
        CaptureRange(um): the surface is found only within this distance of the drive's z.
        FailWells: wells (comma separated) where no reflection is found: injected autofocus
            failure (``fullFocus`` raises, continuous focus loses its lock).
        Simulator: pre-init, the shared simulator to attach to (.cfg loading).
    """

    def __init__(self, simulator: SimulatedMicroscope | None = None) -> None:
        super().__init__()
        self._link = _SimulatorLink(simulator)
        self._last_score = 0.0
        _register_simulator_property(self, self._link)
        cls = type(self)
        self.register_property(
            "Offset",
            property_type=float,
            getter=cls._get_offset,
            setter=cls._set_offset,
            limits=(-1000.0, 1000.0),
        )
        self.register_property(
            "ContinuousFocus",
            property_type=str,
            allowed_values=_ON_OFF,
            getter=cls._get_continuous,
            setter=cls._set_continuous,
        )
        self.register_property(
            "Status", property_type=str, is_read_only=True, getter=cls._get_status
        )
        self.register_property(
            "LockTime(ms)",
            property_type=float,
            getter=cls._get_lock_ms,
            setter=cls._set_lock_ms,
            limits=(0.0, 60_000.0),
        )
        self.register_property(
            "CaptureRange(um)",
            property_type=float,
            getter=cls._get_capture,
            setter=cls._set_capture,
            limits=(0.1, 10_000.0),
        )
        self.register_property(
            "FailWells", property_type=str, getter=cls._get_fail_wells, setter=cls._set_fail_wells
        )

    @property
    def simulator(self) -> SimulatedMicroscope:
        return self._link.get()

    def initialize(self) -> None:
        self._link.get()

    # autofocus API (called by SimulatedMMCore) ---------------------------------------------

    def full_focus(self) -> float:
        """One search at the current XY; returns z. Raises :class:`AutofocusError`."""
        try:
            z = self.simulator.full_focus()
        except AutofocusError:
            self._last_score = 0.0
            raise
        self._last_score = 1.0
        return z

    def last_score(self) -> float:
        """1.0 after a successful ``fullFocus``, 0.0 after a failed one (or none yet)."""
        return self._last_score

    def current_score(self) -> float:
        """Reflection signal at the current z: 1 on the target, falling linearly to 0 at the
        capture range; 0 where no reflection is found."""
        simulator = self.simulator
        x, y = simulator.position_um
        well = well_at(simulator.config.plate, x, y)
        if well is not None and well in simulator.af_fail_wells:
            return 0.0
        target = simulator.focus_truth(x, y).surface_z_um + simulator.autofocus_offset_um
        distance = abs(simulator.z_um - target)
        return max(0.0, 1.0 - distance / simulator.config.af_capture_range_um)

    # properties ---------------------------------------------------------------------------

    def _get_offset(self) -> float:
        return self.simulator.autofocus_offset_um

    def _set_offset(self, value: float) -> None:
        self.simulator.autofocus_offset_um = float(value)

    def _get_continuous(self) -> str:
        return "On" if self.simulator.continuous_focus else "Off"

    def _set_continuous(self, value: str) -> None:
        if str(value) not in _ON_OFF:
            raise ValueError(f"ContinuousFocus must be 'On' or 'Off', got {value!r}")
        self.simulator.set_continuous_focus(str(value) == "On")

    def _get_status(self) -> str:
        simulator = self.simulator
        if not simulator.continuous_focus:
            return "Off"
        return "Locked" if simulator.continuous_focus_locked else "Unlocked"

    def _get_lock_ms(self) -> float:
        return self.simulator.config.timing.af_lock_s * 1000.0

    def _set_lock_ms(self, value: float) -> None:
        _set_timing(self.simulator, af_lock_s=float(value) / 1000.0)

    def _get_capture(self) -> float:
        return self.simulator.config.af_capture_range_um

    def _set_capture(self, value: float) -> None:
        simulator = self.simulator
        simulator.config = dataclasses.replace(simulator.config, af_capture_range_um=float(value))

    def _get_fail_wells(self) -> str:
        return ",".join(sorted(self.simulator.af_fail_wells))

    def _set_fail_wells(self, value: str) -> None:
        simulator = self.simulator
        simulator.af_fail_wells = _wells(str(value), simulator.config)


class SimulatedShutter(ShutterDevice):
    """Transmitted-light shutter of the simulated microscope (state recorded only)."""

    def __init__(self) -> None:
        super().__init__()
        self._open = False

    def get_open(self) -> bool:
        return self._open

    def set_open(self, open: bool) -> None:
        self._open = bool(open)


class SimulatedObjectiveTurret(StateDevice):
    """Objective turret: state 0 holds the "40x" optics, state 1 the "100x" optics.

    Labels follow Micro-Manager's convention and can be renamed; the optics behind a state do
    not change with its label.
    """

    OPTICS: ClassVar[tuple[str, ...]] = OBJECTIVES

    def __init__(self, simulator: SimulatedMicroscope | None = None) -> None:
        super().__init__(dict(enumerate(self.OPTICS)))
        self._link = _SimulatorLink(simulator)
        _register_simulator_property(self, self._link)

    def initialize(self) -> None:
        self._link.get()

    def get_state(self) -> int:
        return self.OPTICS.index(self._link.get().objective)

    def set_state(self, position: int) -> None:
        position = int(position)
        if not 0 <= position < len(self.OPTICS):
            raise ValueError(f"objective turret has no state {position}")
        self._link.get().set_objective(OBJECTIVES[position])


class SimulatedLightPath(StateDevice):
    """Light path selector: state i holds the i-th channel of
    :data:`hardware.sim.channels.SIM_CHANNELS` (phase ring in or out, focus offset).

    Labels follow Micro-Manager's convention and can be renamed; the light path behind a state
    does not change with its label.
    """

    PATHS: ClassVar[tuple[str, ...]] = tuple(SIM_CHANNELS)

    def __init__(self, simulator: SimulatedMicroscope | None = None) -> None:
        super().__init__(dict(enumerate(self.PATHS)))
        self._link = _SimulatorLink(simulator)
        _register_simulator_property(self, self._link)

    def initialize(self) -> None:
        self._link.get()

    def get_state(self) -> int:
        return self.PATHS.index(self._link.get().channel)

    def set_state(self, position: int) -> None:
        position = int(position)
        if not 0 <= position < len(self.PATHS):
            raise ValueError(f"light path has no state {position}")
        self._link.get().set_channel(self.PATHS[position])


class SimulatedMMCore(UniMMCore):
    """UniMMCore that resolves pixel-size configs, bit depth, device delays and the autofocus
    API for Python devices (see the module docstring's known gaps).

    Args:
        mm_path: Micro-Manager folder (C++ adapters, relative .cfg paths). Defaults to this
            package's folder, which holds :data:`SIMULATED_CFG` and no C++ adapters, so no
            Micro-Manager install is looked for.
        adapter_paths: extra C++ device-adapter folders.
    """

    def __init__(self, mm_path: str | None = None, adapter_paths: Collection[str] = ()) -> None:
        super().__init__(mm_path or str(_PACKAGE_DIR), list(adapter_paths))
        self._sim_devices: dict[str, Device] = {}
        self._autofocus_label = ""
        _live_cores.add(self)

    def loadPyDevice(self, label: str, device: Device) -> None:  # noqa: N802 (MM API)
        """Load a Python device, remembering it (the autofocus API and :func:`set_plate`
        talk to the simulated devices directly)."""
        super().loadPyDevice(label, device)
        self._sim_devices[label] = device

    def simulated_device(self, label: str) -> Device | None:
        """The loaded Python device called ``label``, or None."""
        device = self._sim_devices.get(label)
        if device is None or not self.isPyDevice(label):
            return None
        return device

    # autofocus API ------------------------------------------------------------------------

    def _reflection_af(self) -> ReflectionAutofocus | None:
        device = self.simulated_device(self._autofocus_label) if self._autofocus_label else None
        return device if isinstance(device, ReflectionAutofocus) else None

    def setAutoFocusDevice(self, focusLabel: str) -> None:  # noqa: N802, N803 (MM API)
        """Make ``focusLabel`` the current autofocus device (a :class:`ReflectionAutofocus`
        here, else handed to the C++ core)."""
        if focusLabel and isinstance(self.simulated_device(focusLabel), ReflectionAutofocus):
            self._autofocus_label = focusLabel
            return
        self._autofocus_label = ""
        super().setAutoFocusDevice(focusLabel)

    def getAutoFocusDevice(self) -> Any:  # noqa: N802 (MM API)
        return self._autofocus_label or super().getAutoFocusDevice()

    def fullFocus(self) -> None:  # noqa: N802 (MM API)
        """One autofocus search; RuntimeError (:class:`AutofocusError`) when it finds none."""
        device = self._reflection_af()
        if device is None:
            return super().fullFocus()
        with device:
            z = device.full_focus()
        logger.debug("fullFocus on %s: z %.2f um", self._autofocus_label, z)

    def incrementalFocus(self) -> None:  # noqa: N802 (MM API)
        """A reflection autofocus has no coarse/fine distinction: same as :meth:`fullFocus`."""
        if self._reflection_af() is None:
            return super().incrementalFocus()
        self.fullFocus()

    def setAutoFocusOffset(self, offset: float) -> None:  # noqa: N802 (MM API)
        device = self._reflection_af()
        if device is None:
            return super().setAutoFocusOffset(offset)
        self.setProperty(self._autofocus_label, "Offset", float(offset))

    def getAutoFocusOffset(self) -> float:  # noqa: N802 (MM API)
        device = self._reflection_af()
        if device is None:
            return float(super().getAutoFocusOffset())
        return float(device.simulator.autofocus_offset_um)

    def enableContinuousFocus(self, enable: bool) -> None:  # noqa: N802 (MM API)
        device = self._reflection_af()
        if device is None:
            return super().enableContinuousFocus(enable)
        self.setProperty(self._autofocus_label, "ContinuousFocus", "On" if enable else "Off")

    def isContinuousFocusEnabled(self) -> bool:  # noqa: N802 (MM API)
        device = self._reflection_af()
        if device is None:
            return bool(super().isContinuousFocusEnabled())
        return device.simulator.continuous_focus

    def isContinuousFocusLocked(self) -> bool:  # noqa: N802 (MM API)
        device = self._reflection_af()
        if device is None:
            return bool(super().isContinuousFocusLocked())
        return device.simulator.continuous_focus_locked

    def getLastFocusScore(self) -> float:  # noqa: N802 (MM API)
        device = self._reflection_af()
        if device is None:
            return float(super().getLastFocusScore())
        return device.last_score()

    def getCurrentFocusScore(self) -> float:  # noqa: N802 (MM API)
        device = self._reflection_af()
        if device is None:
            return float(super().getCurrentFocusScore())
        return device.current_score()

    # device delays: the simulated stages' settle time ---------------------------------------

    def _settled_device(self, label: str) -> Device | None:
        device = self.simulated_device(label)
        return device if device is not None and device.has_property(SETTLE_PROPERTY) else None

    def getDeviceDelayMs(self, label: Any) -> float:  # noqa: N802 (MM API)
        """A simulated stage's ``SettleTime(ms)``; other devices as UniMMCore has it."""
        if self._settled_device(label) is not None:
            return float(self.getProperty(label, SETTLE_PROPERTY))
        return float(super().getDeviceDelayMs(label))

    def setDeviceDelayMs(self, label: Any, delayMs: float) -> None:  # noqa: N802, N803 (MM API)
        """Sets a simulated stage's ``SettleTime(ms)`` (a .cfg ``Delay`` line lands here)."""
        if self._settled_device(label) is not None:
            self.setProperty(label, SETTLE_PROPERTY, float(delayMs))
            return
        super().setDeviceDelayMs(label, delayMs)

    def usesDeviceDelay(self, label: Any) -> bool:  # noqa: N802 (MM API)
        if self._settled_device(label) is not None:
            return True
        return bool(super().usesDeviceDelay(label))

    def getCurrentPixelSizeConfig(self, cached: bool = False) -> Any:  # noqa: N802 (MM API)
        """Name of the pixel-size config matching the current device state, or "".

        The C++ core only looks at C++ devices; Python devices are compared here, read live
        (the property cache of a Python device can lag behind a state change).
        """
        found = super().getCurrentPixelSizeConfig(cached)
        if found:
            return found
        for resolution in self.getAvailablePixelSizeConfigs():
            settings = list(self.getPixelSizeConfigData(resolution))
            if settings and all(
                str(self._property_value(device, prop, cached)) == str(value)
                for device, prop, value in settings
            ):
                return resolution
        return ""

    def getPixelSizeUm(self, cached: bool = False) -> float:  # noqa: N802 (MM API)
        """Pixel size in the sample plane, in um: the current pixel-size config's size times
        the camera binning over the magnifier factor (as the C++ core computes it)."""
        resolution = self.getCurrentPixelSizeConfig(cached)
        if not resolution:
            return 0.0
        return float(self.getPixelSizeUmByID(resolution)) * self._pixel_scale()

    def getPixelSizeAffine(self, cached: bool = False) -> Any:  # noqa: N802 (MM API)
        """Pixel-size affine transform of the current pixel-size config, scaled like
        :meth:`getPixelSizeUm`; all zeros when no config matches."""
        resolution = self.getCurrentPixelSizeConfig(cached)
        if not resolution:
            return (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        scale = self._pixel_scale()
        return tuple(float(v) * scale for v in self.getPixelSizeAffineByID(resolution))

    def _pixel_scale(self) -> float:
        camera = self.getCameraDevice()
        binning = 1.0
        if camera and self.hasProperty(camera, "Binning"):
            binning = float(self.getProperty(camera, "Binning"))
        return binning / float(self.getMagnificationFactor())

    def _property_value(self, device: str, prop: str, cached: bool) -> Any:
        if cached and not self.isPyDevice(device):
            return self.getPropertyFromCache(device, prop)
        return self.getProperty(device, prop)

    def getImageBitDepth(self) -> int:  # noqa: N802 (MM API)
        """Bits per pixel value: a Python camera's ``BitDepth`` property where it has one."""
        camera = self.getCameraDevice()
        if camera and self.isPyDevice(camera) and self.hasProperty(camera, BIT_DEPTH_PROPERTY):
            return int(self.getProperty(camera, BIT_DEPTH_PROPERTY))
        return super().getImageBitDepth()


_live_cores: weakref.WeakSet[SimulatedMMCore] = weakref.WeakSet()


@atexit.register
def _detach_callbacks_at_exit() -> None:
    """Unhook the C++ core's event callback from every core still alive at exit.

    pymmcore 12 delivers core events from a C++ thread; one still queued when the
    interpreter finalises calls into Python too late and the process aborts ("FATAL:
    exception not rethrown", exit status 134). atexit handlers run before finalisation.
    """
    for core in list(_live_cores):
        with suppress(Exception):
            # the C++ CMMCore.registerCallback: pymmcore-plus hides it behind a warning
            super(CMMCorePlus, core).registerCallback(None)


def build_simulated_core(
    config: SimulationConfig | None = None,
    *,
    barcode: str = "",
    fail_wells: Collection[str] = (),
    af_fail_wells: Collection[str] = (),
    simulator: SimulatedMicroscope | None = None,
    timeout_ms: int = 5000,
) -> SimulatedMMCore:
    """A core with the simulated devices loaded, initialised and configured.

    Args:
        config: simulation settings (ignored when ``simulator`` is given).
        barcode: plate on the stage.
        fail_wells: wells whose snaps fail (injected camera failure).
        af_fail_wells: wells where the reflection autofocus finds nothing (injected failure).
        simulator: an existing simulator to drive instead of a new one.
        timeout_ms: the core's device wait timeout, in ms.

    Returns:
        A :class:`SimulatedMMCore` with devices :data:`CAMERA`, :data:`XY_STAGE`,
        :data:`FOCUS`, :data:`SHUTTER`, :data:`OBJECTIVE`, :data:`LIGHT_PATH` and
        :data:`AUTOFOCUS` as the core's current devices, the config groups
        :data:`OBJECTIVE_GROUP` (presets "40x", "100x") and :data:`CHANNEL_GROUP` (one
        preset per simulated channel) and pixel-size configs
        ``Res40x``/``Res100x`` sized by :func:`hardware.sim.optics.pixel_size_um`.
    """
    if simulator is None:
        simulator = SimulatedMicroscope(
            config, barcode=barcode, fail_wells=fail_wells, af_fail_wells=af_fail_wells
        )
    elif barcode or fail_wells or af_fail_wells:
        raise ValueError("pass barcode/fail_wells/af_fail_wells to the simulator, not alongside it")
    core = SimulatedMMCore()
    core.loadPyDevice(CAMERA, SimulatedCamera(simulator))
    core.loadPyDevice(XY_STAGE, SimulatedXYStage(simulator))
    core.loadPyDevice(FOCUS, SimulatedFocusStage(simulator))
    core.loadPyDevice(SHUTTER, SimulatedShutter())
    core.loadPyDevice(OBJECTIVE, SimulatedObjectiveTurret(simulator))
    core.loadPyDevice(LIGHT_PATH, SimulatedLightPath(simulator))
    core.loadPyDevice(AUTOFOCUS, ReflectionAutofocus(simulator))
    core.initializeAllDevices()
    for label in (CAMERA, XY_STAGE, FOCUS, SHUTTER, OBJECTIVE, LIGHT_PATH, AUTOFOCUS):
        # UniMMCore logs a Python device's initialisation error instead of raising it.
        state = core.getDeviceInitializationState(label)
        if state != DeviceInitializationState.InitializedSuccessfully:
            raise HardwareError(f"simulated device {label!r} failed to initialise ({state.name})")
    core.setCameraDevice(CAMERA)
    core.setXYStageDevice(XY_STAGE)
    core.setFocusDevice(FOCUS)
    core.setShutterDevice(SHUTTER)
    core.setAutoFocusDevice(AUTOFOCUS)
    core.setTimeoutMs(timeout_ms)
    for objective in OBJECTIVES:
        core.defineConfig(OBJECTIVE_GROUP, objective, OBJECTIVE, "Label", objective)
        resolution = pixel_config_name(objective)
        core.definePixelSizeConfig(resolution, OBJECTIVE, "Label", objective)
        size_um = pixel_size_um(simulator.config, objective)
        core.setPixelSizeUm(resolution, size_um)
        # image column grows with stage x, image row with stage y (see hardware.sim.optics)
        core.setPixelSizeAffine(resolution, [size_um, 0.0, 0.0, 0.0, size_um, 0.0])
    for channel in SIM_CHANNELS:
        core.defineConfig(CHANNEL_GROUP, channel, LIGHT_PATH, "Label", channel)
    core.setConfig(OBJECTIVE_GROUP, simulator.objective)
    core.setConfig(CHANNEL_GROUP, simulator.channel)
    core.updateSystemStateCache()
    return core


def load_simulated_core(path: str | Path = SIMULATED_CFG) -> SimulatedMMCore:
    """A :class:`SimulatedMMCore` configured from a Micro-Manager .cfg file (by default
    :data:`SIMULATED_CFG`). Its devices attach to :func:`shared_simulator`."""
    core = SimulatedMMCore()
    core.loadSystemConfiguration(Path(path))
    return core


def set_plate(
    core: UniMMCore, barcode: str, plate: PlateGeometry = SBS_96, *, camera: str = CAMERA
) -> None:
    """Tell the simulated camera which plate, of which geometry, is on the stage.

    On a :class:`SimulatedMMCore` any geometry is handed to the simulator directly; on
    another core the camera's ``PlateType`` and ``Barcode`` properties are set, so ``plate``
    must then be a registered plate type (:func:`hardware.plate.plate_geometry`).

    Raises:
        ValueError: a geometry that only its name cannot carry, on a core other than ours.
    """
    device = core.simulated_device(camera) if isinstance(core, SimulatedMMCore) else None
    if isinstance(device, SimulatedCamera):
        device.simulator.load_plate(barcode, plate)
        return
    if plate_geometry(plate.name) != plate:
        raise ValueError(f"plate {plate.name!r} is not a registered plate type's geometry")
    core.setProperty(camera, "PlateType", plate.name)
    core.setProperty(camera, "Barcode", barcode)
