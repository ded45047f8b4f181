"""Scans: start one (queued for the worker) and follow it."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Response, status

from app.api.deps import RuntimeDep, SessionDep
from app.api.schemas import ScanCreate, ScanPublic
from app.orm import Scan
from app.scans import create_scan
from hardware.plate import WellNameError

router = APIRouter(prefix="/scans", tags=["scans"])


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=ScanPublic)
def start_scan(
    body: ScanCreate, response: Response, session: SessionDep, runtime: RuntimeDep
) -> ScanPublic:
    """Queue a scan of a plate. The worker runs it; follow it at the returned Location."""
    try:
        scan = create_scan(session, body, microscope=runtime.microscope_name)
    except (WellNameError, ValueError) as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from exc
    session.commit()
    response.headers["Location"] = f"/api/v1/scans/{scan.id}"
    return ScanPublic.of(scan)


@router.get("/{scan_id}", response_model=ScanPublic)
def get_scan(scan_id: int, session: SessionDep) -> ScanPublic:
    """Status and progress of one scan."""
    scan = session.get(Scan, scan_id)
    if scan is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no scan {scan_id}")
    return ScanPublic.of(scan)
