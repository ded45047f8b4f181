"""The optional numba kernel of the SSN mean (bit-identical to the numpy path)."""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from .._common import BoolArray, F32Array
from .network import _selection_program
from .numpy_path import _pad_rows, _unflatten_masks
from .reference import _window_offsets

logger = logging.getLogger(__name__)

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
