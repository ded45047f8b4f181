"""Spatial-spectral neighbour (SSN) features: the weighted-mean filter and the SSN mean.

The SSCD, the K-nearest selection and the tie rule are defined in the :mod:`models.pipeline`
docstring. The implementations, all bit-identical to each other:

* :mod:`.reference`: the window geometry and tie order, and the plain vectorised SSN mean
  behind :func:`ssn_features_reference`, kept as an oracle;
* :mod:`.network`: the min/max selection network giving the K-th smallest distance per pixel;
* :mod:`.numpy_path`: the numpy + OpenCV fast path, strip by strip (the default);
* :mod:`.numba_kernel`: one fused kernel, used where the optional ``numba`` is installed.

:func:`_ssn_mean` chooses between the last two.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

from .._common import _BORDER, BoolArray, F32Array
from ..config import PipelineConfig
from .numba_kernel import _numba_kernel, _ssn_mean_numba
from .numpy_path import _ssn_mean_numpy
from .reference import _ssn_mean_reference

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
    bit on any input, which the float64 loop oracle (models/pipeline/oracle.py) cannot check.
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
