"""How long the simulated instrument takes: stage and focus moves, autofocus, exposure, readout.

A scan's pace on a real microscope is set by its mechanics, not by how fast frames can be
computed, so the simulator charges every action to an instrument clock
(:class:`InstrumentClock`): in ``"fast"`` mode the clock only adds the time up (tests and
benchmarks read :attr:`InstrumentClock.elapsed_s`), in ``"realtime"`` mode it also sleeps that
long (demos, the page), so a simulated scan runs at an instrument's pace.

Moves follow a trapezoidal velocity profile (accelerate at ``a`` up to ``v_max``, cruise,
decelerate), the usual motion-controller model; a move too short to reach ``v_max`` is a
triangle. After a move the stage settles (Micro-Manager's per-device delay). Each axis of the
XY stage has its own motor, so a diagonal move takes as long as its longer axis.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Literal

logger = logging.getLogger(__name__)

TimingMode = Literal["fast", "realtime"]
TIMING_MODES: tuple[TimingMode, ...] = ("fast", "realtime")


def move_time_s(distance_um: float, max_speed_um_s: float, acceleration_um_s2: float) -> float:
    """Travel time of a point-to-point move by a trapezoidal velocity profile, in s (no settle).

    Raises:
        ValueError: a speed or acceleration that is not positive.
    """
    if max_speed_um_s <= 0 or acceleration_um_s2 <= 0:
        raise ValueError(
            f"speed and acceleration must be positive, got {max_speed_um_s}, {acceleration_um_s2}"
        )
    d = abs(float(distance_um))
    if d == 0.0:
        return 0.0
    ramp_um = max_speed_um_s**2 / acceleration_um_s2  # accelerating plus decelerating
    if d <= ramp_um:  # triangle: never reaches full speed
        return 2.0 * math.sqrt(d / acceleration_um_s2)
    return 2.0 * max_speed_um_s / acceleration_um_s2 + (d - ramp_um) / max_speed_um_s


@dataclass(frozen=True)
class InstrumentTiming:
    """The timing figures of the simulated instrument (defaults: a motorised inverted
    microscope with a plate stage, a focus drive and a reflection autofocus).

    With the defaults a 9 mm hop to the next well takes about 0.58 s with settling, a 2 um
    focus step 0.10 s, a readout 30 ms and a reflection-autofocus lock 0.25 s.

    Attributes:
        xy_max_speed_um_s: XY stage top speed per axis, um/s (25 mm/s).
        xy_acceleration_um_s2: XY stage acceleration, um/s^2 (150 mm/s^2).
        xy_settle_s: XY settle time after a move, s (Micro-Manager's device delay).
        z_max_speed_um_s: focus drive top speed, um/s.
        z_acceleration_um_s2: focus drive acceleration, um/s^2.
        z_settle_s: focus drive settle time after a move, s.
        camera_readout_s: sensor readout after each exposure, s.
        af_lock_s: reflection autofocus: one search-and-lock (``fullFocus``), or the re-lock of
            continuous focus after an XY move, s.
    """

    xy_max_speed_um_s: float = 25_000.0
    xy_acceleration_um_s2: float = 150_000.0
    xy_settle_s: float = 0.05
    z_max_speed_um_s: float = 1_000.0
    z_acceleration_um_s2: float = 20_000.0
    z_settle_s: float = 0.08
    camera_readout_s: float = 0.03
    af_lock_s: float = 0.25

    def __post_init__(self) -> None:
        for name in (
            "xy_max_speed_um_s",
            "xy_acceleration_um_s2",
            "z_max_speed_um_s",
            "z_acceleration_um_s2",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("xy_settle_s", "z_settle_s", "camera_readout_s", "af_lock_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def xy_move_s(self, dx_um: float, dy_um: float) -> float:
        """XY stage move plus settle, in s; 0 for no move (the axes move at once)."""
        if dx_um == 0.0 and dy_um == 0.0:
            return 0.0
        travel = max(
            move_time_s(d, self.xy_max_speed_um_s, self.xy_acceleration_um_s2)
            for d in (dx_um, dy_um)
        )
        return travel + self.xy_settle_s

    def z_move_s(self, dz_um: float) -> float:
        """Focus drive move plus settle, in s; 0 for no move."""
        if dz_um == 0.0:
            return 0.0
        return (
            move_time_s(dz_um, self.z_max_speed_um_s, self.z_acceleration_um_s2) + self.z_settle_s
        )

    def snap_s(self, exposure_ms: float) -> float:
        """One frame: exposure plus readout, in s."""
        return max(0.0, float(exposure_ms)) / 1000.0 + self.camera_readout_s


class InstrumentClock:
    """Instrument seconds charged so far; in ``"realtime"`` mode charging also sleeps.

    Not thread-safe on its own: the simulator charges from whichever thread drives it, one
    action at a time, as one instrument would.
    """

    def __init__(self) -> None:
        self._elapsed_s = 0.0

    @property
    def elapsed_s(self) -> float:
        """Monotonic instrument seconds charged so far."""
        return self._elapsed_s

    def charge(self, seconds: float, mode: TimingMode, what: str = "") -> None:
        """Add ``seconds`` of instrument time (``what`` is for the debug log); in realtime mode
        sleep that long first, as the instrument would be busy.

        Raises:
            ValueError: an unknown mode or a negative duration.
        """
        if mode not in TIMING_MODES:
            raise ValueError(f"timing mode must be one of {TIMING_MODES}, got {mode!r}")
        if seconds < 0:
            raise ValueError(f"cannot charge negative time ({seconds} s for {what})")
        if seconds == 0.0:
            return
        if mode == "realtime":
            time.sleep(seconds)
        self._elapsed_s += seconds
        logger.debug(
            "instrument %s: %.1f ms (total %.3f s)", what, seconds * 1000.0, self._elapsed_s
        )
