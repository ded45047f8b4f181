"""Imports of a lab's existing plates: what a client asks for (``ImportCreate``, or the options
the CLI shares, ``ImportOptions``) and what it reads back (``ImportPublic``)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.schemas.common import BARCODE_PATTERN, TEXT_PATTERN
from app.schemas.scans import ScanPublic

Layout = Literal["metaxpress", "operetta", "incucyte", "regex", "ome-zarr"]
LAYOUTS: tuple[Layout, ...] = ("metaxpress", "operetta", "incucyte", "regex", "ome-zarr")

# A field holds at most this many channels (a z-stack taken as channels can be long; a model
# takes a few); beyond it a request is malformed, not a plate.
MAX_CHANNELS = 64
MAX_PATTERN_LENGTH = 500


class ImportOptions(BaseModel):
    """How to read a folder: its layout and the choices a folder cannot say by itself."""

    # strict: JSON's true is not the integer 1, nor "2" the integer 2. The schema states that
    # a pattern goes with layout "regex" and only with it, as _pattern_with_regex checks.
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "if": {"properties": {"layout": {"const": "regex"}}, "required": ["layout"]},
            "then": {"properties": {"pattern": {"type": "string"}}, "required": ["pattern"]},
            "else": {"properties": {"pattern": {"type": "null"}}},
        },
    )

    layout: Layout = Field(
        description="metaxpress (`..._A01_s1_w1.tif`), operetta (`r01c01f01p01-ch1sk1fk1fl1.tiff`),"
        " incucyte (`..._A1_1_<time>.tif`), regex (`pattern` with named groups) or ome-zarr (an "
        "OME-Zarr HCS plate folder)."
    )
    pattern: str | None = Field(
        default=None,
        max_length=MAX_PATTERN_LENGTH,
        pattern=TEXT_PATTERN,
        description="layout=regex only: a Python regular expression searched in each file's "
        "path relative to the folder, with the named groups `well` (or `row` and `column`) and "
        "optionally `field`, `channel`, `plane`.",
        examples=[r"(?P<well>[A-H]\d{2})_f(?P<field>\d+)_c(?P<channel>\d+)\.tif$"],
    )
    barcode: str | None = Field(
        default=None,
        pattern=BARCODE_PATTERN,
        description="Plate barcode; default: the OME-Zarr plate's name, else the folder's name.",
    )
    channels: list[Annotated[int, Field(ge=0, lt=MAX_CHANNELS)]] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_CHANNELS,
        json_schema_extra={"uniqueItems": True},
        description="Channels to keep, by 0-based position in the plate's channel list (the dry "
        "run lists them), in this order; default: all.",
    )
    bit_depth: int | None = Field(
        default=None,
        ge=8,
        le=16,
        description="Significant bits of the pixel values; default: from the files' metadata, "
        "else the smallest depth that holds the plate's brightest pixel.",
    )
    objective: Literal["40x", "100x"] = Field(
        default="40x", description="Recorded with the scan and its images."
    )
    pixel_size_um: float = Field(
        default=1.0,
        gt=0,
        le=1000,
        description="Pixel size in the sample plane, um (the OME-Zarr coordinates); default 1.",
    )

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return pattern

    @field_validator("channels")
    @classmethod
    def _distinct(cls, channels: list[int] | None) -> list[int] | None:
        if channels is not None and len(set(channels)) != len(channels):
            raise ValueError("channels listed twice")
        return channels

    @model_validator(mode="after")
    def _pattern_with_regex(self) -> ImportOptions:
        if self.layout == "regex" and self.pattern is None:
            raise ValueError("layout 'regex' needs a pattern with named groups (well, field, ...)")
        if self.layout != "regex" and self.pattern is not None:
            raise ValueError(f"pattern applies to layout 'regex' only, not {self.layout!r}")
        return self


class ImportCreate(ImportOptions):
    """``POST /imports``: import the folder ``path`` under the service's import root."""

    path: str = Field(
        min_length=1,
        max_length=1024,
        pattern=TEXT_PATTERN,
        description="The folder, relative to MSCREEN_IMPORT_ROOT (no absolute paths, no '..').",
        examples=["lab/plate-0001"],
    )
    dry_run: bool = Field(
        default=False, description="Only say what would be imported; nothing is written."
    )


class UnmatchedFile(BaseModel):
    path: str = Field(description="Relative to the imported folder")
    reason: str


class ImportWell(BaseModel):
    well: str
    fields: int
    problem: str | None = Field(
        description="Why this well cannot be classified (it is recorded as failed), else null"
    )


class ImportSummary(BaseModel):
    """What a folder holds, as the import reads it (the dry run's whole answer)."""

    folder: str
    layout: Layout
    barcode: str
    wells: list[ImportWell]
    fields: int = Field(description="Fields in all wells together")
    files: int = Field(description="Image files (or OME-Zarr fields) matched")
    channels: list[str] = Field(description="The channels kept, in frame order")
    planes: list[str] = Field(description="The z planes found in file names (each a channel)")
    shape: list[int] | None = Field(description="Frame shape of the first field, (H, W[, C])")
    dtype: str | None
    bit_depth: int | None = Field(description="Significant bits used to scale the pixels")
    bit_depth_source: str = Field(
        description="explicit, metadata (which tag), data (the brightest pixel) or dtype"
    )
    unmatched: list[UnmatchedFile] = Field(
        description="Image files whose names fit no well of the layout (not imported)"
    )
    other_files: list[str] = Field(description="Files that are not images (not imported)")


class ImportPublic(BaseModel):
    """An import's answer: what was read and, unless it was a dry run, the scan it made."""

    dry_run: bool
    summary: ImportSummary
    scan: ScanPublic | None = Field(description="The scan the import made (null: dry run)")
    calls: dict[str, int] = Field(
        default_factory=dict,
        description="Wells per outcome: high, low, uncertain (confirm by FCT), no call (out of "
        "distribution), excluded (no field passed QC), failed",
    )
