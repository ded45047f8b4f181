"""Training jobs the CLI runs: train on simulated plates, evaluate on held-out plates, publish."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from hardware.simulation import SimulationConfig
from models.metrics import evaluate as evaluate_scores
from models.networks import MaskedClassifier, create_model
from models.pipeline import PipelineConfig
from models.repository import ModelArtifact, ModelRepository
from training.data import ImageSet, simulated_image_set
from training.publish import publish
from training.trainer import TrainConfig, predict, seed_everything, train

logger = logging.getLogger(__name__)


@dataclass
class SimulatedTrainingJob:
    """Train an SCNN on freshly simulated plates; plates never straddle train/val/test."""

    repository: Path
    name: str = "hscnn-sim"
    architecture: str = "scnn"
    train_plates: int = 4
    val_plates: int = 1
    test_plates: int = 2
    objective: str = "40x"
    fields_per_well: int = 1
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    train_config: TrainConfig = field(default_factory=TrainConfig)
    workers: int | None = None
    progress: bool = True

    def barcodes(self, role: str, count: int) -> list[str]:
        # Seeded names: a different seed gives different plates; roles never share a plate.
        return [f"SIM-{role.upper()}-{self.simulation.seed}-{i:03d}" for i in range(count)]

    def _images(self, role: str, count: int) -> ImageSet:
        return simulated_image_set(
            self.barcodes(role, count),
            sim=self.simulation,
            pipeline=self.pipeline,
            objective=self.objective,
            fields_per_well=self.fields_per_well,
            workers=self.workers,
            progress=self.progress,
        )

    def run(self) -> tuple[ModelArtifact, dict[str, object]]:
        seed_everything(self.train_config.seed)
        train_set = self._images("train", self.train_plates)
        val_set = self._images("val", self.val_plates)
        test_set = self._images("test", self.test_plates)
        in_bands = int(train_set.features.shape[1])
        model = create_model(self.architecture, in_bands=in_bands)
        result = train(model, train_set, val_set, self.train_config, progress=self.progress)
        test_metrics = evaluate(result.model, test_set)
        card: dict[str, object] = {
            "intended_use": (
                "Demonstration and integration testing only: trained on SIMULATED phase-contrast "
                "plates from hardware.simulation, not on real MSC images. Do not use for real "
                "cell-therapy decisions."
            ),
            "data": {
                "source": "simulated",
                "simulation": asdict(self.simulation) | {"plate": "SBS-96"},
                "objective": self.objective,
                "fields_per_well": self.fields_per_well,
                "train_plates": self.barcodes("train", self.train_plates),
                "val_plates": self.barcodes("val", self.val_plates),
                "test_plates": self.barcodes("test", self.test_plates),
                "images": {"train": len(train_set), "val": len(val_set), "test": len(test_set)},
                "excluded_by_qc": train_set.excluded + val_set.excluded + test_set.excluded,
            },
            "training": result.summary(),
            "metrics": {"test": test_metrics},
        }
        artifact = publish(
            result.model,
            repository=ModelRepository(self.repository),
            name=self.name,
            architecture=self.architecture,
            pipeline=self.pipeline,
            in_bands=in_bands,
            card=card,
        )
        return artifact, card


def evaluate(model: MaskedClassifier, data: ImageSet, threshold: float = 0.5) -> dict[str, object]:
    """Per-image metrics, 95 % bootstrap intervals and ROC points on ``data``."""
    report = evaluate_scores(data.labels, predict(model, data), threshold=threshold)
    report["unit"] = "image (one field per well: image == well)"
    report["positive_rate"] = float(np.mean(data.labels))
    return report
