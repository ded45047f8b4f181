"""Normalisation of an 8-bit frame, its focus measures and its foreground (cell) mask, and the
per-image standardisation of the raw frame (``intensity="standardise"``)."""

from __future__ import annotations

import functools
import logging

import cv2
import numpy as np

from ._common import _BORDER, BoolArray, F32Array, U8Array, _gauss, _u8
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


# Focus ratio (see focus_ratio): Gaussian sigmas, in pixels of the 2x-binned frame, of the
# difference-of-Gaussians bands it compares, and how far the detail band must rise above what
# camera noise alone puts into it.
_DETAIL_SIGMAS = (0.5, 2.0)
_COARSE_SIGMAS = (2.0, 4.0)
_DETAIL_OVER_NOISE = 4.0
# Immerkaer (1996) fast noise estimation: the mask cancels smooth image structure up to second
# order, and mean |I * N| * sqrt(pi / 2) / 6 is the noise sigma of Gaussian noise.
_IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)


FOCUS_RATIO_MIN_SIDE = 32
"""Smallest frame side (pixels) :func:`focus_ratio` accepts: 16 binned pixels, four times the
coarse band's sigma."""


def _dog_variance(image: F32Array, sigmas: tuple[float, float]) -> float:
    fine = cv2.GaussianBlur(image, (0, 0), sigmas[0], borderType=_BORDER)
    coarse = cv2.GaussianBlur(image, (0, 0), sigmas[1], borderType=_BORDER)
    return float(np.var(fine - coarse))


def _noise_variance(image: F32Array) -> float:
    """Variance of the camera noise in ``image``, estimated (Immerkaer) from the image itself."""
    response = np.abs(cv2.filter2D(image, cv2.CV_32F, _IMMERKAER, borderType=_BORDER))
    sigma = float(response[1:-1, 1:-1].mean()) * float(np.sqrt(np.pi / 2.0)) / 6.0
    return sigma * sigma


@functools.lru_cache(maxsize=1)
def _detail_band_per_noise() -> float:
    """var(detail band) / var(noise) of white noise: what noise alone puts into the band."""
    noise = np.random.default_rng(0).standard_normal((512, 512)).astype(np.float32)
    return _dog_variance(noise, _DETAIL_SIGMAS) / float(np.var(noise))


def focus_ratio(frame8: np.ndarray) -> float:
    """Sharpness of a frame that does not depend on how many cells it shows; higher = sharper.

    The frame's grey view (channel mean for (H, W, C)) is binned 2 x 2 and split into two
    difference-of-Gaussians bands: cell detail (sigma 0.5 -> 2 binned pixels, about 1.6-6.5 um
    at 40x) and coarser structure (2 -> 4). Defocus removes detail before it removes coarse
    structure, so ``var(detail) / var(coarse)`` falls with blur whatever the confluence or the
    exposure, where the variance of the Laplacian (:func:`focus_score`) mostly measures how many
    cells are in view. A frame so blurred (or so empty) that its detail band holds no more than
    camera noise would give noise's own ratio, which is high; it scores 0.0 instead: detail must
    exceed ``_DETAIL_OVER_NOISE`` times the noise's share of the band (noise estimated from the
    frame, Immerkaer 1996).

    Calibrated on the simulator against true defocus: ``benchmarks/focus_qc.py`` (ROC and the
    threshold ``PipelineConfig.min_focus_ratio``).

    Args:
        frame8: (H, W), (H, W, 1), BGR (H, W, 3) or channels (H, W, C) uint8, with both sides
            at least :data:`FOCUS_RATIO_MIN_SIDE`.

    Raises:
        ValueError: another dtype or shape, or a frame too small.
    """
    arr = np.asarray(frame8)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or min(arr.shape[:2]) < FOCUS_RATIO_MIN_SIDE:
        raise ValueError(
            f"focus_ratio needs a uint8 (H, W[, C]) frame of at least {FOCUS_RATIO_MIN_SIDE} x "
            f"{FOCUS_RATIO_MIN_SIDE} pixels, got {arr.dtype} {arr.shape}"
        )
    acquired_channels = arr.ndim == 3 and arr.shape[2] not in (1, 3)
    grey = _channel_mean(arr) if acquired_channels else _to_grey(arr)
    height, width = grey.shape
    binned: F32Array = cv2.resize(
        grey.astype(np.float32), (width // 2, height // 2), interpolation=cv2.INTER_AREA
    ).astype(np.float32, copy=False)
    detail = _dog_variance(binned, _DETAIL_SIGMAS)
    noise_in_detail = _detail_band_per_noise() * _noise_variance(binned)
    if detail <= _DETAIL_OVER_NOISE * noise_in_detail:
        return 0.0
    coarse = _dog_variance(binned, _COARSE_SIGMAS)
    return detail / max(coarse, 1e-6)


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


# Per-image standardisation divides by max(std, _STD_FLOOR_REL * |mean|, _STD_FLOOR_ABS): a flat
# channel becomes ~0 instead of amplified noise. Relative, so the floor scales with the data and
# the features stay independent of the bit depth (12-bit data x 16 = the same 16-bit features).
_STD_FLOOR_REL = 1e-3
_STD_FLOOR_ABS = 1e-12
# Standardised values are clipped to +-this many standard deviations (hot or dead pixels).
_STANDARD_CLIP = 8.0
# OpenCV's BGR -> grey weights (cv2.COLOR_BGR2GRAY), applied in float to keep every bit.
_LUMA_BGR = np.array([0.114, 0.587, 0.299], dtype=np.float32)


def standardised_planes(frame: np.ndarray, config: PipelineConfig) -> F32Array:
    """Model features of ``intensity="standardise"``: (B, height, width) float32, C-contiguous.

    The raw frame at its full bit depth (uint8, uint16 at any significant bit depth, or float):
    each channel is resized to (height, width) in float32 (``cv2.INTER_AREA`` when shrinking in
    both directions, else ``cv2.INTER_LINEAR``, as :func:`normalise`), then standardised on its
    own, ``(x - mean) / max(std, floor)`` over the image, and clipped to +-8. Why: the mean-V +
    CLAHE path works on the 8-bit view, which throws away the low bits of 12-16-bit cameras and
    re-maps contrast non-linearly per tile; standardising keeps the measured intensities up to an
    affine map per image, so the result does not depend on exposure, gain or bit depth.

    Channels: with ``band_source="channels"`` an (H0, W0, C) frame gives C bands (C ==
    ``config.channels`` when set); otherwise a grey (H0, W0) / (H0, W0, 1) frame gives one band
    and a BGR (H0, W0, 3) frame its luma (OpenCV's weights). No median filter, no contrast step,
    no weighted-mean filter and no SSN (``ws`` is 1 by validation).

    Raises:
        ValueError: a frame layout the config does not accept.
    """
    arr = np.asarray(frame)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if config.band_source == "channels":
        if arr.ndim != 3 or arr.shape[2] < 2:
            raise ValueError(
                f"band_source='channels' needs an (H, W, C) frame with C >= 2, got {arr.shape}"
            )
        if config.channels is not None and arr.shape[2] != config.channels:
            raise ValueError(f"frame has {arr.shape[2]} channels, config expects {config.channels}")
        stack = arr.astype(np.float32)
    elif arr.ndim == 2:
        stack = arr.astype(np.float32)[:, :, None]
    elif arr.ndim == 3 and arr.shape[2] == 3:
        stack = (arr.astype(np.float32) @ _LUMA_BGR)[:, :, None]
    else:
        raise ValueError(
            f"frame must be grey (H, W) or BGR (H, W, 3), got shape {arr.shape} "
            "(acquired channels as bands need band_source='channels')"
        )
    h0, w0, n = stack.shape
    shrinking = config.height <= h0 and config.width <= w0
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    planes = np.empty((n, config.height, config.width), dtype=np.float32)
    for c in range(n):
        plane: F32Array = np.ascontiguousarray(stack[:, :, c])
        if (h0, w0) != (config.height, config.width):
            plane = np.asarray(
                cv2.resize(plane, (config.width, config.height), interpolation=interp),
                dtype=np.float32,
            )
        mean = float(plane.mean(dtype=np.float64))
        std = float(plane.std(dtype=np.float64))
        scale = max(std, _STD_FLOOR_REL * abs(mean), _STD_FLOOR_ABS)
        np.subtract(plane, np.float32(mean), out=planes[c])
        planes[c] *= np.float32(1.0 / scale)
    np.clip(planes, -_STANDARD_CLIP, _STANDARD_CLIP, out=planes)
    return planes
