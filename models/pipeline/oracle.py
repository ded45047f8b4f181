"""Per-pixel Python-loop oracles of the weighted-mean filter and the SSN step.

The plain, slow reference that the fast kernels (:mod:`.ssn.numpy_path`, :mod:`.ssn.numba_kernel`)
are checked against, shared by tests/test_pipeline.py and benchmarks/pipeline.py. Nothing here is
vectorised, so there is nothing to get wrong in the same way as the implementation:

* :func:`wmf_oracle` and :func:`ssn_oracle` are the definitions (module docstring of
  :mod:`models.pipeline`) written out pixel by pixel in float64; the implementation agrees with
  them to float32 rounding (about 1e-5).
* :func:`ssn_oracle_f32` repeats the implementation's float32 arithmetic in its order, one pixel
  at a time, so the fast paths must select exactly its neighbours and equal it bit for bit.

Far too slow for real frames (a 24 x 32 crop at WS = 9 takes ~0.1 s); never used by
:func:`~models.pipeline.prepare`, and not imported by :mod:`models.pipeline`.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from .ssn import weighted_mean_filter

F64Array = npt.NDArray[np.float64]

__all__ = ["reflect101", "ssn_oracle", "ssn_oracle_f32", "wmf_oracle"]


def reflect101(i: int, n: int) -> int:
    """Index into [0, n) mirrored without repeating the edge (OpenCV BORDER_REFLECT_101)."""
    if n == 1:
        return 0
    while i < 0 or i >= n:
        i = -i if i < 0 else 2 * (n - 1) - i
    return i


def wmf_oracle(cube: np.ndarray) -> F64Array:
    """3 x 3 binomial weighted mean of (H, W, B), per pixel, float64."""
    h, w, _ = cube.shape
    k1 = [0.25, 0.5, 0.25]
    out = np.zeros(cube.shape, np.float64)
    for y in range(h):
        for x in range(w):
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    yy, xx = reflect101(y + dy, h), reflect101(x + dx, w)
                    out[y, x] += k1[dy + 1] * k1[dx + 1] * cube[yy, xx].astype(np.float64)
    return out


def ssn_oracle(cube: np.ndarray, ws: int, k: int, lam: float) -> F64Array:
    """SSN mean of (H, W, B) straight from the definition: for each pixel sort the window by
    SSCD and average the pixel with the top K, float64.

    Ties are broken as documented: spatially closer first, then raster order (dy, then dx).
    """
    x = wmf_oracle(cube)
    h, w, b = x.shape
    r = ws // 2
    corner = math.sqrt(2.0) * r
    out = np.zeros_like(x)
    for y in range(h):
        for c in range(w):
            cands = []
            for dy in range(-r, r + 1):
                for dx in range(-r, r + 1):
                    if dy == 0 and dx == 0:
                        continue
                    xj = x[reflect101(y + dy, h), reflect101(c + dx, w)]
                    spectral = float(np.sqrt(((x[y, c] - xj) ** 2).sum()) / math.sqrt(b))
                    d = spectral + lam * math.hypot(dy, dx) / corner
                    cands.append(((d, dy * dy + dx * dx, dy, dx), xj))
            cands.sort(key=lambda t: t[0])
            out[y, c] = (x[y, c] + sum(v for _, v in cands[:k])) / (k + 1)
    return out


def ssn_oracle_f32(
    cube: np.ndarray, ws: int, k: int, lam: float
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """Per-pixel loop doing the implementation's float32 arithmetic in its order.

    Starts from the implementation's filtered bands (:func:`weighted_mean_filter` has its own
    oracle, :func:`wmf_oracle`). Returns (features (H, W, B) float32, selected (n_offsets, H, W)
    bool), the offsets ordered as the tie rule ranks them: spatially closer first, then dy, then
    dx.
    """
    x = weighted_mean_filter(cube)
    h, w, b = x.shape
    r = ws // 2
    corner = math.sqrt(2.0) * r
    offsets = sorted(
        ((dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if (dy, dx) != (0, 0)),
        key=lambda o: (o[0] ** 2 + o[1] ** 2, o[0], o[1]),
    )
    inv_sqrt_b = np.float32(1.0 / math.sqrt(b))
    out = np.zeros_like(x)
    selected = np.zeros((len(offsets), h, w), bool)
    for y in range(h):
        for c in range(w):
            keys = []
            for n, (dy, dx) in enumerate(offsets):
                xj = x[reflect101(y + dy, h), reflect101(c + dx, w)]
                diff = x[y, c] - xj
                sq = diff * diff
                acc = sq[0]
                for band in range(1, b):
                    acc = np.float32(acc + sq[band])
                d = np.float32(np.sqrt(acc) * inv_sqrt_b)
                d = np.float32(d + np.float32(lam * math.hypot(dy, dx) / corner))
                keys.append((d, n))  # n is the tie rank: offsets are in tie-break order
            chosen = sorted(n for _, n in sorted(keys)[:k])
            total = x[y, c].copy()
            for n in chosen:  # summed in offset order, like the implementation
                dy, dx = offsets[n]
                total = total + x[reflect101(y + dy, h), reflect101(c + dx, w)]
                selected[n, y, c] = True
            out[y, c] = total * np.float32(1.0 / (k + 1))
    return out, selected
