"""The SSCD window (offsets in tie-break order) and the plain vectorised SSN mean.

:func:`_ssn_mean_reference` is the first implementation, kept as an oracle: the fast paths
(:mod:`.numpy_path`, :mod:`.numba_kernel`) perform the same float32 operations in the same order
and must equal it bit for bit.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from .._common import F32Array


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
