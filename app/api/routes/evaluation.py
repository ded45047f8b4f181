"""Evaluation pooled over several plates."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from app.api.deps import SessionDep, Viewer
from app.evaluation import evaluate_barcodes

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
    barcodes = [b.strip() for b in plates.split(",") if b.strip()] if plates else None
    return evaluate_barcodes(session, barcodes, resamples=resamples)
