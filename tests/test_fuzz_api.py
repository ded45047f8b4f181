"""The whole API under schemathesis, against a real server process, on SQLite and PostgreSQL.

schemathesis reads /openapi.json and sends what the document allows and what it does not
(every phase: examples, coverage, fuzzing, stateful; its default checks), with a fixed seed.
The service must answer every case without a server error and with a response its own
document describes. A plate is scanned and given FCT first, so the plate, well, image and
evaluation endpoints reach real data through the document's examples.

Run alone (a few minutes per database):  .venv/bin/python -m pytest -q tests/test_fuzz_api.py
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

import migrations
from app.auth import create_key
from hardware.sim import SimulationConfig, fct_export_csv
from models.repository import BUNDLED_REPOSITORY
from store.orm import Role, TrainingRun

SEED = 20261202
MAX_EXAMPLES = 25  # per operation and phase: > 1,500 cases per database
MIN_CASES = 1500
EXAMPLE_PLATE = "MSC-2026-0001"  # the barcode the OpenAPI document gives as its example
SEEDED_WELLS = ["A1", "B7", "C3", "D12", "E5", "H12"]
# The checks the "done when" counts; the others are reported, not asserted.
MUST_BE_ZERO = {"ST101": "server error", "ST108": "response violates schema"}

pytestmark = [pytest.mark.slow, pytest.mark.fuzz]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _admin_key(url: str) -> str:
    engine = create_engine(url)
    try:
        with Session(engine) as session:
            key = create_key(session, "fuzz-admin", Role.admin)
            session.commit()
        return key
    finally:
        engine.dispose()


def _training_pids(url: str) -> list[int]:
    engine = create_engine(url)
    try:
        with Session(engine) as session:
            return [pid for pid in session.scalars(select(TrainingRun.pid)) if pid]
    finally:
        engine.dispose()


@pytest.fixture
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    """(base URL, admin key, server log) of `mscreen serve` on the parametrised database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'fuzz.db'}"
    else:
        url = str(request.getfixturevalue("postgres_url"))
    migrations.upgrade(url)
    key = _admin_key(url)
    repository = tmp_path / "model-repository"
    shutil.copytree(BUNDLED_REPOSITORY, repository)  # training runs publish here, not the package
    port = _free_port()
    log_path = tmp_path / "server.log"
    env = {
        **os.environ,
        "MSCREEN_DATABASE_URL": url,
        "MSCREEN_DATA_DIR": str(tmp_path / "data"),
        "MSCREEN_MODEL_REPOSITORY": str(repository),
        "MSCREEN_ONNX_PROVIDER": "cpu",
        "MSCREEN_TRAINING_MAX_RUNNING": "1",
        # Event streams of scans waiting in the fuzzer's queue close quickly (clients reconnect).
        "MSCREEN_EVENTS_MAX_SECONDS": "2",
    }
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "cli", "serve", "--port", str(port), "--log-level", "warning"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base, process)
        yield base, key, log_path
    finally:
        process.terminate()
        process.wait(30)
        for pid in _training_pids(url):  # the fuzzer may have started retraining runs
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


def _wait_healthy(base: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert process.poll() is None, "the server exited during start-up"
        try:
            if httpx.get(f"{base}/api/v1/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError("the server did not become healthy in 90 s")


def _seed_plate(base: str, key: str) -> None:
    """Scan a few wells of the example plate and upload the simulator's FCT export for it."""
    headers = {"X-API-Key": key}
    response = httpx.post(
        f"{base}/api/v1/scans",
        json={"plate_barcode": EXAMPLE_PLATE, "wells": SEEDED_WELLS},
        headers=headers,
    )
    assert response.status_code == 202, response.text
    location = response.headers["Location"]
    deadline = time.monotonic() + 180
    while httpx.get(f"{base}{location}", headers=headers).json()["status"] != "completed":
        assert time.monotonic() < deadline, "the seed scan did not complete"
        time.sleep(0.3)
    export = fct_export_csv(SimulationConfig(seed=0), EXAMPLE_PLATE)
    response = httpx.put(
        f"{base}/api/v1/plates/{EXAMPLE_PLATE}/fct",
        content=export,
        headers={**headers, "Content-Type": "text/csv"},
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "served", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    served: tuple[str, str, Path], tmp_path: Path
) -> None:
    base, key, log_path = served
    _seed_plate(base, key)
    report_path = tmp_path / "schemathesis.json"
    command = [
        str(Path(sys.executable).with_name("st")),
        "run",
        f"{base}/openapi.json",
        "--header",
        f"X-API-Key: {key}",
        "--seed",
        str(SEED),
        "--max-examples",
        str(MAX_EXAMPLES),
        "--generation-database",
        "none",  # no example database: every run is the seed's, and nothing is written here
        "--request-timeout",
        "30",
        "--report",
        "json",
        "--report-json-path",
        str(report_path),
        "--no-color",
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=1500, check=False)
    assert report_path.exists(), f"schemathesis wrote no report:\n{run.stdout[-3000:]}"
    report = json.loads(report_path.read_text())
    failures = {f["code"]: f for f in report["failures"]}
    summary = {
        "cases": report["test_cases"]["generated"],
        "failures": {c: (f["title"], f["count"], f["operations"]) for c, f in failures.items()},
    }
    print(json.dumps(summary, indent=1))  # visible with -s, and in the CI log on failure
    (tmp_path / "schemathesis.out").write_text(run.stdout)
    bad = {code: failures[code] for code in MUST_BE_ZERO if code in failures}
    assert not bad, f"schemathesis found {bad}\n{run.stdout}"
    assert report["test_cases"]["generated"] >= MIN_CASES, summary
    assert report["errors"] == [], report["errors"]
    assert "Traceback" not in log_path.read_text(errors="replace")
