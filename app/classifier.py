"""Per-well classification: the shared image pipeline, then the ONNX model, then aggregation."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from hardware.microscope import AcquiredField
from models.inference import OnnxClassifier
from models.pipeline import PreparedImage, prepare


@dataclass
class FieldCall:
    """One field's outcome."""

    prepared: PreparedImage
    probability: float | None  # None when QC excluded the field


@dataclass
class WellCall:
    """A well's call: mean P(high) over the fields that passed QC."""

    label: str | None  # "high" | "low" | None (no field passed QC)
    probability: float | None
    fields: list[FieldCall]
    qc_flags: list[str]
    confluence_pct: float | None
    preprocessing_ms: float
    inference_ms: float

    @property
    def fields_used(self) -> int:
        return sum(1 for f in self.fields if f.probability is not None)


class WellClassifier:
    """Turns a well's acquired fields into a :class:`WellCall` with one batched inference."""

    def __init__(self, model: OnnxClassifier) -> None:
        self.model = model
        self.config = model.pipeline_config

    def classify(self, fields: list[AcquiredField]) -> WellCall:
        started = time.perf_counter()
        # Each frame is scaled by its own camera's bit depth, recorded when it was acquired.
        prepared = [prepare(f.image, self.config, bit_depth=f.bit_depth) for f in fields]
        preprocessing_ms = (time.perf_counter() - started) * 1000.0

        usable = [i for i, p in enumerate(prepared) if not p.qc.excluded]
        probabilities: dict[int, float] = {}
        inference_ms = 0.0
        if usable:
            features = np.stack([_required(prepared[i].features) for i in usable])
            masks = np.stack([_required(prepared[i].mask)[None] for i in usable]).astype(np.float32)
            started = time.perf_counter()
            probs, _ = self.model.predict(features, masks)  # the maps: only for overlays
            inference_ms = (time.perf_counter() - started) * 1000.0
            probabilities = {i: float(p) for i, p in zip(usable, probs, strict=True)}

        flags = sorted({flag for p in prepared for flag in p.qc.flags})
        confluences = [p.confluence_pct for p in prepared if p.confluence_pct is not None]
        probability = float(np.mean(list(probabilities.values()))) if probabilities else None
        label = None
        if probability is not None:
            label = "high" if probability >= self.model.threshold else "low"
        return WellCall(
            label=label,
            probability=probability,
            fields=[FieldCall(p, probabilities.get(i)) for i, p in enumerate(prepared)],
            qc_flags=flags,
            confluence_pct=float(np.mean(confluences)) if confluences else None,
            preprocessing_ms=preprocessing_ms,
            inference_ms=inference_ms,
        )


def _required(array: np.ndarray | None) -> np.ndarray:
    if array is None:  # prepare() fills these for every frame that passed QC
        raise AssertionError("a frame that passed QC has no features or mask")
    return array
