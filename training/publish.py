"""Publish a trained network: ONNX export, parity check, model card, Triton layout."""

from __future__ import annotations

import json
import logging
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import models
from models.metrics import json_safe
from models.networks import MaskedClassifier, architecture_of, parameter_count
from models.onnx_export import check_parity, export_onnx
from models.pipeline import FEATURE_VERSION, PipelineConfig
from models.repository import CARD_FILENAME, MODEL_FILENAME, ModelArtifact, ModelRepository

logger = logging.getLogger(__name__)


def code_version() -> str:
    """The git commit of the code that trained the model, or the package version."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(models.__file__).resolve().parent,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(models.__file__).resolve().parent,
        ).stdout.strip()
        return f"git:{sha}{'+dirty' if dirty else ''}"
    except (OSError, subprocess.CalledProcessError):
        from importlib.metadata import version

        return f"mscreen {version('mscreen')}"


def publish(
    model: MaskedClassifier,
    *,
    repository: ModelRepository,
    name: str,
    architecture: str,
    pipeline: PipelineConfig,
    in_bands: int,
    card: dict[str, Any],
    threshold: float = 0.5,
    metadata: dict[str, str] | None = None,
) -> ModelArtifact:
    """Write ``<name>/<next version>/`` with model.onnx and model_card.json.

    The card passed in holds data provenance, training config and metrics; this adds the
    architecture, preprocessing, parity result, date and code version. ``metadata``: further
    ONNX metadata entries (calibration, decision set, OOD guard; see training.jobs.Reliability).
    """
    version, directory = repository.new_version_dir(name)
    model_path = directory / MODEL_FILENAME
    export_onnx(
        model,
        model_path,
        pipeline,
        in_bands=in_bands,
        threshold=threshold,
        metadata={
            "model_name": name,
            "model_version": str(version),
            "architecture": architecture,
            **(metadata or {}),
        },
    )
    parity = check_parity(
        model, model_path, in_bands=in_bands, height=pipeline.height, width=pipeline.width
    )
    if not parity.passed:
        logger.error("ONNX parity check failed: %s", parity.to_dict())
    full_card = {
        "name": name,
        "version": version,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "code_version": code_version(),
        "python": platform.python_version(),
        "architecture": {
            "name": architecture,
            "config": architecture_of(model),
            "parameters": parameter_count(model),
        },
        "inputs": {
            "features": ["batch", in_bands, pipeline.height, pipeline.width],
            "mask": ["batch", 1, pipeline.height, pipeline.width],
        },
        "threshold": threshold,
        "pipeline": pipeline.to_dict(),
        "feature_version": FEATURE_VERSION,
        "parity": parity.to_dict(),
        **card,
    }
    card_text = json.dumps(json_safe(full_card), indent=2, default=str, allow_nan=False)
    (directory / CARD_FILENAME).write_text(card_text + "\n")
    repository.write_triton_config(name, in_bands, pipeline.height, pipeline.width)
    logger.info("published %s v%d to %s (parity %s)", name, version, directory, parity.passed)
    return repository.get(name, version)
