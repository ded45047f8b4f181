"""Training: two epochs on simulated wells, published as a loadable, parity-checked artifact."""

import json

import numpy as np
import pytest

from hardware.sim import SimulationConfig, plate_truth
from models.inference import OnnxClassifier
from models.networks import create_model
from models.pipeline import PipelineConfig, prepare
from models.repository import ModelRepository
from training.imagesets import simulated_image_set
from training.publish import publish
from training.trainer import TrainConfig, predict, seed_everything, train

WELLS = ["A1", "A2", "B3", "C4", "D5", "E6", "F7", "G8"]


@pytest.fixture(scope="module")
def tiny_sets():
    sim = SimulationConfig(seed=3, overexposure_rate=0.0)
    pipeline = PipelineConfig()
    train_set = simulated_image_set(
        ["T-TRAIN"], sim=sim, pipeline=pipeline, wells=WELLS, workers=1, progress=False
    )
    val_set = simulated_image_set(
        ["T-VAL"], sim=sim, pipeline=pipeline, wells=WELLS[:4], workers=1, progress=False
    )
    return sim, pipeline, train_set, val_set


def test_simulated_image_set_uses_the_serving_pipeline(tiny_sets):
    sim, pipeline, train_set, _ = tiny_sets
    assert train_set.features.shape == (
        len(WELLS),
        len(pipeline.bands),
        pipeline.height,
        pipeline.width,
    )
    assert train_set.masks.shape == (len(WELLS), 1, pipeline.height, pipeline.width)
    truth = plate_truth(sim, "T-TRAIN")
    assert train_set.labels.tolist() == [int(truth[w].label == "high") for w in WELLS]
    assert set(train_set.groups) == {"T-TRAIN"}
    # Bit-identical to what the service computes for the same frame.
    from hardware.plate import SBS_96
    from hardware.sim import render_field

    x, y = SBS_96.well_center_um("B3")
    served = prepare(
        render_field(sim, "T-TRAIN", "B3", x, y, "40x"), pipeline, bit_depth=sim.bit_depth
    )
    assert np.array_equal(served.features, train_set.features[WELLS.index("B3")])


def test_two_epoch_training_publishes_a_parity_checked_model(tiny_sets, tmp_path):
    _, pipeline, train_set, val_set = tiny_sets
    model = create_model("scnn", in_bands=train_set.features.shape[1])
    result = train(
        model, train_set, val_set, TrainConfig(epochs=2, batch_size=4, seed=1), progress=False
    )
    assert len(result.history) == 2
    assert all(np.isfinite(h["train_loss"]) and np.isfinite(h["val_loss"]) for h in result.history)
    probability = predict(result.model, val_set)
    assert probability.shape == (len(val_set),) and np.all((probability >= 0) & (probability <= 1))

    repository = ModelRepository(tmp_path / "repo")
    artifact = publish(
        result.model,
        repository=repository,
        name="tiny",
        architecture="scnn",
        pipeline=pipeline,
        in_bands=train_set.features.shape[1],
        card={"data": {"source": "test"}},
    )
    assert artifact.version == 1 and artifact.model_path.is_file()
    assert (tmp_path / "repo" / "tiny" / "config.pbtxt").read_text().startswith('name: "tiny"')
    card = json.loads(artifact.card_path.read_text())
    assert card["parity"]["passed"] and card["parity"]["max_abs_diff"] <= 1e-4
    assert card["pipeline"] == pipeline.to_dict()
    assert card["data"] == {"source": "test"}
    classifier = OnnxClassifier(artifact.model_path, providers="cpu")
    onnx_probability, _ = classifier.predict(val_set.features, val_set.masks)
    np.testing.assert_allclose(onnx_probability, probability, atol=1e-4)
    assert repository.new_version_dir("tiny")[0] == 2


def test_training_is_deterministic_on_cpu(tiny_sets):
    _, _, train_set, val_set = tiny_sets
    runs = []
    for _ in range(2):
        seed_everything(7)
        model = create_model("scnn", in_bands=train_set.features.shape[1])
        result = train(
            model, train_set, val_set, TrainConfig(epochs=1, batch_size=4, seed=7), progress=False
        )
        runs.append(predict(result.model, val_set))
    np.testing.assert_array_equal(runs[0], runs[1])


def test_precise_batchnorm_sets_running_stats_to_the_data_statistics():
    import torch

    from training.trainer import recompute_batchnorm

    torch.manual_seed(0)
    model = create_model("scnn", in_bands=2)
    features = torch.randn(10, 2, 24, 32) * 3 + 1
    masks = torch.ones(10, 1, 24, 32)
    recompute_batchnorm(model, features, masks, batch_size=4)
    assert not model.training
    stem_conv, stem_norm = model.stem[0], model.stem[1]
    with torch.no_grad():
        activations = stem_conv(features)
    # The cumulative average over batches of 4, 4 and 2 weights each batch equally (as precise
    # BN does), so compare with that, not the pooled mean.
    batches = [activations[i : i + 4] for i in range(0, 10, 4)]
    expected = torch.stack([b.mean(dim=(0, 2, 3)) for b in batches]).mean(dim=0)
    assert torch.allclose(stem_norm.running_mean, expected, atol=1e-5)
    assert stem_norm.momentum == 0.1  # restored


def test_early_stopping_neither_selects_nor_stops_in_warm_up(tiny_sets):
    _, _, train_set, val_set = tiny_sets
    model = create_model("scnn", in_bands=train_set.features.shape[1])
    config = TrainConfig(epochs=5, batch_size=4, patience=1, min_epochs=3, seed=2)
    result = train(model, train_set, val_set, config, progress=False)
    assert result.best_epoch >= 3
    assert len(result.history) >= 4  # patience 1 could not stop it before epoch 3
