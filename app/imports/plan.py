"""Planning an import, which is also its dry run: what a folder holds and how it will be read.

:func:`plan_import` walks a folder of image files named in one of :mod:`app.imports.layouts`'
layouts, or opens an OME-Zarr HCS plate, into an :class:`ImportPlan` of wells and fields, then
describes its pixels (shape, type, channel names, one bit depth for the whole plate) from names
and metadata, reading pixels only where no metadata gives the bit depth. Nothing is written.
:func:`read_field` reads one field's pixels and :func:`pipeline_problem` says why the model
cannot take a frame; running an import (:mod:`app.imports.run`) uses both.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import zarr

from app.errors import NotFoundError
from app.imports.layouts import (
    CHANNEL_PREFIX,
    ImportLayoutError,
    NameParser,
    NoMatchError,
    token_order,
)
from app.schemas.imports import ImportOptions, ImportSummary, ImportWell, Layout, UnmatchedFile
from hardware.plate import PlateGeometry, WellNameError
from models.pipeline import PipelineConfig
from models.readers import (
    ImageRead,
    ImageReadError,
    infer_bit_depth,
    inspect_image,
    is_readable,
    read_image,
    read_ome_zarr_image,
)

logger = logging.getLogger(__name__)

# The scans table allows 1..25 fields per well (its check constraint).
MAX_FIELDS_PER_WELL = 25
# A walk that finds more files than this is not one plate's folder (a whole share, a home).
MAX_FOLDER_FILES = 100_000
_SHOWN = 5  # problems named in one error message


# -- the plan ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class FieldSource:
    """Where one field's pixels are: one file per channel (in channel order), or one file or
    OME-Zarr image holding every channel."""

    well: str
    index: int  # 0-based field index in the scan
    label: str  # the field as the source names it ("s2", "f03", "1"), for messages
    files: tuple[Path, ...] = ()
    zarr_image: Path | None = None

    @property
    def first(self) -> Path:
        return self.zarr_image if self.zarr_image is not None else self.files[0]


@dataclass
class WellSource:
    well: str
    fields: list[FieldSource]
    problem: str | None = None  # the well is recorded as failed with this reason


@dataclass
class ImportPlan:
    """What a folder holds and how it will be read; :meth:`summary` is the dry run."""

    folder: Path
    layout: Layout
    barcode: str
    options: ImportOptions
    wells: list[WellSource]
    channel_names: list[str]
    planes: list[str]
    file_count: int
    unmatched: list[UnmatchedFile]
    other_files: list[str]
    bit_depth: int | None = None
    bit_depth_source: str = "dtype"
    shape: tuple[int, ...] | None = None
    dtype: str | None = None
    # Channels picked inside each file or OME-Zarr image (sources that hold every channel).
    read_channels: list[int] | None = None
    shown_as: str = ""  # the folder as messages name it (the API's relative path)

    @property
    def fields_per_well(self) -> int:
        return max((len(w.fields) for w in self.wells), default=1)

    @property
    def field_count(self) -> int:
        return sum(len(w.fields) for w in self.wells)

    def well(self, name: str) -> WellSource:
        return next(w for w in self.wells if w.well == name)

    def summary(self) -> ImportSummary:
        return ImportSummary(
            folder=self.shown_as or str(self.folder),
            layout=self.layout,
            barcode=self.barcode,
            wells=[
                ImportWell(well=w.well, fields=len(w.fields), problem=w.problem) for w in self.wells
            ],
            fields=self.field_count,
            files=self.file_count,
            channels=self.channel_names,
            planes=self.planes,
            shape=list(self.shape) if self.shape is not None else None,
            dtype=self.dtype,
            bit_depth=self.bit_depth,
            bit_depth_source=self.bit_depth_source,
            unmatched=self.unmatched,
            other_files=self.other_files,
        )


def _walk(folder: Path, where: str) -> Iterator[Path]:
    """Every file under ``folder``, sorted, without following links to folders (a link to a
    file is listed; the caller checks where it leads)."""
    count = 0
    for directory, subdirs, files in os.walk(folder):
        subdirs.sort()
        for name in sorted(files):
            count += 1
            if count > MAX_FOLDER_FILES:
                raise ImportLayoutError(
                    f"{where} holds more than {MAX_FOLDER_FILES} files: point the import at one "
                    "plate's folder"
                )
            yield Path(directory) / name


def _is_image(path: Path) -> bool:
    return is_readable(path) and not path.name.startswith(".")


def _escapes(path: Path, confine: Path | None) -> bool:
    return confine is not None and not path.resolve().is_relative_to(confine)


def _default_barcode(folder: Path, plate_name: str | None = None) -> str:
    """The plate's barcode when none is given: the OME-Zarr plate's name, else the folder's
    name, spelled as a barcode may be (letters, digits, ._-; at most 64)."""
    name = plate_name or folder.resolve().name
    for suffix in (".ome.zarr", ".zarr"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    spelled = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-._")[:64]
    if not spelled:
        raise ImportLayoutError(f"cannot make a barcode of {name!r}: give one (--barcode)")
    return spelled


def plan_import(
    folder: Path,
    options: ImportOptions,
    *,
    geometry: PlateGeometry,
    confine: Path | None = None,
    shown_as: str | None = None,
) -> ImportPlan:
    """Read ``folder``'s names and metadata into an :class:`ImportPlan`; nothing is written.

    ``confine`` (the API's import root, resolved): files reached through links that leave it
    are listed as unmatched and never opened. ``shown_as``: how messages name the folder (the
    API's path relative to its root; default: the path as given).

    Raises NotFoundError (no such folder), ImportLayoutError (nothing to import, duplicates, a
    pattern without a well group, channels that do not exist, more than 25 fields a well).
    """
    where = shown_as or str(folder)
    if not folder.is_dir():
        raise NotFoundError(f"no folder {where}")
    try:
        if options.layout == "ome-zarr":
            plan = _plan_ome_zarr(folder, options, geometry, confine, where)
        else:
            plan = _plan_files(folder, options, geometry, confine, where)
        plan.shown_as = where
        _describe_pixels(plan)
    except OSError as exc:  # permissions, a file vanishing mid-walk: the folder, not the service
        raise ImportLayoutError(f"cannot read {where}: {exc.strerror or exc}") from exc
    except ImageReadError as exc:  # a read outside _readable (every field is checked there)
        raise ImportLayoutError(str(exc)) from exc
    if plan.fields_per_well > MAX_FIELDS_PER_WELL:
        raise ImportLayoutError(
            f"a well has {plan.fields_per_well} fields; a scan holds at most "
            f"{MAX_FIELDS_PER_WELL} per well (is the field group of the pattern right?)"
        )
    logger.info(
        "import plan of %s (%s): %d wells, %d fields, channels %s, %d unmatched",
        folder,
        plan.layout,
        len(plan.wells),
        plan.field_count,
        plan.channel_names,
        len(plan.unmatched),
    )
    return plan


def _plan_files(
    folder: Path,
    options: ImportOptions,
    geometry: PlateGeometry,
    confine: Path | None,
    where: str,
) -> ImportPlan:
    parser = NameParser(options.layout, geometry, options.pattern)
    found: dict[tuple[str, str | None, str | None, str | None], list[Path]] = {}
    unmatched: list[UnmatchedFile] = []
    other: list[str] = []
    for path in _walk(folder, where):
        relative = PurePosixPath(path.relative_to(folder).as_posix())
        if not _is_image(path):
            other.append(str(relative))
            continue
        if _escapes(path, confine):
            unmatched.append(
                UnmatchedFile(path=str(relative), reason="a link leaving the import root")
            )
            continue
        try:
            name = parser.parse(relative)
        except NoMatchError as exc:
            unmatched.append(UnmatchedFile(path=str(relative), reason=str(exc)))
            continue
        found.setdefault((name.well, name.field, name.channel, name.plane), []).append(path)
    if unmatched:
        logger.warning(
            "%d image files of %s fit no well: %s", len(unmatched), folder, unmatched[:_SHOWN]
        )
    if not found:
        raise ImportLayoutError(
            f"no image file in {where} fits the {options.layout} layout "
            f"({len(unmatched)} images did not, {len(other)} other files)"
            + (f"; for example {unmatched[0].path}: {unmatched[0].reason}" if unmatched else "")
        )
    duplicates = [(key, paths) for key, paths in found.items() if len(paths) > 1]
    if duplicates:
        shown = "; ".join(
            f"{_describe(key)}: {', '.join(str(p.relative_to(folder)) for p in paths)}"
            for key, paths in duplicates[:_SHOWN]
        )
        raise ImportLayoutError(
            f"{len(duplicates)} fields have more than one file for the same well, field, channel "
            f"and plane ({shown}); several time points? import one time point's folder at a time"
        )

    # Channels of the plate: every (channel, plane) pair seen; z planes are channels too.
    pairs = sorted(
        {(k[2], k[3]) for k in found}, key=lambda p: (token_order(p[0]), token_order(p[1]))
    )
    planes = sorted({k[3] for k in found if k[3] is not None}, key=token_order)
    prefix = CHANNEL_PREFIX.get(options.layout, "channel ")
    names = [
        " ".join(
            part
            for part in (
                f"{prefix}{c}" if c is not None else "",
                f"z{p}" if p is not None and len(planes) > 1 else "",
            )
            if part
        )
        or "image"
        for c, p in pairs
    ]
    read_channels = None
    if options.channels is not None and len(pairs) > 1:
        _check_positions(options.channels, names, "the plate's channel list")
        pairs = [pairs[i] for i in options.channels]
        names = [names[i] for i in options.channels]
    elif options.channels is not None:
        read_channels = list(options.channels)  # the files themselves hold the channels

    wells: dict[str, dict[str | None, dict[tuple[str | None, str | None], Path]]] = {}
    for (well, fld, channel, plane), paths in found.items():
        wells.setdefault(well, {}).setdefault(fld, {})[(channel, plane)] = paths[0]
    sources = []
    for well in sorted(wells, key=geometry.parse):
        by_field = wells[well]
        fields, missing = [], []
        for index, fld in enumerate(sorted(by_field, key=token_order)):
            files = by_field[fld]
            absent = [n for pair, n in zip(pairs, names, strict=True) if pair not in files]
            if absent:
                missing.append(f"field {fld or 1} has no file for {', '.join(absent)}")
            label = fld or "1"
            fields.append(
                FieldSource(well, index, label, tuple(files[p] for p in pairs if p in files))
            )
        sources.append(WellSource(well, fields, "; ".join(missing) or None))
    file_count = sum(len(f.files) for w in sources for f in w.fields)
    return ImportPlan(
        folder=folder,
        layout=options.layout,
        barcode=options.barcode or _default_barcode(folder),
        options=options,
        wells=sources,
        channel_names=names,
        planes=[f"z{p}" for p in planes],
        file_count=file_count,
        unmatched=unmatched,
        other_files=other,
        read_channels=read_channels,
    )


def _describe(key: tuple[str, str | None, str | None, str | None]) -> str:
    well, fld, channel, plane = key
    parts = [well, f"field {fld}" if fld else "", f"channel {channel}" if channel else ""]
    parts.append(f"plane {plane}" if plane else "")
    return " ".join(p for p in parts if p)


def _check_positions(positions: Sequence[int], names: Sequence[str], what: str) -> None:
    bad = [i for i in positions if i >= len(names)]
    if bad:
        listed = ", ".join(f"{i}: {n}" for i, n in enumerate(names))
        raise ImportLayoutError(f"channels {bad} do not exist: {what} has {len(names)} ({listed})")


def _ome(group: zarr.Group) -> dict[str, Any]:
    """A group's OME metadata: under "ome" in NGFF 0.5 (zarr v3), top-level in 0.4."""
    attrs = group.attrs.asdict()
    ome = attrs.get("ome")
    return dict(ome) if isinstance(ome, dict) else attrs


def _plan_ome_zarr(
    folder: Path,
    options: ImportOptions,
    geometry: PlateGeometry,
    confine: Path | None,
    where: str,
) -> ImportPlan:
    try:
        plate = zarr.open_group(str(folder), mode="r")
    except Exception as exc:  # zarr raises several types for a folder that is not a group
        raise ImportLayoutError(
            f"{where} is not an OME-Zarr plate (cannot open it as a zarr group: "
            f"{type(exc).__name__})"
        ) from exc
    metadata = _ome(plate).get("plate")
    if not isinstance(metadata, dict) or not isinstance(metadata.get("wells"), list):
        raise ImportLayoutError(
            f"{where} has no OME-Zarr HCS plate metadata (a 'plate' attribute listing wells); "
            "for a folder of image files choose its file-name layout"
        )
    sources, unmatched = [], []
    for entry in metadata["wells"]:
        well_path = str(entry.get("path", "")) if isinstance(entry, dict) else ""
        try:
            well = geometry.normalise(well_path.replace("/", ""))
        except WellNameError as exc:
            unmatched.append(UnmatchedFile(path=well_path, reason=str(exc)))
            continue
        fields: list[FieldSource] = []
        for image_path in _well_images(plate, well_path):
            location = folder / well_path / image_path
            if ".." in PurePosixPath(image_path).parts or _escapes(location, confine):
                unmatched.append(
                    UnmatchedFile(path=f"{well_path}/{image_path}", reason="outside the plate")
                )
                continue
            fields.append(FieldSource(well, len(fields), image_path, zarr_image=location))
        if fields:
            sources.append(WellSource(well, fields))
        else:
            unmatched.append(UnmatchedFile(path=well_path, reason="listed, but no field stored"))
    if not sources:
        raise ImportLayoutError(f"the OME-Zarr plate {where} lists no stored field")
    name = metadata.get("name")
    return ImportPlan(
        folder=folder,
        layout="ome-zarr",
        barcode=options.barcode
        or _default_barcode(folder, name if isinstance(name, str) else None),
        options=options,
        wells=sorted(sources, key=lambda w: geometry.parse(w.well)),
        channel_names=[],  # named from the first field (_describe_pixels)
        planes=[],
        file_count=sum(len(w.fields) for w in sources),
        unmatched=unmatched,
        other_files=[],
        read_channels=list(options.channels) if options.channels is not None else None,
    )


def _well_images(plate: zarr.Group, well_path: str) -> list[str]:
    """The field paths an OME-Zarr well lists ([] when the well group is missing)."""
    try:
        well = plate[well_path]
    except KeyError:
        return []
    if not isinstance(well, zarr.Group):
        return []
    images = _ome(well).get("well", {}).get("images", [])
    if not isinstance(images, list):
        return []
    return [str(i["path"]) for i in images if isinstance(i, dict) and "path" in i]


def _readable(plan: ImportPlan, read: Callable[[FieldSource], Any]) -> Iterator[Any]:
    """``read(field)`` for every field of wells without a problem; a field that cannot be
    read gives its well the problem (the well is then recorded as failed), not the plate."""
    for well in plan.wells:
        for source in well.fields:
            if well.problem is not None:
                break
            try:
                yield read(source)
            except ImageReadError as exc:
                well.problem = str(exc)


def _describe_pixels(plan: ImportPlan) -> None:
    """Shape, type, channel names and one bit depth for the whole plate, so every field is
    scaled alike: explicit, else the files' metadata (the largest any file states), else the
    smallest depth covering the brightest pixel of the plate (each file inferred alone would
    scale a dim field brighter than a bright one)."""
    options = plan.options
    first = next(_readable(plan, lambda f: (f, read_field(f, None, options.bit_depth))), None)
    if first is None:
        problems = [w.problem for w in plan.wells if w.problem]
        raise ImportLayoutError(
            f"no field of {plan.shown_as} can be read" + (f": {problems[0]}" if problems else "")
        )
    source, read = first
    holds_channels = read.frame.ndim == 3 and not read.info.colour and len(source.files) <= 1
    if holds_channels or plan.layout == "ome-zarr":
        # The file (or OME-Zarr image) holds the channels: name them as it does.
        names = list(read.info.channel_names)
        count = read.frame.shape[2] if read.frame.ndim == 3 else 1
        names = names if len(names) == count else [f"channel {i}" for i in range(count)]
        if plan.read_channels is not None:
            _check_positions(plan.read_channels, names, "each field")
            names = [names[i] for i in plan.read_channels]
        plan.channel_names = names
        read = read_field(source, plan.read_channels, options.bit_depth)
    elif plan.read_channels is not None:
        raise ImportLayoutError(
            f"channels {plan.read_channels}: the fields of {plan.shown_as} hold one channel "
            f"({plan.channel_names[0]}); nothing to choose"
        )
    plan.shape, plan.dtype = tuple(int(n) for n in read.frame.shape), str(read.frame.dtype)
    if options.bit_depth is not None:
        plan.bit_depth, plan.bit_depth_source = options.bit_depth, "explicit"
        return
    if read.frame.dtype == np.uint8:
        plan.bit_depth, plan.bit_depth_source = 8, "dtype"
        return
    if plan.layout == "ome-zarr":
        stated: list[tuple[int | None, str]] = [(read.info.bit_depth, read.info.bit_depth_source)]
    else:
        stated = [
            (i.bit_depth, i.bit_depth_source)
            for infos in _readable(plan, lambda f: [inspect_image(p) for p in f.files])
            for i in infos
        ]
    if stated and all(b is not None and src not in ("dtype", "unknown") for b, src in stated):
        plan.bit_depth = max(int(b or 0) for b, _ in stated)
        plan.bit_depth_source = f"metadata ({stated[0][1]})"
        return
    peaks = list(
        _readable(plan, lambda f: int(read_field(f, plan.read_channels, None).frame.max()))
    )
    peak = max(peaks, default=0)
    plan.bit_depth = infer_bit_depth(peak, read.frame.dtype)
    plan.bit_depth_source = "data"
    logger.info(
        "%s: bit depth %d inferred from the brightest pixel of the plate (%d); give the "
        "camera's with --bit-depth if it differs",
        plan.folder,
        plan.bit_depth,
        peak,
    )


def read_field(source: FieldSource, channels: list[int] | None, bit_depth: int | None) -> ImageRead:
    """One field's pixels: one OME-Zarr image, one file, or one file per channel stacked
    (H, W, C) in channel order. Raises ImageReadError naming the file at fault (pixels above
    ``bit_depth`` included)."""
    if source.zarr_image is not None:
        return read_ome_zarr_image(source.zarr_image, channels=channels, bit_depth=bit_depth)
    if len(source.files) == 1:
        return read_image(source.files[0], channels=channels, bit_depth=bit_depth)
    reads = [read_image(path, bit_depth=bit_depth) for path in source.files]
    for path, one in zip(source.files, reads, strict=True):
        if one.frame.ndim != 2:
            raise ImageReadError(
                path,
                f"holds {one.frame.shape[2]} channels (or colour); with one file per channel "
                "each file must hold one grey channel",
            )
        if one.frame.shape != reads[0].frame.shape or one.frame.dtype != reads[0].frame.dtype:
            raise ImageReadError(
                path,
                f"is {one.frame.dtype} {one.frame.shape}, but {source.files[0].name} of the "
                f"same field is {reads[0].frame.dtype} {reads[0].frame.shape}",
            )
    depths = [one.bit_depth for one in reads if one.bit_depth is not None]
    return ImageRead(
        frame=np.stack([one.frame for one in reads], axis=-1),
        info=reads[0].info,
        bit_depth=max(depths) if depths else None,
        channels=tuple(range(len(reads))),
        bit_depth_source=reads[0].bit_depth_source,
    )


# -- what the model can take -------------------------------------------------------------------
def pipeline_problem(frame: np.ndarray, colour: bool, config: PipelineConfig) -> str | None:
    """Why the model's pipeline cannot take ``frame`` ((H, W) or (H, W, C)), else None: the
    channel count it needs (one grey channel, or colour, for the filter bank; C acquired
    channels for ``band_source="channels"``)."""
    count = 1 if frame.ndim == 2 else int(frame.shape[2])
    if config.band_source == "channels":
        wanted = config.channels
        if colour:
            return "the model takes acquired channels, not a colour (RGB) image"
        if count < 2 or (wanted is not None and count != wanted):
            need = wanted if wanted is not None else "2 or more"
            return (
                f"the model takes {need} channels (band_source 'channels'); this field has "
                f"{count}: choose them with --channels"
            )
        return None
    if count == 1 or (count == 3 and colour):
        return None
    return (
        f"the model takes one grey channel; this field has {count} channels: choose one with "
        "--channels N (the dry run lists them)"
    )
