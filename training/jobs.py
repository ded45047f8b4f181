"""Training jobs `mscreen train` runs: prepare data from one of three sources (freshly simulated
plates, labelled plates in the database, an ImageFolder tree), split it so no plate or source
field straddles train / validation / test, train, evaluate the held-out part, publish."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from hardware.sim import SimulationConfig
from models import decision, ood
from models.calibration import (
    IDENTITY,
    Calibration,
    expected_calibration_error,
    fit_calibration,
    reliability_table,
)
from models.calibration import METADATA_KEY as CALIBRATION_KEY
from models.decision import DecisionSet
from models.metrics import evaluate as evaluate_scores
from models.networks import MaskedClassifier, create_model
from models.ood import OodGuard, descriptors, fit_ood_guard
from models.pipeline import PipelineConfig
from models.repository import ModelArtifact, ModelRepository
from models.training_spec import TrainingSpec
from training.imagesets import (
    CELLTYPE_GROUP_PATTERN,
    ImageSet,
    database_image_set,
    folder_image_info,
    image_folder_set,
    simulated_barcodes,
    simulated_image_set,
)
from training.publish import publish
from training.splits import grouped_split
from training.trainer import (
    TrainConfig,
    check_architecture,
    check_device,
    jitter_bands,
    predict,
    seed_everything,
    train,
)

logger = logging.getLogger(__name__)

# The pipeline new models are trained with unless told otherwise: the paper's filter-bank bands
# WITHOUT spatial-spectral neighbours (ws=1). The HSM ablation (docs/experiments.md) found that
# the SSNs never helped: on simulated plates no-SSN had the best accuracy of a 9-point WS x K
# grid, on real brightfield cells it was equal (112 px) or better (160 px, McNemar p = 0.04),
# with equal AUC everywhere; and the SSN step is about 3/4 of the CPU preprocessing time.
# PipelineConfig() itself stays the paper's definition (ws=9, k=12); models that were trained
# with SSNs (the bundled hscnn-sim v1) keep them, since serving follows each model's card.
TRAINING_PIPELINE = PipelineConfig(ws=1)


@dataclass
class SimulatedTrainingJob:
    """Train an SCNN on freshly simulated plates; plates never straddle train/val/test."""

    repository: Path
    name: str = "hscnn-sim"
    architecture: str = "scnn"
    train_plates: int = 4
    val_plates: int = 1
    test_plates: int = 2
    # Plates for the decision set (models.decision): never trained, stopped or calibrated on.
    calibration_plates: int = 2
    objective: str = "40x"
    fields_per_well: int = 1
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    pipeline: PipelineConfig = field(default_factory=lambda: TRAINING_PIPELINE)
    train_config: TrainConfig = field(default_factory=TrainConfig)
    workers: int | None = None
    progress: bool = True

    def barcodes(self, role: str, count: int) -> list[str]:
        return simulated_barcodes(role, self.simulation.seed, count)

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
        data = TrainingData(
            train=self._images("train", self.train_plates),
            val=self._images("val", self.val_plates),
            test=self._images("test", self.test_plates),
            calibration=(
                self._images("cal", self.calibration_plates) if self.calibration_plates else None
            ),
            provenance={
                "source": "simulated",
                "simulation": asdict(self.simulation) | {"plate": "SBS-96"},
                "objective": self.objective,
                "fields_per_well": self.fields_per_well,
                "train_plates": self.barcodes("train", self.train_plates),
                "val_plates": self.barcodes("val", self.val_plates),
                "test_plates": self.barcodes("test", self.test_plates),
                "calibration_plates": self.barcodes("cal", self.calibration_plates),
            },
            intended_use=SIMULATED_USE,
        )
        return train_and_publish(
            data,
            repository=self.repository,
            name=self.name,
            architecture=self.architecture,
            pipeline=self.pipeline,
            train_config=self.train_config,
            progress=self.progress,
        )


SIMULATED_USE = (
    "Demonstration and integration testing only: trained on SIMULATED phase-contrast "
    "plates from hardware.sim, not on real MSC images. Do not use for real "
    "cell-therapy decisions."
)


@dataclass
class TrainingData:
    """Prepared train / validation / test images and where they came from (for the card)."""

    train: ImageSet
    val: ImageSet
    test: ImageSet
    provenance: dict[str, object]
    intended_use: str
    # Held-out fields for the decision set; None: the validation split stands in.
    calibration: ImageSet | None = None


def split_by_group(
    data: ImageSet, *, seed: int, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
) -> tuple[ImageSet, ImageSet, ImageSet]:
    """Train / validation / test parts in which no group (plate, source field) straddles."""
    groups = len(set(data.groups.tolist()))
    if groups < 3:
        raise ValueError(
            f"a grouped train/validation/test split needs at least 3 groups; the data has "
            f"{groups} ({sorted(set(data.groups.tolist()))})"
        )
    train_index, val_index, test_index = grouped_split(data.groups, fractions, seed=seed)
    return data.subset(train_index), data.subset(val_index), data.subset(test_index)


def _split_provenance(parts: tuple[ImageSet, ImageSet, ImageSet]) -> dict[str, object]:
    return {
        f"{role}_groups": sorted(set(part.groups.tolist()))
        for role, part in zip(("train", "val", "test"), parts, strict=True)
    }


def database_training_data(
    session_factory: Callable[[], Any],
    pipeline: PipelineConfig,
    *,
    barcodes: Sequence[str] | None = None,
    bit_depth: int | None = None,
    seed: int = 0,
    workers: int | None = 1,
    progress: bool = True,
) -> TrainingData:
    """Stored images of plates with FCT labels, split by plate (a plate never straddles).

    ``bit_depth``: the camera's significant bits, as serving uses them
    (``app.runtime.serving_bit_depth``); None = 16 for 16-bit frames.
    """
    data = database_image_set(
        session_factory,
        pipeline,
        barcodes=barcodes,
        bit_depth=bit_depth,
        workers=workers,
        progress=progress,
    )
    parts = split_by_group(data, seed=seed)
    return TrainingData(
        *parts,
        provenance={
            "source": "database",
            "plates": sorted(set(data.groups.tolist())),
            "label": "FCT: high iff CD73+ and CD90+ both > 95 %",
            "group": "plate barcode",
            "bit_depth": bit_depth,
            **_split_provenance(parts),
        },
        intended_use=(
            "Trained on the labelled plates named in data.plates; valid for images taken the "
            "same way (objective, camera, culture protocol). Check its held-out metrics."
        ),
    )


def folder_pipeline(
    root: Path, pipeline: PipelineConfig, channels: Sequence[int] | None = None
) -> PipelineConfig:
    """``pipeline`` for the files under ``root``: one band per acquired channel
    (``band_source="channels"``) when the chosen channels (default: all of the first file's) are
    two or more and not colour; otherwise ``pipeline`` unchanged (grey or colour frames)."""
    info = folder_image_info(root)
    count = len(channels) if channels is not None else info.channels
    if count >= 2 and not info.colour:
        logger.info("%s: %d acquired channels, one band each", root, count)
        return replace(pipeline, band_source="channels", channels=count)
    return pipeline


def folder_training_data(
    root: Path,
    pipeline: PipelineConfig,
    *,
    group_by: str | None = None,
    bit_depth: int | None = None,
    channels: Sequence[int] | None = None,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
) -> TrainingData:
    """An ImageFolder tree (two class subfolders), split by ``group_by`` groups.

    ``bit_depth`` / ``channels``: as :func:`training.imagesets.image_folder_set`.
    """
    data = image_folder_set(
        root,
        pipeline,
        group_by=group_by,
        bit_depth=bit_depth,
        channels=channels,
        workers=workers,
        progress=progress,
    )
    parts = split_by_group(data, seed=seed)
    return TrainingData(
        *parts,
        provenance={
            "source": "image_folder",
            "root": str(root),
            "class_names": list(data.class_names),
            "label_1_means": data.class_names[1],
            "group_pattern": group_by,
            "bit_depth": data.bit_depth,
            "bit_depth_source": data.bit_depth_source,
            "channels": list(channels) if channels is not None else None,
            **_split_provenance(parts),
        },
        intended_use=(
            f"Trained on the image folder {root}: its probability is P({data.class_names[1]}) "
            f"against {data.class_names[0]}, not MSC functionality unless those are the classes."
        ),
    )


def train_and_publish(
    data: TrainingData,
    *,
    repository: Path,
    name: str,
    architecture: str = "scnn",
    pipeline: PipelineConfig,
    train_config: TrainConfig,
    progress: bool = True,
) -> tuple[ModelArtifact, dict[str, object]]:
    """Train ``architecture`` on ``data``, evaluate the held-out part, publish ONNX + card."""
    seed_everything(train_config.seed)
    in_bands = int(data.train.features.shape[1])
    if not train_config.intensity_bands:  # jitter the intensity-like bands of this pipeline
        train_config = replace(train_config, intensity_bands=jitter_bands(pipeline, in_bands))
    model = create_model(architecture, in_bands=in_bands)
    result = train(model, data.train, data.val, train_config, progress=progress)
    reliability = fit_reliability(result.model, data)
    test_metrics = evaluate_model_on(result.model, data.test, calibration=reliability.calibration)
    card: dict[str, object] = {
        "intended_use": data.intended_use,
        "data": {
            **data.provenance,
            "images": {
                "train": len(data.train),
                "val": len(data.val),
                "test": len(data.test),
                "calibration": len(data.calibration) if data.calibration is not None else 0,
            },
            "excluded_by_qc": data.train.excluded
            + data.val.excluded
            + data.test.excluded
            + (data.calibration.excluded if data.calibration is not None else 0),
        },
        "training": result.summary(),
        "metrics": {"test": test_metrics},
        **reliability.card(result.model, data.test),
    }
    artifact = publish(
        result.model,
        repository=ModelRepository(repository),
        name=name,
        architecture=architecture,
        pipeline=pipeline,
        in_bands=in_bands,
        card=card,
        metadata=reliability.metadata(),
    )
    return artifact, card


@dataclass(frozen=True)
class Reliability:
    """What a trained model carries besides its weights (issue 15): its calibration (fitted on
    the validation split), its decision set (calibrated probabilities of held-out fields) and
    its out-of-distribution guard (fitted on the training fields).

    A part the data cannot support (too few fields, one class only) is None, and ``skipped``
    says why: the model is then served without it (identity calibration, no selective calls
    or data-driven thresholds, no guard), as every model before issue 15 was.
    """

    calibration: Calibration
    decision_set: DecisionSet | None
    ood_guard: OodGuard | None
    skipped: dict[str, str]

    def metadata(self) -> dict[str, str]:
        """ONNX metadata entries (read back by models.inference.OnnxClassifier)."""
        entries = {}
        if self.decision_set is not None:
            entries[decision.METADATA_KEY] = json.dumps(self.decision_set.to_dict())
        if self.ood_guard is not None:
            entries[ood.METADATA_KEY] = json.dumps(self.ood_guard.to_dict(), allow_nan=False)
        if not self.calibration.is_identity:
            entries[CALIBRATION_KEY] = json.dumps(self.calibration.to_dict(), allow_nan=False)
        return entries

    def card(self, model: MaskedClassifier, test: ImageSet) -> dict[str, object]:
        """The card's "calibration", "decision_set" and "ood" sections, with the test split's
        ECE before and after calibration, its reliability table, the thresholds each policy
        picks and the guard's false-positive rate on the test fields."""
        raw = predict(model, test)
        calibrated = self.calibration.apply(raw)
        sections: dict[str, object] = {
            "calibration": {
                **self.calibration.to_dict(),
                "fitted_on": "validation split",
                "ece_bins": ECE_BINS,
                "ece_test_raw": expected_calibration_error(raw, test.labels, ECE_BINS),
                "ece_test_calibrated": expected_calibration_error(
                    calibrated, test.labels, ECE_BINS
                ),
                "reliability_test": [
                    b.to_dict() for b in reliability_table(calibrated, test.labels, ECE_BINS)
                ],
                **_skipped(self.skipped, "calibration"),
            },
            "decision_set": _skipped(self.skipped, "decision_set"),
            "ood": _skipped(self.skipped, "ood"),
        }
        if self.decision_set is not None:
            sections["decision_set"] = decision.card_section(self.decision_set)
        if self.ood_guard is not None:
            test_scores = self.ood_guard.score(descriptors(test.features, test.masks))
            sections["ood"] = {
                "method": "Mahalanobis distance of field descriptors (models.ood)",
                "descriptor": self.ood_guard.version,
                "threshold": self.ood_guard.threshold,
                "quantile": self.ood_guard.quantile,
                "fields_fitted": self.ood_guard.n_train,
                "test_flagged": float(np.mean(self.ood_guard.is_out(test_scores))),
            }
        return sections


def _skipped(skipped: dict[str, str], part: str) -> dict[str, str]:
    return {"skipped": skipped[part]} if part in skipped else {}


ECE_BINS = 15


def fit_reliability(model: MaskedClassifier, data: TrainingData) -> Reliability:
    """Calibrate on the validation split, score the decision set, fit the OOD guard.

    The decision set is the calibration plates when the data has them (never trained, stopped
    or calibrated on: the selective guarantee holds), else the validation split (marked
    ``held_out=False``: it also chose the epoch and fitted the calibration).
    """
    skipped: dict[str, str] = {}
    calibration = IDENTITY
    try:
        calibration = fit_calibration(predict(model, data.val), data.val.labels, method="auto")
    except ValueError as exc:
        skipped["calibration"] = f"not fitted on {len(data.val)} validation fields: {exc}"
    held_out = data.calibration is not None
    fields = data.calibration if data.calibration is not None else data.val
    source = (
        "calibration plates (held out from training, early stopping and calibration)"
        if held_out
        else "validation split (also used for early stopping and calibration)"
    )
    decision_set = None
    try:
        decision_set = DecisionSet.of(
            calibration.apply(predict(model, fields)),
            fields.labels,
            source=f"{source}: {', '.join(sorted(set(fields.groups.tolist()))[:20])}",
            held_out=held_out,
        )
    except ValueError as exc:
        skipped["decision_set"] = str(exc)
    guard = None
    try:
        # Folds by plate, so the threshold covers plate-to-plate variation; one plate: by field.
        groups = data.train.groups.tolist() if len(set(data.train.groups.tolist())) > 1 else None
        guard = fit_ood_guard(data.train.features, data.train.masks, groups=groups)
    except ValueError as exc:
        skipped["ood"] = f"not fitted on {len(data.train)} training fields: {exc}"
    for part, why in skipped.items():
        logger.warning("the model is published without its %s: %s", part, why)
    logger.info(
        "calibration %s; decision set %s fields; OOD threshold %s",
        calibration.method,
        decision_set.size if decision_set is not None else "no",
        f"{guard.threshold:.2f}" if guard is not None else "none",
    )
    return Reliability(calibration, decision_set, guard, skipped)


def evaluate_model_on(
    model: MaskedClassifier,
    data: ImageSet,
    threshold: float = 0.5,
    *,
    calibration: Calibration = IDENTITY,
) -> dict[str, object]:
    """Per-image metrics, 95 % bootstrap intervals and ROC points on ``data``, of the
    probabilities the service serves (``calibration`` applied to the network's)."""
    probabilities = calibration.apply(predict(model, data))
    report = evaluate_scores(data.labels, probabilities, threshold=threshold)
    report["unit"] = "image (one stored field; simulated plates hold one field per well)"
    report["positive_rate"] = float(np.mean(data.labels))
    return report


def check_spec(spec: TrainingSpec) -> None:
    """ValueError naming the setting if ``spec`` asks for a network or device not here."""
    check_architecture(spec.architecture)
    check_device(spec.device)


def run_training(
    spec: TrainingSpec,
    *,
    repository: Path,
    session_factory: Callable[[], Any] | None = None,
    bit_depth: int | None = None,
    progress: bool = True,
) -> tuple[ModelArtifact, dict[str, object]]:
    """Prepare the data ``spec`` names, train, evaluate the held-out part, publish.

    ``session_factory`` (source "database"): sessions on the database whose labelled plates to
    train on; ``bit_depth``: those frames' significant bits, as serving prepares them.
    Raises ValueError for anything the caller can fix (too few plates, no labels, no folder).
    """
    pipeline = replace(TRAINING_PIPELINE, ws=spec.ws, k=spec.k)  # validated: ValueError
    train_config = TrainConfig(epochs=spec.epochs, seed=spec.seed, device=spec.device)
    if spec.source == "simulated":
        return SimulatedTrainingJob(
            repository=repository,
            name=spec.name,
            architecture=spec.architecture,
            pipeline=pipeline,
            train_plates=spec.train_plates,
            val_plates=spec.val_plates,
            test_plates=spec.test_plates,
            calibration_plates=spec.calibration_plates,
            simulation=SimulationConfig(seed=spec.seed, difficulty=spec.difficulty),
            train_config=train_config,
            progress=progress,
        ).run()
    if spec.source == "database":
        if session_factory is None:
            raise ValueError("source 'database' needs the service's database")
        data = database_training_data(
            session_factory,
            pipeline,
            barcodes=spec.plates,
            bit_depth=bit_depth,
            seed=spec.seed,
            progress=progress,
        )
    else:
        if spec.data is None:
            raise ValueError("--source folder needs --data DIR")
        if spec.size is not None:
            pipeline = replace(pipeline, height=spec.size, width=spec.size)
        pattern = CELLTYPE_GROUP_PATTERN if spec.group_by == "celltype" else spec.group_by
        pipeline = folder_pipeline(spec.data, pipeline, spec.channels)
        data = folder_training_data(
            spec.data,
            pipeline,
            group_by=pattern,
            bit_depth=spec.bit_depth,
            channels=spec.channels,
            seed=spec.seed,
            progress=progress,
        )
    return train_and_publish(
        data,
        repository=repository,
        name=spec.name,
        architecture=spec.architecture,
        pipeline=pipeline,
        train_config=train_config,
        progress=progress,
    )
