"""Service refusals as HTTP responses: the status code the error names, ``{"detail": ...}``."""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import (
    http_exception_handler,
    request_validation_exception_handler,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import ServiceError
from app.ground_truth import MAX_REPORTED_ERRORS, UploadError
from app.schemas.common import ErrorBody, UploadProblem
from models.metrics import json_safe

ResponseDocs = dict[int | str, dict[str, Any]]


def _documented(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


# On every operation: the request guard's refusals and request validation.
COMMON_ERRORS: ResponseDocs = {
    400: _documented("The body could not be read as the content type it declares"),
    401: _documented("Missing, invalid or revoked X-API-Key"),
    403: _documented("The key's role does not allow this"),
    413: _documented("Request body larger than the route's limit"),
    422: _documented("A parameter or the body failed validation"),
}
# On the resource routers: what a service refusal can answer (app/errors.py).
API_ERRORS: ResponseDocs = {
    404: _documented("No such plate, scan, well, field, model or run"),
    409: _documented("Not in a state that allows this (or stored data is corrupt)"),
    410: _documented("It existed, but its stored data is gone"),
    503: _documented("A component this needs cannot run here"),
}


def _service_error(_request: Request, exc: Exception) -> JSONResponse:
    status_code = exc.status_code if isinstance(exc, ServiceError) else 500
    return JSONResponse({"detail": str(exc)}, status_code=status_code)


def _upload_error(_request: Request, exc: Exception) -> JSONResponse:
    """An upload's problems: the message, the first MAX_REPORTED_ERRORS of them and how many
    in all, so a bad file of any size gets a short answer (UploadProblem)."""
    errors = exc.errors if isinstance(exc, UploadError) else []
    problem = UploadProblem(
        message=str(exc),
        errors=[e.to_dict() for e in errors[:MAX_REPORTED_ERRORS]],
        error_count=len(errors),
    )
    return JSONResponse({"detail": problem.model_dump()}, status_code=422)


async def _validation_error(request: Request, exc: Exception) -> Response:
    """FastAPI's 422, whose errors echo the input: a body carrying JSON's NaN or Infinity
    tokens (Python's json reads them) would otherwise make the 422 itself fail to encode, and
    answer 500. Those echoed numbers travel as null."""
    assert isinstance(exc, RequestValidationError)
    try:
        return await request_validation_exception_handler(request, exc)
    except ValueError:  # "Out of range float values are not JSON compliant"
        return JSONResponse({"detail": json_safe(jsonable_encoder(exc.errors()))}, 422)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals, with a 405's ``Allow`` naming every method of the path.

    Each method of a path is its own route, and Starlette's 405 lists only the methods of the
    first route whose path matched (``POST /keys`` answered a PATCH with ``Allow: POST``,
    although ``GET /keys`` exists too). The methods come from the OpenAPI document, the one
    list a client sees.
    """
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 405:
        allowed = _methods_of(request.app, request.url.path)
        if allowed:
            exc.headers = {**(exc.headers or {}), "Allow": ", ".join(allowed)}
    return await http_exception_handler(request, exc)


def _methods_of(app: FastAPI, path: str) -> list[str]:
    table: list[tuple[re.Pattern[str], list[str]]] | None = getattr(app.state, "allow_table", None)
    if table is None:
        table = [
            (
                re.compile("^" + re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(template)) + "$"),
                sorted(method.upper() for method in operations),
            )
            for template, operations in app.openapi().get("paths", {}).items()
        ]
        app.state.allow_table = table
    return next((methods for pattern, methods in table if pattern.match(path)), [])


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(UploadError, _upload_error)
