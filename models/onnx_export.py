"""ONNX export with ``onnx.checker`` and a PyTorch-vs-onnxruntime parity check (needs `train`)."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from models.calibration import METADATA_KEY, Calibration
from models.decision import METADATA_KEY as DECISION_SET_KEY
from models.inference import OnnxClassifier
from models.pipeline import FEATURE_VERSION, PipelineConfig

logger = logging.getLogger(__name__)

OPSET = 17
PARITY_TOLERANCE = 1e-4


@dataclass(frozen=True)
class ParityReport:
    """PyTorch vs onnxruntime (CPU) on the same fixed input."""

    max_abs_diff: float
    labels_identical: bool
    batch: int
    tolerance: float = PARITY_TOLERANCE

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance and self.labels_identical

    def to_dict(self) -> dict[str, object]:
        return {
            "max_abs_diff": self.max_abs_diff,
            "labels_identical": self.labels_identical,
            "batch": self.batch,
            "tolerance": self.tolerance,
            "passed": self.passed,
        }


def fixed_parity_input(
    in_bands: int, height: int, width: int, batch: int = 4, seed: int = 1234
) -> tuple[np.ndarray, np.ndarray]:
    """A reproducible (features, mask) batch for parity checks."""
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((batch, in_bands, height, width)).astype(np.float32)
    mask = (rng.random((batch, 1, height, width)) > 0.5).astype(np.float32)
    return features, mask


def export_onnx(
    model: nn.Module,
    path: Path,
    pipeline: PipelineConfig,
    *,
    in_bands: int,
    metadata: dict[str, str] | None = None,
    threshold: float = 0.5,
) -> Path:
    """Export ``model`` (eval mode) with a dynamic batch axis and check the graph.

    The pipeline config travels in the ONNX metadata so serving rebuilds the exact inputs.
    """
    model = model.cpu().eval()  # a model trained on a GPU is exported (and checked) on the CPU
    features, mask = fixed_parity_input(in_bands, pipeline.height, pipeline.width, batch=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # torch >= 2.9 prefers the dynamo exporter, which needs onnxscript; the TorchScript
        # exporter is still supported and handles this plain CNN exactly.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.from_numpy(features), torch.from_numpy(mask)),
            str(path),
            input_names=["features", "mask"],
            output_names=["logit_map", "probability"],
            dynamic_axes={
                "features": {0: "batch"},
                "mask": {0: "batch"},
                "logit_map": {0: "batch"},
                "probability": {0: "batch"},
            },
            opset_version=OPSET,
            dynamo=False,
        )
    graph = onnx.load(str(path))
    entries = {
        "pipeline_config": json.dumps(pipeline.to_dict()),
        "feature_version": FEATURE_VERSION,
        "threshold": str(threshold),
    }
    entries.update(metadata or {})
    del graph.metadata_props[:]
    for key, value in entries.items():
        graph.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.checker.check_model(graph, full_check=True)
    onnx.save(graph, str(path))
    logger.info("exported %s (%d bytes)", path, path.stat().st_size)
    return path


def write_calibration(model_path: Path, calibration: Calibration) -> Path:
    """Store ``calibration`` in an exported model's metadata (key ``calibration``), in place.

    An identity calibration removes the entry (so the model reads exactly as an uncalibrated
    one); see :func:`write_metadata` for how the file is replaced. The model's decision set, if
    any, is removed too: its probabilities were calibrated by the old map, so thresholds chosen
    on them would be wrong under the new one (refit it on held-out fields).
    """
    value = None if calibration.is_identity else json.dumps(calibration.to_dict(), allow_nan=False)
    write_metadata(model_path, {METADATA_KEY: value, DECISION_SET_KEY: None})
    logger.info("wrote %s calibration into %s", calibration.method, model_path)
    return model_path


def write_metadata(model_path: Path, entries: dict[str, str | None]) -> Path:
    """Set (or, for None, remove) metadata entries of an exported model, in place.

    The graph is untouched and other entries are kept. The new file is written next to the old
    one and moved over it with ``os.replace``, so a crash or a concurrent reader sees either the
    old model or the new one, never half a file.
    """
    model_path = Path(model_path)
    graph = onnx.load(str(model_path))
    kept = [entry for entry in graph.metadata_props if entry.key not in entries]
    del graph.metadata_props[:]
    graph.metadata_props.extend(kept)
    for key, value in entries.items():
        if value is not None:
            graph.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.checker.check_model(graph)
    handle, temp_name = tempfile.mkstemp(
        prefix=f".{model_path.name}.", suffix=".tmp", dir=model_path.parent
    )
    os.close(handle)
    try:
        onnx.save(graph, temp_name)
        os.replace(temp_name, model_path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return model_path


def check_parity(
    model: nn.Module, path: Path, *, in_bands: int, height: int, width: int, batch: int = 4
) -> ParityReport:
    """Run the same fixed batch through PyTorch and onnxruntime (CPU) and compare."""
    features, mask = fixed_parity_input(in_bands, height, width, batch=batch)
    with torch.no_grad():
        torch_map, torch_prob = model.cpu().eval()(
            torch.from_numpy(features), torch.from_numpy(mask)
        )
    classifier = OnnxClassifier(path, providers="cpu")
    onnx_prob, onnx_map = classifier.predict(features, mask, calibrated=False)  # the network itself
    diff = max(
        float(np.max(np.abs(torch_prob.numpy() - onnx_prob))),
        float(np.max(np.abs(torch_map.numpy() - onnx_map))),
    )
    threshold = classifier.threshold
    labels_identical = bool(np.array_equal(torch_prob.numpy() >= threshold, onnx_prob >= threshold))
    return ParityReport(max_abs_diff=diff, labels_identical=labels_identical, batch=batch)
