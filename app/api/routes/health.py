"""Health: database, microscope backend, model and the onnxruntime provider really in use."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from sqlalchemy import text

from app.api.deps import RuntimeDep
from app.schemas.health import Health, ModelHealth

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health)
def health(runtime: RuntimeDep, response: Response) -> Health:
    try:
        with runtime.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        database = f"ok ({runtime.engine.dialect.name})"
    except Exception as exc:  # report, don't raise: this endpoint must answer
        database = f"error: {type(exc).__name__}: {exc}"
    worker_running = runtime.worker.is_running
    healthy = database.startswith("ok") and (worker_running or not runtime.settings.worker_enabled)
    if not healthy:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    model = runtime.model
    return Health(
        status="ok" if healthy else "degraded",
        database=database,
        microscope=runtime.microscope_name,
        model=ModelHealth(
            name=model.name,
            version=model.version,
            provider=model.provider,
            providers=model.providers,
        ),
        worker_running=worker_running,
    )
