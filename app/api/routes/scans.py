"""Scans: start one (queued for the worker), follow it (poll or server-sent events), cancel it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Request, Response, status
from fastapi.responses import StreamingResponse
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from app.api.deps import Operator, RuntimeDep, SessionDep, Viewer
from app.api.schemas import ScanCreate, ScanPublic, WellResultPublic
from app.auth import audit
from app.db import session_scope
from app.orm import Scan, Well, WellResult
from app.runtime import Runtime
from app.scans import (
    IdempotencyConflictError,
    ScanStateError,
    cancel_scan,
    create_scan,
    find_idempotent,
)
from hardware.plate import WellNameError

router = APIRouter(prefix="/scans", tags=["scans"])

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=128,
        description="Retry-safe POST: the same key and body return the same scan; the same key "
        "with another body is a 422.",
    ),
]


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=ScanPublic)
def start_scan(
    body: ScanCreate,
    response: Response,
    session: SessionDep,
    runtime: RuntimeDep,
    caller: Operator,
    idempotency_key: IdempotencyKey = None,
) -> ScanPublic:
    """Queue a scan of a plate. The worker runs it; follow it at the returned Location."""
    try:
        scan = find_idempotent(session, idempotency_key, body) if idempotency_key else None
        if scan is None:
            scan = create_scan(
                session,
                body,
                microscope=runtime.microscope_name,
                requested_by=caller.name,
                idempotency_key=idempotency_key,
            )
            audit(session, caller.name, "scan.create", f"scan:{scan.id}", **body.model_dump())
            session.commit()
    except IntegrityError as exc:
        # A concurrent retry with the same key won the insert: answer with its scan. Without a
        # key, a concurrent first scan of the same new plate created it first: retry.
        session.rollback()
        scan = find_idempotent(session, str(idempotency_key), body) if idempotency_key else None
        if scan is None:
            raise HTTPException(
                status.HTTP_409_CONFLICT, detail="a concurrent request changed this plate; retry"
            ) from exc
    except (WellNameError, IdempotencyConflictError, ValueError) as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from exc
    response.headers["Location"] = f"/api/v1/scans/{scan.id}"
    return ScanPublic.of(scan)


def _scan_or_404(session: SessionDep, scan_id: int) -> Scan:
    scan = session.get(Scan, scan_id)
    if scan is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no scan {scan_id}")
    return scan


@router.get("/{scan_id}", response_model=ScanPublic)
def get_scan(scan_id: int, session: SessionDep, _: Viewer) -> ScanPublic:
    """Status and progress of one scan."""
    return ScanPublic.of(_scan_or_404(session, scan_id))


@router.post("/{scan_id}/cancel", response_model=ScanPublic)
def cancel(scan_id: int, session: SessionDep, caller: Operator) -> ScanPublic:
    """Cancel a queued or running scan (wells already committed stay)."""
    scan = _scan_or_404(session, scan_id)
    try:
        cancel_scan(session, scan)
    except ScanStateError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    audit(session, caller.name, "scan.cancel", f"scan:{scan.id}")
    session.commit()
    return ScanPublic.of(scan)


def _snapshot(
    runtime: Runtime, scan_id: int, after_result_id: int
) -> tuple[ScanPublic, list[tuple[int, WellResultPublic]]]:
    with session_scope(runtime.session_factory) as session:
        scan = session.get_one(Scan, scan_id)
        results = session.scalars(
            select(WellResult)
            .join(Well, WellResult.well_id == Well.id)
            .where(WellResult.scan_id == scan_id, WellResult.id > after_result_id)
            .order_by(WellResult.id)
        ).all()
        return ScanPublic.of(scan), [(r.id, WellResultPublic.of(r)) for r in results]


def _event(name: str, data: str) -> str:
    return f"event: {name}\ndata: {data}\n\n"


@router.get(
    "/{scan_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def scan_events(
    scan_id: int, request: Request, session: SessionDep, runtime: RuntimeDep, _: Viewer
) -> StreamingResponse:
    """Server-sent events: ``well`` for each committed well result, ``progress`` when the
    scan's status or progress changes, and a final ``end`` when it is finished."""
    _scan_or_404(session, scan_id)
    session.close()

    async def stream() -> AsyncIterator[str]:
        last_result_id, last_progress = 0, ""
        while not await request.is_disconnected():
            scan, results = await asyncio.to_thread(_snapshot, runtime, scan_id, last_result_id)
            for result_id, result in results:
                last_result_id = result_id
                yield _event("well", result.model_dump_json())
            progress = scan.model_dump_json()
            if progress != last_progress:
                last_progress = progress
                yield _event("progress", progress)
            if scan.status.finished:
                yield _event("end", json.dumps({"id": scan.id, "status": scan.status.value}))
                return
            await asyncio.sleep(0.5)

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
    )
