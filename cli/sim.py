"""`mscreen sim ...`: the simulator's side of a demo, what a lab would otherwise bring.

The simulated microscope renders each well from hidden ground truth; ``fct-export`` writes that
truth the way a flow cytometer exports it, so a simulated plate can get FCT ground truth
(``PUT /api/v1/plates/{barcode}/fct``) and an evaluation without a real cytometer.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Annotated

import typer

from cli.common import UserError

logger = logging.getLogger(__name__)

sim_cli = typer.Typer(
    help="The simulated microscope's plates: their hidden flow-cytometry ground truth.",
    no_args_is_help=True,
)


@sim_cli.command("fct-export")
def fct_export(
    plate: Annotated[str, typer.Option("--plate", "-p", help="Plate barcode.")],
    seed: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Simulation seed; default: MSCREEN_SIMULATION_SEED, the seed the service's "
            "simulated microscope uses (so the export matches the images it shows).",
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the CSV here; default: standard output."),
    ] = None,
) -> None:
    """The cytometer CSV export (CD73/CD90 per well) of a simulated plate, ready to upload as
    its FCT ground truth."""
    from app.schemas.common import BARCODE_PATTERN
    from app.settings import get_settings
    from hardware.sim import SimulationConfig
    from hardware.sim.truth import fct_export_csv

    if re.fullmatch(BARCODE_PATTERN, plate) is None:
        raise UserError(
            f"--plate {plate!r} is not a barcode: 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    settings = get_settings()
    chosen_seed = settings.simulation_seed if seed is None else seed
    config = SimulationConfig(seed=chosen_seed, high_fraction=settings.simulation_high_fraction)
    text = fct_export_csv(config, plate)
    if output is None:
        typer.echo(text, nl=False)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot write --output {output}: {exc.strerror or exc}") from exc
    logger.info("FCT export of %s (seed %d) written to %s", plate, chosen_seed, output)
    typer.echo(f"FCT export of {plate} (seed {chosen_seed}) written to {output}", err=True)
