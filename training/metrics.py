"""Binary classification metrics with the correct formulas (not the paper's eq. 4).

Positive class = "high" functionality (label 1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from sklearn.metrics import roc_auc_score


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
    f1: float
    auc: float | None  # None when only one class is present

    def to_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else float("nan")


def binary_metrics(
    y_true: np.ndarray, probability: np.ndarray, threshold: float = 0.5
) -> BinaryMetrics:
    """Metrics of calls ``probability >= threshold`` against ``y_true`` (1 = high)."""
    y = np.asarray(y_true).astype(int)
    p = np.asarray(probability, dtype=float)
    if y.shape != p.shape:
        raise ValueError(f"y_true {y.shape} and probability {p.shape} differ in shape")
    call = (p >= threshold).astype(int)
    tp = int(np.sum((call == 1) & (y == 1)))
    tn = int(np.sum((call == 0) & (y == 0)))
    fp = int(np.sum((call == 1) & (y == 0)))
    fn = int(np.sum((call == 0) & (y == 1)))
    sensitivity = _ratio(tp, tp + fn)
    ppv = _ratio(tp, tp + fp)
    auc = float(roc_auc_score(y, p)) if len(set(y.tolist())) == 2 else None
    return BinaryMetrics(
        n=len(y),
        tp=tp,
        tn=tn,
        fp=fp,
        fn=fn,
        accuracy=_ratio(tp + tn, tp + tn + fp + fn),
        sensitivity=sensitivity,
        specificity=_ratio(tn, tn + fp),
        ppv=ppv,
        npv=_ratio(tn, tn + fn),
        f1=_ratio(2 * tp, 2 * tp + fp + fn),
        auc=auc,
    )


def bootstrap_ci(
    y_true: np.ndarray,
    probability: np.ndarray,
    metric: str,
    *,
    threshold: float = 0.5,
    resamples: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of one :class:`BinaryMetrics` field."""
    rng = np.random.default_rng(seed)
    y = np.asarray(y_true)
    p = np.asarray(probability)
    values = []
    for _ in range(resamples):
        index = rng.integers(0, len(y), len(y))
        value = getattr(binary_metrics(y[index], p[index], threshold), metric)
        if value is not None and not np.isnan(value):
            values.append(value)
    if not values:
        return float("nan"), float("nan")
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)
