import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from models.metrics import (
    auc_score,
    binary_metrics,
    bootstrap_intervals,
    delong,
    evaluate,
    mcnemar,
    predictive_values_at_prevalence,
    roc_points,
)

# TP=3, FN=1, TN=4, FP=2  (positive = high = 1)
Y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
P = np.array([0.9, 0.8, 0.7, 0.2, 0.1, 0.2, 0.3, 0.4, 0.6, 0.95])


def test_metrics_match_a_hand_computed_confusion_matrix():
    m = binary_metrics(Y, P)
    assert (m.tp, m.fn, m.tn, m.fp) == (3, 1, 4, 2)
    assert m.accuracy == pytest.approx(7 / 10)  # (TP+TN)/(TP+TN+FP+FN), not the paper's /TP
    assert m.sensitivity == pytest.approx(3 / 4)
    assert m.specificity == pytest.approx(4 / 6)
    assert m.ppv == pytest.approx(3 / 5)
    assert m.npv == pytest.approx(4 / 5)
    assert m.f1 == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    # AUC by counting the 4 x 6 (positive, negative) pairs; 0.2 vs 0.2 is a tie worth 1/2.
    pairs = [1.0 if a > b else 0.5 if a == b else 0.0 for a in P[Y == 1] for b in P[Y == 0]]
    assert m.auc == pytest.approx(np.mean(pairs))
    assert m.auc == pytest.approx(roc_auc_score(Y, P))


def test_auc_matches_scikit_learn_on_random_data_with_ties():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    p = np.round(np.clip(0.3 * y + rng.normal(0.4, 0.2, 300), 0, 1), 2)  # rounding -> ties
    assert auc_score(y, p) == pytest.approx(roc_auc_score(y, p))


def test_single_class_has_no_auc():
    m = binary_metrics(np.ones(4, dtype=int), np.array([0.1, 0.6, 0.7, 0.9]))
    assert m.auc is None
    assert m.sensitivity == pytest.approx(0.75)
    assert np.isnan(m.specificity)


def test_bad_labels_are_rejected():
    with pytest.raises(ValueError, match="0 \\(low\\) or 1"):
        binary_metrics(np.array([0, 2]), np.array([0.1, 0.2]))


def test_roc_points_run_from_origin_to_one_one():
    points = roc_points(Y, P)
    assert points[0]["fpr"] == 0 and points[0]["tpr"] == 0
    assert points[-1]["fpr"] == 1 and points[-1]["tpr"] == 1
    fpr = [p["fpr"] for p in points]
    tpr = [p["tpr"] for p in points]
    assert np.trapezoid(tpr, fpr) == pytest.approx(auc_score(Y, P))


def test_bootstrap_intervals_contain_the_point_estimates():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.clip(y * 0.6 + rng.normal(0.2, 0.25, 200), 0, 1)
    point = binary_metrics(y, p)
    intervals = bootstrap_intervals(y, p, resamples=400)
    for name, (low, high) in intervals.items():
        assert low <= getattr(point, name) <= high, name
        assert high - low < 0.3


def test_mcnemar_exact_p_value_by_hand():
    # A right / B wrong on 6 samples, the reverse on 1: p = 2 * P(X <= 1 | n=7, 1/2) = 16/128
    y = np.ones(10, dtype=int)
    a = np.array([1, 1, 1, 1, 1, 1, 0, 1, 1, 1])
    b = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
    result = mcnemar(y, a, b)
    assert (result.only_a_correct, result.only_b_correct) == (6, 1)
    assert result.p_value == pytest.approx(2 * (1 + 7) / 2**7)
    assert mcnemar(y, a, a).p_value == 1.0


def test_delong_on_identical_and_different_classifiers():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 400)
    good = y + rng.normal(0, 0.5, 400)
    noise = rng.normal(0, 1, 400)
    same = delong(y, good, good)
    assert same.difference == 0 and same.p_value == 1.0
    result = delong(y, good, noise)
    assert result.auc_a == pytest.approx(roc_auc_score(y, good))
    assert result.auc_b == pytest.approx(roc_auc_score(y, noise))
    assert result.p_value < 1e-6
    assert result.ci95[0] < result.difference < result.ci95[1]


def test_evaluate_is_json_ready():
    import json

    report = evaluate(Y, P, resamples=50)
    json.dumps(report, allow_nan=False)
    # Undefined metrics (one class only) travel as null, not NaN.
    single = evaluate(np.ones(4, dtype=int), np.array([0.2, 0.6, 0.7, 0.9]), resamples=50)
    json.dumps(single, allow_nan=False)
    assert single["metrics"]["specificity"] is None and single["metrics"]["auc"] is None
    assert report["metrics"]["accuracy"] == pytest.approx(0.7)
    assert set(report["ci95"]) == {
        "auc",
        "f1",
        "accuracy",
        "sensitivity",
        "specificity",
        "ppv",
        "npv",
    }


def test_predictive_values_at_prevalence_follow_bayes_rule() -> None:
    # At the sample's own prevalence they equal the measured PPV and NPV.
    y = np.array([1] * 90 + [0] * 10)
    calls = np.array([1] * 85 + [0] * 5 + [1] * 3 + [0] * 7)
    m = binary_metrics(y, calls)
    ppv, npv = predictive_values_at_prevalence(m.sensitivity, m.specificity, 0.9)
    assert ppv == pytest.approx(m.ppv) and npv == pytest.approx(m.npv)
    # 95 % sensitive and specific: at 50 % prevalence both are 0.95; at 90 % high, a "low" call
    # is right only 0.95*0.1 / (0.95*0.1 + 0.05*0.9) = 0.679 of the time.
    assert predictive_values_at_prevalence(0.95, 0.95, 0.5) == pytest.approx((0.95, 0.95))
    ppv, npv = predictive_values_at_prevalence(0.95, 0.95, 0.9)
    assert ppv == pytest.approx(0.855 / 0.86) and npv == pytest.approx(0.095 / 0.14)
    assert np.isnan(predictive_values_at_prevalence(0.0, 1.0, 0.5)[0])
    with pytest.raises(ValueError, match="prevalence"):
        predictive_values_at_prevalence(0.9, 0.9, 1.5)
