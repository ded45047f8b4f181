"""Model versions: list with cards, activate one (admin), start and follow retraining runs.
HTTP only: the logic is in app.model_registry, app.runtime and app.training_runs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from app import model_registry, training_runs
from app.api.deps import Admin, RuntimeDep, SessionDep, Viewer
from app.auth import audit
from app.schemas.common import (
    MAX_ID,
    ErrorBody,
    ModelNamePath,
    ModelVersionPath,
    ReasonQuery,
    RunIdPath,
)
from app.schemas.models import (
    ModelVersionPublic,
    TrainingRunAccepted,
    TrainingRunCreate,
    TrainingRunPublic,
    TrainingRunStatusName,
)
from store.orm import TrainingRunStatus

router = APIRouter(tags=["models"])


@router.get("/models", response_model=list[ModelVersionPublic])
def list_models(session: SessionDep, runtime: RuntimeDep, _: Viewer) -> list[ModelVersionPublic]:
    """Every version in the model repository, with its model card and status; a version that
    cannot serve is listed with `valid: false` and the `problem`."""
    return model_registry.list_versions(session, runtime.model_repository)


@router.post("/models/{name}/{version}/activate", response_model=ModelVersionPublic)
def activate_model(
    name: ModelNamePath,
    version: ModelVersionPath,
    session: SessionDep,
    runtime: RuntimeDep,
    caller: Admin,
    reason: ReasonQuery = None,
) -> ModelVersionPublic:
    """Serve this version from the next scan on (only if it loads and its ONNX parity check
    passed; 409 says why not). Also how a degraded service, started without a loadable model,
    recovers."""
    activation = runtime.activate_model(name, version)
    audit(
        session,
        caller.name,
        "model.activate",
        f"model:{name}:{version}",
        reason=reason,
        before=activation.previous,
        after={"name": name, "version": version},
    )
    return model_registry.public(activation.row)


TrainingStatusQuery = Annotated[
    TrainingRunStatusName | None, Query(alias="status", description="Only runs in this status.")
]


@router.get("/training-runs", response_model=list[TrainingRunPublic])
def list_training_runs(
    session: SessionDep,
    runtime: RuntimeDep,
    _: Viewer,
    run_status: TrainingStatusQuery = None,
    limit: Annotated[int, Query(ge=1, le=200, description="Runs per page.")] = 50,
    before_id: Annotated[
        int | None,
        Query(ge=1, le=MAX_ID, description="Only runs older than this id (the next page)."),
    ] = None,
) -> list[TrainingRunPublic]:
    """Retraining runs, newest first, without their logs; the next page: ``before_id`` = the
    last id of this one."""
    rows = training_runs.list_runs(
        session,
        status=TrainingRunStatus(run_status) if run_status else None,
        limit=limit,
        before_id=before_id,
    )
    return [
        training_runs.training_run_view(row, with_log=False, settings=runtime.settings)
        for row in rows
    ]


@router.post(
    "/training-runs",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=TrainingRunAccepted,
    responses={
        409: {"model": ErrorBody, "description": "Too many runs already wait"},
        503: {"model": ErrorBody, "description": "Training cannot run on this service (why)"},
    },
)
def create_training_run(
    body: TrainingRunCreate, runtime: RuntimeDep, caller: Admin, response: Response
) -> TrainingRunAccepted:
    """Queue a retraining run; the service starts it in a separate process when fewer than
    `training_max_running` run. Follow it at the returned URL."""
    run_id = training_runs.start_training_run(runtime, body, requested_by=caller.name)
    url = f"/api/v1/training-runs/{run_id}"
    response.headers["Location"] = url
    return TrainingRunAccepted(id=run_id, status="queued", url=url)


@router.get("/training-runs/{run_id}", response_model=TrainingRunPublic)
def get_training_run(
    run_id: RunIdPath, session: SessionDep, runtime: RuntimeDep, _: Viewer
) -> TrainingRunPublic:
    """Status of a retraining run, with the tail of its log."""
    run = training_runs.run_or_error(session, run_id)
    return training_runs.training_run_view(run, settings=runtime.settings)


@router.post(
    "/training-runs/{run_id}/cancel",
    response_model=TrainingRunPublic,
    responses={409: {"model": ErrorBody, "description": "The run is already finished"}},
)
def cancel_training_run(
    run_id: RunIdPath,
    session: SessionDep,
    runtime: RuntimeDep,
    caller: Admin,
    reason: ReasonQuery = None,
) -> TrainingRunPublic:
    """Cancel a queued run (it never starts) or a running one (its processes get SIGTERM,
    then SIGKILL after `training_kill_grace_seconds`); it ends `cancelled`."""
    training_runs.cancel_training_run(runtime, run_id, actor=caller.name, reason=reason)
    run = training_runs.run_or_error(session, run_id)
    return training_runs.training_run_view(run, settings=runtime.settings)
