"""The calls inside the OME-Zarr plate, so that napari (napari-ome-zarr) shows image and call
together (issue 17).

A scan's plate (:mod:`store.images`) holds its fields; once the scan (or a re-analysis of it)
has finished, :func:`write_results` adds what the model said:

* per field, an NGFF **label image** ``<field>/labels/<name>``: the model's per-pixel call at
  the camera's resolution, 0 where the pipeline's cell mask is off (background), 1 = low,
  2 = high (the network's per-pixel P(high), uncalibrated, at the calls' decision threshold:
  where in the field the call comes from, not a call per pixel), 3 = the field was excluded
  by QC (every pixel); with colours (red low, green high, grey excluded) and properties naming
  each value. ``name`` is ``calls`` for the scan's own model, ``calls-<model>-v<version>`` for a
  re-analysis, so versions sit side by side as napari label layers;
* per well, the call in the well group's attributes (``mscreen.calls.<name>``: label,
  probability, leaning, confidence, QC flags, model);
* per plate, a table of every well's call in the plate group's attributes
  (``mscreen.calls.<name>``: column names and one row per well, NGFF having no table format
  yet), which a script reads without opening each well.

The per-pixel map is recomputed from the stored frame with the model that made the calls (as the
overlay PNG is: :func:`app.overlay.overlay_png`), so it is exactly what made the call; it costs
one preparation and one inference per field (~10 ms), paid once when the scan finishes, not in
the per-well path. Writing is idempotent (a label image is replaced whole).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numcodecs
import numpy as np
import zarr
from sqlalchemy import select
from sqlalchemy.orm import Session
from zarr.codecs import BloscCodec

from app.classifier import WellClassifier
from models.pipeline import prepare
from store.images import ImageStore
from store.orm import AnalysisResult, Image, ModelVersion, Well, WellResult

logger = logging.getLogger(__name__)

BACKGROUND, LOW, HIGH, EXCLUDED = 0, 1, 2, 3
_COLOURS = [
    {"label-value": LOW, "rgba": [220, 40, 40, 160]},
    {"label-value": HIGH, "rgba": [40, 180, 60, 160]},
    {"label-value": EXCLUDED, "rgba": [128, 128, 128, 120]},
]
_PROPERTIES = [
    {"label-value": LOW, "call": "low"},
    {"label-value": HIGH, "call": "high"},
    {"label-value": EXCLUDED, "call": "excluded by QC"},
]
TABLE_COLUMNS = (
    "well",
    "label",
    "probability",
    "leaning",
    "confidence",
    "qc_flags",
    "fields_used",
)


def label_name(model: ModelVersion | None, *, analysis: bool) -> str:
    """``calls`` for a scan's own calls; ``calls-<name>-v<version>`` for a re-analysis."""
    if not analysis or model is None:
        return "calls"
    return f"calls-{model.name}-v{model.version}"


def call_map(
    frame: np.ndarray, classifier: WellClassifier, threshold: float, bit_depth: int | None
) -> np.ndarray:
    """The per-pixel call of one stored frame at camera resolution (uint8, values above)."""
    height, width = frame.shape[:2]
    prepared = prepare(frame, classifier.config, bit_depth=bit_depth)
    if prepared.qc.excluded or prepared.features is None or prepared.mask is None:
        return np.full((height, width), EXCLUDED, dtype=np.uint8)
    _, logit_map = classifier.model.predict(
        prepared.features[None], prepared.mask[None, None].astype(np.float32)
    )
    mask = prepared.mask.astype(bool)
    # The network's map is coarser than its input: brought to the input's size as the overlay
    # brings it (linear), then cut by the cell mask.
    probability = cv2.resize(
        (1.0 / (1.0 + np.exp(-logit_map[0, 0]))).astype(np.float32),
        (mask.shape[1], mask.shape[0]),
        interpolation=cv2.INTER_LINEAR,
    )
    calls = np.where(probability >= threshold, HIGH, LOW).astype(np.uint8)
    calls[~mask] = BACKGROUND
    return cv2.resize(calls, (width, height), interpolation=cv2.INTER_NEAREST)


def _multiscales(group: zarr.Group) -> tuple[dict[str, Any], bool]:
    """The field's multiscales entry and whether the plate is NGFF 0.5 (``ome`` attributes)."""
    attrs: dict[str, Any] = dict(group.attrs.asdict())
    if "ome" in attrs:
        return attrs["ome"]["multiscales"][0], True
    return attrs["multiscales"][0], False


def write_field_labels(path: str | Path, calls: np.ndarray, name: str) -> None:
    """``calls`` ((H, W) uint8, the field's s0 shape) as label image ``name`` of the field at
    ``path``, in the field's own coordinates (its levels' scale and translation).

    Written with zarr directly, with the metadata ome-zarr's ``write_multiscale_labels`` writes
    (NGFF 0.5 or 0.4, as the plate is): that writer goes through dask and cost ~50 ms a field.
    ome-zarr's reader reads it back (tests/test_ngff_results.py).
    """
    group = zarr.open_group(str(path), mode="r+")
    multiscales, v05 = _multiscales(group)
    datasets = multiscales["datasets"]
    if [a["name"] for a in multiscales["axes"]] != ["y", "x"]:
        # A multi-channel field: one label image over its (y, x) plane.
        datasets = [
            {
                "path": d["path"],
                "coordinateTransformations": [
                    {k: (v[-2:] if isinstance(v, list) else v) for k, v in t.items()}
                    for t in d["coordinateTransformations"]
                ],
            }
            for d in datasets
        ]
    target = Path(path) / "labels" / name
    if target.exists():  # a re-run replaces the label image whole
        shutil.rmtree(target)
    labels_group = zarr.open_group(
        str(Path(path) / "labels"), mode="a", zarr_format=3 if v05 else 2
    )
    label = labels_group.create_group(name)
    level = calls
    for dataset in datasets:
        _create(label, dataset["path"], level, v05)
        level = level[::2, ::2][: level.shape[0] // 2, : level.shape[1] // 2]
    entry: dict[str, Any] = {
        "datasets": datasets,
        "name": name,
        "axes": [{"name": a, "type": "space", "unit": "micrometer"} for a in ("y", "x")],
    }
    image_label: dict[str, Any] = {"colors": _COLOURS, "properties": _PROPERTIES}
    if v05:
        label.attrs["ome"] = {"version": "0.5", "multiscales": [entry], "image-label": image_label}
    else:
        label.attrs.update(
            {
                "multiscales": [entry | {"version": "0.4"}],
                "image-label": image_label | {"version": "0.4"},
            }
        )
    _list_labels(labels_group, v05)


def _create(group: zarr.Group, name: str, data: np.ndarray, v05: bool) -> None:
    """One level of a label image: one chunk, blosc-compressed as the store's frames are."""
    if v05:
        array = group.create_array(
            name,
            shape=data.shape,
            dtype=data.dtype,
            chunks=data.shape,
            compressors=BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle"),
            dimension_names=("y", "x"),
            chunk_key_encoding={"name": "default", "separator": "/"},
        )
    else:
        array = group.create_array(
            name,
            shape=data.shape,
            dtype=data.dtype,
            chunks=data.shape,
            compressors=numcodecs.Blosc(cname="zstd", clevel=1, shuffle=numcodecs.Blosc.BITSHUFFLE),
            chunk_key_encoding={"name": "v2", "separator": "/"},
        )
    array[...] = data


def _list_labels(labels: zarr.Group, v05: bool) -> None:
    """The field's ``labels`` listing, from the label groups present (so two writers of
    different label images never drop each other's name for good)."""
    names = sorted(key for key, _ in labels.groups())
    if v05:
        ome = _attr(labels, "ome")
        ome["labels"] = names
        labels.attrs["ome"] = ome
    else:
        labels.attrs["labels"] = names


@dataclass(frozen=True)
class ResultsWritten:
    name: str
    fields: int
    wells: int


def _attr(group: zarr.Group, key: str) -> dict[str, Any]:
    """A copy of the group's attribute ``key`` (a JSON object; {} when absent)."""
    value = group.attrs.asdict().get(key)
    return dict(value) if isinstance(value, dict) else {}


def _set_calls_attr(group: zarr.Group, name: str, value: Any) -> None:
    own = _attr(group, "mscreen")
    calls = dict(own.get("calls") or {})
    calls[name] = value
    own["calls"] = calls
    group.attrs["mscreen"] = own


def write_results(
    session: Session,
    scan_id: int,
    classifier: WellClassifier,
    *,
    threshold: float,
    bit_depth: int | None = None,
    analysis_id: int | None = None,
) -> ResultsWritten:
    """Write the calls of scan ``scan_id`` (its own, or those of re-analysis ``analysis_id``,
    made by ``classifier`` at decision ``threshold``) into its OME-Zarr plate: label images per
    field, the call per well, the table per plate (see the module docstring)."""
    rows: Sequence[WellResult | AnalysisResult]
    if analysis_id is None:
        rows = session.scalars(select(WellResult).where(WellResult.scan_id == scan_id)).all()
    else:
        rows = session.scalars(
            select(AnalysisResult).where(AnalysisResult.analysis_id == analysis_id)
        ).all()
    model = rows[0].model_version if rows else None
    name = label_name(model, analysis=analysis_id is not None)
    images = session.execute(
        select(Image, Well.name)
        .join(Well, Image.well_id == Well.id)
        .where(Image.scan_id == scan_id)
        .order_by(Well.row, Well.column, Image.field_index)
    ).all()
    by_well = {r.well_id: r for r in rows}
    fields = 0
    well_groups: dict[str, str] = {}
    for image, well in images:
        frame = ImageStore.load(image.path, sha256=image.sha256)
        stored_bits = ImageStore.bit_depth(image.path) or bit_depth
        bits = stored_bits if frame.dtype == np.uint16 else None
        write_field_labels(image.path, call_map(frame, classifier, threshold, bits), name)
        fields += 1
        well_groups[well] = str(Path(image.path).parent)
    table: list[list[Any]] = []
    names = {w.id: w.name for w in session.scalars(select(Well).where(Well.id.in_(list(by_well))))}
    for well_id, result in sorted(by_well.items(), key=lambda item: names[item[0]]):
        well = names[well_id]
        entry = {
            "label": result.label,
            "probability": result.probability,
            "leaning": result.leaning,
            "confidence": result.confidence,
            "qc_flags": list(result.qc_flags),
            "fields_used": result.fields_used,
            "model": None if model is None else f"{model.name}:{model.version}",
        }
        if well in well_groups:
            _set_calls_attr(zarr.open_group(well_groups[well], mode="r+"), name, entry)
        table.append([well, *(entry[c] for c in TABLE_COLUMNS[1:])])
    if well_groups:
        plate = zarr.open_group(str(Path(next(iter(well_groups.values()))).parents[1]), mode="r+")
        _set_calls_attr(plate, name, {"columns": list(TABLE_COLUMNS), "rows": table})
    logger.info("scan %d: %s written to its plate (%d fields)", scan_id, name, fields)
    return ResultsWritten(name, fields, len(table))
