"""Training data from an ImageFolder tree on disk: ``root/<class>/<image>``, two classes.

Ends in :class:`training.imagesets.ImageSet`, prepared by :func:`models.pipeline.prepare` exactly
as the service prepares a frame. Frames that QC excludes are dropped and counted (``excluded``),
as the service drops them.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from models.pipeline import PipelineConfig, prepare
from training.imagesets import ImageSet, collect_images, prepare_in_parallel

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")

# /work/shared/data/celltype-brightfield: cells of one field share a group "<line>-<field>".
# The folders spell the separator differently ("293A-000007.j-1-12", "HT1080-000000-1-1"); the
# field number is the first run of digits after the first "-" in both.
CELLTYPE_GROUP_PATTERN = r"^([^-]+-\d+)"


def read_frame(path: Path) -> np.ndarray:
    """Read an image file as the pipeline's frame: (H, W) grey or (H, W, 3) BGR, 8 or 16 bit.

    ``cv2.IMREAD_UNCHANGED`` keeps the bit depth and channels. Channel rules: 1 channel is grey,
    3 channels are BGR (the pipeline takes their luma), 4 channels are BGRA (alpha dropped);
    any other count (e.g. a 2- or 5-channel TIFF) is averaged into one grey plane.

    Raises:
        ValueError: naming the file, if OpenCV cannot decode it or its layout is unsupported.
    """
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"cannot read image {path} (missing, corrupt or not an image)")
    frame = np.asarray(image)
    if frame.ndim == 3:
        channels = frame.shape[2]
        if channels == 1:
            frame = frame[:, :, 0]
        elif channels == 4:
            frame = np.ascontiguousarray(frame[:, :, :3])
        elif channels != 3:
            mean = frame.astype(np.float64).mean(axis=2)
            frame = np.rint(mean).astype(frame.dtype)
    if frame.ndim not in (2, 3):
        raise ValueError(f"{path}: unsupported image shape {frame.shape}")
    if frame.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{path}: unsupported pixel type {frame.dtype}; expected 8 or 16 bit")
    return frame


@dataclass(frozen=True)
class _FileJob:
    path: Path
    pipeline: PipelineConfig
    bit_depth: int | None
    label: int
    group: str
    name: str


def _prepare_file(job: _FileJob) -> tuple[_FileJob, np.ndarray | None, np.ndarray | None]:
    frame = read_frame(job.path)
    try:
        prepared = prepare(
            frame, job.pipeline, bit_depth=job.bit_depth if frame.dtype == np.uint16 else None
        )
    except ValueError as error:
        raise ValueError(f"{job.path}: {error}") from error
    if prepared.qc.excluded or prepared.features is None or prepared.mask is None:
        logger.info("%s excluded by QC: %s", job.path, prepared.qc.reason)
        return job, None, None
    return job, prepared.features, prepared.mask


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


def image_folder_set(
    root: Path | str,
    pipeline: PipelineConfig,
    *,
    group_by: str | None = None,
    bit_depth: int | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> ImageSet:
    """Prepare an ImageFolder tree ``root/<class>/<image>`` (two classes) for training.

    Args:
        root: the folder; its two subfolders are the classes, sorted by name: the first is
            label 0, the second label 1 (recorded in ``ImageSet.class_names``).
        pipeline: the serving pipeline config (its height x width is the network input).
        group_by: regular expression searched in each file's stem; the unit that must not
            straddle a split is its named group ``group``, else its first group, else the whole
            match. Default (None): every image is its own group ("<class>/<stem>").
            For the celltype data use :data:`CELLTYPE_GROUP_PATTERN`.
        bit_depth: significant bits of 16-bit files (default 16); ignored for 8-bit files.
        workers: processes preparing images (default: CPU count; 1 = in this process).
        progress: show a progress bar.

    Raises:
        ValueError: missing folder, no / one / more than two classes, a class folder without
            images, a file that cannot be read or prepared (named), a stem the pattern misses.
    """
    root = Path(root)
    classes = _class_folders(root)
    pattern = re.compile(group_by) if group_by is not None else None
    jobs: list[_FileJob] = []
    for label, folder in enumerate(classes):
        files = sorted(
            p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            raise ValueError(
                f"class folder {folder} has no images ({', '.join(IMAGE_SUFFIXES)} files)"
            )
        for path in files:
            name = f"{folder.name}/{path.stem}"
            group = _group_of(path.stem, pattern, path, name)
            jobs.append(_FileJob(path, pipeline, bit_depth, label, group, name))
    result = collect_images(
        prepare_in_parallel(_prepare_file, jobs, workers, 4), len(jobs), progress
    )
    result.class_names = tuple(p.name for p in classes)
    logger.info(
        "%s: %d images, %d groups, classes %s",
        root,
        len(result),
        len(set(result.groups)),
        result.class_names,
    )
    return result
