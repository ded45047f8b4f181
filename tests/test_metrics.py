import numpy as np
import pytest

from training.metrics import binary_metrics, bootstrap_ci


def test_metrics_match_a_hand_computed_confusion_matrix():
    # TP=3, FN=1, TN=4, FP=2  (positive = high = 1)
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.7, 0.2, 0.1, 0.2, 0.3, 0.4, 0.6, 0.95])
    m = binary_metrics(y, p)
    assert (m.tp, m.fn, m.tn, m.fp) == (3, 1, 4, 2)
    assert m.accuracy == pytest.approx(7 / 10)  # (TP+TN)/(TP+TN+FP+FN), not the paper's /TP
    assert m.sensitivity == pytest.approx(3 / 4)
    assert m.specificity == pytest.approx(4 / 6)
    assert m.ppv == pytest.approx(3 / 5)
    assert m.npv == pytest.approx(4 / 5)
    assert m.f1 == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    # AUC by counting: pairs (pos, neg) with pos > neg, over 4*6 pairs
    pos, neg = p[y == 1], p[y == 0]
    expected_auc = np.mean([[1.0 if a > b else 0.5 if a == b else 0.0 for b in neg] for a in pos])
    assert m.auc == pytest.approx(expected_auc)


def test_auc_is_none_with_one_class():
    m = binary_metrics(np.ones(4), np.array([0.1, 0.6, 0.7, 0.9]))
    assert m.auc is None
    assert m.sensitivity == pytest.approx(0.75)


def test_bootstrap_interval_contains_point_estimate():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.clip(y * 0.6 + rng.normal(0.2, 0.25, 200), 0, 1)
    point = binary_metrics(y, p).accuracy
    low, high = bootstrap_ci(y, p, "accuracy", resamples=300)
    assert low <= point <= high
    assert 0 < high - low < 0.3
