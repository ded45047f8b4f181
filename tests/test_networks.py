"""Every registered network: shapes, finiteness, size, a short training run and ONNX parity."""

import numpy as np
import pytest
import torch

from models.networks import (
    MaskedClassifier,
    architecture_of,
    create_model,
    downsample_mask,
    parameter_count,
    registered_models,
)
from models.onnx_export import check_parity, export_onnx
from models.pipeline import PipelineConfig
from training.imagesets import ImageSet
from training.trainer import TrainConfig, predict, train

# (name, expected halvings of the logit map, parameter range at the default widths)
MODELS = [
    ("plaincnn", 3, (200_000, 400_000)),
    ("scnn", 3, (10_000, 40_000)),
    ("resnet18", 5, (400_000, 1_200_000)),
    ("vgg11", 5, (300_000, 1_000_000)),
]
BANDS = 6


def test_every_registered_model_is_covered():
    assert sorted(name for name, _, _ in MODELS) == registered_models()


def test_unknown_model_is_a_clear_error():
    known = "known: plaincnn, resnet18, scnn"
    with pytest.raises(ValueError, match=f"unknown model 'resnet9000'; {known}"):
        create_model("resnet9000")


@pytest.mark.parametrize(("name", "halvings", "param_range"), MODELS)
@pytest.mark.parametrize(("height", "width"), [(220, 300), (37, 53), (64, 64)])
def test_shapes_and_finiteness(name, halvings, param_range, height, width):
    torch.manual_seed(0)
    model = create_model(name, in_bands=BANDS).eval()
    assert isinstance(model, MaskedClassifier)
    features = torch.randn(3, BANDS, height, width)
    mask = (torch.rand(3, 1, height, width) > 0.5).float()
    logit_map, probability = model(features, mask)
    down = 2**halvings
    assert logit_map.shape == (3, 1, -(-height // down), -(-width // down))
    assert downsample_mask(mask, halvings).shape == logit_map.shape
    assert probability.shape == (3,)
    assert torch.isfinite(logit_map).all() and torch.isfinite(probability).all()
    assert ((probability > 0) & (probability < 1)).all()
    # The pooled logit ignores background: changing features where mask == 0 at full
    # resolution may move the map, but an all-zero mask still gives a finite call.
    _, empty = model(features, torch.zeros_like(mask))
    assert torch.isfinite(empty).all()
    count = parameter_count(model)
    print(f"{name}: {count} parameters")
    assert param_range[0] <= count <= param_range[1]


@pytest.mark.parametrize("name", ["resnet18", "vgg11"])
def test_width_option_scales_parameters(name):
    narrow = parameter_count(create_model(name, base_width=8))
    wide = parameter_count(create_model(name, base_width=32))
    assert 10 < wide / narrow < 20  # conv weights grow with width**2
    assert architecture_of(create_model(name, base_width=8))["base_width"] == 8


def test_role_named_blocks():
    resnet = dict(create_model("resnet18").named_modules())
    for role in ("conv1", "bn1", "layers.1.0.downsample", "layers.0.0.conv2", "head"):
        assert role in resnet
    vgg = dict(create_model("vgg11").named_modules())
    assert {"features.0.conv", "features.0.bn", "head"} <= set(vgg)


def _tiny_set(n: int, height: int, width: int, seed: int) -> ImageSet:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    features = rng.standard_normal((n, BANDS, height, width)).astype(np.float32)
    features[labels == 1, 0] += 1.0  # a learnable signal in band 0
    masks = np.ones((n, 1, height, width), np.float32)
    return ImageSet(
        features,
        masks,
        labels.astype(np.int64),
        np.array([f"g{i}" for i in range(n)]),
        np.array([f"img{i}" for i in range(n)]),
    )


@pytest.mark.parametrize("name", registered_models())
def test_two_step_training_run_changes_weights(name):
    train_set, val_set = _tiny_set(8, 48, 48, 0), _tiny_set(4, 48, 48, 1)
    torch.manual_seed(0)
    model = create_model(name, in_bands=BANDS)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = train(
        model,
        train_set,
        val_set,
        TrainConfig(epochs=2, batch_size=4, patience=5, seed=0),
        progress=False,
    )
    assert len(result.history) == 2
    assert all(np.isfinite(h["train_loss"]) for h in result.history)
    changed = [k for k, v in result.model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "training did not change any weight"
    probability = predict(result.model, val_set)
    assert probability.shape == (4,) and np.isfinite(probability).all()


@pytest.mark.parametrize("name", registered_models())
def test_onnx_export_parity(name, tmp_path):
    pipeline = PipelineConfig(height=45, width=61)  # odd sizes exercise ceil rounding
    torch.manual_seed(0)
    model = create_model(name, in_bands=BANDS).eval()
    path = export_onnx(model, tmp_path / f"{name}.onnx", pipeline, in_bands=BANDS)
    report = check_parity(model, path, in_bands=BANDS, height=45, width=61, batch=3)
    assert report.passed, report.to_dict()
    assert report.max_abs_diff <= 1e-4
