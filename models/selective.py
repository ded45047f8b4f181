"""Selective calls with a guaranteed error rate: which wells the model may decide, and which
must go to flow cytometry (FCT) for confirmation.

A lab acts on each call, so a call must come with an error rate it can rely on. A well is
*called* when its confidence ``max(p, 1 - p)`` (``p`` = P(high)) reaches a threshold; the
others are ``"uncertain"`` and are confirmed by FCT. The threshold is chosen on held-out
calibration wells with **Learn then Test** (Angelopoulos, Bates, Candes, Jordan, Lei 2021,
"Learn then Test: Calibrating Predictive Algorithms to Achieve Risk Control") using
**fixed-sequence testing**:

* candidates: the distinct calibration confidences, from the strictest (highest) down;
* for a candidate ``t`` the null hypothesis is "the error rate among wells called at ``t``
  exceeds ``alpha``". With ``n`` calibration wells called and ``k`` errors among them, the
  one-sided Clopper-Pearson (exact binomial) upper bound at level ``1 - delta`` of that error
  rate is ``beta.ppf(1 - delta, k + 1, n - k)`` (``1 - delta ** (1 / n)`` when ``k = 0``);
  the null is rejected (the candidate accepted) when the bound is ``<= alpha``, which is a
  binomial test with p-value ``<= delta``;
* the candidates are tested in order and testing stops at the first candidate not accepted;
  testing a fixed sequence each at level ``delta`` controls the family-wise error rate at
  ``delta`` without a multiplicity correction, so the loosest accepted candidate is returned.
  Candidates called on fewer than ``n_min = ceil(log(delta) / log(1 - alpha))`` wells can
  never be accepted (even zero errors leave the bound above ``alpha``); they are left out of
  the sequence rather than ending it. That choice depends only on the confidences, never on
  the labels, so the tests that remain keep their level.

**Guarantee.** If the calibration wells and the new wells are exchangeable (i.i.d. draws from
the same plates-and-model distribution), then with probability at least ``1 - delta`` over
the draw of the calibration set, the returned threshold ``t`` has

    P(call wrong | confidence >= t) <= alpha

for new wells, i.e. the expected fraction of wrong calls among the wells that get a call is at
most ``alpha``. It is a statement about the error rate, not about any one plate: a single
plate's realised error among called wells fluctuates around it. The candidates are the
calibration confidences themselves (the usual practice); the guarantee is exact for a grid
fixed in advance and is checked empirically for this one in ``tests/test_selective.py``. It
does not survive a shift of distribution between calibration and use (another difficulty,
prevalence, objective or cell type): recalibrate when those change. The binomial bound counts
wells as independent; wells of one plate share its preparation, so calibrate on wells from
several plates.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import beta

logger = logging.getLogger(__name__)

#: A threshold no confidence reaches (confidences are <= 1): call nothing.
CALL_NOTHING = float(np.nextafter(1.0, 2.0))

HIGH, LOW, UNCERTAIN = "high", "low", "uncertain"


@dataclass(frozen=True)
class SelectiveThreshold:
    """A risk-controlled confidence threshold and what it did on the calibration wells.

    Attributes:
        threshold: call a well iff its confidence ``max(p, 1 - p) >= threshold``;
            :data:`CALL_NOTHING` when no candidate could be accepted.
        alpha: the error rate among called wells that is guaranteed not to be exceeded.
        delta: the probability (over the calibration set) that the guarantee fails.
        n_calibration: calibration wells used.
        coverage_on_calibration: fraction of calibration wells called at ``threshold``.
        error_on_calibration: fraction of called calibration wells called wrongly (NaN when
            none is called).
        error_upper_bound: the Clopper-Pearson upper ``1 - delta`` bound of the error rate at
            ``threshold`` (1.0 when none is called).
        method: how the threshold was chosen.
        reason: why this threshold: the stopping point of the test sequence, or why nothing
            can be called.
    """

    threshold: float
    alpha: float
    delta: float
    n_calibration: int
    coverage_on_calibration: float
    error_on_calibration: float
    error_upper_bound: float
    method: str
    reason: str

    @property
    def calls_nothing(self) -> bool:
        return self.threshold > 1.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (for model cards, scan records and benchmark output)."""
        return {
            "threshold": self.threshold,
            "alpha": self.alpha,
            "delta": self.delta,
            "n_calibration": self.n_calibration,
            "coverage_on_calibration": self.coverage_on_calibration,
            "error_on_calibration": None
            if math.isnan(self.error_on_calibration)
            else self.error_on_calibration,
            "error_upper_bound": self.error_upper_bound,
            "method": self.method,
            "reason": self.reason,
        }


METHOD = "learn-then-test, fixed sequence, Clopper-Pearson"


def confidence(p_high: Sequence[float] | np.ndarray, decision: float = 0.5) -> np.ndarray:
    """The probability that the call is right: ``p`` where ``p >= decision`` (called high),
    else ``1 - p``. At the usual ``decision`` 0.5 this is ``max(p, 1 - p)``, in [0.5, 1]; with
    another decision threshold a call against the odds (high at p = 0.3) has confidence 0.3.

    Raises:
        ValueError: a probability outside [0, 1] or not finite.
    """
    p = _probabilities(p_high)
    return np.where(p >= decision, p, 1.0 - p)


def selective_labels(
    p_high: Sequence[float] | np.ndarray, threshold: float, decision: float = 0.5
) -> np.ndarray:
    """Per well ``"high"`` / ``"low"`` (``p >= decision`` is high), or ``"uncertain"`` when its
    confidence is below ``threshold`` (confirm by FCT).

    Raises:
        ValueError: bad probabilities or a decision threshold outside (0, 1).
    """
    _check_decision(decision)
    p = _probabilities(p_high)
    labels = np.where(p >= decision, HIGH, LOW).astype(object)
    labels[confidence(p, decision) < threshold] = UNCERTAIN
    return labels


def clopper_pearson_upper(errors: np.ndarray, n: np.ndarray, delta: float) -> np.ndarray:
    """One-sided upper ``1 - delta`` Clopper-Pearson bounds of binomial rates, elementwise.

    ``k = n`` (every call wrong) or ``n = 0`` gives 1.0."""
    errors = np.asarray(errors, dtype=float)
    n = np.asarray(n, dtype=float)
    bound = np.ones(np.broadcast(errors, n).shape)
    ok = (n > 0) & (errors < n)
    bound[ok] = beta.ppf(1.0 - delta, errors[ok] + 1.0, n[ok] - errors[ok])
    return bound


def minimum_calls(alpha: float, delta: float) -> int:
    """The fewest calls whose bound can be ``<= alpha``: the least ``n`` with zero errors and
    ``1 - delta ** (1 / n) <= alpha``."""
    _check_risk(alpha, delta)

    def bound(calls: int) -> float:  # 1 - delta ** (1 / n), without cancellation at tiny alpha
        return -math.expm1(math.log(delta) / calls)

    n = max(1, math.ceil(math.log(delta) / math.log1p(-alpha)))
    while n > 1 and bound(n - 1) <= alpha:  # guard against rounding
        n -= 1
    while bound(n) > alpha:
        n += 1
    return n


def risk_controlled_threshold(
    p_high: Sequence[float] | np.ndarray,
    labels: Sequence[Any] | np.ndarray,
    *,
    alpha: float,
    delta: float = 0.1,
    decision: float = 0.5,
    min_calls: int | None = None,
) -> SelectiveThreshold:
    """The loosest confidence threshold whose error rate among called wells is certified
    ``<= alpha`` with probability ``>= 1 - delta`` (see the module docstring).

    Args:
        p_high: calibration wells' P(high).
        labels: their true labels, ``"high"`` / ``"low"`` or 1 / 0 (1 = high).
        alpha: tolerated error rate among called wells, in (0, 1).
        delta: tolerated probability that the certificate is wrong, in (0, 1).
        decision: P(high) at or above which a called well is "high".
        min_calls: the sequence starts at the first candidate that calls at least this many
            calibration wells (None, and the floor: :func:`minimum_calls`). The strictest
            candidates call few wells, so one chance error there ends the sequence before the
            well-powered candidates are reached; starting later trades the strictest
            thresholds for that power. It must be chosen without looking at the labels (a
            count, or a fraction of the calibration set), or the guarantee is lost.

    Raises:
        ValueError: alpha or delta outside (0, 1), mismatched or empty inputs, labels not all in
            {"high", "low"} or {0, 1}, probabilities outside [0, 1].
    """
    _check_risk(alpha, delta)
    _check_decision(decision)
    p = _probabilities(p_high)
    truth = _truth(labels)
    if len(p) != len(truth):
        raise ValueError(f"{len(p)} probabilities but {len(truth)} labels")
    if len(p) == 0:
        raise ValueError("no calibration wells")
    conf = confidence(p, decision)
    wrong = (p >= decision) != truth

    order = np.argsort(-conf, kind="mergesort")
    conf_sorted, wrong_sorted = conf[order], wrong[order]
    called = np.arange(1, len(p) + 1)
    errors = np.cumsum(wrong_sorted)
    # one candidate per distinct confidence: all wells at or above it are called
    last_of_group = np.r_[conf_sorted[1:] != conf_sorted[:-1], True]
    cand_t, cand_n, cand_k = (
        conf_sorted[last_of_group],
        called[last_of_group],
        errors[last_of_group],
    )
    bounds = clopper_pearson_upper(cand_k, cand_n, delta)

    n_min = minimum_calls(alpha, delta)
    if min_calls is not None:
        if min_calls < 1:
            raise ValueError(f"min_calls must be >= 1, got {min_calls!r}")
        n_min = max(n_min, int(min_calls))
    testable = np.flatnonzero(cand_n >= n_min)
    accepted = -1
    stop = ""
    for i in testable:
        if bounds[i] <= alpha:
            accepted = int(i)
            continue
        stop = (
            f"stopped at confidence {cand_t[i]:.4f}: {cand_k[i]} errors in {cand_n[i]} calls, "
            f"bound {bounds[i]:.4f} > alpha {alpha}"
        )
        break
    else:
        if accepted >= 0:
            stop = "every candidate accepted: all calibration wells can be called"

    if accepted < 0:
        if len(testable) == 0:
            reason = (
                f"nothing can be called: {len(p)} calibration wells, but certifying alpha={alpha}"
                f" at delta={delta} needs at least {n_min} calls even with no error"
                " (or min_calls)"
            )
        else:
            reason = f"nothing can be called: the first testable candidate was rejected; {stop}"
        logger.info("risk-controlled threshold: %s", reason)
        return SelectiveThreshold(
            threshold=CALL_NOTHING,
            alpha=alpha,
            delta=delta,
            n_calibration=len(p),
            coverage_on_calibration=0.0,
            error_on_calibration=math.nan,
            error_upper_bound=1.0,
            method=METHOD,
            reason=reason,
        )
    n, k = int(cand_n[accepted]), int(cand_k[accepted])
    return SelectiveThreshold(
        threshold=float(cand_t[accepted]),
        alpha=alpha,
        delta=delta,
        n_calibration=len(p),
        coverage_on_calibration=n / len(p),
        error_on_calibration=k / n,
        error_upper_bound=float(bounds[accepted]),
        method=METHOD,
        reason=stop,
    )


def error_coverage_curve(
    p_high: Sequence[float] | np.ndarray,
    labels: Sequence[Any] | np.ndarray,
    thresholds: Sequence[float] | np.ndarray,
    decision: float = 0.5,
) -> list[tuple[float, float, float]]:
    """Rows ``(threshold, coverage, error among called)`` (error NaN when nothing is called):
    what each threshold trades between wells decided and wrong decisions.

    Raises:
        ValueError: mismatched lengths, bad labels or probabilities.
    """
    _check_decision(decision)
    p = _probabilities(p_high)
    truth = _truth(labels)
    if len(p) != len(truth):
        raise ValueError(f"{len(p)} probabilities but {len(truth)} labels")
    conf = np.maximum(p, 1.0 - p)
    wrong = (p >= decision) != truth
    rows = []
    for t in thresholds:
        called = conf >= float(t)
        n = int(called.sum())
        coverage = n / len(p) if len(p) else math.nan
        error = float(wrong[called].mean()) if n else math.nan
        rows.append((float(t), coverage, error))
    return rows


def _check_risk(alpha: float, delta: float) -> None:
    for name, value in (("alpha", alpha), ("delta", delta)):
        try:
            ok = 0.0 < float(value) < 1.0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")


def _check_decision(decision: float) -> None:
    if not 0.0 < decision < 1.0:
        raise ValueError(f"decision threshold must be in (0, 1), got {decision!r}")


def _probabilities(p_high: Sequence[float] | np.ndarray) -> np.ndarray:
    p = np.asarray(p_high, dtype=float).ravel()
    if not np.all(np.isfinite(p)) or np.any((p < 0.0) | (p > 1.0)):
        raise ValueError("probabilities must be finite and in [0, 1]")
    return p


def _truth(labels: Sequence[Any] | np.ndarray) -> np.ndarray:
    """True labels as booleans (True = high), from {"high", "low"} or {0, 1}."""
    values = list(np.asarray(labels, dtype=object).ravel())
    if all(isinstance(v, str) for v in values):
        bad = sorted({v for v in values if v not in (HIGH, LOW)})
        if bad:
            raise ValueError(f'labels must be "high" or "low"; got {bad[:5]}')
        return np.array([v == HIGH for v in values], dtype=bool)
    out = []
    for v in values:
        if isinstance(v, bool | np.bool_) or (
            isinstance(v, int | float | np.integer | np.floating) and v in (0, 1)
        ):
            out.append(bool(v))
        else:
            raise ValueError(f'labels must be all "high"/"low" or all 0/1; got {v!r}')
    return np.array(out, dtype=bool)
