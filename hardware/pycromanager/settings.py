"""Timeouts and failure policy of a :class:`hardware.pycromanager.PycromanagerScanner`."""

from __future__ import annotations

from dataclasses import dataclass

from hardware.autofocus import AutofocusMode, AutofocusStrategy, check_autofocus_mode
from hardware.microscope import check_channels


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
            "100x"); pycromanager's ``channel_group`` in single-channel scans.
        channels: presets of ``channel_group`` to expose every field through, in order; each
            field then arrives as one (H, W, C) image. Empty (default): one frame per field, the
            objective preset as pycromanager's channel (what a single-channel scan always did).
            With channels the objective preset is set once, before the acquisition.
        channel_group: the config group whose presets are ``channels`` (e.g. "Channel").
        camera_bit_depth: significant bits of the camera's pixel values, stamped on every field
            it delivers; None: the dtype's full range. (The camera's own ``BitDepth`` tag is kept
            in each field's metadata but not trusted on its own: stored frames do not record a
            bit depth yet, and training on them must see what serving saw.)
        autofocus: how each field is focused (:data:`hardware.autofocus.AutofocusMode`, or a
            tuned strategy object such as ``SoftwareAutofocus(coarse_range_um=40)``):
            "continuous" (default) switches the core's continuous focus on at scan start where
            there is an autofocus device and otherwise leaves z alone; "none" switches it off
            (a fixed-z scan); "hardware" calls ``fullFocus`` per field; "software" / "map"
            search with images. See :mod:`hardware.pycromanager.collector`.
        z_limits_um: (lowest, highest) focus position a software search may use, um; None:
            the focus device's ``LowerLimit(um)`` / ``UpperLimit(um)`` properties, else unbounded
            (the search stays within its range of where it starts).
    """

    snap_timeout_s: float = 10.0
    device_timeout_s: float = 10.0
    stall_timeout_s: float = 60.0
    shutdown_timeout_s: float = 30.0
    connect_timeout_s: float = 5.0
    max_consecutive_failures: int = 3
    objective_group: str = "Objective"
    channels: tuple[str, ...] = ()
    channel_group: str = "Channel"
    camera_bit_depth: int | None = None
    autofocus: AutofocusMode | str | AutofocusStrategy = "continuous"
    z_limits_um: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.autofocus, str):
            object.__setattr__(self, "autofocus", check_autofocus_mode(self.autofocus))
        if self.z_limits_um is not None and not self.z_limits_um[0] < self.z_limits_um[1]:
            raise ValueError(f"z_limits_um must be (lower, upper), got {self.z_limits_um}")
        for name in (
            "snap_timeout_s",
            "device_timeout_s",
            "stall_timeout_s",
            "shutdown_timeout_s",
            "connect_timeout_s",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.camera_bit_depth is not None and not 8 <= self.camera_bit_depth <= 16:
            depth = self.camera_bit_depth
            raise ValueError(f"camera_bit_depth must be within [8, 16], got {depth}")
        object.__setattr__(self, "channels", check_channels(self.channels))
        if self.channels and self.channel_group == self.objective_group:
            raise ValueError(
                f"channel_group and objective_group are both {self.channel_group!r}: channels "
                "need a config group of their own"
            )
        if self.max_consecutive_failures < 1:
            raise ValueError("max_consecutive_failures must be >= 1")
        if self.stall_timeout_s <= self.snap_timeout_s + self.device_timeout_s:
            # one field may legitimately wait for a device and then for the camera
            raise ValueError("stall_timeout_s must exceed snap_timeout_s + device_timeout_s")
