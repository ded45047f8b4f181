"""Collecting frames and their metadata from pycromanager's threads into wells.

Frames arrive through pycromanager's ``image_process_fn`` (which keeps them out of
pycromanager's own storage) into a queue, together with what the hooks and the lost-frame
callback report (:class:`_Run`); :class:`_Collector` groups them into wells, in plan order, and
turns each frame's tags into an :class:`hardware.microscope.AcquiredField`. In a multi-channel
scan a field is complete when a frame of each channel is in; its planes are stacked, in the
configured channel order, into one (H, W, C) image.

Continuous focus (``PycromanagerSettings.autofocus="continuous"``): the post-hardware hook asks
the core, once per field, whether the lock holds, and reports a lost one.

Autofocus (``PycromanagerSettings.autofocus`` "hardware", "software" or "map"): the pre-hardware
hook moves the XY stage to the field through the core, focuses there
(:class:`hardware.autofocus.ScanFocus` on a :class:`hardware.autofocus.CoreFocusDrive`) and sets
the event's ``"z"`` (absolute focus position, um; pycromanager's ``AcquisitionEvent`` reads it
into ``zPosition_`` and the engine moves the focus drive there before exposing). The report
travels to the collector (:class:`_Focused`) and onto the field's ``autofocus``; a field's
channels share one focus. An autofocus that raises (a camera error during the search) loses the
field like a lost frame: its well fails and the plate goes on.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from pycromanager.acquisition.acq_eng_py.main.acq_notification import AcqNotification

from hardware.autofocus import AutofocusReport, CoreFocusDrive, ScanFocus
from hardware.microscope import (
    OBJECTIVES,
    AcquiredField,
    HardwareError,
    ScanPlan,
    WellAcquisition,
)
from hardware.pycromanager.plan import Site

logger = logging.getLogger(__name__)

INSTRUMENT_TIME_TAG = "InstrumentTimeS"
"""Frame tag: the instrument clock after the exposure (the simulated camera's timing model;
:class:`hardware.pycromanager.engine.PycromanagerCoreAdapter` copies it from the camera)."""


# Messages from pycromanager's threads to the scan generator.
@dataclass
class _Started:
    label: str
    monotonic: float
    instrument_s: float | None = None  # the instrument clock at the field's start, if any


@dataclass
class _Focused:
    label: str
    report: AutofocusReport


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


_Message = _Started | _Focused | _Frame | _Lost | _Finished


class _Run:
    """What pycromanager's threads report during one ``Acquisition``, and its callbacks.

    The hooks and the lost-frame callback run on the engine's thread, one event after the
    other, so ``current`` names the field whose frame was lost.
    """

    def __init__(
        self,
        focus: ScanFocus | None = None,
        drive: Callable[[], CoreFocusDrive] | None = None,
    ) -> None:
        self.messages: queue.Queue[_Message] = queue.Queue()
        self.current: str | None = None
        self.skip_wells: set[str] = set()  # engine thread only
        self.wells_by_label: dict[str, str] = {}
        self.focus = focus
        self._make_drive = drive
        # One drive per thread that asks (a Java Core's ZMQ socket is not shared across the
        # threads pycromanager's Java backend runs hooks on), made on first use.
        self._drives = threading.local()
        self._z_by_label: dict[str, float] = {}  # engine thread only
        self._lock_checked: set[str] = set()  # engine thread only

    def image_process_fn(self, image: np.ndarray, metadata: dict[str, Any]) -> None:
        now = datetime.now(UTC)
        self.messages.put(_Frame(image, metadata, now, time.monotonic()))
        # returning None keeps the frame out of pycromanager's storage: we own it now

    def drive(self) -> CoreFocusDrive | None:
        """The focus drive on the core (made on first use, on the thread that calls it: a
        Java ``Core`` is not shared across threads)."""
        drive: CoreFocusDrive | None = getattr(self._drives, "drive", None)
        if drive is None and self._make_drive is not None:
            drive = self._make_drive()
            self._drives.drive = drive
        return drive

    def pre_hardware_hook_fn(self, event: dict[str, Any]) -> dict[str, Any] | None:
        label = str(event.get("axes", {}).get("position", ""))
        self.current = label
        if self.wells_by_label.get(label) in self.skip_wells:
            return None  # the well already failed: don't move there for its other fields
        drive = self.drive()
        instrument_s = None
        if drive is not None and drive.has_instrument_clock and label not in self._z_by_label:
            instrument_s = drive.instrument_time_s()
        self.messages.put(_Started(label, time.monotonic(), instrument_s))
        if self.focus is None or not self.focus.focuses_sites or drive is None:
            return event
        z = self._z_by_label.get(label)
        if z is None:  # the field's first event (its other channels share the focus)
            try:
                x, y = float(event["x"]), float(event["y"])
                drive.move_xy(x, y)
                report = self.focus.focus(drive, x, y)
            except Exception as exc:  # a broken search loses the field, not the acquisition
                logger.exception("autofocus at %s raised", label)
                self.frame_lost(f"autofocus at {label} failed: {type(exc).__name__}: {exc}")
                return None
            assert report is not None  # focuses_sites
            self.messages.put(_Focused(label, report))
            z = report.z_um
            self._z_by_label[label] = z
        event["z"] = z  # the engine moves the focus drive here before exposing
        return event

    def post_hardware_hook_fn(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """Continuous focus: once per field, after the engine moved there (the lock followed),
        report a site where the lock is lost, so that its well is flagged ``focus_failed``."""
        if self.focus is None or not self.focus.watches_lock:
            return event
        label = str(event.get("axes", {}).get("position", ""))
        drive = self.drive()
        if drive is None or label in self._lock_checked:
            return event
        self._lock_checked.add(label)
        try:
            x, y = float(event.get("x", math.nan)), float(event.get("y", math.nan))
            report = self.focus.focus(drive, x, y)
        except Exception:  # a lock we cannot read is no reason to lose the field
            logger.exception("continuous focus state at %s unavailable", label)
            return event
        if report is not None:
            self.messages.put(_Focused(label, report))
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
    started_instrument: dict[int, float] = field(default_factory=dict)
    focus: dict[int, AutofocusReport] = field(default_factory=dict)
    # multi-channel scans: the frames of a field that is not complete yet, by channel
    planes: dict[int, dict[str, _Frame]] = field(default_factory=dict)


class _Collector:
    """Groups frames into wells and hands finished wells out in plan order.

    Order needs restoring: frames reach us through pycromanager's image-processor thread,
    lost frames straight from the engine thread, so a well can fail before the previous
    well's last frame has come through.
    """

    def __init__(
        self,
        plan: ScanPlan,
        sites: list[Site],
        *,
        camera_bit_depth: int | None = None,
        channels: tuple[str, ...] = (),
    ) -> None:
        self.plan = plan
        self.camera_bit_depth = camera_bit_depth
        self.channels = channels
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
        elif isinstance(message, _Focused):
            site = self.by_label.get(message.label)
            if site is not None and site.well not in self.done:
                self.pending[site.well].focus[site.index] = message.report
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
            pending = self.pending[site.well]
            started = pending.started
            if self.channels:
                # one event per channel: the field's clock starts with its first
                started.setdefault(site.index, message.monotonic)
            else:
                started[site.index] = message.monotonic
            if message.instrument_s is not None:
                pending.started_instrument.setdefault(site.index, message.instrument_s)

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
        well = self.pending[site.well]
        try:
            if self.channels:
                frames = self._channel_frames(site, frame)
                if frames is None:
                    return  # more channels of this field to come
                acquired = self._field(site, frames)
            else:
                acquired = self._field(site, [frame])
        except HardwareError as exc:
            self.fail(site.well, str(exc))
            return
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

    def _channel_frames(self, site: Site, frame: _Frame) -> list[_Frame] | None:
        """File one channel's frame of ``site``; all its frames in channel order once every
        channel is in, else None."""
        channel = str(_axes(frame.tags).get("channel", ""))
        if channel not in self.channels:
            raise HardwareError(
                f"frame of {site.label} is in channel {channel!r}, not one of {list(self.channels)}"
            )
        planes = self.pending[site.well].planes.setdefault(site.index, {})
        planes[channel] = frame
        if len(planes) < len(self.channels):
            return None
        del self.pending[site.well].planes[site.index]
        return [planes[name] for name in self.channels]

    def _field(self, site: Site, frames: list[_Frame]) -> AcquiredField:
        """The field of ``site`` from its frame (or, multi-channel, its frames in channel
        order: stacked to (H, W, C); position, pixel size and tags from the first)."""
        frame, last = frames[0], frames[-1]
        tags = frame.tags
        objective: str
        if self.channels:
            objective = self.plan.objective  # set before the acquisition, not per event
        else:
            objective = _axes(tags).get("channel", self.plan.objective)
        if objective not in OBJECTIVES or objective != self.plan.objective:
            raise HardwareError(f"frame of {site.label} is at objective {objective!r}")
        pixel_size = float(tags.get("PixelSize_um") or 0.0)
        if pixel_size <= 0:
            raise HardwareError(
                f"no pixel size for objective {objective}: define a pixel-size config for it"
            )
        pending = self.pending[site.well]
        started = pending.started.get(site.index, frame.monotonic)
        acquisition_ms = (last.monotonic - started) * 1000.0
        z_um = _optional_float(tags, ("ZPositionUm", "ZPosition_um_Intended"))
        report = pending.focus.get(site.index)
        instrument_ms = acquisition_ms  # a real microscope's instrument time is the wall clock
        instrument_started = pending.started_instrument.get(site.index)
        instrument_end = _optional_float(last.tags, (INSTRUMENT_TIME_TAG,))
        if instrument_started is not None and instrument_end is not None:
            instrument_ms = (instrument_end - instrument_started) * 1000.0
        metadata: dict[str, object] = {
            "microscope": "pycromanager",
            "barcode": self.plan.barcode,
            "position_label": site.label,
            "camera": tags.get("Camera"),
            "exposure_ms": tags.get("Exposure"),
            "z_um": z_um,
            "bit_depth": tags.get("BitDepth"),
        }
        image = frame.image
        if self.channels:
            image = _stack(site, [f.image for f in frames])
            metadata["channels"] = list(self.channels)
            metadata["exposure_ms"] = [f.tags.get("Exposure") for f in frames]
        return AcquiredField(
            well=site.well,
            field_index=site.index,
            image=image,
            x_um=_float(tags, ("XPositionUm", "XPosition_um_Intended"), site.x_um),
            y_um=_float(tags, ("YPositionUm", "YPosition_um_Intended"), site.y_um),
            objective=self.plan.objective,
            pixel_size_um=pixel_size,
            acquired_at=frame.at,
            acquisition_ms=acquisition_ms,
            bit_depth=self.camera_bit_depth,
            metadata=metadata,
            z_um=z_um,
            instrument_ms=instrument_ms,
            autofocus=report,
        )


def _stack(site: Site, planes: list[np.ndarray]) -> np.ndarray:
    """A field's channel planes, each (H, W), as one (H, W, C) image."""
    first = planes[0]
    if any(p.shape != first.shape or p.dtype != first.dtype or p.ndim != 2 for p in planes):
        described = ", ".join(f"{p.dtype} {p.shape}" for p in planes)
        raise HardwareError(f"the channels of {site.label} differ in shape or type: {described}")
    return np.ascontiguousarray(np.stack(planes, axis=-1))


def _axes(tags: Mapping[str, Any]) -> dict[str, Any]:
    axes = tags.get("Axes", {})
    return axes if isinstance(axes, dict) else {}


def _optional_float(tags: Mapping[str, Any], keys: tuple[str, ...]) -> float | None:
    """The first of ``keys`` that the tags have, as a float; None if none."""
    for key in keys:
        value = tags.get(key)
        if value is not None:
            try:
                return float(value)
            except (TypeError, ValueError):
                continue
    return None


def _float(tags: Mapping[str, Any], keys: tuple[str, ...], default: float) -> float:
    for key in keys:
        value = tags.get(key)
        if value is not None:
            return float(value)
    return default
