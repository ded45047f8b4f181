"""The hardware boundary: what the rest of the product needs from a microscope.

Two layers, in the spirit of pymmcore-plus's MDA engine protocol:

* :class:`Microscope` is the device layer: choose an objective, move the stage, snap a frame.
  The simulator and a Micro-Manager core both provide it.
* :class:`PlateScanner` turns a :class:`ScanPlan` into a stream of acquired fields, one well at a
  time. :class:`StepScanner` does this with any :class:`Microscope`; a driver with its own
  acquisition engine (pycromanager) implements :class:`PlateScanner` directly.

A failure that affects one well is raised as :class:`WellAcquisitionError` (recoverable: that well
is recorded as failed and the plate goes on); anything else aborts the scan.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from hardware.plate import SBS_96, PlateGeometry

logger = logging.getLogger(__name__)

Objective = Literal["40x", "100x"]
OBJECTIVES: tuple[Objective, ...] = ("40x", "100x")


class HardwareError(RuntimeError):
    """The microscope cannot go on (connection lost, device missing): the scan stops."""


class WellAcquisitionError(RuntimeError):
    """One well could not be acquired (camera timeout, stage error); the plate goes on."""


@runtime_checkable
class Microscope(Protocol):
    """Device-level control of an automated microscope.

    Implementations keep units in um and report the pixel size of the current objective.
    """

    name: str

    @property
    def objective(self) -> Objective: ...

    def set_objective(self, objective: Objective) -> None: ...

    def load_plate(self, barcode: str) -> None:
        """The plate ``barcode`` is on the stage (a robot or an operator put it there).

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


@dataclass(frozen=True)
class ScanPlan:
    """What to acquire: which wells, how many fields each, at which objective.

    Attributes:
        barcode: the plate's barcode (recorded in metadata; the simulator renders from it).
        wells: well names in acquisition order.
        objective: "40x" or "100x".
        fields_per_well: fields per well on a centred grid.
        field_spacing_um: distance between neighbouring fields, in um.
    """

    barcode: str
    wells: Sequence[str]
    objective: Objective = "40x"
    fields_per_well: int = 1
    field_spacing_um: float = 1500.0
    plate: PlateGeometry = SBS_96


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


@dataclass
class WellAcquisition:
    """All fields of one well, or the reason the well failed."""

    well: str
    fields: list[AcquiredField]
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None


class PlateScanner(Protocol):
    """Runs a :class:`ScanPlan` and yields wells as they complete."""

    def scan(
        self, plan: ScanPlan, should_stop: Callable[[], bool] = lambda: False
    ) -> Iterator[WellAcquisition]: ...


class StepScanner:
    """Acquires a plan well by well with a :class:`Microscope`: move, snap, next.

    Args:
        microscope: the device layer.
        retries: extra attempts per field after a :class:`WellAcquisitionError`.
    """

    def __init__(self, microscope: Microscope, *, retries: int = 1) -> None:
        self.microscope = microscope
        self.retries = retries

    def scan(
        self, plan: ScanPlan, should_stop: Callable[[], bool] = lambda: False
    ) -> Iterator[WellAcquisition]:
        self.microscope.load_plate(plan.barcode)
        self.microscope.set_objective(plan.objective)
        offsets = plan.plate.field_offsets_um(plan.fields_per_well, plan.field_spacing_um)
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

    def _acquire_field(
        self, plan: ScanPlan, well: str, index: int, dx: float, dy: float
    ) -> AcquiredField:
        cx, cy = plan.plate.well_center_um(well)
        x, y = cx + dx, cy + dy
        for attempt in range(self.retries + 1):
            started = time.perf_counter()
            try:
                self.microscope.move_to(x, y)
                image = self.microscope.snap(well, index)
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
                metadata={"microscope": self.microscope.name, "barcode": plan.barcode},
            )
        raise AssertionError("unreachable")  # the loop either returns or re-raises
