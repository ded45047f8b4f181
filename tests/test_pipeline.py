"""Tests for models.pipeline: QC, normalisation, mask, bands, SSN features, config round trip.

Plain numpy/OpenCV only (no torch). The SSN and weighted-mean filters are checked against
per-pixel Python-loop oracles written here, independently of the vectorised implementation.
"""

from __future__ import annotations

import dataclasses
import json
import math

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from models import pipeline as pl
from models.pipeline import PipelineConfig

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


def _reflect101(i: int, n: int) -> int:
    """Index into [0, n) mirrored without repeating the edge (OpenCV BORDER_REFLECT_101)."""
    if n == 1:
        return 0
    while i < 0 or i >= n:
        i = -i if i < 0 else 2 * (n - 1) - i
    return i


def _wmf_oracle(cube: np.ndarray) -> np.ndarray:
    """3x3 binomial weighted mean, per pixel, float64."""
    h, w, _ = cube.shape
    k1 = [0.25, 0.5, 0.25]
    out = np.zeros(cube.shape, np.float64)
    for y in range(h):
        for x in range(w):
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    yy, xx = _reflect101(y + dy, h), _reflect101(x + dx, w)
                    out[y, x] += k1[dy + 1] * k1[dx + 1] * cube[yy, xx].astype(np.float64)
    return out


def _ssn_oracle(cube: np.ndarray, ws: int, k: int, lam: float) -> np.ndarray:
    """Straight from the definition: for each pixel sort the window by SSCD, average top K.

    Ties are broken as documented: spatially closer first, then raster order (dy, then dx).
    """
    x = _wmf_oracle(cube)
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
                    xj = x[_reflect101(y + dy, h), _reflect101(c + dx, w)]
                    spectral = float(np.sqrt(((x[y, c] - xj) ** 2).sum()) / math.sqrt(b))
                    d = spectral + lam * math.hypot(dy, dx) / corner
                    cands.append(((d, dy * dy + dx * dx, dy, dx), xj))
            cands.sort(key=lambda t: t[0])
            out[y, c] = (x[y, c] + sum(v for _, v in cands[:k])) / (k + 1)
    return out


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
    fn = pl._BANDS[name].fn
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
    np.testing.assert_allclose(pl.weighted_mean_filter(cube), _wmf_oracle(cube), atol=1e-5)


@pytest.mark.parametrize(
    ("ws", "k", "lam"),
    [(3, 2, 0.5), (3, 5, 0.0), (3, 8, 2.0), (5, 2, 0.5), (5, 6, 0.0), (5, 8, 1.0), (5, 16, 0.5)],
)
def test_ssn_features_match_loop_oracle(ws: int, k: int, lam: float) -> None:
    cube = np.random.default_rng(ws * 100 + k).standard_normal((12, 14, 3)).astype(np.float32)
    config = PipelineConfig(ws=ws, k=k, spatial_weight=lam)
    got = pl.ssn_features(cube, config)
    assert got.shape == cube.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, _ssn_oracle(cube, ws, k, lam), atol=1e-5)


@pytest.mark.parametrize(("ws", "k"), [(3, 3), (5, 6), (5, 13)])
def test_ssn_features_break_ties_as_documented(ws: int, k: int) -> None:
    # Small integers: the filtered values are exact multiples of 1/16 and with lambda = 0 many
    # SSCDs tie exactly (in float32 and float64 alike), so the tie-break decides the result.
    cube = np.random.default_rng(k).integers(0, 3, (12, 14, 2)).astype(np.float32)
    config = PipelineConfig(ws=ws, k=k, spatial_weight=0.0)
    got = pl.ssn_features(cube, config)
    np.testing.assert_allclose(got, _ssn_oracle(cube, ws, k, 0.0), atol=1e-6)


def test_ssn_features_ws1_returns_filtered_bands() -> None:
    cube = np.random.default_rng(5).standard_normal((12, 14, 3)).astype(np.float32)
    got = pl.ssn_features(cube, PipelineConfig(ws=1))
    np.testing.assert_allclose(got, _wmf_oracle(cube), atol=1e-5)
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


# ---------------------------------------------------------------------------------------------
# prepare
# ---------------------------------------------------------------------------------------------


def test_prepare_is_deterministic_and_shapes_are_right() -> None:
    frame = (_textured_frame(dtype=np.float64) * 16).astype(np.uint16)  # 12-bit data
    a = pl.prepare(frame, DEFAULT, bit_depth=12)
    b = pl.prepare(frame.copy(), DEFAULT, bit_depth=12)
    assert not a.qc.excluded and a.qc.flags == ()
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
