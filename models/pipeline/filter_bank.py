"""The fixed filter bank that derives the HSM "spectral" bands from one grey image.

Each band is ``(filter(image in grey levels) - offset) / scale`` with fixed constants (no
per-image statistics). The filters, offsets and scales are part of
:data:`~models.pipeline.config.FEATURE_VERSION`. :mod:`.bands` applies them to a normalised image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from ._common import _BORDER, F32Array, _gauss


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
