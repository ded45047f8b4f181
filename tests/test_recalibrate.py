"""Re-calibrating a published model on new labelled plates: a new version with the parent's
network, a calibration fitted on some plates and a decision set of the others; the parent
version untouched; clear errors for data that cannot support it; `mscreen models calibrate`."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from hardware.plate import SBS_96
from hardware.sim import SimulationConfig
from models.inference import OnnxClassifier
from models.repository import BUNDLED_REPOSITORY, ModelRepository
from training.imagesets import ImageSet, simulated_barcodes, simulated_image_set
from training.recalibrate import recalibrate

BUNDLED = BUNDLED_REPOSITORY / "hscnn-sim" / "2"  # the bundled version with an OOD guard


def _digests(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir())
        if p.is_file()
    }


@pytest.fixture()
def repo(tmp_path: Path) -> ModelRepository:
    """A repository holding the bundled hscnn-sim v2 as v2 (its own numbering kept)."""
    target = tmp_path / "repo" / "hscnn-sim"
    (target / "2").mkdir(parents=True)
    for item in BUNDLED.iterdir():
        shutil.copy2(item, target / "2" / item.name)
    shutil.copy2(BUNDLED.parent / "config.pbtxt", target / "config.pbtxt")
    return ModelRepository(tmp_path / "repo")


@pytest.fixture(scope="module")
def plates() -> ImageSet:
    """4 simulated plates of another simulator seed (3), 24 wells each, prepared with the
    bundled model's own pipeline."""
    pipeline = OnnxClassifier(BUNDLED / "model.onnx", providers="cpu").pipeline_config
    return simulated_image_set(
        simulated_barcodes("recal", 3, 4),
        sim=SimulationConfig(seed=3),
        pipeline=pipeline,
        wells=SBS_96.well_names[:24],
        workers=1,
        progress=False,
    )


def test_recalibrating_publishes_a_new_version_and_leaves_the_parent(
    repo: ModelRepository, plates: ImageSet
) -> None:
    parent = repo.get("hscnn-sim", 2)
    before = _digests(parent.directory)
    parent_model = OnnxClassifier(parent.model_path, providers="cpu")

    artifact, card = recalibrate(repo, "hscnn-sim", 2, plates, source="simulated seed 3")

    assert artifact.version == 3 and repo.versions("hscnn-sim") == [2, 3]
    assert _digests(parent.directory) == before  # the parent's files are untouched
    model = OnnxClassifier(artifact.model_path, providers="cpu")
    assert model.version == "3" and model.name == "hscnn-sim"
    # The same network: the raw output is bit for bit the parent's.
    raw_new, _ = model.predict(plates.features[:4], plates.masks[:4], calibrated=False)
    raw_old, _ = parent_model.predict(plates.features[:4], plates.masks[:4], calibrated=False)
    np.testing.assert_array_equal(raw_new, raw_old)
    # The guard is kept as it was.
    assert model.ood_guard is not None and parent_model.ood_guard is not None
    assert model.ood_guard.to_dict() == parent_model.ood_guard.to_dict()
    # The calibration and the decision set read back, and the card records both.
    section = card["calibration"]
    assert section["method"] == model.calibration.method
    assert section["method"] in ("identity", "temperature", "isotonic")
    assert "cv_nll" in section
    fitted_on, evaluated_on = set(section["fitted_on"]), set(section["evaluated_on"])
    assert fitted_on and evaluated_on and not fitted_on & evaluated_on
    assert fitted_on | evaluated_on == set(plates.groups.tolist())
    assert 0.0 <= section["ece_after"] <= 1.0 and 0.0 <= section["ece_before"] <= 1.0
    assert sum(b["count"] for b in section["reliability_after"]) == model.decision_set.size
    decision_set = model.decision_set
    assert decision_set is not None and decision_set.held_out
    part_b = np.isin(plates.groups, sorted(evaluated_on))
    assert decision_set.size == int(part_b.sum())
    assert list(decision_set.labels) == plates.labels[part_b].tolist()
    assert all(plate in decision_set.source for plate in evaluated_on)
    assert not any(plate in decision_set.source for plate in fitted_on)
    expected = model.calibration.apply(
        model.predict(plates.features[part_b], plates.masks[part_b], calibrated=False)[0]
    )
    np.testing.assert_allclose(decision_set.probabilities, expected, atol=1e-5)
    # The card: the parent's, with what changed.
    saved = artifact.card()
    assert saved["version"] == 3 and saved["recalibrated_from"] == {
        "name": "hscnn-sim",
        "version": 2,
    }
    assert saved["decision_set"]["fields"] == decision_set.size
    assert set(saved["decision_set"]["thresholds"]) == {
        "default",
        "youden",
        "sensitivity:0.95",
        "specificity:0.95",
    }
    assert set(saved["decision_set"]["selective"]) == {"0.02", "0.05", "0.1"}
    parent_card = parent.card()
    assert saved["ood"] == parent_card["ood"] and saved["pipeline"] == parent_card["pipeline"]
    assert repo.problem(artifact) is None


def test_recalibrating_the_newest_version_by_default(
    repo: ModelRepository, plates: ImageSet
) -> None:
    first, _ = recalibrate(repo, "hscnn-sim", None, plates, source="simulated", seed=1)
    second, card = recalibrate(repo, "hscnn-sim", None, plates, source="simulated", seed=1)
    assert (first.version, second.version) == (3, 4)
    assert card["recalibrated_from"]["version"] == 3
    assert OnnxClassifier(second.model_path, providers="cpu").version == "4"


def _one_plate(plates: ImageSet) -> ImageSet:
    return plates.subset(np.flatnonzero(plates.groups == plates.groups[0]))


def test_too_little_data_is_a_clear_error_and_publishes_nothing(
    repo: ModelRepository, plates: ImageSet
) -> None:
    with pytest.raises(ValueError, match="at least 2 plates"):
        recalibrate(repo, "hscnn-sim", 2, _one_plate(plates), source="one plate")
    one_class = plates.subset(np.arange(len(plates)))
    one_class.labels = np.ones_like(one_class.labels)
    with pytest.raises(ValueError, match="high fields only"):
        recalibrate(repo, "hscnn-sim", 2, one_class, source="all high")
    with pytest.raises(ValueError, match="calibration_share"):
        recalibrate(repo, "hscnn-sim", 2, plates, source="x", calibration_share=1.0)
    with pytest.raises(ValueError, match="pipeline"):
        narrow = plates.subset(np.arange(len(plates)))
        narrow.features = narrow.features[:, :3]
        recalibrate(repo, "hscnn-sim", 2, narrow, source="wrong pipeline")
    assert repo.versions("hscnn-sim") == [2]
    assert sorted(p.name for p in (repo.root / "hscnn-sim").iterdir()) == ["2", "config.pbtxt"]


def test_a_failure_after_the_version_dir_removes_it(
    repo: ModelRepository, plates: ImageSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.recalibrate as module

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(module, "write_metadata", broken)
    with pytest.raises(OSError, match="disk full"):
        recalibrate(repo, "hscnn-sim", 2, plates, source="simulated")
    assert repo.versions("hscnn-sim") == [2]
    assert not (repo.root / "hscnn-sim" / "3").exists()


def test_cli_calibrate_and_list(repo: ModelRepository) -> None:
    from typer.testing import CliRunner

    from cli.common import UserError
    from cli.main import cli

    runner = CliRunner()
    args = ["models", "calibrate", "hscnn-sim:2", "--repository", str(repo.root)]
    result = runner.invoke(
        cli, [*args, "--seed", "3", "--plates", "2", "--wells-per-plate", "24", "--workers", "1"]
    )
    assert result.exit_code == 0, result.output
    assert "published hscnn-sim v3" in result.output and "ECE" in result.output
    card = json.loads((repo.root / "hscnn-sim" / "3" / "model_card.json").read_text())
    assert card["recalibration"]["plates"] == simulated_barcodes("recal", 3, 2)
    listing = runner.invoke(cli, ["models", "list", "--repository", str(repo.root)])
    assert listing.exit_code == 0, listing.output
    lines = listing.output.strip().splitlines()
    assert lines[0].startswith("hscnn-sim:2") and "guard yes" in lines[0]
    assert lines[1].startswith("hscnn-sim:3") and "re-calibrated from v2" in lines[1]
    missing = runner.invoke(cli, ["models", "calibrate", "nope:1", "--repository", str(repo.root)])
    assert missing.exit_code != 0
    bad = runner.invoke(cli, ["models", "calibrate", "hscnn-sim:x", "--repository", str(repo.root)])
    assert isinstance(bad.exception, UserError)
