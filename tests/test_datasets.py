"""Datasets from an ImageFolder tree and from labelled plates in the app DB (tiny files)."""

import json
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import pytest

from models.pipeline import PipelineConfig, prepare
from training.imagesets import (
    CELLTYPE_GROUP_PATTERN,
    database_image_set,
    image_folder_set,
)

PIPELINE = PipelineConfig(height=32, width=32, ws=3, k=4)


def _cells(seed: int, size: int = 48, dtype: type = np.uint8) -> np.ndarray:
    """A textured frame that passes QC: a mid-grey background with dark blobs."""
    rng = np.random.default_rng(seed)
    image = np.full((size, size), 140.0) + rng.normal(0, 6, (size, size))
    for _ in range(4):
        y, x = rng.integers(6, size - 6, 2)
        cv2.circle(image, (int(x), int(y)), 5, 60.0, -1)
    image8 = np.clip(image, 0, 255).astype(np.uint8)
    if dtype == np.uint16:
        return image8.astype(np.uint16) * np.uint16(257)  # exactly 8-bit data in 16 bits
    return image8


def _write(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)
    return path


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "data"
    _write(root / "293A" / "293A-000007.j-1-12.png", _cells(0))
    _write(root / "293A" / "293A-000007.j-2-13.tif", _cells(1, dtype=np.uint16))
    _write(root / "293A" / "293A-000008.j-1-14.jpg", _cells(2))
    colour = cv2.cvtColor(_cells(3), cv2.COLOR_GRAY2BGR)
    _write(root / "HT1080" / "HT1080-000000-1-1.png", colour)
    bgra = cv2.cvtColor(_cells(4), cv2.COLOR_GRAY2BGRA)
    _write(root / "HT1080" / "HT1080-000000-2-2.png", bgra)
    _write(root / "HT1080" / "HT1080-000003-1-3.tiff", _cells(5, dtype=np.uint16))
    (root / "HT1080" / "notes.txt").write_text("not an image")
    return root


def test_image_folder_set_reads_every_layout_with_groups(folder):
    data = image_folder_set(folder, PIPELINE, group_by=CELLTYPE_GROUP_PATTERN, workers=1)
    assert data.class_names == ("293A", "HT1080")
    assert data.features.shape == (6, len(PIPELINE.bands), 32, 32)
    assert data.masks.shape == (6, 1, 32, 32)
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert data.groups.tolist() == [
        "293A-000007",
        "293A-000007",
        "293A-000008",
        "HT1080-000000",
        "HT1080-000000",
        "HT1080-000003",
    ]
    assert data.names[0] == "293A/293A-000007.j-1-12"
    assert np.isfinite(data.features).all()
    # Identical to the serving pipeline on the same frame.
    served = prepare(_cells(0), PIPELINE)
    assert np.array_equal(served.features, data.features[0])
    # A 16-bit copy of an 8-bit frame (x 257) prepares to the same 8-bit image.
    same = prepare(_cells(1), PIPELINE)
    assert np.array_equal(same.features, data.features[1])


def test_default_group_is_the_whole_stem(folder):
    data = image_folder_set(folder, PIPELINE, workers=1, progress=False)
    assert len(set(data.groups)) == 6
    assert data.groups[3] == "HT1080/HT1080-000000-1-1"


def test_named_group_and_pattern_mismatch(folder):
    data = image_folder_set(folder, PIPELINE, group_by=r"-(?P<group>\d+)", workers=1)
    assert data.groups.tolist()[:3] == ["000007", "000007", "000008"]
    with pytest.raises(ValueError, match=r"does not match file name 293A-000007\.j-1-12\.png"):
        image_folder_set(folder, PIPELINE, group_by=r"^XYZ", workers=1)


def test_clear_errors(tmp_path, folder):
    with pytest.raises(ValueError, match="does not exist"):
        image_folder_set(tmp_path / "nope", PIPELINE)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class subfolders"):
        image_folder_set(tmp_path / "empty", PIPELINE)
    _write(tmp_path / "one" / "a" / "x.png", _cells(0))
    with pytest.raises(ValueError, match=r"only one class \(a\)"):
        image_folder_set(tmp_path / "one", PIPELINE)
    (tmp_path / "one" / "b").mkdir()
    with pytest.raises(ValueError, match=r"class folder .*b has no images"):
        image_folder_set(tmp_path / "one", PIPELINE)
    (folder / "HT1080" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match=r"cannot read image .*broken\.png"):
        image_folder_set(folder, PIPELINE, workers=1)


def test_qc_excluded_files_are_counted(tmp_path):
    _write(tmp_path / "d" / "a" / "ok.png", _cells(0))
    _write(tmp_path / "d" / "a" / "white.png", np.full((48, 48), 250, np.uint8))
    _write(tmp_path / "d" / "b" / "ok.png", _cells(1))
    data = image_folder_set(tmp_path / "d", PIPELINE, workers=1, progress=False)
    assert len(data) == 2 and data.excluded == 1


def _labelled_database(tmp_path: Path, barcodes: list[str], wells: list[tuple[str, str | None]]):
    """A SQLite app database holding one scan per plate: one stored 16-bit field per well and,
    where the label is not None, an FCT measurement. Returns a session factory."""
    from hardware.microscope import AcquiredField
    from store.db import make_engine, make_session_factory
    from store.images import ImageStore
    from store.orm import Base, FctMeasurement, Image, Plate, Scan, Well

    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    Base.metadata.create_all(engine)
    factory = make_session_factory(engine)
    store = ImageStore(tmp_path / "images")
    now = datetime.now(UTC)
    with factory() as session:
        for p, barcode in enumerate(barcodes):
            plate = Plate(barcode=barcode)
            session.add(plate)
            session.flush()
            scan = Scan(
                plate_id=plate.id,
                objective="40x",
                wells_requested=[name for name, _ in wells],
                microscope="test",
            )
            session.add(scan)
            session.flush()
            for w, (name, label) in enumerate(wells):
                well = Well(plate_id=plate.id, name=name, row=0, column=w)
                session.add(well)
                session.flush()
                frame = _cells(10 * p + w, dtype=np.uint16)
                stored = store.save(
                    barcode,
                    scan.id,
                    AcquiredField(name, 0, frame, 0.0, 0.0, "40x", 0.5, now, 1.0),
                    fields_per_well=1,
                )
                session.add(
                    Image(
                        scan_id=scan.id,
                        well_id=well.id,
                        field_index=0,
                        path=stored.path,
                        sha256=stored.sha256,
                        height=48,
                        width=48,
                        dtype="uint16",
                        objective="40x",
                        pixel_size_um=0.5,
                        x_um=0.0,
                        y_um=0.0,
                        acquired_at=now,
                        mean_v=140.0,
                        focus_score=100.0,
                        qc_excluded=False,
                        qc_flags=[],
                    )
                )
                if label is not None:  # no FCT: not a training sample
                    session.add(
                        FctMeasurement(
                            well_id=well.id,
                            cd73_pct=99.0 if label == "high" else 80.0,
                            cd90_pct=99.0,
                            label=label,
                            source="test",
                        )
                    )
        session.commit()

    return factory


def test_database_image_set_reads_labelled_plates(tmp_path):
    factory = _labelled_database(
        tmp_path, ["P-1", "P-2"], [("A1", "high"), ("A2", "low"), ("A3", None)]
    )
    data = database_image_set(factory, PIPELINE, progress=False)
    assert data.labels.tolist() == [1, 0, 1, 0]
    assert data.groups.tolist() == ["P-1", "P-1", "P-2", "P-2"]
    assert data.names[1].startswith("P-1/scan-") and data.names[1].endswith("/A2/f0")
    served = prepare(_cells(1, dtype=np.uint16), PIPELINE, bit_depth=16)
    assert np.array_equal(served.features, data.features[1])
    only = database_image_set(factory, PIPELINE, barcodes=["P-2"], progress=False)
    assert set(only.groups) == {"P-2"}
    with pytest.raises(ValueError, match="no stored images"):
        database_image_set(factory, PIPELINE, barcodes=["NONE"], progress=False)


def test_database_training_data_splits_by_plate_and_publishes(tmp_path):
    from models.repository import ModelRepository
    from training.jobs import database_training_data, train_and_publish
    from training.trainer import TrainConfig

    wells = [("A1", "high"), ("A2", "low"), ("A3", "high"), ("A4", "low")]
    factory = _labelled_database(tmp_path, ["P-1", "P-2", "P-3"], wells)
    data = database_training_data(factory, PIPELINE, seed=0, progress=False)
    parts = [set(part.groups.tolist()) for part in (data.train, data.val, data.test)]
    assert sorted(set().union(*parts)) == ["P-1", "P-2", "P-3"]
    assert all(len(p) == 1 for p in parts)  # one plate each: no plate straddles
    assert data.provenance["source"] == "database"
    artifact, card = train_and_publish(
        data,
        repository=tmp_path / "repo",
        name="from-db",
        pipeline=PIPELINE,
        train_config=TrainConfig(epochs=1, batch_size=2),
        progress=False,
    )
    assert artifact.version == 1 and (artifact.directory / "model.onnx").is_file()
    # No calibration plates from the database: the validation split stands in (docs/calls.md).
    assert card["data"]["images"] == {"train": 4, "val": 4, "test": 4, "calibration": 0}
    assert card["training"]["config"]["intensity_bands"]  # jitter on this pipeline's bands
    assert ModelRepository(tmp_path / "repo").versions("from-db") == [1]

    two = _labelled_database(tmp_path / "two", ["Q-1", "Q-2"], wells)
    with pytest.raises(ValueError, match="at least 3 groups"):
        database_training_data(two, PIPELINE, progress=False)


def test_train_command_on_an_image_folder(tmp_path):
    from typer.testing import CliRunner

    from cli.main import cli

    root = tmp_path / "data"
    for c, name in enumerate(["lineA", "lineB"]):
        for group in range(3):
            for index in range(2):
                _write(
                    root / name / f"{name}-{group}-{index}.png",
                    _cells(100 * c + 10 * group + index),
                )
    result = CliRunner().invoke(
        cli,
        [
            "train", "--source", "folder", "--data", str(root), "--size", "32",
            "--group-by", r"^([^-]+-\d+)", "--epochs", "1",
            "--repository", str(tmp_path / "repo"), "--name", "folder-model",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "published folder-model v1" in result.output
    card = json.loads((tmp_path / "repo" / "folder-model" / "1" / "model_card.json").read_text())
    assert card["data"]["source"] == "image_folder" and card["data"]["label_1_means"] == "lineB"
    assert card["pipeline"]["height"] == 32
    assert card["pipeline"]["ws"] == 1  # new models train without SSNs (HSM ablation)
    missing = CliRunner().invoke(cli, ["train", "--source", "folder", "--epochs", "1"])
    assert missing.exit_code != 0 and "--data" in str(missing.exception)
    bad = CliRunner().invoke(cli, ["train", "--ws", "3", "--k", "12", "--epochs", "1"])
    assert bad.exit_code != 0 and "k" in str(bad.exception)


def test_train_command_on_a_12_bit_two_channel_ome_tiff_folder(tmp_path):
    """Channel-first OME-TIFFs from a 12-bit camera: no flags needed; the card says how."""
    import tifffile
    from typer.testing import CliRunner

    from cli.main import cli

    root = tmp_path / "data"
    for c, name in enumerate(["lineA", "lineB"]):
        for group in range(3):
            for index in range(2):
                seed = 100 * c + 10 * group + index
                grey = _cells(seed).astype(np.uint16) * 16  # 8-bit texture at 12-bit scale
                planes = np.stack([grey, (grey // 2 + 200) if c else grey])  # (C, Y, X)
                path = root / name / f"{name}-{group}-{index}.ome.tif"
                path.parent.mkdir(parents=True, exist_ok=True)
                tifffile.imwrite(path, planes, ome=True, metadata={"axes": "CYX"})
    args = [
        "train", "--source", "folder", "--data", str(root), "--size", "32",
        "--group-by", r"^([^-]+-\d+)", "--epochs", "1",
        "--repository", str(tmp_path / "repo"), "--name", "two-channel",
    ]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    card = json.loads((tmp_path / "repo" / "two-channel" / "1" / "model_card.json").read_text())
    assert card["pipeline"]["band_source"] == "channels" and card["pipeline"]["channels"] == 2
    assert card["data"]["bit_depth"] == 12  # inferred: max 255 * 16 = 4080 < 4096
    assert card["data"]["bit_depth_source"].startswith("inferred")

    one = CliRunner().invoke(cli, [*args[:-1], "one-channel", "--channels", "1"])
    assert one.exit_code == 0, one.output
    card = json.loads((tmp_path / "repo" / "one-channel" / "1" / "model_card.json").read_text())
    assert card["pipeline"]["band_source"] == "filter_bank" and card["data"]["channels"] == [1]
