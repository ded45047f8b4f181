"""Retraining runs started from the API, each in its own process (`mscreen train --run-id`)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from app.auth import audit
from app.errors import NotFoundError
from models.training_spec import TrainingRequest, TrainingSpec
from store.db import session_scope
from store.orm import TrainingRun, TrainingRunStatus

if TYPE_CHECKING:
    from app.runtime import Runtime

logger = logging.getLogger(__name__)

LOG_TAIL_LINES = 40


def start_training_run(runtime: Runtime, request: TrainingRequest, *, requested_by: str) -> int:
    """Record a run (its spec, audited) and start ``mscreen train --run-id`` for it.

    The child reads its spec from the run's row, so the API and the CLI share one spelling of
    the parameters (models.training_spec). It gets this service's database and model repository
    explicitly, so it reports to and publishes into the same places whatever its own
    environment says. Returns the run id.
    """
    settings = runtime.settings
    params = request.model_dump()
    with session_scope(runtime.session_factory) as session:
        run = TrainingRun(params=params, requested_by=requested_by, model_name=request.name)
        session.add(run)
        session.flush()
        run_id = run.id
        audit(session, requested_by, "training.start", f"training-run:{run_id}", **params)
    log_dir = settings.data_dir / "training-runs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = (log_dir / f"run-{run_id}.log").resolve()
    command = [sys.executable, "-m", "cli", "-v", "train", "--run-id", str(run_id)]
    env = dict(
        os.environ,
        MSCREEN_DATABASE_URL=settings.resolved_database_url,
        MSCREEN_MODEL_REPOSITORY=str(settings.model_repository),
        MSCREEN_DATA_DIR=str(settings.data_dir),
    )
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    with session_scope(runtime.session_factory) as session:
        run = session.get_one(TrainingRun, run_id)
        run.pid = process.pid
        run.log_path = str(log_path)
    logger.info("training run %d started as pid %d", run_id, process.pid)
    return run_id


def run_or_error(session: Session, run_id: int) -> TrainingRun:
    run = session.get(TrainingRun, run_id)
    if run is None:
        raise NotFoundError(f"no training run {run_id}")
    return run


def spec_of(session: Session, run_id: int) -> TrainingSpec:
    """The spec a run was started with (validated again: the row is data, not trusted code)."""
    return TrainingSpec.model_validate(session.get_one(TrainingRun, run_id).params)


def mark_running(session: Session, run_id: int) -> None:
    run = session.get_one(TrainingRun, run_id)
    run.status = TrainingRunStatus.running
    run.started_at = datetime.now(UTC)
    run.pid = os.getpid()


def mark_finished(
    session: Session, run_id: int, *, version: int | None = None, error: str | None = None
) -> None:
    run = session.get_one(TrainingRun, run_id)
    run.status = TrainingRunStatus.failed if error else TrainingRunStatus.completed
    run.model_version = version
    run.error = error
    run.finished_at = datetime.now(UTC)


def training_run_view(run: TrainingRun) -> dict[str, Any]:
    log_tail: list[str] = []
    if run.log_path and Path(run.log_path).exists():
        lines = Path(run.log_path).read_text(errors="replace").splitlines()
        # tqdm redraws with carriage returns; keep the last state of each line.
        log_tail = [line.rsplit("\r", 1)[-1] for line in lines[-LOG_TAIL_LINES:]]
    return {
        "id": run.id,
        "status": run.status.value,
        "params": run.params,
        "model_name": run.model_name,
        "model_version": run.model_version,
        "error": run.error,
        "requested_by": run.requested_by,
        "created_at": run.created_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "log_tail": log_tail,
    }
