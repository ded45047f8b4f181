"""Simulated plates as training data: every field rendered by the simulator and prepared by
:func:`models.pipeline.prepare` exactly as the service prepares a scanned frame.

With a ``band_source="channels"`` pipeline every field is rendered through several simulated
channels (:data:`hardware.sim.SIM_CHANNELS`), (H, W, C) channels-last, bit-identical to what a
scan through the same channels acquires."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hardware.plate import SBS_96
from hardware.sim import SimulationConfig, default_channels, plate_truth, render_field
from models.pipeline import PipelineConfig, prepare
from training.imagesets import ImageSet, collect_images, prepare_in_parallel


def simulated_barcodes(role: str, seed: int, count: int) -> list[str]:
    """Barcodes of ``count`` simulated plates for ``role`` (train, val, test): seeded names, so a
    different seed gives different plates and roles never share a plate."""
    return [f"SIM-{role.upper()}-{seed}-{i:03d}" for i in range(count)]


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
    channels: tuple[str, ...] = ()

    @property
    def group(self) -> str:
        return self.barcode  # a plate's wells never straddle train and test

    @property
    def name(self) -> str:
        return f"{self.barcode}/{self.well}/f{self.field_index}"


def _run_job(job: _FieldJob) -> tuple[_FieldJob, np.ndarray | None, np.ndarray | None]:
    frame = render_field(
        job.sim, job.barcode, job.well, job.x_um, job.y_um, job.objective, channels=job.channels
    )
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
    channels: Sequence[str] | None = None,
) -> ImageSet:
    """Render plates with the simulator and prepare every field as the service would.

    ``wells`` limits each plate to those wells (default: all 96). Fields excluded by QC
    (overexposed frames) are dropped, as the service drops them.

    ``channels``: simulated channels to render each field through (``band_source="channels"``
    pipelines only); default: the first ``pipeline.channels`` of
    :data:`hardware.sim.channels.DEFAULT_CHANNEL_ORDER` ("Phase", "Brightfield", ...).

    Raises:
        ValueError: channels for a filter-bank pipeline, or a count that contradicts
            ``pipeline.channels``, or a channel pipeline with neither.
    """
    names = _channel_names(pipeline, channels)
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
                        names,
                    )
                )
    return collect_images(prepare_in_parallel(_run_job, jobs, workers), len(jobs), progress)


def _channel_names(pipeline: PipelineConfig, channels: Sequence[str] | None) -> tuple[str, ...]:
    """The simulated channels a data set for ``pipeline`` renders (() = one phase frame)."""
    if pipeline.band_source != "channels":
        if channels:
            raise ValueError(
                f"channels {list(channels)} need a pipeline with band_source='channels' "
                f"(this one's is {pipeline.band_source!r})"
            )
        return ()
    if channels is None:
        if pipeline.channels is None:
            raise ValueError(
                "band_source='channels' with channels=None: name the simulated channels "
                "(channels=[...]) or set the pipeline's channel count"
            )
        return default_channels(pipeline.channels)
    names = tuple(channels)
    if pipeline.channels is not None and len(names) != pipeline.channels:
        raise ValueError(
            f"{len(names)} channels {list(names)} given, the pipeline expects {pipeline.channels}"
        )
    if len(names) < 2:
        raise ValueError(f"band_source='channels' needs >= 2 channels, got {list(names)}")
    return names
