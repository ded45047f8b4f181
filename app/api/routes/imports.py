"""Imports: register and classify a lab's existing plate from a folder under the service's
import root. HTTP only: the logic is in app.imports."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from app import imports
from app.api.deps import Operator, RuntimeDep
from app.schemas.common import ErrorBody
from app.schemas.imports import ImportCreate, ImportPublic

router = APIRouter(prefix="/imports", tags=["imports"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ImportPublic,
    responses={
        200: {"model": ImportPublic, "description": "Dry run: what would be imported"},
        403: {
            "model": ErrorBody,
            "description": "The role does not allow it, imports are off on this service "
            "(MSCREEN_IMPORT_ROOT unset), or the path leaves the import root through a link",
        },
        404: {"model": ErrorBody, "description": "No such folder under the import root"},
        422: {
            "model": ErrorBody,
            "description": "A malformed body or path, or a folder that "
            "cannot be imported as asked (no images, duplicate files, too many fields)",
        },
        503: {
            "model": ErrorBody,
            "description": "No model can serve (the service runs degraded)",
        },
    },
)
def create_import(
    body: ImportCreate, response: Response, runtime: RuntimeDep, caller: Operator
) -> ImportPublic:
    """Import the folder ``path`` (relative to MSCREEN_IMPORT_ROOT): its plate, a scan
    (microscope ``import:<layout>``), every field's pixels with their SHA-256, and a call per
    well from the serving model. Runs inside the request, so it is limited to
    ``imports.API_MAX_FIELDS`` (384) fields; larger plates go through ``mscreen import``.
    ``dry_run`` answers what would be imported (200) and writes nothing. The scan's status
    says how it ended: completed, or failed with the error."""
    root = runtime.settings.import_root
    folder = imports.resolve_folder(root, body.path)  # 403 while root is None
    if not body.dry_run:
        runtime.require_model()  # say why before reading a whole plate
    confine = root.resolve() if root is not None else folder
    plan = imports.plan_import(
        folder, body, geometry=runtime.worker.context.plate, confine=confine, shown_as=body.path
    )
    if body.dry_run:
        response.status_code = status.HTTP_200_OK
        return imports.outcome(runtime.session_factory, plan, None)
    imports.check_api_size(plan)
    scan_id = imports.run_import(imports.ImportContext.of(runtime), plan, requested_by=caller.name)
    response.headers["Location"] = f"/api/v1/scans/{scan_id}"
    return imports.outcome(runtime.session_factory, plan, scan_id)
