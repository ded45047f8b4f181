"""The HSM band cube of a frame: the filter bank on the normalised image, or one band per
acquired channel (``band_source="channels"``)."""

from __future__ import annotations

import numpy as np

from ._common import F32Array, U8Array
from .config import PipelineConfig
from .filter_bank import _BANDS
from .normalise import normalise
from .qc import _check_channel_frame


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
