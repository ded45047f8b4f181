"""Real microscope files -> the frame :func:`models.pipeline.prepare` takes.

One module reads every file the product meets outside its own simulator, for training
(:mod:`training.imagesets.folder`), for importing a lab's plates and for tests:

- TIFF, OME-TIFF and ImageJ hyperstacks with :mod:`tifffile`. The first series is read (an
  OME-TIFF of several images, e.g. stage positions, gives its first). Its axes come
  from the metadata (OME, ImageJ, tifffile's shaped JSON): ``CYX`` / ``ZCYX`` / ``TZCYX``
  channel-first stacks, ``YXC`` / ``YXS`` interleaved samples, ``YXS`` RGB colour. A plain
  multi-page TIFF without axes (``IYX`` / ``QYX``, or pages that tifffile lists as separate
  series of one shape) is read as a stack of **channels** when it has 2..8 pages (the usual
  reason to keep planes of one field in one file); longer stacks are ambiguous (a Z or time
  series?) and need ``plane={"I": n}``.
- PNG and JPEG with OpenCV (``cv2.IMREAD_UNCHANGED``): 1 channel is grey, 3 are BGR colour,
  4 are BGRA (alpha dropped).
- OME-Zarr (NGFF 0.4 / 0.5) images with :mod:`zarr`: one ``multiscales`` image, for example a
  field of an HCS plate, axes from its metadata.

The frame is always channels last: (H, W) grey, (H, W, 3) BGR colour, or (H, W, C) acquired
channels with C >= 2; one selected channel becomes (H, W). Pixels are uint8 or uint16; other
types (float, int16, int32, ...) are refused with a message rather than guessed at, because a
wrong guess of their range silently changes every feature.

Bit depth (the significant bits of uint16 data; a 12-bit camera stores 0..4095 in 16 bits, and
scaling it as 16-bit data makes every frame 16 times too dark, so QC calls it underexposed):
an explicit ``bit_depth`` argument wins, then the metadata (OME ``Pixels/@SignificantBits``, the
TIFF ``MaxSampleValue`` tag, Micro-Manager's ``BitDepth``, TIFF ``BitsPerSample`` other than 8
or 16), else ``None``: the caller infers one depth for a whole folder with
:func:`infer_bit_depth`. A stated depth of the type's full width (16 for uint16) counts as not
stated: most writers put it whatever the camera delivered. A stated depth that the pixels
exceed is an error, not a clip. Z and T default to index 0 (``plane`` picks another).
Compressed TIFFs (LZW, JPEG, ...) decode through ``imagecodecs``.

Every error is an :class:`ImageReadError` (a ``ValueError``) that names the file, says what is
wrong and how to fix it.
"""

from __future__ import annotations

import json
import logging
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import tifffile
import zarr

logger = logging.getLogger(__name__)

READABLE_SUFFIXES: tuple[str, ...] = (
    ".tif",
    ".tiff",
    ".ome.tif",
    ".ome.tiff",
    ".png",
    ".jpg",
    ".jpeg",
)
_TIFF_SUFFIXES = (".tif", ".tiff")  # also covers .ome.tif / .ome.tiff
_OPENCV_SUFFIXES = (".png", ".jpg", ".jpeg")

# A plain multi-page TIFF without axes is read as channels up to this many pages; a longer one
# is more likely a Z or time series and needs an explicit plane.
MAX_PAGE_CHANNELS = 8

_ACCEPTED = "uint8 or uint16 (8..16 significant bits)"
_BIT_DEPTH_FIX = "pass the right depth with --bit-depth (bit_depth=...)"

# Axis letters (tifffile / OME): Y, X spatial; C channel; S samples (colour or interleaved
# channels); Z focus; T time. Every other letter (I, Q: tifffile's "pages, meaning unknown";
# R, P, M, ...) is a plane axis the caller may pick with ``plane``.
_SPATIAL = ("Y", "X")


class ImageReadError(ValueError):
    """A file that cannot be read as a frame. The message names the file, what is wrong and,
    where there is one, the fix; ``path``, ``problem`` and ``fix`` keep the parts."""

    def __init__(self, path: str | Path, problem: str, fix: str = "") -> None:
        self.path = str(path)
        self.problem = problem
        self.fix = fix
        # A problem that already names the file ("cannot read image <path> ...") is not
        # prefixed with it again.
        message = problem if self.path in problem else f"{self.path}: {problem}"
        super().__init__(f"{message}; {fix}" if fix else message)

    def __reduce__(self) -> tuple[Any, ...]:
        # Raised inside worker processes: pickle by the constructor's arguments, not the message.
        return (type(self), (self.path, self.problem, self.fix))


@dataclass(frozen=True)
class ImageInfo:
    """What a file holds, from its metadata / headers (pixels decoded only where unavoidable:
    PNG / JPEG, whose OpenCV reader has no header-only mode)."""

    path: str
    shape: tuple[int, ...]  # of the stored data, in ``axes`` order
    axes: str  # e.g. "CYX", "YXS", "TZCYX", "YX", "IYX" (tifffile / OME letters, upper case)
    dtype: str  # numpy name, e.g. "uint16"
    channels: int  # acquired channels (C axis, interleaved non-colour samples, page channels)
    colour: bool  # RGB / BGR colour (one channel): the pipeline takes its luma
    bit_depth: int | None  # significant bits when known (8 for uint8); None: infer from data
    # "ome:SignificantBits" | "tiff:MaxSampleValue" | "tiff:BitsPerSample" |
    # "micromanager:BitDepth" | "dtype" (uint8) | "unknown"
    bit_depth_source: str
    channel_names: tuple[str, ...]  # from the metadata; () when it names none


@dataclass(frozen=True)
class ImageRead:
    """A frame ready for :func:`models.pipeline.prepare` (``prepare(frame, config, bit_depth)``)."""

    # (H, W) grey, (H, W, 3) BGR colour, or (H, W, C) acquired channels (C >= 2, channels
    # last); uint8 or uint16, C-contiguous.
    frame: np.ndarray
    info: ImageInfo
    bit_depth: int | None  # significant bits to pass to prepare(); None for uint8 / unknown
    channels: tuple[int, ...]  # the source channels ``frame`` holds, in order (0-based)
    # Where ``bit_depth`` came from: "argument", an ``ImageInfo.bit_depth_source``, or "unknown".
    bit_depth_source: str = "unknown"


@dataclass(frozen=True)
class _Layout:
    """How to pull a frame out of one stored array: its axes, and which axis is what."""

    info: ImageInfo
    channel_axis: str | None  # axis letter holding the acquired channels
    colour_axis: str | None  # axis letter holding colour samples (RGB or BGR order)
    colour_order: str  # "RGB" (TIFF) or "BGR" (OpenCV)
    # Reads the array at an orthogonal index (one int / list / slice per axis).
    fetch: Callable[[tuple[Any, ...]], np.ndarray]


# -- public API ---------------------------------------------------------------------------------


def is_readable(path: str | Path) -> bool:
    """True if the file name ends in one of :data:`READABLE_SUFFIXES` (case-insensitive)."""
    return Path(path).name.lower().endswith(READABLE_SUFFIXES)


def infer_bit_depth(max_value: int, dtype: Any) -> int:
    """The smallest bit depth whose range 0..2**bits - 1 covers ``max_value``.

    uint16: 8..16 (the pipeline takes no less than 8 bits); uint8: always 8.

    Raises:
        ValueError: for a negative value, or a dtype other than uint8 / uint16.
    """
    kind = np.dtype(dtype)
    value = int(max_value)
    if value < 0:
        raise ValueError(f"max_value must be >= 0, got {value}")
    if kind == np.uint8:
        return 8
    if kind != np.uint16:
        raise ValueError(f"bit depth applies to uint8 / uint16 data, not {kind}")
    if value > 65535:
        raise ValueError(f"max_value {value} does not fit uint16")
    return max(8, value.bit_length())


def inspect_image(path: str | Path) -> ImageInfo:
    """Shape, axes, type, channels, colour and bit depth of an image file (see the module doc).

    Raises:
        ImageReadError: missing file, unknown suffix, a file the reader cannot parse, or a pixel
            type other than uint8 / uint16.
    """
    with _open(path) as layout:
        return layout.info


def read_image(
    path: str | Path,
    *,
    channels: Sequence[int] | None = None,
    plane: Mapping[str, int] | None = None,
    bit_depth: int | None = None,
) -> ImageRead:
    """Read one frame of an image file, channels last.

    Args:
        path: a TIFF / OME-TIFF / ImageJ TIFF, PNG or JPEG file.
        channels: acquired channels to keep, 0-based, in this order (default: all). One channel
            gives an (H, W) frame. A colour image has one channel (0).
        plane: index along each other axis, by letter (case-insensitive), e.g. ``{"Z": 3}`` or
            ``{"T": 0, "Z": 2}``; for a long plain multi-page TIFF ``{"I": n}`` picks page n.
            Default 0 on Z and T: which Z plane is in focus is not in the file, so the first
            one is taken, not the middle one. Other axes longer than 1 must be picked.
        bit_depth: significant bits of uint16 data (8..16); overrides the metadata. Ignored
            for uint8 files (a folder may mix them).

    Returns:
        An :class:`ImageRead`; its ``bit_depth`` is what to pass to ``prepare`` (None when the
        file does not say and none was given: infer it over the folder).

    Raises:
        ImageReadError: as :func:`inspect_image`, and for channels or planes out of range, an
            ambiguous stack, or pixels above the stated bit depth.
    """
    with _open(path) as layout:
        return _read(layout, channels, plane, bit_depth)


def read_ome_zarr_image(
    path_or_group: str | Path | zarr.Group,
    *,
    channels: Sequence[int] | None = None,
    plane: Mapping[str, int] | None = None,
    level: int = 0,
    bit_depth: int | None = None,
) -> ImageRead:
    """Read one frame of an OME-Zarr image (a group with ``multiscales``, e.g. one field of an
    HCS plate), channels last. Axes (``c``, ``z``, ``t``, ``y``, ``x``) come from the metadata;
    channel names from ``omero.channels[].label``. ``level`` picks the pyramid level (0 = full
    resolution). NGFF states no bit depth, so it is unknown unless ``bit_depth`` is given.
    ``channels``, ``plane`` and ``bit_depth`` work as in :func:`read_image`.

    Raises:
        ImageReadError: not an image group, a level that does not exist, and as read_image.
    """
    layout = _zarr_layout(path_or_group, level)
    return _read(layout, channels, plane, bit_depth)


# -- opening files ------------------------------------------------------------------------------


class _Opened:
    """Context manager around a :class:`_Layout`, closing the TIFF file on exit."""

    def __init__(self, layout: _Layout, close: Callable[[], None] | None = None) -> None:
        self.layout = layout
        self._close = close

    def __enter__(self) -> _Layout:
        return self.layout

    def __exit__(self, *exc: object) -> None:
        if self._close is not None:
            self._close()


def _open(path: str | Path) -> _Opened:
    path = Path(path)
    name = path.name.lower()
    if not name.endswith(READABLE_SUFFIXES):
        raise ImageReadError(
            path,
            f"unsupported file type {path.suffix or '(no suffix)'}",
            f"readable files end in {', '.join(READABLE_SUFFIXES)}",
        )
    if not path.is_file():
        raise ImageReadError(path, "file does not exist (or is not a file)")
    if name.endswith(_TIFF_SUFFIXES):
        return _tiff_layout(path)
    return _Opened(_opencv_layout(path))


def _check_dtype(path: Path, dtype: np.dtype[Any]) -> None:
    if dtype not in (np.uint8, np.uint16):
        raise ImageReadError(
            path,
            f"unsupported pixel type {dtype}; expected {_ACCEPTED}",
            "convert the file (e.g. in Fiji: Image > Type > 16-bit) before reading it",
        )


def _opencv_layout(path: Path) -> _Layout:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageReadError(
            path,
            f"cannot read image {path} (OpenCV could not decode it: corrupt or not a "
            f"{path.suffix.lstrip('.').upper()} file)",
            "re-export the file",
        )
    array = np.asarray(image)
    _check_dtype(path, array.dtype)
    colour = array.ndim == 3 and array.shape[2] in (3, 4)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and not colour):
        raise ImageReadError(path, f"unsupported image shape {array.shape}")
    axes = "YXS" if colour else "YX"
    bits, source = (8, "dtype") if array.dtype == np.uint8 else (None, "unknown")
    info = ImageInfo(
        str(path), tuple(array.shape), axes, str(array.dtype), 1, colour, bits, source, ()
    )
    return _Layout(info, None, "S" if colour else None, "BGR", lambda index: array[index])


def _tiff_layout(path: Path) -> _Opened:
    try:
        tif = tifffile.TiffFile(str(path))
    except Exception as exc:  # tifffile raises many types for damaged files
        raise ImageReadError(
            path,
            f"cannot read image {path} (not a readable TIFF: {type(exc).__name__}: {exc})",
            "re-export the file",
        ) from exc
    try:
        layout = _tiff_describe(path, tif)
    except BaseException:
        tif.close()
        raise
    return _Opened(layout, tif.close)


def _tiff_describe(path: Path, tif: tifffile.TiffFile) -> _Layout:
    if not tif.series:
        raise ImageReadError(
            path, "the TIFF holds no image (it is empty or corrupt)", "re-export the file"
        )
    series = tif.series[0]
    axes = series.axes.upper()
    shape = tuple(int(n) for n in series.shape)
    dtype = np.dtype(series.dtype)
    _check_dtype(path, dtype)
    page = tif.pages.first
    fetch: Callable[[tuple[Any, ...]], np.ndarray]

    stacked = _plain_page_series(tif)
    if stacked:
        # tifffile lists each page of a plain multi-page TIFF (pages appended one by one) as
        # its own series: they are the planes of one stack.
        axes, shape = "I" + axes, (len(stacked), *shape)

        def fetch(index: tuple[Any, ...]) -> np.ndarray:
            pages = range(len(stacked))[index[0]] if isinstance(index[0], slice) else index[0]
            if isinstance(pages, int):
                return np.asarray(stacked[pages].asarray())[index[1:]]
            return np.stack([np.asarray(stacked[p].asarray())[index[1:]] for p in pages])

    else:

        def fetch(index: tuple[Any, ...]) -> np.ndarray:
            try:
                store = series.aszarr(level=0)  # full resolution of a pyramid
                array = zarr.open_array(store, mode="r")
                return np.asarray(array.oindex[index])
            except Exception as exc:  # codecs and damaged files raise many types
                raise ImageReadError(
                    path, f"cannot decode its pixels ({type(exc).__name__}: {exc})"
                ) from exc

    if "Y" not in axes or "X" not in axes:
        raise ImageReadError(path, f"the image has no Y and X axes (axes {axes})")
    photometric = getattr(page, "photometric", None)
    photometric = int(tifffile.PHOTOMETRIC.MINISBLACK if photometric is None else photometric)
    if photometric == int(tifffile.PHOTOMETRIC.MINISWHITE):
        # Inverting needs the range of the data, which the file may not state: refuse rather
        # than feed the model a negative.
        raise ImageReadError(
            path,
            "the TIFF stores inverted grey values (PhotometricInterpretation MinIsWhite)",
            "save it as an ordinary (MinIsBlack) greyscale TIFF, e.g. with Fiji",
        )
    if photometric == int(tifffile.PHOTOMETRIC.PALETTE):
        raise ImageReadError(
            path,
            "the TIFF holds palette (indexed-colour) values, not intensities",
            "save it as greyscale or RGB",
        )
    samples = shape[axes.index("S")] if "S" in axes else 1
    colour = photometric in (int(tifffile.PHOTOMETRIC.RGB), int(tifffile.PHOTOMETRIC.YCBCR)) and (
        samples in (3, 4)
    )
    channel_axis = _channel_axis(axes, shape, colour)
    pixels = _ome_pixels(tif)
    names = _channel_names(tif, pixels)
    channel_count = shape[axes.index(channel_axis)] if channel_axis else 1
    if len(names) != channel_count:
        names = ()
    bits, source = _tiff_bit_depth(tif, pixels, page, dtype)
    info = ImageInfo(str(path), shape, axes, str(dtype), channel_count, colour, bits, source, names)
    return _Layout(info, channel_axis, "S" if colour else None, "RGB", fetch)


def _plain_page_series(tif: tifffile.TiffFile) -> list[Any]:
    """The series of a multi-page TIFF that tifffile split page by page, or [] if it did not."""
    series = list(tif.series)
    if len(series) < 2 or tif.is_ome or tif.is_imagej:
        return []
    first = series[0]
    if len(first.shape) != 2 and not (len(first.shape) == 3 and first.axes.upper() == "YXS"):
        return []
    same = all(s.shape == first.shape and s.dtype == first.dtype for s in series)
    return series if same and all(len(s.pages) == 1 for s in series) else []


def _channel_axis(axes: str, shape: tuple[int, ...], colour: bool) -> str | None:
    """Which axis holds the acquired channels: C, else non-colour samples S, else (for plain
    stacks of 2..MAX_PAGE_CHANNELS pages) the page axis I / Q."""
    if "C" in axes and (shape[axes.index("C")] > 1 or not _longer(axes, shape, "SIQ")):
        return "C"
    if "S" in axes and not colour:
        return "S"
    for letter in "IQ":
        if letter in axes and 2 <= shape[axes.index(letter)] <= MAX_PAGE_CHANNELS:
            return letter
    return "C" if "C" in axes else None


def _longer(axes: str, shape: tuple[int, ...], letters: str) -> bool:
    return any(a in letters and n > 1 for a, n in zip(axes, shape, strict=True))


# -- metadata -----------------------------------------------------------------------------------


def _ome_pixels(tif: tifffile.TiffFile) -> ElementTree.Element | None:
    """The ``Pixels`` element of the first OME ``Image`` (namespace-agnostic), if any."""
    xml = tif.ome_metadata if tif.is_ome else None
    if not xml:
        return None
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        logger.warning("%s: unreadable OME-XML metadata; ignoring it", tif.filename)
        return None
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] == "Pixels":
            return element
    return None


def _channel_names(tif: tifffile.TiffFile, pixels: ElementTree.Element | None) -> tuple[str, ...]:
    if pixels is not None:
        channels = [e for e in pixels if e.tag.rsplit("}", 1)[-1] == "Channel"]
        names = tuple(str(e.get("Name") or "") for e in channels)
        if names and all(names):
            return names
    labels = (tif.imagej_metadata or {}).get("Labels") if tif.is_imagej else None
    if isinstance(labels, list | tuple) and labels and all(isinstance(x, str) for x in labels):
        return tuple(labels)
    return ()


def _as_bits(value: Any) -> int | None:
    try:
        bits = int(value)
    except (TypeError, ValueError):
        return None
    return bits if 1 <= bits <= 16 else None


def _tiff_bit_depth(
    tif: tifffile.TiffFile, pixels: ElementTree.Element | None, page: Any, dtype: np.dtype[Any]
) -> tuple[int | None, str]:
    """(significant bits, source) from the TIFF's metadata, in the module's precedence order.

    A stated depth equal to the full width of the type (16 for uint16) says nothing: it is what
    most writers put by default, whatever the camera delivered, so it is treated as unknown and
    the data decide. Depths below 8 are raised to 8 (the pipeline's minimum; exact for data
    that small).
    """
    if dtype == np.uint8:
        return 8, "dtype"
    full = 8 * dtype.itemsize
    candidates: list[tuple[int | None, str]] = []
    if pixels is not None:
        candidates.append((_as_bits(pixels.get("SignificantBits")), "ome:SignificantBits"))
    tags = getattr(page, "tags", {})
    max_tag = tags.get("MaxSampleValue") if hasattr(tags, "get") else None
    if max_tag is not None:
        value = max_tag.value
        peak = max(value) if isinstance(value, tuple | list) else value
        if isinstance(peak, int) and 0 < peak < (1 << full) - 1:
            candidates.append((infer_bit_depth(peak, dtype), "tiff:MaxSampleValue"))
    candidates.append((_micromanager_bit_depth(tif, page), "micromanager:BitDepth"))
    bps = int(getattr(page, "bitspersample", full) or full)
    if bps not in (8, 16):
        candidates.append((_as_bits(bps), "tiff:BitsPerSample"))
    for bits, source in candidates:
        if bits is not None and bits < full:
            return max(8, bits), source
    return None, "unknown"


def _micromanager_bit_depth(tif: tifffile.TiffFile, page: Any) -> int | None:
    """``BitDepth`` from Micro-Manager metadata: the per-image tag 51123, the ImageJ ``Info``
    JSON, the image description JSON, or the MMStack summary."""
    sources: list[Any] = []
    tags = getattr(page, "tags", {})
    tag = tags.get(51123) if hasattr(tags, "get") else None
    if tag is not None:
        sources.append(tag.value)
    if tif.is_imagej:
        sources.append((tif.imagej_metadata or {}).get("Info"))
    sources.append(getattr(page, "description", None))
    for source in sources:
        bits = _bit_depth_in(source)
        if bits is not None:
            return bits
    if tif.is_micromanager:
        # The MMStack header reader logs a warning for every block it cannot find; the file may
        # still carry the summary we want.
        tiff_logger = logging.getLogger("tifffile")
        level = tiff_logger.level
        tiff_logger.setLevel(logging.ERROR)
        try:
            summary = (tif.micromanager_metadata or {}).get("Summary")
        except Exception:  # a damaged MMStack header is not a reason to refuse the pixels
            summary = None
        finally:
            tiff_logger.setLevel(level)
        return _bit_depth_in(summary)
    return None


def _bit_depth_in(value: Any) -> int | None:
    """``BitDepth`` in a dict or a JSON object string (top level or under ``Summary``)."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        text = value.strip()
        if not text.startswith("{"):
            return None
        try:
            value = json.loads(text)
        except ValueError:
            return None
    if not isinstance(value, dict):
        return None
    if "BitDepth" in value:
        return _as_bits(value["BitDepth"])
    summary = value.get("Summary")
    return _bit_depth_in(summary) if isinstance(summary, dict) else None


# -- OME-Zarr -----------------------------------------------------------------------------------


def _zarr_where(path_or_group: str | Path | zarr.Group) -> str:
    """A path for messages: the folder of a local group, else the store's URL."""
    if not isinstance(path_or_group, zarr.Group):
        return str(path_or_group)
    root = getattr(path_or_group.store, "root", None)
    if isinstance(root, Path):
        return str(root / path_or_group.path) if path_or_group.path else str(root)
    return str(path_or_group.store_path)


def _ngff_axis_letter(axis: Any) -> str:
    """One upper-case letter per NGFF axis: by its type for channel / time axes (any name),
    else the first letter of its name (z, y, x)."""
    if isinstance(axis, dict):
        kind = str(axis.get("type") or "")
        if kind in ("channel", "time"):
            return "C" if kind == "channel" else "T"
        axis = axis.get("name") or "?"
    return str(axis)[:1].upper() or "?"


def _zarr_layout(path_or_group: str | Path | zarr.Group, level: int) -> _Layout:
    where = _zarr_where(path_or_group)
    if isinstance(path_or_group, zarr.Group):
        group = path_or_group
    else:
        if not Path(path_or_group).exists():
            raise ImageReadError(where, "no OME-Zarr image here (the path does not exist)")
        try:
            group = zarr.open_group(str(path_or_group), mode="r")
        except Exception as exc:  # zarr raises many types for what is not a group
            raise ImageReadError(where, f"not a zarr group ({type(exc).__name__}: {exc})") from exc
    attrs: dict[str, Any] = dict(group.attrs.asdict())
    nested = attrs.get("ome")  # NGFF 0.5 (zarr v3) nests its metadata under "ome"; 0.4 does not
    ome: dict[str, Any] = dict(nested) if isinstance(nested, dict) else attrs
    multiscales = ome.get("multiscales")
    if not multiscales:
        hint = (
            "this is an HCS plate or well: open one field (e.g. <plate>/A/1/0)"
            if "plate" in ome or "well" in ome
            else "pass the group of one image (it has multiscales metadata)"
        )
        raise ImageReadError(where, "not an OME-Zarr image (no multiscales metadata)", hint)
    image = multiscales[0]
    datasets = image.get("datasets") or []
    if not 0 <= level < len(datasets):
        raise ImageReadError(
            where, f"level {level} does not exist; the image has levels 0..{len(datasets) - 1}"
        )
    try:
        array = group[datasets[level]["path"]]
    except KeyError as exc:
        raise ImageReadError(where, f"level {level} is listed but its array is missing") from exc
    if not isinstance(array, zarr.Array):
        raise ImageReadError(where, f"level {level} is not an array")
    raw_axes = image.get("axes") or ["t", "c", "z", "y", "x"][-array.ndim :]
    axes = "".join(_ngff_axis_letter(a) for a in raw_axes)
    if len(set(axes)) != len(axes):
        raise ImageReadError(where, f"unsupported axes {raw_axes} (letters {axes} repeat)")
    shape = tuple(int(n) for n in array.shape)
    if len(axes) != len(shape):
        raise ImageReadError(where, f"axes {axes} do not match the array shape {shape}")
    dtype = np.dtype(array.dtype)
    _check_dtype(Path(where), dtype)
    channel_count = shape[axes.index("C")] if "C" in axes else 1
    labels = [c.get("label") for c in (ome.get("omero") or {}).get("channels", [])]
    names = tuple(str(x) for x in labels) if labels and all(labels) else ()
    if len(names) != channel_count:
        names = ()
    bits, source = (8, "dtype") if dtype == np.uint8 else (None, "unknown")
    info = ImageInfo(where, shape, axes, str(dtype), channel_count, False, bits, source, names)

    def fetch(index: tuple[Any, ...]) -> np.ndarray:
        return np.asarray(array.oindex[index])

    return _Layout(info, "C" if "C" in axes else None, None, "RGB", fetch)


# -- selection ----------------------------------------------------------------------------------


def _describe_channels(info: ImageInfo) -> str:
    names = f" ({', '.join(info.channel_names)})" if info.channel_names else ""
    return f"{info.channels} channel{'s' if info.channels != 1 else ''}{names}"


def _read(
    layout: _Layout,
    channels: Sequence[int] | None,
    plane: Mapping[str, int] | None,
    bit_depth: int | None,
) -> ImageRead:
    info = layout.info
    path = info.path
    axes, shape = info.axes, info.shape
    picks = {str(k).upper(): v for k, v in (plane or {}).items()}
    for letter, value in picks.items():
        if letter in ("C", "S") or letter in _SPATIAL:
            fix = "pick channels with channels=/--channels" if letter in "CS" else ""
            raise ImageReadError(path, f"plane cannot index the {letter} axis", fix)
        if letter not in axes:
            raise ImageReadError(
                path,
                f"plane names axis {letter}, which the image does not have (axes {axes})",
            )
        size = shape[axes.index(letter)]
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise ImageReadError(
                path, f"plane index for {letter} must be an integer, not {value!r}"
            )
        if not 0 <= int(value) < size:
            raise ImageReadError(
                path,
                f"plane {letter}={value} is out of range; the image has {letter} 0..{size - 1}",
            )
    channel_axis = layout.channel_axis
    if channel_axis is not None and channel_axis in picks:
        # A page axis picked as a plane is no longer the channel axis.
        channel_axis = None
    count = shape[axes.index(channel_axis)] if channel_axis else 1
    if channels is not None:
        chosen = [int(c) for c in channels]
        if not chosen:
            raise ImageReadError(path, "channels is empty", "name at least one channel")
        bad = [c for c in chosen if not 0 <= c < count]
        if bad:
            raise ImageReadError(
                path,
                f"channel {bad[0]} does not exist: the image has {_describe_channels(info)}, "
                f"indices 0..{count - 1}",
                "pick existing channels with --channels (0-based)",
            )
    else:
        chosen = list(range(count))
    index: list[Any] = []
    kept: list[str] = []
    for letter, size in zip(axes, shape, strict=True):
        if letter in _SPATIAL:
            index.append(slice(None))
            kept.append(letter)
        elif letter == channel_axis:
            index.append(chosen)
            kept.append("C")
        elif letter == layout.colour_axis:
            index.append(slice(0, 3))  # drop alpha
            kept.append("S")
        elif letter in picks:
            index.append(int(picks[letter]))
        elif size == 1 or letter in ("Z", "T"):
            index.append(0)
        else:
            raise ImageReadError(
                path,
                f"the image has {size} planes along axis {letter} (axes {axes}) and which one "
                "to read is not known",
                f"pick one with plane={{'{letter}': n}} (0..{size - 1})",
            )
    data = layout.fetch(tuple(index))
    order = [kept.index(a) for a in ("Y", "X", "C", "S") if a in kept]
    data = np.transpose(data, order)
    if "C" in kept and "S" in kept:
        if len(chosen) != 1:
            raise ImageReadError(
                path,
                f"colour images with several channels ({_describe_channels(info)}) are not "
                "supported",
                "pick one channel with --channels",
            )
        data = data[:, :, 0, :]
    elif "C" in kept and len(chosen) == 1:
        data = data[:, :, 0]
    if layout.colour_axis is not None and layout.colour_order == "RGB":
        data = data[:, :, ::-1]  # the pipeline's colour frames are BGR (OpenCV)
    frame = np.ascontiguousarray(data)
    bits, source = _resolve_bit_depth(info, frame, bit_depth)
    return ImageRead(frame, info, bits, tuple(chosen), source)


def _resolve_bit_depth(
    info: ImageInfo, frame: np.ndarray, bit_depth: int | None
) -> tuple[int | None, str]:
    """The bit depth to pass to prepare(), checked against the pixels read."""
    if frame.dtype == np.uint8:
        return None, "dtype"
    if bit_depth is not None:
        if isinstance(bit_depth, bool) or not isinstance(bit_depth, int | np.integer):
            raise ImageReadError(info.path, f"bit_depth must be an integer, not {bit_depth!r}")
        if not 8 <= int(bit_depth) <= 16:
            raise ImageReadError(
                info.path,
                f"bit depth {bit_depth} is out of range for uint16 data",
                "pass --bit-depth between 8 and 16",
            )
        bits, source = int(bit_depth), "argument"
    elif info.bit_depth is not None:
        bits, source = info.bit_depth, info.bit_depth_source
    else:
        return None, "unknown"
    peak = int(frame.max()) if frame.size else 0
    if peak > (1 << bits) - 1:
        stated = "the bit depth given" if source == "argument" else f"the file's {source}"
        needed = infer_bit_depth(peak, frame.dtype)
        raise ImageReadError(
            info.path,
            f"pixel values reach {peak}, above 2**{bits} - 1 = {(1 << bits) - 1} allowed by "
            f"{stated} ({bits} bits): the stated bit depth is wrong",
            f"{_BIT_DEPTH_FIX}, at least {needed}",
        )
    return bits, source


def describe(info: ImageInfo) -> str:
    """One line for logs: ``"CYX (2, 64, 64) uint16, 2 channels (Phase, BF), 12-bit (ome:...)"``."""
    depth = (
        f"{info.bit_depth}-bit ({info.bit_depth_source})"
        if info.bit_depth is not None
        else "bit depth unknown"
    )
    colour = ", colour" if info.colour else ""
    return f"{info.axes} {info.shape} {info.dtype}, {_describe_channels(info)}{colour}, {depth}"
