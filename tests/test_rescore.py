"""The batched re-scoring fast path (app/rescore.py) against the serial per-well path."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import zarr
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

import app.rescore
from app.classifier import WellClassifier
from app.rescore import (
    PreparePool,
    StoredField,
    WellRescore,
    iter_rescore,
    load_frame,
    rescore,
    stored_fields,
)
from hardware.microscope import AcquiredField, ScanPlan, StepScanner
from hardware.sim import SimulatedMicroscope, SimulationConfig
from models.inference import OnnxClassifier
from models.repository import BUNDLED_REPOSITORY, ModelRepository
from store.images import ImageStore
from store.orm import Base, Image, Plate, Scan, Well

BARCODE = "RESCORE-1"
WELLS = ["A1", "A2", "B3", "C5", "D7", "H12"]
FIELDS_PER_WELL = 2


def _classifier(version: int) -> WellClassifier:
    artifact = ModelRepository(BUNDLED_REPOSITORY).get("hscnn-sim", version)
    return WellClassifier(OnnxClassifier(artifact.model_path, intra_op_threads=1))


@pytest.fixture(scope="module")
def v2() -> WellClassifier:
    return _classifier(2)


@pytest.fixture(scope="module")
def pool(v2: WellClassifier) -> Iterator[PreparePool]:
    """One pool for the module's tests: started once, as the service keeps one."""
    with PreparePool(v2.config, workers=2) as prepare_pool:
        yield prepare_pool


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Session, int]]:
    """A scan of a few simulated wells, stored as the scan worker stores it (OME-Zarr + rows)."""
    root = tmp_path_factory.mktemp("rescore")
    engine = create_engine(f"sqlite:///{root / 'db.sqlite'}")
    Base.metadata.create_all(engine)
    session = Session(engine)
    plate = Plate(barcode=BARCODE)
    session.add(plate)
    session.flush()
    scan = Scan(
        plate_id=plate.id,
        objective="40x",
        fields_per_well=FIELDS_PER_WELL,
        wells_requested=WELLS,
        microscope="sim",
    )
    session.add(scan)
    session.flush()
    store = ImageStore(root / "images")
    scanner = StepScanner(SimulatedMicroscope(SimulationConfig(seed=7), barcode=BARCODE))
    plan = ScanPlan(BARCODE, WELLS, objective="40x", fields_per_well=FIELDS_PER_WELL)
    for acquisition in scanner.scan(plan):
        assert not acquisition.failed
        row, column = ord(acquisition.well[0]) - ord("A"), int(acquisition.well[1:]) - 1
        well = Well(plate_id=plate.id, name=acquisition.well, row=row, column=column)
        session.add(well)
        session.flush()
        for f in acquisition.fields:
            saved = store.save(BARCODE, scan.id, f, fields_per_well=FIELDS_PER_WELL)
            session.add(_image_row(scan.id, well.id, f, saved.path, saved.sha256))
    session.commit()
    yield session, scan.id
    session.close()
    engine.dispose()


def _image_row(scan_id: int, well_id: int, f: AcquiredField, path: str, sha256: str) -> Image:
    return Image(
        scan_id=scan_id,
        well_id=well_id,
        field_index=f.field_index,
        path=path,
        sha256=sha256,
        height=int(f.image.shape[0]),
        width=int(f.image.shape[1]),
        dtype=str(f.image.dtype),
        objective=f.objective,
        pixel_size_um=f.pixel_size_um,
        x_um=f.x_um,
        y_um=f.y_um,
        acquired_at=f.acquired_at,
        mean_v=0.0,
        focus_score=0.0,
        qc_excluded=False,
        qc_flags=[],
    )


def _serial(fields: list[StoredField], classifier: WellClassifier) -> dict[str, object]:
    """Today's path: per well, load the frames and WellClassifier.classify them."""
    calls: dict[str, object] = {}
    for well in dict.fromkeys(f.well for f in fields):
        acquired = []
        for f in (f for f in fields if f.well == well):
            frame, bit_depth = load_frame(f)
            acquired.append(
                AcquiredField(
                    well,
                    f.field_index,
                    frame,
                    0.0,
                    0.0,
                    "40x",
                    1.0,
                    datetime.now(UTC),
                    0.0,
                    bit_depth,
                )
            )
        calls[well] = classifier.classify(acquired)
    return calls


def _assert_same(results: list[WellRescore], serial: dict[str, object]) -> None:
    assert [r.well for r in results] == list(serial)
    for r in results:
        call = serial[r.well]
        assert r.error is None
        assert r.label == call.label  # type: ignore[attr-defined]
        assert r.leaning == call.leaning  # type: ignore[attr-defined]
        assert r.qc_flags == call.qc_flags  # type: ignore[attr-defined]
        assert r.fields_used == call.fields_used  # type: ignore[attr-defined]
        if call.probability is None:  # type: ignore[attr-defined]
            assert r.probability is None
        else:
            assert r.probability == pytest.approx(call.probability, abs=1e-5)  # type: ignore[attr-defined]
        expected = [fc.probability for fc in call.fields]  # type: ignore[attr-defined]
        assert len(r.field_probabilities) == len(expected)
        for got, want in zip(r.field_probabilities, expected, strict=True):
            assert (got is None) == (want is None)
            if want is not None:
                assert got == pytest.approx(want, abs=1e-5)


def test_stored_fields_in_well_then_field_order(stored: tuple[Session, int]) -> None:
    session, scan_id = stored
    fields = stored_fields(session, scan_id)
    assert [(f.well, f.field_index) for f in fields] == [
        (w, i) for w in WELLS for i in range(FIELDS_PER_WELL)
    ]
    assert all(Path(f.path).is_dir() and len(f.sha256) == 64 for f in fields)


@pytest.mark.parametrize("workers", [0, 2])
def test_rescore_matches_serial_classify(
    stored: tuple[Session, int], v2: WellClassifier, workers: int
) -> None:
    fields = stored_fields(*stored)
    results = rescore(fields, v2, workers=workers, batch_size=5)  # batches straddle wells
    _assert_same(results, _serial(fields, v2))
    assert any(r.probability is not None for r in results)


def test_other_model_version_rescores_the_same_fields(stored: tuple[Session, int]) -> None:
    fields = stored_fields(*stored)
    v1 = _classifier(1)
    results = rescore(fields, v1, workers=0, batch_size=64)
    _assert_same(results, _serial(fields, v1))


def test_checksum_mismatch_fails_only_its_well(
    stored: tuple[Session, int], v2: WellClassifier
) -> None:
    fields = stored_fields(*stored)
    bad = 2 * 2 + 1  # B3 field 1
    fields[bad] = replace(fields[bad], sha256="0" * 64)
    results = rescore(fields, v2, workers=0)
    failed = [r for r in results if r.error is not None]
    assert [r.well for r in failed] == ["B3"]
    assert "field 1" in (failed[0].error or "") and "SHA-256" in (failed[0].error or "")
    assert failed[0].label is None and failed[0].probability is None
    assert all(r.error is None for r in results if r.well != "B3")


def test_changed_chunk_fails_only_its_well(
    stored: tuple[Session, int], v2: WellClassifier, pool: PreparePool, tmp_path: Path
) -> None:
    """Overwrite the pixels of a copy of one field on disk: its recorded checksum catches it."""
    import shutil

    fields = stored_fields(*stored)
    target = fields[0]  # A1 field 0
    copy = tmp_path / "field"
    shutil.copytree(target.path, copy)
    array = zarr.open_group(str(copy), mode="r+")["s0"]
    assert isinstance(array, zarr.Array)
    pixels = np.asarray(array[...])
    array[...] = pixels[::-1]
    fields[0] = replace(target, path=str(copy))
    results = rescore(fields, v2, pool=pool)
    assert [r.well for r in results if r.error is not None] == ["A1"]
    assert "SHA-256" in (results[0].error or "")
    assert all(r.error is None for r in results[1:])


def test_pool_is_reused_across_plates_and_model_versions(
    stored: tuple[Session, int], v2: WellClassifier, pool: PreparePool
) -> None:
    """Two plates (halves of the scan) and another model version on one pool: no new workers."""
    fields = stored_fields(*stored)
    executor = pool._executor
    assert executor is not None and pool.startup_s is not None
    first, second = fields[:6], fields[6:]
    for plate in (first, second):
        _assert_same(rescore(plate, v2, pool=pool, batch_size=3), _serial(plate, v2))
    v1 = _classifier(1)
    assert v1.config != pool.config  # its pipeline config travels with each task
    _assert_same(rescore(fields, v1, pool=pool, batch_size=4), _serial(fields, v1))
    assert pool._executor is executor


def test_iter_rescore_yields_wells_in_order_before_the_plate_is_read(
    stored: tuple[Session, int], v2: WellClassifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    fields = stored_fields(*stored)
    loaded: list[str] = []

    def counting_load(stored_field: StoredField) -> tuple[np.ndarray, int | None]:
        loaded.append(stored_field.well)
        return load_frame(stored_field)

    monkeypatch.setattr(app.rescore, "load_frame", counting_load)
    results = iter_rescore(fields, v2, batch_size=2)
    assert loaded == []  # nothing read until asked
    first = next(results)
    assert first.well == WELLS[0] and first.error is None
    assert len(loaded) < len(fields)  # decided while later wells were still unread
    rest = list(results)
    assert [r.well for r in [first, *rest]] == WELLS
    _assert_same([first, *rest], _serial(fields, v2))


def test_iter_rescore_checks_its_arguments_when_called(
    stored: tuple[Session, int], v2: WellClassifier
) -> None:
    fields = stored_fields(*stored)
    with pytest.raises(ValueError, match="batch_size"):
        iter_rescore(fields, v2, batch_size=0)
    with pytest.raises(ValueError, match="not contiguous"):
        iter_rescore([fields[0], fields[2], fields[1]], v2)


def test_closing_early_leaves_the_pool_usable(
    stored: tuple[Session, int], v2: WellClassifier, pool: PreparePool
) -> None:
    fields = stored_fields(*stored)
    results = iter_rescore(fields, v2, pool=pool, batch_size=1)
    assert next(results).well == WELLS[0]
    results.close()  # cancels its queued tasks, returns its shared ring
    assert pool._lent_rings == 0
    _assert_same(rescore(fields, v2, pool=pool), _serial(fields, v2))


def test_fields_of_an_unknown_shape_travel_pickled(
    stored: tuple[Session, int],
    v2: WellClassifier,
    pool: PreparePool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A model that leaves an input axis open gets no shared ring: same calls."""
    monkeypatch.setattr(app.rescore, "_field_shape", lambda classifier: None)
    fields = stored_fields(*stored)
    _assert_same(rescore(fields, v2, pool=pool, batch_size=5), _serial(fields, v2))


def test_pool_created_and_used_in_a_background_thread(
    stored: tuple[Session, int], v2: WellClassifier
) -> None:
    """As the service runs re-analysis: the pool lives in a non-main thread."""
    fields = stored_fields(*stored)
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            with PreparePool(v2.config, workers=2) as thread_pool:
                outcome["wells"] = [
                    list(iter_rescore(plate, v2, pool=thread_pool, batch_size=3))
                    for plate in (fields[:6], fields[6:])
                ]
        except BaseException as exc:  # re-raised below, in the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="rescore-test")
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert "error" not in outcome, outcome.get("error")
    plates = outcome["wells"]
    assert isinstance(plates, list) and len(plates) == 2
    _assert_same(plates[0] + plates[1], _serial(fields, v2))


def test_in_process_pool_prepares_in_the_calling_thread(
    stored: tuple[Session, int], v2: WellClassifier
) -> None:
    fields = stored_fields(*stored)
    with PreparePool(v2.config, workers=1) as in_process:
        assert in_process.in_process and in_process._executor is None
        _assert_same(rescore(fields, v2, pool=in_process), _serial(fields, v2))


def test_closed_pool_refuses_work(stored: tuple[Session, int], v2: WellClassifier) -> None:
    fields = stored_fields(*stored)
    closed = PreparePool(v2.config, workers=2)
    closed.close()
    with pytest.raises(RuntimeError, match="closed"):
        rescore(fields, v2, pool=closed)


def test_timings_are_attributed_to_wells(
    stored: tuple[Session, int], v2: WellClassifier, pool: PreparePool
) -> None:
    results = rescore(stored_fields(*stored), v2, pool=pool, batch_size=4)
    scored = [r for r in results if r.probability is not None]
    assert scored and all(r.preprocessing_ms > 0 and r.inference_ms > 0 for r in scored)


def test_two_threads_share_one_pool(
    stored: tuple[Session, int], v2: WellClassifier, pool: PreparePool
) -> None:
    """Two re-scorings at once on one pool: each gets its own shared ring, both calls hold."""
    fields = stored_fields(*stored)
    outcomes: list[list[WellRescore] | BaseException] = []
    lock = threading.Lock()

    def run() -> None:
        try:
            results: list[WellRescore] | BaseException = rescore(
                fields, v2, pool=pool, batch_size=3
            )
        except BaseException as exc:  # checked below, in the test's thread
            results = exc
        with lock:
            outcomes.append(results)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(outcomes) == 2
    serial = _serial(fields, v2)
    for outcome in outcomes:
        assert not isinstance(outcome, BaseException), outcome
        _assert_same(outcome, serial)
    assert pool._lent_rings == 0
