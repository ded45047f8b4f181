"""Health: database, microscope backend, model and the onnxruntime provider really in use."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from sqlalchemy import text

from app.api.deps import RuntimeDep
from app.schemas.health import Health, ModelHealth

router = APIRouter(tags=["health"])


@router.get(
    "/health",
    response_model=Health,
    responses={503: {"model": Health, "description": "Degraded: the body says what is wrong"}},
)
def health(runtime: RuntimeDep, response: Response) -> Health:
    problems: list[str] = []
    try:
        with runtime.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        database = f"ok ({runtime.engine.dialect.name})"
    except Exception as exc:  # report, don't raise: this endpoint must answer
        database = f"error: {type(exc).__name__}: {exc}"
        problems.append(f"database: {type(exc).__name__}")
    worker_running = runtime.worker.is_running
    if runtime.settings.worker_enabled and not worker_running:
        problems.append("the scan worker is not running")
    model_problem = runtime.model_problem
    if model_problem is not None:
        problems.append(f"no model can serve: {model_problem}")
    if problems:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    if model_problem is None and runtime.serving is not None:
        model = runtime.model
        name, version = runtime.serving
        model_health = ModelHealth(
            name=name, version=version, provider=model.provider, providers=model.providers
        )
    else:
        model_health = ModelHealth(name=None, version=None, provider=None, providers=[])
    return Health(
        status="degraded" if problems else "ok",
        database=database,
        microscope=runtime.settings.microscope,
        instrument=runtime.microscope_name,
        autofocus=runtime.settings.autofocus,
        model=model_health,
        worker_running=worker_running,
        problems=problems,
    )
