"""Evaluation pooled over several plates."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from app.analyses import ModelSpec
from app.api.deps import SessionDep, Viewer
from app.evaluation import MAX_POOLED_PLATES, MAX_RESAMPLES, evaluate_barcodes, parse_barcodes
from app.schemas.common import ModelQuery, PrevalenceQuery

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
    model: ModelQuery = None,
) -> dict[str, Any]:
    """Model (and manual) vs FCT over the wells of several plates (latest completed scans).

    ``model``: the metrics over every well the model called (at the scans' shared decision
    threshold, else 0.5; ``decision_thresholds`` per plate), "no call" (out-of-distribution)
    wells left out and counted in ``wells_no_call``. ``calibration``: ECE and reliability table
    of P(high) over those wells. ``selective``: the high/low/uncertain/no-call labels a lab acts
    on: coverage, error among the called wells, share sent to FCT, the policy. With
    ``prevalence``, PPV and NPV at that share of high wells too. With ``model``, that version's
    calls (each scan's re-analysis with it). Reports are cached until a scan result, FCT or
    manual call of those plates changes."""
    return evaluate_barcodes(
        session,
        parse_barcodes(plates),
        model=None if model is None else ModelSpec.parse(model),
        resamples=resamples,
        prevalence=prevalence,
    )
