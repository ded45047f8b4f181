"""Re-analysis that survives its process (issue 16): ``mscreen reanalyse`` killed with SIGKILL
resumes without a lost or duplicated well, and plates fan out as Dask tasks on a LocalCluster of
two worker processes against PostgreSQL, with the calls of the in-process path and idempotent
writes (a task run twice changes nothing)."""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

import migrations
from app.analyses import ModelSpec, request_analysis
from app.classifier import WellClassifier
from app.distributed import TaskConfig, run_in_processes, run_on_dask
from app.rescore import rescore, stored_fields
from app.runtime import build_runtime
from app.scans import create_scan
from app.schemas.scans import ScanCreate
from app.settings import Settings
from models.inference import OnnxClassifier
from models.repository import BUNDLED_REPOSITORY
from store.db import session_scope
from store.orm import Analysis, AnalysisResult, Well

pytestmark = pytest.mark.slow

V1 = ModelSpec("hscnn-sim", 1)


def _settings(tmp_path: Path, url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=url,
        onnx_provider="cpu",
        worker_poll_seconds=0.05,
        _env_file=None,  # type: ignore[call-arg]
    )


def _scan_plates(settings: Settings, plates: dict[str, list[str] | None], fields: int = 1) -> None:
    """Scan each plate (None: every well) through the service's worker, on its default v2."""
    runtime = build_runtime(settings)
    try:
        with session_scope(runtime.session_factory) as session:
            for barcode, wells in plates.items():
                create_scan(
                    session,
                    ScanCreate(plate_barcode=barcode, wells=wells, fields_per_well=fields),
                    microscope=runtime.microscope_name,
                )
        assert runtime.worker.run_pending() == len(plates)
    finally:
        runtime.close()


def _results(url: str, analysis_id: int) -> dict[str, tuple[int, float | None, str | None]]:
    engine = create_engine(url)
    try:
        with Session(engine) as session:
            rows = session.execute(
                select(
                    Well.name, AnalysisResult.id, AnalysisResult.probability, AnalysisResult.label
                )
                .join(Well, AnalysisResult.well_id == Well.id)
                .where(AnalysisResult.analysis_id == analysis_id)
            ).all()
    finally:
        engine.dispose()
    names = [r[0] for r in rows]
    assert len(names) == len(set(names)), "a well has two results in one analysis"
    return {name: (rid, p, label) for name, rid, p, label in rows}


def _analysis(url: str) -> Analysis | None:
    engine = create_engine(url)
    try:
        with Session(engine) as session:
            return session.scalar(select(Analysis).order_by(Analysis.id.desc()).limit(1))
    finally:
        engine.dispose()


def test_sigkilled_reanalyse_resumes_without_lost_or_duplicated_wells(tmp_path, database_url):
    migrations.upgrade(database_url)
    settings = _settings(tmp_path, database_url)
    _scan_plates(settings, {"KILL-REAN": None}, fields=2)
    env = dict(
        os.environ,
        MSCREEN_DATABASE_URL=database_url,
        MSCREEN_DATA_DIR=str(tmp_path / "data"),
        MSCREEN_LEASE_SECONDS="2",
        MSCREEN_ONNX_PROVIDER="cpu",
    )
    command = [sys.executable, "-m", "cli", "reanalyse", "--plate", "KILL-REAN"]
    command += ["--model", str(V1), "--workers", "0", "--batch-size", "4"]
    log = tmp_path / "reanalyse.log"
    first = subprocess.Popen(command, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while (analysis := _analysis(database_url)) is None or analysis.wells_done < 10:
            assert first.poll() is None, f"reanalyse exited early:\n{log.read_text()}"
            assert time.monotonic() < deadline, "the re-analysis made no progress"
            time.sleep(0.02)
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    before = _results(database_url, analysis.id)
    killed = _analysis(database_url)
    assert killed is not None and killed.status.value == "running"
    assert killed.wells_done == len(before)
    assert 10 <= len(before) < 96, "killed too late to show a resume"

    time.sleep(2.5)  # the dead process's lease expires
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"analysis {analysis.id} (scan" in second.stdout and "completed" in second.stdout

    after = _results(database_url, analysis.id)
    assert len(after) == 96
    for well, row in before.items():
        assert after[well] == row, f"{well} changed after the resume"
    finished = _analysis(database_url)
    assert finished is not None
    assert (finished.status.value, finished.wells_done) == ("completed", 96)


@pytest.mark.postgres
def test_plates_fan_out_on_a_dask_local_cluster_with_the_same_calls(tmp_path, postgres_url):
    pytest.importorskip("distributed")
    migrations.upgrade(postgres_url)
    settings = _settings(tmp_path, postgres_url)
    plates = {f"DASK-{k}": ["A1", "B2", "C3", "D4"] for k in range(4)}
    _scan_plates(settings, plates)
    runtime = build_runtime(settings)
    try:
        with session_scope(runtime.session_factory) as session:
            ids = []
            for scan_id in range(1, len(plates) + 1):
                analysis, _ = request_analysis(
                    session,
                    scan_id,
                    V1,
                    repository=runtime.model_repository,
                    classifiers=runtime.classifiers,
                    requested_by="test",
                )
                ids.append(analysis.id)
        config = TaskConfig(
            database_url=postgres_url, model_repository=str(settings.model_repository)
        )
        outcomes = run_on_dask(ids[:3], config, local_workers=2)
        assert [o.status for o in outcomes] == ["completed"] * 3
        assert len({o.worker for o in outcomes}) >= 1
        # The same tasks in the local process pool: the last plate is new work, the others are
        # already done and are left alone (idempotent: no well written twice).
        again = run_in_processes(ids, config, workers=2)
        assert [o.wells for o in again] == [0, 0, 0, 4]
        assert {o.status for o in again} == {"completed"}

        v1 = WellClassifier(
            OnnxClassifier(BUNDLED_REPOSITORY / "hscnn-sim" / "1" / "model.onnx", providers="cpu")
        )
        with session_scope(runtime.session_factory) as session:
            total = session.scalar(select(func.count(AnalysisResult.id)))
            assert total == 16
            for scan_id, analysis_id in zip(range(1, len(plates) + 1), ids, strict=True):
                expected = {
                    r.well: (r.probability, r.label)
                    for r in rescore(stored_fields(session, scan_id), v1, workers=0)
                }
                got = {
                    w: (p, label)
                    for w, (_, p, label) in _results(postgres_url, analysis_id).items()
                }
                assert got.keys() == expected.keys()
                for well, (p, label) in got.items():
                    assert label == expected[well][1]
                    assert p == pytest.approx(expected[well][0], abs=1e-6)
    finally:
        runtime.close()


def test_a_task_in_a_dask_worker_gets_glibcs_array_heap_back(monkeypatch):
    """Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_, which switches glibc's dynamic
    mmap threshold off (every large temporary array mapped and faulted in anew): a task sets the
    thresholds back. Without any malloc variable there is nothing to change."""
    from app import distributed

    for key in [k for k in os.environ if k.startswith("MALLOC_")]:
        monkeypatch.delenv(key)
    assert distributed._heap_for_arrays() is False
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert distributed._heap_for_arrays() is True
