"""Issue 13, "a classifier that wins on real data": the standardise preprocessing, the plain
reference CNN and the wider SCNN, the recipe levers of TrainConfig, the logistic-regression
floor and `mscreen experiment cv` on real-looking files (12-bit, two-channel OME-TIFF)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from models.networks import SCNN, DepthwiseSeparableConv, architecture_of, create_model
from models.pipeline import PipelineConfig, prepare
from models.pipeline.normalise import standardised_planes
from training.experiments.cv import logreg_cross_validate, pixel_features
from training.imagesets import ImageSet
from training.trainer import TrainConfig, _schedulers, predict, train

STANDARDISE = PipelineConfig(height=32, width=32, ws=1, intensity="standardise")


def _cells(rng: np.random.Generator, bright: bool, size: int = 96, peak: int = 4095) -> np.ndarray:
    """A textured 12-bit field with one disc, bright or dark (the two classes)."""
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 4) ** 2
    base = rng.normal(0.45, 0.04, (size, size))
    base[disc] += 0.3 if bright else -0.3
    return np.clip(base * peak, 0, peak).astype(np.uint16)


# -- PipelineConfig.intensity -------------------------------------------------------------------


def test_intensity_default_keeps_todays_behaviour_and_round_trips():
    assert PipelineConfig().intensity == "mean_v_clahe"
    old_card = PipelineConfig().to_dict()
    del old_card["intensity"]  # a card written before the option existed
    assert PipelineConfig.from_dict(old_card) == PipelineConfig()
    assert PipelineConfig.from_dict(STANDARDISE.to_dict()) == STANDARDISE
    assert STANDARDISE.to_dict()["intensity"] == "standardise"
    assert STANDARDISE.band_names() == ("standardised",)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"intensity": "zscore"}, "intensity must be one of"),
        ({"intensity": "standardise", "ws": 9}, "ws must be 1"),
    ],
)
def test_intensity_is_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PipelineConfig(**kwargs)


def test_standardise_features_are_per_image_zero_mean_unit_sd():
    frame = _cells(np.random.default_rng(0), bright=True)
    prepared = prepare(frame, STANDARDISE, bit_depth=12)
    assert prepared.features is not None and prepared.mask is not None
    assert prepared.features.shape == (1, 32, 32) and prepared.features.dtype == np.float32
    assert abs(float(prepared.features.mean())) < 1e-4
    assert abs(float(prepared.features.std()) - 1) < 1e-3
    # QC and the mask still come from the 8-bit view, as for the default path.
    default = prepare(frame, replace(STANDARDISE, intensity="mean_v_clahe"), bit_depth=12)
    assert prepared.qc == default.qc
    np.testing.assert_array_equal(prepared.mask, default.mask)


def test_standardise_is_bit_depth_invariant():
    """12-bit data read as 12-bit, and the same data x 16 read as 16-bit, give the same model
    features: the low bits are kept and nothing depends on the container's scale."""
    frame12 = _cells(np.random.default_rng(1), bright=False)
    twelve = prepare(frame12, STANDARDISE, bit_depth=12).features
    sixteen = prepare(frame12 * np.uint16(16), STANDARDISE, bit_depth=16).features
    assert twelve is not None and sixteen is not None
    np.testing.assert_allclose(twelve, sixteen, rtol=0, atol=1e-5)


def test_standardise_keeps_low_bits_that_the_8_bit_view_loses():
    """Two 12-bit frames that differ only below 1/255 of the range: identical 8-bit views,
    different standardised features."""
    rng = np.random.default_rng(2)
    low = rng.integers(2000, 2008, (64, 64)).astype(np.uint16)
    flat = np.full((64, 64), 2004, np.uint16)
    config = replace(STANDARDISE, min_mean_v=0.0)
    a = prepare(low, config, bit_depth=12).features
    b = prepare(flat, config, bit_depth=12).features
    assert a is not None and b is not None
    assert float(a.std()) > 0.5 and float(np.abs(b).max()) == 0.0


def test_standardise_gives_one_band_per_channel():
    rng = np.random.default_rng(3)
    frame = np.stack([_cells(rng, True), _cells(rng, False) // 2], axis=-1)
    config = replace(STANDARDISE, band_source="channels", channels=2)
    features = prepare(frame, config, bit_depth=12).features
    assert features is not None and features.shape == (2, 32, 32)
    np.testing.assert_allclose(features.reshape(2, -1).mean(axis=1), 0, atol=1e-4)
    assert config.band_names() == ("channel_0", "channel_1")
    with pytest.raises(ValueError, match="config expects 2"):
        standardised_planes(np.zeros((8, 8, 3), np.uint16), config)


# -- networks -----------------------------------------------------------------------------------


def test_scnn_width_and_depth_stay_separable_and_rebuild_from_the_card():
    base = create_model("scnn", in_bands=2)
    wide = create_model("scnn", in_bands=2, width_multiplier=2.0, depth=2)
    assert isinstance(wide, SCNN)
    count = sum(p.numel() for p in wide.parameters())
    assert count > 3 * sum(p.numel() for p in base.parameters())
    blocks = [m for m in wide.modules() if isinstance(m, DepthwiseSeparableConv)]
    assert len(blocks) == 10  # 5 blocks x depth 2
    assert all(b.conv_dw.groups == b.conv_dw.in_channels for b in blocks)
    card = json.loads(json.dumps(architecture_of(wide)))  # as a model card stores it
    rebuilt = create_model("scnn", **card)
    assert sum(p.numel() for p in rebuilt.parameters()) == count
    rebuilt.load_state_dict(wide.state_dict())  # same layout, weight for weight
    with pytest.raises(ValueError, match="width_multiplier must be > 0"):
        create_model("scnn", width_multiplier=0.0)


def test_plaincnn_layout():
    model = create_model("plaincnn", in_bands=1)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 32, 64, 64, 128, 128, 1]
    card = json.loads(json.dumps(architecture_of(model)))
    create_model("plaincnn", **card).load_state_dict(model.state_dict())


# -- recipe levers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"schedule": "step"}, "schedule must be one of"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"ema_decay": 1.0}, "ema_decay"),
        ({"warmup_epochs": -1}, "warmup_epochs"),
    ],
)
def test_train_config_levers_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_recipe_defaults_are_todays_recipe():
    config = TrainConfig()
    assert (config.schedule, config.label_smoothing, config.ema_decay) == ("cosine", 0.0, 0.0)


@pytest.mark.parametrize("schedule", ["warmup_cosine", "onecycle"])
def test_step_schedules_warm_up_then_anneal(schedule):
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([parameter], lr=1e-2)
    config = TrainConfig(epochs=10, learning_rate=1e-2, schedule=schedule, warmup_epochs=2)
    per_epoch, per_step = _schedulers(optimizer, config, steps_per_epoch=5)
    assert per_epoch is None and per_step is not None
    rates = []
    for _ in range(50):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        per_step.step()
    peak = int(np.argmax(rates))
    assert 0 < peak < 25 and rates[0] < rates[peak] and rates[-1] < 0.05 * rates[peak]


def _blob_set(n: int, seed: int, size: int = 24) -> ImageSet:
    """Bright vs dark central blob, standardised like the pipeline would."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    features = rng.normal(0, 1, (n, 1, size, size)).astype(np.float32)
    features[:, :, 8:16, 8:16] += np.where(labels == 1, 2.0, -2.0)[:, None, None, None]
    masks = np.ones((n, 1, size, size), np.float32)
    names = np.array([f"x/{i}" for i in range(n)])
    return ImageSet(features, masks, labels.astype(np.int64), names.copy(), names)


def test_ema_label_smoothing_and_warmup_cosine_train_a_working_model():
    config = TrainConfig(
        epochs=6,
        batch_size=8,
        restore_best=False,
        schedule="warmup_cosine",
        label_smoothing=0.1,
        ema_decay=0.9,
        intensity_bands=(0,),
        threads=1,
    )
    result = train(create_model("scnn", in_bands=1), _blob_set(48, 0), _blob_set(16, 1), config)
    test_set = _blob_set(32, 2)
    accuracy = float(((predict(result.model, test_set, tta=True) >= 0.5) == test_set.labels).mean())
    assert accuracy >= 0.9
    assert len(result.history) == 6 and result.best_epoch == 5


def test_ema_weights_are_an_average_not_the_last_iterate():
    data = _blob_set(32, 0)
    config = TrainConfig(epochs=2, batch_size=8, restore_best=False, threads=1)
    last = train(create_model("scnn", in_bands=1), data, data, config).model
    ema = train(create_model("scnn", in_bands=1), data, data, replace(config, ema_decay=0.95))
    # Same seed, same batches: only the returned weights differ.
    head_last = dict(last.named_parameters())["head.weight"].detach()
    head_ema = dict(ema.model.named_parameters())["head.weight"].detach()
    assert not torch.allclose(head_last, head_ema)


# -- the logistic-regression floor ---------------------------------------------------------------


def test_logreg_floor_learns_pixels_on_grouped_folds():
    data = _blob_set(40, 3)
    data.groups = np.array([f"g{i // 2}" for i in range(40)])
    assert pixel_features(data).shape == (40, 24 * 24)
    rows, scores = logreg_cross_validate(data, folds=2, seed=0)
    assert len(rows) == 2 and not np.isnan(scores).any()
    assert all(row["accuracy"] >= 0.9 for row in rows)


# -- `mscreen experiment cv` on a 12-bit, two-channel, channel-first OME-TIFF folder -------------


def _ome_folder(root):
    tifffile = pytest.importorskip("tifffile")
    rng = np.random.default_rng(4)
    for label, bright in (("dark", False), ("bright", True)):
        for field in range(4):
            for cell in range(3):
                # (C, Y, X): channel 0 shows the class, channel 1 is the same field defocused.
                plane = _cells(rng, bright, size=40)
                stack = np.stack([plane, (plane // 2 + 500).astype(np.uint16)])
                path = root / label / f"{label}-{field:06d}-{cell}.ome.tif"
                path.parent.mkdir(parents=True, exist_ok=True)
                tifffile.imwrite(
                    path, stack, ome=True, metadata={"axes": "CYX", "SignificantBits": 12}
                )
    return root


@pytest.mark.slow
def test_cv_trains_a_12_bit_two_channel_ome_tiff_folder_with_no_flags(tmp_path):
    pytest.importorskip("sklearn")
    from cli.experiment import experiment_cli

    data = _ome_folder(tmp_path / "data")
    out = tmp_path / "out"
    args = ["cv", "--data", str(data), "--folds", "2", "--epochs", "2", "--reference-epochs", "2"]
    result = CliRunner().invoke(
        experiment_cli, [*args, "--group-by", "celltype", "--workers", "1", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pipeline"]["band_source"] == "channels"
    assert summary["pipeline"]["channels"] == 2
    assert summary["pipeline"]["intensity"] == "standardise"
    files = summary["files"]
    assert (files["bit_depth"], files["bit_depth_source"]) == (12, "ome:SignificantBits")
    assert (files["channels"], files["excluded_by_qc"]) == (2, 0)
    arms = [row["variant"] for row in summary["summary"]]
    assert arms == ["default", "plaincnn (reference)", "logreg (pixel floor)"]
    assert all(row["images"] == 24 and row["groups"] == 8 for row in summary["summary"])
    assert "McNemar" in (out / "summary.md").read_text()


def test_hsm_graph_refuses_features_it_does_not_compute():
    from models.hsm_onnx import build_hsm_module

    for config in (
        PipelineConfig(height=32, width=32, ws=1, intensity="standardise"),
        PipelineConfig(height=32, width=32, ws=1, band_source="channels", channels=2),
    ):
        with pytest.raises(ValueError, match="filter-bank bands of the normalised grey image"):
            build_hsm_module(config)
    assert build_hsm_module(PipelineConfig(height=32, width=32, ws=1)) is not None
