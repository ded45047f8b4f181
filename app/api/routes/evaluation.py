"""Evaluation pooled over several plates."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, status
from sqlalchemy import select

from app.api.deps import SessionDep, Viewer
from app.evaluation import NothingToEvaluateError, evaluate_plates
from app.orm import FctMeasurement, Plate, Well

router = APIRouter(tags=["evaluation"])


@router.get("/evaluation")
def pooled_evaluation(
    session: SessionDep,
    _: Viewer,
    plates: Annotated[
        str | None, Query(description="Comma-separated barcodes; default: every plate with FCT.")
    ] = None,
    resamples: Annotated[int, Query(ge=100, le=20000)] = 2000,
) -> dict[str, Any]:
    """Model (and manual) vs FCT over the wells of several plates (latest completed scans)."""
    if plates:
        barcodes = [b.strip() for b in plates.split(",") if b.strip()]
        found = list(session.scalars(select(Plate).where(Plate.barcode.in_(barcodes))))
        missing = sorted(set(barcodes) - {p.barcode for p in found})
        if missing:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no plate(s) {missing}")
    else:
        found = list(
            session.scalars(
                select(Plate)
                .where(
                    Plate.id.in_(
                        select(Well.plate_id).join(
                            FctMeasurement, FctMeasurement.well_id == Well.id
                        )
                    )
                )
                .order_by(Plate.id)
            )
        )
    try:
        return evaluate_plates(session, found, resamples=resamples)
    except NothingToEvaluateError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from exc
