"""The PlateScreening feature, loaded from its definition, with its errors and value types.

What sila2's code generator would write for the feature (``Feature(xml)``, one
DefinedExecutionError class per error, NamedTuples for the structures), written out with type
hints so that mypy checks the implementation against it. The XML is the contract: a client
reads it from the server (SiLAService.GetFeatureDefinition), not from this module.
"""

# The error classes are named exactly as the definition's identifiers (no Error suffix).
# ruff: noqa: N818

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from sila2.framework import DefinedExecutionError, Feature

DEFINITION = Path(__file__).with_name("PlateScreening.sila.xml")

PlateScreeningFeature = Feature(DEFINITION.read_text(encoding="utf-8"))

# Probability sent for a well without one (no field passed QC, or the acquisition failed):
# SiLA has no null, and -1 cannot be mistaken for a probability (NaN would break the JSON
# that schedulers log their results as).
NO_PROBABILITY = -1.0


class WellCall(NamedTuple):
    """One well's result (the WellCall data type)."""

    Well: str
    Status: str  # ok | excluded | failed
    Call: str  # high | low | uncertain | no call | "" (no call was made)
    Probability: float  # P(high), 0..1; NO_PROBABILITY: none
    QcFlags: list[str]
    FieldsUsed: int
    ScanId: int


class ScanSummary(NamedTuple):
    """A finished scan's counts by call (the ScanSummary data type)."""

    Status: str
    WellsDone: int
    WellsTotal: int
    High: int
    Low: int
    Uncertain: int
    NoCall: int
    Excluded: int
    Failed: int


class ScanPlateResponses(NamedTuple):
    ScanId: int
    Summary: ScanSummary


class ScanPlateIntermediateResponses(NamedTuple):
    WellResult: WellCall
    WellsDone: int
    WellsTotal: int


class CancelScanResponses(NamedTuple):
    Status: str
    WellsDone: int


class GetWellCallsResponses(NamedTuple):
    ScanId: int
    ScanStatus: str
    WellCalls: list[WellCall]


class GetWellCallResponses(NamedTuple):
    WellCall: WellCall


class ActiveModel(NamedTuple):
    """The ActiveModel property's value."""

    Name: str
    Version: int
    Provider: str


class _PlateScreeningError(DefinedExecutionError):
    """A defined execution error of this feature; the subclass's name is its identifier."""

    def __init__(self, message: str) -> None:
        node = PlateScreeningFeature.defined_execution_errors[type(self).__name__]
        super().__init__(node, message=message)


class MicroscopeBusy(_PlateScreeningError):
    """Another scan is queued or running on this microscope."""


class ModelNotLoaded(_PlateScreeningError):
    """No model can serve (the service runs degraded)."""


class QcRejected(_PlateScreeningError):
    """No field of the well passed QC, so it has no call."""


class InvalidRequest(_PlateScreeningError):
    """The request names something malformed (the REST API's 422, and a 409 on ScanPlate)."""


class NotFound(_PlateScreeningError):
    """The plate, scan or well result does not exist (the REST API's 404)."""


class ScanAlreadyFinished(_PlateScreeningError):
    """CancelScan on a scan that is no longer queued or running (the REST API's 409)."""


class ScanFailed(_PlateScreeningError):
    """The scan ScanPlate followed stopped with an error."""


class ScanCancelled(_PlateScreeningError):
    """The scan ScanPlate followed was cancelled."""


class NotAuthorized(_PlateScreeningError):
    """The key's role is too low (the REST API's 403); on ScanPlate also an invalid key."""


ERRORS: tuple[type[_PlateScreeningError], ...] = (
    MicroscopeBusy,
    ModelNotLoaded,
    QcRejected,
    InvalidRequest,
    NotFound,
    ScanAlreadyFinished,
    ScanFailed,
    ScanCancelled,
    NotAuthorized,
)
