"""ONNX Runtime inference, CUDA when present, CPU otherwise, and honest about which one runs.

CUDA silently falling back to CPU is a known trap (a missing cuDNN makes onnxruntime-gpu log a
warning and carry on on the CPU), so the provider reported is the one the session actually
holds (``session.get_providers()``), not the one asked for.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from models import decision, ood
from models.calibration import IDENTITY, METADATA_KEY, Calibration
from models.decision import DecisionSet
from models.ood import OodGuard
from models.pipeline import FEATURE_VERSION, PipelineConfig

logger = logging.getLogger(__name__)

ProviderChoice = Literal["auto", "cpu", "cuda"]
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"
_Entry = TypeVar("_Entry")


class RuntimeUnavailableError(RuntimeError):
    """No onnxruntime installed, or the requested provider does not exist."""


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:  # neither extra installed
        raise RuntimeUnavailableError(
            "onnxruntime is not installed: install the 'cpu' extra (pip install 'mscreen[cpu]') "
            "or, on a CUDA machine, the 'gpu' extra (onnxruntime-gpu); never both"
        ) from exc
    return onnxruntime


def requested_providers(choice: ProviderChoice, available: Sequence[str]) -> list[str]:
    """Execution providers to ask for, in priority order."""
    if choice == "cpu":
        return [_CPU]
    if choice == "cuda":
        if _CUDA not in available:
            raise RuntimeUnavailableError(
                f"CUDA was requested but this onnxruntime offers only {list(available)}; "
                "install the 'gpu' extra (onnxruntime-gpu) in place of onnxruntime"
            )
        return [_CUDA, _CPU]
    return [_CUDA, _CPU] if _CUDA in available else [_CPU]


class OnnxClassifier:
    """A published SCNN, ready to score prepared images.

    Args:
        model_path: path to ``model.onnx``.
        providers: "auto" (CUDA if this onnxruntime has it), "cpu" or "cuda".
        intra_op_threads: CPU threads per inference call (0 = onnxruntime's default).
    """

    def __init__(
        self,
        model_path: Path,
        *,
        providers: ProviderChoice = "auto",
        intra_op_threads: int = 0,
    ) -> None:
        ort = _import_onnxruntime()
        self.model_path = Path(model_path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        asked = requested_providers(providers, ort.get_available_providers())
        self.session = ort.InferenceSession(
            str(self.model_path), sess_options=options, providers=asked
        )
        self.providers: list[str] = list(self.session.get_providers())
        if asked[0] != self.providers[0]:
            logger.warning(
                "asked onnxruntime for %s but the session runs on %s", asked[0], self.providers[0]
            )
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.metadata: dict[str, str] = dict(metadata)
        try:
            self.pipeline_config = PipelineConfig.from_dict(json.loads(metadata["pipeline_config"]))
        except KeyError:
            raise ValueError(
                f"{self.model_path} carries no 'pipeline_config' metadata; "
                "export it with models.onnx_export.export_onnx"
            ) from None
        trained_features = metadata.get("feature_version")
        if trained_features != FEATURE_VERSION:
            # The band filters/constants changed since this model was trained: its inputs would
            # no longer mean what they meant in training.
            raise ValueError(
                f"{self.model_path} was trained on pipeline feature version {trained_features!r} "
                f"but this code builds version {FEATURE_VERSION!r}; retrain or pin the code"
            )
        self.calibration: Calibration = self._read_calibration(metadata)
        # Both absent (every model exported before issue 15): every field is in distribution,
        # and only the "default" threshold policy without selective calls is available.
        self.decision_set: DecisionSet | None = self._read_entry(
            metadata, decision.METADATA_KEY, DecisionSet.from_dict
        )
        self.ood_guard: OodGuard | None = self._read_entry(
            metadata, ood.METADATA_KEY, OodGuard.from_dict
        )
        self._check_guard()
        self.threshold = float(metadata.get("threshold", "0.5"))
        self.name = metadata.get("model_name", self.model_path.parent.parent.name)
        self.version = metadata.get("model_version", self.model_path.parent.name)

    def _read_calibration(self, metadata: dict[str, str]) -> Calibration:
        """The calibration the model carries; none (every model exported before it) is identity.

        A present but unreadable key is an error, not identity: silently serving uncalibrated
        probabilities from a model that says it is calibrated would be wrong without a trace.
        """
        text = metadata.get(METADATA_KEY)
        if text is None:
            return IDENTITY
        try:
            return Calibration.from_dict(json.loads(text))
        except ValueError as exc:  # json.JSONDecodeError is a ValueError too
            raise ValueError(
                f"{self.model_path} has a malformed {METADATA_KEY!r} metadata entry: {exc}"
            ) from None

    def _read_entry(
        self, metadata: dict[str, str], key: str, parse: Callable[[Any], _Entry]
    ) -> _Entry | None:
        """An optional JSON metadata entry; present but unreadable is an error, as above."""
        text = metadata.get(key)
        if text is None:
            return None
        try:
            return parse(json.loads(text))
        except (ValueError, OverflowError) as exc:  # 1e400 in JSON: an int too big for float
            raise ValueError(
                f"{self.model_path} has a malformed {key!r} metadata entry: {exc}"
            ) from None

    def _check_guard(self) -> None:
        """A guard fitted on another band count would fail every scan: refuse it at load."""
        if self.ood_guard is None:
            return
        inputs = {i.name: i for i in self.session.get_inputs()}
        shape = inputs["features"].shape if "features" in inputs else []  # [N, B, H, W]
        bands = shape[1] if len(shape) == 4 and isinstance(shape[1], int) else None
        if bands is not None and self.ood_guard.dimension != ood.descriptor_length(bands):
            raise ValueError(
                f"{self.model_path} has a malformed {ood.METADATA_KEY!r} metadata entry: its "
                f"guard compares {self.ood_guard.dimension}-value descriptors, and the model's "
                f"{bands} bands give {ood.descriptor_length(bands)}"
            )

    @property
    def provider(self) -> str:
        """The execution provider that actually runs this model."""
        return self.providers[0]

    def predict(
        self, features: np.ndarray, mask: np.ndarray, *, calibrated: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Score a batch.

        Args:
            features: (N, B, H, W) float32.
            mask: (N, 1, H, W) float32 in [0, 1].
            calibrated: False returns the network's raw P(high), what a calibration is fitted
                on and what a PyTorch parity check compares against.

        Returns:
            ``probability`` (N,) float32 = calibrated P(high) (``self.calibration`` applied to
            the network's output; unchanged for an uncalibrated model), ``logit_map``
            (N, 1, h, w) float32, the network's own (uncalibrated) per-location logits.
        """
        logit_map, probability = self.session.run(
            ["logit_map", "probability"],
            {
                "features": np.ascontiguousarray(features, dtype=np.float32),
                "mask": np.ascontiguousarray(mask, dtype=np.float32),
            },
        )
        raw = np.asarray(probability, dtype=np.float32)
        scored = self.calibration.apply(raw) if calibrated else raw
        return np.asarray(scored, dtype=np.float32), np.asarray(logit_map, dtype=np.float32)
