"""The numpy + OpenCV fast path of the SSN mean (the default backend)."""

from __future__ import annotations

import functools
import math
import threading
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from .._common import _BORDER, BoolArray, F32Array
from .network import _run_selection, _selection_program
from .reference import _window_offsets

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
# masks + accumulation. numpy cannot fuse them; the optional numba kernel (numba_kernel.py) does.


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
    """Reusable buffers for strips of up to ``rows`` rows (see :func:`_ssn_mean_numpy`)."""

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


def _ssn_mean_numpy(
    x: F32Array, ws: int, k: int, lam: float, masks_out: BoolArray | None
) -> F32Array:
    """The numpy/OpenCV fast path, strip by strip (see the comment at the top of this module)."""
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
