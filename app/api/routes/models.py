"""Model versions: list with cards, activate one (admin), start and follow retraining runs.
HTTP only: the logic is in app.model_registry, app.runtime and app.training_runs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status

from app import model_registry, training_runs
from app.api.deps import Admin, RuntimeDep, SessionDep, Viewer
from app.auth import audit
from app.schemas.models import ModelVersionPublic, TrainingRunCreate

router = APIRouter(tags=["models"])


@router.get("/models", response_model=list[ModelVersionPublic])
def list_models(session: SessionDep, runtime: RuntimeDep, _: Viewer) -> list[ModelVersionPublic]:
    """Every version in the model repository, with its model card and status."""
    return model_registry.list_versions(session, runtime.model_repository)


@router.post("/models/{name}/{version}/activate", response_model=ModelVersionPublic)
def activate_model(
    name: str, version: int, session: SessionDep, runtime: RuntimeDep, caller: Admin
) -> ModelVersionPublic:
    """Serve this version from the next scan on (only if its ONNX parity check passed)."""
    row = runtime.activate_model(name, version)
    audit(session, caller.name, "model.activate", f"model:{name}:{version}")
    return model_registry.public(row)


@router.post("/training-runs", status_code=status.HTTP_202_ACCEPTED)
def create_training_run(
    body: TrainingRunCreate, runtime: RuntimeDep, caller: Admin
) -> dict[str, Any]:
    """Start a retraining run in a separate process; follow it at the returned URL."""
    run_id = training_runs.start_training_run(runtime, body, requested_by=caller.name)
    return {"id": run_id, "url": f"/api/v1/training-runs/{run_id}"}


@router.get("/training-runs/{run_id}")
def get_training_run(run_id: int, session: SessionDep, _: Viewer) -> dict[str, Any]:
    """Status of a retraining run, with the tail of its log."""
    return training_runs.training_run_view(training_runs.run_or_error(session, run_id))
