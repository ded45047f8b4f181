"""A :class:`hardware.microscope.PlateScanner` on pycromanager's acquisition engine.

One scan is one pycromanager ``Acquisition`` fed with
``multi_d_acquisition_events(xy_positions=..., position_labels=..., channel_group="Objective",
channels=[objective])``: one event per field, labelled with the well name (``"B7"``) or, with
several fields per well, Micro-Manager's HCS site name (``"B7-Site_0"``). Frames arrive through
pycromanager's ``image_process_fn`` (which keeps them out of pycromanager's own storage) into a
queue; the scan generator groups them into wells and yields each well as soon as its fields are
in, while the acquisition goes on in pycromanager's threads.

Where the engine runs (keyword-only options of :class:`PycromanagerScanner`):

* ``core=...``: in this process, pycromanager's Python engine on the given pymmcore /
  pymmcore-plus core, e.g. the simulator's UniMMCore (:mod:`hardware.mm_devices`); see
  :mod:`hardware.pycromanager_shim` for what that needs.
* ``core=None`` (default): a running Micro-Manager (Java, ZMQ server on ``port``).
* :meth:`PycromanagerScanner.start_headless`: starts Micro-Manager headless from an install
  (Java, or with ``python_backend=True`` pymmcore in this process) and scans on it.

Failures: a frame the camera does not deliver (error or ``snap_timeout_s``) fails its well,
``WellAcquisition(well, [], error=...)``, and the plate goes on (in-process engine). Any other
error aborts pycromanager's acquisition; the well in flight is then failed and a fresh
acquisition resumes with the next well. ``max_consecutive_failures`` failed wells in a row, no
progress for ``stall_timeout_s``, or pycromanager not winding down within
``shutdown_timeout_s`` stop the scan with :class:`hardware.microscope.HardwareError`.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, cast

import numpy as np
from pycromanager import (
    Core,
    JavaBackendAcquisition,
    multi_d_acquisition_events,
    start_headless,
    stop_headless,
)
from pycromanager.acquisition.acq_eng_py.main.acq_notification import AcqNotification

from hardware.microscope import (
    OBJECTIVES,
    AcquiredField,
    HardwareError,
    Objective,
    ScanPlan,
    WellAcquisition,
)
from hardware.pycromanager_shim import in_process_engine

logger = logging.getLogger(__name__)

DEFAULT_PORT = 4827
"""pycromanager's default ZMQ bridge port to Micro-Manager (pyjavaz ``DEFAULT_BRIDGE_PORT``)."""

_STOP_POLL_S = 0.25  # how often should_stop() is asked while no frame arrives


@dataclass(frozen=True, kw_only=True)
class PycromanagerSettings:
    """Timeouts and policies of a :class:`PycromanagerScanner`.

    Attributes:
        snap_timeout_s: longest wait for one frame (exposure, readout, transfer), in s; a frame
            later than this fails its well (in-process engine only: a Java engine has its own).
        device_timeout_s: longest wait for a device to finish a move or state change, in s
            (the core's ``TimeoutMs``, set at the start of each scan).
        stall_timeout_s: longest time without any progress (a field starting, a frame, a lost
            frame), in s, before the acquisition is declared hung and the scan stops; must
            exceed ``snap_timeout_s + device_timeout_s``.
        shutdown_timeout_s: longest wait for pycromanager to wind down after the last event or
            an abort, in s.
        connect_timeout_s: longest wait for Micro-Manager's ZMQ server, in s (Java only).
        max_consecutive_failures: failed wells in a row that stop the scan (a camera or stage
            that fails every well is broken, not unlucky).
        objective_group: the config group whose presets are the objective names ("40x",
            "100x"); pycromanager's ``channel_group``.
    """

    snap_timeout_s: float = 10.0
    device_timeout_s: float = 10.0
    stall_timeout_s: float = 60.0
    shutdown_timeout_s: float = 30.0
    connect_timeout_s: float = 5.0
    max_consecutive_failures: int = 3
    objective_group: str = "Objective"

    def __post_init__(self) -> None:
        for name in (
            "snap_timeout_s",
            "device_timeout_s",
            "stall_timeout_s",
            "shutdown_timeout_s",
            "connect_timeout_s",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.max_consecutive_failures < 1:
            raise ValueError("max_consecutive_failures must be >= 1")
        if self.stall_timeout_s <= self.snap_timeout_s + self.device_timeout_s:
            # one field may legitimately wait for a device and then for the camera
            raise ValueError("stall_timeout_s must exceed snap_timeout_s + device_timeout_s")


@dataclass(frozen=True)
class Site:
    """One field of the plan: its pycromanager position label and stage position (um)."""

    label: str
    well: str
    index: int
    x_um: float
    y_um: float


def site_label(well: str, index: int, fields_per_well: int) -> str:
    """Position label of a field: the well name, or Micro-Manager's HCS ``"B7-Site_0"`` form
    when a well has several fields."""
    return well if fields_per_well == 1 else f"{well}-Site_{index}"


def plan_sites(plan: ScanPlan) -> list[Site]:
    """All fields of ``plan`` in acquisition order, at ``well_center_um + field offset``."""
    offsets = plan.plate.field_offsets_um(plan.fields_per_well, plan.field_spacing_um)
    sites = []
    for well in plan.wells:
        cx, cy = plan.plate.well_center_um(well)
        for index, (dx, dy) in enumerate(offsets):
            label = site_label(well, index, plan.fields_per_well)
            sites.append(Site(label, well, index, cx + dx, cy + dy))
    labels = [site.label for site in sites]
    if len(set(labels)) != len(labels):
        raise ValueError("a scan plan must not name a well twice")
    return sites


def plan_events(sites: list[Site], objective: str, objective_group: str) -> list[dict[str, Any]]:
    """pycromanager events for ``sites``: one per field at ``objective``."""
    events: list[dict[str, Any]] = multi_d_acquisition_events(
        xy_positions=[(site.x_um, site.y_um) for site in sites],
        position_labels=[site.label for site in sites],
        channel_group=objective_group,
        channels=[objective],
    )
    return events


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

    def __init__(self, plan: ScanPlan, sites: list[Site]) -> None:
        self.plan = plan
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


def _engine_error(acquisition: Any) -> BaseException | None:
    """The error that stopped an acquisition whose events are over, if any.

    pycromanager 1.0.2's Python backend re-raises it from ``await_completion()`` only while
    events are still running (and drops its engine handle afterwards), so ask before. Both
    backends keep the check in ``_check_for_exceptions()``.
    """
    check = getattr(acquisition, "_check_for_exceptions", None)
    if check is None:
        return None
    try:
        check()
    except Exception as exc:  # the engine's stored error, whatever its type
        return exc
    return None


@dataclass
class _Outcome:
    """How one pycromanager acquisition ended."""

    kind: Literal["finished", "stopped", "aborted"]
    error: str | None = None
    in_flight: str | None = None  # label of the field being acquired when it aborted


class PycromanagerScanner:
    """Acquire plates with pycromanager; implements :class:`hardware.microscope.PlateScanner`.

    Args:
        core: a pymmcore / pymmcore-plus core to run pycromanager's Python engine on, in this
            process (e.g. :func:`hardware.mm_devices.build_simulated_core`); None to use a
            running Micro-Manager (Java) on ``port``.
        port: Micro-Manager's ZMQ server port (Java only).
        settings: timeouts and failure policy.
        load_plate: called with the plan's barcode before each scan (a plate handler or
            barcode check; for the simulator :func:`hardware.mm_devices.set_plate`).
    """

    name = "pycromanager"

    def __init__(
        self,
        *,
        core: Any | None = None,
        port: int = DEFAULT_PORT,
        settings: PycromanagerSettings | None = None,
        load_plate: Callable[[str], None] | None = None,
    ) -> None:
        self.core = core
        self.port = port
        self.settings = settings if settings is not None else PycromanagerSettings()
        self.load_plate = load_plate
        self._headless = False

    @classmethod
    def start_headless(
        cls,
        mm_app_path: str,
        config_file: str,
        *,
        java_loc: str | None = None,
        python_backend: bool = False,
        port: int = DEFAULT_PORT,
        buffer_size_mb: int = 1024,
        max_memory_mb: int = 2000,
        settings: PycromanagerSettings | None = None,
        load_plate: Callable[[str], None] | None = None,
    ) -> PycromanagerScanner:
        """Start Micro-Manager headless from an install and return a scanner on it.

        Args:
            mm_app_path: Micro-Manager installation folder.
            config_file: hardware .cfg (it must define ``settings.objective_group``).
            java_loc: Java executable (Java backend).
            python_backend: run the core (pymmcore) and pycromanager's engine in this process
                instead of a Java process.
            port, buffer_size_mb, max_memory_mb: as pycromanager's ``start_headless``.
        """
        start_headless(
            mm_app_path,
            config_file,
            java_loc=java_loc,
            python_backend=python_backend,
            port=port,
            buffer_size_mb=buffer_size_mb,
            max_memory_mb=max_memory_mb,
        )
        core = None
        if python_backend:
            core = Core()  # the pymmcore instance start_headless created in this process
        scanner = cls(core=core, port=port, settings=settings, load_plate=load_plate)
        scanner._headless = True
        return scanner

    def close(self) -> None:
        """Stop Micro-Manager if :meth:`start_headless` started it."""
        if self._headless:
            stop_headless()
            self._headless = False

    # ------------------------------------------------------------------------------------------

    def scan(
        self, plan: ScanPlan, should_stop: Callable[[], bool] = lambda: False
    ) -> Generator[WellAcquisition, None, None]:
        """Acquire ``plan``, yielding each well as soon as its fields are in (plan order).

        Closing the generator early aborts the acquisition.

        Raises:
            HardwareError: the microscope cannot go on (see the module docstring).
        """
        if self.load_plate is not None:
            self.load_plate(plan.barcode)
        self._set_device_timeout()
        sites = plan_sites(plan)
        collector = _Collector(plan, sites)
        failures = _FailureCounter(self.settings.max_consecutive_failures)
        started = time.monotonic()
        todo = sites
        while todo:
            outcome = yield from self._acquire(plan, todo, collector, failures, should_stop)
            if outcome.kind == "stopped":
                logger.info("scan of %s stopped", plan.barcode)
                return
            todo = collector.unfinished_sites()
            if outcome.kind == "aborted" and todo:
                # Fail the field in flight (or the next one) and resume after it.
                site = next((s for s in todo if s.label == outcome.in_flight), todo[0])
                collector.fail(site.well, f"acquisition aborted: {outcome.error}")
                logger.info("resuming %s after well %s", plan.barcode, site.well)
            else:
                # Finished normally: a field that never produced a frame fails its well.
                for site in todo:
                    collector.fail(site.well, "no frame received")
            for well in collector.release():
                failures.count(well)
                yield well
                failures.check()
            todo = collector.unfinished_sites()
        elapsed = time.monotonic() - started
        logger.info(
            "scan of %s: %d wells in %.1f s (%.0f ms per well)",
            plan.barcode,
            len(plan.wells),
            elapsed,
            1000.0 * elapsed / max(1, len(plan.wells)),
        )

    def _acquire(
        self,
        plan: ScanPlan,
        sites: list[Site],
        collector: _Collector,
        failures: _FailureCounter,
        should_stop: Callable[[], bool],
    ) -> Generator[WellAcquisition, None, _Outcome]:
        """Run one pycromanager acquisition over ``sites``; yields wells, returns how it
        ended."""
        run = _Run()
        run.wells_by_label = {site.label: site.well for site in sites}
        events = plan_events(sites, plan.objective, self.settings.objective_group)
        with self._acquisitions(run) as make_acquisition:
            acquisition = make_acquisition(
                name=f"mscreen-{plan.barcode}",
                image_process_fn=run.image_process_fn,
                pre_hardware_hook_fn=run.pre_hardware_hook_fn,
                notification_callback_fn=run.notification_callback_fn,
            )
            finished = False
            try:
                acquisition.acquire(events)
                acquisition.mark_finished()  # no more events: it ends after these
                last_progress = time.monotonic()
                while True:
                    try:
                        message = run.messages.get(timeout=_STOP_POLL_S)
                    except queue.Empty:
                        # should_stop() may cost a DB query: ask it per well and when idle
                        if should_stop():
                            return _Outcome("stopped")
                        if time.monotonic() - last_progress > self.settings.stall_timeout_s:
                            raise HardwareError(
                                f"acquisition of {plan.barcode} stalled: no progress for "
                                f"{self.settings.stall_timeout_s:g} s (at {run.current!r})"
                            ) from None
                        continue
                    last_progress = time.monotonic()
                    if isinstance(message, _Finished):
                        finished = True
                        error = self._wind_down(acquisition)
                        if error is not None:
                            return _Outcome("aborted", error, run.current)
                        return _Outcome("finished")
                    self._handle(message, collector)
                    for well in collector.release():
                        if should_stop():
                            return _Outcome("stopped")
                        failures.count(well)
                        yield well
                        failures.check()
            finally:
                if not finished:
                    self._abort(acquisition, run)

    def _handle(self, message: _Message, collector: _Collector) -> None:
        if isinstance(message, _Started):
            collector.started(message)
        elif isinstance(message, _Frame):
            collector.frame(message)
        elif isinstance(message, _Lost):
            site = collector.by_label.get(message.label or "")
            if site is None:
                logger.warning("frame lost outside any field of the plan: %s", message.message)
            else:
                collector.fail(site.well, message.message)

    def _wind_down(self, acquisition: Any) -> str | None:
        """Wait (bounded) for pycromanager to finish; the error it stopped on, if any."""
        outcome: dict[str, BaseException] = {}
        error = _engine_error(acquisition)
        if error is not None:
            outcome["error"] = error

        def await_completion() -> None:
            try:
                acquisition.await_completion()
            except BaseException as exc:  # reported to the scan thread, not lost
                outcome.setdefault("error", exc)

        waiter = threading.Thread(target=await_completion, name="pycromanager-wait", daemon=True)
        waiter.start()
        waiter.join(self.settings.shutdown_timeout_s)
        if waiter.is_alive():
            raise HardwareError(
                f"pycromanager did not wind down within {self.settings.shutdown_timeout_s:g} s"
            )
        error = outcome.get("error")
        if error is None:
            return None
        logger.warning("pycromanager acquisition aborted: %r", error)
        return f"{type(error).__name__}: {error}"

    def _abort(self, acquisition: Any, run: _Run) -> None:
        """Stop an acquisition that is still running and wait (bounded) until it is down."""
        logger.info("aborting pycromanager acquisition at %r", run.current)
        try:
            acquisition.abort()
            # abort() empties the event queue, end marker included: put one back so that
            # pycromanager's event thread ends.
            acquisition.mark_finished()
        except Exception:
            logger.exception("pycromanager abort failed")
        deadline = time.monotonic() + self.settings.shutdown_timeout_s
        while time.monotonic() < deadline:
            try:
                message = run.messages.get(timeout=0.1)
            except queue.Empty:
                continue
            if isinstance(message, _Finished):
                break
        else:
            logger.error(
                "pycromanager did not wind down within %g s after abort",
                self.settings.shutdown_timeout_s,
            )
            return
        try:
            self._wind_down(acquisition)
        except HardwareError:
            logger.exception("pycromanager did not wind down after abort")

    # ------------------------------------------------------------------------------------------

    @contextmanager
    def _acquisitions(self, run: _Run) -> Iterator[Callable[..., Any]]:
        """A factory of pycromanager ``Acquisition`` objects on this scanner's engine."""
        if self.core is not None:
            with in_process_engine(
                self.core,
                snap_timeout_s=self.settings.snap_timeout_s,
                on_frame_lost=run.frame_lost,
            ) as engine:
                yield engine.acquisition
            return
        yield functools.partial(
            JavaBackendAcquisition,
            show_display=False,
            port=self.port,
            timeout=int(self.settings.connect_timeout_s * 1000),
        )

    def _set_device_timeout(self) -> None:
        timeout_ms = int(self.settings.device_timeout_s * 1000)
        if self.core is not None:
            self.core.setTimeoutMs(timeout_ms)
            return
        Core(port=self.port).set_timeout_ms(timeout_ms)


class _FailureCounter:
    """Counts failed wells in a row; too many means broken hardware."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_a_row = 0
        self.last_error: str | None = None

    def count(self, well: WellAcquisition) -> None:
        if well.failed:
            self.in_a_row += 1
            self.last_error = well.error
        else:
            self.in_a_row = 0

    def check(self) -> None:
        if self.in_a_row >= self.limit:
            raise HardwareError(
                f"{self.in_a_row} wells failed in a row (last: {self.last_error}); "
                "the microscope needs attention"
            )
