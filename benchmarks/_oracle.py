"""Plain per-pixel loop oracles for the SSN step, for benchmarks/pipeline.py.

A copy of the float64 loop oracle in tests/test_pipeline.py (kept there so that the tests stand
on their own): the definition written out pixel by pixel, with no vectorisation to get wrong.
It is only here to be timed against the fast path and to sanity-check it on the same input.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

F64Array = npt.NDArray[np.float64]


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
    """SSN mean of (H, W, B) straight from the definition: per pixel, sort the window by SSCD
    and average the pixel with the top K. Ties: spatially closer first, then dy, then dx."""
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
