"""Bounded, validated spellings of the identifiers and strings the API takes.

Every id, name and free-text parameter is stated once here, with its limits in the schema, so a
client learns them from OpenAPI and a bad value is a 422 naming the parameter, never a database
error (ids beyond a 32-bit integer, NUL bytes that PostgreSQL refuses, paths outside a root).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Path, Query
from pydantic import BaseModel, Field

from models.training_spec import BARCODE_PATTERN, MODEL_NAME_PATTERN

# Ids are 32-bit integer columns on PostgreSQL (SERIAL); a larger id cannot exist.
MAX_ID = 2**31 - 1

KEY_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$"
# A well as people write it: one or two row letters (A..P, then AA..AF on a 1536-well plate),
# a column number with optional leading zeros. Whether the plate has that well is checked
# against its geometry (A13 on a 96-well plate is a 422 naming the plate's range).
WELL_PATTERN = r"^[A-Za-z]{1,2}0*[1-9][0-9]?$"
# Most wells one request may list: a 1536-well plate's.
MAX_WELLS = 1536
# Free text (an operator's name, a reason): printable, no control characters (NUL included).
TEXT_PATTERN = r"^[^\x00-\x1f\x7f]*$"

QcFlag = Literal[
    "overexposed",
    "underexposed",
    "out_of_focus",
    "acquisition_failed",
    "focus_failed",
    "out_of_distribution",
]

ScanIdPath = Annotated[int, Path(ge=1, le=MAX_ID, description="Scan id.")]
RunIdPath = Annotated[int, Path(ge=1, le=MAX_ID, description="Training run id.")]
ScanIdQuery = Annotated[
    int | None, Query(ge=1, le=MAX_ID, description="A given scan; default: the latest.")
]
BarcodePath = Annotated[
    str, Path(pattern=BARCODE_PATTERN, description="Plate barcode.", examples=["MSC-2026-0001"])
]
WellPath = Annotated[
    str, Path(pattern=WELL_PATTERN, description="Well, e.g. B7 (or b07).", examples=["B7"])
]
ModelNamePath = Annotated[str, Path(pattern=MODEL_NAME_PATTERN, description="Model name.")]
ModelVersionPath = Annotated[int, Path(ge=1, le=MAX_ID, description="Model version.")]
KeyNamePath = Annotated[str, Path(pattern=KEY_NAME_PATTERN, description="API key name.")]
ReasonQuery = Annotated[
    str | None,
    Query(
        max_length=500,
        pattern=TEXT_PATTERN,
        description="Why (kept in the audit trail with the change).",
    ),
]


class ErrorBody(BaseModel):
    """Every error response: ``detail`` is a message, or for a request that failed validation
    the list of problems (FastAPI's shape), or for a ground-truth upload the message with the
    rows at fault."""

    detail: str | list[dict[str, Any]] | UploadProblem


class UploadProblem(BaseModel):
    message: str
    errors: list[dict[str, Any]] = Field(
        description="The first problems found, each {row, field, message}"
    )
    error_count: int = Field(description="All problems found (errors lists at most the first)")


ErrorBody.model_rebuild()


# The share of "high" wells at which to report PPV and NPV besides the plate's own (a lab's
# plates are mostly high: most expanded MSC lots pass the ISCT criterion).
# NAME:VERSION of a model version (the repository's name rule, a version of at most 10 digits;
# app.analyses.ModelSpec checks that it fits an id).
MODEL_SPEC_PATTERN = MODEL_NAME_PATTERN.removesuffix("$") + r":[1-9][0-9]{0,9}$"
ModelQuery = Annotated[
    str | None,
    Query(
        pattern=MODEL_SPEC_PATTERN,
        max_length=75,
        description="The calls of this model version, NAME:VERSION (e.g. hscnn-sim:1): a "
        "re-analysis of the scan (POST /api/v1/scans/{id}/analyses); default: the scan's own "
        "calls, by its model of record.",
        examples=["hscnn-sim:1"],
    ),
]

PrevalenceQuery = Annotated[
    float | None,
    Query(
        ge=0.0,
        le=1.0,
        description="Share of high wells (0..1) at which to report PPV and NPV as well, e.g. "
        "0.9; default: only the plates' own.",
    ),
]
