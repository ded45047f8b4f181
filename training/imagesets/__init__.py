"""Training data as arrays: images through the *serving* pipeline, labels, and groups.

Every source ends in :class:`ImageSet`: ``features`` (N, B, H, W) float32 and ``masks``
(N, 1, H, W) float32 made by :func:`models.pipeline.prepare`, the same function the service calls,
so training and serving see bit-identical inputs. ``groups`` name the unit that must not straddle
a train/test split (a plate here).

Sources: :func:`simulated_image_set` (rendered plates, :mod:`.simulated`),
:func:`image_folder_set` (an ImageFolder tree, :mod:`.folder`) and :func:`database_image_set`
(labelled plates in the app DB, :mod:`.database`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from tqdm import tqdm

from models.pipeline import QCReport

logger = logging.getLogger(__name__)


@dataclass
class ImageSet:
    features: np.ndarray  # (N, B, H, W) float32
    masks: np.ndarray  # (N, 1, H, W) float32
    labels: np.ndarray  # (N,) int64, 1 = high
    groups: np.ndarray  # (N,) str: the plate barcode
    names: np.ndarray  # (N,) str: "<barcode>/<well>/f<field>"
    excluded: int = 0  # frames dropped by QC
    # What labels 0 and 1 mean (ImageFolder: the sorted subfolder names).
    class_names: tuple[str, ...] = ("low", "high")
    # Frames dropped per QC flag ("underexposed", "overexposed", "out_of_focus"), for the
    # sources whose workers report the QC result (see collect_images).
    excluded_by_reason: dict[str, int] = field(default_factory=dict)
    # Significant bits the uint16 frames were scaled with, and where that came from
    # ("argument", a models.readers bit_depth_source, "inferred", "dtype" for 8-bit files,
    # "mixed ..." when files differ, "unknown" when the source does not say).
    bit_depth: int | None = None
    bit_depth_source: str = "unknown"
    channels: int = 1  # acquired channels per frame (1: grey or colour)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> ImageSet:
        return ImageSet(
            self.features[index],
            self.masks[index],
            self.labels[index],
            self.groups[index],
            self.names[index],
            class_names=self.class_names,
            excluded_by_reason=dict(self.excluded_by_reason),
            bit_depth=self.bit_depth,
            bit_depth_source=self.bit_depth_source,
            channels=self.channels,
        )


# A worker's result: (job, features, mask); features and mask are None for a frame QC excluded.
PreparedJob = tuple[Any, np.ndarray | None, np.ndarray | None]
# The same with the frame's QC report, so that exclusions are counted per reason.
QCPreparedJob = tuple[Any, np.ndarray | None, np.ndarray | None, QCReport | None]
_Result = TypeVar("_Result")

# What fixes each QC exclusion, for the error when every frame was excluded.
_QC_FIXES = {
    "underexposed": (
        "If these are 16-bit files from a camera with fewer significant bits, pass --bit-depth "
        "(e.g. --bit-depth 12); if they are really this dark, lower the pipeline's min_mean_v"
    ),
    "overexposed": (
        "If the files hold fewer significant bits than stated, pass the right --bit-depth; if "
        "they are bright by design, raise the pipeline's max_mean_v"
    ),
    "out_of_focus": "If the focus threshold is too strict, lower the pipeline's min_focus",
}


def prepare_in_parallel(
    fn: Callable[[Any], _Result], jobs: Sequence[Any], workers: int | None, chunksize: int = 8
) -> Iterable[_Result]:
    """``fn`` over ``jobs`` in a process pool (in order); each gives (job, features, mask)."""
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    if workers <= 1:
        yield from map(fn, jobs)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(fn, jobs, chunksize=chunksize)


def collect_images(
    results: Iterable[PreparedJob | QCPreparedJob], total: int, progress: bool
) -> ImageSet:
    """Stack prepared jobs (each with ``label``, ``group``, ``name``) into an :class:`ImageSet`;
    jobs whose frame QC excluded (features None) are counted and dropped.

    Workers that return the QC report as a fourth element get their exclusions counted per
    QC flag (``ImageSet.excluded_by_reason``) and summarised in one log line per flag.

    Raises:
        ValueError: when QC excluded every frame: one line naming the reasons, their counts, an
            example, and the option that fixes each.
    """
    features, masks, labels, groups, names = [], [], [], [], []
    excluded = 0
    by_reason: dict[str, int] = {}
    examples: dict[str, tuple[str, str]] = {}  # flag -> (image name, reason text)
    for item in tqdm(results, total=total, desc="preparing images", disable=not progress):
        job, feature, mask = item[0], item[1], item[2]
        if feature is None or mask is None:
            excluded += 1
            qc = item[3] if len(item) == 4 else None
            if qc is not None:
                for flag in qc.flags:
                    by_reason[flag] = by_reason.get(flag, 0) + 1
                    examples.setdefault(flag, (str(job.name), qc.reason or flag))
            continue
        features.append(feature)
        masks.append(mask[None].astype(np.float32))
        labels.append(job.label)
        groups.append(job.group)
        names.append(job.name)
    for flag, count in sorted(by_reason.items(), key=lambda kv: -kv[1]):
        name, reason = examples[flag]
        logger.info(
            "QC excluded %d of %d images as %s (e.g. %s: %s)", count, total, flag, name, reason
        )
    if not features:
        raise ValueError(_all_excluded_message(total, by_reason, examples))
    logger.info("prepared %d images (%d excluded by QC)", len(features), excluded)
    return ImageSet(
        np.stack(features),
        np.stack(masks),
        np.asarray(labels, dtype=np.int64),
        np.asarray(groups),
        np.asarray(names),
        excluded,
        excluded_by_reason=by_reason,
    )


def _all_excluded_message(
    total: int, by_reason: dict[str, int], examples: dict[str, tuple[str, str]]
) -> str:
    """``all 800 images were excluded by QC (800 underexposed, e.g. "mean V 3.1 < 10");
    nothing to train on. <the fix for each reason>``."""
    ranked = sorted(by_reason.items(), key=lambda kv: -kv[1])
    counts = "; ".join(f'{n} {flag}, e.g. "{examples[flag][1]}"' for flag, n in ranked)
    detail = f" ({counts})" if counts else ""
    fixes = [_QC_FIXES[flag] for flag, _ in ranked if flag in _QC_FIXES]
    advice = f" {'; '.join(fixes)}." if fixes else ""
    return f"all {total} images were excluded by QC{detail}; nothing to train on.{advice}"


# The sources build on the definitions above, so they are imported after them.
from training.imagesets.database import database_image_set  # noqa: E402
from training.imagesets.folder import (  # noqa: E402
    CELLTYPE_GROUP_PATTERN,
    IMAGE_SUFFIXES,
    folder_image_info,
    image_folder_set,
    read_frame,
)
from training.imagesets.simulated import simulated_barcodes, simulated_image_set  # noqa: E402

__all__ = [
    "CELLTYPE_GROUP_PATTERN",
    "IMAGE_SUFFIXES",
    "ImageSet",
    "PreparedJob",
    "QCPreparedJob",
    "collect_images",
    "database_image_set",
    "folder_image_info",
    "image_folder_set",
    "prepare_in_parallel",
    "read_frame",
    "simulated_barcodes",
    "simulated_image_set",
]
