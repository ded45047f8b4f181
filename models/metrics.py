"""Evaluation of binary calls against ground truth: the seven metrics, CIs, paired tests.

Numpy only (the service evaluates plates without scikit-learn or scipy). Positive class =
"high" functionality = 1. Formulas are the standard ones; note the reference paper's eq. (4)
prints Acc = (TP + TN) / TP, which is wrong: here Acc = (TP + TN) / (TP + TN + FP + FN).

- AUC: Mann-Whitney statistic (ties count one half), equal to the area under the ROC curve.
- CIs: 95 % percentile bootstrap over samples (wells), one resampling loop for all metrics.
- Paired comparison of two classifiers on the same wells: exact McNemar test on the
  discordant calls (accuracy), DeLong's test for correlated AUCs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

METRIC_NAMES = ("auc", "f1", "accuracy", "sensitivity", "specificity", "ppv", "npv")


@dataclass(frozen=True)
class BinaryMetrics:
    n: int
    tp: int
    tn: int
    fp: int
    fn: int
    accuracy: float  # (TP + TN) / (TP + TN + FP + FN)
    sensitivity: float  # TP / (TP + FN)
    specificity: float  # TN / (TN + FP)
    ppv: float  # TP / (TP + FP)
    npv: float  # TN / (TN + FN)
    f1: float  # 2 TP / (2 TP + FP + FN)
    auc: float | None  # None with a single class; needs scores, not just calls

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else float("nan")


def _as_labels(y_true: npt.ArrayLike) -> npt.NDArray[np.int64]:
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (low) or 1 (high)")
    return y.astype(np.int64)


def auc_score(y_true: npt.ArrayLike, score: npt.ArrayLike) -> float | None:
    """Area under the ROC curve (Mann-Whitney U / (n_pos n_neg)); None with one class."""
    y = _as_labels(y_true)
    s = np.asarray(score, dtype=np.float64)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = _midranks(s)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _midranks(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    return ranks


def binary_metrics(
    y_true: npt.ArrayLike, score: npt.ArrayLike, threshold: float = 0.5
) -> BinaryMetrics:
    """The seven metrics of calls ``score >= threshold`` against ``y_true``."""
    y = _as_labels(y_true)
    s = np.asarray(score, dtype=np.float64)
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in shape")
    call = s >= threshold
    tp = int(np.sum(call & (y == 1)))
    tn = int(np.sum(~call & (y == 0)))
    fp = int(np.sum(call & (y == 0)))
    fn = int(np.sum(~call & (y == 1)))
    return BinaryMetrics(
        n=len(y),
        tp=tp,
        tn=tn,
        fp=fp,
        fn=fn,
        accuracy=_ratio(tp + tn, tp + tn + fp + fn),
        sensitivity=_ratio(tp, tp + fn),
        specificity=_ratio(tn, tn + fp),
        ppv=_ratio(tp, tp + fp),
        npv=_ratio(tn, tn + fn),
        f1=_ratio(2 * tp, 2 * tp + fp + fn),
        auc=auc_score(y, s),
    )


def predictive_values_at_prevalence(
    sensitivity: float, specificity: float, prevalence: float
) -> tuple[float, float]:
    """(PPV, NPV) a classifier of this sensitivity and specificity has where a share
    ``prevalence`` of wells is "high" (Bayes' rule).

    PPV and NPV measured on a plate depend on that plate's share of high wells: simulated plates
    are about half high, while most expanded MSC lots pass the ISCT criterion, so a lab's
    plates may be 80-95 % high. Sensitivity and specificity do not depend on it, so the
    predictive values at the lab's prevalence follow from them.

    Returns NaN for a value whose denominator is 0 (e.g. PPV of a classifier that never calls
    "high" at prevalence 0).

    Raises:
        ValueError: an argument outside [0, 1] or not finite.
    """
    for name, value in (
        ("sensitivity", sensitivity),
        ("specificity", specificity),
        ("prevalence", prevalence),
    ):
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise ValueError(f"{name} must be within [0, 1], got {value}")
    true_pos = sensitivity * prevalence
    false_pos = (1.0 - specificity) * (1.0 - prevalence)
    true_neg = specificity * (1.0 - prevalence)
    false_neg = (1.0 - sensitivity) * prevalence
    ppv = true_pos / (true_pos + false_pos) if true_pos + false_pos > 0 else float("nan")
    npv = true_neg / (true_neg + false_neg) if true_neg + false_neg > 0 else float("nan")
    return ppv, npv


def roc_points(y_true: npt.ArrayLike, score: npt.ArrayLike) -> list[dict[str, float]]:
    """ROC curve as (fpr, tpr, threshold) points from (0, 0) to (1, 1)."""
    y = _as_labels(y_true)
    s = np.asarray(score, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    points = [{"fpr": 0.0, "tpr": 0.0, "threshold": float("inf")}]
    for threshold in np.unique(s)[::-1]:
        call = s >= threshold
        points.append(
            {
                "fpr": _ratio(int(np.sum(call & (y == 0))), n_neg),
                "tpr": _ratio(int(np.sum(call & (y == 1))), n_pos),
                "threshold": float(threshold),
            }
        )
    return points


def bootstrap_intervals(
    y_true: npt.ArrayLike,
    score: npt.ArrayLike,
    *,
    threshold: float = 0.5,
    resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile-bootstrap intervals of every metric in :data:`METRIC_NAMES`.

    Resamples where a metric is undefined (e.g. no positives drawn) are skipped for that metric.
    """
    y = _as_labels(y_true)
    s = np.asarray(score, dtype=np.float64)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {name: [] for name in METRIC_NAMES}
    for _ in range(resamples):
        index = rng.integers(0, len(y), len(y))
        metrics = binary_metrics(y[index], s[index], threshold)
        for name in METRIC_NAMES:
            value = getattr(metrics, name)
            if value is not None and not math.isnan(value):
                draws[name].append(value)
    tail = (1.0 - level) / 2.0 * 100.0
    intervals = {}
    for name, values in draws.items():
        if values:
            low, high = np.percentile(values, [tail, 100.0 - tail])
            intervals[name] = (float(low), float(high))
        else:
            intervals[name] = (float("nan"), float("nan"))
    return intervals


@dataclass(frozen=True)
class McNemarResult:
    only_a_correct: int  # b: A right, B wrong
    only_b_correct: int  # c: A wrong, B right
    p_value: float  # exact two-sided binomial test on b vs c


def mcnemar(y_true: npt.ArrayLike, call_a: npt.ArrayLike, call_b: npt.ArrayLike) -> McNemarResult:
    """Exact McNemar test: do two classifiers' accuracies differ on the same samples?"""
    y = _as_labels(y_true)
    a_right = np.asarray(call_a).astype(np.int64) == y
    b_right = np.asarray(call_b).astype(np.int64) == y
    b = int(np.sum(a_right & ~b_right))
    c = int(np.sum(~a_right & b_right))
    n = b + c
    if n == 0:
        return McNemarResult(b, c, 1.0)
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return McNemarResult(b, c, min(1.0, 2.0 * tail))


@dataclass(frozen=True)
class DeLongResult:
    auc_a: float
    auc_b: float
    difference: float  # auc_a - auc_b
    standard_error: float
    z: float
    p_value: float  # two-sided
    ci95: tuple[float, float]  # of the difference


def _normal_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def delong(y_true: npt.ArrayLike, score_a: npt.ArrayLike, score_b: npt.ArrayLike) -> DeLongResult:
    """DeLong et al. (1988) test for two correlated AUCs on the same samples."""
    y = _as_labels(y_true)
    scores = np.vstack([np.asarray(score_a, float), np.asarray(score_b, float)])
    positives, negatives = scores[:, y == 1], scores[:, y == 0]
    m, n = positives.shape[1], negatives.shape[1]
    if m < 2 or n < 2:
        raise ValueError("DeLong's test needs at least two samples of each class")
    # Structural components: V10[k, i] = mean_j psi(pos_i, neg_j); V01[k, j] = mean_i psi(...)
    psi = (positives[:, :, None] > negatives[:, None, :]) + 0.5 * (
        positives[:, :, None] == negatives[:, None, :]
    )
    v10 = psi.mean(axis=2)
    v01 = psi.mean(axis=1)
    aucs = v10.mean(axis=1)
    s10 = np.atleast_2d(np.cov(v10))
    s01 = np.atleast_2d(np.cov(v01))
    covariance = s10 / m + s01 / n
    variance = float(covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1])
    difference = float(aucs[0] - aucs[1])
    se = math.sqrt(max(variance, 0.0))
    if se == 0.0:
        z, p = (0.0, 1.0) if difference == 0.0 else (math.inf, 0.0)
    else:
        z = difference / se
        p = 2.0 * _normal_sf(abs(z))
    return DeLongResult(
        auc_a=float(aucs[0]),
        auc_b=float(aucs[1]),
        difference=difference,
        standard_error=se,
        z=z,
        p_value=min(1.0, p),
        ci95=(difference - 1.959964 * se, difference + 1.959964 * se),
    )


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None, recursively.

    Undefined metrics (e.g. specificity with no negatives) are NaN here; strict JSON, PostgreSQL's
    JSON type and the API's responses have no NaN, so they travel as null.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def evaluate(
    y_true: npt.ArrayLike,
    score: npt.ArrayLike,
    *,
    threshold: float = 0.5,
    resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Metrics, their 95 % bootstrap intervals and ROC points, JSON-ready (NaN -> None)."""
    metrics = binary_metrics(y_true, score, threshold)
    return json_safe(
        {
            "metrics": metrics.to_dict(),
            "ci95": {
                name: list(interval)
                for name, interval in bootstrap_intervals(
                    y_true, score, threshold=threshold, resamples=resamples, seed=seed
                ).items()
            },
            "roc": roc_points(y_true, score),
            "threshold": threshold,
        }
    )
