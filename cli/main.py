"""`mscreen`: serve the API, run scans, read results, train models, run the paper's experiments.

The one package that sees both the service (``app``) and training: each command group is a
module of its own (cli/scan.py; cli/train.py with cli/experiment.py, which need PyTorch and are
imported on use; cli/admin.py; cli/sim.py, the simulator's FCT export). User mistakes
end in one line on stderr (``error: ...``) and exit code 2, not a traceback.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

import httpx
import typer
from pydantic import ValidationError

from app.errors import ServiceError
from cli import admin, importing, models, reanalyse, scan, sila, sim, train
from cli.common import UserError
from hardware.plate import WellNameError
from migrations import DatabaseNotReadyError
from models.inference import RuntimeUnavailableError
from models.repository import ModelNotFoundError

cli = typer.Typer(
    name="mscreen",
    help="Screen 96-well plates of mesenchymal stem cells: high/low functionality per well "
    "from label-free phase-contrast images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
cli.command()(scan.serve)
cli.command()(scan.scan)
cli.command()(scan.results)
cli.command()(reanalyse.reanalyse)
cli.command(name="sila")(sila.sila_serve)
cli.command(name="import")(importing.import_plate)
cli.command()(train.train)
cli.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)(train.experiment)
cli.add_typer(admin.keys_cli, name="keys")
cli.add_typer(admin.db_cli, name="db")
cli.add_typer(admin.admin_cli, name="admin")
cli.add_typer(sim.sim_cli, name="sim")
cli.add_typer(models.models_cli, name="models")


@cli.callback()
def _configure(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _problem(error: Any) -> str:
    """One validation problem: where, what, and the value at fault when it is a short one."""
    text = f"{'.'.join(map(str, error['loc']))}: {error['msg']}"
    value = error.get("input")
    if isinstance(value, str | int | float) and len(repr(value)) <= 40:
        text += f" (got {value!r})"
    return text


def main() -> None:
    """Entry point: run the CLI and turn user errors into one line."""
    try:
        cli()
    except (
        UserError,
        ServiceError,
        WellNameError,
        ModelNotFoundError,
        RuntimeUnavailableError,
        DatabaseNotReadyError,
    ) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
    except ValidationError as exc:
        problems = "; ".join(_problem(e) for e in exc.errors())
        typer.echo(f"error: {problems}", err=True)
        raise SystemExit(2) from None
    except httpx.HTTPError as exc:
        typer.echo(f"error: cannot reach the service: {exc}", err=True)
        raise SystemExit(2) from None
