"""Normalisation of an 8-bit frame, its focus score and its foreground (cell) mask."""

from __future__ import annotations

import logging

import cv2
import numpy as np

from ._common import _BORDER, BoolArray, U8Array, _gauss, _u8
from .config import PipelineConfig
from .qc import _channel_mean, _check_channel_frame, _check_u8, _exact_mean, _to_grey

logger = logging.getLogger(__name__)


def normalise(frame8: np.ndarray, config: PipelineConfig) -> U8Array:
    """Paper 2.2 / 2.4.1 preprocessing of one 8-bit frame.

    Steps: grey (luma for BGR; with ``band_source="channels"`` the rounded channel mean of an
    (H, W, C) frame, see :func:`prepare`); scale so that the mean grey level is ``target_mean_v``
    (saturating at 255, so clipped frames end slightly below target); resize to (height, width);
    median filter (``median_ksize``); contrast (CLAHE, global histogram equalisation, or none).

    Resizing uses ``cv2.INTER_AREA`` when the frame shrinks in both directions: it averages every
    source pixel, so shot noise and fine halos do not alias into moire, which point-sampling
    interpolators do at the ~2.4x reduction of a 528 x 720 camera frame. Otherwise (any direction
    enlarged) ``cv2.INTER_LINEAR``: for upscaling INTER_AREA has nothing to average and degrades
    to a blocky near-neighbour result.

    Args:
        frame8: (H0, W0), (H0, W0, 1) or (H0, W0, 3) BGR uint8; with ``band_source="channels"``
            (H0, W0) (e.g. one channel) or (H0, W0, C), C >= 2 acquired channels.
        config: pipeline configuration.

    Returns:
        (config.height, config.width) uint8.
    """
    if config.band_source == "channels" and isinstance(frame8, np.ndarray) and frame8.ndim == 3:
        _check_channel_frame(frame8, config, "frame8")
        grey = _channel_mean(frame8)
    else:
        _check_u8(frame8, "frame8")
        grey = _to_grey(frame8)

    mean = _exact_mean(grey)
    # A black frame cannot be brightened; QC normally excludes it before we get here.
    gain = config.target_mean_v / mean if mean > 0.0 else 1.0
    # Gain as a 256-entry table computed in float64 (round half up, saturate): exact and the same
    # on every CPU, unlike float32 SIMD arithmetic.
    lut = np.clip(np.floor(np.arange(256, dtype=np.float64) * gain + 0.5), 0, 255).astype(np.uint8)
    scaled = _u8(cv2.LUT(np.ascontiguousarray(grey), lut))

    h0, w0 = scaled.shape
    if (h0, w0) == (config.height, config.width):
        resized = scaled
    else:
        shrinking = config.height <= h0 and config.width <= w0
        interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        resized = _u8(cv2.resize(scaled, (config.width, config.height), interpolation=interp))
        if abs(h0 / w0 - config.height / config.width) > 0.02 * config.height / config.width:
            logger.debug(
                "frame %dx%d stretched to %dx%d (aspect ratio changes)",
                h0,
                w0,
                config.height,
                config.width,
            )

    denoised = resized if config.median_ksize == 1 else cv2.medianBlur(resized, config.median_ksize)

    out: U8Array
    if config.contrast == "clahe":
        # A fresh CLAHE object per call: OpenCV algorithm objects are not documented thread-safe,
        # and creating one costs microseconds.
        clahe = cv2.createCLAHE(
            clipLimit=config.clahe_clip_limit,
            tileGridSize=(config.clahe_tile, config.clahe_tile),
        )
        out = _u8(clahe.apply(denoised))
    elif config.contrast == "equalize":
        out = _u8(cv2.equalizeHist(denoised))
    else:
        out = np.ascontiguousarray(denoised)
    return out


def focus_score(normalised: U8Array) -> float:
    """Variance of the Laplacian (3 x 3) of a uint8 image; higher = sharper. Grey levels^2."""
    lap = cv2.Laplacian(normalised, cv2.CV_64F, ksize=1, borderType=_BORDER)
    return float(lap.var())


def foreground_mask(normalised: np.ndarray, config: PipelineConfig) -> BoolArray:
    """Cell (foreground) mask from local contrast, in the spirit of PHANTAST (Jaccard et al. 2014).

    Cells in phase contrast are textured; the background is flat. A pixel is foreground when the
    local coefficient of variation, Gaussian-weighted std / Gaussian-weighted mean with
    ``mask_sigma``, exceeds ``mask_threshold``. Then: a 3 x 3 opening removes isolated pixels,
    connected components smaller than ``mask_min_object_px`` are dropped (debris), and enclosed
    background holes up to ``mask_max_hole_px`` are filled (flat cell interiors); larger holes are
    kept, because at high confluence real gaps between cells are enclosed too and filling them
    would inflate the confluence.

    Args:
        normalised: (H, W) uint8 from :func:`normalise`.
        config: pipeline configuration.

    Returns:
        (H, W) bool, True = cell.
    """
    if normalised.dtype != np.uint8 or normalised.ndim != 2:
        raise ValueError(
            f"normalised must be (H, W) uint8, got {normalised.dtype} {normalised.shape}"
        )
    f = normalised.astype(np.float32)
    mu = _gauss(f, config.mask_sigma)
    mu2 = _gauss(f * f, config.mask_sigma)
    std = np.sqrt(np.maximum(mu2 - mu * mu, np.float32(0.0)))
    # +1 grey level keeps black regions (mean ~0) from dividing by zero.
    fg = (std > np.float32(config.mask_threshold) * (mu + np.float32(1.0))).astype(np.uint8)

    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    fg = _u8(cv2.morphologyEx(fg, cv2.MORPH_OPEN, kernel, borderType=cv2.BORDER_REPLICATE))

    if config.mask_min_object_px > 0:
        _, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
        keep = stats[:, cv2.CC_STAT_AREA] >= config.mask_min_object_px
        keep[0] = False  # label 0 is the background
        fg = keep[labels].astype(np.uint8)

    if config.mask_max_hole_px > 0:
        # Holes = background components (4-connected, dual of the 8-connected foreground) that do
        # not touch the image border.
        _, labels, stats, _ = cv2.connectedComponentsWithStats(1 - fg, connectivity=4)
        border_labels = np.unique(
            np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
        )
        fill = stats[:, cv2.CC_STAT_AREA] <= config.mask_max_hole_px
        fill[border_labels] = False
        fill[0] = False  # label 0 is the foreground here
        fg = fg | fill[labels].astype(np.uint8)

    mask: BoolArray = fg.astype(bool)
    return mask
