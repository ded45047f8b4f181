"""Scans: list them, start one (queued for the worker), follow it (poll or server-sent events),
cancel it. HTTP only: the logic is in app.scans."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request, Response, status
from fastapi.responses import StreamingResponse

from app import analyses, scans
from app.api.deps import Operator, RuntimeDep, SessionDep, Viewer
from app.schemas.analyses import AnalysisCreate, AnalysisPublic
from app.schemas.common import BARCODE_PATTERN, MAX_ID, ScanIdPath
from app.schemas.scans import LimitQuery, OffsetQuery, ScanCreate, ScanPage, ScanPublic
from store.orm import ScanStatus

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
    """Queue a scan of a plate. The worker runs it; follow it at the returned Location.
    Refused (503, with the reason) while no model can serve: the scan would only wait.

    The call policy (``threshold_policy``, ``alpha``, ``delta``; the service's settings where
    unset) is checked against the serving model now: a policy that needs a decision set the
    model lacks is a 409, one the model's decision set cannot serve a 422, each naming why.
    The scan records it (``decision_policy``) and is called under it on the model it runs on."""
    classifier = runtime.require_model()
    scan = scans.start_scan(
        session,
        body,
        microscope=runtime.microscope_name,
        requested_by=caller.name,
        idempotency_key=idempotency_key,
        policy_defaults=scans.PolicyDefaults.of(runtime.settings),
        classifier=classifier,
    )
    response.headers["Location"] = f"/api/v1/scans/{scan.id}"
    return ScanPublic.of(scan)


@router.get("", response_model=ScanPage)
def list_scans(
    session: SessionDep,
    _: Viewer,
    plate: Annotated[
        str | None, Query(pattern=BARCODE_PATTERN, description="Only scans of this plate.")
    ] = None,
    status: Annotated[ScanStatus | None, Query(description="Only scans in this status.")] = None,
    limit: LimitQuery = 50,
    offset: OffsetQuery = 0,
) -> ScanPage:
    """Scans, newest first, optionally of one plate or in one status; paged."""
    return scans.list_scans(session, limit=limit, offset=offset, plate=plate, status=status)


@router.get("/{scan_id}", response_model=ScanPublic)
def get_scan(scan_id: ScanIdPath, session: SessionDep, _: Viewer) -> ScanPublic:
    """Status and progress of one scan."""
    return ScanPublic.of(scans.scan_or_error(session, scan_id))


@router.post("/{scan_id}/cancel", response_model=ScanPublic)
def cancel(scan_id: ScanIdPath, session: SessionDep, caller: Operator) -> ScanPublic:
    """Cancel a queued or running scan. Wells already committed stay; the well being imaged is
    dropped, so ``wells_done`` in the answer is final."""
    return ScanPublic.of(scans.cancel(session, scan_id, actor=caller.name))


AnalysisIdPath = Annotated[int, Path(ge=1, le=MAX_ID, description="Analysis id.")]


@router.post(
    "/{scan_id}/analyses",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=AnalysisPublic,
    responses={200: {"model": AnalysisPublic, "description": "The existing analysis"}},
)
def start_analysis(
    scan_id: ScanIdPath,
    body: AnalysisCreate,
    response: Response,
    session: SessionDep,
    runtime: RuntimeDep,
    caller: Operator,
) -> AnalysisPublic:
    """Re-score a finished scan's stored fields with another model version; its calls are kept
    beside the scan's own (read them with ``?model=NAME:VERSION`` on the plate's well queries).

    One analysis per scan and version: asking again answers 200 with the existing one, and
    re-queues it (202) if it failed or was cancelled; it then resumes from its first well
    without a result. The call policy fields left unset are the scan's own request; they are
    checked against that version's model now (409 when it lacks a decision set). 409 also when
    the scan is not finished, was itself called by that version, or the version failed its
    parity check; 404 for an unknown scan or version."""
    analysis, queued = analyses.request_analysis(
        session,
        scan_id,
        analyses.ModelSpec(body.model, body.version),
        repository=runtime.model_repository,
        classifiers=runtime.classifiers,
        requested_by=caller.name,
        policy=body.model_dump(include={"threshold_policy", "alpha", "delta"}),
    )
    if not queued:
        response.status_code = status.HTTP_200_OK
    response.headers["Location"] = f"/api/v1/scans/{scan_id}/analyses/{analysis.id}"
    return AnalysisPublic.of(analysis)


@router.get("/{scan_id}/analyses", response_model=list[AnalysisPublic])
def list_analyses(scan_id: ScanIdPath, session: SessionDep, _: Viewer) -> list[AnalysisPublic]:
    """The re-analyses of a scan, oldest first, each with its status and progress."""
    return [AnalysisPublic.of(a) for a in analyses.list_analyses(session, scan_id)]


@router.get("/{scan_id}/analyses/{analysis_id}", response_model=AnalysisPublic)
def get_analysis(
    scan_id: ScanIdPath, analysis_id: AnalysisIdPath, session: SessionDep, _: Viewer
) -> AnalysisPublic:
    """Status and progress of one re-analysis."""
    return AnalysisPublic.of(analyses.analysis_or_error(session, scan_id, analysis_id))


@router.post("/{scan_id}/analyses/{analysis_id}/cancel", response_model=AnalysisPublic)
def cancel_analysis(
    scan_id: ScanIdPath, analysis_id: AnalysisIdPath, session: SessionDep, caller: Operator
) -> AnalysisPublic:
    """Cancel a queued or running re-analysis; the wells done stay, and POSTing the same
    version again resumes it. 409 if it has already finished."""
    analysis = analyses.analysis_or_error(session, scan_id, analysis_id)
    return AnalysisPublic.of(analyses.cancel_analysis(session, analysis, actor=caller.name))


def _event(name: str, data: str, event_id: int | None = None) -> str:
    id_line = f"id: {event_id}\n" if event_id is not None else ""
    return f"{id_line}event: {name}\ndata: {data}\n\n"


LastEventId = Annotated[
    int | None,
    Header(
        alias="Last-Event-ID",
        ge=0,
        le=MAX_ID,
        description="Resume a stream: only wells committed after this event id (a `well` "
        "event's id, which a reconnecting EventSource sends by itself).",
    ),
]


@router.get(
    "/{scan_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def scan_events(
    scan_id: ScanIdPath,
    request: Request,
    session: SessionDep,
    runtime: RuntimeDep,
    _: Viewer,
    last_event_id: LastEventId = None,
) -> StreamingResponse:
    """Server-sent events: ``well`` (with the result's id as the event id) for each committed
    well result, ``progress`` when the scan's status or progress changes, and a final ``end``
    when it is finished.

    A stream lasts at most ``MSCREEN_EVENTS_MAX_SECONDS`` (300 s): a stream without ``end`` has
    been closed by the server (or a proxy), and the client reconnects with ``Last-Event-ID`` to
    get only what it has not seen. No connection is held forever by a scan that waits in the
    queue."""
    scans.scan_or_error(session, scan_id)
    session.close()
    deadline = time.monotonic() + runtime.settings.events_max_seconds

    async def stream() -> AsyncIterator[str]:
        last_result_id, last_progress = last_event_id or 0, ""
        while not await request.is_disconnected():
            scan, results = await asyncio.to_thread(
                scans.snapshot, runtime.session_factory, scan_id, last_result_id
            )
            for result_id, result in results:
                last_result_id = result_id
                yield _event("well", result.model_dump_json(), event_id=result_id)
            progress = scan.model_dump_json()
            if progress != last_progress:
                last_progress = progress
                yield _event("progress", progress)
            if scan.status.finished:
                yield _event("end", json.dumps({"id": scan.id, "status": scan.status.value}))
                return
            if time.monotonic() >= deadline:
                return  # the client reconnects with Last-Event-ID
            await asyncio.sleep(0.5)

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
    )
