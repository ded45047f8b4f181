"""The whole path: one camera frame -> :class:`PreparedImage` (QC, normalised image, mask,
confluence, model features). :func:`prepare` is what training and serving call."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from ._common import BoolArray, F32Array, U8Array
from .bands import _band_planes, _channel_planes
from .config import PipelineConfig
from .normalise import (
    FOCUS_RATIO_MIN_SIDE,
    focus_ratio,
    focus_score,
    foreground_mask,
    normalise,
    standardised_planes,
)
from .qc import QCReport, _check_channel_frame, quality_check, to_uint8
from .ssn import _ssn_planes

logger = logging.getLogger(__name__)


@dataclass
class PreparedImage:
    """Everything :func:`prepare` derives from one frame. Arrays are None when excluded."""

    qc: QCReport
    normalised: U8Array | None  # (height, width) uint8; "channels": the channel-mean image
    mask: BoolArray | None  # (height, width) bool, True = cell
    confluence_pct: float | None  # 100 * mask.mean(), percent of the field covered by cells
    features: F32Array | None  # (B, height, width) float32 model input, C-contiguous
    timings_ms: dict[str, float]  # "qc", "normalise", "mask", "hsm"; milliseconds


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


def prepare(
    frame: np.ndarray, config: PipelineConfig, bit_depth: int | None = None
) -> PreparedImage:
    """Camera frame -> QC, normalised image, cell mask, confluence and model features.

    Args:
        frame: with ``band_source="filter_bank"`` (the default): (H0, W0) or (H0, W0, 1) grey, or
            (H0, W0, 3) BGR colour; colour frames: QC on HSV V, processing on the luma (grey)
            image. With ``band_source="channels"``: (H0, W0, C), C >= 2 acquired channels (never
            colour), C == ``config.channels`` when that is set; QC on the mean over all channels,
            normalised image, focus, mask and confluence from the channel-mean image, one band
            per channel (:func:`channel_band_stack`). uint8, uint16 (``bit_depth`` bits) or
            float in [0, 1].
        config: pipeline configuration (from the model card when serving).
        bit_depth: significant bits of uint16 data; see :func:`to_uint8`.

    Returns:
        A :class:`PreparedImage`; ``features`` is (B, height, width) with B = len(config.bands)
        or, for "channels", B = C; with ``config.intensity="standardise"`` the per-image
        standardised raw frame (:func:`standardised_planes`: B = 1 for grey / BGR, C for
        "channels"), made from ``frame`` at its full bit depth. For excluded frames only ``qc``
        and timings are filled.
        ``timings_ms`` has "qc" (8-bit conversion, exposure and focus), "normalise", "mask" and
        "hsm" (bands, with the per-channel normalisation for "channels", + SSN); stages not run
        are absent.

    Raises:
        ValueError: for malformed frames (see :func:`to_uint8`) or unsupported channel counts
            (including a count other than ``config.channels``).
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    frame8 = to_uint8(frame, bit_depth)
    channels = config.band_source == "channels"
    if channels:
        _check_channel_frame(frame8, config, "frame")
    elif frame8.ndim == 3 and frame8.shape[2] not in (1, 3):
        raise ValueError(
            f"frame must be grey (H, W) / (H, W, 1) or BGR (H, W, 3), got shape {frame8.shape} "
            "(acquired channels as bands need band_source='channels')"
        )
    qc = quality_check(frame8, config)
    timings["qc"] = _ms(t0)
    if qc.excluded:
        logger.debug("frame excluded: %s", qc.reason)
        return PreparedImage(qc, None, None, None, None, timings)

    t0 = time.perf_counter()
    norm = normalise(frame8, config)
    timings["normalise"] = _ms(t0)

    t0 = time.perf_counter()
    focus = focus_score(norm)
    # Too small to have two bands to compare (test crops): no ratio, and no check of it.
    ratio = focus_ratio(frame8) if min(frame8.shape[:2]) >= FOCUS_RATIO_MIN_SIDE else None
    blurred = _out_of_focus(focus, ratio, config)
    if blurred is not None:
        flags = (*qc.flags, "out_of_focus")
        if config.exclude_out_of_focus:
            qc = QCReport(qc.mean_v, focus, True, flags, blurred, ratio or 0.0)
            timings["qc"] += _ms(t0)
            logger.debug("frame excluded: %s", blurred)
            return PreparedImage(qc, None, None, None, None, timings)
        qc = QCReport(qc.mean_v, focus, False, flags, None, ratio or 0.0)
    else:
        qc = QCReport(qc.mean_v, focus, qc.excluded, qc.flags, qc.reason, ratio or 0.0)
    timings["qc"] += _ms(t0)

    t0 = time.perf_counter()
    mask = foreground_mask(norm, config)
    confluence = 100.0 * float(mask.mean())
    timings["mask"] = _ms(t0)

    t0 = time.perf_counter()
    if config.intensity == "standardise":
        # The raw frame at full bit depth (QC and the mask above used the 8-bit view).
        features = standardised_planes(frame, config)
    else:
        planes = _channel_planes(frame8, config) if channels else _band_planes(norm, config)
        features = _ssn_planes(planes, config)
    timings["hsm"] = _ms(t0)

    return PreparedImage(qc, norm, mask, confluence, features, timings)


def _out_of_focus(focus: float, ratio: float | None, config: PipelineConfig) -> str | None:
    """Why a frame is out of focus (both measures are checked), or None if it is not."""
    if focus < config.min_focus:
        return f"focus score {focus:.1f} < {config.min_focus:g}"
    if ratio is not None and ratio < config.min_focus_ratio:
        return f"focus ratio {ratio:.2f} < {config.min_focus_ratio:g}"
    return None
