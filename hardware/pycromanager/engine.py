"""Run pycromanager's Python acquisition engine in-process on a pymmcore-plus core.

pycromanager 1.0.2 ships a pure-Python acquisition engine (``acq_eng_py``) for a Micro-Manager
core living in the same process; ``start_headless(..., python_backend=True)`` sets it up, but
only for a plain ``pymmcore.CMMCore`` that it creates itself from a Micro-Manager install.
This module lets the same engine drive a core we already have, such as the simulator's
``UniMMCore`` (:mod:`hardware.sim.mm_devices`), with no Micro-Manager install and no Java. It is
the one place that knows pycromanager's in-process internals; nothing in pycromanager's code is
replaced or monkeypatched, only its objects are constructed and fed.

What the engine needs and why each piece is here:

1. **snake_case core API.** The engine calls ``core.get_xy_stage_device()``,
   ``core.snap_image()``, ... ``start_headless`` provides them with a subclass of
   ``pymmcore.CMMCore`` whose snake_case names are bound to the *C++* methods (mmpycorex's
   ``_create_pymmcore_instance``). On a UniMMCore those would bypass its Python overrides and
   never see Python devices. :class:`PycromanagerCoreAdapter` instead resolves each
   snake_case name, with the same renaming rule, to the camelCase method *of the instance*,
   so every call reaches UniMMCore's Python-device code. camelCase names (the engine uses a
   few, e.g. ``setExposure``) pass through.
2. **MMCoreJ-isms.** ``core.TaggedImage(tags, pix)`` and ``core.get_tagged_image(cam_index,
   camera, height, width)``, which mmpycorex patches onto its instance. Provided here; the
   tags also carry what MMCoreJ's ``getTaggedImage`` adds and pymmcore lacks: the stage
   position when the frame was taken (``XPositionUm``, ``YPositionUm``, ``ZPositionUm``), and
   the simulated camera's instrument clock (``InstrumentTimeS``) where the camera has it.
3. **The engine singleton.** ``acq_eng_py``'s ``Engine`` is one per process and holds the
   core that every acquisition uses. :func:`in_process_engine` creates it when missing,
   points it at our adapter for the duration of a ``with`` block and restores it afterwards,
   and clears ``Engine.last_event`` before each acquisition (the engine skips hardware moves
   that the previous event already made, which would be wrong on another core). Hence one
   in-process acquisition at a time per process; a second concurrent one is refused.
4. **Snap timeout and per-frame failures.** The engine calls ``snap_image()`` with no timeout
   (a hung camera hangs it for ever), and any exception aborts the whole acquisition. Its one
   "skip this frame and go on" path is a ``TimeoutError`` from image acquisition (engine.py:
   "Don't abort on a timeout"; it prints "Timeout while acquiring images"). The adapter runs
   each snap on a daemon thread with ``snap_timeout_s``; a camera error or a frame that does
   not arrive in time is reported to ``on_frame_lost`` and raised as :class:`FrameLost`, a
   ``TimeoutError``, so the engine drops that frame and the plate goes on.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pycromanager.acquisition.acq_eng_py.internal.engine import Engine
from pycromanager.acquisition.python_backend_acquisitions import PythonBackendAcquisition

from hardware.autofocus import INSTRUMENT_TIME_PROPERTY

logger = logging.getLogger(__name__)

_FIRST_CAP = re.compile(r"(.)([A-Z][a-z]+)")
_ALL_CAP = re.compile(r"([a-z0-9])([A-Z])")


def camel_to_snake(name: str) -> str:
    """``getXYStageDevice`` -> ``get_xy_stage_device``: the renaming rule mmpycorex applies to
    pymmcore's methods for pycromanager's engine."""
    return _ALL_CAP.sub(r"\1_\2", _FIRST_CAP.sub(r"\1_\2", name)).lower()


class FrameLost(TimeoutError):  # noqa: N818 (a TimeoutError is what the engine recovers from)
    """A frame that the camera did not deliver (error, or not within the snap timeout).

    A ``TimeoutError`` on purpose: pycromanager's engine skips the frame and goes on instead
    of aborting the acquisition.
    """


class TaggedImage:
    """MMCoreJ's TaggedImage as pycromanager's engine uses it: pixels plus a tag dict.

    ``TaggedImage(None, None)`` is the engine's end-of-acquisition marker.
    """

    def __init__(self, tags: dict[str, Any] | None, pix: Any) -> None:
        self.tags = tags
        self.pix = pix


_TaggedImage = TaggedImage  # the adapter's class attribute of the same name hides it there


class PycromanagerCoreAdapter:
    """A pymmcore / pymmcore-plus core as pycromanager's Python engine expects to see it.

    Args:
        core: a ``pymmcore_plus.CMMCorePlus`` (e.g. ``UniMMCore``) or ``pymmcore.CMMCore``.
        snap_timeout_s: longest wait for one frame (exposure + readout + transfer), in s.
        on_frame_lost: called with a message, on the engine thread, before a lost frame is
            raised as :class:`FrameLost`.
    """

    TaggedImage = TaggedImage

    def __init__(
        self,
        core: Any,
        *,
        snap_timeout_s: float,
        on_frame_lost: Callable[[str], None] | None = None,
    ) -> None:
        if snap_timeout_s <= 0:
            raise ValueError(f"snap_timeout_s must be > 0, got {snap_timeout_s}")
        self.core = core
        self.snap_timeout_s = snap_timeout_s
        self.on_frame_lost = on_frame_lost
        self._names = self._snake_case_names(core)
        self._frame: tuple[Any, dict[str, Any]] | None = None
        self._snap_thread: threading.Thread | None = None

    @staticmethod
    def _snake_case_names(core: Any) -> dict[str, str]:
        names: dict[str, str] = {}
        for name in dir(type(core)):
            if name.startswith("_"):
                continue
            snake = camel_to_snake(name)
            # an exact snake_case method of the core wins over a renamed camelCase one
            if snake not in names or snake == name:
                names[snake] = name
        return names

    def __getattr__(self, name: str) -> Any:
        # Only called for names not defined here: resolve on the wrapped core's instance so
        # that Python overrides (UniMMCore's Python devices) are used.
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.core, self._names.get(name, name))

    def snap_image(self) -> None:
        """Expose one frame and keep it for :meth:`get_tagged_image`; at most
        ``snap_timeout_s`` seconds.

        Raises:
            FrameLost: the camera raised, or no frame within the timeout.
        """
        self._frame = None
        camera = self.core.getCameraDevice()
        previous = self._snap_thread
        started = time.monotonic()
        if previous is not None and previous.is_alive():
            # A snap that timed out earlier still holds the camera: wait for it first.
            previous.join(self.snap_timeout_s)
            if previous.is_alive():
                self._lose(f"camera {camera!r} is still busy with an earlier snap")
        outcome: dict[str, Any] = {}

        def snap() -> None:
            try:
                self.core.snapImage()
                outcome["frame"] = (self.core.getImage(), self._position_tags())
            except Exception as exc:  # any camera error loses this frame only
                outcome["error"] = exc

        thread = threading.Thread(target=snap, name="pycromanager-snap", daemon=True)
        self._snap_thread = thread
        thread.start()
        thread.join(max(0.0, self.snap_timeout_s - (time.monotonic() - started)))
        if thread.is_alive():
            self._lose(f"no frame from camera {camera!r} within {self.snap_timeout_s:g} s")
        if "error" in outcome:
            error = outcome["error"]
            self._lose(f"camera {camera!r} failed: {type(error).__name__}: {error}")
        self._frame = outcome["frame"]

    def _lose(self, message: str) -> None:
        logger.warning("frame lost: %s", message)
        if self.on_frame_lost is not None:
            self.on_frame_lost(message)
        raise FrameLost(message)

    def _position_tags(self) -> dict[str, Any]:
        """Stage positions at the end of the snap, in um, as MMCoreJ tags them."""
        tags: dict[str, Any] = {}
        if self.core.getXYStageDevice():
            # getX/YPosition: same call on pymmcore and pymmcore-plus (getXYPosition is not)
            tags["XPositionUm"] = float(self.core.getXPosition())
            tags["YPositionUm"] = float(self.core.getYPosition())
        if self.core.getFocusDevice():
            tags["ZPositionUm"] = float(self.core.getPosition())
        camera = self.core.getCameraDevice()
        if camera and self.core.hasProperty(camera, INSTRUMENT_TIME_PROPERTY):
            # the simulated camera's timing model: instrument seconds after this exposure
            tags[INSTRUMENT_TIME_PROPERTY] = float(
                self.core.getProperty(camera, INSTRUMENT_TIME_PROPERTY)
            )
        return tags

    def get_tagged_image(
        self,
        cam_index: int,
        camera: str,
        height: int,
        width: int,
        binning: Any = None,
        pixel_type: Any = None,
        roi_x_start: Any = None,
        roi_y_start: Any = None,
    ) -> _TaggedImage:
        """The frame of the last successful :meth:`snap_image` with its tags (signature of
        mmpycorex's ``get_tagged_image``)."""
        if self._frame is None:
            raise RuntimeError("get_tagged_image() without a successful snap_image()")
        pix, position_tags = self._frame
        tags: dict[str, Any] = {
            "Camera": camera,
            "CameraChannelIndex": cam_index,
            "Height": height,
            "Width": width,
            "PixelType": pixel_type or ("GRAY8" if pix.dtype.itemsize == 1 else "GRAY16"),
            "BitDepth": int(self.core.getImageBitDepth()),
            **position_tags,
        }
        if binning is not None:
            tags["Binning"] = binning
        if roi_x_start is not None:
            tags["ROI-X-start"] = roi_x_start
        if roi_y_start is not None:
            tags["ROI-Y-start"] = roi_y_start
        return _TaggedImage(tags, pix)


class InProcessEngine:
    """pycromanager's Python engine bound to one core; see :func:`in_process_engine`."""

    def __init__(self, engine: Engine, adapter: PycromanagerCoreAdapter) -> None:
        self.engine = engine
        self.adapter = adapter

    def acquisition(self, **kwargs: Any) -> PythonBackendAcquisition:
        """A new pycromanager ``Acquisition`` (its Python backend) on this engine's core.

        ``kwargs`` are those of ``pycromanager.Acquisition`` (``image_process_fn``, hooks,
        ``notification_callback_fn``, ...).
        """
        self.engine.last_event = None  # its moves were made on whatever core ran last
        return PythonBackendAcquisition(**kwargs)


_engine_lock = threading.Lock()


@contextmanager
def in_process_engine(
    core: Any,
    *,
    snap_timeout_s: float,
    on_frame_lost: Callable[[str], None] | None = None,
) -> Iterator[InProcessEngine]:
    """Point pycromanager's process-wide Python engine at ``core`` for a ``with`` block.

    Args:
        core: a pymmcore-plus core (``UniMMCore``, ``CMMCorePlus``) or ``pymmcore.CMMCore``.
        snap_timeout_s: longest wait for one frame, in s (see :class:`PycromanagerCoreAdapter`).
        on_frame_lost: told about each frame the camera did not deliver.

    Raises:
        RuntimeError: another in-process acquisition holds the engine.
    """
    if not _engine_lock.acquire(blocking=False):
        raise RuntimeError(
            "pycromanager's in-process engine is a per-process singleton and another "
            "acquisition is using it"
        )
    try:
        adapter = PycromanagerCoreAdapter(
            core, snap_timeout_s=snap_timeout_s, on_frame_lost=on_frame_lost
        )
        engine = Engine.get_instance()
        previous = None
        if engine is None:
            engine = Engine(adapter)
        else:
            previous = engine.core
            engine.core = adapter
        try:
            yield InProcessEngine(engine, adapter)
        finally:
            # Don't keep our core alive through the singleton once we are done with it.
            engine.core = previous
            engine.last_event = None
    finally:
        _engine_lock.release()
