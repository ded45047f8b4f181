"""The hardware boundary: what the rest of the product needs from a microscope.

Two layers, in the spirit of pymmcore-plus's MDA engine protocol:

* :class:`Microscope` is the device layer: choose an objective, move the stage, snap a frame.
  The simulator and a Micro-Manager core both provide it.
* :class:`PlateScanner` turns a :class:`ScanPlan` into a stream of acquired fields, one well at a
  time. :class:`StepScanner` does this with any :class:`Microscope`; a driver with its own
  acquisition engine (pycromanager) implements :class:`PlateScanner` directly.

Channels: a single-channel scan snaps (H, W) frames through whatever light path the microscope
is in. A scanner configured with channel names (Micro-Manager's channel group presets, e.g.
``("Phase", "Brightfield")``) exposes every field once per channel and delivers one (H, W, C)
frame per field, channel c through ``channels[c]``; the names travel in the field's
``metadata["channels"]`` (:attr:`AcquiredField.channel_names`).

A failure that affects one well is raised as :class:`WellAcquisitionError` (recoverable: that well
is recorded as failed and the plate goes on); anything else aborts the scan.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from hardware.autofocus import (
    AutofocusMode,
    AutofocusReport,
    AutofocusStrategy,
    FocusDrive,
    MicroscopeFocusDrive,
    ScanFocus,
)
from hardware.plate import SBS_96, PlateGeometry

logger = logging.getLogger(__name__)

Objective = Literal["40x", "100x"]
OBJECTIVES: tuple[Objective, ...] = ("40x", "100x")


class HardwareError(RuntimeError):
    """The microscope cannot go on (connection lost, device missing): the scan stops."""


class WellAcquisitionError(RuntimeError):
    """One well could not be acquired (camera timeout, stage error); the plate goes on."""


class AutofocusError(RuntimeError):
    """Autofocus found no focus at a site (no reflection, a flat focus curve, the peak at the
    end of the search): the field is still acquired at the best guess and its well is flagged
    ``focus_failed``; the plate goes on."""


@runtime_checkable
class Microscope(Protocol):
    """Device-level control of an automated microscope.

    Implementations keep units in um and report the pixel size of the current objective.
    """

    name: str

    @property
    def objective(self) -> Objective: ...

    def set_objective(self, objective: Objective) -> None: ...

    def load_plate(self, barcode: str, plate: PlateGeometry = SBS_96) -> None:
        """The plate ``barcode``, of geometry ``plate``, is on the stage (a robot or an operator
        put it there).

        Real drivers may check it against a barcode reader; the simulator renders that plate.
        """
        ...

    @property
    def pixel_size_um(self) -> float:
        """Size of one camera pixel in the sample plane for the current objective, in um."""
        ...

    @property
    def bit_depth(self) -> int | None:
        """Significant bits of the camera's pixel values (e.g. 12 in uint16 frames); None: the
        dtype's full range."""
        ...

    def move_to(self, x_um: float, y_um: float) -> None:
        """Move the XY stage to absolute stage coordinates (um) and wait until it settles."""
        ...

    def snap(self, well: str, field_index: int) -> np.ndarray:
        """Expose one frame at the current position: (H, W) uint8 or uint16.

        ``well`` and ``field_index`` are passed for the record (drivers put them in metadata);
        the image comes from wherever the stage is.
        """
        ...

    def close(self) -> None: ...


@runtime_checkable
class ChannelMicroscope(Microscope, Protocol):
    """A :class:`Microscope` that can switch light paths (a channel group's presets)."""

    def set_channel(self, channel: str) -> None:
        """Snap through light path ``channel`` from now on; ValueError for an unknown one."""
        ...


def check_channels(channels: Sequence[str]) -> tuple[str, ...]:
    """Channel names as a tuple, checked: unique non-empty strings, at most
    :data:`MAX_CHANNELS`; empty means one frame through the current light path.

    Raises:
        ValueError: naming what is wrong.
    """
    if isinstance(channels, str):
        raise ValueError(f"channels must be a sequence of names, got the string {channels!r}")
    names = tuple(channels)
    if any(not isinstance(n, str) or not n.strip() for n in names):
        raise ValueError(f"channel names must be non-empty strings, got {list(names)}")
    if len(set(names)) != len(names):
        raise ValueError(f"channel names must be unique, got {list(names)}")
    if len(names) > MAX_CHANNELS:
        raise ValueError(f"at most {MAX_CHANNELS} channels per field, got {len(names)}")
    return names


MAX_CHANNELS = 8
"""Most channels one field may have."""


@dataclass(frozen=True)
class ScanPlan:
    """What to acquire: which wells, how many fields each, at which objective.

    Attributes:
        barcode: the plate's barcode (recorded in metadata; the simulator renders from it).
        wells: well names in acquisition order.
        objective: "40x" or "100x".
        fields_per_well: fields per well on a centred grid.
        field_spacing_um: distance between neighbouring fields, in um.
        plate: plate geometry (stage coordinates of the wells).
        field_offsets_um: explicit (dx, dy) of each field from its well's centre, in um, the
            same for every well (a useq-schema ``WellPlatePlan``'s points); None: the centred
            grid of ``fields_per_well`` fields ``field_spacing_um`` apart. When given, its
            length must equal ``fields_per_well``.
    """

    barcode: str
    wells: Sequence[str]
    objective: Objective = "40x"
    fields_per_well: int = 1
    field_spacing_um: float = 1500.0
    plate: PlateGeometry = SBS_96
    field_offsets_um: tuple[tuple[float, float], ...] | None = None

    def __post_init__(self) -> None:
        if self.field_offsets_um is not None and len(self.field_offsets_um) != self.fields_per_well:
            raise ValueError(
                f"field_offsets_um has {len(self.field_offsets_um)} offsets for "
                f"fields_per_well={self.fields_per_well}"
            )

    def offsets(self) -> list[tuple[float, float]]:
        """(dx, dy) of each field from its well's centre, in um, in acquisition order."""
        if self.field_offsets_um is not None:
            return [(float(dx), float(dy)) for dx, dy in self.field_offsets_um]
        return self.plate.field_offsets_um(self.fields_per_well, self.field_spacing_um)


@dataclass
class AcquiredField:
    """One frame, where it came from and how long it took."""

    well: str
    field_index: int
    image: np.ndarray
    x_um: float
    y_um: float
    objective: Objective
    pixel_size_um: float
    acquired_at: datetime
    acquisition_ms: float
    # Significant bits of the pixel values (12 for a 12-bit camera's uint16 frames); None: the
    # dtype's full range. Preprocessing scales by it, so it travels with the frame.
    bit_depth: int | None = None
    metadata: dict[str, object] = field(default_factory=dict)
    # Focus drive position the frame was exposed at, in um (None: the driver cannot tell).
    z_um: float | None = None
    # Instrument time this field took (stage move, autofocus, exposure, readout), in ms: the
    # simulator's timing model in fast mode, the wall clock on a real microscope.
    instrument_ms: float | None = None
    # What autofocus did at this site (None: no autofocus ran, e.g. continuous focus or none).
    autofocus: AutofocusReport | None = None

    @property
    def channel_names(self) -> tuple[str, ...]:
        """Names of the channels of an (H, W, C) image, in order: ``metadata["channels"]``
        when the acquisition recorded them, else ``channel_0`` ... ``channel_{C-1}``; () for a
        single-channel (H, W) image."""
        if self.image.ndim != 3:
            return ()
        recorded = self.metadata.get("channels")
        count = int(self.image.shape[2])
        if isinstance(recorded, list | tuple) and len(recorded) == count:
            return tuple(str(name) for name in recorded)
        return tuple(f"channel_{c}" for c in range(count))


@dataclass
class WellAcquisition:
    """All fields of one well, or the reason the well failed."""

    well: str
    fields: list[AcquiredField]
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None

    @property
    def focus_failed(self) -> bool:
        """True when autofocus failed at any of the well's fields (the well is flagged)."""
        return any(f.autofocus is not None and not f.autofocus.ok for f in self.fields)

    @property
    def instrument_ms(self) -> float | None:
        """Instrument time of the well's fields together, in ms; None if none reported it."""
        times = [f.instrument_ms for f in self.fields if f.instrument_ms is not None]
        return float(sum(times)) if times else None


class PlateScanner(Protocol):
    """Runs a :class:`ScanPlan` and yields wells as they complete."""

    def scan(
        self, plan: ScanPlan, should_stop: Callable[[], bool] = lambda: False
    ) -> Iterator[WellAcquisition]: ...


class StepScanner:
    """Acquires a plan well by well with a :class:`Microscope`: move, focus, snap (once per
    channel), next.

    Args:
        microscope: the device layer.
        retries: extra attempts per field after a :class:`WellAcquisitionError`.
        channels: light paths to expose every field through, in order (the microscope must be
            a :class:`ChannelMicroscope`); the field's image is then (H, W, C). Empty (default):
            one (H, W) snap per field through the current light path.
        autofocus: an :data:`hardware.autofocus.AutofocusMode` or a strategy object
            (:class:`hardware.autofocus.SoftwareAutofocus`, ...): how each site is focused after
            the XY move ("continuous", the default: the microscope's focus lock, if any, as
            before). Focusing needs a microscope with a focus drive (``z_um``, ``move_z``, as
            the simulator has); software autofocus runs through the first channel.

    Every field records the z it was exposed at (``z_um``, where the microscope tells),
    the instrument time of its move, autofocus and exposures (``instrument_ms``: the
    microscope's ``instrument_time_s`` clock where it has one, else the wall clock) and the
    autofocus report. An autofocus that finds no focus does not fail the well: the field is
    exposed at the best guess and the report says ``ok=False`` (``WellAcquisition.focus_failed``).

    Raises:
        ValueError: bad channel names, channels for a microscope that cannot switch them, an
            unknown autofocus mode, or autofocus for a microscope without a focus drive.
    """

    def __init__(
        self,
        microscope: Microscope,
        *,
        retries: int = 1,
        channels: Sequence[str] = (),
        autofocus: AutofocusMode | str | AutofocusStrategy = "continuous",
    ) -> None:
        self.microscope = microscope
        self.retries = retries
        self.channels = check_channels(channels)
        if self.channels:
            if not isinstance(microscope, ChannelMicroscope):
                raise ValueError(
                    f"microscope {microscope.name!r} cannot switch channels; "
                    f"acquire {list(self.channels)} with one that has set_channel()"
                )
            for name in self.channels:  # an unknown channel fails here, not in the first well
                microscope.set_channel(name)
        self.focus = ScanFocus(autofocus)
        self.drive: FocusDrive | None = None
        if self.focus.focuses_sites or hasattr(microscope, "move_z"):
            self.drive = MicroscopeFocusDrive(microscope)  # ValueError without a focus drive

    def scan(
        self, plan: ScanPlan, should_stop: Callable[[], bool] = lambda: False
    ) -> Iterator[WellAcquisition]:
        call_load_plate(self.microscope.load_plate, plan.barcode, plan.plate)
        self.microscope.set_objective(plan.objective)
        self.focus.prepare(self.drive)
        try:
            offsets = plan.offsets()
            for well in plan.wells:
                if should_stop():
                    logger.info("scan of %s stopped before well %s", plan.barcode, well)
                    return
                try:
                    fields = [
                        self._acquire_field(plan, well, index, dx, dy)
                        for index, (dx, dy) in enumerate(offsets)
                    ]
                except WellAcquisitionError as exc:
                    logger.warning("well %s of %s failed: %s", well, plan.barcode, exc)
                    yield WellAcquisition(well=well, fields=[], error=str(exc))
                    continue
                yield WellAcquisition(well=well, fields=fields)
        finally:
            self.focus.restore(self.drive)

    def _acquire_field(
        self, plan: ScanPlan, well: str, index: int, dx: float, dy: float
    ) -> AcquiredField:
        cx, cy = plan.plate.well_center_um(well)
        x, y = cx + dx, cy + dy
        for attempt in range(self.retries + 1):
            started = time.perf_counter()
            instrument_started = self._instrument_time_s()
            try:
                self.microscope.move_to(x, y)
                report = self._focus(x, y)
                image = self._snap(well, index)
            except WellAcquisitionError:
                if attempt == self.retries:
                    raise
                logger.info("retrying %s field %d after an acquisition error", well, index)
                continue
            return AcquiredField(
                well=well,
                field_index=index,
                image=image,
                x_um=x,
                y_um=y,
                objective=self.microscope.objective,
                pixel_size_um=self.microscope.pixel_size_um,
                acquired_at=datetime.now(UTC),
                acquisition_ms=(time.perf_counter() - started) * 1000.0,
                bit_depth=self.microscope.bit_depth,
                metadata=self._metadata(plan),
                z_um=self.drive.z_um if self.drive is not None else None,
                instrument_ms=(self._instrument_time_s() - instrument_started) * 1000.0,
                autofocus=report,
            )
        raise AssertionError("unreachable")  # the loop either returns or re-raises

    def _focus(self, x: float, y: float) -> AutofocusReport | None:
        """Focus the site (the stage is at (x, y)) through the first channel."""
        if self.drive is None or not (self.focus.focuses_sites or self.focus.watches_lock):
            return None
        if self.channels and self.focus.focuses_sites:
            microscope = self.microscope
            assert isinstance(microscope, ChannelMicroscope)  # checked in __init__
            microscope.set_channel(self.channels[0])
        report = self.focus.focus(self.drive, x, y)
        if report is not None and not report.ok:
            logger.warning("autofocus failed at (%.0f, %.0f) um: %s", x, y, report.error)
        return report

    def _instrument_time_s(self) -> float:
        """The microscope's instrument clock (the simulator's timing model), else wall time."""
        clock = getattr(self.microscope, "instrument_time_s", None)
        return float(clock) if isinstance(clock, int | float) else time.perf_counter()

    def _snap(self, well: str, index: int) -> np.ndarray:
        """One (H, W) frame, or with channels one exposure per channel stacked to (H, W, C)."""
        if not self.channels:
            return self.microscope.snap(well, index)
        microscope = self.microscope
        assert isinstance(microscope, ChannelMicroscope)  # checked in __init__
        planes = []
        for name in self.channels:
            microscope.set_channel(name)
            planes.append(microscope.snap(well, index))
        return np.ascontiguousarray(np.stack(planes, axis=-1))

    def _metadata(self, plan: ScanPlan) -> dict[str, object]:
        metadata: dict[str, object] = {"microscope": self.microscope.name, "barcode": plan.barcode}
        if self.channels:
            metadata["channels"] = list(self.channels)
        return metadata


def call_load_plate(load: Callable[..., None], barcode: str, plate: PlateGeometry) -> None:
    """``load(barcode, plate)``; ``load(barcode)`` for a driver whose ``load_plate`` predates
    plate geometries (it then renders / checks its default plate)."""
    try:
        inspect.signature(load).bind(barcode, plate)
    except TypeError:
        load(barcode)
        return
    except ValueError:  # no signature to inspect (a builtin): try the full call
        pass
    load(barcode, plate)
