"""Text rendering of a 96-well map of calls (for `mscreen scan`, `mscreen results` and
`make demo`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import typer

from app.schemas.plates import WellResultPublic
from hardware.plate import SBS_96, PlateGeometry

LEGEND = (
    " H = high, L = low (number = P(high functionality)); ?h / ?l = uncertain, confirm by FCT\n"
    " (leaning high / low); X = no call (out of distribution); QC-x = every field excluded by\n"
    " QC; FAIL = acquisition failed; . = not scanned"
)


def _cell(result: WellResultPublic | None, color: bool) -> str:
    if result is None:
        text, fg = "  .   ", None
    elif result.status == "failed":
        text, fg = " FAIL ", typer.colors.MAGENTA
    elif result.label is None:
        text, fg = " QC-x ", typer.colors.YELLOW
    elif result.label == "no call":
        text, fg = "  X   ", typer.colors.MAGENTA
    elif result.label == "uncertain":
        # The leaning in lower case: what it would have been called, not a call.
        lean = {"high": "h", "low": "l"}.get(result.leaning or "", " ")
        p = "    " if result.probability is None else f"{result.probability:.2f}"
        text, fg = f"?{lean}{p}", typer.colors.CYAN
    else:
        letter = "H" if result.label == "high" else "L"
        text = f"{letter} {result.probability:.2f}"
        fg = typer.colors.GREEN if result.label == "high" else typer.colors.RED
    return typer.style(text, fg=fg) if (color and fg) else text


def render_plate_map(
    results: Sequence[WellResultPublic], *, color: bool = False, geometry: PlateGeometry = SBS_96
) -> str:
    """An 8 x 12 grid: ``H 0.93`` = high, ``L 0.12`` = low (P(high) shown), ``?h0.62`` =
    uncertain (confirm by FCT; leaning high), ``X`` = no call (out of distribution), ``QC-x`` =
    every field excluded by QC, ``FAIL`` = acquisition failed, ``.`` = not scanned; then the
    counts and the legend."""
    by_name: Mapping[str, WellResultPublic] = {r.well: r for r in results}
    header = "    " + " ".join(f"{c + 1:^6}" for c in range(geometry.columns))
    lines = [header]
    for r in range(geometry.rows):
        row_letter = chr(ord("A") + r)
        cells = [_cell(by_name.get(f"{row_letter}{c + 1}"), color) for c in range(geometry.columns)]
        lines.append(f" {row_letter}  " + " ".join(cells))
    high = sum(1 for x in results if x.label == "high")
    low = sum(1 for x in results if x.label == "low")
    uncertain = sum(1 for x in results if x.label == "uncertain")
    no_call = sum(1 for x in results if x.label == "no call")
    excluded = sum(1 for x in results if x.status == "excluded")
    failed = sum(1 for x in results if x.status == "failed")
    lines.append(
        f"\n high: {high}   low: {low}   uncertain (confirm by FCT): {uncertain}   "
        f"no call: {no_call}   excluded by QC: {excluded}   failed: {failed}"
    )
    lines.append(LEGEND)
    return "\n".join(lines)
