"""From calibrated field probabilities to the call a lab acts on: high, low, uncertain or no call.

A model carries a *decision set* (:class:`DecisionSet`): the calibrated P(high) and the true label
of held-out labelled fields it never trained on, stored in its ONNX metadata under
:data:`METADATA_KEY` and summarised in its card. Everything a lab may choose at scan time is
derived from it, so one exported model serves any lab's policy without retraining:

* the **decision threshold** (:class:`ThresholdPolicy`): ``default`` (the model's own, 0.5),
  ``youden`` (maximises sensitivity + specificity - 1 on the decision set),
  ``sensitivity:S`` / ``specificity:S`` (the loosest threshold that keeps that rate >= S);
* the **selective threshold** at the lab's ``alpha``
  (:func:`models.selective.risk_controlled_threshold` on the decision set): wells whose
  confidence falls below it are "uncertain: confirm by FCT".

:func:`resolve_policy` turns a model and those choices into a :class:`CallPolicy`, recorded with
each scan; :func:`decide_well` applies it to one well's fields:

1. fields the out-of-distribution guard (:mod:`models.ood`) flags are not used;
   none left: **no call**;
2. the well's P(high) is the mean over the fields used, its spread their standard deviation;
3. the *leaning* is high iff P(high) >= the decision threshold;
4. with selective calls on, the well is called only if its confidence (the probability that
   its leaning is right, ``p`` when it leans high, else ``1 - p``, minus the spread) reaches
   the selective threshold, else it is **uncertain**. The
   decision set holds single fields (spread 0), so subtracting the spread only makes serving
   stricter than calibration: fields that disagree need more agreement to be called.

The guarantee is the decision set's: it holds for wells exchangeable with those fields (the same
acquisition, plates and culture). It is exact only with the ``default`` decision threshold and a
held-out decision set: a data-driven policy (Youden, a sensitivity) chooses its threshold on the
same labels the selective test then uses, which makes the certificate approximate
(:attr:`CallPolicy.guarantee` says which). Wells with several fields are averaged, which makes
them easier, not harder, than the single calibration fields, but their fields are not
independent of each other as the calibration fields are.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from models.selective import SelectiveThreshold, risk_controlled_threshold

METADATA_KEY = "decision_set"
"""ONNX metadata key holding ``json.dumps(DecisionSet.to_dict())``."""

HIGH, LOW, UNCERTAIN, NO_CALL = "high", "low", "uncertain", "no call"
LABELS: tuple[str, ...] = (HIGH, LOW, UNCERTAIN, NO_CALL)
"""Every stored well label; a well with no field that passed QC has none (None)."""

MIN_DECISION_SET = 20
"""Fewer held-out fields than this choose no threshold worth recording."""

START_COVERAGE = 0.5
"""Where the selective test sequence starts, as a share of the decision set (resolve_policy)."""


@dataclass(frozen=True)
class DecisionSet:
    """Held-out labelled fields' calibrated P(high), on which thresholds are chosen.

    Attributes:
        probabilities: calibrated P(high) per field (the model's calibration applied).
        labels: 1 = high, 0 = low (FCT truth).
        source: where the fields came from (plates, split), for the card and the scan record.
        held_out: True when these fields were used for nothing else (not to stop training,
            not to fit the calibration): only then is a selective threshold's guarantee exact.
    """

    probabilities: tuple[float, ...]
    labels: tuple[int, ...]
    source: str = ""
    held_out: bool = True

    def __post_init__(self) -> None:
        if len(self.probabilities) != len(self.labels):
            raise ValueError(
                f"decision set: {len(self.probabilities)} probabilities but "
                f"{len(self.labels)} labels"
            )
        if len(self.labels) < MIN_DECISION_SET:
            raise ValueError(
                f"decision set: {len(self.labels)} fields; at least {MIN_DECISION_SET} are needed"
            )
        if any(not (math.isfinite(p) and 0.0 <= p <= 1.0) for p in self.probabilities):
            raise ValueError("decision set: probabilities must be finite and within [0, 1]")
        if any(label not in (0, 1) for label in self.labels):
            raise ValueError("decision set: labels must be 0 (low) or 1 (high)")
        if len(set(self.labels)) < 2:
            raise ValueError("decision set: needs both high and low fields")

    @classmethod
    def of(
        cls, probabilities: Any, labels: Any, *, source: str = "", held_out: bool = True
    ) -> DecisionSet:
        """From arrays (rounded to 6 decimals: a few kB of metadata, not a precision claim)."""
        p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
        y = np.asarray(labels).reshape(-1).astype(np.int64)
        return cls(
            tuple(round(float(v), 6) for v in p),
            tuple(int(v) for v in y),
            source=source,
            held_out=held_out,
        )

    @property
    def size(self) -> int:
        return len(self.labels)

    def to_dict(self) -> dict[str, Any]:
        return {
            "probabilities": list(self.probabilities),
            "labels": list(self.labels),
            "source": self.source,
            "held_out": self.held_out,
        }

    def summary(self) -> dict[str, Any]:
        """The card's view: what it is, not every number."""
        return {
            "fields": self.size,
            "high_fraction": round(sum(self.labels) / self.size, 4),
            "source": self.source,
            "held_out": self.held_out,
        }

    @classmethod
    def from_dict(cls, data: Any) -> DecisionSet:
        """Strict: ValueError naming what is wrong."""
        if not isinstance(data, dict):
            raise ValueError("decision set must be a JSON object")
        unknown = set(data) - {"probabilities", "labels", "source", "held_out"}
        if unknown:
            raise ValueError(f"decision set has unknown keys {sorted(unknown)}")
        probabilities, labels = data.get("probabilities"), data.get("labels")
        if not isinstance(probabilities, list) or not isinstance(labels, list):
            raise ValueError("decision set needs 'probabilities' and 'labels' lists")
        if any(isinstance(v, bool) or not isinstance(v, int | float) for v in probabilities):
            raise ValueError("decision set probabilities must be numbers")
        if any(isinstance(v, bool) or not isinstance(v, int) for v in labels):
            raise ValueError("decision set labels must be 0 or 1")
        source, held_out = data.get("source", ""), data.get("held_out", True)
        if not isinstance(source, str) or not isinstance(held_out, bool):
            raise ValueError("decision set 'source' must be text and 'held_out' true/false")
        return cls(
            tuple(float(v) for v in probabilities),
            tuple(labels),
            source=source,
            held_out=held_out,
        )


PolicyKind = Literal["default", "youden", "sensitivity", "specificity"]
_POLICY = re.compile(r"^(default|youden|(sensitivity|specificity):([0-9.eE+-]+))$")


@dataclass(frozen=True)
class ThresholdPolicy:
    """How the decision threshold (P(high) at or above which a well is high) is chosen."""

    kind: PolicyKind = "default"
    target: float | None = None  # the rate to keep, for "sensitivity" / "specificity"

    @classmethod
    def parse(cls, text: str) -> ThresholdPolicy:
        """``default``, ``youden``, ``sensitivity:0.95`` or ``specificity:0.95``.

        Raises:
            ValueError: anything else, naming the accepted forms.
        """
        match = _POLICY.match(text.strip().lower())
        if match is None:
            raise ValueError(
                f"threshold policy {text!r} is not one of: default, youden, sensitivity:S, "
                "specificity:S (S a rate in (0, 1], e.g. sensitivity:0.95)"
            )
        if match.group(2) is None:
            return cls(match.group(1))  # type: ignore[arg-type]
        try:
            target = float(match.group(3))
        except ValueError:
            target = math.nan
        if not 0.0 < target <= 1.0:
            raise ValueError(f"threshold policy {text!r}: the rate must be in (0, 1]")
        return cls(match.group(2), target)  # type: ignore[arg-type]

    def __str__(self) -> str:
        # repr: the shortest text that parses back to the same rate (never rounded to another).
        return self.kind if self.target is None else f"{self.kind}:{self.target!r}"

    @property
    def needs_decision_set(self) -> bool:
        return self.kind != "default"

    def threshold(self, decision_set: DecisionSet | None, model_threshold: float) -> float:
        """The decision threshold this policy picks.

        Raises:
            ValueError: a data-driven policy for a model without a decision set.
        """
        if self.kind == "default":
            return model_threshold
        if decision_set is None:
            raise ValueError(
                f"threshold policy {self} needs the model's decision set (held-out calibration "
                "fields), and this model has none: retrain it, or use the policy 'default'"
            )
        p = np.asarray(decision_set.probabilities, dtype=np.float64)
        y = np.asarray(decision_set.labels, dtype=np.int64)
        # Candidates are the observed probabilities: "p >= t is high" changes only there.
        candidates = np.unique(p)
        high = p[y == 1]
        low = p[y == 0]
        sensitivity = np.array([(high >= t).mean() for t in candidates])
        specificity = np.array([(low < t).mean() for t in candidates])
        if self.kind == "youden":
            j = sensitivity + specificity - 1.0
            return float(candidates[int(np.argmax(j))])  # the first (lowest) maximiser
        assert self.target is not None
        if self.kind == "sensitivity":
            # Sensitivity falls as t rises: the highest t that still keeps the target.
            keeps = np.flatnonzero(sensitivity >= self.target - 1e-12)
            return float(candidates[keeps[-1]]) if keeps.size else float(candidates[0])
        keeps = np.flatnonzero(specificity >= self.target - 1e-12)
        # Specificity rises with t: the lowest t that reaches it; none does: above every p.
        return float(candidates[keeps[0]]) if keeps.size else float(np.nextafter(1.0, 2.0))


@dataclass(frozen=True)
class CallPolicy:
    """Everything that turns field probabilities into a well's call; recorded with each scan.

    Attributes:
        threshold: P(high) at or above which a well leans high.
        threshold_policy: how ``threshold`` was chosen (``str(ThresholdPolicy)``).
        alpha, delta: the selective-call risk (None: selective calls off, every in-distribution
            well gets high/low).
        selective: the risk-controlled confidence threshold at ``alpha``, when on.
        ood_threshold: a field scoring above this is out of distribution (None: no guard).
        calibration: the calibration method the model applies (provenance).
        start_coverage: where the selective test sequence started (see :func:`resolve_policy`).
        guarantee: "exact", or why the selective certificate is only approximate (None:
            selective calls off).
    """

    threshold: float = 0.5
    threshold_policy: str = "default"
    alpha: float | None = None
    delta: float = 0.1
    selective: SelectiveThreshold | None = None
    ood_threshold: float | None = None
    calibration: str = "identity"
    start_coverage: float = 0.0
    guarantee: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "threshold_policy": self.threshold_policy,
            "alpha": self.alpha,
            "delta": self.delta,
            "start_coverage": self.start_coverage,
            "guarantee": self.guarantee,
            "selective": self.selective.to_dict() if self.selective else None,
            "ood_threshold": self.ood_threshold,
            "calibration": self.calibration,
        }


def resolve_policy(
    *,
    decision_set: DecisionSet | None,
    model_threshold: float = 0.5,
    threshold_policy: str | ThresholdPolicy = "default",
    alpha: float | None = None,
    delta: float = 0.1,
    ood_threshold: float | None = None,
    calibration: str = "identity",
    start_coverage: float = START_COVERAGE,
) -> CallPolicy:
    """The policy a scan runs under.

    ``start_coverage``: the selective test sequence (strict to loose) starts at the strictest
    threshold that calls this share of the decision set. The strictest thresholds call few
    fields, and one confidently wrong field among them (a well whose morphology contradicts
    its FCT label: every lab has some) ends a fixed sequence before the well-powered thresholds
    are reached. Starting at half gives up coverages under 50 %, which no lab would run a
    screen at, for that power. It is fixed without looking at the labels, so the guarantee
    stands (:func:`models.selective.risk_controlled_threshold`, ``min_calls``).

    Raises:
        ValueError: a bad policy or risk, or one that needs a decision set the model lacks.
    """
    policy = (
        threshold_policy
        if isinstance(threshold_policy, ThresholdPolicy)
        else ThresholdPolicy.parse(threshold_policy)
    )
    threshold = policy.threshold(decision_set, model_threshold)
    selective = None
    if alpha is not None:
        if decision_set is None:
            raise ValueError(
                f"selective calls (alpha {alpha}) need the model's decision set (held-out "
                "calibration fields), and this model has none: retrain it, or leave alpha unset"
            )
        if threshold > 1.0:
            raise ValueError(
                f"threshold policy {policy} gives threshold {threshold}: no field is high, so "
                "no selective threshold can be chosen; use a looser policy"
            )
        if threshold <= 0.0:
            raise ValueError(
                f"threshold policy {policy} gives threshold {threshold}: every field is high, "
                "so no selective threshold can be chosen; use a stricter policy"
            )
        if not 0.0 <= start_coverage < 1.0:
            raise ValueError(f"start_coverage must be in [0, 1), got {start_coverage}")
        selective = risk_controlled_threshold(
            decision_set.probabilities,
            decision_set.labels,
            alpha=alpha,
            delta=delta,
            decision=min(threshold, float(np.nextafter(1.0, 0.0))),
            min_calls=max(1, math.ceil(start_coverage * decision_set.size)),
        )
    return CallPolicy(
        threshold=threshold,
        threshold_policy=str(policy),
        alpha=alpha,
        delta=delta,
        selective=selective,
        ood_threshold=ood_threshold,
        calibration=calibration,
        start_coverage=start_coverage if selective is not None else 0.0,
        guarantee=_guarantee(policy, decision_set) if selective is not None else None,
    )


def _guarantee(policy: ThresholdPolicy, decision_set: DecisionSet | None) -> str:
    reasons = []
    if decision_set is not None and not decision_set.held_out:
        reasons.append("the decision set also stopped training and fitted the calibration")
    if policy.needs_decision_set:
        reasons.append(f"the {policy} threshold was chosen on the same labels")
    return "exact" if not reasons else "approximate: " + "; ".join(reasons)


REQUEST_FIELDS = ("threshold_policy", "alpha", "delta")
"""What a scan asks for of its call policy (the keyword arguments of :func:`resolve_policy` a
request may set; the rest comes from the model)."""

CARD_POLICIES = ("default", "youden", "sensitivity:0.95", "specificity:0.95")
CARD_ALPHAS = (0.02, 0.05, 0.1)


def card_section(decision_set: DecisionSet) -> dict[str, Any]:
    """A model card's "decision_set" section: the set's summary, the threshold each policy in
    :data:`CARD_POLICIES` picks and the selective threshold at each of :data:`CARD_ALPHAS`."""
    thresholds = {
        policy: resolve_policy(decision_set=decision_set, threshold_policy=policy).threshold
        for policy in CARD_POLICIES
    }
    selective = {}
    for alpha in CARD_ALPHAS:
        chosen = resolve_policy(decision_set=decision_set, alpha=alpha).selective
        selective[str(alpha)] = chosen.to_dict() if chosen is not None else None
    return {**decision_set.summary(), "thresholds": thresholds, "selective": selective}


@dataclass(frozen=True)
class WellDecision:
    """One well's call and why.

    Attributes:
        label: "high", "low", "uncertain" or "no call".
        leaning: high/low at the decision threshold, even when not called (None: no field
            in distribution).
        probability: mean calibrated P(high) over the fields used (all QC-passing fields when
            none is in distribution, for information).
        confidence: the probability that the leaning is right (``p`` leaning high, else
            ``1 - p``) minus the spread: what the selective threshold is compared with (None:
            no call).
        spread: population standard deviation of the used fields' P(high) (0 for one field;
            None: no call).
        ood_score: the lowest out-of-distribution score over the well's fields (None: no guard).
        fields_in_distribution: fields used.
        reason: why "uncertain" / "no call", or notes on a call (fields left out); "" if none.
    """

    label: str
    leaning: str | None
    probability: float
    confidence: float | None
    spread: float | None
    ood_score: float | None
    fields_in_distribution: int
    reason: str


def decide_well(
    probabilities: Sequence[float],
    ood_scores: Sequence[float | None],
    policy: CallPolicy,
) -> WellDecision:
    """Apply ``policy`` to the QC-passing fields of one well (see the module docstring).

    Raises:
        ValueError: no fields, or mismatched lengths.
    """
    if not probabilities:
        raise ValueError("a well decision needs at least one field that passed QC")
    if len(probabilities) != len(ood_scores):
        raise ValueError(f"{len(probabilities)} probabilities but {len(ood_scores)} OOD scores")
    scores = [s for s in ood_scores if s is not None]
    lowest = min(scores) if scores else None
    limit = policy.ood_threshold
    used = [p for p, s in zip(probabilities, ood_scores, strict=True) if _in_distribution(s, limit)]
    if not used:
        p_all = float(np.mean(probabilities))
        return WellDecision(
            label=NO_CALL,
            leaning=None,
            probability=p_all,
            confidence=None,
            spread=None,
            ood_score=lowest,
            fields_in_distribution=0,
            reason=(
                f"out of distribution: all {len(probabilities)} field(s) unlike the training "
                f"data (lowest score {lowest:.1f} > {limit:.1f}); check the well, the objective "
                "and the cell type"
            ),
        )
    probability = float(np.mean(used))
    spread = float(statistics.pstdev(used)) if len(used) > 1 else 0.0
    leaning = HIGH if probability >= policy.threshold else LOW
    confidence = (probability if leaning == HIGH else 1.0 - probability) - spread
    notes = []
    if len(used) < len(probabilities):
        notes.append(
            f"{len(probabilities) - len(used)} of {len(probabilities)} fields out of "
            "distribution, not used"
        )
    label = leaning
    selective = policy.selective
    if selective is not None:
        if selective.calls_nothing:
            label = UNCERTAIN
            notes.insert(
                0,
                f"confirm by FCT: no confidence threshold certifies error <= {selective.alpha:g} "
                f"on the model's {selective.n_calibration} calibration fields",
            )
        elif confidence < selective.threshold:
            label = UNCERTAIN
            why = f"confidence {confidence:.3f} < {selective.threshold:.3f}"
            if spread >= 0.05:
                why += f" (fields disagree: spread {spread:.2f})"
            notes.insert(
                0,
                f"confirm by FCT: {why}, needed for error <= {selective.alpha:g} "
                f"(delta {selective.delta:g})",
            )
    return WellDecision(
        label=label,
        leaning=leaning,
        probability=probability,
        confidence=confidence,
        spread=spread,
        ood_score=lowest,
        fields_in_distribution=len(used),
        reason="; ".join(notes),
    )


def _in_distribution(score: float | None, limit: float | None) -> bool:
    return score is None or limit is None or score <= limit
