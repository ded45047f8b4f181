"""Collecting frames and their metadata from pycromanager's threads into wells.

Frames arrive through pycromanager's ``image_process_fn`` (which keeps them out of
pycromanager's own storage) into a queue, together with what the hooks and the lost-frame
callback report (:class:`_Run`); :class:`_Collector` groups them into wells, in plan order, and
turns each frame's tags into an :class:`hardware.microscope.AcquiredField`.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import numpy as np
from pycromanager.acquisition.acq_eng_py.main.acq_notification import AcqNotification

from hardware.microscope import (
    OBJECTIVES,
    AcquiredField,
    HardwareError,
    Objective,
    ScanPlan,
    WellAcquisition,
)
from hardware.pycromanager.plan import Site

logger = logging.getLogger(__name__)


# Messages from pycromanager's threads to the scan generator.
@dataclass
class _Started:
    label: str
    monotonic: float


@dataclass
class _Frame:
    image: np.ndarray
    tags: dict[str, Any]
    at: datetime
    monotonic: float


@dataclass
class _Lost:
    label: str | None
    message: str


@dataclass
class _Finished:
    pass


_Message = _Started | _Frame | _Lost | _Finished


class _Run:
    """What pycromanager's threads report during one ``Acquisition``, and its callbacks.

    The hooks and the lost-frame callback run on the engine's thread, one event after the
    other, so ``current`` names the field whose frame was lost.
    """

    def __init__(self) -> None:
        self.messages: queue.Queue[_Message] = queue.Queue()
        self.current: str | None = None
        self.skip_wells: set[str] = set()  # engine thread only
        self.wells_by_label: dict[str, str] = {}

    def image_process_fn(self, image: np.ndarray, metadata: dict[str, Any]) -> None:
        now = datetime.now(UTC)
        self.messages.put(_Frame(image, metadata, now, time.monotonic()))
        # returning None keeps the frame out of pycromanager's storage: we own it now

    def pre_hardware_hook_fn(self, event: dict[str, Any]) -> dict[str, Any] | None:
        label = str(event.get("axes", {}).get("position", ""))
        self.current = label
        if self.wells_by_label.get(label) in self.skip_wells:
            return None  # the well already failed: don't move there for its other fields
        self.messages.put(_Started(label, time.monotonic()))
        return event

    def frame_lost(self, message: str) -> None:
        label = self.current
        if label is not None and label in self.wells_by_label:
            self.skip_wells.add(self.wells_by_label[label])
        self.messages.put(_Lost(label, message))

    def notification_callback_fn(self, notification: Any) -> None:
        # The data sink finishes after the last frame went through image_process_fn.
        if AcqNotification.is_data_sink_finished_notification(notification):
            self.messages.put(_Finished())


@dataclass
class _WellFrames:
    fields: dict[int, AcquiredField] = field(default_factory=dict)
    started: dict[int, float] = field(default_factory=dict)


class _Collector:
    """Groups frames into wells and hands finished wells out in plan order.

    Order needs restoring: frames reach us through pycromanager's image-processor thread,
    lost frames straight from the engine thread, so a well can fail before the previous
    well's last frame has come through.
    """

    def __init__(
        self, plan: ScanPlan, sites: list[Site], *, camera_bit_depth: int | None = None
    ) -> None:
        self.plan = plan
        self.camera_bit_depth = camera_bit_depth
        self.sites = sites
        self.by_label = {site.label: site for site in sites}
        self.pending: dict[str, _WellFrames] = {well: _WellFrames() for well in plan.wells}
        self.done: set[str] = set()
        self._ready: dict[str, WellAcquisition] = {}
        self._released = 0  # plan.wells[:_released] have been handed out

    def unfinished_sites(self) -> list[Site]:
        return [
            site
            for site in self.sites
            if site.well not in self.done and site.index not in self.pending[site.well].fields
        ]

    def release(self) -> list[WellAcquisition]:
        """Finished wells whose predecessors in the plan have all been handed out."""
        wells = []
        order = self.plan.wells
        while self._released < len(order) and order[self._released] in self._ready:
            wells.append(self._ready.pop(order[self._released]))
            self._released += 1
        return wells

    def handle(self, message: _Message) -> None:
        """File one message from pycromanager's threads (:class:`_Finished` is the caller's)."""
        if isinstance(message, _Started):
            self.started(message)
        elif isinstance(message, _Frame):
            self.frame(message)
        elif isinstance(message, _Lost):
            site = self.by_label.get(message.label or "")
            if site is None:
                logger.warning("frame lost outside any field of the plan: %s", message.message)
            else:
                self.fail(site.well, message.message)

    def started(self, message: _Started) -> None:
        site = self.by_label.get(message.label)
        if site is not None and site.well not in self.done:
            self.pending[site.well].started[site.index] = message.monotonic

    def frame(self, frame: _Frame) -> None:
        """File a frame; its well is ready once all its fields are in."""
        tags = frame.tags
        label = str(tags.get("PositionName") or _axes(tags).get("position", ""))
        site = self.by_label.get(label)
        if site is None:
            logger.warning("frame with unknown position label %r ignored", label)
            return
        if site.well in self.done:
            return
        try:
            acquired = self._field(site, frame)
        except HardwareError as exc:
            self.fail(site.well, str(exc))
            return
        well = self.pending[site.well]
        well.fields[site.index] = acquired
        if len(well.fields) == self.plan.fields_per_well:
            fields = [well.fields[i] for i in range(self.plan.fields_per_well)]
            self._finish(WellAcquisition(well=site.well, fields=fields))

    def fail(self, well: str, error: str) -> None:
        """Fail ``well`` (its frames are dropped) unless it is done already."""
        if well in self.done:
            return
        logger.warning("well %s of %s failed: %s", well, self.plan.barcode, error)
        self._finish(WellAcquisition(well=well, fields=[], error=error))

    def _finish(self, well: WellAcquisition) -> None:
        self.done.add(well.well)
        self._ready[well.well] = well

    def _field(self, site: Site, frame: _Frame) -> AcquiredField:
        tags = frame.tags
        objective = _axes(tags).get("channel", self.plan.objective)
        if objective not in OBJECTIVES or objective != self.plan.objective:
            raise HardwareError(f"frame of {site.label} is at objective {objective!r}")
        pixel_size = float(tags.get("PixelSize_um") or 0.0)
        if pixel_size <= 0:
            raise HardwareError(
                f"no pixel size for objective {objective}: define a pixel-size config for it"
            )
        started = self.pending[site.well].started.get(site.index, frame.monotonic)
        return AcquiredField(
            well=site.well,
            field_index=site.index,
            image=frame.image,
            x_um=_float(tags, ("XPositionUm", "XPosition_um_Intended"), site.x_um),
            y_um=_float(tags, ("YPositionUm", "YPosition_um_Intended"), site.y_um),
            objective=cast(Objective, objective),
            pixel_size_um=pixel_size,
            acquired_at=frame.at,
            acquisition_ms=(frame.monotonic - started) * 1000.0,
            bit_depth=self.camera_bit_depth,
            metadata={
                "microscope": "pycromanager",
                "barcode": self.plan.barcode,
                "position_label": site.label,
                "camera": tags.get("Camera"),
                "exposure_ms": tags.get("Exposure"),
                "z_um": tags.get("ZPositionUm", tags.get("ZPosition_um_Intended")),
                "bit_depth": tags.get("BitDepth"),
            },
        )


def _axes(tags: Mapping[str, Any]) -> dict[str, Any]:
    axes = tags.get("Axes", {})
    return axes if isinstance(axes, dict) else {}


def _float(tags: Mapping[str, Any], keys: tuple[str, ...], default: float) -> float:
    for key in keys:
        value = tags.get(key)
        if value is not None:
            return float(value)
    return default
