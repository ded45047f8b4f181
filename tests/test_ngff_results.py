"""The calls inside the OME-Zarr plate (issue 17): label images per field, the call per well, a
table per plate, read back with ome-zarr's own reader (what napari-ome-zarr uses)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Label, Reader
from sqlalchemy import select

from app.ngff_results import EXCLUDED, HIGH, LOW, TABLE_COLUMNS, write_results
from app.runtime import build_runtime
from app.scans import create_scan
from app.schemas.scans import ScanCreate
from app.settings import Settings
from store.db import session_scope
from store.orm import Image, Scan, Well, WellResult

pytestmark = pytest.mark.slow

# On the bundled default model: highs and lows, and C11, whose only field QC excludes.
WELLS = ["A1", "A2", "B1", "C11"]


def _scanned(settings: Settings) -> int:
    runtime = build_runtime(settings)
    try:
        with session_scope(runtime.session_factory) as session:
            scan = create_scan(
                session,
                ScanCreate(plate_barcode="NGFF-1", wells=WELLS),
                microscope=runtime.microscope_name,
            )
            scan_id = scan.id
        runtime.worker.run_pending()
        return scan_id
    finally:
        runtime.close()


def test_a_completed_scan_carries_its_calls_in_its_plate(settings: Settings) -> None:
    """The worker writes them when the scan completes (MSCREEN_PLATE_RESULTS, default on)."""
    scan_id = _scanned(settings)
    runtime = build_runtime(settings)
    try:
        with session_scope(runtime.session_factory) as session:
            paths = session.scalars(select(Image.path).where(Image.scan_id == scan_id)).all()
    finally:
        runtime.close()
    assert len(paths) == len(WELLS)
    for path in paths:
        labels = zarr.open_group(str(Path(path) / "labels"), mode="r")
        assert [k for k, _ in labels.groups()] == ["calls"]


def test_no_plate_results_when_switched_off(settings: Settings) -> None:
    scan_id = _scanned(settings.model_copy(update={"plate_results": False}))
    runtime = build_runtime(settings)
    try:
        with session_scope(runtime.session_factory) as session:
            paths = session.scalars(select(Image.path).where(Image.scan_id == scan_id)).all()
    finally:
        runtime.close()
    assert paths and not any((Path(p) / "labels").exists() for p in paths)


def test_labels_well_calls_and_plate_table_read_back(settings: Settings) -> None:
    scan_id = _scanned(settings)
    runtime = build_runtime(settings)
    try:
        with session_scope(runtime.session_factory) as session:
            scan = session.get_one(Scan, scan_id)
            assert scan.status.value == "completed"
            threshold = float(scan.decision_policy["threshold"])
            written = write_results(session, scan_id, runtime.classifier, threshold=threshold)
            images = session.execute(
                select(Image.path, Well.name).join(Well, Image.well_id == Well.id)
            ).all()
            results = {
                name: r
                for r, name in session.execute(
                    select(WellResult, Well.name).join(Well, WellResult.well_id == Well.id)
                ).all()
            }
    finally:
        runtime.close()
    assert (written.name, written.fields, written.wells) == ("calls", len(WELLS), len(WELLS))

    for path, well in images:
        nodes = list(Reader(parse_url(path))())
        labels = [n for n in nodes if any(isinstance(s, Label) for s in n.specs)]
        assert len(labels) == 1, f"{well}: no label image the reader finds"
        data = np.asarray(labels[0].data[0])
        image = zarr.open_group(path, mode="r")["s0"]
        assert data.shape == image.shape[-2:]
        values = set(np.unique(data).tolist())
        result = results[well]
        if result.label is None:  # QC excluded its only field
            assert values == {EXCLUDED}
        else:
            assert values <= {0, LOW, HIGH} and values & {LOW, HIGH}
            # The well's call is the mean of the per-pixel P(high): the majority of its cell
            # pixels lean the way of a confident call.
            if result.probability is not None and abs(result.probability - 0.5) > 0.3:
                major = HIGH if np.sum(data == HIGH) > np.sum(data == LOW) else LOW
                assert major == (HIGH if result.label == "high" else LOW), well
        # The same physical coordinates as the image it labels.
        label_transforms = labels[0].metadata["coordinateTransformations"][0]
        image_node = nodes[0]
        assert label_transforms == image_node.metadata["coordinateTransformations"][0]

        well_group = zarr.open_group(str(Path(path).parent), mode="r")
        stored = well_group.attrs.asdict()["mscreen"]["calls"]["calls"]
        assert stored["label"] == result.label
        assert stored["probability"] == pytest.approx(result.probability)

    plate_path = Path(images[0][0]).parents[2]
    table = zarr.open_group(str(plate_path), mode="r").attrs.asdict()["mscreen"]["calls"]["calls"]
    assert table["columns"] == list(TABLE_COLUMNS)
    assert [row[0] for row in table["rows"]] == sorted(WELLS)
    # Writing again (a re-run) replaces rather than adds.
    runtime = build_runtime(settings)
    try:
        with session_scope(runtime.session_factory) as session:
            write_results(session, scan_id, runtime.classifier, threshold=threshold)
    finally:
        runtime.close()
    labels_group = zarr.open_group(str(Path(images[0][0]) / "labels"), mode="r")
    assert sorted(k for k, _ in labels_group.groups()) == ["calls"]


@pytest.mark.parametrize("ngff_version", ["0.5", "0.4"])
def test_label_images_side_by_side_on_both_ngff_versions(tmp_path: Path, ngff_version: str) -> None:
    """Two versions' label images on one field: both listed, both read back, in place."""
    from datetime import UTC, datetime

    from app.ngff_results import write_field_labels
    from hardware.microscope import AcquiredField
    from store.images import ImageStore

    store = ImageStore(tmp_path, ngff_version=ngff_version)  # type: ignore[arg-type]
    frame = np.zeros((64, 96), np.uint16)
    field = AcquiredField("B2", 0, frame, 10.0, -4.0, "40x", 0.5, datetime.now(UTC), 0.0)
    path = store.save("NGFF-2", 1, field, fields_per_well=1).path
    first = np.ones((64, 96), np.uint8)
    second = np.full((64, 96), HIGH, np.uint8)
    write_field_labels(path, first, "calls")
    write_field_labels(path, second, "calls-hscnn-sim-v1")
    write_field_labels(path, first, "calls")  # a re-run: replaced, still listed once
    nodes = list(Reader(parse_url(path))())
    labels = {n.metadata["name"]: n for n in nodes if any(isinstance(s, Label) for s in n.specs)}
    assert sorted(labels) == ["calls", "calls-hscnn-sim-v1"]
    np.testing.assert_array_equal(np.asarray(labels["calls"].data[0]), first)
    np.testing.assert_array_equal(np.asarray(labels["calls-hscnn-sim-v1"].data[0]), second)
    assert labels["calls"].data[1].shape == (32, 48)
    assert (
        labels["calls"].metadata["coordinateTransformations"]
        == nodes[0].metadata["coordinateTransformations"]
    )
