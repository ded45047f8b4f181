"""SCNN -> ONNX export: graph check, dynamic batch, metadata, PyTorch parity."""

import json

import numpy as np
import pytest
import torch

from models.inference import OnnxClassifier, requested_providers
from models.networks import create_model, parameter_count
from models.onnx_export import check_parity, export_onnx, fixed_parity_input
from models.pipeline import PipelineConfig

BANDS = len(PipelineConfig().bands)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("scnn", in_bands=BANDS).eval()
    # Non-trivial BatchNorm statistics so the parity check exercises them.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    pipeline = PipelineConfig()
    export_onnx(
        model, path, pipeline, in_bands=BANDS, metadata={"model_name": "t", "model_version": "3"}
    )
    return model, path, pipeline


def test_parity_on_a_fixed_input(exported):
    model, path, pipeline = exported
    report = check_parity(model, path, in_bands=BANDS, height=pipeline.height, width=pipeline.width)
    assert report.max_abs_diff <= 1e-4
    assert report.labels_identical
    assert report.passed


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_dynamic_batch_axis(exported, batch):
    model, path, pipeline = exported
    classifier = OnnxClassifier(path, providers="cpu")
    features, mask = fixed_parity_input(
        BANDS, pipeline.height, pipeline.width, batch=batch, seed=batch
    )
    probability, logit_map = classifier.predict(features, mask)
    assert probability.shape == (batch,)
    assert logit_map.shape[:2] == (batch, 1)
    assert np.all((probability >= 0) & (probability <= 1))
    with torch.no_grad():
        _, expected = model(torch.from_numpy(features), torch.from_numpy(mask))
    np.testing.assert_allclose(probability, expected.numpy(), atol=1e-4)


def test_metadata_carries_the_pipeline_config(exported):
    _, path, pipeline = exported
    classifier = OnnxClassifier(path, providers="cpu")
    assert classifier.pipeline_config == pipeline
    assert json.loads(classifier.metadata["pipeline_config"]) == pipeline.to_dict()
    assert (classifier.name, classifier.version) == ("t", "3")
    assert classifier.provider == "CPUExecutionProvider"


def test_mask_decides_what_is_pooled(exported):
    model, _, pipeline = exported
    features, _ = fixed_parity_input(BANDS, pipeline.height, pipeline.width, batch=1)
    left = torch.zeros(1, 1, pipeline.height, pipeline.width)
    left[..., : pipeline.width // 2] = 1
    with torch.no_grad():
        _, p_left = model(torch.from_numpy(features), left)
        _, p_right = model(torch.from_numpy(features), 1 - left)
    assert not torch.allclose(p_left, p_right)


def test_provider_choice():
    assert requested_providers("auto", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert (
        requested_providers("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"])[0]
        == "CUDAExecutionProvider"
    )
    with pytest.raises(RuntimeError, match="gpu"):
        requested_providers("cuda", ["CPUExecutionProvider"])


def test_scnn_is_small():
    assert parameter_count(create_model("scnn", in_bands=BANDS)) < 100_000
