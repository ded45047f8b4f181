"""A :class:`hardware.microscope.PlateScanner` on pycromanager's acquisition engine.

A scan runs the plan's events (:mod:`hardware.pycromanager.plan`) through one pycromanager
``Acquisition`` (:mod:`hardware.pycromanager.acquisition`); the scan generator yields each well
as soon as its fields are in (:mod:`hardware.pycromanager.collector`), while the acquisition
goes on in pycromanager's threads.

Where the engine runs (keyword-only options of :class:`PycromanagerScanner`):

* ``core=...``: in this process, pycromanager's Python engine on the given pymmcore /
  pymmcore-plus core, e.g. the simulator's UniMMCore (:mod:`hardware.sim.mm_devices`); see
  :mod:`hardware.pycromanager.engine` for what that needs.
* ``core=None`` (default): a running Micro-Manager (Java, ZMQ server on ``port``).
* :meth:`PycromanagerScanner.start_headless`: starts Micro-Manager headless from an install
  (Java, or with ``python_backend=True`` pymmcore in this process) and scans on it.

Channels: with ``settings.channels`` every field is exposed once per channel (presets of
``settings.channel_group``, switched by pycromanager per event) and delivered as one (H, W, C)
image; the objective preset is then set once before the acquisition.

Autofocus: ``settings.autofocus`` (see :class:`PycromanagerSettings`); the mode is prepared at
scan start (continuous focus on or off) and sites are focused in the pre-hardware hook
(:mod:`hardware.pycromanager.collector`). Each field carries ``z_um``, ``autofocus`` and
``instrument_ms`` (the simulated camera's instrument clock, else the wall clock).

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
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from typing import Any

from pycromanager import Core, JavaBackendAcquisition, start_headless, stop_headless

from hardware.autofocus import CoreFocusDrive, ScanFocus
from hardware.microscope import ScanPlan, WellAcquisition, call_load_plate
from hardware.pycromanager.acquisition import _FailureCounter, _OneAcquisition, _Outcome
from hardware.pycromanager.collector import _Collector, _Run
from hardware.pycromanager.engine import in_process_engine
from hardware.pycromanager.plan import Site, plan_events, plan_sites
from hardware.pycromanager.settings import PycromanagerSettings

logger = logging.getLogger(__name__)

DEFAULT_PORT = 4827
"""pycromanager's default ZMQ bridge port to Micro-Manager (pyjavaz ``DEFAULT_BRIDGE_PORT``)."""


class PycromanagerScanner:
    """Acquire plates with pycromanager; implements :class:`hardware.microscope.PlateScanner`.

    Args:
        core: a pymmcore / pymmcore-plus core to run pycromanager's Python engine on, in this
            process (e.g. :func:`hardware.sim.mm_devices.build_simulated_core`); None to use a
            running Micro-Manager (Java) on ``port``.
        port: Micro-Manager's ZMQ server port (Java only).
        settings: timeouts and failure policy.
        load_plate: called with the plan's barcode and plate geometry
            (``load_plate(barcode, plate)``; a callable taking only the barcode is called with
            that) before each scan: a plate handler or barcode check; for the simulator
            :func:`hardware.sim.mm_devices.set_plate`.
    """

    name = "pycromanager"

    def __init__(
        self,
        *,
        core: Any | None = None,
        port: int = DEFAULT_PORT,
        settings: PycromanagerSettings | None = None,
        load_plate: Callable[..., None] | None = None,
    ) -> None:
        self.core = core
        self.port = port
        self.settings = settings if settings is not None else PycromanagerSettings()
        self.load_plate = load_plate
        self._headless = False
        self._focus = ScanFocus(self.settings.autofocus)

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
        load_plate: Callable[..., None] | None = None,
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
            call_load_plate(self.load_plate, plan.barcode, plan.plate)
        self._set_device_timeout()
        self._focus = ScanFocus(self.settings.autofocus)
        drive = self._focus_drive()
        self._focus.prepare(drive)
        try:
            if self.settings.channels:
                self._set_objective(plan.objective)
            sites = plan_sites(plan)
            collector = _Collector(
                plan,
                sites,
                camera_bit_depth=self.settings.camera_bit_depth,
                channels=self.settings.channels,
            )
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
        finally:
            self._focus.restore(drive)
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
        run = _Run(self._focus, self._focus_drive)
        run.wells_by_label = {site.label: site.well for site in sites}
        settings = self.settings
        events = plan_events(
            sites,
            plan.objective,
            settings.objective_group,
            channels=settings.channels,
            channel_group=settings.channel_group,
        )
        with self._acquisitions(run) as make_acquisition:
            acquisition = make_acquisition(
                name=f"mscreen-{plan.barcode}",
                image_process_fn=run.image_process_fn,
                pre_hardware_hook_fn=run.pre_hardware_hook_fn,
                post_hardware_hook_fn=run.post_hardware_hook_fn,
                notification_callback_fn=run.notification_callback_fn,
            )
            one = _OneAcquisition(acquisition, run, self.settings)
            return (yield from one.follow(plan.barcode, events, collector, failures, should_stop))

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

    def _focus_drive(self) -> CoreFocusDrive:
        """A focus drive on this scanner's core (a new Java ``Core`` per call: one per thread)."""
        core = self.core if self.core is not None else Core(port=self.port)
        return CoreFocusDrive(core, z_limits_um=self.settings.z_limits_um)

    def _set_objective(self, objective: str) -> None:
        """Select ``objective`` (a preset of ``objective_group``) and wait for it: in a
        multi-channel scan the events' config group is the channel group, not the objective."""
        group = self.settings.objective_group
        if self.core is not None:
            self.core.setConfig(group, objective)
            self.core.waitForConfig(group, objective)
            return
        core = Core(port=self.port)
        core.set_config(group, objective)
        core.wait_for_config(group, objective)

    def _set_device_timeout(self) -> None:
        timeout_ms = int(self.settings.device_timeout_s * 1000)
        if self.core is not None:
            self.core.setTimeoutMs(timeout_ms)
            return
        Core(port=self.port).set_timeout_ms(timeout_ms)
