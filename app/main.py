"""The FastAPI application."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from app.api.docs import install_docs
from app.api.errors import API_ERRORS, COMMON_ERRORS, install_error_handlers
from app.api.guard import RequestGuard
from app.api.headers import SecurityHeaders
from app.api.routes import audit, evaluation, health, imports, keys, models, plates, scans
from app.api.routes import ground_truth as ground_truth_routes
from app.runtime import build_runtime
from app.settings import Settings, get_settings

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
# The plate-map page: plain HTML, CSS and JS served as files (no front-end build step).
STATIC_DIR = Path(__file__).resolve().parent / "static"


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; the runtime (DB, model, worker) starts in the lifespan."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = build_runtime(settings)
        app.state.runtime = runtime
        if settings.worker_enabled:
            runtime.worker.start()
            runtime.analyses.start()
        if settings.training_enabled:
            runtime.training.start()
        try:
            yield
        finally:
            runtime.close()

    app = FastAPI(
        title="mscreen",
        summary="96-well MSC functionality screening from label-free phase-contrast images",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # served from local files by install_docs, not from a CDN
        redoc_url=None,
    )
    for router in (
        scans.router,
        plates.router,
        ground_truth_routes.router,
        evaluation.router,
        models.router,
        keys.router,
        audit.router,
        imports.router,
    ):
        app.include_router(router, prefix=API_PREFIX, responses=COMMON_ERRORS | API_ERRORS)
    app.include_router(health.router, prefix=API_PREFIX)
    install_error_handlers(app)
    # The guard runs first (outermost but one): key and body size before anything is parsed;
    # the headers go on every response, the guard's refusals included.
    app.add_middleware(RequestGuard)
    app.add_middleware(SecurityHeaders)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    install_docs(app)

    @app.get("/", include_in_schema=False)
    def plate_map_page() -> FileResponse:
        """The plate-map page; it calls the API with the key the user enters."""
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    return app
