"""Per-well classification: the shared image pipeline, then the ONNX model, then the call.

The call follows a :class:`models.decision.CallPolicy` (decision threshold, selective calls,
out-of-distribution guard): by default the model's own, which for a model without a decision set
or guard is the plain ``P(high) >= 0.5`` call every model got before.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from hardware.microscope import AcquiredField
from models.decision import CallPolicy, WellDecision, decide_well, resolve_policy
from models.inference import OnnxClassifier
from models.ood import descriptors
from models.pipeline import PreparedImage, prepare


@dataclass
class FieldCall:
    """One field's outcome."""

    prepared: PreparedImage
    probability: float | None  # calibrated P(high); None when QC excluded the field
    ood_score: float | None = None  # None: QC excluded the field, or the model has no guard


@dataclass
class WellCall:
    """A well's call: mean calibrated P(high) over the fields that passed QC and the guard."""

    label: str | None  # "high" | "low" | "uncertain" | "no call" | None (no field passed QC)
    probability: float | None
    fields: list[FieldCall]
    qc_flags: list[str]
    confluence_pct: float | None
    preprocessing_ms: float
    inference_ms: float
    leaning: str | None = None  # high/low at the decision threshold, also when not called
    reason: str | None = None  # why uncertain / no call, or notes on a call
    confidence: float | None = None
    spread: float | None = None
    ood_score: float | None = None
    fields_in_distribution: int | None = None  # None: no field passed QC

    @property
    def fields_used(self) -> int:
        """Fields the call rests on: passed QC and the out-of-distribution guard."""
        if self.fields_in_distribution is not None:
            return self.fields_in_distribution
        return sum(1 for f in self.fields if f.probability is not None)


class WellClassifier:
    """Turns a well's acquired fields into a :class:`WellCall` with one batched inference."""

    def __init__(self, model: OnnxClassifier) -> None:
        self.model = model
        self.config = model.pipeline_config
        self.default_policy = self.policy()

    def policy(
        self, threshold_policy: str = "default", alpha: float | None = None, delta: float = 0.1
    ) -> CallPolicy:
        """The call policy for this model with these choices (the guard is the model's).

        Raises:
            ValueError: a bad choice, or one that needs a decision set the model lacks.
        """
        guard = self.model.ood_guard
        return resolve_policy(
            decision_set=self.model.decision_set,
            model_threshold=self.model.threshold,
            threshold_policy=threshold_policy,
            alpha=alpha,
            delta=delta,
            ood_threshold=guard.threshold if guard is not None else None,
            calibration=self.model.calibration.method,
        )

    def classify(self, fields: list[AcquiredField], policy: CallPolicy | None = None) -> WellCall:
        """Prepare every field with the model's pipeline, infer once, call the well.

        ``policy``: how to call it (None: :attr:`default_policy`).

        Raises:
            ValueError: the fields' channels do not fit the model (see :meth:`check_channels`).
        """
        policy = policy or self.default_policy
        for f in fields:
            self.check_channels(f)
        started = time.perf_counter()
        # Each frame is scaled by its own camera's bit depth, recorded when it was acquired.
        prepared = [prepare(f.image, self.config, bit_depth=f.bit_depth) for f in fields]
        preprocessing_ms = (time.perf_counter() - started) * 1000.0

        usable = [i for i, p in enumerate(prepared) if not p.qc.excluded]
        probabilities: dict[int, float] = {}
        ood_scores: dict[int, float] = {}
        inference_ms = 0.0
        if usable:
            features = np.stack([_required(prepared[i].features) for i in usable])
            masks = np.stack([_required(prepared[i].mask)[None] for i in usable]).astype(np.float32)
            started = time.perf_counter()
            probs, _ = self.model.predict(features, masks)  # the maps: only for overlays
            if self.model.ood_guard is not None:
                scores = self.model.ood_guard.score(descriptors(features, masks))
                ood_scores = {i: float(s) for i, s in zip(usable, scores, strict=True)}
            inference_ms = (time.perf_counter() - started) * 1000.0
            probabilities = {i: float(p) for i, p in zip(usable, probs, strict=True)}

        flags = sorted({flag for p in prepared for flag in p.qc.flags})
        confluences = [p.confluence_pct for p in prepared if p.confluence_pct is not None]
        call = WellCall(
            label=None,
            probability=None,
            fields=[
                FieldCall(p, probabilities.get(i), ood_scores.get(i))
                for i, p in enumerate(prepared)
            ],
            qc_flags=flags,
            confluence_pct=float(np.mean(confluences)) if confluences else None,
            preprocessing_ms=preprocessing_ms,
            inference_ms=inference_ms,
        )
        if usable:
            decision, call.qc_flags = decide_fields(
                usable, probabilities, ood_scores, flags, policy
            )
            call.label, call.leaning = decision.label, decision.leaning
            call.probability, call.confidence = decision.probability, decision.confidence
            call.spread, call.ood_score = decision.spread, decision.ood_score
            call.reason = decision.reason or None
            call.fields_in_distribution = decision.fields_in_distribution
        return call

    def check_channels(self, field: AcquiredField) -> None:
        """Refuse a field whose channels the model cannot take, naming the fix.

        A ``band_source="channels"`` model needs (H, W, C) frames with its C; any other model
        needs one frame per field: a multi-channel acquisition (``metadata["channels"]``) must
        not be read as a BGR colour frame or fail deep in the pipeline.

        Raises:
            ValueError: the mismatch and the setting that fixes it.
        """
        config = self.config
        image = field.image
        acquired = field.channel_names if "channels" in field.metadata else ()
        fix = "set MSCREEN_ACQUISITION_CHANNELS to the channels the model was trained on"
        if config.band_source == "channels":
            count = image.shape[2] if image.ndim == 3 else 1
            if count < 2 or (config.channels is not None and count != config.channels):
                expected = config.channels if config.channels is not None else ">= 2"
                raise ValueError(
                    f"the model takes {expected}-channel frames (band_source='channels'), "
                    f"{field.well} field {field.field_index} has {count} channel(s) "
                    f"{list(acquired)}: {fix}"
                )
        elif acquired:
            raise ValueError(
                f"the model takes one frame per field (band_source={config.band_source!r}), "
                f"{field.well} field {field.field_index} was acquired in channels "
                f"{list(acquired)}: {fix}, or leave it empty"
            )


def decide_fields(
    usable: Sequence[int],
    probabilities: Mapping[int, float],
    ood_scores: Mapping[int, float],
    flags: list[str],
    policy: CallPolicy,
) -> tuple[WellDecision, list[str]]:
    """A well's decision from its QC-passing fields (``usable``, keys of ``probabilities``;
    ``ood_scores`` empty without a guard), and its QC flags with ``out_of_distribution`` added
    when the guard left a field out. Shared by the online path and app.rescore."""
    decision = decide_well(
        [probabilities[i] for i in usable], [ood_scores.get(i) for i in usable], policy
    )
    if decision.fields_in_distribution < len(usable):
        flags = sorted({*flags, "out_of_distribution"})
    return decision, flags


def _required(array: np.ndarray | None) -> np.ndarray:
    if array is None:  # prepare() fills these for every frame that passed QC
        raise AssertionError("a frame that passed QC has no features or mask")
    return array
