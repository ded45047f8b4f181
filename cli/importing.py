"""`mscreen import DIR`: register and classify a lab's existing plate from a folder of
microscope files (or an OME-Zarr HCS plate), in this process through the service's own worker
and database, as `mscreen scan` does for the microscope."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from tqdm import tqdm

from app.settings import get_settings
from cli.common import UserError, parse_channel_list

if TYPE_CHECKING:
    from app.imports import ImportPlan
    from app.schemas.imports import ImportPublic

_SHOWN = 10  # unmatched files named in the summary (all are counted)


def import_plate(
    folder: Annotated[
        Path,
        typer.Argument(metavar="DIR", help="The plate's folder (or an OME-Zarr HCS plate)."),
    ],
    layout: Annotated[
        str,
        typer.Option(
            "--layout",
            "-l",
            help="metaxpress (..._A01_s1_w1.tif), operetta (r01c01f01p01-ch1sk1fk1fl1.tiff), "
            "incucyte (..._A1_1_<time>.tif), regex (--pattern) or ome-zarr.",
        ),
    ],
    pattern: Annotated[
        str | None,
        typer.Option(
            help="--layout regex: a regular expression searched in each file's path relative "
            "to DIR, with named groups well (or row and column), field, channel, plane."
        ),
    ] = None,
    barcode: Annotated[
        str | None, typer.Option(help="Plate barcode (default: the folder's name).")
    ] = None,
    channels: Annotated[
        str | None,
        typer.Option(help="Channels to keep, 0-based, comma-separated, e.g. 0,1 (default: all)."),
    ] = None,
    bit_depth: Annotated[
        int | None,
        typer.Option(help="Significant bits of the pixels (default: metadata, else the data)."),
    ] = None,
    objective: Annotated[str, typer.Option(help="40x or 100x, for the record.")] = "40x",
    pixel_size: Annotated[
        float, typer.Option(help="Pixel size in the sample plane, um (for the record).")
    ] = 1.0,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what would be imported; write nothing.")
    ] = False,
) -> None:
    """Import a plate from a folder: register it, store every field with its SHA-256 and
    classify each well with the active model; prints a summary and the plate map."""
    from app.imports import plan_import
    from app.schemas.imports import ImportOptions
    from hardware.plate import SBS_96

    options = ImportOptions.model_validate(
        {
            "layout": layout,
            "pattern": pattern,
            "barcode": barcode,
            "channels": parse_channel_list(channels),
            "bit_depth": bit_depth,
            "objective": objective,
            "pixel_size_um": pixel_size,
        }
    )
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder")
    plan = plan_import(folder, options, geometry=SBS_96)
    _echo_plan(plan)
    if dry_run:
        typer.echo("dry run: nothing was written")
        return
    _run(plan)


def _echo_plan(plan: ImportPlan) -> None:
    summary = plan.summary()
    shape = "x".join(str(n) for n in summary.shape or ())
    typer.echo(
        f"{summary.folder} ({summary.layout}): plate {summary.barcode}, {len(summary.wells)} "
        f"wells, {summary.fields} fields, {summary.files} files"
    )
    typer.echo(
        f"  channels: {', '.join(summary.channels)}; {summary.dtype} {shape}; "
        f"bit depth {summary.bit_depth} ({summary.bit_depth_source})"
    )
    wells = ", ".join(f"{w.well}:{w.fields}" for w in summary.wells)
    typer.echo(f"  wells (fields): {wells}")
    for well in summary.wells:
        if well.problem:
            typer.echo(f"  {well.well} cannot be classified: {well.problem}")
    if summary.unmatched:
        typer.echo(f"  unmatched: {len(summary.unmatched)} image files fit no well (not imported)")
        for entry in summary.unmatched[:_SHOWN]:
            typer.echo(f"    {entry.path}: {entry.reason}")
        if len(summary.unmatched) > _SHOWN:
            typer.echo(f"    ... and {len(summary.unmatched) - _SHOWN} more")
    if summary.other_files:
        typer.echo(f"  other files (not images, not imported): {len(summary.other_files)}")


def _run(plan: ImportPlan) -> None:
    from app.imports import ImportContext, outcome, run_import
    from app.runtime import build_runtime
    from app.schemas.plates import WellResultPublic
    from cli.platemap import render_plate_map
    from store.db import session_scope
    from store.orm import Scan
    from store.queries import scan_results

    # An import needs no microscope: the runtime is built on the simulator backend, so a
    # configured Micro-Manager is never started (or connected to) just to read files.
    settings = get_settings().model_copy(update={"microscope": "simulated"})
    runtime = build_runtime(settings)
    try:
        context = ImportContext.of(runtime)  # degraded (no model can serve): say why first
        started = time.perf_counter()
        with tqdm(total=len(plan.wells), desc="wells", unit="well", file=sys.stderr) as bar:
            scan_id = run_import(
                context,
                plan,
                requested_by="cli",
                on_progress=lambda _id, done, _total: bar.update(done - bar.n),
            )
        result = outcome(runtime.session_factory, plan, scan_id)
        with session_scope(runtime.session_factory) as session:
            scan_row = session.get_one(Scan, scan_id)
            wells = [WellResultPublic.of(r) for r in scan_results(session, scan_row)]
    finally:
        runtime.close()
    _echo_outcome(result, time.perf_counter() - started)
    typer.echo(render_plate_map(wells, color=sys.stdout.isatty()))
    if result.scan is not None and result.scan.status.value != "completed":
        raise SystemExit(1)


def _echo_outcome(result: ImportPublic, seconds: float) -> None:
    scan = result.scan
    if scan is None:
        return
    calls = ", ".join(f"{k} {v}" for k, v in result.calls.items())
    model = f"model {scan.model.name} v{scan.model.version}" if scan.model else "no model"
    typer.echo(
        f"scan {scan.id} ({scan.microscope}) {scan.status.value} in {seconds:.1f} s with "
        f"{model}: {calls}" + (f"; error: {scan.error}" if scan.error else "")
    )
