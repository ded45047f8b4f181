"""Model versions: list with cards, activate one (admin), start and follow retraining runs."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, Field
from sqlalchemy import select

from app.api.deps import Admin, RuntimeDep, SessionDep, Viewer
from app.auth import audit
from app.db import session_scope
from app.orm import ModelVersion, TrainingRun
from app.training_runs import start_training_run, training_run_view
from models.repository import ModelNotFoundError
from models.runtime import RuntimeUnavailableError

router = APIRouter(tags=["models"])


class ModelVersionPublic(BaseModel):
    name: str
    version: int
    active: bool
    parity_passed: bool
    sha256: str | None
    registered: bool = Field(description="Known to the database (has served or been activated)")
    card: dict[str, Any]


@router.get("/models", response_model=list[ModelVersionPublic])
def list_models(session: SessionDep, runtime: RuntimeDep, _: Viewer) -> list[ModelVersionPublic]:
    """Every version in the model repository, with its model card and status."""
    rows = {(r.name, r.version): r for r in session.scalars(select(ModelVersion))}
    out = []
    repository = runtime.model_repository
    for name in repository.names():
        for version in repository.versions(name):
            artifact = repository.get(name, version)
            card = artifact.card()
            row = rows.get((name, version))
            out.append(
                ModelVersionPublic(
                    name=name,
                    version=version,
                    active=bool(row and row.active),
                    parity_passed=bool(card.get("parity", {}).get("passed", False)),
                    sha256=row.sha256 if row else None,
                    registered=row is not None,
                    card=card,
                )
            )
    return out


@router.post("/models/{name}/{version}/activate", response_model=ModelVersionPublic)
def activate_model(
    name: str, version: int, runtime: RuntimeDep, caller: Admin
) -> ModelVersionPublic:
    """Serve this version from the next scan on (only if its ONNX parity check passed)."""
    try:
        row = runtime.activate_model(name, version)
    except ModelNotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from exc
    except RuntimeUnavailableError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=str(exc)) from exc
    except (ValueError, RuntimeError) as exc:  # failed parity; weights changed under a version
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    with session_scope(runtime.session_factory) as session:
        audit(session, caller.name, "model.activate", f"model:{name}:{version}")
    return ModelVersionPublic(
        name=row.name,
        version=row.version,
        active=True,
        parity_passed=row.parity_passed,
        sha256=row.sha256,
        registered=True,
        card=row.card,
    )


class TrainingRunCreate(BaseModel):
    model_config = {"extra": "forbid"}

    name: str = Field(default="hscnn-sim", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    # "database": retrain on this service's plates that have FCT labels (split by plate; the
    # *_plates counts below are then unused); "simulated": fresh simulated plates.
    source: Literal["simulated", "database"] = "simulated"
    plates: Annotated[list[str], Field(max_length=500)] | None = None  # database: only these
    train_plates: Annotated[int, Field(ge=1, le=50)] = 4
    val_plates: Annotated[int, Field(ge=1, le=20)] = 1
    test_plates: Annotated[int, Field(ge=1, le=20)] = 2
    epochs: Annotated[int, Field(ge=1, le=500)] = 30
    seed: int = 0


@router.post("/training-runs", status_code=status.HTTP_202_ACCEPTED)
def create_training_run(
    body: TrainingRunCreate, runtime: RuntimeDep, caller: Admin
) -> dict[str, Any]:
    """Start a retraining run in a separate process; follow it at the returned URL."""
    run_id = start_training_run(runtime, body.model_dump(), requested_by=caller.name)
    with session_scope(runtime.session_factory) as session:
        audit(session, caller.name, "training.start", f"training-run:{run_id}", **body.model_dump())
    return {"id": run_id, "url": f"/api/v1/training-runs/{run_id}"}


@router.get("/training-runs/{run_id}")
def get_training_run(run_id: int, session: SessionDep, _: Viewer) -> dict[str, Any]:
    """Status of a retraining run, with the tail of its log."""
    run = session.get(TrainingRun, run_id)
    if run is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no training run {run_id}")
    return training_run_view(run)
