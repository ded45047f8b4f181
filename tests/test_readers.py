"""models.readers on synthetic files in every layout (written here with tifffile, OpenCV and
ome-zarr), and ImageFolder training data read through it (training.imagesets.folder)."""

import json
import logging
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
import zarr

from models.pipeline import PipelineConfig, prepare
from models.readers import (
    READABLE_SUFFIXES,
    ImageReadError,
    describe,
    infer_bit_depth,
    inspect_image,
    read_image,
    read_ome_zarr_image,
)
from training.imagesets import folder_image_info, image_folder_set, read_frame

SIZE = 64
GREY = PipelineConfig(height=32, width=32, ws=3, k=4)
CHANNELS = PipelineConfig(height=32, width=32, ws=3, k=4, band_source="channels")


def _cells(seed: int, size: int = SIZE) -> np.ndarray:
    """(size, size) uint8 texture that passes QC: mid-grey background, dark blobs, noise."""
    rng = np.random.default_rng(seed)
    image = np.full((size, size), 140.0) + rng.normal(0, 6, (size, size))
    for _ in range(5):
        y, x = rng.integers(8, size - 8, 2)
        cv2.circle(image, (int(x), int(y)), 6, 60.0, -1)
    return np.clip(image, 0, 255).astype(np.uint8)


def _bits(image8: np.ndarray, bits: int) -> np.ndarray:
    """8-bit data as ``bits``-bit uint16 (left-shifted: the top value is 255 << (bits - 8))."""
    return image8.astype(np.uint16) << np.uint16(bits - 8)


def _stack(channels: int, bits: int = 12, seed: int = 0) -> np.ndarray:
    """(C, H, W) uint16 ``bits``-bit planes, each different."""
    return np.stack([_bits(_cells(seed * 10 + c), bits) for c in range(channels)])


def _ome(path: Path, data: np.ndarray, axes: str, **metadata) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, data, ome=True, metadata={"axes": axes, **metadata})
    return path


# -- TIFF layouts -------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_ome_tiff_cyx_is_read_channels_last_with_its_bit_depth(tmp_path, channels):
    data = _stack(channels)
    names = [f"ch{c}" for c in range(channels)]
    path = _ome(tmp_path / "a.ome.tif", data, "CYX", SignificantBits=12, Channel={"Name": names})
    info = inspect_image(path)
    # tifffile drops an axis of length 1 from an OME series.
    axes, shape = ("CYX", (channels, SIZE, SIZE)) if channels > 1 else ("YX", (SIZE, SIZE))
    assert (info.axes, info.shape, info.dtype) == (axes, shape, "uint16")
    assert info.channels == channels and not info.colour
    assert (info.bit_depth, info.bit_depth_source) == (12, "ome:SignificantBits")
    assert info.channel_names == tuple(names)
    read = read_image(path)
    expected = data[0] if channels == 1 else np.moveaxis(data, 0, -1)
    assert read.frame.shape == expected.shape and np.array_equal(read.frame, expected)
    assert read.frame.flags.c_contiguous
    assert read.bit_depth == 12 and read.bit_depth_source == "ome:SignificantBits"
    assert read.channels == tuple(range(channels))
    if channels == 2:
        assert describe(info) == (
            f"CYX (2, {SIZE}, {SIZE}) uint16, 2 channels (ch0, ch1), 12-bit (ome:SignificantBits)"
        )


def test_channel_selection_keeps_the_order_given(tmp_path):
    data = _stack(4)
    path = _ome(tmp_path / "a.ome.tiff", data, "CYX")
    read = read_image(path, channels=[3, 1])
    assert np.array_equal(read.frame, np.stack([data[3], data[1]], axis=-1))
    assert read.channels == (3, 1)
    one = read_image(path, channels=[2])
    assert one.frame.shape == (SIZE, SIZE) and np.array_equal(one.frame, data[2])


def test_imagej_hyperstack_planes_and_channels(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 4096, (3, 5, 2, 32, 32), dtype=np.uint16)  # T Z C Y X
    path = tmp_path / "hyper.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "TZCYX", "Labels": ["a", "b"]})
    info = inspect_image(path)
    assert info.axes == "TZCYX" and info.channels == 2
    # Default: T 0 and Z 0 (the in-focus plane is not in the file), all channels.
    assert np.array_equal(read_image(path).frame, np.moveaxis(data[0, 0], 0, -1))
    picked = read_image(path, plane={"z": 3, "T": 2}, channels=[1])
    assert np.array_equal(picked.frame, data[2, 3, 1])


def test_interleaved_yxc_samples_are_channels(tmp_path):
    data = np.moveaxis(_stack(3), 0, -1)  # (H, W, 3) but not colour
    path = tmp_path / "yxc.tif"
    tifffile.imwrite(path, data, photometric="minisblack", planarconfig="contig")
    info = inspect_image(path)
    assert info.axes == "YXS" and info.channels == 3 and not info.colour
    assert np.array_equal(read_image(path).frame, data)
    shaped = tmp_path / "yxc2.tif"
    tifffile.imwrite(shaped, data[:, :, :2], photometric="minisblack", metadata={"axes": "YXC"})
    assert inspect_image(shaped).axes == "YXC"
    assert np.array_equal(read_image(shaped).frame, data[:, :, :2])


@pytest.mark.parametrize("pages", [2, 4, 8])
def test_plain_multipage_tiff_pages_are_channels(tmp_path, pages):
    data = _stack(pages, bits=8).astype(np.uint8)
    path = tmp_path / "pages.tif"
    tifffile.imwrite(path, data, photometric="minisblack", metadata=None)  # no axes: "IYX"
    info = inspect_image(path)
    assert info.axes == "IYX" and info.channels == pages
    assert np.array_equal(read_image(path).frame, np.moveaxis(data, 0, -1))
    assert read_image(path).bit_depth is None  # uint8


def test_pages_appended_one_by_one_are_one_stack(tmp_path):
    data = _stack(3)
    path = tmp_path / "appended.tif"
    for plane in data:
        tifffile.imwrite(path, plane, append=True)
    info = inspect_image(path)
    assert info.axes == "IYX" and info.shape == (3, SIZE, SIZE) and info.channels == 3
    assert np.array_equal(read_image(path).frame, np.moveaxis(data, 0, -1))
    assert np.array_equal(read_image(path, channels=[2]).frame, data[2])


def test_a_long_plain_stack_needs_a_plane(tmp_path):
    data = np.stack([np.full((16, 16), i, np.uint16) for i in range(9)])
    path = tmp_path / "zstack.tif"
    tifffile.imwrite(path, data, metadata=None)
    assert inspect_image(path).channels == 1
    with pytest.raises(ImageReadError, match=r"zstack\.tif: the image has 9 planes along axis I"):
        read_image(path)
    with pytest.raises(ImageReadError, match=r"plane=\{'I': n\} \(0\.\.8\)"):
        read_image(path)
    assert int(read_image(path, plane={"I": 4}).frame[0, 0]) == 4
    # Picking a page of a short stack makes it one grey image, not channels.
    short = tmp_path / "short.tif"
    tifffile.imwrite(short, data[:3], photometric="minisblack", metadata=None)
    assert read_image(short, plane={"i": 2}).frame.shape == (16, 16)


def test_rgb_tiff_is_colour_in_bgr_order_and_alpha_is_dropped(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50  # R G B
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, rgb, photometric="rgb")
    info = inspect_image(path)
    assert info.colour and info.channels == 1 and info.axes == "YXS"
    assert read_image(path).frame[0, 0].tolist() == [50, 100, 200]  # B G R
    rgba = np.concatenate([rgb, np.full((8, 8, 1), 255, np.uint8)], axis=2)
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    assert read_image(tmp_path / "rgba.tif").frame[0, 0].tolist() == [50, 100, 200]
    with pytest.raises(ImageReadError, match=r"channel 1 does not exist: the image has 1 channel"):
        read_image(path, channels=[1])


def test_pyramidal_ome_tiff_is_read_at_full_resolution(tmp_path):
    data = _stack(2)
    path = tmp_path / "pyramid.ome.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(data, subifds=1, metadata={"axes": "CYX"}, tile=(32, 32))
        tif.write(data[:, ::2, ::2], subfiletype=1, tile=(32, 32))
    assert inspect_image(path).shape == (2, SIZE, SIZE)
    assert np.array_equal(read_image(path, channels=[1]).frame, data[1])


def test_compressed_tiff_written_by_opencv(tmp_path):
    # OpenCV writes LZW-compressed TIFFs (tifffile decodes them with imagecodecs).
    image = _bits(_cells(3), 16)
    path = tmp_path / "lzw.tif"
    assert cv2.imwrite(str(path), image)
    assert np.array_equal(read_image(path).frame, image)


# -- bit depth ----------------------------------------------------------------------------------


def test_max_sample_value_tag(tmp_path):
    path = tmp_path / "max.tif"
    tifffile.imwrite(path, _bits(_cells(0), 12), extratags=[(281, "H", 1, 4095, True)])
    info = inspect_image(path)
    assert (info.bit_depth, info.bit_depth_source) == (12, "tiff:MaxSampleValue")
    # A MaxSampleValue of the full range says nothing.
    tifffile.imwrite(path, _bits(_cells(0), 12), extratags=[(281, "H", 1, 65535, True)])
    assert inspect_image(path).bit_depth_source == "unknown"


def test_bits_per_sample_12(tmp_path):
    path = tmp_path / "packed.tif"
    data = _bits(_cells(0), 12)
    tifffile.imwrite(path, data, bitspersample=12)
    info = inspect_image(path)
    assert (info.bit_depth, info.bit_depth_source) == (12, "tiff:BitsPerSample")
    assert np.array_equal(read_image(path).frame, data)


def test_micromanager_bit_depth(tmp_path):
    data = _bits(_cells(0), 11)
    tagged = tmp_path / "mm_tag.tif"
    mm = json.dumps({"BitDepth": 11, "Camera": "HamamatsuHam_DCAM"})
    tifffile.imwrite(tagged, data, extratags=[(51123, "s", 0, mm, True)], metadata=None)
    assert inspect_image(tagged).bit_depth_source == "micromanager:BitDepth"
    assert read_image(tagged).bit_depth == 11
    described = tmp_path / "mm_description.tif"
    summary = json.dumps({"Summary": {"BitDepth": "11", "Prefix": "run"}})
    tifffile.imwrite(described, data, description=summary, metadata=None)
    info = inspect_image(described)
    assert (info.bit_depth, info.bit_depth_source) == (11, "micromanager:BitDepth")


def test_bit_depth_precedence(tmp_path):
    data = _bits(_cells(0), 10)
    path = tmp_path / "both.ome.tif"
    mm = json.dumps({"BitDepth": 14})
    tifffile.imwrite(
        path,
        data,
        ome=True,
        metadata={"axes": "YX", "SignificantBits": 12},
        extratags=[(281, "H", 1, 8191, True), (51123, "s", 0, mm, True)],
    )
    # The OME statement beats MaxSampleValue (13) and Micro-Manager (14).
    assert (inspect_image(path).bit_depth, inspect_image(path).bit_depth_source) == (
        12,
        "ome:SignificantBits",
    )
    # An explicit depth beats the metadata.
    read = read_image(path, bit_depth=10)
    assert (read.bit_depth, read.bit_depth_source) == (10, "argument")
    # OME SignificantBits of the full width (what many writers put by default) says nothing.
    full = _ome(tmp_path / "full.ome.tif", data, "YX", SignificantBits=16)
    assert inspect_image(full).bit_depth is None and read_image(full).bit_depth is None
    # 8-bit data: no depth for prepare(), an explicit one is ignored (folders mix them).
    eight = tmp_path / "eight.png"
    cv2.imwrite(str(eight), _cells(0))
    assert inspect_image(eight).bit_depth == 8 and inspect_image(eight).bit_depth_source == "dtype"
    assert read_image(eight, bit_depth=12).bit_depth is None


def test_a_stated_bit_depth_the_pixels_exceed_is_an_error(tmp_path):
    path = _ome(tmp_path / "liar.ome.tif", _bits(_cells(0), 12), "YX", SignificantBits=10)
    with pytest.raises(ImageReadError) as raised:
        read_image(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: pixel values reach ")
    assert "allowed by the file's ome:SignificantBits (10 bits): the stated bit depth is wrong" in (
        message
    )
    assert "--bit-depth" in message and "at least 12" in message
    with pytest.raises(ImageReadError, match=r"allowed by the bit depth given \(11 bits\)"):
        read_image(path, bit_depth=11)
    with pytest.raises(ImageReadError, match=r"bit depth 17 is out of range for uint16 data"):
        read_image(path, bit_depth=17)
    assert read_image(path, bit_depth=12).bit_depth == 12


@pytest.mark.parametrize(
    ("peak", "dtype", "bits"),
    [
        (0, np.uint16, 8),
        (255, np.uint16, 8),
        (256, np.uint16, 9),
        (2047, np.uint16, 11),
        (4011, np.uint16, 12),
        (4096, np.uint16, 13),
        (65535, np.uint16, 16),
        (200, np.uint8, 8),
    ],
)
def test_infer_bit_depth(peak, dtype, bits):
    assert infer_bit_depth(peak, dtype) == bits


def test_infer_bit_depth_refuses_what_it_cannot_cover():
    with pytest.raises(ValueError, match=">= 0"):
        infer_bit_depth(-1, np.uint16)
    with pytest.raises(ValueError, match="not float32"):
        infer_bit_depth(1, np.float32)
    with pytest.raises(ValueError, match="does not fit uint16"):
        infer_bit_depth(70000, np.uint16)


# -- PNG / JPEG ---------------------------------------------------------------------------------


def test_png_and_jpeg(tmp_path):
    grey = _cells(0)
    cv2.imwrite(str(tmp_path / "g.png"), grey)
    read = read_image(tmp_path / "g.png")
    assert np.array_equal(read.frame, grey) and read.info.axes == "YX" and read.bit_depth is None
    wide = _bits(grey, 12)
    cv2.imwrite(str(tmp_path / "w.png"), wide)
    info = inspect_image(tmp_path / "w.png")
    assert (info.dtype, info.bit_depth, info.bit_depth_source) == ("uint16", None, "unknown")
    assert np.array_equal(read_image(tmp_path / "w.png", bit_depth=12).frame, wide)
    bgr = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    bgr[..., 0] = 7
    cv2.imwrite(str(tmp_path / "c.png"), bgr)
    colour = read_image(tmp_path / "c.png")
    assert colour.info.colour and colour.info.channels == 1 and np.array_equal(colour.frame, bgr)
    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA))
    assert np.array_equal(read_image(tmp_path / "a.png").frame, bgr)
    cv2.imwrite(str(tmp_path / "j.JPEG"), grey)
    jpeg = read_image(tmp_path / "j.JPEG")
    assert jpeg.frame.shape == (SIZE, SIZE) and jpeg.frame.dtype == np.uint8


# -- errors -------------------------------------------------------------------------------------


def test_errors_name_the_file_the_problem_and_the_fix(tmp_path):
    with pytest.raises(ImageReadError, match=r"nope\.tif: file does not exist"):
        read_image(tmp_path / "nope.tif")
    (tmp_path / "x.bmp").write_bytes(b"BM")
    with pytest.raises(ImageReadError, match=r"x\.bmp: unsupported file type \.bmp; readable"):
        inspect_image(tmp_path / "x.bmp")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ImageReadError) as raised:
        read_image(tmp_path / "broken.png")
    assert str(raised.value) == (
        f"cannot read image {tmp_path / 'broken.png'} (OpenCV could not decode it: corrupt or "
        "not a PNG file); re-export the file"
    )
    (tmp_path / "junk.tiff").write_bytes(b"not a tiff at all")
    with pytest.raises(ImageReadError, match=r"cannot read image .*junk\.tiff \(not a readable"):
        read_image(tmp_path / "junk.tiff")
    (tmp_path / "broken.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(ImageReadError, match=r"broken\.tif: the TIFF holds no image \(it is empty"):
        read_image(tmp_path / "broken.tif")
    tifffile.imwrite(tmp_path / "float.tif", np.zeros((8, 8), np.float32))
    with pytest.raises(
        ImageReadError,
        match=r"float\.tif: unsupported pixel type float32; expected uint8 or uint16",
    ):
        inspect_image(tmp_path / "float.tif")
    tifffile.imwrite(tmp_path / "signed.tif", np.zeros((8, 8), np.int16))
    with pytest.raises(ImageReadError, match=r"signed\.tif: unsupported pixel type int16"):
        read_image(tmp_path / "signed.tif")


def test_inverted_and_palette_tiffs_are_refused(tmp_path):
    tifffile.imwrite(tmp_path / "inv.tif", _cells(0), photometric="miniswhite")
    with pytest.raises(ImageReadError, match=r"inv\.tif: the TIFF stores inverted grey values"):
        inspect_image(tmp_path / "inv.tif")
    colormap = np.zeros((3, 256), np.uint16)
    tifffile.imwrite(tmp_path / "pal.tif", _cells(0), photometric="palette", colormap=colormap)
    with pytest.raises(ImageReadError, match=r"pal\.tif: the TIFF holds palette"):
        read_image(tmp_path / "pal.tif")


def test_channel_and_plane_errors(tmp_path):
    path = _ome(tmp_path / "two.ome.tif", _stack(2), "CYX", Channel={"Name": ["Phase", "BF"]})
    with pytest.raises(ImageReadError) as raised:
        read_image(path, channels=[0, 2])
    assert str(raised.value) == (
        f"{path}: channel 2 does not exist: the image has 2 channels (Phase, BF), indices 0..1; "
        "pick existing channels with --channels (0-based)"
    )
    with pytest.raises(ImageReadError, match="channels is empty"):
        read_image(path, channels=[])
    with pytest.raises(ImageReadError, match=r"plane names axis Z, which the image does not have"):
        read_image(path, plane={"Z": 0})
    with pytest.raises(ImageReadError, match=r"plane cannot index the C axis; pick channels"):
        read_image(path, plane={"C": 1})
    stack = tmp_path / "z.ome.tif"
    _ome(stack, np.zeros((3, 8, 8), np.uint16), "ZYX")
    with pytest.raises(ImageReadError, match=r"plane Z=3 is out of range; the image has Z 0\.\.2"):
        read_image(stack, plane={"Z": 3})
    with pytest.raises(ImageReadError, match="must be an integer"):
        read_image(stack, plane={"Z": 1.5})  # type: ignore[dict-item]


def test_errors_survive_worker_processes():
    error = ImageReadError("/data/a.tif", "something is wrong", "do this")
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, ImageReadError) and str(copy) == str(error)
    assert str(copy) == "/data/a.tif: something is wrong; do this"
    assert isinstance(copy, ValueError)


def test_readable_suffixes():
    assert set(READABLE_SUFFIXES) == {
        ".tif",
        ".tiff",
        ".ome.tif",
        ".ome.tiff",
        ".png",
        ".jpg",
        ".jpeg",
    }


# -- OME-Zarr -----------------------------------------------------------------------------------


def _write_zarr(path: Path, data: np.ndarray, axes: str, version: str = "0.4") -> zarr.Group:
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_image

    fmt = FormatV04() if version == "0.4" else FormatV05()
    group = zarr.open_group(str(path), mode="w", zarr_format=fmt.zarr_format)
    window = {"min": 0, "max": 65535, "start": 0, "end": 4095}
    omero = {
        "channels": [
            {"label": f"ch{c}", "color": "FFFFFF", "window": window}
            for c in range(data.shape[axes.index("c")])
        ]
    }
    write_image(data, group, axes=axes, fmt=fmt, scale_factors=[2], omero=omero)
    return group


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_image_cyx(tmp_path, version):
    data = _stack(3)
    group = _write_zarr(tmp_path / "img.zarr", data, "cyx", version)
    read = read_ome_zarr_image(tmp_path / "img.zarr")
    assert read.info.axes == "CYX" and read.info.channels == 3
    assert read.info.channel_names == ("ch0", "ch1", "ch2")
    assert np.array_equal(read.frame, np.moveaxis(data, 0, -1)) and read.bit_depth is None
    one = read_ome_zarr_image(group, channels=[1], bit_depth=12)
    assert np.array_equal(one.frame, data[1]) and one.bit_depth == 12
    assert one.info.path == str(tmp_path / "img.zarr")
    assert read_ome_zarr_image(group, level=1).frame.shape == (SIZE // 2, SIZE // 2, 3)


def test_ome_zarr_errors(tmp_path):
    _write_zarr(tmp_path / "img.zarr", _stack(2), "cyx")
    with pytest.raises(
        ImageReadError, match=r"level 2 does not exist; the image has levels 0\.\.1"
    ):
        read_ome_zarr_image(tmp_path / "img.zarr", level=2)
    with pytest.raises(ImageReadError, match="the path does not exist"):
        read_ome_zarr_image(tmp_path / "none.zarr")
    plate = zarr.open_group(str(tmp_path / "plate.zarr"), mode="w", zarr_format=2)
    plate.attrs["plate"] = {"rows": [{"name": "A"}]}
    with pytest.raises(ImageReadError, match=r"no multiscales metadata\); this is an HCS plate"):
        read_ome_zarr_image(plate)
    with pytest.raises(ImageReadError, match=r"channel 5 does not exist: the image has 2 channels"):
        read_ome_zarr_image(tmp_path / "img.zarr", channels=[5])


# -- the compatibility wrapper -------------------------------------------------------------------


def test_read_frame_gives_one_grey_or_colour_image(tmp_path):
    planes = np.stack([_cells(0), _cells(0) // 2 + 10]).astype(np.uint16)
    tifffile.imwrite(tmp_path / "two.tif", planes, metadata={"axes": "CYX"})
    frame = read_frame(tmp_path / "two.tif")
    expected = np.rint((planes[0].astype(float) + planes[1]) / 2).astype(np.uint16)
    assert frame.dtype == np.uint16 and np.array_equal(frame, expected)
    cv2.imwrite(str(tmp_path / "x.png"), np.zeros((4, 5, 4), np.uint8))
    assert read_frame(tmp_path / "x.png").shape == (4, 5, 3)
    tifffile.imwrite(tmp_path / "x.tif", np.zeros((4, 5), np.float32))
    with pytest.raises(ValueError, match=r"x\.tif: unsupported pixel type float32"):
        read_frame(tmp_path / "x.tif")


# -- ImageFolder training data -------------------------------------------------------------------


def _tree(root: Path, write, per_class: int = 3) -> Path:
    for label, name in enumerate(("high", "low")):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            write(folder / f"f{i}", 100 * label + i)
    return root


@pytest.mark.parametrize("stated", [True, False])
def test_folder_of_12_bit_two_channel_ome_tiffs(tmp_path, stated):
    def write(stem: Path, seed: int) -> None:
        _ome(
            stem.with_suffix(".ome.tif"),
            _stack(2, bits=12, seed=seed),
            "CYX",
            Channel={"Name": ["Phase", "BF"]},
            **({"SignificantBits": 12} if stated else {}),
        )

    source = "ome:SignificantBits" if stated else "inferred"

    root = _tree(tmp_path / "data", write)
    info = folder_image_info(root)
    assert info.channels == 2 and info.channel_names == ("Phase", "BF")
    data = image_folder_set(root, CHANNELS, workers=1, progress=False)
    assert data.features.shape == (6, 2, 32, 32) and np.isfinite(data.features).all()
    assert (data.bit_depth, data.bit_depth_source, data.channels) == (12, source, 2)
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1] and data.excluded == 0
    # Both channels reach the model: the two bands differ.
    assert not np.array_equal(data.features[:, 0], data.features[:, 1])
    part = data.subset(np.array([0, 4]))
    assert (part.bit_depth, part.bit_depth_source, part.channels) == (12, source, 2)
    # One channel of the same files through the grey pipeline.
    grey = image_folder_set(root, GREY, channels=[1], workers=1, progress=False)
    assert grey.channels == 1 and grey.features.shape[0] == 6
    with pytest.raises(ValueError, match=r"the files have 2 channels \(Phase, BF\) but band_sou"):
        image_folder_set(root, GREY, workers=1, progress=False)


def test_folder_bit_depth_is_inferred_once_for_all_files(tmp_path, caplog):
    def write(stem: Path, seed: int) -> None:
        tifffile.imwrite(stem.with_suffix(".tif"), _bits(_cells(seed), 12), metadata=None)

    root = _tree(tmp_path / "data", write)
    with caplog.at_level(logging.INFO, logger="training.imagesets.folder"):
        data = image_folder_set(root, GREY, workers=1, progress=False)
    assert (data.bit_depth, data.bit_depth_source) == (12, "inferred")
    assert data.excluded == 0 and len(data) == 6
    peak = max(int(_bits(_cells(s), 12).max()) for s in (0, 1, 2, 100, 101, 102))
    assert (
        f"bit depth 12 inferred from the data: max value {peak} over 6 files; pass --bit-depth "
        "to override"
    ) in caplog.text
    # A folder of 8-bit files has no depth to infer.
    eight = image_folder_set(
        _tree(tmp_path / "eight", lambda s, seed: cv2.imwrite(str(s) + ".png", _cells(seed))),
        GREY,
        workers=1,
        progress=False,
    )
    assert eight.bit_depth_source == "dtype"
    # Each file was prepared as the service prepares a 12-bit frame.
    served = prepare(_bits(_cells(100), 12), GREY, bit_depth=12)
    assert served.features is not None
    assert np.array_equal(served.features, data.features[3])


def test_files_that_state_their_depth_keep_it_and_the_rest_share_one(tmp_path):
    def write(stem: Path, seed: int) -> None:
        if seed % 2:  # odd seeds: 12-bit with metadata; even: 11-bit data, no metadata
            _ome(stem.with_suffix(".ome.tif"), _bits(_cells(seed), 12), "YX", SignificantBits=12)
        else:
            tifffile.imwrite(stem.with_suffix(".tif"), _bits(_cells(seed), 11), metadata=None)

    data = image_folder_set(_tree(tmp_path / "data", write), GREY, workers=1, progress=False)
    assert data.bit_depth is None and data.bit_depth_source.startswith("mixed: ")
    assert "12 bits (ome:SignificantBits): 2 files" in data.bit_depth_source
    assert "11 bits (inferred): 4 files" in data.bit_depth_source
    served = prepare(_bits(_cells(0), 11), GREY, bit_depth=11)  # high/f0: inferred 11 bits
    assert served.features is not None and np.array_equal(data.features[0], served.features)


def test_all_underexposed_is_one_error_naming_the_fix(tmp_path):
    def write(stem: Path, seed: int) -> None:
        tifffile.imwrite(stem.with_suffix(".tif"), _bits(_cells(seed), 12), metadata=None)

    root = _tree(tmp_path / "data", write)
    # Scaled as 16-bit data, 12-bit frames are 16 times too dark.
    with pytest.raises(ValueError) as raised:
        image_folder_set(root, GREY, bit_depth=16, workers=1, progress=False)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith('all 6 images were excluded by QC (6 underexposed, e.g. "mean V ')
    assert message.endswith(
        "nothing to train on. If these are 16-bit files from a camera with fewer significant "
        "bits, pass --bit-depth (e.g. --bit-depth 12); if they are really this dark, lower the "
        "pipeline's min_mean_v."
    )


def test_qc_exclusions_are_counted_per_reason(tmp_path, caplog):
    root = tmp_path / "d"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        cv2.imwrite(str(root / name / "ok.png"), _cells(ord(name)))
    cv2.imwrite(str(root / "a" / "white.png"), np.full((SIZE, SIZE), 250, np.uint8))
    cv2.imwrite(str(root / "b" / "white.png"), np.full((SIZE, SIZE), 252, np.uint8))
    cv2.imwrite(str(root / "b" / "black.png"), np.full((SIZE, SIZE), 2, np.uint8))
    with caplog.at_level(logging.INFO, logger="training.imagesets"):
        data = image_folder_set(root, GREY, workers=1, progress=False)
    assert len(data) == 2 and data.excluded == 3
    assert data.excluded_by_reason == {"overexposed": 2, "underexposed": 1}
    assert "QC excluded 2 of 5 images as overexposed (e.g. a/white: mean V 250.0 > 240)" in (
        caplog.text
    )


def test_folder_files_must_agree_on_channels(tmp_path):
    def write(stem: Path, seed: int) -> None:
        channels = 3 if seed == 101 else 2
        _ome(stem.with_suffix(".ome.tif"), _stack(channels, seed=seed), "CYX")

    root = _tree(tmp_path / "data", write)
    with pytest.raises(ValueError) as raised:
        image_folder_set(root, CHANNELS, workers=1, progress=False)
    assert (
        "the files do not agree on their channels (5 files with 2 (e.g. f0.ome.tif), 1 file "
        in (str(raised.value))
    )
    assert "pick the same ones with --channels" in str(raised.value)
    # Picking the same two channels everywhere resolves it.
    data = image_folder_set(root, CHANNELS, channels=[0, 1], bit_depth=12, workers=1)
    assert data.channels == 2 and (data.bit_depth, data.bit_depth_source) == (12, "argument")
    grey_root = _tree(tmp_path / "grey", lambda s, seed: cv2.imwrite(f"{s}.png", _cells(seed)))
    with pytest.raises(ValueError, match=r"band_source='channels' needs files with >= 2 acquired"):
        image_folder_set(grey_root, CHANNELS, workers=1, progress=False)


def test_folder_of_z_stacks_reads_the_plane_asked_for(tmp_path, caplog):
    def write(stem: Path, seed: int) -> None:
        planes = np.stack([_stack(2, seed=seed + z) for z in range(3)])  # Z C Y X
        _ome(stem.with_suffix(".ome.tif"), planes, "ZCYX", SignificantBits=12)

    root = _tree(tmp_path / "data", write, per_class=2)
    (root / "high" / "._f0.ome.tif").write_bytes(b"macOS resource fork, not an image")
    with caplog.at_level(logging.INFO, logger="training.imagesets.folder"):
        first = image_folder_set(root, CHANNELS, workers=1, progress=False)
    assert "holds 3 planes along Z (axes ZCYX); reading Z=0" in caplog.text
    assert len(first) == 4
    third = image_folder_set(root, CHANNELS, plane={"Z": 2}, workers=1, progress=False)
    served = prepare(np.moveaxis(_stack(2, seed=2), 0, -1), CHANNELS, bit_depth=12)
    assert served.features is not None and np.array_equal(third.features[0], served.features)


def test_folder_worker_processes_read_the_same(tmp_path):
    def write(stem: Path, seed: int) -> None:
        _ome(stem.with_suffix(".ome.tif"), _stack(2, seed=seed), "CYX", SignificantBits=12)

    root = _tree(tmp_path / "data", write, per_class=2)
    one = image_folder_set(root, CHANNELS, workers=1, progress=False)
    two = image_folder_set(root, CHANNELS, workers=2, progress=False)
    assert np.array_equal(one.features, two.features) and two.bit_depth == 12
