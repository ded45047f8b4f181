"""File-name layouts: how a folder's file names say well, field (site), channel and z plane.

The presets (MetaXpress / ImageXpress, Operetta / Opera / Harmony, Incucyte), how each layout
spells a channel, MetaXpress's z-step folders and :class:`NameParser` (a preset, or a user's
regular expression). The errors of an import's folder and path live here too, at the bottom of
the package, so that planning and running both raise them without importing each other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from app.errors import InvalidRequestError, ServiceError
from app.schemas.imports import Layout
from hardware.plate import PlateGeometry, WellNameError
from models.readers import READABLE_SUFFIXES

# Presets, matched against the file name without its suffix (case-insensitive, ASCII digits).
_PRESETS: dict[str, re.Pattern[str]] = {
    # MetaXpress / ImageXpress: <plate>_B07_s2_w1<GUID>; site and wavelength absent when single.
    # Wavelengths are one digit (w1..w9): the GUID MetaXpress may append starts with any hex
    # digit, so "w16A3F..." is wavelength 1. Thumbnails (_thumb) are not images of record.
    "metaxpress": re.compile(
        r"(?:.*?_)?(?P<well>[A-Z]\d{2})(?:_s(?P<field>\d+))?(?:_w(?P<channel>[1-9])(?!_thumb).*)?",
        re.IGNORECASE | re.ASCII,
    ),
    # Operetta / Opera Phenix / Harmony: r02c07f01p01-ch1sk1fk1fl1 (row and column numbers,
    # field, plane, channel; sk/fk/fl are the time point and flim indices).
    "operetta": re.compile(
        r"r(?P<row>\d{1,2})c(?P<column>\d{1,2})f(?P<field>\d{1,3})p(?P<plane>\d{1,3})"
        r"-ch(?P<channel>\d{1,2})(?:sk\d+fk\d+fl\d+)?",
        re.IGNORECASE | re.ASCII,
    ),
    # Incucyte: <vessel>_B7_2_2024y05m01d_10h00m (well, image number, time stamp).
    "incucyte": re.compile(
        r"(?:.*?_)?(?P<well>[A-Z]\d{1,2})_(?P<field>\d+)(?:_(?P<time>\d.*))?",
        re.IGNORECASE | re.ASCII,
    ),
}
# How each layout spells a channel in its names (for the channel list a user chooses from).
CHANNEL_PREFIX = {"metaxpress": "w", "operetta": "ch", "incucyte": "ch", "regex": "channel "}
# MetaXpress keeps z steps in ZStep_<n> folders.
_ZSTEP_FOLDER = re.compile(r"ZStep_(\d+)", re.IGNORECASE | re.ASCII)


class ImportLayoutError(InvalidRequestError):
    """The folder cannot be imported as asked (no images, duplicates, a bad pattern)."""


class ImportPathError(InvalidRequestError):
    """The API's folder path is malformed (absolute, with '..')."""


class OutsideImportRootError(ServiceError):
    """The folder exists only through a link that leaves the import root."""

    status_code = 403


class ImportDisabledError(ServiceError):
    """The service has no import root: imports over the API are off. A 403 (this service does
    not allow it), not a 503: nothing is broken or missing, and the answer will not change
    until an administrator configures a root."""

    status_code = 403


@dataclass(frozen=True)
class _Name:
    """What a file name says: its well (normalised) and its field, channel, plane tokens."""

    well: str
    field: str | None
    channel: str | None
    plane: str | None


class NoMatchError(Exception):
    """A file name that fits no well of the layout; the message says why."""


def _token(value: str | None) -> str | None:
    """A field / channel / plane token: numbers without leading zeros ("01" -> "1")."""
    if value is None or value == "":
        return None
    return str(int(value)) if value.isdigit() else value


def token_order(token: str | None) -> tuple[int, int, str]:
    """Natural order of tokens: absent first, then numbers by value, then words."""
    if token is None:
        return (0, 0, "")
    return (1, int(token), "") if token.isdigit() else (2, 0, token)


class NameParser:
    """Turns a file's path (relative to the folder) into its well, field, channel, plane."""

    def __init__(self, layout: Layout, geometry: PlateGeometry, pattern: str | None = None) -> None:
        self.layout = layout
        self.geometry = geometry
        if layout == "regex":
            if pattern is None:
                raise ImportLayoutError("layout 'regex' needs a pattern")
            try:
                self.regex = re.compile(pattern)
            except re.error as exc:
                raise ImportLayoutError(
                    f"pattern is not a valid regular expression: {exc}"
                ) from exc
            groups = set(self.regex.groupindex)
            if "well" not in groups and not {"row", "column"} <= groups:
                raise ImportLayoutError(
                    "pattern needs a named group 'well' (e.g. (?P<well>[A-H]\\d{1,2})), or "
                    "'row' and 'column'; optional: 'field', 'channel', 'plane'"
                )
        elif layout in _PRESETS:
            self.regex = _PRESETS[layout]
        else:
            raise ImportLayoutError(f"layout {layout!r} names no file pattern")

    def parse(self, relative: PurePosixPath) -> _Name:
        if self.layout == "regex":
            match = self.regex.search(relative.as_posix())
        else:
            match = self.regex.fullmatch(_stem(relative.name))
        if match is None:
            raise NoMatchError(f"name does not fit the {self.layout} layout")
        groups = {k: v for k, v in match.groupdict().items() if v is not None}
        well = self._well(groups)
        plane = groups.get("plane")
        if plane is None and self.layout == "metaxpress":
            zstep = next(
                (m for p in relative.parts[:-1] if (m := _ZSTEP_FOLDER.fullmatch(p))), None
            )
            plane = zstep.group(1) if zstep else None
        return _Name(
            well, _token(groups.get("field")), _token(groups.get("channel")), _token(plane)
        )

    def _well(self, groups: dict[str, str]) -> str:
        if "well" in groups:
            name = groups["well"]
        elif "row" in groups and "column" in groups:
            row = groups["row"]
            if row.isdigit():  # Operetta numbers rows from 1 (r02 = B)
                if not 1 <= int(row) <= 26:
                    raise NoMatchError(f"row {row} is outside this plate")
                row = chr(ord("A") + int(row) - 1)
            name = f"{row}{groups['column']}"
        else:
            raise NoMatchError("the pattern matched without a well (or row and column)")
        try:
            return self.geometry.normalise(name)
        except WellNameError as exc:
            raise NoMatchError(str(exc)) from None


def _stem(name: str) -> str:
    """A file name without its image suffix (".ome.tif" whole)."""
    lower = name.lower()
    for suffix in sorted(READABLE_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name
