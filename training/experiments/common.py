"""What the experiments share: the network to train, simulated-plate settings, fit-and-predict."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from hardware.sim import SimulationConfig
from models.networks import MaskedClassifier, create_model
from models.pipeline import PipelineConfig
from training.imagesets import ImageSet, simulated_barcodes, simulated_image_set
from training.trainer import TrainConfig, jitter_bands, predict, train


@dataclass
class ModelSpec:
    """Which registered network to train, and its keyword options (e.g. ``base_width``)."""

    name: str = "scnn"
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``resnet18 (base_width 64)``-style name for tables and legends."""
        extras = ", ".join(f"{key} {value}" for key, value in sorted(self.options.items()))
        return f"{self.name} ({extras})" if extras else self.name


def train_config_for(
    base: TrainConfig, pipeline: PipelineConfig, in_bands: int | None = None
) -> TrainConfig:
    """``base`` jittering the intensity-like bands of ``pipeline``; ``in_bands`` = the feature
    band count of the data (needed for ``band_source="channels"`` with ``channels=None``)."""
    if in_bands is None:
        in_bands = len(pipeline.band_names(pipeline.channels or 2))
    return replace(base, intensity_bands=jitter_bands(pipeline, in_bands))


def fit_predict(
    spec: ModelSpec,
    train_set: ImageSet,
    val_set: ImageSet,
    test_set: ImageSet,
    config: TrainConfig,
    progress: bool,
    tta: bool = False,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Train ``spec`` (early stopping on ``val_set``); P(class 1) on ``test_set`` and run info."""
    model, info = fit(spec, train_set, val_set, config, progress)
    return predict(model, test_set, tta=tta), info


def fit(
    spec: ModelSpec,
    train_set: ImageSet,
    val_set: ImageSet,
    config: TrainConfig,
    progress: bool,
) -> tuple[MaskedClassifier, dict[str, Any]]:
    """Train ``spec`` (early stopping on ``val_set``): the trained model and run info."""
    model = create_model(spec.name, in_bands=int(train_set.features.shape[1]), **spec.options)
    result = train(model, train_set, val_set, config, progress=progress)
    return result.model, {
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "train_seconds": round(result.seconds, 1),
    }


@dataclass
class SimulatedSettings:
    """Simulated plates for (1)-(3); plates never straddle train / val / test."""

    train_plates: int = 3
    val_plates: int = 1
    test_plates: int = 1
    objective: str = "40x"
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=20, patience=6))
    workers: int | None = None
    wells: tuple[str, ...] | None = None  # only these wells of each plate (tests); None = all

    def barcodes(self, role: str, count: int) -> list[str]:
        return simulated_barcodes(role, self.simulation.seed, count)

    def images(
        self, role: str, count: int, pipeline: PipelineConfig | None, progress: bool
    ) -> ImageSet:
        return simulated_image_set(
            self.barcodes(role, count),
            sim=self.simulation,
            pipeline=pipeline or self.pipeline,
            objective=self.objective,
            wells=self.wells,
            workers=self.workers,
            progress=progress,
        )
