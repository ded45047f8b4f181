"""8-bit conversion, grey / channel checks and exposure QC of one camera frame."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

from ._common import U8Array, _is_int, _u8
from .config import PipelineConfig


@dataclass(frozen=True)
class QCReport:
    """Quality check of one frame."""

    # Mean HSV V of the 8-bit frame, grey levels 0..255 (grey frame: V == grey); with
    # band_source="channels" the mean over all channels (= mean of the channel-mean image).
    mean_v: float
    focus_score: float  # variance of the Laplacian of the normalised image; 0.0 if not computed
    excluded: bool
    flags: tuple[str, ...]  # "overexposed", "underexposed", "out_of_focus"; empty when fine
    reason: str | None  # human-readable reason when excluded, e.g. "mean V 247.3 > 240"
    # Detail over coarse structure of the 8-bit frame (normalise.focus_ratio); 0.0 if not
    # computed or if no detail rises above the camera noise.
    focus_ratio: float = 0.0


@functools.lru_cache(maxsize=16)
def _uint16_lut(bit_depth: int) -> U8Array:
    """Lookup table mapping 0..2**bit_depth - 1 linearly (rounded half up) onto 0..255."""
    top = (1 << bit_depth) - 1
    lut = np.floor(np.arange(top + 1, dtype=np.float64) * (255.0 / top) + 0.5).astype(np.uint8)
    lut.flags.writeable = False
    return lut


def to_uint8(frame: np.ndarray, bit_depth: int | None = None) -> U8Array:
    """Convert a camera frame to 8 bits, keeping its shape.

    Args:
        frame: (H, W) or (H, W, C) array. uint8 is returned unchanged (a copy is not made);
            uint16 holds ``bit_depth``-bit data (values 0..2**bit_depth - 1) and is scaled
            linearly onto 0..255 (rounded); float holds intensities in [0, 1].
        bit_depth: significant bits of integer data, 8..16. Default: 8 for uint8, 16 for uint16.
            A 12-bit camera delivering uint16 frames needs ``bit_depth=12``, or every frame looks
            16 times too dark.

    Returns:
        uint8 array of the same shape.

    Raises:
        ValueError: wrong ndim, empty, bool or other dtype, bit_depth out of range or not
            matching the dtype, values outside the range the dtype/bit_depth allows, non-finite.
    """
    arr = np.asarray(frame)
    if arr.ndim not in (2, 3):
        raise ValueError(f"frame must be (H, W) or (H, W, C), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"frame is empty, shape {arr.shape}")
    if bit_depth is not None and (not _is_int(bit_depth) or not 8 <= bit_depth <= 16):
        raise ValueError(f"bit_depth must be an integer in 8..16, got {bit_depth!r}")

    if arr.dtype == np.uint8:
        if bit_depth not in (None, 8):
            raise ValueError(f"a uint8 frame cannot hold {bit_depth}-bit data")
        return arr
    if arr.dtype == np.uint16:
        depth = 16 if bit_depth is None else int(bit_depth)
        top = (1 << depth) - 1
        peak = int(arr.max())
        if peak > top:
            raise ValueError(
                f"frame has values up to {peak}, above 2**{depth} - 1 = {top}; is bit_depth right?"
            )
        # A table lookup rather than float arithmetic: exact, and identical on every platform.
        out: U8Array = _uint16_lut(depth)[arr]
        return out
    if np.issubdtype(arr.dtype, np.floating):
        if bit_depth is not None:
            raise ValueError("bit_depth applies to integer frames only; float frames are 0..1")
        if not np.isfinite(arr).all():
            raise ValueError("float frame contains NaN or infinity")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"float frame must lie in [0, 1], got [{lo:g}, {hi:g}]")
        scaled = np.floor(arr.astype(np.float64) * 255.0 + 0.5)
        return scaled.astype(np.uint8)
    raise ValueError(
        f"unsupported frame dtype {arr.dtype}; expected uint8, uint16 or float in [0, 1]"
    )


def _exact_mean(image: U8Array) -> float:
    """Mean of a uint8 array from an exact integer sum: independent of memory layout (a channel
    view of a BGR frame and a contiguous copy give the same bits), so QC decisions at the
    threshold and the normalisation gain never depend on how the frame was stored."""
    return int(image.sum(dtype=np.uint64)) / image.size


def _check_u8(frame8: np.ndarray, what: str) -> None:
    if not isinstance(frame8, np.ndarray) or frame8.dtype != np.uint8:
        dtype = getattr(frame8, "dtype", type(frame8).__name__)
        raise ValueError(f"{what} must be a uint8 array (use to_uint8), got {dtype}")
    if frame8.size == 0:
        raise ValueError(f"{what} is empty, shape {frame8.shape}")
    if frame8.ndim == 3 and frame8.shape[2] not in (1, 3):
        raise ValueError(
            f"{what} must be grey (H, W) / (H, W, 1) or BGR (H, W, 3), got shape {frame8.shape}"
        )
    if frame8.ndim not in (2, 3):
        raise ValueError(f"{what} must be (H, W) or (H, W, C), got shape {frame8.shape}")


def _to_grey(frame8: U8Array) -> U8Array:
    """(H, W) / (H, W, 1) grey or (H, W, 3) BGR uint8 -> (H, W) uint8 grey (luma for colour)."""
    if frame8.ndim == 2:
        return frame8
    if frame8.shape[2] == 1:
        return frame8[:, :, 0]
    grey = _u8(cv2.cvtColor(np.ascontiguousarray(frame8), cv2.COLOR_BGR2GRAY))
    return grey


def mean_v(frame8: np.ndarray) -> float:
    """Mean of the HSV value channel, in 8-bit grey levels.

    Args:
        frame8: (H, W) or (H, W, 1) grey, or (H, W, 3) BGR, uint8. For grey frames V is the grey
            level itself; for BGR it is ``cv2.cvtColor(..., COLOR_BGR2HSV)[..., 2]``
            (= max(B, G, R)).
    """
    _check_u8(frame8, "frame8")
    if frame8.ndim == 3 and frame8.shape[2] == 3:
        hsv = _u8(cv2.cvtColor(np.ascontiguousarray(frame8), cv2.COLOR_BGR2HSV))
        return _exact_mean(hsv[:, :, 2])
    return _exact_mean(frame8)


def _check_channel_frame(frame8: np.ndarray, config: PipelineConfig, what: str) -> None:
    """Validate an (H, W, C) uint8 frame of C >= 2 acquired channels against ``config.channels``."""
    if not isinstance(frame8, np.ndarray) or frame8.dtype != np.uint8:
        dtype = getattr(frame8, "dtype", type(frame8).__name__)
        raise ValueError(f"{what} must be a uint8 array (use to_uint8), got {dtype}")
    if frame8.ndim != 3 or frame8.shape[2] < 2:
        raise ValueError(
            f"band_source='channels' needs an (H, W, C) {what} with C >= 2 acquired channels, "
            f"got shape {frame8.shape}"
        )
    if frame8.size == 0:
        raise ValueError(f"{what} is empty, shape {frame8.shape}")
    if config.channels is not None and frame8.shape[2] != config.channels:
        raise ValueError(
            f"{what} has {frame8.shape[2]} channels but config.channels is {config.channels}"
        )


def _channel_mean(frame8: U8Array) -> U8Array:
    """(H, W, C) uint8 -> (H, W) uint8 mean over the channels, exact integer arithmetic,
    rounded half up."""
    c = frame8.shape[2]
    total = frame8.sum(axis=2, dtype=np.uint32)
    out: U8Array = ((2 * total + c) // (2 * c)).astype(np.uint8)
    return out


def quality_check(frame8: np.ndarray, config: PipelineConfig) -> QCReport:
    """Exposure QC of an 8-bit frame (paper 2.2). ``focus_score`` is left 0.0; see :func:`prepare`.

    Excluded iff mean V > ``max_mean_v`` ("overexposed": bright halos merge cell boundaries with
    the background) or mean V < ``min_mean_v`` ("underexposed").

    With ``band_source="channels"`` an (H, W, C) frame's "mean V" is the mean over all its values
    (the mean of the channel-mean image), not the HSV V of colour nor the brightest channel: the
    channels are not colour, each is renormalised to ``target_mean_v`` on its own, and a per-channel
    (or per-pixel) maximum would rise with C (and with noise), moving the 240 threshold with the
    acquisition. A single saturated channel therefore does not exclude a frame by itself.
    """
    if config.band_source == "channels" and isinstance(frame8, np.ndarray) and frame8.ndim == 3:
        _check_channel_frame(frame8, config, "frame8")
        mv = _exact_mean(frame8)
    else:
        mv = mean_v(frame8)
    if mv > config.max_mean_v:
        reason = f"mean V {mv:.1f} > {config.max_mean_v:g}"
        return QCReport(mv, 0.0, True, ("overexposed",), reason)
    if mv < config.min_mean_v:
        reason = f"mean V {mv:.1f} < {config.min_mean_v:g}"
        return QCReport(mv, 0.0, True, ("underexposed",), reason)
    return QCReport(mv, 0.0, False, (), None)
