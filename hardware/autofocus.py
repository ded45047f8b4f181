"""Autofocus: bringing each site into focus before its frame is exposed.

Pieces, from the bottom up:

* :func:`focus_metric`: how sharp a raw frame is (a number that peaks at best focus).
* :class:`FocusDrive`: what autofocus needs from a microscope (the focus drive, a frame, the
  instrument's clock, optionally a hardware autofocus device). Two adapters:
  :class:`MicroscopeFocusDrive` over a microscope object with the simulator's API
  (:class:`hardware.sim.SimulatedMicroscope`), :class:`CoreFocusDrive` over a Micro-Manager core
  (pymmcore / pymmcore-plus camelCase, or pycromanager's Java ``Core`` in snake_case).
* Strategies, each ``focus(drive, x_um, y_um) -> AutofocusReport``:
  :class:`SoftwareAutofocus` (an image-based coarse-to-fine search, what Micro-Manager's
  OughtaFocus does), :class:`HardwareAutofocus` (the device's ``fullFocus``: a reflection /
  laser autofocus such as a Nikon PFS) and :class:`MapAutofocus` (fits the plate's focus surface
  from the sites focused so far, :class:`FocusMap`, and searches only near its prediction).
* :class:`ScanFocus`: what a scanner holds for one :data:`AutofocusMode`: ``prepare`` at scan
  start (switches continuous focus on or off), then ``focus`` per site.

An autofocus that finds no focus does not raise: its report says ``ok=False`` and why, the drive
is left at the best guess, the field is exposed there and its well is flagged ``focus_failed``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

AutofocusMethod = Literal["hardware", "software", "map"]

AutofocusMode = Literal["none", "continuous", "hardware", "software", "map"]
"""How a scan focuses each site:

* ``"none"``: not at all; continuous focus is switched off, z stays where it is (a fixed-z scan).
* ``"continuous"``: the microscope's continuous focus (a hardware focus lock, e.g. PFS) keeps
  z; no per-site autofocus runs (the default, what the scanners always did).
* ``"hardware"``: the autofocus device's ``fullFocus`` at every site (continuous focus off).
* ``"software"``: :class:`SoftwareAutofocus` at every site.
* ``"map"``: :class:`MapAutofocus`: software autofocus for the first sites, then a narrow search
  around the focus map's prediction.
"""

AUTOFOCUS_MODES: tuple[AutofocusMode, ...] = ("none", "continuous", "hardware", "software", "map")

INSTRUMENT_TIME_PROPERTY = "InstrumentTimeS"
"""Camera property of the simulated core: instrument seconds charged so far (timing model)."""


def check_autofocus_mode(mode: str) -> AutofocusMode:
    """``mode`` as an :data:`AutofocusMode`; ValueError naming the valid ones otherwise."""
    for known in AUTOFOCUS_MODES:
        if mode == known:
            return known
    raise ValueError(f"unknown autofocus mode {mode!r}; expected one of {list(AUTOFOCUS_MODES)}")


@dataclass(frozen=True)
class AutofocusReport:
    """What autofocus did at one site.

    Attributes:
        method: "hardware" (the microscope's autofocus device, Micro-Manager ``fullFocus``),
            "software" (an image-based search) or "map" (a search near the focus map's
            prediction).
        ok: False when no focus was found; the field is then exposed at ``z_um`` anyway (the
            best guess) and its well is flagged ``focus_failed``.
        z_um: focus drive position chosen, in um.
        steps: frames exposed (software) or lock attempts (hardware).
        score: the focus metric at ``z_um`` (software/map), or the device's focus score.
        seconds: instrument time spent focusing, in s.
        predicted_z_um: the focus map's prediction the search started from (map only).
        error: why it failed (None when ``ok``).
    """

    method: AutofocusMethod
    ok: bool
    z_um: float
    steps: int
    score: float
    seconds: float
    predicted_z_um: float | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (stored with the image)."""
        return asdict(self)


# -- the focus metric ------------------------------------------------------------------------------
def focus_metric(frame: npt.ArrayLike, *, crop: float = 0.5, binning: int = 4) -> float:
    """Sharpness of a raw frame: the normalised variance of the Laplacian of a binned central
    crop, ``var(laplacian(B)) / mean(B)**2``.

    * **Central crop** (``crop`` of each side, default the middle half): the part of the field
      that a scanner wants sharp, away from the vignetted corners and a well wall at the frame's
      edge; a quarter of the pixels, so a focus step costs little compute.
    * **Binning** ``binning`` x ``binning`` (mean): camera shot and read noise, which has no
      focus dependence, is averaged down, and the binning chooses the band the Laplacian
      responds to: fine detail (small binning) gives a narrow, precise peak, coarser detail
      (large binning) a wide one that is still above the floor several um from focus. The
      searches use binning 8 to find the peak and 4 to place it (measured on the simulator at
      40x: the binning-4 score halves about 1.2 um from focus, the binning-8 score about 2 um,
      and stays >10x its floor out to 8 um).
    * **Laplacian** (4-neighbour): a band-pass that removes the flat background and uneven
      illumination; defocus blur removes its energy first.
    * **Divided by the mean squared**: scaling the exposure (or lamp) by k scales the Laplacian by
      k and the mean by k, so the score does not depend on exposure, only on sharpness.

    A (H, W, C) frame is scored on the mean of its channels. Returns 0.0 for a black frame.
    Higher is sharper; absolute values depend on the sample (confluence), so autofocus compares
    scores of one site only.
    """
    image = np.asarray(frame, dtype=np.float32)
    if image.ndim == 3:
        image = image.mean(axis=2)
    if image.ndim != 2:
        raise ValueError(f"focus_metric needs an (H, W) or (H, W, C) frame, got {image.shape}")
    if not 0.0 < crop <= 1.0:
        raise ValueError(f"crop must be within (0, 1], got {crop}")
    if binning < 1:
        raise ValueError(f"binning must be >= 1, got {binning}")
    height, width = image.shape
    ch = max(3 * binning, round(height * crop))
    cw = max(3 * binning, round(width * crop))
    ch, cw = min(ch, height) // binning * binning, min(cw, width) // binning * binning
    if ch < 3 * binning or cw < 3 * binning:
        raise ValueError(f"frame {image.shape} too small for focus_metric (binning {binning})")
    top, left = (height - ch) // 2, (width - cw) // 2
    region = image[top : top + ch, left : left + cw]
    binned = region.reshape(ch // binning, binning, cw // binning, binning).mean(axis=(1, 3))
    mean = float(binned.mean())
    if mean <= 0.0:
        return 0.0
    laplacian = (
        4.0 * binned[1:-1, 1:-1]
        - binned[:-2, 1:-1]
        - binned[2:, 1:-1]
        - binned[1:-1, :-2]
        - binned[1:-1, 2:]
    )
    return float(laplacian.var(dtype=np.float64) / (mean * mean))


# -- focus drives ----------------------------------------------------------------------------------
class AutofocusUnavailableError(RuntimeError):
    """The microscope has no hardware autofocus device (or no continuous focus)."""


@runtime_checkable
class FocusDrive(Protocol):
    """What autofocus needs from a microscope at the current XY position."""

    @property
    def z_um(self) -> float:
        """Focus drive position, in um."""
        ...

    @property
    def z_limits_um(self) -> tuple[float, float]:
        """(lowest, highest) position the drive may go to, in um."""
        ...

    def move_z(self, z_um: float) -> None:
        """Move the focus drive to ``z_um`` and wait until it settles."""
        ...

    def snap_focus_frame(self) -> np.ndarray:
        """Expose one frame for focusing at the current position (not stored)."""
        ...

    def instrument_time_s(self) -> float:
        """Instrument seconds so far (any origin): the simulator's timing model, else the wall
        clock. Autofocus budgets and reports are differences of it."""
        ...

    @property
    def has_autofocus_device(self) -> bool:
        """True when :meth:`full_focus` and continuous focus are available."""
        ...

    def full_focus(self) -> float:
        """One search of the hardware autofocus device at the current XY; returns the z found.

        Raises:
            AutofocusError: the device found no focus.
            AutofocusUnavailableError: there is no autofocus device.
        """
        ...

    def set_continuous_focus(self, on: bool) -> None:
        """Switch the hardware focus lock on or off (off is a no-op without a device).

        Raises:
            AutofocusUnavailableError: ``on`` without an autofocus device.
        """
        ...

    def focus_locked(self) -> bool | None:
        """Whether continuous focus holds its lock now; None when it is off, there is no
        autofocus device, or the device cannot tell."""
        ...


def _wall_clock() -> float:
    return time.monotonic()


class MicroscopeFocusDrive:
    """A :class:`FocusDrive` over a microscope object with the simulator's API
    (:class:`hardware.sim.SimulatedMicroscope`): ``z_um``, ``move_z``, ``z_limits_um``,
    ``snap``, optionally ``instrument_time_s``, ``full_focus``, ``set_continuous_focus``.

    Args:
        microscope: the microscope (must have ``z_um`` and ``move_z``).

    Raises:
        ValueError: the microscope has no focus drive.
    """

    def __init__(self, microscope: Any) -> None:
        if not (hasattr(microscope, "move_z") and hasattr(microscope, "z_um")):
            raise ValueError(
                f"microscope {getattr(microscope, 'name', microscope)!r} has no focus drive "
                "(z_um / move_z): it cannot autofocus"
            )
        self.microscope = microscope

    @property
    def z_um(self) -> float:
        return float(self.microscope.z_um)

    @property
    def z_limits_um(self) -> tuple[float, float]:
        limits = getattr(self.microscope, "z_limits_um", None)
        if limits is None:
            return (-math.inf, math.inf)
        low, high = limits
        return float(low), float(high)

    def move_z(self, z_um: float) -> None:
        self.microscope.move_z(float(z_um))

    def snap_focus_frame(self) -> np.ndarray:
        # "" names no well: the simulator then checks the well under the stage for faults
        return np.asarray(self.microscope.snap("", 0))

    def instrument_time_s(self) -> float:
        clock = getattr(self.microscope, "instrument_time_s", None)
        return float(clock) if clock is not None else _wall_clock()

    @property
    def has_autofocus_device(self) -> bool:
        return hasattr(self.microscope, "full_focus")

    def full_focus(self) -> float:
        if not self.has_autofocus_device:
            raise AutofocusUnavailableError(f"{self.microscope.name!r} has no autofocus device")
        return float(self.microscope.full_focus())

    def set_continuous_focus(self, on: bool) -> None:
        setter = getattr(self.microscope, "set_continuous_focus", None)
        if setter is None:
            if on:
                raise AutofocusUnavailableError(f"{self.microscope.name!r} has no continuous focus")
            return
        setter(bool(on))

    def focus_locked(self) -> bool | None:
        if not getattr(self.microscope, "continuous_focus", False):
            return None
        locked = getattr(self.microscope, "continuous_focus_locked", None)
        return None if locked is None else bool(locked)


_FIRST_CAP = re.compile(r"(.)([A-Z][a-z]+)")
_ALL_CAP = re.compile(r"([a-z0-9])([A-Z])")


def _snake(name: str) -> str:
    """``getAutoFocusDevice`` -> ``get_auto_focus_device``: pycromanager's Java ``Core`` names
    (the rule of :func:`hardware.pycromanager.engine.camel_to_snake`, without importing
    pycromanager)."""
    return _ALL_CAP.sub(r"\1_\2", _FIRST_CAP.sub(r"\1_\2", name)).lower()


_LIMIT_PROPERTIES = ("LowerLimit(um)", "UpperLimit(um)")
"""Focus-device properties holding its travel, um (the simulated focus stage has them)."""


class CoreFocusDrive:
    """A :class:`FocusDrive` over a Micro-Manager core: a pymmcore / pymmcore-plus core
    (camelCase: ``getPosition``, ``setPosition``, ``waitForDevice``, ``snapImage``, ``getImage``,
    ``fullFocus``, ``enableContinuousFocus``) or pycromanager's Java ``Core`` (the same in
    snake_case).

    Args:
        core: the core.
        z_limits_um: (lowest, highest) focus position the search may use, in um. Micro-Manager
            has no API for stage limits; None: the focus device's ``LowerLimit(um)`` /
            ``UpperLimit(um)`` properties where it has them (the simulated focus stage does),
            else unbounded (the search itself never strays further than its range from where
            it started).
    """

    def __init__(self, core: Any, *, z_limits_um: tuple[float, float] | None = None) -> None:
        self.core = core
        self._limits = z_limits_um
        self._instrument_clock: bool | None = None  # does the camera report instrument time?

    def _call(self, name: str, *args: Any) -> Any:
        method = getattr(self.core, name, None)
        if method is None:
            method = getattr(self.core, _snake(name))
        return method(*args)

    def _focus_device(self) -> str:
        return str(self._call("getFocusDevice"))

    @property
    def z_um(self) -> float:
        return float(self._call("getPosition"))

    @property
    def z_limits_um(self) -> tuple[float, float]:
        if self._limits is None:
            self._limits = self._device_limits()
        return self._limits

    def _device_limits(self) -> tuple[float, float]:
        device = self._focus_device()
        try:
            if device and all(
                self._call("hasProperty", device, name) for name in _LIMIT_PROPERTIES
            ):
                low, high = (float(self._call("getProperty", device, n)) for n in _LIMIT_PROPERTIES)
                if math.isfinite(low) and math.isfinite(high) and low < high:
                    return low, high
                # 0/0 or inverted: an unset travel, not a drive that cannot move
                logger.warning(
                    "focus device %r reports limits %g..%g; ignoring them", device, low, high
                )
        except Exception:  # a core without these calls: no limits known
            logger.debug("no focus limits from %r", device, exc_info=True)
        return (-math.inf, math.inf)

    def move_z(self, z_um: float) -> None:
        device = self._focus_device()
        self._call("setPosition", float(z_um))
        self._call("waitForDevice", device)

    def snap_focus_frame(self) -> np.ndarray:
        self._call("snapImage")
        image = np.asarray(self._call("getImage"))
        if image.ndim == 1:  # pycromanager's Java core hands the pixels over flat
            height, width = int(self._call("getImageHeight")), int(self._call("getImageWidth"))
            image = image.reshape(height, width)
        return image

    def move_xy(self, x_um: float, y_um: float) -> None:
        """Move the XY stage to (x_um, y_um) and wait until it settles (the engine's own move
        to the same position afterwards is then a move of zero length)."""
        self._call("setXYPosition", float(x_um), float(y_um))
        self._call("waitForDevice", str(self._call("getXYStageDevice")))

    @property
    def has_instrument_clock(self) -> bool:
        """True when the camera reports instrument time (the simulator's ``InstrumentTimeS``
        property); :meth:`instrument_time_s` is the wall clock otherwise."""
        if self._instrument_clock is None:
            camera = str(self._call("getCameraDevice"))
            self._instrument_clock = bool(camera) and bool(
                self._call("hasProperty", camera, INSTRUMENT_TIME_PROPERTY)
            )
        return self._instrument_clock

    def instrument_time_s(self) -> float:
        if self.has_instrument_clock:
            camera = str(self._call("getCameraDevice"))
            return float(self._call("getProperty", camera, INSTRUMENT_TIME_PROPERTY))
        return _wall_clock()

    @property
    def has_autofocus_device(self) -> bool:
        return bool(self._call("getAutoFocusDevice"))

    def full_focus(self) -> float:
        if not self.has_autofocus_device:
            raise AutofocusUnavailableError("the core has no autofocus device (AutoFocus role)")
        from hardware.microscope import AutofocusError

        try:
            self._call("fullFocus")
        except AutofocusError:
            raise
        except AutofocusUnavailableError:
            raise
        except Exception as exc:  # pymmcore: RuntimeError (CMMError); pyjavaz: plain Exception
            raise AutofocusError(str(exc)) from exc
        self._call("waitForDevice", self._focus_device())
        return self.z_um

    def focus_score(self) -> float | None:
        """The autofocus device's score of the last search, where the core reports one."""
        try:
            return float(self._call("getLastFocusScore"))
        except Exception:
            return None

    def set_continuous_focus(self, on: bool) -> None:
        if not self.has_autofocus_device:
            if on:
                raise AutofocusUnavailableError("the core has no autofocus device (AutoFocus role)")
            return
        self._call("enableContinuousFocus", bool(on))

    def focus_locked(self) -> bool | None:
        if not self.has_autofocus_device:
            return None
        try:
            if not self._call("isContinuousFocusEnabled"):
                return None
            return bool(self._call("isContinuousFocusLocked"))
        except Exception:  # a device that cannot report its lock
            logger.debug("continuous focus lock state unavailable", exc_info=True)
            return None


# -- strategies ------------------------------------------------------------------------------------
class AutofocusStrategy(Protocol):
    """Focuses one site; the report says what it did (it raises only when the microscope is
    broken, never because no focus was found)."""

    method: AutofocusMethod

    def focus(self, drive: FocusDrive, x_um: float, y_um: float) -> AutofocusReport: ...

    def start_plate(self) -> None:
        """A new plate (or scan) begins: forget what was learnt about the last one."""
        ...


class _OutOfBudgetError(Exception):
    """The search used up its steps or seconds."""


class _Search:
    """One site's search: measures the focus metric at z positions within the budget and keeps
    the curve (z -> score)."""

    def __init__(
        self,
        drive: FocusDrive,
        *,
        max_steps: int,
        max_seconds: float,
        metric: Callable[[np.ndarray], float],
    ) -> None:
        self.drive = drive
        self.max_steps = max_steps
        self.max_seconds = max_seconds
        self.metric = metric
        self.started_s = drive.instrument_time_s()
        self.start_z = drive.z_um
        self.low, self.high = drive.z_limits_um
        self.curve: dict[float, float] = {}
        self.steps = 0

    def clamp(self, z_um: float) -> float:
        return min(max(z_um, self.low), self.high)

    def elapsed_s(self) -> float:
        return self.drive.instrument_time_s() - self.started_s

    def measure(self, z_um: float) -> float:
        """The metric at ``z_um`` (clamped to the limits; a z measured before is not re-exposed).

        Raises:
            _OutOfBudgetError: no steps or seconds left.
        """
        z = round(self.clamp(z_um), 6)
        if z in self.curve:
            return self.curve[z]
        if self.steps >= self.max_steps or self.elapsed_s() >= self.max_seconds:
            raise _OutOfBudgetError(
                f"gave up after {self.steps} steps / {self.elapsed_s():.2f} s "
                f"(budget {self.max_steps} steps, {self.max_seconds:g} s)"
            )
        self.drive.move_z(z)
        score = self.metric(self.drive.snap_focus_frame())
        self.steps += 1
        self.curve[z] = score
        return score

    def new_stage(self, metric: Callable[[np.ndarray], float]) -> dict[float, float]:
        """Start a stage with its own metric (steps and time go on); returns the last stage's
        curve."""
        curve, self.curve, self.metric = self.curve, {}, metric
        return curve

    def best(self) -> tuple[float, float]:
        z = max(self.curve, key=self.curve.__getitem__)
        return z, self.curve[z]

    def scan(self, zs: list[float]) -> None:
        """Measure ``zs`` in ascending order (one sweep of the drive, no backlash reversals)."""
        for z in sorted({round(self.clamp(z), 6) for z in zs}):
            self.measure(z)

    def grid_search(self, center: float, step: float, half_steps: int, extensions: int) -> bool:
        """Sample ``center +- k * step`` (k <= half_steps); while the best sample is at an end of
        what was sampled, extend past it by ``half_steps`` steps, at most ``extensions`` times.
        True when the best sample ended up inside (not at an end, or at a drive limit)."""
        zs = [center + k * step for k in range(-half_steps, half_steps + 1)]
        self.scan(zs)
        low_end, high_end = self.clamp(min(zs)), self.clamp(max(zs))
        extended = 0
        while True:
            best, _ = self.best()
            at_low, at_high = abs(best - low_end) < 1e-6, abs(best - high_end) < 1e-6
            if not (at_low or at_high):
                return True
            limit = self.low if at_low else self.high
            if abs(best - limit) < 1e-6 or extended == extensions:
                return False  # at the drive's limit (nothing beyond), or no extension left
            sign = -1.0 if at_low else 1.0
            more = [best + sign * k * step for k in range(1, half_steps + 1)]
            self.scan(more)
            low_end = min(low_end, self.clamp(min(more)))
            high_end = max(high_end, self.clamp(max(more)))
            extended += 1

    def bracket(self, center: float, step: float, extensions: int) -> bool:
        """Sample ``center +- step / 2``, then step on from the better of the two, uphill,
        until a sample is lower than the one before (the peak is bracketed: True) or after
        ``extensions`` further steps (False). Three frames when the peak lies within about a
        step of ``center``, one more per step beyond."""
        low, high = center - step / 2.0, center + step / 2.0
        low_score, high_score = self.measure(low), self.measure(high)
        direction = 1.0 if high_score >= low_score else -1.0
        edge = round(self.clamp(high if direction > 0 else low), 6)
        for _ in range(extensions + 1):
            beyond = round(self.clamp(edge + direction * step), 6)
            if beyond == edge:
                return False  # at the drive's limit
            if self.measure(beyond) < self.curve[edge]:
                return True
            edge = beyond
        return False

    def peak(self, step: float) -> tuple[float, float]:
        """Best z with a parabolic fit through the best sample and its neighbours ``step``
        apart, on the log of the scores (a Gaussian-shaped peak is then exactly a parabola);
        the fitted z is kept within the neighbours. Returns (z, score at the best sample)."""
        best, score = self.best()
        below = self.curve.get(round(best - step, 6))
        above = self.curve.get(round(best + step, 6))
        if below is None or above is None or min(below, score, above) <= 0:
            return best, score
        lb, lc, la = math.log(below), math.log(score), math.log(above)
        curvature = lb - 2.0 * lc + la
        if curvature >= 0:
            return best, score  # not a peak (flat): keep the best sample
        offset = 0.5 * (lb - la) / curvature
        return best + max(-1.0, min(1.0, offset)) * step, score

    def finish(
        self,
        method: AutofocusMethod,
        ok: bool,
        z_um: float,
        score: float,
        *,
        predicted_z_um: float | None = None,
        error: str | None = None,
    ) -> AutofocusReport:
        z = self.clamp(z_um)
        self.drive.move_z(z)
        return AutofocusReport(
            method=method,
            ok=ok,
            z_um=float(z),
            steps=self.steps,
            score=float(score),
            seconds=max(0.0, self.elapsed_s()),
            predicted_z_um=predicted_z_um,
            error=error,
        )


@dataclass
class SoftwareAutofocus:
    """Image-based autofocus: a coarse-to-fine search that maximises :func:`focus_metric`.

    1. **Coarse**: the metric (binning ``coarse_binning``: a wide peak) at
       ``start +- k * coarse_step_um`` over ``+- coarse_range_um`` (``start``: the current z, or
       the ``center_um`` given). A peak at an end of the sampled range is followed past it,
       ``max_extensions`` times at most.
    2. **Flat-curve check**: the peak must exceed the curve's floor (its lowest sample) by
       ``min_peak_ratio``; a blank well (no cells, only noise) gives a flat curve and fails.
    3. **Fine**: a parabola through the coarse peak and its neighbours (on the log scores: a
       Gaussian-shaped peak is exactly a parabola there) estimates the peak; the metric
       (binning ``fine_binning``: a narrow, precise peak) at ``estimate +- k * fine_step_um``,
       k <= ``fine_half_steps``, is followed past an end likewise and the peak placed by the same
       parabola fit.

    The search is bounded (``max_steps`` frames, ``max_seconds`` instrument seconds) and clamped
    to the drive's limits. Failure (``ok=False``, error says why) leaves the drive at the best
    guess: the start for a flat curve (the curve says nothing), else the best sample.

    With the defaults a site takes 9 coarse + 3 fine frames (about 1.8 s of instrument time on
    the simulator's timing model): Micro-Manager's OughtaFocus takes about 9 frames.
    """

    coarse_range_um: float = 24.0
    coarse_step_um: float = 6.0
    fine_step_um: float = 1.0
    fine_half_steps: int = 1
    max_extensions: int = 2
    min_peak_ratio: float = 1.3
    max_steps: int = 40
    max_seconds: float = 30.0
    coarse_binning: int = 8
    fine_binning: int = 4
    method: AutofocusMethod = field(default="software", init=False)

    def __post_init__(self) -> None:
        for name in ("coarse_range_um", "coarse_step_um", "fine_step_um", "max_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.fine_half_steps < 1 or self.max_steps < 3 or self.max_extensions < 0:
            raise ValueError("fine_half_steps >= 1, max_steps >= 3, max_extensions >= 0 needed")
        if self.min_peak_ratio < 1.0:
            raise ValueError(f"min_peak_ratio must be >= 1, got {self.min_peak_ratio}")

    def start_plate(self) -> None:
        """Nothing to forget: every site is searched on its own."""

    def coarse_metric(self, frame: np.ndarray) -> float:
        return focus_metric(frame, binning=self.coarse_binning)

    def fine_metric(self, frame: np.ndarray) -> float:
        return focus_metric(frame, binning=self.fine_binning)

    def focus(
        self,
        drive: FocusDrive,
        x_um: float,
        y_um: float,
        *,
        center_um: float | None = None,
        range_um: float | None = None,
        method: AutofocusMethod = "software",
        predicted_z_um: float | None = None,
    ) -> AutofocusReport:
        """Search around ``center_um`` (None: the current z) over ``+- range_um`` (None:
        ``coarse_range_um``); ``x_um``, ``y_um`` are for the record."""
        search = _Search(
            drive, max_steps=self.max_steps, max_seconds=self.max_seconds,
            metric=self.coarse_metric,
        )  # fmt: skip
        start = search.clamp(search.start_z if center_um is None else center_um)
        half_range = self.coarse_range_um if range_um is None else range_um
        coarse_half = max(1, math.ceil(half_range / self.coarse_step_um - 1e-9))

        def failed(z: float, error: str) -> AutofocusReport:
            return _failed(search, method, z, error, predicted_z_um, x_um, y_um)

        try:
            inside = search.grid_search(
                start, self.coarse_step_um, coarse_half, self.max_extensions
            )
            flat = _flat(search.curve, self.min_peak_ratio)
            if flat is not None:
                return failed(start, flat)
            estimate, _ = search.peak(self.coarse_step_um)
            if not inside:
                return failed(
                    estimate, f"focus peak at the edge of the search (z={estimate:.2f} um)"
                )
            search.new_stage(self.fine_metric)
            inside = search.grid_search(
                estimate, self.fine_step_um, self.fine_half_steps, self.max_extensions
            )
            z, score = search.peak(self.fine_step_um)
            if not inside:
                return failed(z, f"fine focus peak at the edge of the search (z={z:.2f} um)")
        except _OutOfBudgetError as exc:
            return failed(search.best()[0] if search.curve else start, str(exc))
        return search.finish(method, True, z, score, predicted_z_um=predicted_z_um)


def _flat(curve: dict[float, float], min_peak_ratio: float) -> str | None:
    """Why ``curve`` is too flat to hold a focus peak, or None."""
    scores = list(curve.values())
    floor, peak = min(scores), max(scores)
    if floor > 0 and peak >= min_peak_ratio * floor:
        return None
    if peak <= 0:
        return f"no contrast in any of {len(scores)} frames (saturated or dark)"
    ratio = peak / floor if floor > 0 else 0.0
    return (
        f"flat focus curve: peak/floor {ratio:.2f} < {min_peak_ratio:g} over "
        f"{len(scores)} steps (no sample in view?)"
    )


def _failed(
    search: _Search,
    method: AutofocusMethod,
    z: float,
    error: str,
    predicted_z_um: float | None,
    x_um: float,
    y_um: float,
) -> AutofocusReport:
    logger.info("autofocus at (%.0f, %.0f) um failed: %s", x_um, y_um, error)
    score = search.curve.get(round(search.clamp(z), 6), 0.0)
    return search.finish(method, False, z, score, predicted_z_um=predicted_z_um, error=error)


@dataclass
class HardwareAutofocus:
    """The microscope's autofocus device (Micro-Manager's AutoFocus role, ``fullFocus``): a
    reflection or laser autofocus finds the coverslip / plate bottom and applies its offset.

    Attributes:
        attempts: ``fullFocus`` calls before the site is given up (a reflection search can miss
            once on a bubble or a scratch).
    """

    attempts: int = 1
    method: AutofocusMethod = field(default="hardware", init=False)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {self.attempts}")

    def start_plate(self) -> None:
        """Nothing to forget: the device measures every site."""

    def focus(self, drive: FocusDrive, x_um: float, y_um: float) -> AutofocusReport:
        """One site: ``fullFocus`` until it succeeds or ``attempts`` are used up; a failure
        (AutofocusError, or a RuntimeError from the core) gives ``ok=False`` at the current z."""
        from hardware.microscope import AutofocusError

        started = drive.instrument_time_s()
        error = ""
        for attempt in range(1, self.attempts + 1):
            try:
                z = drive.full_focus()
            except (AutofocusError, RuntimeError) as exc:
                if isinstance(exc, AutofocusUnavailableError):
                    raise
                error = f"{type(exc).__name__}: {exc}"
                logger.info("hardware autofocus at (%.0f, %.0f) um: %s", x_um, y_um, error)
                continue
            return AutofocusReport(
                "hardware", True, float(z), attempt, _device_score(drive),
                max(0.0, drive.instrument_time_s() - started),
            )  # fmt: skip
        return AutofocusReport(
            "hardware", False, drive.z_um, self.attempts, _device_score(drive),
            max(0.0, drive.instrument_time_s() - started), error=error or "no focus",
        )  # fmt: skip


def _device_score(drive: FocusDrive) -> float:
    """The autofocus device's score where the drive reports one, else 0.0."""
    score = getattr(drive, "focus_score", None)
    value = score() if callable(score) else None
    return float(value) if value is not None and math.isfinite(value) else 0.0


# -- the focus map ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class FocusPrediction:
    """The focus map's z at a site and how sure it is.

    Attributes:
        z_um: predicted best focus, in um.
        sigma_um: one-sigma uncertainty of that prediction (the residual scatter of the map's
            sites, widened by the fit's own uncertainty at this site), in um.
        model: "plane" or "quadratic".
        sites: sites the fit used (outliers excluded).
    """

    z_um: float
    sigma_um: float
    model: Literal["plane", "quadratic"]
    sites: int


class FocusMap:
    """The plate's focus surface, fitted from sites already focused.

    A least-squares plane ``z = c + a x + b y`` from 3 sites, a quadratic surface (adds
    ``x^2, x y, y^2``: a bowed plate) from 6. Coordinates are centred on the sites and in mm.
    A weak Gaussian prior on the slopes (``prior_slope_um_per_mm``) and curvatures
    (``prior_curvature_um_per_mm2``) keeps the fit defined when the sites are collinear (the
    first row of a plate) and lets the uncertainty grow in directions the sites do not span.

    Robustness: sites whose leave-one-out residual exceeds ``outlier_sigmas`` robust standard
    deviations (1.4826 x MAD, at least ``min_scatter_um``) are dropped and the fit repeated (a
    site focused on debris or a wrong peak must not tilt the map).

    Uncertainty: ``sigma_um = s * sqrt(1 + h(x, y))`` with ``s`` the RMS of the sites'
    leave-one-out residuals (how far the map missed each site when fitted without it: honest
    even when few sites leave few spare degrees of freedom; pooled with one pseudo-observation
    of ``prior_sigma_um``) and ``h`` the fit's leverage at (x, y), which grows away from the
    sites.
    """

    def __init__(
        self,
        *,
        prior_slope_um_per_mm: float = 1.0,
        prior_curvature_um_per_mm2: float = 0.01,
        prior_sigma_um: float = 1.0,
        outlier_sigmas: float = 3.5,
        min_scatter_um: float = 1.0,
    ) -> None:
        self.prior_slope = prior_slope_um_per_mm
        self.prior_curvature = prior_curvature_um_per_mm2
        self.prior_sigma = prior_sigma_um
        self.outlier_sigmas = outlier_sigmas
        self.min_scatter = min_scatter_um
        self._sites: list[tuple[float, float, float]] = []
        self._fit: _Fit | None = None

    def __len__(self) -> int:
        return len(self._sites)

    def add(self, x_um: float, y_um: float, z_um: float) -> None:
        """A site focused at ``z_um`` (only successful autofocus results belong here)."""
        self._sites.append((float(x_um), float(y_um), float(z_um)))
        self._fit = None

    def clear(self) -> None:
        self._sites.clear()
        self._fit = None

    @property
    def outliers(self) -> list[tuple[float, float, float]]:
        """Sites the current fit left out."""
        fit = self._fitted()
        if fit is None:
            return []
        return [site for site, keep in zip(self._sites, fit.inliers, strict=True) if not keep]

    def predict(self, x_um: float, y_um: float) -> FocusPrediction | None:
        """The surface at (x, y); None with fewer than 3 sites."""
        fit = self._fitted()
        if fit is None:
            return None
        phi = fit.features(x_um, y_um)
        z = float(phi @ fit.coef)
        leverage = float(phi @ fit.covariance @ phi)
        sigma = fit.scatter * math.sqrt(1.0 + max(0.0, leverage))
        return FocusPrediction(z, sigma, fit.model, int(fit.inliers.sum()))

    def _fitted(self) -> _Fit | None:
        if len(self._sites) < 3:
            return None
        if self._fit is None:
            self._fit = self._robust_fit()
        return self._fit

    def _robust_fit(self) -> _Fit:
        sites = np.asarray(self._sites, dtype=np.float64)
        model: Literal["plane", "quadratic"] = "quadratic" if len(sites) >= 6 else "plane"
        inliers = np.ones(len(sites), dtype=bool)
        fit = self._fit_on(sites, inliers, model)
        for _ in range(3):
            residuals = sites[:, 2] - fit.predict_many(sites[:, 0], sites[:, 1])
            residuals[inliers] = fit.loo_residuals
            kept = residuals[inliers]
            scale = 1.4826 * float(np.median(np.abs(kept - np.median(kept))))
            threshold = self.outlier_sigmas * max(scale, self.min_scatter)
            new = np.abs(residuals) <= threshold
            if new.sum() < 3 or np.array_equal(new, inliers):
                break
            inliers = new
            if model == "quadratic" and inliers.sum() < 6:
                model = "plane"
            fit = self._fit_on(sites, inliers, model)
        return fit

    def _fit_on(
        self, sites: npt.NDArray[np.float64], inliers: npt.NDArray[np.bool_], model: str
    ) -> _Fit:
        used = sites[inliers]
        center = (float(used[:, 0].mean()), float(used[:, 1].mean()))
        fit = _Fit(model, center, inliers)  # type: ignore[arg-type]
        design = np.stack([fit.features(x, y) for x, y in used[:, :2]])
        prior_std = [math.inf, self.prior_slope, self.prior_slope]
        if model == "quadratic":
            prior_std += [self.prior_curvature] * 3
        # ridge = sigma0^2 / tau^2 per coefficient (the intercept is free)
        ridge = np.diag([0.0 if math.isinf(t) else (self.prior_sigma / t) ** 2 for t in prior_std])
        normal = design.T @ design + ridge
        inverse = np.linalg.inv(normal)
        fit.coef = np.asarray(inverse @ design.T @ used[:, 2], dtype=np.float64)
        residual = used[:, 2] - design @ fit.coef
        # leave-one-out residuals r / (1 - h): what predicting each site without it would have
        # missed by (in-sample residuals of a 6-term fit to 10 sites are far too small)
        leverage = np.einsum("ij,jk,ik->i", design, inverse, design)
        fit.loo_residuals = residual / np.clip(1.0 - leverage, 0.05, None)
        loo = fit.loo_residuals
        fit.scatter = math.sqrt((float(loo @ loo) + self.prior_sigma**2) / (len(used) + 1))
        fit.covariance = np.asarray(inverse, dtype=np.float64)
        return fit


@dataclass
class _Fit:
    model: Literal["plane", "quadratic"]
    center: tuple[float, float]
    inliers: npt.NDArray[np.bool_]
    coef: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(3))
    covariance: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros((3, 3)))
    scatter: float = 0.0
    loo_residuals: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))

    def features(self, x_um: float, y_um: float) -> npt.NDArray[np.float64]:
        dx = (float(x_um) - self.center[0]) / 1000.0
        dy = (float(y_um) - self.center[1]) / 1000.0
        if self.model == "plane":
            return np.array([1.0, dx, dy])
        return np.array([1.0, dx, dy, dx * dx, dx * dy, dy * dy])

    def predict_many(
        self, xs: npt.NDArray[np.float64], ys: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.float64]:
        return np.array([self.features(x, y) @ self.coef for x, y in zip(xs, ys, strict=True)])


@dataclass
class MapAutofocus:
    """Autofocus with a focus map: :class:`SoftwareAutofocus` at the first ``seed_sites``
    sites, afterwards a narrow search around the map's prediction.

    The narrow search samples the metric (binning ``binning``, a peak about 4 um wide) at
    ``prediction +- step_um / 2`` and steps on uphill until the peak is bracketed (three frames
    when the prediction is within about a step; ``max_extensions`` further steps at most). A
    more uncertain prediction (``search_sigmas * sigma`` over one step) gets a grid
    ``prediction +- k * step_um`` with k up to ``ceil(search_sigmas * sigma / step_um)``,
    followed past an end likewise. The peak is placed with the parabola fit of the software
    search; a peak still at an end after that gets the software search centred there over
    ``fallback_range_um``. The flat-curve check of the software search applies to these
    samples (a blank well fails).
    When the prediction is too uncertain for a narrow search (``search_sigmas * sigma`` over
    ``max_narrow_half_width_um``), the site gets the software search centred on the prediction
    over that half-width instead. Sites whose autofocus failed never enter the map.

    Attributes:
        software: the plain software autofocus (its budget and ratio apply here too).
        seed_sites: sites focused with plain software autofocus before the map is used (>= 3).
        step_um, binning, search_sigmas, max_narrow_half_width_um, max_extensions,
        fallback_range_um: as above.
        focus_map: the map (reset by :meth:`start_plate`).
    """

    software: SoftwareAutofocus = field(default_factory=SoftwareAutofocus)
    seed_sites: int = 3
    step_um: float = 3.0
    binning: int = 8
    max_extensions: int = 3
    fallback_range_um: float = 12.0
    search_sigmas: float = 0.5
    max_narrow_half_width_um: float = 8.0
    focus_map: FocusMap = field(default_factory=FocusMap)
    method: AutofocusMethod = field(default="map", init=False)

    def __post_init__(self) -> None:
        if self.seed_sites < 3:
            raise ValueError(f"seed_sites must be >= 3 (a plane needs 3), got {self.seed_sites}")
        if not self.step_um > 0:
            raise ValueError(f"step_um must be > 0, got {self.step_um}")

    def start_plate(self) -> None:
        """A new plate: its surface is not the last one's."""
        self.focus_map.clear()

    def metric(self, frame: np.ndarray) -> float:
        return focus_metric(frame, binning=self.binning)

    def focus(self, drive: FocusDrive, x_um: float, y_um: float) -> AutofocusReport:
        prediction = self.focus_map.predict(x_um, y_um)
        if len(self.focus_map) < self.seed_sites or prediction is None:
            report = self.software.focus(drive, x_um, y_um)
        else:
            report = self._near(drive, x_um, y_um, prediction)
        if report.ok:
            self.focus_map.add(x_um, y_um, report.z_um)
        return report

    def _near(
        self, drive: FocusDrive, x_um: float, y_um: float, prediction: FocusPrediction
    ) -> AutofocusReport:
        software = self.software
        half_width = self.search_sigmas * prediction.sigma_um
        predicted = prediction.z_um
        if half_width > self.max_narrow_half_width_um:
            return software.focus(
                drive, x_um, y_um, center_um=predicted, range_um=half_width, method="map",
                predicted_z_um=predicted,
            )  # fmt: skip
        half_steps = max(1, math.ceil(half_width / self.step_um - 1e-9))
        search = _Search(
            drive, max_steps=software.max_steps, max_seconds=software.max_seconds,
            metric=self.metric,
        )  # fmt: skip
        center = search.clamp(predicted)

        def failed(z: float, error: str) -> AutofocusReport:
            return _failed(search, "map", z, error, predicted, x_um, y_um)

        try:
            if half_steps == 1:
                inside = search.bracket(center, self.step_um, self.max_extensions)
            else:
                inside = search.grid_search(center, self.step_um, half_steps, self.max_extensions)
        except _OutOfBudgetError as exc:
            return failed(search.best()[0] if search.curve else center, str(exc))
        flat = _flat(search.curve, software.min_peak_ratio)
        if flat is not None:
            return failed(center, f"{flat} near the map's prediction")
        z, score = search.peak(self.step_um)
        if not inside:
            # further off than the map thought (or beyond the extensions): search from there
            logger.info(
                "focus map off by over %.1f um at (%.0f, %.0f) um", abs(z - center), x_um, y_um
            )
            narrow_s = search.elapsed_s()
            wider = software.focus(
                drive, x_um, y_um, center_um=z, range_um=self.fallback_range_um, method="map",
                predicted_z_um=predicted,
            )  # fmt: skip
            return dataclasses.replace(
                wider, steps=wider.steps + search.steps, seconds=wider.seconds + narrow_s
            )
        return search.finish("map", True, z, score, predicted_z_um=predicted)


# -- what a scanner holds --------------------------------------------------------------------------
def autofocus_strategy(mode: AutofocusMode) -> AutofocusStrategy | None:
    """The default strategy of ``mode`` (None for "none" and "continuous")."""
    mode = check_autofocus_mode(mode)
    if mode == "hardware":
        return HardwareAutofocus()
    if mode == "software":
        return SoftwareAutofocus()
    if mode == "map":
        return MapAutofocus()
    return None


class ScanFocus:
    """Autofocus as a scanner uses it: :meth:`prepare` at scan start, :meth:`focus` per site.

    Args:
        autofocus: an :data:`AutofocusMode`, or a strategy object (its ``method`` decides the
            mode: "hardware", "software" or "map"), for tuned settings.
    """

    def __init__(self, autofocus: AutofocusMode | str | AutofocusStrategy = "continuous") -> None:
        # Whether continuous focus was on when prepare() ran (None: no autofocus device).
        self._continuous_before: bool | None = None
        if isinstance(autofocus, str):
            self.mode: AutofocusMode = check_autofocus_mode(autofocus)
            self.strategy = autofocus_strategy(self.mode)
        else:
            self.mode = autofocus.method
            self.strategy = autofocus

    @property
    def focuses_sites(self) -> bool:
        """True when :meth:`focus` does something (not "none" / "continuous")."""
        return self.strategy is not None

    def prepare(self, drive: FocusDrive | None) -> None:
        """Scan start: "continuous" makes sure continuous focus is on; every other mode switches
        it off, so that z stays where autofocus (or nothing) put it. A new plate for the
        strategy (the focus map starts empty).

        Raises:
            AutofocusUnavailableError: "continuous" or "hardware" without an autofocus device.
        """
        if self.strategy is not None:
            self.strategy.start_plate()
        self._continuous_before = None
        if drive is not None and drive.has_autofocus_device:
            self._continuous_before = drive.focus_locked() is not None
        if drive is None:
            if self.focuses_sites:
                raise ValueError(f"autofocus {self.mode!r} needs a focus drive")
            return
        if self.mode == "continuous":
            if drive.has_autofocus_device:
                drive.set_continuous_focus(True)
            return
        if self.mode == "hardware" and not drive.has_autofocus_device:
            raise AutofocusUnavailableError("autofocus 'hardware' needs an autofocus device")
        drive.set_continuous_focus(False)

    def restore(self, drive: FocusDrive | None) -> None:
        """Scan end: put continuous focus back as :meth:`prepare` found it (the operator's PFS
        or CRISP stays on after a software-autofocus scan). Never raises: a scan's own outcome
        must not be replaced by a failure to restore."""
        before = self._continuous_before
        if drive is None or before is None:
            return
        try:
            if (drive.focus_locked() is not None) != before:
                drive.set_continuous_focus(before)
        except Exception:
            logger.exception("could not restore continuous focus (%s)", "on" if before else "off")

    @property
    def watches_lock(self) -> bool:
        """True for "continuous": :meth:`focus` reports a site where the lock is lost."""
        return self.mode == "continuous"

    def focus(self, drive: FocusDrive, x_um: float, y_um: float) -> AutofocusReport | None:
        """Focus the site at (x, y) (the stage is there). "none": None; "continuous": None
        while the lock holds, a failed "hardware" report where it is lost (no reflection, the
        surface beyond the capture range), so that the well is flagged ``focus_failed``."""
        if self.strategy is not None:
            return self.strategy.focus(drive, x_um, y_um)
        if self.watches_lock and drive.focus_locked() is False:
            return AutofocusReport(
                method="hardware",
                ok=False,
                z_um=drive.z_um,
                steps=0,
                score=0.0,
                seconds=0.0,
                error="continuous focus lost its lock here (no reflection, or the surface is "
                "beyond the device's capture range); z stayed where the last lock left it",
            )
        return None
