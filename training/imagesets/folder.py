"""Training data from an ImageFolder tree on disk: ``root/<class>/<image>``, two classes.

Files are read by :func:`models.readers.read_image` (TIFF / OME-TIFF / ImageJ hyperstacks,
PNG, JPEG; channels last) and end in :class:`training.imagesets.ImageSet`, prepared by
:func:`models.pipeline.prepare` exactly as the service prepares a frame. Frames that QC excludes
are dropped and counted per reason (``excluded``, ``excluded_by_reason``), as the service drops
them.

Reading happens in two passes. The first reads every file once (cheap next to ``prepare``) to
check that the files agree on their channels and fit the pipeline, and to find the bit depth of
16-bit files that do not state one: a 12-bit camera stores 0..4095 in uint16, and read as 16-bit
data every frame is 16 times too dark, so QC drops them all as underexposed. One depth is
inferred for the whole folder (the smallest covering the maximum over those files) rather than
per file, so that a dim file is not brightened relative to the others. The second pass prepares.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from models.pipeline import PipelineConfig, QCReport, prepare
from models.readers import (
    READABLE_SUFFIXES,
    ImageInfo,
    describe,
    infer_bit_depth,
    inspect_image,
    is_readable,
    read_image,
)
from training.imagesets import ImageSet, collect_images, prepare_in_parallel

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = READABLE_SUFFIXES

# /work/shared/data/celltype-brightfield: cells of one field share a group "<line>-<field>".
# The folders spell the separator differently ("293A-000007.j-1-12", "HT1080-000000-1-1"); the
# field number is the first run of digits after the first "-" in both.
CELLTYPE_GROUP_PATTERN = r"^([^-]+-\d+)"


def read_frame(path: Path | str) -> np.ndarray:
    """Read an image file as a single-image frame: (H, W) grey or (H, W, 3) BGR, 8 or 16 bit.

    Kept for callers that want one grey (or colour) image whatever the file holds: a file of
    several acquired channels is averaged into one grey plane (rounded). To keep the channels,
    use :func:`models.readers.read_image`, which returns them as (H, W, C).

    Raises:
        ImageReadError (a ValueError): naming the file, if it cannot be read or its layout or
            pixel type is unsupported.
    """
    read = read_image(path)
    frame = read.frame
    if frame.ndim == 3 and not read.info.colour:
        mean = frame.astype(np.float64).mean(axis=2)
        frame = np.rint(mean).astype(frame.dtype)
    return frame


def folder_image_info(root: Path | str) -> ImageInfo:
    """What the first image of the first class folder holds (axes, channels, bit depth), e.g. to
    choose ``band_source="channels"`` when the files carry two or more acquired channels.

    Raises:
        ValueError: as :func:`image_folder_set` for the folder layout; ImageReadError for the file.
    """
    classes = _class_folders(Path(root))
    return inspect_image(_image_files(classes[0])[0])


@dataclass(frozen=True)
class _FileJob:
    path: Path
    pipeline: PipelineConfig
    bit_depth: int | None  # passed to read_image: explicit, inferred for the folder, or None
    channels: tuple[int, ...] | None
    plane: Mapping[str, int] | None
    label: int
    group: str
    name: str


@dataclass(frozen=True)
class _Scan:
    """First pass over one file: what prepare() will be given."""

    path: Path
    dtype: str
    channels: int  # of the frame: 1 for grey or colour, C for acquired channels
    channel_names: tuple[str, ...]
    bit_depth: int | None  # from the argument or the metadata; None: to infer
    bit_depth_source: str
    peak: int  # maximum pixel value of the frame


def _scan_file(job: _FileJob) -> _Scan:
    read = read_image(job.path, channels=job.channels, plane=job.plane, bit_depth=job.bit_depth)
    frame = read.frame
    channels = frame.shape[2] if frame.ndim == 3 and not read.info.colour else 1
    names = read.info.channel_names
    chosen = tuple(names[c] for c in read.channels) if names else ()
    return _Scan(
        job.path,
        str(frame.dtype),
        channels,
        chosen,
        read.bit_depth,
        read.bit_depth_source,
        int(frame.max()) if frame.size else 0,
    )


def _prepare_file(
    job: _FileJob,
) -> tuple[_FileJob, np.ndarray | None, np.ndarray | None, QCReport | None]:
    read = read_image(job.path, channels=job.channels, plane=job.plane, bit_depth=job.bit_depth)
    try:
        prepared = prepare(read.frame, job.pipeline, bit_depth=read.bit_depth)
    except ValueError as error:
        raise ValueError(f"{job.path}: {error}") from error
    if prepared.qc.excluded or prepared.features is None or prepared.mask is None:
        logger.debug("%s excluded by QC: %s", job.path, prepared.qc.reason)
        return job, None, None, prepared.qc
    return job, prepared.features, prepared.mask, prepared.qc


def _group_of(stem: str, pattern: re.Pattern[str] | None, path: Path, default: str) -> str:
    if pattern is None:
        return default
    match = pattern.search(stem)
    if match is None:
        raise ValueError(f"group pattern {pattern.pattern!r} does not match file name {path.name}")
    if "group" in pattern.groupindex:
        return str(match.group("group"))
    return str(match.group(1) if pattern.groups else match.group(0))


def _class_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        raise ValueError(f"dataset folder {root} does not exist or is not a folder")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"{root} has no class subfolders (expected root/<class>/<image>)")
    if len(classes) == 1:
        raise ValueError(f"{root} has only one class ({classes[0].name}); need two")
    if len(classes) > 2:
        names = ", ".join(p.name for p in classes)
        raise ValueError(f"{root} has {len(classes)} classes ({names}); the classifier is binary")
    return classes


def _image_files(folder: Path) -> list[Path]:
    # Names starting with "." are hidden files (macOS "._x.tif" resource forks), not images.
    files = sorted(
        p for p in folder.iterdir() if p.is_file() and is_readable(p) and not p.name.startswith(".")
    )
    if not files:
        raise ValueError(f"class folder {folder} has no images ({', '.join(IMAGE_SUFFIXES)} files)")
    return files


def image_folder_set(
    root: Path | str,
    pipeline: PipelineConfig,
    *,
    group_by: str | None = None,
    bit_depth: int | None = None,
    channels: Sequence[int] | None = None,
    plane: Mapping[str, int] | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> ImageSet:
    """Prepare an ImageFolder tree ``root/<class>/<image>`` (two classes) for training.

    Args:
        root: the folder; its two subfolders are the classes, sorted by name: the first is
            label 0, the second label 1 (recorded in ``ImageSet.class_names``).
        pipeline: the serving pipeline config (its height x width is the network input). With
            ``band_source="channels"`` the files must hold >= 2 acquired channels (after
            ``channels``), otherwise one (grey or colour).
        group_by: regular expression searched in each file's stem; the unit that must not
            straddle a split is its named group ``group``, else its first group, else the whole
            match. Default (None): every image is its own group ("<class>/<stem>").
            For the celltype data use :data:`CELLTYPE_GROUP_PATTERN`.
        bit_depth: significant bits of 16-bit files (8..16), overriding their metadata; ignored
            for 8-bit files. Default: each file's metadata, else one depth inferred over the
            folder from the data (logged), recorded in ``ImageSet.bit_depth`` /
            ``bit_depth_source``.
        channels: acquired channels to use, 0-based (default: all); see
            :func:`models.readers.read_image`.
        plane: Z / T (or page) index per axis letter, e.g. ``{"Z": 2}`` (default 0).
        workers: processes reading and preparing images (default: CPU count; 1 = in this
            process).
        progress: show a progress bar.

    Raises:
        ValueError: missing folder, no / one / more than two classes, a class folder without
            images, a file that cannot be read or prepared (named), files that disagree on
            their channels or do not fit the pipeline, a stem the pattern misses, every image
            excluded by QC (one line naming the reasons and the option that fixes them).
    """
    root = Path(root)
    classes = _class_folders(root)
    pattern = re.compile(group_by) if group_by is not None else None
    chosen = tuple(int(c) for c in channels) if channels is not None else None
    planes = dict(plane) if plane is not None else None
    jobs: list[_FileJob] = []
    for label, folder in enumerate(classes):
        for path in _image_files(folder):
            name = f"{folder.name}/{path.stem}"
            group = _group_of(path.stem, pattern, path, name)
            jobs.append(_FileJob(path, pipeline, bit_depth, chosen, planes, label, group, name))
    _log_layout(root, jobs[0].path, planes)
    scans = list(
        tqdm(
            prepare_in_parallel(_scan_file, jobs, workers, 4),
            total=len(jobs),
            desc="reading images",
            disable=not progress,
        )
    )
    frame_channels = _check_channels(root, scans, pipeline)
    depth, source, inferred = _folder_bit_depth(root, scans, bit_depth)
    if inferred is not None:
        # Only the files that state no depth get the folder's; the others keep their own.
        jobs = [
            job
            if scan.bit_depth is not None or scan.dtype != "uint16"
            else replace(job, bit_depth=inferred)
            for job, scan in zip(jobs, scans, strict=True)
        ]
    result = collect_images(
        prepare_in_parallel(_prepare_file, jobs, workers, 4), len(jobs), progress
    )
    result.class_names = tuple(p.name for p in classes)
    result.bit_depth, result.bit_depth_source = depth, source
    result.channels = frame_channels
    logger.info(
        "%s: %d images, %d groups, classes %s, %d channel(s), bit depth %s (%s)",
        root,
        len(result),
        len(set(result.groups)),
        result.class_names,
        frame_channels,
        depth,
        source,
    )
    return result


def _log_layout(root: Path, path: Path, plane: Mapping[str, int] | None) -> None:
    """Log what the folder's first file holds, and that a Z / T stack is read at index 0 unless
    a plane is given (which Z plane is in focus is not in the file)."""
    info = inspect_image(path)
    logger.info("%s: files like %s: %s", root, path.name, describe(info))
    picked = {k.upper() for k in plane or {}}
    for letter in "ZT":
        if letter in info.axes and letter not in picked and info.shape[info.axes.index(letter)] > 1:
            logger.info(
                "%s holds %d planes along %s (axes %s); reading %s=0 (pick another with plane)",
                path,
                info.shape[info.axes.index(letter)],
                letter,
                info.axes,
                letter,
            )


def _check_channels(root: Path, scans: list[_Scan], pipeline: PipelineConfig) -> int:
    """The one channel count all frames share, checked against the pipeline."""
    counts = Counter(scan.channels for scan in scans)
    if len(counts) > 1:
        detail = ", ".join(
            f"{n} file{'s' if n != 1 else ''} with {c} "
            f"(e.g. {next(s.path for s in scans if s.channels == c).name})"
            for c, n in counts.most_common()
        )
        raise ValueError(
            f"{root}: the files do not agree on their channels ({detail}); every image of a "
            "folder must have the same channels: pick the same ones with --channels, or move "
            "the odd files out"
        )
    count = next(iter(counts))
    names = scans[0].channel_names
    described = f"{count} channels" + (f" ({', '.join(names)})" if names else "")
    if pipeline.band_source == "channels":
        if count < 2:
            raise ValueError(
                f"{root}: band_source='channels' needs files with >= 2 acquired channels, but "
                "they hold one (grey or colour) image; use band_source='filter_bank', or "
                "select two or more channels with --channels"
            )
        if pipeline.channels is not None and pipeline.channels != count:
            raise ValueError(
                f"{root}: the files have {described} but the pipeline expects "
                f"{pipeline.channels}; pick {pipeline.channels} with --channels"
            )
    elif count > 1:
        raise ValueError(
            f"{root}: the files have {described} but band_source='filter_bank' takes one grey "
            "image: use them as bands with band_source='channels', or pick one with "
            "--channels (e.g. --channels 0)"
        )
    return count


def _folder_bit_depth(
    root: Path, scans: list[_Scan], bit_depth: int | None
) -> tuple[int | None, str, int | None]:
    """(bit depth, its source, the depth inferred for files stating none or None).

    Logs the inference at INFO, as users must know a guess was made and how to override it."""
    wide = [scan for scan in scans if scan.dtype == "uint16"]
    if not wide:
        return 8, "dtype", None
    if bit_depth is not None:
        return int(bit_depth), "argument", None
    unknown = [scan for scan in wide if scan.bit_depth is None]
    inferred = None
    if unknown:
        peak = max(scan.peak for scan in unknown)
        inferred = infer_bit_depth(peak, np.uint16)
        logger.info(
            "bit depth %d inferred from the data: max value %d over %d file%s; pass --bit-depth "
            "to override",
            inferred,
            peak,
            len(unknown),
            "s" if len(unknown) != 1 else "",
        )
    stated = Counter(
        (scan.bit_depth, scan.bit_depth_source)
        if scan.bit_depth is not None
        else (inferred, "inferred")
        for scan in wide
    )
    if len(stated) == 1:
        (depth, source), _ = stated.most_common(1)[0]
        return depth, source, inferred
    mixed = ", ".join(f"{d} bits ({src}): {n} files" for (d, src), n in stated.most_common())
    logger.info("%s: the 16-bit files differ in bit depth: %s", root, mixed)
    return None, f"mixed: {mixed}", inferred
