"""OOD guard: descriptor shape and edge cases, fitting, threshold calibration, detection of
synthetic and simulated out-of-distribution fields, serialisation and its errors."""

import json
import math

import numpy as np
import pytest

from models.metrics import auc_score
from models.ood import (
    DESCRIPTOR_VERSION,
    METADATA_KEY,
    MIN_FIELDS,
    OodGuard,
    descriptor_length,
    descriptors,
    field_descriptor,
    fit_ood_guard,
)
from models.pipeline import PipelineConfig, prepare

PIPELINE = PipelineConfig(ws=1)  # no SSN step: the guard does not care, and it is fast
SHAPE = (220, 300)


def _blob_frame(rng: np.random.Generator, radius: float = 7.0, count: int = 40) -> np.ndarray:
    """A phase-contrast-like uint8 frame: dark blobs with bright rims on a grey background."""
    height, width = SHAPE
    image = np.full(SHAPE, 150.0) * (1.0 + rng.uniform(-0.1, 0.1))
    for _ in range(count):
        y, x = rng.uniform(0, height), rng.uniform(0, width)
        r = radius * rng.uniform(0.7, 1.3)
        y0, y1 = max(int(y - 3 * r), 0), min(int(y + 3 * r) + 1, height)
        x0, x1 = max(int(x - 3 * r), 0), min(int(x + 3 * r) + 1, width)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        d2 = ((yy - y) ** 2 + (xx - x) ** 2) / (r * r)
        image[y0:y1, x0:x1] += -60.0 * np.exp(-d2) + 35.0 * np.exp(-((np.sqrt(d2) - 1.2) ** 2) * 8)
    image += rng.normal(0.0, 3.0, SHAPE)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _blank_frame(rng: np.random.Generator) -> np.ndarray:
    level = 150.0 * (1.0 + rng.uniform(-0.1, 0.1))
    return np.clip(np.rint(level + rng.normal(0.0, 3.0, SHAPE)), 0, 255).astype(np.uint8)


def _noise_frame(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(40, 220, SHAPE, dtype=np.uint8)


def _prepared(frames: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    features, masks = [], []
    for frame in frames:
        p = prepare(frame, PIPELINE)
        assert not p.qc.excluded and p.features is not None and p.mask is not None
        features.append(p.features)
        masks.append(p.mask[None].astype(np.float32))
    return np.stack(features), np.stack(masks)


@pytest.fixture(scope="module")
def blob_data() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    return {
        "train": _prepared([_blob_frame(rng) for _ in range(80)]),
        "fresh": _prepared([_blob_frame(rng) for _ in range(40)]),
        "big": _prepared([_blob_frame(rng, radius=7.0 * 2.5, count=8) for _ in range(15)]),
        "blank": _prepared([_blank_frame(rng) for _ in range(15)]),
        "noise": _prepared([_noise_frame(rng) for _ in range(15)]),
    }


@pytest.fixture(scope="module")
def blob_guard(blob_data: dict[str, tuple[np.ndarray, np.ndarray]]) -> OodGuard:
    return fit_ood_guard(*blob_data["train"], quantile=0.99)


def _random_cubes(rng: np.random.Generator, n: int, bands: int = 2, size: int = 16):
    """Tiny cubes whose level, contrast and mask fraction vary from field to field."""
    level = rng.normal(0.0, 1.0, (n, bands, 1, 1))
    contrast = np.exp(rng.normal(0.0, 0.3, (n, bands, 1, 1)))
    features = (level + contrast * rng.standard_normal((n, bands, size, size))).astype(np.float32)
    fraction = rng.uniform(0.2, 0.8, (n, 1, 1, 1))
    masks = (rng.random((n, 1, size, size)) < fraction).astype(np.float32)
    return features, masks


# -- descriptor --------------------------------------------------------------------------------


@pytest.mark.parametrize(("bands", "height", "width"), [(1, 1, 1), (1, 7, 5), (6, 220, 300)])
def test_descriptor_has_a_fixed_finite_length(bands: int, height: int, width: int) -> None:
    rng = np.random.default_rng(1)
    cube = rng.standard_normal((bands, height, width)).astype(np.float32)
    for mask in (
        rng.random((height, width)) > 0.5,
        np.zeros((height, width), bool),
        np.ones((height, width), bool),
        np.full((1, height, width), 0.7, np.float32),
    ):
        d = field_descriptor(cube, mask)
        assert d.shape == (descriptor_length(bands),)
        assert d.dtype == np.float64
        assert np.all(np.isfinite(d))


def test_descriptor_bool_and_float_masks_agree() -> None:
    rng = np.random.default_rng(2)
    cube = rng.standard_normal((3, 20, 30)).astype(np.float32)
    mask = rng.random((20, 30)) > 0.4
    np.testing.assert_allclose(
        field_descriptor(cube, mask), field_descriptor(cube, mask.astype(np.float32))
    )


def test_descriptor_of_a_flat_field_is_finite() -> None:
    d = field_descriptor(np.zeros((4, 30, 40), np.float32), np.zeros((30, 40), bool))
    assert np.all(np.isfinite(d))


def test_descriptor_rejects_bad_input() -> None:
    cube = np.zeros((2, 10, 10), np.float32)
    with pytest.raises(ValueError, match="mask shape"):
        field_descriptor(cube, np.zeros((10, 11), bool))
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        field_descriptor(np.zeros((10, 10)), np.zeros((10, 10), bool))
    bad = cube.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        field_descriptor(bad, np.zeros((10, 10), bool))
    with pytest.raises(ValueError, match="do not match"):
        descriptors(np.zeros((3, 2, 10, 10)), np.zeros((3, 1, 10, 9)))
    assert descriptors(np.zeros((3, 2, 10, 10)), np.zeros((3, 10, 10))).shape == (
        3,
        descriptor_length(2),
    )


# -- detection ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["big", "blank", "noise"])
def test_guard_separates_out_of_distribution_fields(
    blob_data: dict[str, tuple[np.ndarray, np.ndarray]], blob_guard: OodGuard, kind: str
) -> None:
    fresh = blob_guard.score(descriptors(*blob_data["fresh"]))
    out = blob_guard.score(descriptors(*blob_data[kind]))
    y = np.r_[np.zeros(len(fresh)), np.ones(len(out))].astype(int)
    auc = auc_score(y, np.r_[fresh, out])
    assert auc is not None and auc >= 0.95, f"{kind}: AUROC {auc}"
    assert blob_guard.is_out(out).mean() >= 0.9
    assert blob_guard.is_out(fresh).mean() <= 0.1


def test_false_positive_rate_is_near_one_minus_quantile() -> None:
    rng = np.random.default_rng(3)
    guard = fit_ood_guard(*_random_cubes(rng, 400), quantile=0.9, seed=1)
    fresh = descriptors(*_random_cubes(rng, 2000))
    fpr = float(guard.is_out(guard.score(fresh)).mean())
    assert 0.05 <= fpr <= 0.16, fpr
    # In-sample distances are biased low: an in-sample threshold would flag more new fields.
    train_scores = guard.score(descriptors(*_random_cubes(np.random.default_rng(3), 400)))
    assert np.quantile(train_scores, 0.9) < guard.threshold


def test_simulated_plate_at_the_other_objective_is_out() -> None:
    from hardware.sim import SimulationConfig
    from training.imagesets.simulated import simulated_image_set

    def plate(seed: int, wells: list[str], objective: str):
        images = simulated_image_set(
            [f"OOD-TEST-{seed}"],
            sim=SimulationConfig(seed=seed, overexposure_rate=0.0),
            pipeline=PIPELINE,
            objective=objective,
            wells=wells,
            workers=1,
            progress=False,
        )
        return descriptors(images.features, images.masks), images

    rows = "ABCDEFGH"
    train_wells = [f"{r}{c}" for r in rows for c in (1, 4, 7)]  # 24 wells
    test_wells = [f"{r}{c}" for r in rows for c in (10,)]
    _, train = plate(11, train_wells, "40x")
    guard = fit_ood_guard(train.features, train.masks, quantile=0.99)
    fresh, _ = plate(12, test_wells, "40x")
    zoomed, _ = plate(12, test_wells, "100x")
    s_in, s_out = guard.score(fresh), guard.score(zoomed)
    y = np.r_[np.zeros(len(s_in)), np.ones(len(s_out))].astype(int)
    auc = auc_score(y, np.r_[s_in, s_out])
    assert auc is not None and auc >= 0.95, auc
    # 24 training fields for D = 66 give a loose threshold; ranking is what this size shows.
    assert guard.is_out(s_out).mean() >= 0.5


def test_all_false_mask_scores_finite(blob_guard: OodGuard) -> None:
    features, _ = _prepared([_blank_frame(np.random.default_rng(4))])
    score = blob_guard.score(field_descriptor(features[0], np.zeros(SHAPE, bool)))
    assert score.shape == () and math.isfinite(float(score))
    assert blob_guard.is_out(score)


# -- fitting and scoring API -------------------------------------------------------------------


def test_score_shapes_and_non_finite_rows(blob_guard: OodGuard) -> None:
    d = blob_guard.dimension
    rows = np.zeros((3, d))
    rows[1, 0] = np.nan
    scores = blob_guard.score(rows)
    assert scores.shape == (3,)
    assert np.isinf(scores[1]) and np.isfinite(scores[[0, 2]]).all()
    assert blob_guard.is_out(scores)[1]
    assert blob_guard.score(blob_guard.mean) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="D ="):
        blob_guard.score(np.zeros((2, d + 1)))


def test_fit_rejects_bad_input() -> None:
    rng = np.random.default_rng(5)
    features, masks = _random_cubes(rng, MIN_FIELDS)
    fit_ood_guard(features, masks)  # exactly enough
    with pytest.raises(ValueError, match=f">= {MIN_FIELDS}"):
        fit_ood_guard(features[:-1], masks[:-1])
    with pytest.raises(ValueError, match="do not match"):
        fit_ood_guard(features, masks[:-1])
    with pytest.raises(ValueError, match="quantile"):
        fit_ood_guard(features, masks, quantile=1.0)
    with pytest.raises(ValueError, match="holdout"):
        fit_ood_guard(features, masks, holdout=0.0)
    with pytest.raises(ValueError, match="groups"):
        fit_ood_guard(features, masks, groups=["a"] * MIN_FIELDS)


def test_fit_is_reproducible_and_fewer_fields_than_dimensions_work() -> None:
    rng = np.random.default_rng(6)
    features, masks = _random_cubes(rng, 25, bands=6)  # D = 66 > N = 25
    a = fit_ood_guard(features, masks, seed=2)
    b = fit_ood_guard(features, masks, seed=2)
    assert a.dimension == descriptor_length(6) > a.n_train == 25
    np.testing.assert_array_equal(a.precision, b.precision)
    assert a.threshold == b.threshold
    assert np.all(np.linalg.eigvalsh(a.precision) > 0)


def test_groups_keep_a_plate_in_one_fold() -> None:
    rng = np.random.default_rng(7)
    features, masks = _random_cubes(rng, 60)
    features[:30] += 0.5  # plate effect: the first plate is brighter
    pooled = fit_ood_guard(features, masks, quantile=0.9)
    grouped = fit_ood_guard(features, masks, quantile=0.9, groups=["p1"] * 30 + ["p2"] * 30)
    # Holding out a whole plate sees the plate effect, so the threshold is higher.
    assert grouped.threshold > pooled.threshold


# -- serialisation -----------------------------------------------------------------------------


def test_round_trip(blob_guard: OodGuard) -> None:
    text = json.dumps(blob_guard.to_dict())
    back = OodGuard.from_dict(json.loads(text))
    np.testing.assert_array_equal(back.mean, blob_guard.mean)
    np.testing.assert_array_equal(back.precision, blob_guard.precision)
    assert (back.threshold, back.quantile, back.n_train, back.version) == (
        blob_guard.threshold,
        blob_guard.quantile,
        blob_guard.n_train,
        DESCRIPTOR_VERSION,
    )
    assert back.shrinkage == blob_guard.shrinkage
    x = descriptors(*_random_cubes(np.random.default_rng(8), 3, bands=6, size=220))
    np.testing.assert_array_equal(back.score(x), blob_guard.score(x))
    assert METADATA_KEY == "ood"


def _mutated(guard: OodGuard, **changes: object) -> dict[str, object]:
    data = guard.to_dict()
    data.update(changes)
    return data


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": "ood-descriptor-0"}, "version"),
        ({"mean": [0.0, 1.0]}, "precision must be a 2 x 2"),
        ({"mean": "x"}, "mean must be a list"),
        ({"threshold": float("nan")}, "threshold must be finite"),
        ({"threshold": -1.0}, "threshold must be positive"),
        ({"threshold": True}, "threshold must be a number"),
        ({"quantile": 1.5}, "quantile"),
        ({"n_train": 2.5}, "n_train"),
        ({"shrinkage": 2.0}, "shrinkage"),
        ({"extra": 1}, "unknown"),
    ],
)
def test_from_dict_errors(blob_guard: OodGuard, change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OodGuard.from_dict(_mutated(blob_guard, **change))


def test_from_dict_rejects_non_finite_and_asymmetric_precision(blob_guard: OodGuard) -> None:
    data = blob_guard.to_dict()
    data["mean"][0] = float("inf")
    with pytest.raises(ValueError, match="mean contains NaN or infinity"):
        OodGuard.from_dict(data)
    data = blob_guard.to_dict()
    data["precision"][0][1] += 1.0
    with pytest.raises(ValueError, match="symmetric"):
        OodGuard.from_dict(data)
    data = blob_guard.to_dict()
    del data["precision"]
    with pytest.raises(ValueError, match="missing"):
        OodGuard.from_dict(data)
    with pytest.raises(ValueError, match="JSON object"):
        OodGuard.from_dict([1, 2])
