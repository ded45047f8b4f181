"""Probability calibration for the binary classifier: fitted after training, applied when serving.

A network trained with cross-entropy ranks wells well but is often over- or under-confident: its
P(high) = 0.95 need not mean 95 % of such wells are high. A :class:`Calibration` is a small,
monotone map from the network's probability to a calibrated one, fitted on held-out labelled
data and carried inside the exported ONNX model (metadata key :data:`METADATA_KEY`, JSON of
:meth:`Calibration.to_dict`) so that every server applies the same map to the same model.

Three methods:

* ``identity``: no change. What a model without calibration metadata gets, so old models behave
  exactly as before.
* ``temperature``: ``sigmoid(logit(p) / T)``. One parameter, so it cannot overfit a small
  validation set; it fixes the usual failure (a uniformly over-confident network, T > 1).
* ``isotonic``: the monotone step function that best fits the labels (pool-adjacent-violators),
  stored as breakpoints and applied by linear interpolation. Fits any monotone distortion but
  needs more data; plain numpy, so serving needs no scikit-learn.

:func:`fit_calibration` with ``method="auto"`` picks between the two (or none, when neither
beats the network's own probabilities) by cross-validated negative log-likelihood, the proper
scoring rule calibration is meant to improve, and records all three scores.
:func:`expected_calibration_error` and :func:`reliability_table` measure the result.

Every map is monotone non-decreasing, so ranking (and therefore ROC AUC) is unchanged apart from
ties isotonic introduces; the decision threshold, however, applies to calibrated probabilities.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

logger = logging.getLogger(__name__)

METADATA_KEY = "calibration"
"""ONNX metadata key holding ``json.dumps(Calibration.to_dict())``."""

CalibrationMethod = Literal["identity", "temperature", "isotonic"]
METHODS: tuple[str, ...] = ("identity", "temperature", "isotonic")

TEMPERATURE_BOUNDS = (0.05, 20.0)
"""Beyond these a temperature means a useless model or degenerate data, not miscalibration."""

_EPS = 1e-12
"""Probabilities are clipped to [EPS, 1 - EPS] before a logit or log: p = 0/1 stay finite."""

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def _as_probabilities(probabilities: Any, name: str = "probabilities") -> np.ndarray:
    array = np.asarray(probabilities, dtype=np.float64)
    if array.ndim != 1:
        array = array.reshape(-1)
    if not np.all(np.isfinite(array)) or np.any(array < 0.0) or np.any(array > 1.0):
        raise ValueError(f"{name} must be finite and within [0, 1]")
    return array


def _as_labels(labels: Any, size: int) -> np.ndarray:
    array = np.asarray(labels).reshape(-1)
    if array.size != size:
        raise ValueError(f"{array.size} labels for {size} probabilities")
    as_float = array.astype(np.float64)
    if not np.all((as_float == 0.0) | (as_float == 1.0)):
        raise ValueError("labels must be 0 or 1")
    return as_float


def _logit(p: np.ndarray) -> np.ndarray:
    clipped = np.clip(p, _EPS, 1.0 - _EPS)
    return np.asarray(np.log(clipped) - np.log1p(-clipped))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    # Written through exp(-|z|) so neither tail overflows.
    e = np.exp(-np.abs(z))
    return np.asarray(np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e)))


def negative_log_likelihood(probabilities: Any, labels: Any) -> float:
    """Mean binary cross-entropy (nats); probabilities are clipped so 0/1 cost ~27.6, not inf."""
    p = _as_probabilities(probabilities)
    y = _as_labels(labels, p.size)
    if p.size == 0:
        raise ValueError("no samples")
    clipped = np.clip(p, _EPS, 1.0 - _EPS)
    return float(-np.mean(y * np.log(clipped) + (1.0 - y) * np.log1p(-clipped)))


@dataclass(frozen=True)
class Calibration:
    """A monotone map from the network's P(high) to a calibrated P(high).

    Attributes:
        method: "identity", "temperature" or "isotonic".
        temperature: T for "temperature" (1.0 otherwise).
        x, y: isotonic breakpoints (x strictly increasing, y non-decreasing, both in [0, 1]);
            empty for the other methods.
        cv_nll: cross-validated NLL per candidate method when chosen by ``fit_calibration``
            (provenance only; ``apply`` ignores it).
    """

    method: CalibrationMethod = "identity"
    temperature: float = 1.0
    x: tuple[float, ...] = ()
    y: tuple[float, ...] = ()
    cv_nll: Mapping[str, float] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"calibration method {self.method!r} is not one of {list(METHODS)}")
        low, high = TEMPERATURE_BOUNDS
        if not (math.isfinite(self.temperature) and low <= self.temperature <= high):
            raise ValueError(f"temperature {self.temperature!r} is outside [{low}, {high}]")
        if self.method != "temperature" and self.temperature != 1.0:
            raise ValueError("a temperature is only meaningful for method 'temperature'")
        if self.method == "isotonic":
            x = np.asarray(self.x, dtype=np.float64)
            y = np.asarray(self.y, dtype=np.float64)
            if x.size == 0 or x.size != y.size:
                raise ValueError(
                    "isotonic calibration needs equally many x and y breakpoints (>= 1)"
                )
            if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
                raise ValueError("isotonic breakpoints must be finite")
            if np.any(x < 0) or np.any(x > 1) or np.any(y < 0) or np.any(y > 1):
                raise ValueError("isotonic breakpoints must lie within [0, 1]")
            if np.any(np.diff(x) <= 0):
                raise ValueError("isotonic x breakpoints must be strictly increasing")
            if np.any(np.diff(y) < 0):
                raise ValueError("isotonic y breakpoints must be non-decreasing (monotone map)")
        elif self.x or self.y:
            raise ValueError("breakpoints are only meaningful for method 'isotonic'")
        for name, score in self.cv_nll.items():
            if (
                name not in METHODS
                or not isinstance(score, int | float)
                or not math.isfinite(score)
            ):
                raise ValueError(
                    f"cv_nll entry {name!r}: {score!r} is not a finite score of a method"
                )

    @property
    def is_identity(self) -> bool:
        return self.method == "identity"

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        """Calibrated probabilities, same shape; float dtypes are kept (so float32 stays float32).

        Identity returns its input as is: a model without calibration scores bit for bit as before.
        """
        if self.method == "identity":
            return probabilities
        source = np.asarray(probabilities)
        p = _as_probabilities(source)
        if self.method == "temperature":
            out = _sigmoid(_logit(p) / self.temperature)
        else:
            out = np.interp(p, np.asarray(self.x), np.asarray(self.y))
        dtype = source.dtype if np.issubdtype(source.dtype, np.floating) else np.float64
        return out.reshape(source.shape).astype(dtype, copy=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; only the fields the method uses."""
        out: dict[str, Any] = {"method": self.method}
        if self.method == "temperature":
            out["temperature"] = self.temperature
        if self.method == "isotonic":
            out["x"] = list(self.x)
            out["y"] = list(self.y)
        if self.cv_nll:
            out["cv_nll"] = dict(self.cv_nll)
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Calibration:
        """Rebuild from :meth:`to_dict`; unknown, missing or out-of-range fields: ValueError."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a calibration must be a JSON object, not {type(data).__name__}")
        allowed = {"method", "temperature", "x", "y", "cv_nll"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ValueError(f"unknown calibration keys {unknown}")
        method = data.get("method")
        if method not in METHODS:
            raise ValueError(f"calibration method {method!r} is not one of {list(METHODS)}")
        required = {"identity": (), "temperature": ("temperature",), "isotonic": ("x", "y")}
        missing = [key for key in required[method] if key not in data]
        if missing:
            raise ValueError(f"{method} calibration is missing {missing}")
        temperature = data.get("temperature", 1.0)
        if isinstance(temperature, bool) or not isinstance(temperature, int | float):
            raise ValueError(f"temperature must be a number, not {temperature!r}")
        breakpoints: list[tuple[float, ...]] = []
        for key in ("x", "y"):
            values = data.get(key, [])
            if not isinstance(values, list) or not all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in values
            ):
                raise ValueError(f"isotonic {key!r} must be a list of numbers")
            breakpoints.append(tuple(float(v) for v in values))
        cv_nll = data.get("cv_nll", {})
        if not isinstance(cv_nll, Mapping):
            raise ValueError("cv_nll must be an object of method -> score")
        return cls(
            method=method,
            temperature=float(temperature),
            x=breakpoints[0],
            y=breakpoints[1],
            cv_nll={str(k): v for k, v in cv_nll.items()},
        )


IDENTITY = Calibration()


def fit_temperature(probabilities: Any, labels: Any) -> Calibration:
    """The T minimising the NLL of ``sigmoid(logit(p) / T)``, within :data:`TEMPERATURE_BOUNDS`.

    The NLL is convex in 1/T (a one-weight logistic regression on the logit), hence unimodal in
    log T, so a golden-section search on log T finds the optimum without scipy.
    """
    p = _as_probabilities(probabilities)
    y = _as_labels(labels, p.size)
    if p.size == 0:
        raise ValueError("no samples to fit a temperature on")
    z = _logit(p)

    def nll(log_t: float) -> float:
        q = np.clip(_sigmoid(z / math.exp(log_t)), _EPS, 1.0 - _EPS)
        return float(-np.mean(y * np.log(q) + (1.0 - y) * np.log1p(-q)))

    a, b = (math.log(bound) for bound in TEMPERATURE_BOUNDS)
    c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    fc, fd = nll(c), nll(d)
    while b - a > 1e-9:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - _GOLDEN * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + _GOLDEN * (b - a)
            fd = nll(d)
    low, high = TEMPERATURE_BOUNDS
    temperature = min(max(math.exp((a + b) / 2.0), low), high)
    return Calibration(method="temperature", temperature=temperature)


def _pool_adjacent_violators(y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted isotonic (non-decreasing) regression of ``y`` in order; returns (values, sizes).

    Classic stack form: each new point becomes a block, merged into its predecessor while the
    predecessor's mean is higher. O(n) amortised.
    """
    means: list[float] = []
    weights: list[float] = []
    sizes: list[int] = []
    for value, weight in zip(y.tolist(), w.tolist(), strict=True):
        means.append(value)
        weights.append(weight)
        sizes.append(1)
        while len(means) > 1 and means[-2] > means[-1]:
            total = weights[-2] + weights[-1]
            merged = (means[-2] * weights[-2] + means[-1] * weights[-1]) / total
            size = sizes[-2] + sizes[-1]
            del means[-1], weights[-1], sizes[-1]
            means[-1], weights[-1], sizes[-1] = merged, total, size
    return np.asarray(means), np.asarray(sizes)


def fit_isotonic(probabilities: Any, labels: Any) -> Calibration:
    """The monotone step map best fitting the labels (least squares = PAV), as breakpoints.

    Ties in p are pooled first (one input value must map to one output). Each pooled block is kept
    by its first and last input value, so ``apply`` is flat within a block, linear between blocks
    and clamped outside the fitted range.
    """
    p = _as_probabilities(probabilities)
    y = _as_labels(labels, p.size)
    if p.size == 0:
        raise ValueError("no samples to fit an isotonic map on")
    unique, inverse, counts = np.unique(p, return_inverse=True, return_counts=True)
    tie_means = np.bincount(inverse, weights=y) / counts
    values, sizes = _pool_adjacent_violators(tie_means, counts.astype(np.float64))
    ends = np.cumsum(sizes)
    starts = ends - sizes
    xs: list[float] = []
    ys: list[float] = []
    for start, end, value in zip(starts.tolist(), ends.tolist(), values.tolist(), strict=True):
        xs.append(float(unique[start]))
        ys.append(value)
        if end - 1 > start:
            xs.append(float(unique[end - 1]))
            ys.append(value)
    return Calibration(method="isotonic", x=tuple(xs), y=tuple(ys))


def _cross_validated_nll(
    p: np.ndarray, y: np.ndarray, method: str, folds: np.ndarray, n_folds: int
) -> float:
    fitter = fit_temperature if method == "temperature" else fit_isotonic
    losses = np.empty(p.size)
    for k in range(n_folds):
        test = folds == k
        calibration = fitter(p[~test], y[~test])
        q = np.clip(calibration.apply(p[test]), _EPS, 1.0 - _EPS)
        losses[test] = -(y[test] * np.log(q) + (1.0 - y[test]) * np.log1p(-q))
    return float(np.mean(losses))


def fit_calibration(
    probabilities: Any,
    labels: Any,
    *,
    method: Literal["auto", "identity", "temperature", "isotonic"] = "auto",
    folds: int = 5,
    seed: int = 0,
) -> Calibration:
    """Fit a calibration on held-out (probability, label) pairs.

    ``"auto"`` fits temperature and isotonic in ``folds``-fold cross-validation (a fixed shuffled
    split, so a refit is reproducible), keeps the method with the lower out-of-fold NLL and refits
    it on all the data. Cross-validation matters because isotonic always wins in-sample; the
    scores of both (and of no calibration) are kept in ``cv_nll``.
    """
    p = _as_probabilities(probabilities)
    y = _as_labels(labels, p.size)
    if method == "identity":
        return IDENTITY
    if method == "temperature":
        return fit_temperature(p, y)
    if method == "isotonic":
        return fit_isotonic(p, y)
    if method != "auto":
        raise ValueError(f"calibration method {method!r} is not 'auto' or one of {list(METHODS)}")
    if folds < 2 or p.size < 2 * folds:
        raise ValueError(f"'auto' needs at least {2 * max(folds, 2)} samples and >= 2 folds")
    rng = np.random.default_rng(seed)
    assignment = rng.permutation(np.arange(p.size) % folds)
    scores = {
        "identity": negative_log_likelihood(p, y),
        "temperature": _cross_validated_nll(p, y, "temperature", assignment, folds),
        "isotonic": _cross_validated_nll(p, y, "isotonic", assignment, folds),
    }
    # No calibration competes too: its NLL needs no fit, so in-sample is already out-of-fold,
    # and a map that does not beat it out of fold would only add noise to the served numbers.
    chosen = min(("identity", "temperature", "isotonic"), key=lambda method: scores[method])
    if chosen == "identity":
        logger.info("calibration: none beats the network's own NLL out of fold (%s)", scores)
        return Calibration(cv_nll=scores)
    fitted = fit_temperature(p, y) if chosen == "temperature" else fit_isotonic(p, y)
    logger.info(
        "calibration: %s chosen by %d-fold NLL (temperature %.4f, isotonic %.4f, none %.4f)",
        chosen,
        folds,
        scores["temperature"],
        scores["isotonic"],
        scores["identity"],
    )
    return Calibration(
        method=fitted.method,
        temperature=fitted.temperature,
        x=fitted.x,
        y=fitted.y,
        cv_nll=scores,
    )


@dataclass(frozen=True)
class ReliabilityBin:
    """One equal-width bin of predicted P(high); the means are None for an empty bin."""

    lower: float
    upper: float
    count: int
    mean_confidence: float | None
    observed_frequency: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "lower": self.lower,
            "upper": self.upper,
            "count": self.count,
            "mean_confidence": self.mean_confidence,
            "observed_frequency": self.observed_frequency,
        }


def reliability_table(probabilities: Any, labels: Any, bins: int = 15) -> list[ReliabilityBin]:
    """Per equal-width bin of P(high): how many, their mean P(high), the fraction truly high.

    Bins are [i/bins, (i+1)/bins), the last one closed, so p = 1 is counted.
    """
    if bins < 1:
        raise ValueError("bins must be >= 1")
    p = _as_probabilities(probabilities)
    y = _as_labels(labels, p.size)
    index = np.minimum((p * bins).astype(np.int64), bins - 1)
    counts = np.bincount(index, minlength=bins)
    sum_p = np.bincount(index, weights=p, minlength=bins)
    sum_y = np.bincount(index, weights=y, minlength=bins)
    table = []
    for i in range(bins):
        n = int(counts[i])
        table.append(
            ReliabilityBin(
                lower=i / bins,
                upper=(i + 1) / bins,
                count=n,
                mean_confidence=float(sum_p[i] / n) if n else None,
                observed_frequency=float(sum_y[i] / n) if n else None,
            )
        )
    return table


def expected_calibration_error(probabilities: Any, labels: Any, bins: int = 15) -> float:
    """ECE of P(high): sum over equal-width bins of (count / N) * |mean P(high) - fraction high|.

    Measured on the positive-class probability (the number the product reports), not on the
    top-label confidence; for a binary problem the two differ only in how bins are cut.
    """
    table = reliability_table(probabilities, labels, bins)
    total = sum(b.count for b in table)
    if total == 0:
        raise ValueError("no samples")
    return float(
        sum(
            b.count * abs(b.mean_confidence - b.observed_frequency)
            for b in table
            if b.mean_confidence is not None and b.observed_frequency is not None
        )
        / total
    )
