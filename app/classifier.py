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
        """Prepare every field with the model's pipeline, infer once, aggregate.

        Raises:
            ValueError: the fields' channels do not fit the model (see :meth:`check_channels`).
        """
        for f in fields:
            self.check_channels(f)
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


def _required(array: np.ndarray | None) -> np.ndarray:
    if array is None:  # prepare() fills these for every frame that passed QC
        raise AssertionError("a frame that passed QC has no features or mask")
    return array
