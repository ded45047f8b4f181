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
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

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
        )


PreparedJob = tuple[Any, np.ndarray | None, np.ndarray | None]


def prepare_in_parallel(
    fn: Callable[[Any], PreparedJob], jobs: Sequence[Any], workers: int | None, chunksize: int = 8
) -> Iterable[PreparedJob]:
    """``fn`` over ``jobs`` in a process pool (in order); each gives (job, features, mask)."""
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    if workers <= 1:
        yield from map(fn, jobs)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(fn, jobs, chunksize=chunksize)


def collect_images(results: Iterable[PreparedJob], total: int, progress: bool) -> ImageSet:
    """Stack prepared jobs (each with ``label``, ``group``, ``name``) into an :class:`ImageSet`;
    jobs whose frame QC excluded (features None) are counted and dropped."""
    features, masks, labels, groups, names = [], [], [], [], []
    excluded = 0
    for job, feature, mask in tqdm(
        results, total=total, desc="preparing images", disable=not progress
    ):
        if feature is None or mask is None:
            excluded += 1
            continue
        features.append(feature)
        masks.append(mask[None].astype(np.float32))
        labels.append(job.label)
        groups.append(job.group)
        names.append(job.name)
    if not features:
        raise ValueError(f"all {total} images were excluded by QC; nothing to train on")
    logger.info("prepared %d images (%d excluded by QC)", len(features), excluded)
    return ImageSet(
        np.stack(features),
        np.stack(masks),
        np.asarray(labels, dtype=np.int64),
        np.asarray(groups),
        np.asarray(names),
        excluded,
    )


# The sources build on the definitions above, so they are imported after them.
from training.imagesets.database import database_image_set  # noqa: E402
from training.imagesets.folder import (  # noqa: E402
    CELLTYPE_GROUP_PATTERN,
    IMAGE_SUFFIXES,
    image_folder_set,
    read_frame,
)
from training.imagesets.simulated import simulated_barcodes, simulated_image_set  # noqa: E402

__all__ = [
    "CELLTYPE_GROUP_PATTERN",
    "IMAGE_SUFFIXES",
    "ImageSet",
    "PreparedJob",
    "collect_images",
    "database_image_set",
    "image_folder_set",
    "prepare_in_parallel",
    "read_frame",
    "simulated_barcodes",
    "simulated_image_set",
]
