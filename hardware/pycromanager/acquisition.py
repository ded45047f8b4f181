"""Following one pycromanager ``Acquisition`` to its end: the message loop, the stall watch,
winding down and aborting, and the consecutive-failure count that stops a broken microscope."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Literal

from hardware.microscope import HardwareError, WellAcquisition
from hardware.pycromanager.collector import _Collector, _Finished, _Run
from hardware.pycromanager.settings import PycromanagerSettings

logger = logging.getLogger(__name__)

_STOP_POLL_S = 0.25  # how often should_stop() is asked while no frame arrives


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


class _OneAcquisition:
    """One started pycromanager ``Acquisition`` and the :class:`_Run` that hears from it.

    :meth:`follow` feeds it its events and files what pycromanager's threads report until it
    ends; an acquisition left early (stop, stall, error, the scan generator closed) is aborted
    and waited for.
    """

    def __init__(self, acquisition: Any, run: _Run, settings: PycromanagerSettings) -> None:
        self.acquisition = acquisition
        self.run = run
        self.settings = settings

    def follow(
        self,
        barcode: str,
        events: list[dict[str, Any]],
        collector: _Collector,
        failures: _FailureCounter,
        should_stop: Callable[[], bool],
    ) -> Generator[WellAcquisition, None, _Outcome]:
        """Acquire ``events``; yields wells as ``collector`` releases them, returns how the
        acquisition ended."""
        acquisition, run = self.acquisition, self.run
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
                            f"acquisition of {barcode} stalled: no progress for "
                            f"{self.settings.stall_timeout_s:g} s (at {run.current!r})"
                        ) from None
                    continue
                last_progress = time.monotonic()
                if isinstance(message, _Finished):
                    finished = True
                    error = self.wind_down()
                    if error is not None:
                        return _Outcome("aborted", error, run.current)
                    return _Outcome("finished")
                collector.handle(message)
                for well in collector.release():
                    if should_stop():
                        return _Outcome("stopped")
                    failures.count(well)
                    yield well
                    failures.check()
        finally:
            if not finished:
                self.abort()

    def wind_down(self) -> str | None:
        """Wait (bounded) for pycromanager to finish; the error it stopped on, if any."""
        acquisition = self.acquisition
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

    def abort(self) -> None:
        """Stop an acquisition that is still running and wait (bounded) until it is down."""
        acquisition, run = self.acquisition, self.run
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
            self.wind_down()
        except HardwareError:
            logger.exception("pycromanager did not wind down after abort")


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
