"""The OME-Zarr HCS image store: what ome-zarr's reader (and so napari) sees, checksums, resume."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Multiscales, Plate, Reader

from hardware.microscope import AcquiredField
from store.images import ImageStore, pixel_sha256

PIXEL_UM = 0.65
SHAPE = (48, 64)  # (H, W): small, but not square, so a y/x mix-up shows


def _field(well: str, index: int, seed: int, x_um: float = 1000.0, y_um: float = 2000.0):
    image = np.random.default_rng(seed).integers(0, 4096, SHAPE, dtype=np.uint16)
    return AcquiredField(
        well=well,
        field_index=index,
        image=image,
        x_um=x_um,
        y_um=y_um,
        objective="40x",
        pixel_size_um=PIXEL_UM,
        acquired_at=datetime.now(UTC),
        acquisition_ms=1.0,
    )


def _nodes(path: str | Path, spec: type) -> list:
    nodes = list(Reader(parse_url(str(path)))())
    return [n for n in nodes if any(isinstance(s, spec) for s in n.specs)]


def _ome(group: zarr.Group) -> dict:
    attrs = group.attrs.asdict()
    return attrs.get("ome", attrs)


@pytest.fixture(params=["0.5", "0.4"])
def ngff_version(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_plate_reads_back_with_ome_zarr_reader(tmp_path: Path, ngff_version: str) -> None:
    store = ImageStore(tmp_path, ngff_version=ngff_version)  # type: ignore[arg-type]
    fields = [_field("B7", 0, 1), _field("B7", 1, 2), _field("C3", 0, 3, x_um=-5.0, y_um=7.5)]
    stored = [store.save("SIM/0001", 7, f, fields_per_well=2) for f in fields]

    plate_path = tmp_path / "SIM_0001" / "scan-7.ome.zarr"
    assert store.plate_path("SIM/0001", 7) == plate_path
    assert [s.path for s in stored] == [
        str(plate_path / "B" / "7" / "0"),
        str(plate_path / "B" / "7" / "1"),
        str(plate_path / "C" / "3" / "0"),
    ]

    (plate_node,) = _nodes(plate_path, Plate)
    plate = plate_node.specs[0].plate_data
    assert [r["name"] for r in plate["rows"]] == list("ABCDEFGH")
    assert [c["name"] for c in plate["columns"]] == [str(c) for c in range(1, 13)]
    assert [w["path"] for w in plate["wells"]] == ["B/7", "C/3"]
    assert plate["field_count"] == 2
    assert plate["version"] == ngff_version
    # The reader's plate overview tiles first fields into the 8 x 12 grid, unstored wells black.
    mosaic = np.asarray(plate_node.data[0])
    assert mosaic.shape == (8 * SHAPE[0], 12 * SHAPE[1])
    h, w = SHAPE
    np.testing.assert_array_equal(mosaic[1 * h : 2 * h, 6 * w : 7 * w], fields[0].image)
    np.testing.assert_array_equal(mosaic[2 * h : 3 * h, 2 * w : 3 * w], fields[2].image)
    assert not mosaic[:h, :w].any()

    well = zarr.open_group(str(plate_path / "B" / "7"), mode="r")
    assert [i["path"] for i in _ome(well)["well"]["images"]] == ["0", "1"]

    for field, result in zip(fields, stored, strict=True):
        (image_node,) = _nodes(result.path, Multiscales)
        assert [a["name"] for a in image_node.metadata["axes"]] == ["y", "x"]
        assert {a["unit"] for a in image_node.metadata["axes"]} == {"micrometer"}
        np.testing.assert_array_equal(np.asarray(image_node.data[0]), field.image)
        assert image_node.data[0].dtype == np.uint16
        assert image_node.data[1].shape == (SHAPE[0] // 2, SHAPE[1] // 2)
        full_res = image_node.metadata["coordinateTransformations"][0]
        scale = next(t["scale"] for t in full_res if t["type"] == "scale")
        translation = next(t["translation"] for t in full_res if t["type"] == "translation")
        assert scale == pytest.approx([PIXEL_UM, PIXEL_UM])
        # pixel (0, 0)'s centre, so that the frame's centre sits at the stage position
        assert translation == pytest.approx(
            [
                field.y_um - (SHAPE[0] - 1) / 2 * PIXEL_UM,
                field.x_um - (SHAPE[1] - 1) / 2 * PIXEL_UM,
            ]
        )
        np.testing.assert_array_equal(ImageStore.load(result.path), field.image)


def test_plate_is_valid_per_ome_zarr_models(tmp_path: Path, ngff_version: str) -> None:
    if ngff_version == "0.5":
        from ome_zarr_models.v05.hcs import HCS
    else:
        from ome_zarr_models.v04.hcs import HCS  # type: ignore[assignment]
    store = ImageStore(tmp_path, ngff_version=ngff_version)  # type: ignore[arg-type]
    for f in [_field("A1", 0, 1), _field("H12", 0, 2), _field("H12", 1, 3)]:
        store.save("P1", 3, f, fields_per_well=2)
    hcs = HCS.from_zarr(zarr.open_group(str(store.plate_path("P1", 3)), mode="r"))
    assert [w.path for w in hcs.ome_attributes.plate.wells] == ["A/1", "H/12"]
    assert [len(w.ome_attributes.well.images) for w in hcs.well_groups] == [1, 2]


def test_checksum_is_of_the_raw_pixels_and_detects_a_changed_pixel(tmp_path: Path) -> None:
    field = _field("D4", 0, 5)
    stored = ImageStore(tmp_path).save("P1", 1, field, fields_per_well=1)

    # As documented: SHA-256 of s0's pixels, C-order, little-endian, in the acquired dtype.
    s0 = zarr.open_group(stored.path, mode="r")["s0"]
    assert s0.dtype == np.uint16 and s0.shape == SHAPE
    expected = hashlib.sha256(np.ascontiguousarray(s0[...], dtype="<u2").tobytes()).hexdigest()
    assert stored.sha256 == expected == hashlib.sha256(field.image.tobytes()).hexdigest()
    assert ImageStore.verify(stored.path, stored.sha256)
    assert ImageStore.verify(stored.path, stored.sha256.upper())

    writable = zarr.open_array(str(Path(stored.path) / "s0"), mode="r+")
    writable[10, 20] = int(writable[10, 20]) ^ 1
    assert not ImageStore.verify(stored.path, stored.sha256)

    with pytest.raises(FileNotFoundError):
        ImageStore.verify(str(Path(stored.path).parent / "1"), stored.sha256)


def test_checksum_does_not_depend_on_memory_layout() -> None:
    image = np.random.default_rng(0).integers(0, 65535, SHAPE, dtype=np.uint16)
    big_endian_fortran = np.asfortranarray(image.astype(">u2"))
    assert pixel_sha256(big_endian_fortran) == pixel_sha256(image)
    assert pixel_sha256(image[:, ::-1]) != pixel_sha256(image)


def test_resume_after_a_crash_keeps_earlier_fields(tmp_path: Path, ngff_version: str) -> None:
    first = ImageStore(tmp_path, ngff_version=ngff_version)  # type: ignore[arg-type]
    done = first.save("P1", 9, _field("C3", 0, 1), fields_per_well=2)
    first.save("P1", 9, _field("C3", 1, 2), fields_per_well=2)
    first.save("P1", 9, _field("E5", 0, 3), fields_per_well=2)  # the well in flight...
    plate_path = first.plate_path("P1", 9)
    # ...crashed while writing its field 1: an array, but no image metadata yet.
    half_written = zarr.open_group(str(plate_path / "E" / "5"), mode="a").require_group("1")
    half_written.create_array("s0", shape=SHAPE, dtype=np.uint16)
    del first

    # The resumed scan re-acquires the well in flight with a new store on the same root.
    resumed = ImageStore(tmp_path, ngff_version=ngff_version)  # type: ignore[arg-type]
    again = _field("E5", 0, 30)
    redone = resumed.save("P1", 9, again, fields_per_well=2)
    well = zarr.open_group(str(plate_path / "E" / "5"), mode="r")
    assert [i["path"] for i in _ome(well)["well"]["images"]] == ["0"]  # not the half-written 1
    retry = _field("E5", 1, 31)
    resumed.save("P1", 9, retry, fields_per_well=2)
    resumed.save("P1", 9, _field("A12", 0, 4), fields_per_well=2)

    np.testing.assert_array_equal(ImageStore.load(redone.path), again.image)
    np.testing.assert_array_equal(ImageStore.load(str(plate_path / "E/5/1")), retry.image)
    assert ImageStore.verify(redone.path, redone.sha256)
    assert ImageStore.verify(done.path, done.sha256)  # written before the crash

    (plate_node,) = _nodes(plate_path, Plate)
    plate = plate_node.specs[0].plate_data
    assert [w["path"] for w in plate["wells"]] == ["A/12", "C/3", "E/5"]  # row-major
    assert len(plate["rows"]) == 8 and len(plate["columns"]) == 12
    assert plate["field_count"] == 2
    well = zarr.open_group(str(plate_path / "E" / "5"), mode="r")
    assert [i["path"] for i in _ome(well)["well"]["images"]] == ["0", "1"]


def test_refuses_what_it_cannot_store_faithfully(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    field = _field("A1", 0, 1)
    with pytest.raises(ValueError, match="field index"):
        store.save("P1", 1, field, fields_per_well=0)
    field.image = field.image.astype(np.float32)
    with pytest.raises(ValueError, match="uint8 or uint16"):
        store.save("P1", 1, field, fields_per_well=1)
    field.image = np.zeros((2, *SHAPE), np.uint16)
    with pytest.raises(ValueError, match="uint8 or uint16"):
        store.save("P1", 1, field, fields_per_well=1)
    with pytest.raises(ValueError, match="outside this plate"):
        store.save("P1", 1, _field("J1", 0, 1), fields_per_well=1)
    # A plate started in one format is not continued in the other.
    ImageStore(tmp_path).save("P1", 2, _field("A1", 0, 1), fields_per_well=1)
    with pytest.raises(ValueError, match="zarr v3"):
        ImageStore(tmp_path, ngff_version="0.4").save(
            "P1", 2, _field("A2", 0, 1), fields_per_well=1
        )


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [((47, 65), np.uint16), ((31, 18, 3), np.uint8)],
    ids=["grey-odd-uint16", "3-channel-uint8"],
)
def test_pyramid_reads_back_as_ome_zarr_local_mean(
    tmp_path: Path, ngff_version: str, shape: tuple[int, ...], dtype: type
) -> None:
    """Every level, as ome-zarr's reader returns it, is bit for bit skimage's local mean of the
    level above (what ome-zarr's ``Methods.LOCAL_MEAN`` writes), odd edges cut off."""
    from skimage.transform import downscale_local_mean

    top = np.iinfo(dtype).max
    image = np.random.default_rng(7).integers(0, top + 1, shape, dtype=dtype)
    image[0, 0] = top  # the extremes must survive the mean without wrapping
    field = _field("F6", 0, 1)
    field.image = image
    stored = ImageStore(tmp_path, ngff_version=ngff_version).save(  # type: ignore[arg-type]
        "P1", 4, field, fields_per_well=1
    )

    (node,) = _nodes(stored.path, Multiscales)
    expected = image.transpose(2, 0, 1) if image.ndim == 3 else image  # stored (C, H, W)
    assert len(node.data) == 2
    for level, data in enumerate(node.data):
        if level:
            height, width = expected.shape[-2:]
            block = (1,) * (expected.ndim - 2) + (2, 2)
            expected = downscale_local_mean(expected, block)[..., : height // 2, : width // 2]
            expected = expected.astype(dtype)
        read = np.asarray(data)
        assert read.dtype == dtype and read.shape == expected.shape
        np.testing.assert_array_equal(read, expected)


def test_plates_written_with_the_earlier_codec_still_read_back(
    tmp_path: Path, ngff_version: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """New arrays use blosc zstd-1 (issue 16); plates written before with zarr's default codec
    (zstd) read back unchanged, through the store and ome-zarr's reader, in the same plate."""
    import store.images as images

    store = ImageStore(tmp_path, ngff_version=ngff_version)  # type: ignore[arg-type]
    with monkeypatch.context() as patch:
        patch.setattr(images, "_compressor", lambda zarr_format: "auto")  # as before issue 16
        old = store.save("P1", 5, _field("A1", 0, 1), fields_per_well=1)
    new = store.save("P1", 5, _field("A2", 0, 2), fields_per_well=1)
    codecs = {
        which: str(zarr.open_array(str(Path(s.path) / "s0"), mode="r").metadata).lower()
        for which, s in (("old", old), ("new", new))
    }
    assert "blosc" not in codecs["old"] and "zstd" in codecs["old"]
    assert "blosc" in codecs["new"]
    for stored, seed in ((old, 1), (new, 2)):
        assert ImageStore.verify(stored.path, stored.sha256)
        (node,) = _nodes(stored.path, Multiscales)
        np.testing.assert_array_equal(np.asarray(node.data[0]), _field("A1", 0, seed).image)
    (plate_node,) = _nodes(store.plate_path("P1", 5), Plate)
    assert [w["path"] for w in plate_node.specs[0].plate_data["wells"]] == ["A/1", "A/2"]


def test_reconcile_removes_only_unrecorded_fields_and_relists(
    tmp_path: Path, ngff_version: str
) -> None:
    store = ImageStore(tmp_path, ngff_version=ngff_version)  # type: ignore[arg-type]
    kept = store.save("P1", 6, _field("B2", 0, 1), fields_per_well=2)
    retried = store.save(
        "P1", 6, _field("B2", 1, 2), fields_per_well=2, attempt="abc123", list_in_plate=False
    )
    orphans = [
        store.save("P1", 6, _field("B2", 1, 3), fields_per_well=2).path,  # listed by save
        store.save("P1", 6, _field("C4", 0, 4), fields_per_well=2, list_in_plate=False).path,
    ]
    recorded = [kept.path, retried.path]
    assert sorted(store.reconcile("P1", 6, recorded, fields_per_well=2, dry_run=True)) == orphans
    assert all(Path(p).is_dir() for p in orphans)
    assert sorted(store.reconcile("P1", 6, recorded, fields_per_well=2)) == orphans
    assert not any(Path(p).exists() for p in orphans)
    assert ImageStore.verify(kept.path, kept.sha256)
    assert ImageStore.verify(retried.path, retried.sha256)
    plate_path = store.plate_path("P1", 6)
    (plate_node,) = _nodes(plate_path, Plate)
    assert [w["path"] for w in plate_node.specs[0].plate_data["wells"]] == ["B/2"]
    well = zarr.open_group(str(plate_path / "B" / "2"), mode="r")
    assert [i["path"] for i in _ome(well)["well"]["images"]] == ["0", "1tabc123"]
    assert store.reconcile("P1", 6, recorded, fields_per_well=2) == []  # idempotent
