"""Service refusals as HTTP responses: the status code the error names, ``{"detail": ...}``."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from app.errors import ServiceError
from app.ground_truth import UploadError


def _service_error(_request: Request, exc: Exception) -> JSONResponse:
    status_code = exc.status_code if isinstance(exc, ServiceError) else 500
    return JSONResponse({"detail": str(exc)}, status_code=status_code)


def _upload_error(_request: Request, exc: Exception) -> JSONResponse:
    errors = exc.errors if isinstance(exc, UploadError) else []
    return JSONResponse(
        {"detail": {"message": str(exc), "errors": [e.to_dict() for e in errors]}},
        status_code=422,
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(UploadError, _upload_error)
