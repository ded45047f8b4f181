"""Training data from labelled plates in the app DB: stored fields with their FCT labels.

Ends in :class:`training.imagesets.ImageSet`, prepared by :func:`models.pipeline.prepare` exactly
as the service prepares a frame. Frames that QC excludes are dropped and counted (``excluded``),
as the service drops them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.pipeline import PipelineConfig, prepare
from training.imagesets import ImageSet, collect_images, prepare_in_parallel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _StoredJob:
    path: str
    sha256: str  # recorded when the field was written: a missing chunk reads back as zeros
    pipeline: PipelineConfig
    bit_depth: int | None
    label: int
    group: str
    name: str


def _prepare_stored(job: _StoredJob) -> tuple[_StoredJob, np.ndarray | None, np.ndarray | None]:
    from store.images import CorruptImageError, ImageStore

    try:
        frame = ImageStore.load(job.path, sha256=job.sha256)
    except (CorruptImageError, FileNotFoundError) as exc:
        # Never train on a frame that is not the one acquired: say which, and stop.
        raise ValueError(
            f"stored image {job.name} cannot be used: {exc}; restore the data folder from a "
            "backup or leave that plate out (--plate)"
        ) from exc
    # The bits recorded with the frame (an imported 12-bit plate) win over the camera default.
    bit_depth = ImageStore.bit_depth(job.path) or job.bit_depth
    prepared = prepare(
        frame, job.pipeline, bit_depth=bit_depth if frame.dtype == np.uint16 else None
    )
    if prepared.qc.excluded or prepared.features is None or prepared.mask is None:
        return job, None, None
    return job, prepared.features, prepared.mask


def database_image_set(
    session_factory: Callable[[], Any],
    pipeline: PipelineConfig,
    *,
    barcodes: Sequence[str] | None = None,
    bit_depth: int | None = None,
    workers: int | None = 1,
    progress: bool = True,
) -> ImageSet:
    """Stored images of labelled plates with their flow-cytometry (FCT) labels.

    Every stored field of a well that has an ``FctMeasurement`` and was not excluded by the
    service's QC becomes one sample; label 1 = FCT "high"; group = plate barcode (wells of one
    plate share seeding and handling, so a plate never straddles a split).

    Args:
        session_factory: a SQLAlchemy ``sessionmaker`` (``store.db.make_session_factory``).
        pipeline: the pipeline config to prepare the frames with.
        barcodes: only these plates (default: every plate with FCT labels).
        bit_depth: significant bits of 16-bit frames that did not record theirs (the camera's;
            default 16). Frames stored with a bit depth (imports, a 12-bit camera) use their own.
        workers: processes preparing images (1 = in this process).
        progress: show a progress bar.

    Raises:
        ValueError: if no stored image has an FCT label.
    """
    # The app layer is imported lazily: training must import without the service installed.
    from sqlalchemy import select

    from store.orm import FctMeasurement, Image, Plate, Well

    query = (
        select(Image.path, Image.sha256, Image.scan_id, Image.field_index, Well.name, Plate.barcode)
        .add_columns(FctMeasurement.label)
        .join(Well, Image.well_id == Well.id)
        .join(Plate, Well.plate_id == Plate.id)
        .join(FctMeasurement, FctMeasurement.well_id == Well.id)
        .where(Image.qc_excluded.is_(False))
        .order_by(Plate.barcode, Image.scan_id, Well.id, Image.field_index)
    )
    if barcodes is not None:
        query = query.where(Plate.barcode.in_(list(barcodes)))
    with session_factory() as session:
        rows = session.execute(query).all()
    if not rows:
        raise ValueError("no stored images of wells with an FCT label in the database")
    jobs = [
        _StoredJob(
            path,
            sha256,
            pipeline,
            bit_depth,
            int(label == "high"),
            barcode,
            f"{barcode}/scan-{scan_id}/{well}/f{field_index}",
        )
        for path, sha256, scan_id, field_index, well, barcode, label in rows
    ]
    result = collect_images(
        prepare_in_parallel(_prepare_stored, jobs, workers, 4), len(jobs), progress
    )
    logger.info("database: %d images from %d plates", len(result), len(set(result.groups)))
    return result
