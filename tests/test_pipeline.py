"""Tests for models.pipeline: QC, normalisation, mask, bands, SSN features, config round trip.

Plain numpy/OpenCV only (no torch). The SSN and weighted-mean filters are checked against
the per-pixel Python-loop oracles of models/pipeline/oracle.py, independent of the vectorised
implementation: a float64 one straight from the definition, and a float32 one that repeats the
implementation's arithmetic so that the fast path must select exactly the same neighbours and
give the same bits.
The fast SSN path is also compared bit for bit with ``ssn_features_reference``, the first
vectorised implementation. Timings live in benchmarks/pipeline.py, not here.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from models import pipeline as pl
from models.pipeline import PipelineConfig
from models.pipeline.filter_bank import _BANDS
from models.pipeline.oracle import ssn_oracle, ssn_oracle_f32, wmf_oracle
from models.pipeline.ssn import _ssn_mean, network, numpy_path
from models.pipeline.ssn.numba_kernel import _numba_kernel

DEFAULT = PipelineConfig()


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _textured_frame(
    h: int = 528, w: int = 720, mean: float = 100.0, seed: int = 0, dtype: type = np.uint8
) -> np.ndarray:
    """Mid-grey frame with smooth texture (blurred noise), uint8."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((h, w)).astype(np.float32)
    tex = np.asarray(cv2.GaussianBlur(noise, (0, 0), 3.0), dtype=np.float32)
    tex = tex / tex.std()
    return np.clip(mean + 20.0 * tex, 0, 255).astype(dtype)


def _blob_image(seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """220 x 300 uint8 image: flat noisy background and textured discs; returns (image, truth)."""
    rng = np.random.default_rng(seed)
    h, w = 220, 300
    truth = np.zeros((h, w), np.uint8)
    for cy, cx, r in [(50, 60, 28), (150, 80, 35), (80, 200, 30), (170, 240, 25), (110, 140, 18)]:
        cv2.circle(truth, (cx, cy), r, 1, -1)
    img = 130.0 + rng.normal(0.0, 1.0, (h, w))
    texture = cv2.GaussianBlur(rng.standard_normal((h, w)), (0, 0), 1.0) * 60.0
    img = img + truth * (texture - 15.0)
    return np.clip(img, 0, 255).astype(np.uint8), truth.astype(bool)


# ---------------------------------------------------------------------------------------------
# to_uint8
# ---------------------------------------------------------------------------------------------


def test_to_uint8_8bit_is_identity() -> None:
    frame = np.arange(256, dtype=np.uint8).reshape(16, 16)
    out = pl.to_uint8(frame)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, frame)
    np.testing.assert_array_equal(pl.to_uint8(frame, bit_depth=8), frame)


@pytest.mark.parametrize(
    ("bit_depth", "values", "expected"),
    [
        (12, [0, 8, 9, 2048, 4094, 4095], [0, 0, 1, 128, 255, 255]),
        (16, [0, 128, 129, 257, 32768, 65535], [0, 0, 1, 1, 128, 255]),
        (None, [0, 257, 65535], [0, 1, 255]),  # uint16 defaults to 16 bits
        (8, [0, 17, 255], [0, 17, 255]),
    ],
)
def test_to_uint8_uint16_scales_by_bit_depth(
    bit_depth: int | None, values: list[int], expected: list[int]
) -> None:
    frame = np.array([values], dtype=np.uint16)
    out = pl.to_uint8(frame, bit_depth=bit_depth)
    assert out.dtype == np.uint8
    assert out.shape == frame.shape
    assert out.ravel().tolist() == expected


def test_to_uint8_float_and_multichannel() -> None:
    frame = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    assert pl.to_uint8(frame).ravel().tolist() == [0, 128, 255]
    rgb = np.full((4, 5, 3), 4095, np.uint16)
    out = pl.to_uint8(rgb, bit_depth=12)
    assert out.shape == (4, 5, 3)
    assert (out == 255).all()


@pytest.mark.parametrize(
    ("frame", "bit_depth", "match"),
    [
        (np.zeros(10, np.uint8), None, "shape"),
        (np.zeros((2, 2, 2, 2), np.uint8), None, "shape"),
        (np.zeros((0, 5), np.uint16), None, "empty"),
        (np.zeros((3, 3), bool), None, "dtype"),
        (np.zeros((3, 3), np.int32), None, "dtype"),
        (np.zeros((3, 3), np.uint16), 7, "bit_depth"),
        (np.zeros((3, 3), np.uint16), 17, "bit_depth"),
        (np.full((3, 3), 4096, np.uint16), 12, "above"),
        (np.zeros((3, 3), np.uint8), 12, "uint8"),
        (np.full((3, 3), 1.5, np.float32), None, r"\[0, 1\]"),
        (np.full((3, 3), -0.1, np.float64), None, r"\[0, 1\]"),
        (np.full((3, 3), np.nan, np.float32), None, "NaN"),
        (np.zeros((3, 3), np.float32), 12, "integer"),
    ],
)
def test_to_uint8_rejects_bad_input(frame: np.ndarray, bit_depth: int | None, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        pl.to_uint8(frame, bit_depth=bit_depth)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), bit_depth=st.integers(8, 16))
def test_to_uint8_is_monotonic_and_spans_range(data: st.DataObject, bit_depth: int) -> None:
    top = (1 << bit_depth) - 1
    values = data.draw(st.lists(st.integers(0, top), min_size=1, max_size=64))
    frame = np.array(sorted([0, *values, top]), dtype=np.uint16)[None, :]
    out = pl.to_uint8(frame, bit_depth=bit_depth).ravel().astype(int)
    assert (np.diff(out) >= 0).all()
    assert out[0] == 0 and out[-1] == 255


# ---------------------------------------------------------------------------------------------
# QC
# ---------------------------------------------------------------------------------------------


def test_qc_excludes_overexposed_only_above_240() -> None:
    over = pl.quality_check(np.full((50, 60), 241, np.uint8), DEFAULT)
    assert over.excluded
    assert over.flags == ("overexposed",)
    assert over.reason is not None and "241.0 > 240" in over.reason
    for value in (239, 240):
        ok = pl.quality_check(np.full((50, 60), value, np.uint8), DEFAULT)
        assert not ok.excluded
        assert ok.flags == () and ok.reason is None
        assert ok.mean_v == pytest.approx(value)


def test_qc_excludes_underexposed() -> None:
    qc = pl.quality_check(np.full((8, 8), 5, np.uint8), DEFAULT)
    assert qc.excluded and qc.flags == ("underexposed",)


def test_mean_v_uses_hsv_value_for_colour() -> None:
    bgr = np.zeros((10, 10, 3), np.uint8)
    bgr[..., 0] = 200  # blue
    bgr[..., 2] = 30
    assert pl.mean_v(bgr) == pytest.approx(200.0)  # V = max(B, G, R)
    assert pl.mean_v(bgr[..., :1]) == pytest.approx(200.0)  # (H, W, 1) is grey
    with pytest.raises(ValueError, match="uint8"):
        pl.mean_v(bgr.astype(np.uint16))


@settings(max_examples=60, deadline=None)
@given(
    frame=hnp.arrays(np.uint8, hnp.array_shapes(min_dims=2, max_dims=2, max_side=20)),
    max_v=st.floats(1.0, 255.0),
)
def test_qc_excluded_iff_mean_above_max(frame: np.ndarray, max_v: float) -> None:
    config = PipelineConfig(max_mean_v=max_v, min_mean_v=0.0)
    qc = pl.quality_check(frame, config)
    assert qc.mean_v == pytest.approx(float(frame.mean()))
    assert qc.excluded == (qc.mean_v > max_v)
    assert (qc.reason is not None) == qc.excluded


@settings(max_examples=40, deadline=None)
@given(
    frame=hnp.arrays(np.uint8, st.tuples(st.integers(1, 16), st.integers(1, 16), st.just(3))),
    max_v=st.floats(1.0, 255.0),
)
def test_qc_colour_excluded_iff_mean_hsv_value_above_max(frame: np.ndarray, max_v: float) -> None:
    config = PipelineConfig(max_mean_v=max_v, min_mean_v=0.0)
    qc = pl.quality_check(frame, config)
    assert qc.mean_v == pytest.approx(float(frame.max(axis=2).mean()))  # V = max(B, G, R)
    assert qc.excluded == (qc.mean_v > max_v)


# Small output so that the whole path runs in milliseconds per example.
SMALL = PipelineConfig(height=16, width=20)


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    bit_depth=st.integers(8, 16),
    shape=st.tuples(st.integers(1, 48), st.integers(1, 48)),
)
def test_prepare_excludes_iff_mean_v_out_of_range_and_shapes_are_right(
    data: st.DataObject, bit_depth: int, shape: tuple[int, int]
) -> None:
    top = (1 << bit_depth) - 1
    # Frames clustered around a random level, so that means near 240 (and 10) come up often.
    level = data.draw(st.integers(0, top))
    spread = data.draw(st.integers(0, max(1, top // 16)))
    lo, hi = max(0, level - spread), min(top, level + spread)
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    frame = data.draw(hnp.arrays(dtype, shape, elements=st.integers(lo, hi)))
    mean_8bit = float(pl.to_uint8(frame, bit_depth).mean())

    result = pl.prepare(frame, SMALL, bit_depth=bit_depth)

    assert result.qc.mean_v == pytest.approx(mean_8bit)
    assert result.qc.excluded == (mean_8bit > 240.0 or mean_8bit < 10.0)
    assert ("overexposed" in result.qc.flags) == (mean_8bit > 240.0)
    if result.qc.excluded:
        assert result.features is None and result.mask is None and result.normalised is None
        return
    assert result.normalised is not None and result.mask is not None
    assert result.features is not None
    assert result.normalised.shape == (16, 20) and result.normalised.dtype == np.uint8
    assert result.mask.shape == (16, 20) and result.mask.dtype == bool
    assert result.features.shape == (len(SMALL.bands), 16, 20)
    assert result.features.dtype == np.float32 and result.features.flags.c_contiguous
    assert np.isfinite(result.features).all()


# ---------------------------------------------------------------------------------------------
# normalise
# ---------------------------------------------------------------------------------------------


def test_normalise_shape_dtype_and_target_mean() -> None:
    frame = _textured_frame(mean=100.0)
    out = pl.normalise(frame, dataclasses.replace(DEFAULT, contrast="none"))
    assert out.shape == (220, 300)
    assert out.dtype == np.uint8
    assert abs(float(out.mean()) - 130.0) < 3.0
    for contrast in ("clahe", "equalize"):
        out = pl.normalise(frame, dataclasses.replace(DEFAULT, contrast=contrast))
        assert out.shape == (220, 300) and out.dtype == np.uint8
        assert out.std() > 0


def test_normalise_shrinks_without_aliasing() -> None:
    # A 1-pixel checkerboard is pure noise-frequency content; area averaging turns it into flat
    # grey, point-sampling interpolation would keep (aliased) 0/255 structure.
    yy, xx = np.mgrid[0:528, 0:720]
    board = np.where((yy + xx) % 2 == 0, 0, 255).astype(np.uint8)
    out = pl.normalise(board, dataclasses.replace(DEFAULT, contrast="none", median_ksize=1))
    assert out.std() < 10.0


def test_normalise_colour_uses_luma() -> None:
    grey = _textured_frame(100, 120)
    colour = np.repeat(grey[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(pl.normalise(colour, DEFAULT), pl.normalise(grey, DEFAULT))


@settings(max_examples=40, deadline=None)
@given(
    frame=hnp.arrays(
        np.uint8,
        st.tuples(st.integers(1, 400), st.integers(1, 400)),
        elements=st.integers(0, 255),
    ),
    height=st.integers(8, 120),
    width=st.integers(8, 160),
    contrast=st.sampled_from(["clahe", "equalize", "none"]),
)
def test_normalise_keeps_shape_and_dtype(
    frame: np.ndarray, height: int, width: int, contrast: str
) -> None:
    config = PipelineConfig(height=height, width=width, contrast=contrast)  # type: ignore[arg-type]
    out = pl.normalise(frame, config)
    assert out.shape == (height, width)
    assert out.dtype == np.uint8


@settings(max_examples=60, deadline=None)
@given(data=st.data(), shape=st.tuples(st.integers(2, 80), st.integers(2, 80)))
def test_normalise_brings_mean_v_to_130_without_contrast(
    data: st.DataObject, shape: tuple[int, int]
) -> None:
    # Output size either shrinks both ways (INTER_AREA averages: mean kept) or grows both ways
    # (INTER_LINEAR with replicated edges: mean kept up to rounding); a stretch that shrinks one
    # way only point-samples that way, which need not keep the mean of a noise frame.
    h0, w0 = shape
    if data.draw(st.booleans(), label="shrink"):
        height, width = data.draw(st.integers(1, h0)), data.draw(st.integers(1, w0))
    else:
        height, width = data.draw(st.integers(h0, 120)), data.draw(st.integers(w0, 160))
    frame = data.draw(hnp.arrays(np.uint8, shape, elements=st.integers(0, 255)))
    config = PipelineConfig(height=height, width=width, contrast="none", median_ksize=1)
    qc = pl.quality_check(frame, config)
    assume(not qc.excluded)

    out = pl.normalise(frame, config)

    if int(frame.max()) * 130.0 / qc.mean_v < 254.5:
        # Nothing saturates: only the gain table and the resize round (each <= 0.5 level).
        assert abs(float(out.mean()) - 130.0) <= 1.0
    else:
        # Saturated pixels stop at 255, so the mean can only fall short of the target.
        assert float(out.mean()) <= 131.0


# ---------------------------------------------------------------------------------------------
# mask / confluence
# ---------------------------------------------------------------------------------------------


def test_foreground_mask_finds_blobs() -> None:
    img, truth = _blob_image()
    norm = pl.normalise(img, DEFAULT)
    mask = pl.foreground_mask(norm, DEFAULT)
    assert mask.shape == (220, 300) and mask.dtype == bool
    true_pct = 100.0 * truth.mean()
    assert abs(100.0 * mask.mean() - true_pct) < 5.0
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou > 0.8
    # every disc centre is foreground, far background is not
    assert mask[150, 80] and mask[50, 60]
    assert not mask[5:15, 120:130].any()


def test_foreground_mask_hole_filling_is_size_limited() -> None:
    rng = np.random.default_rng(3)
    img = np.full((220, 300), 130, np.uint8)
    texture = np.clip(130 + rng.normal(0, 40, (220, 300)), 0, 255).astype(np.uint8)
    ring = np.zeros((220, 300), np.uint8)
    cv2.circle(ring, (70, 110), 40, 1, 12)  # small hole inside (radius ~34, ~3,600 px)
    cv2.circle(ring, (220, 110), 60, 1, -1)
    cv2.circle(ring, (220, 110), 12, 0, -1)  # tiny hole (~450 px)
    img[ring > 0] = texture[ring > 0]
    config = dataclasses.replace(DEFAULT, contrast="none")
    mask = pl.foreground_mask(img, config)
    assert mask[110, 220]  # tiny hole filled
    assert not mask[110, 70]  # big hole (> mask_max_hole_px) kept as background
    big = pl.foreground_mask(img, dataclasses.replace(config, mask_max_hole_px=10_000))
    assert big[110, 70]


def test_prepare_confluence_matches_mask() -> None:
    img, truth = _blob_image()
    prepared = pl.prepare(img, DEFAULT)
    assert prepared.mask is not None and prepared.confluence_pct is not None
    assert prepared.confluence_pct == pytest.approx(100.0 * prepared.mask.mean())
    assert abs(prepared.confluence_pct - 100.0 * truth.mean()) < 5.0


# ---------------------------------------------------------------------------------------------
# bands
# ---------------------------------------------------------------------------------------------


def test_band_stack_shapes_and_fixed_scaling() -> None:
    norm = pl.normalise(_textured_frame(), DEFAULT)
    config = PipelineConfig(bands=pl.BAND_NAMES)
    cube = pl.band_stack(norm, config)
    assert cube.shape == (220, 300, len(pl.BAND_NAMES))
    assert cube.dtype == np.float32 and cube.flags.c_contiguous
    assert np.isfinite(cube).all()
    np.testing.assert_allclose(cube[..., 0], (norm.astype(np.float32) - 128.0) / 32.0, atol=1e-6)
    # roughly unit scale: nothing explodes on a normal textured field
    assert np.abs(cube).max() < 20.0

    flat = pl.band_stack(np.full((30, 40), 128, np.uint8), config)
    expected_flat = {"gradient": -5.0 / 8.0, "log_2": 0.0, "halo_dog": 0.0, "intensity": 0.0}
    for name, value in expected_flat.items():
        np.testing.assert_allclose(flat[..., pl.BAND_NAMES.index(name)], value, atol=1e-4)


def test_band_stack_uses_no_per_image_statistics() -> None:
    # Changing pixels far away must not change the bands in the middle.
    a = pl.normalise(_textured_frame(seed=1), DEFAULT)
    b = a.copy()
    b[:, :60] = 255
    b[:, 240:] = 0
    ca, cb = pl.band_stack(a, DEFAULT), pl.band_stack(b, DEFAULT)
    np.testing.assert_array_equal(ca[:, 100:200], cb[:, 100:200])


@pytest.mark.parametrize("name", pl.BAND_NAMES)
def test_bands_do_not_depend_on_memory_alignment(name: str) -> None:
    # Some OpenCV SIMD kernels (e.g. cv2.magnitude) give alignment-dependent results; the same
    # image must give bit-identical features wherever its buffer happens to start.
    f = pl.normalise(_textured_frame(), DEFAULT).astype(np.float32)
    fn = _BANDS[name].fn
    ref = fn(f.copy())
    for offset in range(1, 16):
        buf = np.empty(f.size + 16, np.float32)
        view = buf[offset : offset + f.size].reshape(f.shape)
        view[...] = f
        np.testing.assert_array_equal(fn(view), ref)


def test_band_stack_rejects_non_uint8() -> None:
    with pytest.raises(ValueError, match="uint8"):
        pl.band_stack(np.zeros((10, 10), np.float32), DEFAULT)


# ---------------------------------------------------------------------------------------------
# SSN features
# ---------------------------------------------------------------------------------------------


def test_weighted_mean_filter_matches_oracle() -> None:
    cube = np.random.default_rng(0).standard_normal((12, 14, 3)).astype(np.float32)
    np.testing.assert_allclose(pl.weighted_mean_filter(cube), wmf_oracle(cube), atol=1e-5)


@pytest.mark.parametrize(
    ("ws", "k", "lam"),
    [(3, 2, 0.5), (3, 5, 0.0), (3, 8, 2.0), (5, 2, 0.5), (5, 6, 0.0), (5, 8, 1.0), (5, 16, 0.5)],
)
def test_ssn_features_match_loop_oracle(ws: int, k: int, lam: float) -> None:
    cube = np.random.default_rng(ws * 100 + k).standard_normal((12, 14, 3)).astype(np.float32)
    config = PipelineConfig(ws=ws, k=k, spatial_weight=lam)
    got = pl.ssn_features(cube, config)
    assert got.shape == cube.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, ssn_oracle(cube, ws, k, lam), atol=1e-5)


@pytest.mark.parametrize(("ws", "k"), [(3, 3), (5, 6), (5, 13)])
def test_ssn_features_break_ties_as_documented(ws: int, k: int) -> None:
    # Small integers: the filtered values are exact multiples of 1/16 and with lambda = 0 many
    # SSCDs tie exactly (in float32 and float64 alike), so the tie-break decides the result.
    cube = np.random.default_rng(k).integers(0, 3, (12, 14, 2)).astype(np.float32)
    config = PipelineConfig(ws=ws, k=k, spatial_weight=0.0)
    got = pl.ssn_features(cube, config)
    np.testing.assert_allclose(got, ssn_oracle(cube, ws, k, 0.0), atol=1e-6)


def test_ssn_features_ws1_returns_filtered_bands() -> None:
    cube = np.random.default_rng(5).standard_normal((12, 14, 3)).astype(np.float32)
    got = pl.ssn_features(cube, PipelineConfig(ws=1))
    np.testing.assert_allclose(got, wmf_oracle(cube), atol=1e-5)
    np.testing.assert_array_equal(got, pl.weighted_mean_filter(cube))


def test_ssn_features_are_edge_preserving_and_handle_ties() -> None:
    # A step edge plus a flat region (all spectral distances tie): SSN averaging must keep the
    # step sharper than a plain box mean of the same window, and be deterministic.
    step = np.zeros((20, 24, 2), np.float32)
    step[:, 12:] = 10.0
    config = PipelineConfig(ws=5, k=8)
    got = pl.ssn_features(step, config)
    box = cv2.blur(pl.weighted_mean_filter(step), (5, 5), borderType=cv2.BORDER_REFLECT_101)
    assert np.abs(got - step).mean() < 0.5 * np.abs(box - step).mean()
    np.testing.assert_array_equal(got, pl.ssn_features(step, config))
    np.testing.assert_allclose(got[:, :8], 0.0, atol=1e-6)  # flat region stays flat


def test_ssn_features_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="H, W, B"):
        pl.ssn_features(np.zeros((10, 10), np.float32), DEFAULT)
    with pytest.raises(ValueError, match="floating"):
        pl.ssn_features(np.zeros((10, 10, 2), np.uint8), DEFAULT)


# (ws, k, lambda, integer data). Integer data in 0..2 makes many SSCDs tie exactly, so the tie
# rule decides; continuous data checks the ordering itself. Includes the defaults (9, 12, 0.5).
_EXACT_CASES = [
    (3, 2, 0.5, False),
    (3, 8, 0.0, True),
    (5, 12, 0.5, False),
    (5, 12, 0.0, True),
    (7, 12, 0.5, True),
    (9, 12, 0.5, False),
    (9, 12, 0.5, True),
    (9, 12, 0.0, True),
    (9, 2, 1.0, False),
    (9, 16, 0.5, False),
    (11, 7, 0.5, True),
    (13, 12, 0.5, False),
    (13, 16, 0.0, True),
]


_HAVE_NUMBA = _numba_kernel() is not None
_BACKEND_NAMES: tuple[pl.SSNBackend, ...] = ("numpy", "numba") if _HAVE_NUMBA else ("numpy",)
# The numpy path in one strip and in several (11 rows = 4 + 4 + 3, a short last strip), and the
# optional numba kernel where numba is installed.
_BACKENDS = [
    pytest.param(("numpy", None), id="numpy"),
    pytest.param(("numpy", 4), id="numpy-strips"),
    pytest.param(
        ("numba", None),
        id="numba",
        marks=pytest.mark.skipif(not _HAVE_NUMBA, reason="numba kernel unavailable"),
    ),
]


@pytest.mark.parametrize(("ws", "k", "lam", "integer"), _EXACT_CASES)
@pytest.mark.parametrize("backend", _BACKENDS)
def test_ssn_fast_path_selects_exactly_the_oracle_neighbours(
    ws: int,
    k: int,
    lam: float,
    integer: bool,
    backend: tuple[pl.SSNBackend, int | None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name, strip_rows = backend
    if strip_rows is not None:
        monkeypatch.setattr(numpy_path, "_STRIP_ROWS", strip_rows)
    rng = np.random.default_rng(1000 * ws + 10 * k + integer)
    if integer:
        cube = rng.integers(0, 3, (11, 13, 3)).astype(np.float32)
    else:
        cube = rng.standard_normal((11, 13, 3)).astype(np.float32)
    want, want_selected = ssn_oracle_f32(cube, ws, k, lam)

    planes = np.ascontiguousarray(pl.weighted_mean_filter(cube).transpose(2, 0, 1))
    selected = np.zeros_like(want_selected)
    got = _ssn_mean(planes, ws, k, lam, masks_out=selected, backend=name)

    np.testing.assert_array_equal(selected, want_selected)
    assert (selected.sum(axis=0) == k).all()
    np.testing.assert_array_equal(got.transpose(1, 2, 0), want)
    config = PipelineConfig(ws=ws, k=k, spatial_weight=lam)
    np.testing.assert_array_equal(pl.ssn_features(cube, config), want)
    np.testing.assert_array_equal(pl.ssn_features_reference(cube, config), want)


@pytest.mark.parametrize("backend", _BACKENDS)
def test_ssn_fast_path_handles_images_smaller_than_the_window(
    backend: tuple[pl.SSNBackend, int | None],
) -> None:
    # r = 6 >= H and W: the padding falls back from OpenCV to numpy's periodic reflection.
    cube = np.random.default_rng(7).integers(0, 3, (4, 5, 2)).astype(np.float32)
    want, _ = ssn_oracle_f32(cube, 13, 12, 0.5)
    planes = np.ascontiguousarray(pl.weighted_mean_filter(cube).transpose(2, 0, 1))
    got = _ssn_mean(planes, 13, 12, 0.5, backend=backend[0])
    np.testing.assert_array_equal(got.transpose(1, 2, 0), want)


def test_ssn_backend_choice() -> None:
    x = np.zeros((1, 6, 7), np.float32)
    if _HAVE_NUMBA:
        np.testing.assert_array_equal(
            _ssn_mean(x, 3, 2, 0.5, backend="numba"), _ssn_mean(x, 3, 2, 0.5, backend="numpy")
        )
    else:
        with pytest.raises(RuntimeError, match="numba"):
            _ssn_mean(x, 3, 2, 0.5, backend="numba")


@settings(max_examples=60, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 20), st.integers(1, 20), st.integers(1, 6)),
    ws=st.sampled_from([3, 5, 7, 9, 11, 13]),
    data=st.data(),
    lam=st.sampled_from([0.0, 0.5, 2.0]),
    integer=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_ssn_fast_path_is_bit_identical_to_reference(
    shape: tuple[int, int, int],
    ws: int,
    data: st.DataObject,
    lam: float,
    integer: bool,
    seed: int,
) -> None:
    k = data.draw(st.integers(2, min(16, ws * ws - 1)), label="k")
    rng = np.random.default_rng(seed)
    if integer:
        cube = rng.integers(0, 3, shape).astype(np.float32)
    else:
        cube = rng.standard_normal(shape).astype(np.float32)
    config = PipelineConfig(ws=ws, k=k, spatial_weight=lam)
    reference = pl.ssn_features_reference(cube, config)
    planes = np.ascontiguousarray(pl.weighted_mean_filter(cube).transpose(2, 0, 1))
    for backend in _BACKEND_NAMES:
        fast = _ssn_mean(planes, ws, k, lam, backend=backend).transpose(1, 2, 0)
        np.testing.assert_array_equal(fast.view(np.uint32), reference.view(np.uint32))
    np.testing.assert_array_equal(pl.ssn_features(cube, config), reference)


def test_ssn_fast_path_is_bit_identical_to_reference_on_real_frames() -> None:
    frame = (_textured_frame(dtype=np.float64) * 16).astype(np.uint16)
    bands = pl.band_stack(pl.normalise(pl.to_uint8(frame, 12), DEFAULT), DEFAULT)
    planes = np.ascontiguousarray(pl.weighted_mean_filter(bands).transpose(2, 0, 1))
    for config in (DEFAULT, dataclasses.replace(DEFAULT, ws=13, k=16, spatial_weight=0.0)):
        reference = pl.ssn_features_reference(bands, config).transpose(2, 0, 1)
        for backend in _BACKEND_NAMES:
            lam = config.spatial_weight
            fast = _ssn_mean(planes, config.ws, config.k, lam, backend=backend)
            np.testing.assert_array_equal(fast.view(np.uint32), reference.view(np.uint32))


@settings(max_examples=40, deadline=None)
@given(data=st.data(), n=st.integers(2, 168))
def test_selection_network_gives_the_kth_smallest(data: st.DataObject, n: int) -> None:
    k = data.draw(st.integers(1, min(n, 16)), label="k")
    length = 7
    values = data.draw(
        hnp.arrays(np.float32, (n, length), elements=st.integers(0, 4).map(float)), label="v"
    )
    program = network._selection_program(n, k)
    scratch = np.empty((program.n_buffers, length), np.float32)
    got = network._run_selection(program, list(values), scratch)
    np.testing.assert_array_equal(got, np.partition(values, k - 1, axis=0)[k - 1])


def test_ssn_features_are_thread_safe() -> None:
    # Work buffers are reused per thread; concurrent calls must not share them.
    rng = np.random.default_rng(11)
    cubes = [rng.standard_normal((40 + i, 50, 3)).astype(np.float32) for i in range(4)]
    want = [pl.ssn_features_reference(c, DEFAULT) for c in cubes]
    got: list[list[np.ndarray]] = [[] for _ in cubes]

    def work(i: int) -> None:
        for _ in range(3):
            got[i].append(pl.ssn_features(cubes[i], DEFAULT))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(cubes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, results in enumerate(got):
        assert len(results) == 3
        for result in results:
            np.testing.assert_array_equal(result, want[i])


# ---------------------------------------------------------------------------------------------
# prepare
# ---------------------------------------------------------------------------------------------


def test_prepare_is_deterministic_and_shapes_are_right() -> None:
    frame = (_textured_frame(dtype=np.float64) * 16).astype(np.uint16)  # 12-bit data
    a = pl.prepare(frame, DEFAULT, bit_depth=12)
    b = pl.prepare(frame.copy(), DEFAULT, bit_depth=12)
    # The texture is noise blurred by 3 px: no fine detail, which the focus ratio flags.
    assert not a.qc.excluded and a.qc.flags == ("out_of_focus",)
    assert a.qc.reason is None and 0.0 <= a.qc.focus_ratio < DEFAULT.min_focus_ratio
    assert a.qc.focus_score > DEFAULT.min_focus
    assert a.features is not None and b.features is not None
    assert a.features.shape == (len(DEFAULT.bands), 220, 300)
    assert a.features.dtype == np.float32 and a.features.flags.c_contiguous
    assert np.isfinite(a.features).all()
    np.testing.assert_array_equal(a.features, b.features)
    assert a.normalised is not None and b.normalised is not None
    np.testing.assert_array_equal(a.normalised, b.normalised)
    assert set(a.timings_ms) == {"qc", "normalise", "mask", "hsm"}
    assert all(v >= 0.0 for v in a.timings_ms.values())
    # serving path == public building blocks
    bands = pl.band_stack(a.normalised, DEFAULT)
    np.testing.assert_array_equal(a.features, pl.ssn_features(bands, DEFAULT).transpose(2, 0, 1))


def test_prepare_excluded_frame_has_no_arrays() -> None:
    result = pl.prepare(np.full((100, 120), 65000, np.uint16), DEFAULT)
    assert result.qc.excluded and result.qc.flags == ("overexposed",)
    assert result.normalised is None and result.features is None and result.mask is None
    assert result.confluence_pct is None
    assert set(result.timings_ms) == {"qc"}


def test_prepare_flags_and_optionally_excludes_out_of_focus() -> None:
    flat = np.full((120, 160), 120, np.uint8)
    flagged = pl.prepare(flat, DEFAULT)
    assert not flagged.qc.excluded
    assert flagged.qc.flags == ("out_of_focus",)
    assert flagged.features is not None
    excluded = pl.prepare(flat, dataclasses.replace(DEFAULT, exclude_out_of_focus=True))
    assert excluded.qc.excluded and excluded.features is None
    assert excluded.qc.reason is not None and "focus" in excluded.qc.reason


def test_prepare_channels() -> None:
    grey = _textured_frame(110, 150)
    ref = pl.prepare(grey, DEFAULT)
    one = pl.prepare(grey[:, :, None], DEFAULT)
    colour = pl.prepare(np.repeat(grey[:, :, None], 3, axis=2), DEFAULT)
    assert ref.features is not None and one.features is not None and colour.features is not None
    np.testing.assert_array_equal(ref.features, one.features)
    np.testing.assert_array_equal(ref.features, colour.features)
    with pytest.raises(ValueError, match="BGR"):
        pl.prepare(np.zeros((20, 20, 4), np.uint8), DEFAULT)


# ---------------------------------------------------------------------------------------------
# bands from acquired channels (band_source="channels")
# ---------------------------------------------------------------------------------------------

CHANNELS = PipelineConfig(band_source="channels")
_INTENSITY_ONLY = dataclasses.replace(DEFAULT, bands=("intensity",))


def _channel_frame(c: int, h: int = 528, w: int = 720, seed: int = 20) -> np.ndarray:
    """(h, w, c) 12-bit uint16 frame: an independent textured field per channel, with different
    brightness per channel (like illumination wavelengths)."""
    planes = [
        _textured_frame(h, w, mean=70.0 + 25.0 * i, seed=seed + i, dtype=np.float64)
        for i in range(c)
    ]
    return (np.stack(planes, axis=2) * 16).astype(np.uint16)


@pytest.mark.parametrize("c", [2, 3, 4])
def test_prepare_channels_gives_one_band_per_channel_deterministically(c: int) -> None:
    frame = _channel_frame(c)
    config = dataclasses.replace(CHANNELS, channels=c)
    a = pl.prepare(frame, config, bit_depth=12)
    b = pl.prepare(frame.copy(), config, bit_depth=12)
    assert not a.qc.excluded
    assert a.features is not None and b.features is not None
    assert a.features.shape == (c, 220, 300)
    assert a.features.dtype == np.float32 and a.features.flags.c_contiguous
    assert np.isfinite(a.features).all()
    np.testing.assert_array_equal(a.features.view(np.uint32), b.features.view(np.uint32))
    assert set(a.timings_ms) == {"qc", "normalise", "mask", "hsm"}
    # Also without a configured count, and the public building blocks give the same bits.
    frame8 = pl.to_uint8(frame, 12)
    unpinned = pl.prepare(frame, CHANNELS, bit_depth=12)
    assert unpinned.features is not None
    np.testing.assert_array_equal(unpinned.features, a.features)
    bands = pl.channel_band_stack(frame8, config)
    assert bands.shape == (220, 300, c) and bands.flags.c_contiguous
    np.testing.assert_array_equal(a.features, pl.ssn_features(bands, config).transpose(2, 0, 1))
    np.testing.assert_array_equal(
        a.features, pl.ssn_features_reference(bands, config).transpose(2, 0, 1)
    )
    # QC, normalised image, mask and confluence come from the channel mean.
    assert a.qc.mean_v == pytest.approx(float(frame8.astype(np.float64).mean()))
    mean_image = np.floor(frame8.astype(np.float64).mean(axis=2) + 0.5).astype(np.uint8)
    assert a.normalised is not None and a.mask is not None
    np.testing.assert_array_equal(a.normalised, pl.normalise(mean_image, DEFAULT))
    np.testing.assert_array_equal(a.mask, pl.foreground_mask(a.normalised, config))
    assert a.confluence_pct == pytest.approx(100.0 * a.mask.mean())
    assert a.qc.focus_score == pytest.approx(pl.focus_score(a.normalised))


@pytest.mark.parametrize("c", [2, 3, 5])
def test_channel_bands_equal_the_intensity_band_of_each_channel_alone(c: int) -> None:
    frame8 = pl.to_uint8(_channel_frame(c, 300, 410, seed=c), 12)
    for config in (CHANNELS, dataclasses.replace(CHANNELS, contrast="equalize", height=90)):
        bands = pl.channel_band_stack(frame8, config)
        single = dataclasses.replace(config, band_source="filter_bank", bands=("intensity",))
        for i in range(c):
            alone = pl.band_stack(pl.normalise(frame8[:, :, i], single), single)
            np.testing.assert_array_equal(
                bands[..., i].view(np.uint32), alone[..., 0].view(np.uint32)
            )
        # Channels are independent: changing one leaves the other bands alone.
        other = frame8.copy()
        other[..., 0] = 255 - other[..., 0]
        changed = pl.channel_band_stack(other, config)
        np.testing.assert_array_equal(changed[..., 1:], bands[..., 1:])
        assert not np.array_equal(changed[..., 0], bands[..., 0])


def test_channels_mode_with_identical_channels_matches_the_grey_path() -> None:
    grey = _textured_frame(240, 330, seed=4)
    stacked = np.repeat(grey[:, :, None], 3, axis=2)
    ws1 = dataclasses.replace(CHANNELS, ws=1)
    got = pl.prepare(stacked, ws1)
    want = pl.prepare(grey, dataclasses.replace(_INTENSITY_ONLY, ws=1))
    assert got.qc == want.qc
    assert got.normalised is not None and want.normalised is not None
    np.testing.assert_array_equal(got.normalised, want.normalised)
    assert got.mask is not None and want.mask is not None
    np.testing.assert_array_equal(got.mask, want.mask)
    assert got.confluence_pct == want.confluence_pct
    assert got.features is not None and want.features is not None
    for i in range(3):  # without SSN each band is the grey frame's filtered intensity band
        np.testing.assert_array_equal(got.features[i], want.features[0])


def test_channels_mode_does_not_treat_three_channels_as_colour() -> None:
    frame = np.full((60, 80, 3), 100, np.uint8)
    frame[..., 0] = 255  # one saturated channel: HSV V would be 255 everywhere
    colour = pl.quality_check(frame, DEFAULT)
    assert colour.excluded and colour.mean_v == pytest.approx(255.0)
    qc = pl.quality_check(frame, CHANNELS)
    assert not qc.excluded  # mean over channels, not the brightest one
    assert qc.mean_v == pytest.approx((255.0 + 100.0 + 100.0) / 3.0)
    # Luma would weight B, G and R 0.114 / 0.587 / 0.299; the channel mean weights them equally.
    frame8 = pl.to_uint8(_channel_frame(3, 120, 160), 12)
    norm = pl.normalise(frame8, CHANNELS)
    mean_image = np.floor(frame8.astype(np.float64).mean(axis=2) + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(norm, pl.normalise(mean_image, DEFAULT))
    assert not np.array_equal(norm, pl.normalise(frame8, DEFAULT))


@settings(max_examples=40, deadline=None)
@given(
    frame=hnp.arrays(
        np.uint8, st.tuples(st.integers(1, 16), st.integers(1, 16), st.integers(2, 5))
    ),
    max_v=st.floats(1.0, 255.0),
)
def test_qc_channels_excluded_iff_mean_over_channels_above_max(
    frame: np.ndarray, max_v: float
) -> None:
    config = PipelineConfig(max_mean_v=max_v, min_mean_v=0.0, band_source="channels")
    qc = pl.quality_check(frame, config)
    assert qc.mean_v == pytest.approx(float(frame.astype(np.float64).mean()))
    assert qc.excluded == (qc.mean_v > max_v)
    result = pl.prepare(frame, dataclasses.replace(config, height=8, width=10))
    assert result.qc.excluded == qc.excluded
    assert (result.features is None) == qc.excluded
    if result.features is not None:
        assert result.features.shape == (frame.shape[2], 8, 10)


@pytest.mark.parametrize(("ws", "k", "lam"), [(3, 8, 0.0), (5, 12, 0.5), (9, 12, 0.5)])
@pytest.mark.parametrize("backend", _BACKENDS)
def test_channel_features_select_exactly_the_oracle_neighbours(
    ws: int,
    k: int,
    lam: float,
    backend: tuple[pl.SSNBackend, int | None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name, strip_rows = backend
    if strip_rows is not None:
        monkeypatch.setattr(numpy_path, "_STRIP_ROWS", strip_rows)
    frame = _channel_frame(4, 66, 78, seed=ws + k)
    config = PipelineConfig(
        band_source="channels", channels=4, height=11, width=13, ws=ws, k=k, spatial_weight=lam
    )
    cube = pl.channel_band_stack(pl.to_uint8(frame, 12), config)
    assert cube.shape == (11, 13, 4)
    want, want_selected = ssn_oracle_f32(cube, ws, k, lam)

    planes = np.ascontiguousarray(pl.weighted_mean_filter(cube).transpose(2, 0, 1))
    selected = np.zeros_like(want_selected)
    got = _ssn_mean(planes, ws, k, lam, masks_out=selected, backend=name)
    np.testing.assert_array_equal(selected, want_selected)
    np.testing.assert_array_equal(got.transpose(1, 2, 0), want)
    prepared = pl.prepare(frame, config, bit_depth=12)
    assert prepared.features is not None
    np.testing.assert_array_equal(prepared.features.transpose(1, 2, 0), want)
    np.testing.assert_allclose(want, ssn_oracle(cube, ws, k, lam), atol=1e-5)


def test_channels_rejections() -> None:
    with pytest.raises(ValueError, match=r"C >= 2.*got shape \(40, 50\)"):
        pl.prepare(np.zeros((40, 50), np.uint8), CHANNELS)
    with pytest.raises(ValueError, match="C >= 2"):
        pl.prepare(np.zeros((40, 50, 1), np.uint8), CHANNELS)
    pinned = dataclasses.replace(CHANNELS, channels=4)
    with pytest.raises(ValueError, match=r"3 channels but config\.channels is 4"):
        pl.prepare(np.full((40, 50, 3), 100, np.uint16), pinned, bit_depth=12)
    with pytest.raises(ValueError, match=r"5 channels but config\.channels is 4"):
        pl.channel_band_stack(np.zeros((40, 50, 5), np.uint8), pinned)
    with pytest.raises(ValueError, match=r"5 channels but config\.channels is 4"):
        pl.quality_check(np.zeros((40, 50, 5), np.uint8), pinned)
    with pytest.raises(ValueError, match="uint8"):
        pl.channel_band_stack(np.zeros((40, 50, 2), np.uint16), CHANNELS)
    with pytest.raises(ValueError, match="C >= 2"):
        pl.channel_band_stack(np.zeros((40, 50), np.uint8), CHANNELS)
    # The default (filter-bank) path still refuses several channels, and says what to use.
    with pytest.raises(ValueError, match="band_source='channels'"):
        pl.prepare(np.zeros((40, 50, 4), np.uint8), DEFAULT)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"band_source": "rgb"}, "band_source"),
        ({"channels": 4}, "band_source='channels' only"),
        ({"band_source": "channels", "channels": 1}, "channels must be >= 2"),
        ({"band_source": "channels", "channels": 2.5}, "channels must be an integer"),
        ({"band_source": "channels", "channels": True}, "channels must be an integer"),
    ],
)
def test_config_rejects_bad_channel_settings(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PipelineConfig(**kwargs)  # type: ignore[arg-type]


def test_channel_config_round_trips_and_old_dicts_still_load() -> None:
    config = PipelineConfig(band_source="channels", channels=np.int64(4), ws=5, k=8)  # type: ignore[arg-type]
    assert config.channels == 4 and type(config.channels) is int
    data = json.loads(json.dumps(config.to_dict()))
    assert data["band_source"] == "channels" and data["channels"] == 4
    assert PipelineConfig.from_dict(data) == config
    assert DEFAULT.to_dict()["band_source"] == "filter_bank"
    assert DEFAULT.to_dict()["channels"] is None
    # A config written before these keys existed (the bundled model's metadata): defaults.
    old = {k: v for k, v in DEFAULT.to_dict().items() if k not in ("band_source", "channels")}
    restored = PipelineConfig.from_dict(json.loads(json.dumps(old)))
    assert restored == DEFAULT and restored.band_source == "filter_bank"
    assert restored.channels is None
    # in_bands follows band_names: the filter bank, or one band per channel.
    assert DEFAULT.band_names() == DEFAULT.bands
    assert config.band_names() == ("channel_0", "channel_1", "channel_2", "channel_3")
    assert CHANNELS.band_names(n_channels=2) == ("channel_0", "channel_1")
    with pytest.raises(ValueError, match="n_channels"):
        CHANNELS.band_names()
    with pytest.raises(ValueError, match="expects 4"):
        config.band_names(n_channels=3)
    with pytest.raises(ValueError, match="C >= 2"):
        CHANNELS.band_names(n_channels=1)


def test_bundled_model_config_loads_as_the_default_filter_bank() -> None:
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(BUNDLED_MODEL), providers=["CPUExecutionProvider"])
    stored = json.loads(session.get_modelmeta().custom_metadata_map["pipeline_config"])
    assert "band_source" not in stored  # written before band_source existed
    config = PipelineConfig.from_dict(stored)
    assert config.band_source == "filter_bank" and config.channels is None
    assert pl.FEATURE_VERSION == "1"


BUNDLED_MODEL = Path(__file__).resolve().parents[1] / "models/bundled/hscnn-sim/1/model.onnx"


def test_serving_and_training_give_bit_identical_model_inputs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("onnxruntime")
    from app.classifier import WellClassifier
    from hardware.microscope import ScanPlan, StepScanner
    from hardware.sim import SimulatedMicroscope, SimulationConfig
    from models.inference import OnnxClassifier
    from training.imagesets import simulated_image_set

    sim = SimulationConfig()
    barcode, well = "PIPE-0001", "C4"
    model = OnnxClassifier(BUNDLED_MODEL, providers="cpu")

    # Training: the simulator's dataset builder, with the model card's pipeline config.
    training = simulated_image_set(
        [barcode], sim=sim, pipeline=model.pipeline_config, wells=[well], workers=1, progress=False
    )
    assert len(training) == 1 and training.excluded == 0

    # Serving: the scanner acquires the field, the classifier prepares it and calls the model.
    seen: dict[str, np.ndarray] = {}
    predict = model.predict

    def spy(features: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        seen["features"], seen["mask"] = features.copy(), mask.copy()
        return predict(features, mask)

    monkeypatch.setattr(model, "predict", spy)
    (acquired,) = StepScanner(SimulatedMicroscope(sim)).scan(ScanPlan(barcode, [well]))
    assert [f.bit_depth for f in acquired.fields] == [sim.bit_depth]  # travels with the field
    call = WellClassifier(model).classify(acquired.fields)

    assert call.fields_used == 1
    assert seen["features"].shape == training.features.shape
    np.testing.assert_array_equal(
        seen["features"].view(np.uint32), training.features.view(np.uint32)
    )
    np.testing.assert_array_equal(seen["mask"], training.masks)


# ---------------------------------------------------------------------------------------------
# PipelineConfig
# ---------------------------------------------------------------------------------------------


def test_config_round_trips_through_json() -> None:
    config = PipelineConfig(ws=5, k=8, bands=("intensity", "log_4"), contrast="equalize")
    data = json.loads(json.dumps(config.to_dict()))
    assert data["bands"] == ["intensity", "log_4"]
    restored = PipelineConfig.from_dict(data)
    assert restored == config
    assert isinstance(restored.bands, tuple)
    assert hash(restored) == hash(config)
    assert PipelineConfig.from_dict({}) == DEFAULT
    assert PipelineConfig.from_dict({"max_mean_v": 240}).max_mean_v == 240.0


def test_config_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="window"):
        PipelineConfig.from_dict({"window": 9})


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT.ws = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ws": 4}, "ws"),
        ({"ws": 15}, "ws"),
        ({"k": 1}, "k must"),
        ({"k": 17}, "k must"),
        ({"ws": 3, "k": 9}, "exceeds"),
        ({"height": 0}, "height"),
        ({"width": 2.5}, "width"),
        ({"bands": ("intensity", "colour")}, "unknown band"),
        ({"bands": ()}, "empty"),
        ({"bands": ("intensity", "intensity")}, "unique"),
        ({"contrast": "gamma"}, "contrast"),
        ({"median_ksize": 2}, "median_ksize"),
        ({"max_mean_v": 300.0}, "max_mean_v"),
        ({"min_mean_v": 250.0}, "min_mean_v"),
        ({"spatial_weight": -1.0}, "spatial_weight"),
        ({"spatial_weight": float("nan")}, "spatial_weight"),
        ({"exclude_out_of_focus": "yes"}, "exclude_out_of_focus"),
        ({"ws": True}, "ws"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PipelineConfig(**kwargs)  # type: ignore[arg-type]


def test_config_ws1_ignores_neighbour_limit() -> None:
    assert PipelineConfig(ws=1, k=16).k == 16
