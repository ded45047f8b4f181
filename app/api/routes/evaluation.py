"""Evaluation pooled over several plates."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from app.api.deps import SessionDep, Viewer
from app.evaluation import MAX_POOLED_PLATES, MAX_RESAMPLES, evaluate_barcodes, parse_barcodes
from app.schemas.common import PrevalenceQuery

router = APIRouter(tags=["evaluation"])


@router.get("/evaluation")
def pooled_evaluation(
    session: SessionDep,
    _: Viewer,
    plates: Annotated[
        str | None,
        Query(
            max_length=MAX_POOLED_PLATES * 65,
            description=f"Comma-separated barcodes (at most {MAX_POOLED_PLATES}); default: "
            "every plate with FCT.",
        ),
    ] = None,
    resamples: Annotated[
        int, Query(ge=100, le=MAX_RESAMPLES, description="Bootstrap resamples for the CIs.")
    ] = 2000,
    prevalence: PrevalenceQuery = None,
) -> dict[str, Any]:
    """Model (and manual) vs FCT over the wells of several plates (latest completed scans);
    with ``prevalence``, PPV and NPV at that share of high wells too. Reports are cached until
    a scan result, FCT or manual call of those plates changes."""
    return evaluate_barcodes(
        session, parse_barcodes(plates), resamples=resamples, prevalence=prevalence
    )
