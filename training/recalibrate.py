"""Re-calibrate a published model on a lab's own labelled plates, without retraining it.

A model's calibration and decision set were fitted on the plates it was trained with (for the
bundled simulated model: simulator seed 0). Another lab's plates (another culture protocol,
camera, prevalence; for the simulator another seed) are scored by the same network but its
probabilities need not mean the same there: hscnn-sim v2's identity calibration has an ECE of
0.036 on plates of other simulator seeds, one refitted on 10 of those plates 0.011. So the lab
re-fits both reliability parts on its own plates and publishes the result as a NEW version:

* the plates are split by plate (:func:`training.splits.grouped_split`) into a calibration part
  (A), on which :func:`models.calibration.fit_calibration` fits the map, and a decision-set part
  (B) that the map never saw, so the decision set is held out and a selective threshold chosen
  on it keeps its guarantee (:mod:`models.decision`);
* the network (the ONNX graph) is copied byte for byte, and only its metadata changes: the new
  calibration, the new decision set and the new ``model_version``. The out-of-distribution
  guard describes the training images, not the labels, so it is kept as it is;
* the card is the parent's with the new calibration and decision-set sections, and
  ``recalibrated_from`` naming the parent. The parent version is never written to.

The version directory is removed again if anything fails after it was created, and the card
(what makes a version "published", see :meth:`models.repository.ModelRepository.versions`) is
written last, after the new model was loaded back, so no reader ever sees a half-made version.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from models import decision, ood
from models.calibration import (
    IDENTITY,
    Calibration,
    expected_calibration_error,
    fit_calibration,
    reliability_table,
)
from models.calibration import METADATA_KEY as CALIBRATION_KEY
from models.decision import DecisionSet, card_section
from models.inference import OnnxClassifier
from models.metrics import json_safe
from models.onnx_export import write_metadata
from models.repository import CARD_FILENAME, MODEL_FILENAME, ModelArtifact, ModelRepository
from training.imagesets import ImageSet
from training.jobs import ECE_BINS
from training.publish import code_version
from training.splits import grouped_split

logger = logging.getLogger(__name__)

CalibrationChoice = Literal["auto", "identity", "temperature", "isotonic"]

BATCH = 32
"""Fields per onnxruntime call: bounded memory (32 x 6 x 220 x 300 float32 = 50 MB)."""

"""Thresholds and selective calls the card records, as training.jobs.Reliability.card does."""


def raw_probabilities(classifier: OnnxClassifier, data: ImageSet) -> np.ndarray:
    """The network's own P(high) for every field of ``data`` (no calibration), float64."""
    parts = [
        classifier.predict(
            data.features[start : start + BATCH],
            data.masks[start : start + BATCH],
            calibrated=False,
        )[0]
        for start in range(0, len(data), BATCH)
    ]
    return np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)


def _check_inputs(classifier: OnnxClassifier, data: ImageSet) -> None:
    """ValueError if ``data`` was not prepared for this network (bands, size): the caller
    prepares it with ``classifier.pipeline_config``, and another pipeline would fail inside
    onnxruntime with a message about tensor shapes."""
    shape = {i.name: i.shape for i in classifier.session.get_inputs()}.get("features", [])
    expected = tuple(shape[1:]) if len(shape) == 4 else ()
    got = tuple(data.features.shape[1:])
    if expected and all(isinstance(v, int) for v in expected) and expected != got:
        raise ValueError(
            f"the fields were prepared as {got} (bands, height, width) but the model takes "
            f"{expected}: prepare them with the model's own pipeline (classifier.pipeline_config)"
        )


def _plates(part: ImageSet) -> list[str]:
    return sorted(set(part.groups.tolist()))


def _split(data: ImageSet, calibration_share: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """(calibration part, decision-set part), by plate; ValueError when either cannot serve."""
    if not 0.0 < calibration_share < 1.0:
        raise ValueError(f"calibration_share must be within (0, 1), got {calibration_share}")
    plates = _plates(data)
    if len(plates) < 2:
        raise ValueError(
            f"recalibration needs labelled fields of at least 2 plates (one to fit the "
            f"calibration on, another for the held-out decision set); got {len(plates)} "
            f"({', '.join(plates) or 'none'})"
        )
    index_a, index_b = grouped_split(
        data.groups, (calibration_share, 1.0 - calibration_share), seed=seed
    )
    parts = data.subset(index_a), data.subset(index_b)
    for role, part in zip(("calibration", "decision-set"), parts, strict=True):
        if len(set(part.labels.tolist())) < 2:
            only = "high" if int(part.labels[0]) == 1 else "low"
            raise ValueError(
                f"the {role} part (plates {', '.join(_plates(part))}) holds {only} fields only; "
                "it needs both high and low ones: add plates or change the split seed"
            )
    return parts


def _write_text_atomically(path: Path, text: str) -> None:
    """Write next to ``path`` and move over it: a reader sees no file or the whole file."""
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def recalibrate(
    repository: ModelRepository,
    name: str,
    version: int | None,
    data: ImageSet,
    *,
    calibration_share: float = 0.5,
    seed: int = 0,
    source: str,
    method: CalibrationChoice = "auto",
) -> tuple[ModelArtifact, dict[str, Any]]:
    """Fit a new calibration and decision set of model ``name`` (``version``; None = newest) on
    labelled fields ``data`` and publish them as the next version of ``name``.

    Args:
        repository: where the model is and where the new version goes.
        name, version: the parent model version (never written to).
        data: labelled fields prepared with the parent's pipeline
            (``OnnxClassifier.pipeline_config``); ``data.groups`` are plates.
        calibration_share: share of the fields (whole plates) the calibration map is fitted
            on; the rest, never seen by the map, is the decision set.
        seed: decides which plates go to which part.
        source: where the plates come from, in words (recorded on the card).
        method: "auto" (the lowest cross-validated NLL, none included) or a method to force.
            NLL and ECE can disagree: with labels that contradict the images (a few % of any
            lab's wells) NLL prefers softening and may keep no calibration where isotonic would
            lower the ECE; a lab that judges by ECE can ask for "isotonic".

    Returns:
        The new version and its card.

    Raises:
        ModelNotFoundError: no such model or version.
        ValueError: data the caller can fix: fewer than 2 plates, a part with one class only,
            too few fields for a calibration (10) or a decision set (20), fields prepared for
            another pipeline.
    """
    parent = repository.get(name, version)
    parent_card = parent.card()
    classifier = OnnxClassifier(parent.model_path, providers="cpu")
    _check_inputs(classifier, data)
    part_a, part_b = _split(data, calibration_share, seed)
    raw_a, raw_b = raw_probabilities(classifier, part_a), raw_probabilities(classifier, part_b)
    plates_a, plates_b = _plates(part_a), _plates(part_b)
    try:
        calibration = fit_calibration(raw_a, part_a.labels, method=method, seed=seed)
    except ValueError as exc:
        raise ValueError(
            f"no calibration can be fitted on the {len(part_a)} fields of plates "
            f"{', '.join(plates_a)}: {exc}"
        ) from exc
    calibrated_b = calibration.apply(raw_b)
    decision_set = DecisionSet.of(
        calibrated_b,
        part_b.labels,
        source=f"{source}, held out from the recalibration: {', '.join(plates_b[:20])}",
        held_out=True,
    )  # ValueError (too few fields, one class) names what is wrong
    ece = {
        "ece_raw": expected_calibration_error(raw_b, part_b.labels, ECE_BINS),
        "ece_before": expected_calibration_error(
            classifier.calibration.apply(raw_b), part_b.labels, ECE_BINS
        ),
        "ece_after": expected_calibration_error(calibrated_b, part_b.labels, ECE_BINS),
    }
    new_version, directory = repository.new_version_dir(name)
    try:
        card = _publish(
            parent,
            parent_card,
            classifier,
            directory,
            new_version,
            calibration=calibration,
            decision_set=decision_set,
            calibration_section={
                **calibration.to_dict(),
                "fitted_on": plates_a,
                "fields_fitted": len(part_a),
                "evaluated_on": plates_b,
                "ece_bins": ECE_BINS,
                **ece,
                "reliability_after": [
                    b.to_dict() for b in reliability_table(calibrated_b, part_b.labels, ECE_BINS)
                ],
            },
            recalibration={
                "source": source,
                "plates": _plates(data),
                "fields": len(data),
                "excluded_by_qc": data.excluded,
                "calibration_share": calibration_share,
                "seed": seed,
                "metrics": "the 'metrics' section is the parent's (its test plates, its "
                "calibration); this version's held-out figures are in 'calibration'",
            },
        )
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    _ensure_triton_config(repository, name, classifier)
    logger.info(
        "recalibrated %s v%d as v%d: %s calibration on %s, ECE %.4f -> %.4f on %s",
        name,
        parent.version,
        new_version,
        calibration.method,
        ", ".join(plates_a),
        ece["ece_before"],
        ece["ece_after"],
        ", ".join(plates_b),
    )
    return repository.get(name, new_version), card


def _ensure_triton_config(
    repository: ModelRepository, name: str, classifier: OnnxClassifier
) -> None:
    """Write ``<name>/config.pbtxt`` if the repository lacks it (the graph, and therefore the
    config, is the parent's: an existing one is already right)."""
    if (repository.root / name / "config.pbtxt").is_file():
        return
    shape = {i.name: i.shape for i in classifier.session.get_inputs()}["features"]
    repository.write_triton_config(name, int(shape[1]), int(shape[2]), int(shape[3]))


def _publish(
    parent: ModelArtifact,
    parent_card: dict[str, Any],
    classifier: OnnxClassifier,
    directory: Path,
    version: int,
    *,
    calibration: Calibration,
    decision_set: DecisionSet,
    calibration_section: dict[str, Any],
    recalibration: dict[str, Any],
) -> dict[str, Any]:
    """Write ``directory``'s model (the parent's graph, new metadata), check it loads and reads
    back, then write its card (last: it is what publishes the version)."""
    model_path = directory / MODEL_FILENAME
    shutil.copyfile(parent.model_path, model_path)
    write_metadata(
        model_path,
        {
            CALIBRATION_KEY: (
                None
                if calibration.is_identity
                else json.dumps(calibration.to_dict(), allow_nan=False)
            ),
            decision.METADATA_KEY: json.dumps(decision_set.to_dict(), allow_nan=False),
            "model_version": str(version),
        },
    )
    loaded = OnnxClassifier(model_path, providers="cpu")
    problems = []
    if loaded.version != str(version):
        problems.append(f"model_version reads {loaded.version!r}")
    # An identity map is stored as no entry, so it reads back without its cv_nll scores.
    expected = IDENTITY if calibration.is_identity else calibration
    if loaded.calibration.to_dict() != expected.to_dict():
        problems.append("the calibration does not read back")
    if loaded.decision_set != decision_set:
        problems.append("the decision set does not read back")
    parent_guard = classifier.ood_guard.to_dict() if classifier.ood_guard is not None else None
    new_guard = loaded.ood_guard.to_dict() if loaded.ood_guard is not None else None
    if json.dumps(new_guard, sort_keys=True) != json.dumps(parent_guard, sort_keys=True):
        problems.append(f"the {ood.METADATA_KEY!r} guard changed")
    if problems:
        raise RuntimeError(f"the recalibrated model does not read back: {'; '.join(problems)}")
    card = {
        **parent_card,
        "version": version,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "code_version": code_version(),
        "recalibrated_from": {"name": parent.name, "version": parent.version},
        "recalibration": recalibration,
        "calibration": calibration_section,
        "decision_set": card_section(decision_set),
    }
    text = json.dumps(json_safe(card), indent=2, default=str, allow_nan=False)
    _write_text_atomically(directory / CARD_FILENAME, text + "\n")
    return card
