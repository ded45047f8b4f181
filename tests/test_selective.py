"""Selective calls (models.selective): the risk-controlled threshold on constructed cases with a
known answer, its guarantee on synthetic calibrated data, and the labels."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.selective import (
    CALL_NOTHING,
    clopper_pearson_upper,
    confidence,
    error_coverage_curve,
    minimum_calls,
    risk_controlled_threshold,
    selective_labels,
)


def _separable(n_right: int, n_wrong: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Wells whose confidence is above 0.9 are always right, below 0.9 always wrong."""
    rng = np.random.default_rng(seed)
    conf = np.r_[rng.uniform(0.905, 0.999, n_right), rng.uniform(0.55, 0.895, n_wrong)]
    high = rng.random(len(conf)) < 0.5
    p = np.where(high, conf, 1.0 - conf)
    right_label = np.where(p >= 0.5, "high", "low")
    wrong_label = np.where(p >= 0.5, "low", "high")
    labels = np.where(np.arange(len(conf)) < n_right, right_label, wrong_label)
    return p, labels


def _expected_n_min(alpha: float, delta: float) -> int:
    """The least n with 1 - delta ** (1 / n) <= alpha, by direct search."""
    n = 1
    while 1.0 - delta ** (1.0 / n) > alpha:
        n += 1
    return n


def test_clopper_pearson_zero_errors_matches_closed_form() -> None:
    n = np.array([1, 10, 114, 500])
    bound = clopper_pearson_upper(np.zeros(4), n, 0.1)
    np.testing.assert_allclose(bound, 1.0 - 0.1 ** (1.0 / n), rtol=1e-9)
    assert clopper_pearson_upper(np.array([3]), np.array([3]), 0.1)[0] == 1.0


@pytest.mark.parametrize(("alpha", "delta"), [(0.02, 0.1), (0.05, 0.1), (0.02, 0.05)])
def test_minimum_calls_is_the_least_n_with_bound_below_alpha(alpha: float, delta: float) -> None:
    n = minimum_calls(alpha, delta)
    assert n == _expected_n_min(alpha, delta)
    assert 1.0 - delta ** (1.0 / n) <= alpha < 1.0 - delta ** (1.0 / (n - 1))


def test_known_answer_threshold_is_smallest_confidence_above_0_9() -> None:
    alpha, delta = 0.02, 0.1
    n_min = _expected_n_min(alpha, delta)  # 114
    assert n_min == 114
    n_right = n_min + 20
    p, labels = _separable(n_right, 200 - n_right)
    chosen = risk_controlled_threshold(p, labels, alpha=alpha, delta=delta)
    conf = confidence(p)
    assert chosen.threshold == pytest.approx(conf[conf > 0.9].min())
    assert chosen.coverage_on_calibration == pytest.approx(n_right / 200)
    assert chosen.error_on_calibration == 0.0
    assert chosen.error_upper_bound == pytest.approx(1.0 - delta ** (1.0 / n_right))
    assert chosen.n_calibration == 200
    assert "1 errors" in chosen.reason  # the next candidate adds the first error


def test_exactly_n_min_right_wells_are_enough_and_one_fewer_is_not() -> None:
    alpha, delta = 0.02, 0.1
    n_min = _expected_n_min(alpha, delta)
    p, labels = _separable(n_min, 200 - n_min)
    chosen = risk_controlled_threshold(p, labels, alpha=alpha, delta=delta)
    assert chosen.coverage_on_calibration == pytest.approx(n_min / 200)
    assert not chosen.calls_nothing

    p, labels = _separable(n_min - 1, 200 - n_min + 1)
    chosen = risk_controlled_threshold(p, labels, alpha=alpha, delta=delta)
    assert chosen.calls_nothing
    assert chosen.threshold == CALL_NOTHING > 1.0
    assert chosen.coverage_on_calibration == 0.0
    assert math.isnan(chosen.error_on_calibration)
    assert "nothing can be called" in chosen.reason
    assert (selective_labels(p, chosen.threshold) == "uncertain").all()


def test_too_few_calibration_wells_calls_nothing_with_reason() -> None:
    p, labels = _separable(50, 0)
    chosen = risk_controlled_threshold(p, labels, alpha=0.02, delta=0.1)
    assert chosen.calls_nothing
    assert "needs at least 114 calls" in chosen.reason


def test_min_calls_moves_the_start_of_the_sequence() -> None:
    p, labels = _separable(134, 66)
    assert not risk_controlled_threshold(p, labels, alpha=0.02, min_calls=120).calls_nothing
    later = risk_controlled_threshold(p, labels, alpha=0.02, min_calls=150)
    assert later.calls_nothing  # the first candidate with >= 150 calls has 16 errors
    assert "16 errors in 150 calls" in later.reason
    assert "or min_calls" in risk_controlled_threshold(p, labels, alpha=0.02, min_calls=201).reason
    with pytest.raises(ValueError, match="min_calls"):
        risk_controlled_threshold(p, labels, alpha=0.02, min_calls=0)


def test_all_right_calls_everything() -> None:
    p, labels = _separable(300, 0)
    chosen = risk_controlled_threshold(p, labels, alpha=0.02, delta=0.1)
    assert chosen.coverage_on_calibration == 1.0
    assert chosen.threshold == pytest.approx(confidence(p).min())


def test_smaller_alpha_gives_a_stricter_threshold() -> None:
    rng = np.random.default_rng(3)
    p = rng.uniform(0.0, 1.0, 3000)
    labels = (rng.random(3000) < p).astype(int)  # calibrated: error at confidence c is 1 - c
    thresholds = [
        risk_controlled_threshold(p, labels, alpha=a, delta=0.1).threshold
        for a in (0.2, 0.1, 0.05, 0.02)
    ]
    assert thresholds == sorted(thresholds)
    assert len(set(thresholds)) == 4


def test_guarantee_holds_on_calibrated_data() -> None:
    """p ~ U(0, 1), label ~ Bernoulli(p): confidence is U(0.5, 1) and the true error among wells
    called at t is E[1 - c | c >= t] = (1 - t) / 2, so each repetition's risk is exact."""
    alpha, delta, n, reps = 0.1, 0.1, 1000, 200
    rng = np.random.default_rng(11)
    violations = 0
    naive_violations = 0
    coverages = []
    for _ in range(reps):
        p = rng.uniform(0.0, 1.0, n)
        labels = (rng.random(n) < p).astype(int)
        chosen = risk_controlled_threshold(p, labels, alpha=alpha, delta=delta)
        risk = (1.0 - chosen.threshold) / 2.0 if not chosen.calls_nothing else 0.0
        violations += risk > alpha
        coverages.append(2.0 * (1.0 - min(chosen.threshold, 1.0)))  # true coverage: P(c >= t)
        # the loosest threshold whose *empirical* calibration error is <= alpha: no guarantee
        naive = [
            t for t, _, e in error_coverage_curve(p, labels, np.sort(confidence(p))) if e <= alpha
        ]
        naive_violations += (1.0 - min(naive)) / 2.0 > alpha
    assert violations / reps <= delta
    assert float(np.mean(coverages)) > 0.1  # the best possible, at t = 1 - 2 alpha, is 0.4
    assert naive_violations / reps > delta  # the bound is what makes the difference


def test_selective_labels() -> None:
    p = np.array([0.99, 0.02, 0.6, 0.45, 0.5, 0.9])
    out = selective_labels(p, 0.9)
    assert list(out) == ["high", "low", "uncertain", "uncertain", "uncertain", "high"]
    assert list(selective_labels(p, 0.5)) == ["high", "low", "high", "low", "high", "high"]
    # Called low at decision 0.8, p = 0.7 is right with probability 0.3 only: not confident.
    assert list(selective_labels([0.7], 0.6, decision=0.8)) == ["uncertain"]
    assert list(selective_labels([0.7], 0.3, decision=0.8)) == ["low"]
    np.testing.assert_allclose(confidence([0.2, 0.5, 0.9]), [0.8, 0.5, 0.9])


def test_error_coverage_curve_rows() -> None:
    p = np.array([0.95, 0.05, 0.7, 0.4])
    labels = ["high", "low", "low", "low"]
    rows = error_coverage_curve(p, labels, [0.5, 0.8, 1.0])
    assert rows[0] == (0.5, 1.0, 0.25)
    assert rows[1] == (0.8, 0.5, 0.0)
    assert rows[2][1] == 0.0 and math.isnan(rows[2][2])


@pytest.mark.parametrize(
    ("p", "labels", "kwargs", "message"),
    [
        ([0.9], ["high"], {"alpha": 0.0}, "alpha"),
        ([0.9], ["high"], {"alpha": 1.0}, "alpha"),
        ([0.9], ["high"], {"alpha": 0.05, "delta": 0.0}, "delta"),
        ([0.9], ["high"], {"alpha": 0.05, "delta": 1.5}, "delta"),
        ([0.9, 0.1], ["high"], {"alpha": 0.05}, "2 probabilities but 1 labels"),
        ([0.9], ["medium"], {"alpha": 0.05}, "high"),
        ([0.9, 0.2], [1, 2], {"alpha": 0.05}, "0/1"),
        ([0.9, 0.2], ["high", 0], {"alpha": 0.05}, "0/1"),
        ([1.2], ["high"], {"alpha": 0.05}, r"\[0, 1\]"),
        ([], [], {"alpha": 0.05}, "no calibration wells"),
    ],
)
def test_bad_inputs_raise(p: list[float], labels: list[object], kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        risk_controlled_threshold(p, labels, **kwargs)


def test_curve_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="probabilities but"):
        error_coverage_curve([0.9, 0.1], ["high"], [0.5])
