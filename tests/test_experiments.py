"""Grouped splits, augmentation, report writers and the experiment commands at toy scale."""

import csv
import json
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cli.experiment import experiment_cli
from hardware.sim import SimulationConfig
from models.pipeline import PipelineConfig
from training.experiments import (
    ModelSpec,
    SimulatedSettings,
    balanced_order,
    learning_curve_experiment,
    plate_eval_experiment,
    ws_k_grid_experiment,
)
from training.reports import bar_plot, line_plot, markdown_table, write_csv
from training.splits import grouped_kfold, grouped_split
from training.trainer import (
    TrainConfig,
    _augment,
    intensity_band_indices,
    jitter_bands,
    resolve_device,
)

GROUPS = np.array([f"g{i // 3}" for i in range(30)] + ["big"] * 12)  # 10 groups of 3, one of 12


def _no_straddle(groups, *parts):
    sets = [set(groups[p]) for p in parts]
    return all(not (a & b) for i, a in enumerate(sets) for b in sets[i + 1 :])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grouped_split_partitions_without_straddling(seed):
    parts = grouped_split(GROUPS, (0.7, 0.15, 0.15), seed=seed)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(GROUPS)))
    assert _no_straddle(GROUPS, *parts)
    assert all(len(p) > 0 for p in parts)
    assert len(parts[0]) >= 0.5 * len(GROUPS)
    # Seeded: the same seed gives the same split.
    again = grouped_split(GROUPS, (0.7, 0.15, 0.15), seed=seed)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_grouped_split_every_part_gets_a_group_and_errors():
    parts = grouped_split(np.array(["a", "b", "c"]), (0.8, 0.1, 0.1))
    assert sorted(len(p) for p in parts) == [1, 1, 1]
    with pytest.raises(ValueError, match="2 groups cannot fill 3 parts"):
        grouped_split(np.array(["a", "b"]), (0.5, 0.25, 0.25))
    with pytest.raises(ValueError, match="fractions must be positive"):
        grouped_split(GROUPS, (1.0, 0.0))


@pytest.mark.parametrize("k", [2, 5, 11])
def test_grouped_kfold(k):
    labels = np.array([int(g[-1]) % 2 if g != "big" else 1 for g in GROUPS])
    folds = grouped_kfold(GROUPS, k, seed=3, labels=labels)
    assert len(folds) == k
    tests = np.concatenate([test for _, test in folds])
    assert sorted(tests.tolist()) == list(range(len(GROUPS)))  # test parts partition the data
    for train_index, test_index in folds:
        assert len(test_index) > 0
        assert _no_straddle(GROUPS, train_index, test_index)
        assert len(train_index) + len(test_index) == len(GROUPS)
    with pytest.raises(ValueError, match=r"k must be in 2\.\.11"):
        grouped_kfold(GROUPS, 12)


def test_grouped_kfold_stratifies_class_pure_groups():
    groups = np.repeat([f"a{i}" for i in range(10)] + [f"b{i}" for i in range(10)], 2)
    labels = np.repeat([0] * 10 + [1] * 10, 2)
    for _, test in grouped_kfold(groups, 5, labels=labels):
        assert labels[test].sum() == 4 and len(test) == 8  # 2 groups of each class per fold


def test_augment_square_reaches_quarter_turns_and_jitters_intensity_only():
    generator = torch.Generator().manual_seed(0)
    features = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    features = features.repeat(32, 1, 1, 1)
    masks = features[:, :1].clone()
    config = TrainConfig(intensity_jitter=0.1, intensity_bands=(0,))
    out, out_masks = _augment(features, masks, generator, config)
    assert out.shape == features.shape
    # The mask moves with the image (band 1 is not jittered and was equal to the mask source).
    band1 = features[:, 1:2] - features[:, :1]  # constant offset 16 between band 1 and band 0
    assert torch.allclose(out[:, 1:2] - out_masks, band1)
    # Some samples got a quarter turn: their first row equals the original's last column.
    original = features[0, 1]
    turned = [s for s in out[::2, 1] if torch.equal(s[0], original[:, -1])]
    assert turned
    # Band 0 is jittered (mild gain/shift), band 2 is not scaled.
    gains = out[:, 0].std(dim=(1, 2)) / features[:, 0].std(dim=(1, 2))
    assert ((gains > 0.89) & (gains < 1.11)).all() and not torch.allclose(gains, torch.ones(64))
    assert torch.allclose(out[:, 2].std(dim=(1, 2)), features[:, 2].std(dim=(1, 2)))


def test_augment_non_square_keeps_shape_no_quarter_turn():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(16, 2, 5, 7)
    out, masks = _augment(features, features[:, :1], generator)
    assert out.shape == (16, 2, 5, 7) and masks.shape == (16, 1, 5, 7)
    # Each output is one of the four flips of its input.
    for x, y in zip(features, out, strict=True):
        assert any(torch.equal(y, c) for c in (x, x.flip(-1), x.flip(-2), x.flip(-1).flip(-2)))


def test_intensity_band_indices():
    assert intensity_band_indices(PipelineConfig().bands) == (0, 1)
    assert intensity_band_indices(("gradient", "gauss_4")) == (1,)


def test_report_writers(tmp_path):
    rows = [{"a": 1, "b": 0.12345}, {"a": 2, "c": "x"}]
    write_csv(rows, tmp_path / "t.csv")
    assert next(csv.reader((tmp_path / "t.csv").open())) == ["a", "b", "c"]
    assert "| 1 | 0.123 |" in markdown_table(rows, ["a", "b"])
    line_plot({"s": ([0, 1], [0, 1])}, tmp_path / "l.png", title="t", xlabel="x", ylabel="y")
    bar_plot(["a", "b"], [0.6, 0.9], tmp_path / "b.png", errors=[0.1, 0.05], title="t", ylabel="y")
    for name in ("l.png", "b.png"):
        image = cv2.imread(str(tmp_path / name))
        assert image.shape == (480, 640, 3) and image.min() < 128  # something was drawn


def _folder(root):
    rng = np.random.default_rng(0)
    for label, blob in (("a", 60), ("b", 200)):
        for field in range(4):
            for cell in range(2):
                image = np.clip(rng.normal(130, 8, (40, 40)), 0, 255).astype(np.uint8)
                cv2.circle(image, (20, 20), 8 + 2 * cell, blob, -1)
                path = root / label / f"{label.upper()}-{field:06d}-{cell}-1.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(path), image)
    return root


def test_cv_command_writes_csv_markdown_and_png(tmp_path):
    data = _folder(tmp_path / "data")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        experiment_cli,
        [
            "cv",
            "--data",
            str(data),
            "--folds",
            "2",
            "--size",
            "32",
            "--group-by",
            "celltype",
            "--epochs",
            "2",
            "--reference-epochs",
            "2",
            "--workers",
            "1",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    for name in ("folds.csv", "summary.csv", "summary.md", "summary.json", "accuracy.png"):
        assert (out / name).is_file()
    summary = json.loads((out / "summary.json").read_text())
    arms = ["default", "plaincnn (reference)", "logreg (pixel floor)"]
    assert [r["variant"] for r in summary["summary"]] == arms
    assert summary["classes"] == ["a", "b"] and summary["pipeline"]["height"] == 32
    # The default arm standardises each image; the references do too, at their own 48 x 48.
    assert summary["pipeline"]["intensity"] == "standardise"
    assert summary["settings"]["model"]["name"] == "plaincnn"
    reference = summary["arms"]["plaincnn (reference)"]["pipeline"]
    assert (reference["intensity"], reference["height"]) == ("standardise", 48)
    folds = list(csv.DictReader((out / "folds.csv").open()))
    assert len(folds) == 6 and all(0 <= float(f["accuracy"]) <= 1 for f in folds)
    assert all(int(f["test_groups"]) == 4 for f in folds)  # 8 fields over 2 folds
    assert set(summary["paired"]) == set(arms[1:])
    assert "p =" in (out / "summary.md").read_text()

    hsm = tmp_path / "hsm"
    args = ["cv", "--data", str(data), "--folds", "2", "--size", "32", "--group-by", "celltype"]
    hsm_args = ["--epochs", "1", "--preprocess", "mean_v_clahe", "--ws", "9", "--seeds", "2"]
    more = ["--no-references", "--model", "scnn", "--width-multiplier", "1", "--out", str(hsm)]
    result = CliRunner().invoke(experiment_cli, [*args, *hsm_args, *more])
    assert result.exit_code == 0, result.output
    only = json.loads((hsm / "summary.json").read_text())["summary"]
    assert [(r["variant"], r["ws"], r["seeds"]) for r in only] == [("default", 9, 2)]
    assert len(only[0]["per-seed accuracy"]) == 2


def test_cv_command_rejects_ssn_with_standardise_and_bad_channels(tmp_path):
    data = _folder(tmp_path / "data")
    args = ["cv", "--data", str(data), "--ws", "9"]
    result = CliRunner().invoke(experiment_cli, [*args, "--preprocess", "standardise"])
    assert result.exit_code != 0 and "mean_v_clahe" in result.output
    result = CliRunner().invoke(experiment_cli, ["cv", "--data", str(data), "--channels", "0,x"])
    assert result.exit_code != 0 and "comma-separated" in result.output


def test_cv_command_rejects_a_one_class_folder(tmp_path):
    (tmp_path / "d" / "only").mkdir(parents=True)
    result = CliRunner().invoke(experiment_cli, ["cv", "--data", str(tmp_path / "d")])
    assert result.exit_code != 0 and "only one class" in result.output


@pytest.fixture
def tiny_sim():
    return SimulatedSettings(
        train_plates=1,
        simulation=SimulationConfig(seed=5, overexposure_rate=0.0),
        pipeline=PipelineConfig(height=44, width=60, ws=3, k=4),
        model=ModelSpec("scnn"),
        train=TrainConfig(epochs=1, batch_size=4),
        workers=1,
        wells=("A1", "A2", "B3", "C4", "D5", "E6"),
    )


@pytest.mark.slow
def test_plate_eval_and_expensive_experiments_at_toy_scale(tmp_path, tiny_sim):
    summary = plate_eval_experiment(tmp_path / "pe", tiny_sim, progress=False)
    assert summary["wells_evaluated"] == 6
    metrics = list(csv.DictReader((tmp_path / "pe" / "metrics.csv").open()))
    assert {m["metric"] for m in metrics} >= {"accuracy", "sensitivity", "specificity", "ppv"}
    assert (tmp_path / "pe" / "roc.png").is_file() and (tmp_path / "pe" / "wells.csv").is_file()

    grid = ws_k_grid_experiment(
        tmp_path / "grid", tiny_sim, ws_values=(1, 3), k_values=(4, 8), progress=False
    )
    assert [(r["ws"], r["k"]) for r in grid["rows"]] == [(1, "-"), (3, 4), (3, 8)]
    assert (tmp_path / "grid" / "accuracy.png").is_file()

    curve = learning_curve_experiment(
        tmp_path / "lc",
        replace(tiny_sim, train_plates=2),
        sizes=(4, 8),
        seeds=(0, 1),
        models=(ModelSpec("scnn"), ModelSpec("resnet18", {"base_width": 4})),
        progress=False,
    )
    rows = curve["rows"]
    assert [(r["seed"], r["train_images"], r["model"]) for r in rows] == [
        (seed, size, model)
        for seed in (0, 1)
        for size in (4, 8)
        for model in ("scnn", "resnet18 (base_width 4)")
    ]
    assert {r["device"] for r in rows} == {"cpu"}
    assert rows[0]["parameters"] != rows[1]["parameters"]
    table = curve["aggregate"]
    assert [(t["model"], t["train_images"], t["seeds"]) for t in table] == [
        ("scnn", 4, 2),
        ("scnn", 8, 2),
        ("resnet18 (base_width 4)", 4, 2),
        ("resnet18 (base_width 4)", 8, 2),
    ]
    first = [r["accuracy"] for r in rows if r["model"] == "scnn" and r["train_images"] == 4]
    assert table[0]["accuracy mean"] == pytest.approx(np.mean(first), abs=1e-4)
    assert len(list(csv.DictReader((tmp_path / "lc" / "curve.csv").open()))) == 8
    for name in ("accuracy.png", "seconds.png", "summary.md", "summary.csv"):
        assert (tmp_path / "lc" / name).is_file()
    # A stopped or remote run's CSV rebuilds the same tables without training.
    rebuilt = tmp_path / "rebuilt"
    result = CliRunner().invoke(
        experiment_cli,
        [
            "learning-curve",
            "--from-csv",
            str(tmp_path / "lc" / "curve.csv"),
            "--out",
            str(rebuilt),
            "--note",
            "toy rows",
        ],
    )
    assert result.exit_code == 0, result.output
    again = json.loads((rebuilt / "summary.json").read_text())
    assert again["aggregate"] == table and again["note"] == "toy rows"
    assert (rebuilt / "accuracy.png").is_file() and (rebuilt / "curve.csv").is_file()
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    result = CliRunner().invoke(
        experiment_cli, ["learning-curve", "--from-csv", str(tmp_path / "bad.csv")]
    )
    assert result.exit_code == 2 and "not a learning-curve CSV" in result.output

    with pytest.raises(ValueError, match="exceeds the 12 images"):
        learning_curve_experiment(
            tmp_path / "lc2", replace(tiny_sim, train_plates=2), sizes=(20,), progress=False
        )


def test_balanced_order_alternates_classes_and_nests():
    labels = np.array([1, 1, 1, 1, 1, 0, 0, 1, 0, 1])
    order = balanced_order(labels, seed=3)
    assert sorted(order.tolist()) == list(range(10))  # a permutation
    assert labels[order[:6]].sum() == 3  # balanced while both classes last
    assert labels[order[6:]].tolist() == [1, 1, 1, 1]  # then the majority class alone
    assert not np.array_equal(order, balanced_order(labels, seed=4))
    assert np.array_equal(order, balanced_order(labels, seed=3))


@pytest.mark.slow
def test_plate_eval_over_two_test_plates(tmp_path, tiny_sim):
    summary = plate_eval_experiment(
        tmp_path / "pe2", replace(tiny_sim, test_plates=2), progress=False
    )
    assert summary["wells_evaluated"] == 12
    assert [p["plate"] for p in summary["per_plate"]] == summary["test_plates"]
    assert [p["wells"] for p in summary["per_plate"]] == [6, 6]
    wells = list(csv.DictReader((tmp_path / "pe2" / "wells.csv").open()))
    assert {w["plate"] for w in wells} == set(summary["test_plates"])
    diagnostic = summary["morphology_diagnostic"]
    assert 0 <= diagnostic["label_noise_wells"] <= 12
    assert diagnostic["ceiling_accuracy"] == pytest.approx(1 - diagnostic["label_noise_wells"] / 12)
    assert "ceiling" in (tmp_path / "pe2" / "summary.md").read_text()


def test_cuda_device_without_a_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA GPU"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"
    result = CliRunner().invoke(experiment_cli, ["learning-curve", "--device", "cuda"])
    assert result.exit_code != 0 and "no CUDA GPU" in result.output


def test_jitter_bands_follow_the_band_source():
    assert jitter_bands(PipelineConfig(), 6) == (0, 1)  # intensity, gauss_2
    channels = PipelineConfig(band_source="channels", channels=3)
    assert jitter_bands(channels, 3) == (0, 1, 2)  # every acquired channel is an intensity
