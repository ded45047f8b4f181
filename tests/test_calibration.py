"""Calibration: fitting (temperature, isotonic, auto), ECE, serialisation, and the ONNX path."""

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from models.calibration import (
    IDENTITY,
    METADATA_KEY,
    Calibration,
    expected_calibration_error,
    fit_calibration,
    fit_isotonic,
    fit_temperature,
    negative_log_likelihood,
    reliability_table,
)
from models.inference import OnnxClassifier
from models.onnx_export import fixed_parity_input, write_calibration
from models.repository import ModelRepository
from tests.conftest import copy_bundled_v1

logger = logging.getLogger(__name__)

BUNDLED = (
    Path(__file__).resolve().parents[1] / "models" / "bundled" / "hscnn-sim" / "1" / "model.onnx"
)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _overconfident(n, scale=3.0, seed=0):
    """Labels ~ Bernoulli(sigmoid(z)); the 'model' reports sigmoid(scale * z): true T = scale."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.5, n)
    labels = (rng.random(n) < _sigmoid(z)).astype(np.int64)
    return _sigmoid(scale * z), labels


def test_temperature_recovers_a_known_overconfidence():
    p, y = _overconfident(20_000)
    calibration = fit_temperature(p, y)
    assert calibration.method == "temperature"
    assert calibration.temperature == pytest.approx(3.0, rel=0.05)
    before = expected_calibration_error(p, y)
    after = expected_calibration_error(calibration.apply(p), y)
    logger.info("T=%.3f ECE %.4f -> %.4f", calibration.temperature, before, after)
    assert before > 0.08
    assert after < 0.02
    assert negative_log_likelihood(calibration.apply(p), y) < negative_log_likelihood(p, y)


def test_temperature_is_safe_at_zero_and_one():
    p = np.array([0.0, 1.0, 0.0, 1.0, 0.5, 0.3])
    y = np.array([0, 1, 1, 0, 1, 0])
    calibration = fit_temperature(p, y)
    out = calibration.apply(p)
    assert np.all(np.isfinite(out))
    assert np.all((out >= 0) & (out <= 1))
    assert 0.05 <= calibration.temperature <= 20.0


def test_temperature_keeps_dtype_and_shape():
    calibration = Calibration(method="temperature", temperature=2.0)
    p = np.array([[0.1, 0.9]], dtype=np.float32)
    out = calibration.apply(p)
    assert out.dtype == np.float32 and out.shape == (1, 2)
    assert out[0, 0] == pytest.approx(_sigmoid(np.log(0.1 / 0.9) / 2.0), rel=1e-6)


def test_isotonic_fits_a_step_exactly_and_is_monotone():
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.8])
    y = np.array([0, 0, 0, 1, 1, 1])
    calibration = fit_isotonic(p, y)
    np.testing.assert_array_equal(calibration.apply(p), y.astype(np.float64))
    grid = np.linspace(0.0, 1.0, 1001)
    assert np.all(np.diff(calibration.apply(grid)) >= 0)


def test_isotonic_pools_violators_and_ties():
    # 0.4 -> 1 then 0.5 -> 0 violates monotonicity: pooled to 0.5 each. Ties at 0.9 average.
    p = np.array([0.1, 0.4, 0.5, 0.9, 0.9])
    y = np.array([0, 1, 0, 1, 0])
    calibration = fit_isotonic(p, y)
    np.testing.assert_allclose(calibration.apply(p), [0.0, 0.5, 0.5, 0.5, 0.5])
    rng = np.random.default_rng(3)
    q, labels = _overconfident(2_000, seed=3)
    noisy = fit_isotonic(q, labels)
    assert np.all(np.diff(noisy.apply(np.sort(rng.random(5_000)))) >= 0)
    assert np.all(np.diff(np.asarray(noisy.x)) > 0)


def test_auto_picks_temperature_for_a_temperature_distortion():
    p, y = _overconfident(5_000, seed=1)
    calibration = fit_calibration(p, y, method="auto")
    logger.info("auto: %s cv_nll=%s", calibration.method, dict(calibration.cv_nll))
    assert calibration.method == "temperature"
    assert set(calibration.cv_nll) == {"identity", "temperature", "isotonic"}
    assert calibration.cv_nll["temperature"] < calibration.cv_nll["isotonic"]
    assert calibration.cv_nll["temperature"] < calibration.cv_nll["identity"]


def test_auto_picks_isotonic_for_a_non_logistic_distortion():
    # The true probability is a step in the reported one: no temperature reproduces a step.
    rng = np.random.default_rng(2)
    p = rng.random(5_000)
    y = (rng.random(p.size) < np.where(p < 0.5, 0.2, 0.8)).astype(int)
    assert fit_calibration(p, y).method == "isotonic"


def test_round_trip_through_json():
    for calibration in (
        IDENTITY,
        Calibration(method="temperature", temperature=1.7, cv_nll={"temperature": 0.4}),
        fit_isotonic([0.1, 0.4, 0.5, 0.9], [0, 1, 0, 1]),
    ):
        again = Calibration.from_dict(json.loads(json.dumps(calibration.to_dict())))
        assert again == calibration


@pytest.mark.parametrize(
    "bad",
    [
        [],
        {"method": "platt"},
        {},
        {"method": "temperature"},
        {"method": "temperature", "temperature": 0.0},
        {"method": "temperature", "temperature": 100.0},
        {"method": "temperature", "temperature": "2"},
        {"method": "temperature", "temperature": True},
        {"method": "identity", "temperature": 2.0},
        {"method": "identity", "extra": 1},
        {"method": "isotonic", "x": [0.1, 0.2]},
        {"method": "isotonic", "x": [0.1, 0.2], "y": [0.5]},
        {"method": "isotonic", "x": [], "y": []},
        {"method": "isotonic", "x": [0.2, 0.1], "y": [0.1, 0.5]},
        {"method": "isotonic", "x": [0.1, 0.2], "y": [0.5, 0.1]},
        {"method": "isotonic", "x": [0.1, 1.2], "y": [0.1, 0.5]},
        {"method": "isotonic", "x": [0.1, "a"], "y": [0.1, 0.5]},
        {"method": "temperature", "temperature": 2.0, "x": [0.1], "y": [0.1]},
        {"method": "identity", "cv_nll": {"identity": "low"}},
    ],
)
def test_bad_dicts_are_refused(bad):
    with pytest.raises(ValueError):
        Calibration.from_dict(bad)


def test_ece_of_a_calibrated_sample_is_small_and_of_a_constant_is_its_gap():
    rng = np.random.default_rng(4)
    p = rng.random(200_000)
    y = (rng.random(p.size) < p).astype(int)
    assert expected_calibration_error(p, y) < 0.01
    constant = np.full(10_000, 0.9)
    half = np.tile([0, 1], 5_000)
    assert expected_calibration_error(constant, half) == pytest.approx(0.4)


def test_reliability_table_counts_every_sample_once():
    p = np.array([0.0, 0.05, 0.5, 0.99, 1.0])
    y = np.array([0, 0, 1, 1, 1])
    table = reliability_table(p, y, bins=10)
    assert len(table) == 10
    assert sum(b.count for b in table) == 5
    assert table[0].count == 2 and table[0].observed_frequency == 0.0
    assert table[9].count == 2 and table[9].mean_confidence == pytest.approx(0.995)
    assert table[3].count == 0 and table[3].mean_confidence is None


def test_inputs_are_validated():
    with pytest.raises(ValueError):
        fit_temperature([0.5, 1.5], [0, 1])
    with pytest.raises(ValueError):
        fit_isotonic([0.5, 0.4], [0, 2])
    with pytest.raises(ValueError):
        expected_calibration_error([0.5], [0, 1])
    with pytest.raises(ValueError):
        fit_calibration([0.5] * 5, [0, 1, 0, 1, 0])  # too few for 5 folds


# -- the ONNX path ---------------------------------------------------------------------------


def _bundled_batch(classifier, batch=3):
    _, bands, height, width = classifier.session.get_inputs()[0].shape
    return fixed_parity_input(bands, height, width, batch=batch, seed=7)


def test_a_model_without_the_key_scores_bit_identically(tmp_path):
    copy = tmp_path / "model.onnx"
    shutil.copyfile(BUNDLED, copy)
    original = OnnxClassifier(BUNDLED, providers="cpu")
    copied = OnnxClassifier(copy, providers="cpu")
    assert METADATA_KEY not in original.metadata
    assert original.calibration == IDENTITY
    features, mask = _bundled_batch(original)
    p0, m0 = original.predict(features, mask)
    p1, m1 = copied.predict(features, mask)
    raw, _ = original.predict(features, mask, calibrated=False)
    assert p0.tobytes() == p1.tobytes() == raw.tobytes()
    assert m0.tobytes() == m1.tobytes()


def test_a_written_calibration_is_applied_when_serving(tmp_path):
    before = BUNDLED.read_bytes()
    copy = tmp_path / "model.onnx"
    shutil.copyfile(BUNDLED, copy)
    calibration = Calibration(method="temperature", temperature=2.5)
    write_calibration(copy, calibration)
    assert BUNDLED.read_bytes() == before
    assert list(tmp_path.iterdir()) == [copy]  # no temp file left behind

    stored = {entry.key: entry.value for entry in onnx.load(str(copy)).metadata_props}
    assert Calibration.from_dict(json.loads(stored[METADATA_KEY])) == calibration
    assert "pipeline_config" in stored  # the other entries survive

    uncalibrated = OnnxClassifier(BUNDLED, providers="cpu")
    calibrated = OnnxClassifier(copy, providers="cpu")
    assert calibrated.calibration == calibration
    features, mask = _bundled_batch(uncalibrated)
    raw, raw_map = uncalibrated.predict(features, mask)
    served, served_map = calibrated.predict(features, mask)
    assert served.dtype == np.float32
    np.testing.assert_array_equal(served, calibration.apply(raw))
    np.testing.assert_array_equal(served_map, raw_map)  # the maps are not calibrated
    assert not np.array_equal(served, raw)

    write_calibration(copy, IDENTITY)  # identity removes the key again
    assert OnnxClassifier(copy, providers="cpu").predict(features, mask)[0].tobytes() == (
        raw.tobytes()
    )


@pytest.mark.parametrize("value", ["{not json", '{"method": "platt"}', '"temperature"'])
def test_a_malformed_key_is_a_value_error_naming_it(tmp_path, value):
    copy = tmp_path / "model.onnx"
    graph = onnx.load(str(BUNDLED))
    graph.metadata_props.append(onnx.StringStringEntryProto(key=METADATA_KEY, value=value))
    onnx.save(graph, str(copy))
    with pytest.raises(ValueError, match="'calibration'"):
        OnnxClassifier(copy, providers="cpu")


def test_the_repository_reports_a_malformed_calibration_as_a_broken_model(tmp_path):
    copy_bundled_v1(tmp_path)
    good = tmp_path / "hscnn-sim" / "1" / "model.onnx"
    shutil.copytree(good.parent, tmp_path / "hscnn-sim" / "2")
    write_calibration(good, Calibration(method="temperature", temperature=1.5))
    broken = tmp_path / "hscnn-sim" / "2" / "model.onnx"
    graph = onnx.load(str(broken))
    graph.metadata_props.append(
        onnx.StringStringEntryProto(key=METADATA_KEY, value='{"method": "temperature"}')
    )
    onnx.save(graph, str(broken))
    repository = ModelRepository(tmp_path)
    assert repository.problem(repository.get("hscnn-sim", 1)) is None
    problem = repository.problem(repository.get("hscnn-sim", 2))
    assert problem is not None and "cannot be loaded" in problem and "calibration" in problem
    assert str(tmp_path) not in problem
