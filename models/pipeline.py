"""Image QC, normalisation and HSM feature construction shared by training and serving.

One raw camera frame becomes exactly one model input here, and both the training jobs and the
service call :func:`prepare` with the configuration stored in the model card, so there is no
train/serve skew. Only numpy and OpenCV are used: the service must run without PyTorch.

The data path (reference paper: Liu et al. 2023, sections 2.2 and 2.4.1)::

    frame (H0, W0[, C]) uint8/uint16/float
      -> to_uint8            8-bit, like the paper's "8-bit grayscale images"
      -> quality_check       mean HSV V > 240 => excluded ("overexposed"); nearly black => excluded
      -> normalise           mean V -> ~130, resize to 220 x 300, median denoise, contrast
      -> focus score         variance of the Laplacian of the normalised image (flag)
      -> foreground_mask     PHANTAST-style local contrast -> cell mask, confluence
      -> band_stack          (H, W, B) "spectral" bands from a fixed filter bank
                             (or channel_band_stack: one band per acquired channel, B = C)
      -> ssn_features        weighted-mean filter + spatial-spectral neighbour (SSN) mean
      -> features            (B, H, W) float32

Our reading of what the paper leaves open (the model card records the config, and
:data:`FEATURE_VERSION` identifies the code-level constants below):

* **Size.** "220 x 300" is read as 220 rows x 300 columns (landscape, like camera frames: a
  528 x 720 frame keeps its aspect ratio exactly). Frames of another aspect ratio are stretched,
  not cropped, so the whole field is always seen.
* **Colour.** Phase-contrast frames are grey; for a grey frame HSV V equals the grey level. A
  3-channel frame is taken as OpenCV BGR: QC uses the HSV V channel (as in the paper), the rest
  of the path uses the luma image from ``cv2.COLOR_BGR2GRAY``. (H, W, 1) is treated as grey.
  Other channel counts are rejected unless ``band_source="channels"`` (next point).
* **Bands.** The paper never says what the "spectral" bands of an 8-bit grey image are. We derive
  them from the normalised image with a fixed filter bank (see :data:`BAND_NAMES`); each band is
  mapped to roughly zero mean and unit scale by FIXED constants (no per-image statistics), so a
  given pixel value always means the same thing to the network.
* **Bands from acquired channels.** With ``PipelineConfig(band_source="channels")`` a frame
  (H, W, C), C >= 2, holds C acquired channels (illumination wavelengths or focal planes; C == 3
  is then NOT BGR colour) and gives B = C bands, one per channel: each channel is normalised on
  its own exactly like a grey frame and scaled like the "intensity" band
  (:func:`channel_band_stack`). QC uses the mean over all channels (the mean of the channel-mean
  image), not the brightest channel; the focus score, the foreground mask and the confluence come
  from the channel-mean image, normalised like a grey frame. The weighted-mean filter and the SSN
  step are unchanged. ``bands`` (the filter bank) is then unused; the network's ``in_bands`` is C
  (:meth:`PipelineConfig.band_names`).
* **SSCD.** For pixel i and every j != i in the WS x WS window centred on i::

      d(i, j) = ||x_i - x_j||_2 / sqrt(B) + lambda * ||p_i - p_j||_2 / (sqrt(2) * (WS // 2))

  where x are the band vectors after a 3 x 3 binomial weighted-mean filter ([1, 2, 1] (x)
  [1, 2, 1] / 16, the "weighted-mean filter" step) and p are pixel coordinates, so the spatial
  term is in [0, lambda]. The K smallest d are the SSNs of i. The feature of i is the mean of the
  filtered band vectors of i and its K SSNs (an edge-preserving smoother: neighbours across an
  edge are spectrally far and are not averaged in). Borders are padded by reflection
  (``cv2.BORDER_REFLECT_101``), so every pixel has a full window. Ties at the K-th distance are
  broken in favour of the spatially closer offset, then raster order of the offset (dy, then dx),
  which is deterministic and independent of numpy's selection algorithm. WS = 1 switches the SSN
  step off: the features are then the filtered bands.

Speed: :func:`ssn_features` (and :func:`prepare`) run a fast path that performs the same float32
operations in the same order as :func:`ssn_features_reference`, the plain vectorised version kept
as an oracle, and is therefore bit-identical to it: numpy + OpenCV by default, or one fused numba
kernel where the optional ``numba`` package is installed (``MSCREEN_SSN_NUMBA=0`` switches it
off). docs/hsm.md explains the reading of the paper; docs/benchmarks.md has the timings.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Literal, get_args

import cv2
import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

__all__ = [
    "BAND_NAMES",
    "FEATURE_VERSION",
    "BandSource",
    "ContrastMethod",
    "PipelineConfig",
    "PreparedImage",
    "QCReport",
    "band_stack",
    "channel_band_stack",
    "focus_score",
    "foreground_mask",
    "mean_v",
    "normalise",
    "prepare",
    "quality_check",
    "ssn_features",
    "ssn_features_reference",
    "to_uint8",
    "weighted_mean_filter",
]

# Bump whenever a code-level constant that changes the features changes (band filters, band
# scaling, weighted-mean kernel, tie-breaking). Model cards should record it next to the config.
FEATURE_VERSION = "1"

ContrastMethod = Literal["clahe", "equalize", "none"]
_CONTRAST_METHODS: tuple[str, ...] = get_args(ContrastMethod)

# Where the HSM bands come from: the fixed filter bank on one grey image, or one band per acquired
# channel of a multi-channel frame.
BandSource = Literal["filter_bank", "channels"]
_BAND_SOURCES: tuple[str, ...] = get_args(BandSource)

U8Array = npt.NDArray[np.uint8]
F32Array = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]

_BORDER = cv2.BORDER_REFLECT_101


# --------------------------------------------------------------------------------------------
# Filter bank
# --------------------------------------------------------------------------------------------


def _gauss(img: F32Array, sigma: float) -> F32Array:
    """Gaussian blur with an explicit kernel size (2 * ceil(3 sigma) + 1) and reflect-101 border.

    The size is fixed here rather than left to OpenCV, whose automatic size depends on the dtype.
    """
    ksize = 2 * math.ceil(3.0 * sigma) + 1
    blurred = cv2.GaussianBlur(img, (ksize, ksize), sigmaX=sigma, sigmaY=sigma, borderType=_BORDER)
    return np.asarray(blurred, dtype=np.float32)


def _band_intensity(f: F32Array) -> F32Array:
    return f


def _band_gauss(sigma: float) -> Callable[[F32Array], F32Array]:
    def band(f: F32Array) -> F32Array:
        return _gauss(f, sigma)

    return band


def _band_gradient(f: F32Array) -> F32Array:
    # Sobel scaled by 1/8 gives grey levels per pixel; the 3x3 Sobel already smooths across the
    # derivative direction, and the median filter in normalise() has removed salt noise.
    gx = cv2.Sobel(f, cv2.CV_32F, 1, 0, ksize=3, scale=0.125, borderType=_BORDER)
    gy = cv2.Sobel(f, cv2.CV_32F, 0, 1, ksize=3, scale=0.125, borderType=_BORDER)
    # Not cv2.magnitude: its SIMD path uses an approximate square root, so results differ by
    # ~1e-6 depending on the array's memory alignment, i.e. the same image could give different
    # features in training and serving.
    gx = np.asarray(gx, dtype=np.float32)
    gy = np.asarray(gy, dtype=np.float32)
    out: F32Array = np.sqrt(gx * gx + gy * gy)
    return out


def _band_log(sigma: float) -> Callable[[F32Array], F32Array]:
    def band(f: F32Array) -> F32Array:
        # Scale-normalised (sigma^2) Laplacian of Gaussian, so bands at different sigmas have
        # comparable magnitudes for blobs of matching size.
        lap = cv2.Laplacian(_gauss(f, sigma), cv2.CV_32F, ksize=1, borderType=_BORDER)
        out: F32Array = lap * np.float32(sigma * sigma)
        return out

    return band


def _band_local_std(f: F32Array) -> F32Array:
    mu = _gauss(f, 2.0)
    mu2 = _gauss(f * f, 2.0)
    # Rounding can make the variance slightly negative in flat regions.
    out: F32Array = np.sqrt(np.maximum(mu2 - mu * mu, np.float32(0.0)))
    return out


def _band_halo_dog(f: F32Array) -> F32Array:
    # Phase-contrast halos are thin bright rims a few pixels wide around cells; a difference of
    # Gaussians (1 px - 4 px) responds to them and to cell bodies with opposite signs.
    out: F32Array = _gauss(f, 1.0) - _gauss(f, 4.0)
    return out


@dataclass(frozen=True)
class _BandSpec:
    """One band of the filter bank: ``(fn(image in grey levels) - offset) / scale``."""

    fn: Callable[[F32Array], F32Array]
    offset: float
    scale: float


# Offsets and scales are fixed constants (grey levels), chosen so that each band is roughly
# zero-mean with a standard deviation of about 0.5-1 on simulated phase-contrast fields (sparse to
# confluent) normalised with the default config (CLAHE, mean ~130); intensity-like bands are
# bounded to [-4, 4]. They are part of FEATURE_VERSION: never compute them per image.
_BANDS: dict[str, _BandSpec] = {
    "intensity": _BandSpec(_band_intensity, 128.0, 32.0),
    "gauss_1": _BandSpec(_band_gauss(1.0), 128.0, 32.0),
    "gauss_2": _BandSpec(_band_gauss(2.0), 128.0, 32.0),
    "gauss_4": _BandSpec(_band_gauss(4.0), 128.0, 32.0),
    "gradient": _BandSpec(_band_gradient, 5.0, 8.0),
    "log_1": _BandSpec(_band_log(1.0), 0.0, 8.0),
    "log_2": _BandSpec(_band_log(2.0), 0.0, 8.0),
    "log_4": _BandSpec(_band_log(4.0), 0.0, 8.0),
    "local_std": _BandSpec(_band_local_std, 8.0, 10.0),
    "halo_dog": _BandSpec(_band_halo_dog, 0.0, 8.0),
}

BAND_NAMES: tuple[str, ...] = tuple(_BANDS)
"""Names accepted in :attr:`PipelineConfig.bands`."""


# --------------------------------------------------------------------------------------------
# Configuration and results
# --------------------------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _is_real(value: object) -> bool:
    return _is_int(value) or (isinstance(value, float | np.floating) and math.isfinite(value))


@dataclass(frozen=True)
class PipelineConfig:
    """Everything that turns a camera frame into model input. Saved in every model card.

    Grey levels are 8-bit (0..255); sizes are pixels of the normalised image.
    """

    # QC (paper 2.2): frames whose mean HSV V (8-bit) > max_mean_v are excluded ("overexposed").
    max_mean_v: float = 240.0
    # Also exclude nearly black frames ("underexposed"): mean V < min_mean_v.
    min_mean_v: float = 10.0
    # Variance of the Laplacian of the normalised 8-bit image; below => flag "out_of_focus".
    # The score depends on the contrast method (CLAHE raises it), so recalibrate with it.
    min_focus: float = 20.0
    exclude_out_of_focus: bool = False
    # Normalisation (paper 2.2 / 2.4.1). height x width = the paper's "220 x 300" (rows x cols).
    target_mean_v: float = 130.0
    height: int = 220
    width: int = 300
    median_ksize: int = 3  # odd; 1 switches the median filter off
    contrast: ContrastMethod = "clahe"
    clahe_clip_limit: float = 2.0
    clahe_tile: int = 8  # tiles per side
    # HSM (paper 2.4.1): bands from the filter bank, see BAND_NAMES. Unused (but still validated)
    # when band_source == "channels".
    bands: tuple[str, ...] = (
        "intensity",
        "gauss_2",
        "gradient",
        "log_2",
        "local_std",
        "halo_dog",
    )
    # "filter_bank": frames are grey (or BGR colour) and the bands come from the filter bank.
    # "channels": frames are (H, W, C), C >= 2 acquired channels, one band each (B = C); a 3-channel
    # frame is then NOT BGR colour. See channel_band_stack.
    band_source: BandSource = "filter_bank"
    # band_source == "channels" only: the expected channel count C (>= 2); frames with another
    # count are rejected. None accepts any C >= 2 (the network then fixes it at training time).
    channels: int | None = None
    ws: int = 9  # SSCD window size, odd in 1..13; 1 switches SSN off
    k: int = 12  # number of SSNs, 2..16, <= ws*ws - 1 when ws > 1
    spatial_weight: float = 0.5  # lambda in the SSCD
    # Foreground mask / confluence (PHANTAST-style local contrast).
    mask_sigma: float = 2.0  # Gaussian sigma of the local mean/std window, pixels
    mask_threshold: float = 0.05  # local std / local mean above which a pixel is "cell"
    mask_min_object_px: int = 30  # smaller connected foreground specks are removed
    mask_max_hole_px: int = 1000  # enclosed background holes up to this area are filled

    def __post_init__(self) -> None:
        errors: list[str] = []

        float_fields = (
            "max_mean_v",
            "min_mean_v",
            "min_focus",
            "target_mean_v",
            "clahe_clip_limit",
            "spatial_weight",
            "mask_sigma",
            "mask_threshold",
        )
        int_fields = (
            "height",
            "width",
            "median_ksize",
            "clahe_tile",
            "ws",
            "k",
            "mask_min_object_px",
            "mask_max_hole_px",
        )
        for name in float_fields:
            value = getattr(self, name)
            if not _is_real(value):
                errors.append(f"{name} must be a finite number, got {value!r}")
            else:
                # Normalise ints (e.g. from JSON "240") so that round trips compare equal.
                object.__setattr__(self, name, float(value))
        for name in int_fields:
            value = getattr(self, name)
            if not _is_int(value):
                errors.append(f"{name} must be an integer, got {value!r}")
            else:
                object.__setattr__(self, name, int(value))
        if not isinstance(self.exclude_out_of_focus, bool):
            errors.append(f"exclude_out_of_focus must be a bool, got {self.exclude_out_of_focus!r}")
        if self.channels is not None:
            if not _is_int(self.channels):
                errors.append(f"channels must be an integer or None, got {self.channels!r}")
            else:
                object.__setattr__(self, "channels", int(self.channels))
        if errors:
            raise ValueError("invalid PipelineConfig: " + "; ".join(errors))

        if not 0.0 < self.max_mean_v <= 255.0:
            errors.append(f"max_mean_v must be in (0, 255], got {self.max_mean_v}")
        if not 0.0 <= self.min_mean_v < self.max_mean_v:
            errors.append(
                f"min_mean_v must be in [0, max_mean_v={self.max_mean_v}), got {self.min_mean_v}"
            )
        if self.min_focus < 0.0:
            errors.append(f"min_focus must be >= 0, got {self.min_focus}")
        if not 0.0 < self.target_mean_v < 255.0:
            errors.append(f"target_mean_v must be in (0, 255), got {self.target_mean_v}")
        if self.height <= 0 or self.width <= 0:
            errors.append(f"height and width must be > 0, got {self.height} x {self.width}")
        if self.median_ksize < 1 or self.median_ksize % 2 == 0:
            errors.append(f"median_ksize must be odd and >= 1, got {self.median_ksize}")
        if self.contrast not in _CONTRAST_METHODS:
            errors.append(f"contrast must be one of {_CONTRAST_METHODS}, got {self.contrast!r}")
        if self.clahe_clip_limit <= 0.0:
            errors.append(f"clahe_clip_limit must be > 0, got {self.clahe_clip_limit}")
        if self.clahe_tile < 1:
            errors.append(f"clahe_tile must be >= 1, got {self.clahe_tile}")

        bands = self.bands
        if isinstance(bands, str) or not isinstance(bands, tuple | list):
            errors.append(f"bands must be a sequence of band names, got {bands!r}")
        else:
            object.__setattr__(self, "bands", tuple(bands))
            if not self.bands:
                errors.append("bands must not be empty")
            unknown = [b for b in self.bands if b not in _BANDS]
            if unknown:
                errors.append(f"unknown band name(s) {unknown}; known: {list(BAND_NAMES)}")
            if len(set(self.bands)) != len(self.bands):
                errors.append(f"bands must be unique, got {list(self.bands)}")

        if self.band_source not in _BAND_SOURCES:
            errors.append(f"band_source must be one of {_BAND_SOURCES}, got {self.band_source!r}")
        elif self.channels is not None:
            if self.band_source != "channels":
                errors.append(
                    f"channels={self.channels} applies to band_source='channels' only "
                    f"(band_source is {self.band_source!r})"
                )
            elif self.channels < 2:
                errors.append(f"channels must be >= 2, got {self.channels}")

        if not (1 <= self.ws <= 13 and self.ws % 2 == 1):
            errors.append(f"ws must be odd in 1..13, got {self.ws}")
        if not 2 <= self.k <= 16:
            errors.append(f"k must be in 2..16, got {self.k}")
        elif self.ws > 1 and self.k > self.ws * self.ws - 1:
            errors.append(
                f"k={self.k} exceeds the {self.ws * self.ws - 1} neighbours of a "
                f"{self.ws} x {self.ws} window"
            )
        if self.spatial_weight < 0.0:
            errors.append(f"spatial_weight must be >= 0, got {self.spatial_weight}")
        if self.mask_sigma <= 0.0:
            errors.append(f"mask_sigma must be > 0, got {self.mask_sigma}")
        if self.mask_threshold <= 0.0:
            errors.append(f"mask_threshold must be > 0, got {self.mask_threshold}")
        if self.mask_min_object_px < 0 or self.mask_max_hole_px < 0:
            errors.append("mask_min_object_px and mask_max_hole_px must be >= 0")
        if errors:
            raise ValueError("invalid PipelineConfig: " + "; ".join(errors))

    def band_names(self, n_channels: int | None = None) -> tuple[str, ...]:
        """Names of the feature bands, in order; their number is the network's ``in_bands``.

        "filter_bank": ``bands``. "channels": ``("channel_0", ..., "channel_{C-1}")`` with C =
        ``channels``, or ``n_channels`` (e.g. ``features.shape[1]`` of a training set) when
        ``channels`` is None.

        Raises:
            ValueError: "channels" with C unknown, or ``n_channels`` contradicting ``channels``.
        """
        if self.band_source == "filter_bank":
            return self.bands
        count = self.channels if self.channels is not None else n_channels
        if count is None:
            raise ValueError("band_source='channels' with channels=None: pass n_channels")
        if count < 2:
            raise ValueError(f"band_source='channels' needs C >= 2 channels, got {count}")
        if n_channels is not None and n_channels != count:
            raise ValueError(f"n_channels={n_channels} but the config expects {count} channels")
        return tuple(f"channel_{i}" for i in range(count))

    def to_dict(self) -> dict[str, object]:
        """JSON-safe dict (tuples become lists); inverse of :meth:`from_dict`."""
        data = asdict(self)
        data["bands"] = list(self.bands)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> PipelineConfig:
        """Build from :meth:`to_dict` output (e.g. a model card); missing keys take defaults.

        Raises:
            ValueError: on unknown keys (a card written by a newer pipeline must not be silently
                half-applied) or invalid values.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown PipelineConfig key(s) {unknown}; known keys: {sorted(known)}"
            )
        kwargs = dict(data)
        if "bands" in kwargs and isinstance(kwargs["bands"], list):
            kwargs["bands"] = tuple(kwargs["bands"])
        return cls(**kwargs)  # type: ignore[arg-type]


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


@dataclass
class PreparedImage:
    """Everything :func:`prepare` derives from one frame. Arrays are None when excluded."""

    qc: QCReport
    normalised: U8Array | None  # (height, width) uint8; "channels": the channel-mean image
    mask: BoolArray | None  # (height, width) bool, True = cell
    confluence_pct: float | None  # 100 * mask.mean(), percent of the field covered by cells
    features: F32Array | None  # (B, height, width) float32 model input, C-contiguous
    timings_ms: dict[str, float]  # "qc", "normalise", "mask", "hsm"; milliseconds


# --------------------------------------------------------------------------------------------
# Conversion and QC
# --------------------------------------------------------------------------------------------


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


def _u8(image: object) -> U8Array:
    """View an OpenCV result as a typed uint8 array (no copy; OpenCV's stubs are untyped)."""
    return np.asarray(image, dtype=np.uint8)


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


# --------------------------------------------------------------------------------------------
# Normalisation, mask, bands
# --------------------------------------------------------------------------------------------


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


def band_stack(normalised: np.ndarray, config: PipelineConfig) -> F32Array:
    """Derive the HSM "spectral" bands of a normalised image with the fixed filter bank.

    Band ``name`` is ``(filter_name(image in grey levels) - offset) / scale`` with fixed
    constants (see ``_BANDS``), so it is roughly zero-mean, unit-scale on typical fields:
    intensity-like bands ((I - 128) / 32) lie in [-4, 4]; the others are unbounded but mostly
    within +-5 (gradient >= -0.625, local_std >= -0.8). The same image always gives the same
    bands (no per-image statistics).

    Args:
        normalised: (H, W) uint8 from :func:`normalise`.
        config: ``config.bands`` names the bands, in order.

    Returns:
        (H, W, B) float32, C-contiguous, B = len(config.bands).
    """
    if normalised.dtype != np.uint8 or normalised.ndim != 2:
        raise ValueError(
            f"normalised must be (H, W) uint8, got {normalised.dtype} {normalised.shape}"
        )
    return np.ascontiguousarray(_band_planes(normalised, config).transpose(1, 2, 0))


def _band_planes(normalised: U8Array, config: PipelineConfig) -> F32Array:
    """(B, H, W) float32 version of :func:`band_stack` (the SSN code works on planes)."""
    f = normalised.astype(np.float32)
    planes = np.empty((len(config.bands), *f.shape), dtype=np.float32)
    for i, name in enumerate(config.bands):
        _band_plane(f, name, planes[i])
    return planes


def _band_plane(f: F32Array, name: str, out: F32Array) -> None:
    """Write band ``name`` of the float32 image f (grey levels), with its fixed scaling, to out."""
    spec = _BANDS[name]
    np.subtract(spec.fn(f), np.float32(spec.offset), out=out)
    out *= np.float32(1.0 / spec.scale)


def channel_band_stack(frame8: np.ndarray, config: PipelineConfig) -> F32Array:
    """The HSM bands of a frame of acquired channels: one band per channel (``band_source``
    "channels"; the counterpart of :func:`band_stack`).

    Channel c goes through :func:`normalise` on its own, exactly like a grey frame (mean to
    ``target_mean_v``, resize, median, contrast), and is then scaled like the "intensity" band,
    ``(I - 128) / 32``: band c is bit-identical to ``band_stack(normalise(frame8[..., c]),
    config with bands=("intensity",))``. The channels are not treated as colour, whatever C is.

    Args:
        frame8: (H0, W0, C) uint8, C >= 2 (and C == ``config.channels`` when that is set).
        config: normalisation settings and ``channels``.

    Returns:
        (height, width, C) float32, C-contiguous.

    Raises:
        ValueError: not uint8, not (H, W, C) with C >= 2, or C != ``config.channels``.
    """
    _check_channel_frame(frame8, config, "frame8")
    return np.ascontiguousarray(_channel_planes(frame8, config).transpose(1, 2, 0))


def _channel_planes(frame8: U8Array, config: PipelineConfig) -> F32Array:
    """(C, height, width) float32 version of :func:`channel_band_stack` (frame8 checked)."""
    n = frame8.shape[2]
    planes = np.empty((n, config.height, config.width), dtype=np.float32)
    for c in range(n):
        norm = normalise(np.ascontiguousarray(frame8[:, :, c]), config)
        _band_plane(norm.astype(np.float32), "intensity", planes[c])
    return planes


# --------------------------------------------------------------------------------------------
# Spatial-spectral neighbours
# --------------------------------------------------------------------------------------------

# 3x3 binomial kernel ([1, 2, 1] / 4 in each direction): the "weighted-mean filter" applied to the
# bands before SSCD, suppressing pixel noise in the spectral distances.
_WMF_KERNEL = np.array([0.25, 0.5, 0.25], dtype=np.float32)


def weighted_mean_filter(bands: np.ndarray) -> F32Array:
    """3 x 3 binomial weighted mean of each band, reflect-101 border.

    Args:
        bands: (H, W, B) float32.

    Returns:
        (H, W, B) float32.
    """
    _check_bands(bands)
    planes = np.ascontiguousarray(np.asarray(bands, dtype=np.float32).transpose(2, 0, 1))
    return np.ascontiguousarray(_wmf_planes(planes).transpose(1, 2, 0))


def _wmf_planes(planes: F32Array) -> F32Array:
    out = np.empty_like(planes)
    for b in range(planes.shape[0]):
        out[b] = cv2.sepFilter2D(
            planes[b], cv2.CV_32F, _WMF_KERNEL, _WMF_KERNEL, borderType=_BORDER
        )
    return out


def _check_bands(bands: np.ndarray) -> None:
    if not isinstance(bands, np.ndarray) or bands.ndim != 3 or bands.size == 0:
        shape = getattr(bands, "shape", None)
        raise ValueError(f"bands must be a non-empty (H, W, B) array, got shape {shape}")
    if not np.issubdtype(bands.dtype, np.floating):
        raise ValueError(f"bands must be floating point, got {bands.dtype}")


@functools.lru_cache(maxsize=16)
def _window_offsets(ws: int) -> tuple[tuple[tuple[int, int], ...], tuple[float, ...]]:
    """Offsets (dy, dx) != (0, 0) of a ws x ws window, in tie-break order, and their normalised
    spatial distances in [0, 1] (distance / distance of the window corner)."""
    r = ws // 2
    offsets = sorted(
        ((dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if (dy, dx) != (0, 0)),
        key=lambda o: (o[0] * o[0] + o[1] * o[1], o[0], o[1]),
    )
    corner = math.sqrt(2.0) * r
    return tuple(offsets), tuple(math.hypot(dy, dx) / corner for dy, dx in offsets)


def ssn_features(bands: np.ndarray, config: PipelineConfig) -> F32Array:
    """Spatial-spectral neighbour (SSN) mean of each band (paper 2.4.1, our reading; see the
    module docstring for the exact SSCD and tie-breaking).

    Args:
        bands: (H, W, B) float32 band cube (from :func:`band_stack`).
        config: uses ``ws``, ``k`` and ``spatial_weight``.

    Returns:
        (H, W, B) float32: for ws == 1 the weighted-mean-filtered bands; otherwise, per pixel,
        the mean of the filtered band vectors of the pixel and its K SSNs. Bit-identical to
        :func:`ssn_features_reference`.
    """
    _check_bands(bands)
    planes = np.ascontiguousarray(np.asarray(bands, dtype=np.float32).transpose(2, 0, 1))
    return np.ascontiguousarray(_ssn_planes(planes, config).transpose(1, 2, 0))


def ssn_features_reference(bands: np.ndarray, config: PipelineConfig) -> F32Array:
    """The first, plainly vectorised implementation of :func:`ssn_features` (same arguments).

    About four times slower and ~25 MB of temporaries per 220 x 300 frame (an (n_offsets, H, W)
    distance cube and a full ``np.partition`` over it). Kept as a second oracle: it performs the
    same float32 operations in the same order as the fast path, so the two must agree bit for
    bit on any input, which the float64 loop oracle in the tests cannot check.
    """
    _check_bands(bands)
    planes = np.ascontiguousarray(np.asarray(bands, dtype=np.float32).transpose(2, 0, 1))
    x = _wmf_planes(planes)
    if config.ws > 1:
        x = _ssn_mean_reference(x, config.ws, config.k, config.spatial_weight)
    return np.ascontiguousarray(x.transpose(1, 2, 0))


def _ssn_planes(planes: F32Array, config: PipelineConfig) -> F32Array:
    """(B, H, W) -> (B, H, W) float32 core of :func:`ssn_features`."""
    x = _wmf_planes(planes)
    if config.ws == 1:
        return x
    return _ssn_mean(x, config.ws, config.k, config.spatial_weight)


def _ssn_mean_reference(x: F32Array, ws: int, k: int, lam: float) -> F32Array:
    """Reference SSN mean of filtered planes x (B, H, W) float32 -> (B, H, W) float32."""
    n_bands, h, w = x.shape
    r = ws // 2
    offsets, spatial = _window_offsets(ws)
    n_off = len(offsets)

    # Reflect-101 padding ("reflect" in numpy's naming); unlike cv2.copyMakeBorder it also works
    # when the image is smaller than the window.
    pad = np.pad(x, ((0, 0), (r, r), (r, r)), mode="reflect")

    def shifted(dy: int, dx: int) -> F32Array:
        view: F32Array = pad[:, r + dy : r + dy + h, r + dx : r + dx + w]
        return view

    # SSCD for every offset: (n_off, H, W). Vectorised over pixels, a short loop over offsets and
    # bands with preallocated buffers (float32 throughout).
    dist = np.empty((n_off, h, w), dtype=np.float32)
    acc = np.empty((h, w), dtype=np.float32)
    tmp = np.empty((h, w), dtype=np.float32)
    inv_sqrt_b = np.float32(1.0 / math.sqrt(n_bands))
    for n, (dy, dx) in enumerate(offsets):
        sh = shifted(dy, dx)
        np.subtract(x[0], sh[0], out=acc)
        np.multiply(acc, acc, out=acc)
        for b in range(1, n_bands):
            np.subtract(x[b], sh[b], out=tmp)
            np.multiply(tmp, tmp, out=tmp)
            acc += tmp
        np.sqrt(acc, out=acc)
        np.multiply(acc, inv_sqrt_b, out=dist[n])
        dist[n] += np.float32(lam * spatial[n])

    # Select the K smallest per pixel: everything <= the K-th smallest value, then, only where
    # ties at that value give more than K, keep the tied offsets that come first in offset order.
    kth = np.partition(dist, k - 1, axis=0)[k - 1]
    selected = dist <= kth
    over = np.count_nonzero(selected, axis=0) > k
    if over.any():
        d_over = dist[:, over]
        kth_over = kth[over]
        less = d_over < kth_over
        tied = d_over == kth_over
        room = k - np.count_nonzero(less, axis=0)
        selected[:, over] = less | (tied & (np.cumsum(tied, axis=0) <= room))

    # Mean of the pixel and its K SSNs.
    out = x.copy()
    weight = np.empty((h, w), dtype=np.float32)
    contrib = np.empty_like(x)
    for n, (dy, dx) in enumerate(offsets):
        np.copyto(weight, selected[n])
        np.multiply(shifted(dy, dx), weight, out=contrib)
        out += contrib
    out *= np.float32(1.0 / (k + 1))
    return out


# ---- The fast path ----------------------------------------------------------------------------
#
# Same float32 operations as the reference, in the same order, so the distances, the K-th
# smallest distance, the neighbour sets and the sums are bit-identical; only the amount of memory
# traffic and the number of numpy calls change (220 x 300, B = 6, WS = 9, K = 12, one core, see
# benchmarks/pipeline.py and docs/benchmarks.md; ~24 ms instead of ~79 ms):
#
# * Each plane is padded (reflect-101) and flattened with the padded row stride ``wp``; a shift
#   (dy, dx) is then a flat offset ``dy * wp + dx`` and every shifted plane is a contiguous 1-D
#   slice (2r junk columns per row are computed and thrown away). Strided 2-D views made numpy
#   ~2x slower per element.
# * d(i, i + o) = d(i + o, i): one distance plane per offset pair {o, -o}, computed over a range
#   that also covers the pixels i - o, so offset -o is a shifted view of the same array (the
#   squared difference of a - b and of b - a is the same float).
# * The K-th smallest distance comes from a min/max network (Batcher sorts of small groups,
#   "lowest K" merges, dead comparators pruned) run plane-wise: 779 ufunc calls for 80 offsets
#   and K = 12, instead of np.partition over an (80, H, W) cube (a quarter of the old time).
# * Masked accumulation with cv2.accumulate (one pass per offset and band; adding a selected
#   value is the same float32 add as before, unselected ones are skipped instead of adding 0).
# * Row strips (``_STRIP_ROWS``) keep each pass over a plane in L2, and the work buffers are
#   kept per thread and reused: fresh multi-MB allocations page-fault on every call.
#
# What bounds it now: three roughly equal parts, each ~1,000 passes over 34,000-float planes at
# cache bandwidth: the distances (21 ufuncs per offset pair), the selection network, and the
# masks + accumulation. numpy cannot fuse them; the optional numba kernel below does.

_INF = -1  # network wire known to hold +inf (padding); a comparator against it only relabels
_NEG_INF = -2  # wire known to hold -inf


@dataclass(frozen=True)
class _SelectionProgram:
    """A straight-line min/max program giving the k-th smallest of ``n_inputs`` planes per pixel.

    Operand ``i < n_inputs`` is input plane i; operand ``n_inputs + j`` is scratch buffer j.
    ``ops`` are ``(is_min, dst, a, b)``: ``dst = minimum(a, b)`` or ``maximum(a, b)``.
    """

    n_inputs: int
    n_buffers: int
    ops: tuple[tuple[bool, int, int, int], ...]
    result: int


class _NetworkBuilder:
    """Builds a comparator network symbolically (wires carry node ids or +-inf markers)."""

    def __init__(self, n_inputs: int) -> None:
        self.n_inputs = n_inputs
        self.nodes: list[tuple[bool, int, int]] = []  # node id = n_inputs + index

    def _node(self, is_min: bool, a: int, b: int) -> int:
        self.nodes.append((is_min, a, b))
        return self.n_inputs + len(self.nodes) - 1

    def compare(self, wires: list[int], i: int, j: int) -> None:
        """Ascending comparator: min to wire i, max to wire j (i < j)."""
        a, b = wires[i], wires[j]
        if a == _NEG_INF or b == _INF:
            return
        if a == _INF or b == _NEG_INF:
            wires[i], wires[j] = b, a
            return
        wires[i], wires[j] = self._node(True, a, b), self._node(False, a, b)

    def sort(self, wires: list[int]) -> list[int]:
        """Batcher's odd-even merge sort, the length padded with +inf to a power of two."""
        size = 1 << max(0, (len(wires) - 1).bit_length())
        padded = [*wires, *([_INF] * (size - len(wires)))]
        for i, j in _odd_even_merge_sort(0, size - 1):
            self.compare(padded, i, j)
        return padded[: len(wires)]

    def merge_lowest(self, a: list[int], b: list[int], k: int, *, final: bool) -> list[int]:
        """The k lowest of two sorted wire lists: c_i = min(a_i, b_{k-1-i}) holds exactly them
        (as a bitonic sequence), which a bitonic sorter then orders unless ``final``."""
        a = [*a[:k], *([_INF] * (k - len(a[:k])))]
        b = [*b[:k], *([_INF] * (k - len(b[:k])))]
        c: list[int] = []
        for i in range(k):
            u, v = a[i], b[k - 1 - i]
            c.append(v if u == _INF else u if v == _INF else self._node(True, u, v))
        if final:
            return c
        # -inf padding at the front keeps the sequence bitonic (rising, then falling).
        size = 1 << (k - 1).bit_length()
        wires = [*([_NEG_INF] * (size - k)), *c]
        stride = size // 2
        while stride >= 1:
            for start in range(0, size, 2 * stride):
                for i in range(start, start + stride):
                    self.compare(wires, i, i + stride)
            stride //= 2
        return wires[size - k :]

    def maximum(self, wires: list[int]) -> int:
        real = [w for w in wires if w >= 0]
        result = real[0]
        for w in real[1:]:
            result = self._node(False, result, w)
        return result

    def compile(self, result: int) -> _SelectionProgram:
        """Drop nodes the result does not depend on; assign reusable scratch buffers."""
        n = self.n_inputs
        needed = {result}
        for index in range(len(self.nodes) - 1, -1, -1):
            if n + index in needed:
                _, a, b = self.nodes[index]
                needed.update((a, b))
        live = [i for i in range(len(self.nodes)) if n + i in needed]
        last_use: dict[int, int] = {}
        for step, index in enumerate(live):
            _, a, b = self.nodes[index]
            last_use[a] = last_use[b] = step
        free: list[int] = []
        buffer_of: dict[int, int] = {}
        n_buffers = 0
        ops: list[tuple[bool, int, int, int]] = []
        for step, index in enumerate(live):
            is_min, a, b = self.nodes[index]
            operands = [n + buffer_of[x] if x >= n else x for x in (a, b)]
            # Operands used for the last time free their buffers first: an elementwise ufunc may
            # write into one of its own inputs.
            for x in {a, b}:
                if x >= n and last_use[x] == step and x != result:
                    free.append(buffer_of[x])
            if free:
                buffer = free.pop()
            else:
                buffer, n_buffers = n_buffers, n_buffers + 1
            buffer_of[n + index] = buffer
            ops.append((is_min, n + buffer, operands[0], operands[1]))
        out = n + buffer_of[result] if result >= n else result
        return _SelectionProgram(n, n_buffers, tuple(ops), out)


def _odd_even_merge(lo: int, hi: int, r: int) -> Iterator[tuple[int, int]]:
    step = r * 2
    if step < hi - lo:
        yield from _odd_even_merge(lo, hi, step)
        yield from _odd_even_merge(lo + r, hi, step)
        yield from ((i, i + r) for i in range(lo + r, hi - r, step))
    else:
        yield (lo, lo + r)


def _odd_even_merge_sort(lo: int, hi: int) -> Iterator[tuple[int, int]]:
    """Comparators (i, j) of Batcher's odd-even merge sort of wires lo..hi (inclusive, a power
    of two long)."""
    if hi - lo >= 1:
        mid = lo + (hi - lo) // 2
        yield from _odd_even_merge_sort(lo, mid)
        yield from _odd_even_merge_sort(mid + 1, hi)
        yield from _odd_even_merge(lo, hi, 1)


@functools.lru_cache(maxsize=64)
def _selection_program(n: int, k: int) -> _SelectionProgram:
    """Cheapest of a few network layouts for the k-th smallest of n planes (1 <= k <= n).

    Inputs are sorted in groups and the groups' k lowest merged, in a chain or as a binary tree
    (whichever needs fewer passes); only the maximum of the last merge is kept. Groups are
    sorted just before they are merged, so few scratch planes are alive at a time (they stay
    in cache). For n = 80, k = 12 this is 779 min/max passes over 17 scratch planes.
    """
    best: _SelectionProgram | None = None
    for group in (2, 4, 8, 16):
        for tree in (False, True):
            net = _NetworkBuilder(n)
            # (level, sorted run); a tree merges two runs of the same level, a chain merges
            # every new run into the first.
            stack: list[tuple[int, list[int]]] = []
            for start in range(0, n, group):
                run = net.sort(list(range(start, min(start + group, n))))
                level = 0
                while stack and (not tree or stack[-1][0] == level) and start + group < n:
                    _, previous = stack.pop()
                    run, level = net.merge_lowest(previous, run, k, final=False), level + 1
                stack.append((level, run))
            while len(stack) > 2:
                _, run = stack.pop()
                _, previous = stack.pop()
                stack.append((0, net.merge_lowest(previous, run, k, final=False)))
            if len(stack) == 1:
                result = stack[0][1][k - 1]
            else:
                lowest = net.merge_lowest(stack[0][1], stack[1][1], k, final=True)
                result = net.maximum(lowest)
            program = net.compile(result)
            if best is None or (len(program.ops), program.n_buffers) < (
                len(best.ops),
                best.n_buffers,
            ):
                best = program
    assert best is not None
    return best


def _run_selection(
    program: _SelectionProgram, planes: list[F32Array], scratch: F32Array
) -> F32Array:
    """Run ``program`` on equally long 1-D planes; ``scratch`` is (>= n_buffers, length)."""
    refs = [*planes, *scratch[: program.n_buffers]]
    for is_min, dst, a, b in program.ops:
        if is_min:
            np.minimum(refs[a], refs[b], out=refs[dst])
        else:
            np.maximum(refs[a], refs[b], out=refs[dst])
    return refs[program.result]


@dataclass(frozen=True)
class _Shifts:
    """Flat-layout geometry of a ws x ws window for padded row stride ``wp``."""

    shift: tuple[int, ...]  # per offset in tie-break order: dy * wp + dx
    pairs: tuple[tuple[int, int, int, float], ...]  # (s > 0, index of +o, index of -o, lambda*p)


@functools.lru_cache(maxsize=64)
def _shifts(ws: int, wp: int, lam: float) -> _Shifts:
    offsets, spatial = _window_offsets(ws)
    index = {o: n for n, o in enumerate(offsets)}
    pairs = []
    for n, (dy, dx) in enumerate(offsets):
        s = dy * wp + dx
        if s > 0:  # the "positive" half: dy > 0, or dy == 0 and dx > 0
            pairs.append((s, n, index[(-dy, -dx)], lam * spatial[n]))
    return _Shifts(tuple(dy * wp + dx for dy, dx in offsets), tuple(pairs))


class _Workspace:
    """Reusable buffers for strips of up to ``rows`` rows (see :func:`_ssn_mean`)."""

    def __init__(self, n_bands: int, rows: int, width: int, ws: int, k: int) -> None:
        r = ws // 2
        wp = width + 2 * r
        length = (rows - 1) * wp + width
        n_off = ws * ws - 1
        self.pad = np.empty((n_bands, rows + 2 * r, wp), np.float32)
        self.pair_dist = np.empty((n_off // 2, length + r * wp + r), np.float32)
        self.tmp = np.empty(length + r * wp + r, np.float32)
        self.scratch = np.empty((_selection_program(n_off, k).n_buffers, length), np.float32)
        self.masks = np.empty((n_off, length), np.bool_)
        self.count = np.empty(length, np.uint8)
        self.acc = np.empty((n_bands, rows * wp), np.float32)
        # Flat positions that are real pixels (the others are the 2r padding columns per row).
        self.valid = (np.arange(length) % wp) < width


_workspaces = threading.local()


def _workspace(n_bands: int, rows: int, width: int, ws: int, k: int) -> _Workspace:
    cache: dict[tuple[int, ...], _Workspace] | None = getattr(_workspaces, "cache", None)
    if cache is None:
        cache = _workspaces.cache = {}
    key = (n_bands, rows, width, ws, k)
    found = cache.get(key)
    if found is None:
        if len(cache) >= 4:  # a few shapes at a time; drop the rest rather than hoard memory
            cache.clear()
        found = cache[key] = _Workspace(*key)
    return found


# Rows per strip: bounds the work buffers (~13 MB per thread for 300-pixel rows at WS = 9,
# K = 12; a whole 220-row frame at once needs ~25 MB and measured ~15 % slower) and keeps the
# passes over them closer to the core; benchmarks/pipeline.py sweeps it.
_STRIP_ROWS = 110


SSNBackend = Literal["auto", "numpy", "numba"]


def _ssn_mean(
    x: F32Array,
    ws: int,
    k: int,
    lam: float,
    *,
    masks_out: BoolArray | None = None,
    backend: SSNBackend = "auto",
) -> F32Array:
    """Fast SSN mean of filtered planes x (B, H, W) float32 -> (B, H, W) float32.

    ``backend`` "auto" uses the numba kernel when numba is installed and compiles, else numpy;
    both are bit-identical to :func:`ssn_features_reference`. ``masks_out`` (n_offsets, H, W)
    bool, if given, receives the selected neighbours (offset n in :func:`_window_offsets`
    order); for tests.
    """
    if backend != "numpy":
        kernel = _numba_kernel()
        if kernel is not None:
            return _ssn_mean_numba(kernel, x, ws, k, lam, masks_out)
        if backend == "numba":
            raise RuntimeError("the numba SSN kernel is unavailable (numba not installed?)")
    return _ssn_mean_numpy(x, ws, k, lam, masks_out)


def _ssn_mean_numpy(
    x: F32Array, ws: int, k: int, lam: float, masks_out: BoolArray | None
) -> F32Array:
    """The numpy/OpenCV fast path, strip by strip (see the comment above ``_INF``)."""
    n_bands, h, w = x.shape
    r = ws // 2
    rows = min(h, _STRIP_ROWS)
    work = _workspace(n_bands, rows, w, ws, k)
    out = np.empty_like(x)
    for y0 in range(0, h, rows):
        y1 = min(h, y0 + rows)
        pad = work.pad[:, : y1 - y0 + 2 * r]
        _pad_rows(x, y0, y1, r, pad)
        masks = _ssn_strip(pad, y1 - y0, w, ws, k, lam, work, out[:, y0:y1])
        if masks_out is not None:
            _unflatten_masks(masks, y1 - y0, w, r, masks_out[:, y0:y1])
    return out


def _unflatten_masks(masks: BoolArray, hs: int, w: int, r: int, out: BoolArray) -> None:
    """(n_offsets, length) flat-layout masks -> ``out`` (n_offsets, hs, w)."""
    wp = w + 2 * r
    flat = np.zeros((masks.shape[0], hs * wp), np.bool_)
    flat[:, : masks.shape[1]] = masks
    out[...] = flat.reshape(-1, hs, wp)[:, :, :w]


# ---- Optional numba kernel ---------------------------------------------------------------------
#
# numba is not a dependency of the service; where it is installed, one fused kernel replaces the
# ~2,300 numpy passes per strip with loops over blocks of pixels that stay in L1/L2. It does the
# same float32 operations in the same order (no fastmath: no reassociation, no FMA contraction),
# so it is bit-identical to the numpy path; the tests run both. Per block of pixels it computes
# the 80 distances directly (no pair sharing: recomputing is cheaper than a 10 MB buffer), runs
# the same selection program, applies the tie rule and sums in offset order.

_NUMBA_BLOCK = 512  # pixels per block: (80 + 21) distance/scratch rows of 2 KB stay in L2


@functools.cache
def _numba_kernel() -> Callable[..., None] | None:
    """The compiled kernel, or None when numba is missing or fails (then numpy is used)."""
    if os.environ.get("MSCREEN_SSN_NUMBA", "1") == "0":
        return None
    try:
        import numba
    except ImportError:
        return None
    try:
        kernel = numba.njit(cache=True, nogil=True, fastmath=False, boundscheck=False)(
            _ssn_kernel_py
        )
        # Compile now (or load from numba's cache) so a failure falls back here, not mid-scan.
        x = np.zeros((1, 5, 5), np.float32)
        _ssn_mean_numba(kernel, x, 3, 2, 0.5, None)
    except Exception:  # numba raises many types; any failure just means "use numpy"
        logger.warning("numba is installed but the SSN kernel failed to compile", exc_info=True)
        return None
    return kernel


def _ssn_mean_numba(
    kernel: Callable[..., None],
    x: F32Array,
    ws: int,
    k: int,
    lam: float,
    masks_out: BoolArray | None,
) -> F32Array:
    n_bands, h, w = x.shape
    r = ws // 2
    wp = w + 2 * r
    pad = np.empty((n_bands, h + 2 * r, wp), np.float32)
    _pad_rows(x, 0, h, r, pad)
    length = (h - 1) * wp + w
    offsets, spatial = _window_offsets(ws)
    n_off = len(offsets)
    shifts = np.array([dy * wp + dx for dy, dx in offsets], np.int64)
    # The same float32 spatial terms the numpy path adds (float64 product, rounded once).
    terms = np.array([np.float32(lam * sp) for sp in spatial], np.float32)
    program = _selection_program(n_off, k)
    masks = np.zeros((n_off, length if masks_out is not None else 0), np.bool_)
    out = np.empty_like(x)
    kernel(
        pad.reshape(n_bands, -1),
        r * wp + r,
        length,
        w,
        wp,
        shifts,
        terms,
        k,
        _program_array(n_off, k),
        program.n_buffers,
        program.result,
        np.float32(1.0 / math.sqrt(n_bands)),
        np.float32(1.0 / (k + 1)),
        out,
        masks,
        _NUMBA_BLOCK,
    )
    if masks_out is not None:
        _unflatten_masks(masks, h, w, r, masks_out)
    return out


@functools.lru_cache(maxsize=64)
def _program_array(n: int, k: int) -> npt.NDArray[np.int64]:
    """``_selection_program(n, k).ops`` as an (n_ops, 4) int64 array: is_min, dst, a, b."""
    ops = _selection_program(n, k).ops
    array = np.array(ops, np.int64).reshape(len(ops), 4)
    array.flags.writeable = False
    return array


def _ssn_kernel_py(
    flat: F32Array,
    base: int,
    length: int,
    w: int,
    wp: int,
    shifts: npt.NDArray[np.int64],
    terms: F32Array,
    k: int,
    ops: npt.NDArray[np.int64],
    n_buffers: int,
    result: int,
    inv_sqrt_b: np.float32,
    scale: np.float32,
    out: F32Array,
    masks: BoolArray,
    block: int,
) -> None:
    """Fused SSN mean in the flat padded layout (compiled by numba; plain Python otherwise).

    Plain arrays and scalars rather than a config object: that is what numba compiles.

    flat (B, N) padded planes; pixel q (0 <= q < length) is at flat[:, base + q], row q // wp,
    column q % wp (columns >= w are padding and are skipped on output). Writes out (B, H, W) and,
    if masks has columns, masks (n_offsets, length).
    """
    # Inner loops run over 1-D contiguous row views: numba/LLVM vectorises those, not 2-D
    # indexing (measured 4x slower).
    n_bands = flat.shape[0]
    n_off = shifts.shape[0]
    n_ops = ops.shape[0]
    buf = np.empty((n_off + n_buffers, block), np.float32)
    sel = np.empty((n_off, block), np.bool_)
    count = np.empty(block, np.int64)
    total = np.empty(block, np.float32)
    for start in range(0, length, block):
        m = min(block, length - start)
        q0 = base + start
        # SSCD of every offset, band by band (the reference's order of float32 operations).
        for n in range(n_off):
            sh = shifts[n]
            row = buf[n, :m]
            here, there = flat[0, q0 : q0 + m], flat[0, q0 + sh : q0 + sh + m]
            for j in range(m):
                t = here[j] - there[j]
                row[j] = t * t
            for b in range(1, n_bands):
                here, there = flat[b, q0 : q0 + m], flat[b, q0 + sh : q0 + sh + m]
                for j in range(m):
                    t = here[j] - there[j]
                    row[j] = row[j] + t * t
            for j in range(m):
                row[j] = np.sqrt(row[j]) * inv_sqrt_b
            term = terms[n]
            for j in range(m):
                row[j] = row[j] + term
        # K-th smallest: the selection program, one op at a time over the block. (Fusing a
        # comparator's min and max into one loop measured slower: LLVM then gives up on
        # vectorising because of the four-way aliasing checks.)
        for o in range(n_ops):
            lhs, rhs, dst = buf[ops[o, 2], :m], buf[ops[o, 3], :m], buf[ops[o, 1], :m]
            if ops[o, 0] == 1:
                for j in range(m):
                    dst[j] = min(lhs[j], rhs[j])
            else:
                for j in range(m):
                    dst[j] = max(lhs[j], rhs[j])
        kth = buf[result, :m]
        count[:m] = 0
        for n in range(n_off):
            row, chosen = buf[n, :m], sel[n, :m]
            for j in range(m):
                chosen[j] = row[j] <= kth[j]
                count[j] += chosen[j]
        # Ties at the K-th distance: keep the tied offsets that come first in offset order.
        for j in range(m):
            if count[j] > k:
                less = 0
                for n in range(n_off):
                    if buf[n, j] < kth[j]:
                        less += 1
                room = k - less
                for n in range(n_off):
                    d = buf[n, j]
                    keep = d < kth[j] or (d == kth[j] and room > 0)
                    if d == kth[j] and keep:
                        room -= 1
                    sel[n, j] = keep
        if masks.shape[1] > 0:
            masks[:, start : start + m] = sel[:, :m]
        # Mean of the pixel and its K SSNs, summed in offset order.
        for b in range(n_bands):
            here = flat[b, q0 : q0 + m]
            for j in range(m):
                total[j] = here[j]
            for n in range(n_off):
                sh = shifts[n]
                there, chosen = flat[b, q0 + sh : q0 + sh + m], sel[n, :m]
                for j in range(m):
                    total[j] = total[j] + there[j] if chosen[j] else total[j]
            for j in range(m):
                q = start + j
                y = q // wp
                c = q - y * wp
                if c < w:
                    out[b, y, c] = total[j] * scale


def _pad_rows(x: F32Array, y0: int, y1: int, r: int, pad: F32Array) -> None:
    """Write rows y0 - r .. y1 + r - 1 of x (B, H, W), reflect-101 padded by r columns, into
    ``pad`` (B, y1 - y0 + 2r, W + 2r)."""
    h, w = x.shape[1:]
    if r < h and r < w:
        top, bottom = max(0, r - y0), max(0, y1 + r - h)
        src = x[:, max(0, y0 - r) : min(h, y1 + r)]
        for b in range(x.shape[0]):
            cv2.copyMakeBorder(src[b], top, bottom, r, r, _BORDER, dst=pad[b])
        return
    # Images smaller than the window: reflect-101 repeats with period 2 (n - 1).
    rows, cols = _reflect101(np.arange(y0 - r, y1 + r), h), _reflect101(np.arange(-r, w + r), w)
    pad[...] = x[:, rows[:, None], cols[None, :]]


def _reflect101(index: npt.NDArray[np.int_], n: int) -> npt.NDArray[np.int_]:
    """Map indices onto [0, n) mirrored without repeating the edge (OpenCV BORDER_REFLECT_101)."""
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    folded = np.abs(index) % period
    out: npt.NDArray[np.int_] = np.where(folded >= n, period - folded, folded)
    return out


def _pair_distance(
    flat: list[F32Array],
    base: int,
    length: int,
    s: int,
    spatial: float,
    out: F32Array,
    tmp: F32Array,
) -> F32Array:
    """SSCD of the pixel pairs (q, q + s), q = base - s .. base + length - 1, in the flat padded
    layout; same float32 operations in the same order as the reference. Returns a view of
    ``out`` (length + s,)."""
    span = length + s
    dist, tmp = out[:span], tmp[:span]
    lo, hi = base - s, base + length
    np.subtract(flat[0][lo:hi], flat[0][base : base + span], out=dist)
    np.multiply(dist, dist, out=dist)
    for b in range(1, len(flat)):
        np.subtract(flat[b][lo:hi], flat[b][base : base + span], out=tmp)
        np.multiply(tmp, tmp, out=tmp)
        np.add(dist, tmp, out=dist)
    np.sqrt(dist, out=dist)
    np.multiply(dist, np.float32(1.0 / math.sqrt(len(flat))), out=dist)
    if spatial != 0.0:  # adding +0.0 to a non-negative float changes nothing
        np.add(dist, np.float32(spatial), out=dist)
    return dist


def _ssn_strip(
    pad: F32Array,
    hs: int,
    w: int,
    ws: int,
    k: int,
    lam: float,
    work: _Workspace,
    out: F32Array,
) -> BoolArray:
    """SSN mean of one strip. ``pad`` (B, hs + 2r, w + 2r) is the padded strip; writes ``out``
    (B, hs, w) and returns the (n_offsets, length) selection masks in the flat layout."""
    n_bands = pad.shape[0]
    r = ws // 2
    wp = w + 2 * r
    base = r * wp + r  # flat index of pixel (0, 0)
    length = (hs - 1) * wp + w  # flat span from pixel (0, 0) to pixel (hs - 1, w - 1)
    flat = [pad[b].reshape(-1) for b in range(n_bands)]
    geometry = _shifts(ws, wp, lam)
    n_off = len(geometry.shift)

    # SSCD, once per offset pair {o, -o}: dist[q] = d(p, p + o) for p = base - s + q, so that
    # d(i, i + o) = dist[i + s] and d(i, i - o) = dist[i] for pixel i (flat index from base).
    # (Running the network's group sorts right after each group's pairs, while they are in
    # cache, measured ~5 % slower than this simple order.)
    dist_views: list[F32Array] = [work.tmp] * n_off
    for p, (s, n_pos, n_neg, spatial) in enumerate(geometry.pairs):
        dist = _pair_distance(flat, base, length, s, spatial, work.pair_dist[p], work.tmp)
        dist_views[n_pos], dist_views[n_neg] = dist[s:], dist[:length]
    kth = _run_selection(_selection_program(n_off, k), dist_views, work.scratch[:, :length])

    # Neighbours: distance <= the K-th smallest; where ties at that value give more than K,
    # keep the tied offsets that come first in offset order (as the reference does).
    masks = work.masks[:, :length]
    count = work.count[:length]
    count.fill(0)
    for n in range(n_off):
        np.less_equal(dist_views[n], kth, out=masks[n])
        np.add(count, masks[n].view(np.uint8), out=count)
    over = np.flatnonzero((count > k) & work.valid[:length])
    if over.size:
        d_over = np.stack([d[over] for d in dist_views])
        kth_over = kth[over]
        less = d_over < kth_over
        tied = d_over == kth_over
        room = k - np.count_nonzero(less, axis=0)
        masks[:, over] = less | (tied & (np.cumsum(tied, axis=0) <= room))

    # Mean of the pixel and its K SSNs, summed in offset order like the reference.
    scale = np.float32(1.0 / (k + 1))
    for b in range(n_bands):
        acc = work.acc[b, : hs * wp]
        total = acc[:length]
        np.copyto(total, flat[b][base : base + length])
        for n, s in enumerate(geometry.shift):
            cv2.accumulate(
                flat[b][base + s : base + s + length], total, mask=masks[n].view(np.uint8)
            )
        np.multiply(acc.reshape(hs, wp)[:, :w], scale, out=out[b])
    return masks


# --------------------------------------------------------------------------------------------
# The whole path
# --------------------------------------------------------------------------------------------


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
        or, for "channels", B = C. For excluded frames only ``qc`` and timings are filled.
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
    if focus < config.min_focus:
        flags = (*qc.flags, "out_of_focus")
        if config.exclude_out_of_focus:
            reason = f"focus score {focus:.1f} < {config.min_focus:g}"
            qc = QCReport(qc.mean_v, focus, True, flags, reason)
            timings["qc"] += _ms(t0)
            logger.debug("frame excluded: %s", reason)
            return PreparedImage(qc, None, None, None, None, timings)
        qc = QCReport(qc.mean_v, focus, False, flags, None)
    else:
        qc = QCReport(qc.mean_v, focus, qc.excluded, qc.flags, qc.reason)
    timings["qc"] += _ms(t0)

    t0 = time.perf_counter()
    mask = foreground_mask(norm, config)
    confluence = 100.0 * float(mask.mean())
    timings["mask"] = _ms(t0)

    t0 = time.perf_counter()
    planes = _channel_planes(frame8, config) if channels else _band_planes(norm, config)
    features = _ssn_planes(planes, config)
    timings["hsm"] = _ms(t0)

    return PreparedImage(qc, norm, mask, confluence, features, timings)
