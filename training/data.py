"""Training data as arrays: images through the *serving* pipeline, labels, and groups.

Every source ends in :class:`ImageSet`: ``features`` (N, B, H, W) float32 and ``masks``
(N, 1, H, W) float32 made by :func:`models.pipeline.prepare`, the same function the service calls,
so training and serving see bit-identical inputs. ``groups`` name the unit that must not straddle
a train/test split (a plate here).
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

from hardware.plate import SBS_96
from hardware.simulation import SimulationConfig, plate_truth, render_field
from models.pipeline import PipelineConfig, prepare

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


@dataclass(frozen=True)
class _FieldJob:
    sim: SimulationConfig
    pipeline: PipelineConfig
    barcode: str
    well: str
    field_index: int
    x_um: float
    y_um: float
    objective: str
    label: int

    @property
    def group(self) -> str:
        return self.barcode  # a plate's wells never straddle train and test

    @property
    def name(self) -> str:
        return f"{self.barcode}/{self.well}/f{self.field_index}"


def _run_job(job: _FieldJob) -> tuple[_FieldJob, np.ndarray | None, np.ndarray | None]:
    frame = render_field(job.sim, job.barcode, job.well, job.x_um, job.y_um, job.objective)
    prepared = prepare(frame, job.pipeline, bit_depth=job.sim.bit_depth)
    if prepared.qc.excluded or prepared.features is None or prepared.mask is None:
        return job, None, None
    return job, prepared.features, prepared.mask


def simulated_image_set(
    barcodes: Sequence[str],
    *,
    sim: SimulationConfig,
    pipeline: PipelineConfig,
    objective: str = "40x",
    fields_per_well: int = 1,
    field_spacing_um: float = 1500.0,
    wells: Sequence[str] | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> ImageSet:
    """Render plates with the simulator and prepare every field as the service would.

    ``wells`` limits each plate to those wells (default: all 96). Fields excluded by QC
    (overexposed frames) are dropped, as the service drops them.
    """
    jobs: list[_FieldJob] = []
    offsets = SBS_96.field_offsets_um(fields_per_well, field_spacing_um)
    for barcode in barcodes:
        truth = plate_truth(sim, barcode)
        for well in wells or SBS_96.well_names:
            cx, cy = SBS_96.well_center_um(well)
            for index, (dx, dy) in enumerate(offsets):
                jobs.append(
                    _FieldJob(
                        sim,
                        pipeline,
                        barcode,
                        well,
                        index,
                        cx + dx,
                        cy + dy,
                        objective,
                        int(truth[well].label == "high"),
                    )
                )
    return collect_images(prepare_in_parallel(_run_job, jobs, workers), len(jobs), progress)


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
