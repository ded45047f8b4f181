"""`mscreen train`: train a network and publish it as a new model version.

The options build a :class:`models.training_spec.TrainingSpec`, the same spec the API stores
with a retraining run; ``--run-id`` (set by the API) reads that stored spec instead and reports
the run's start, outcome and published version on its row.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Annotated

import typer

from app.settings import get_settings
from cli.common import UserError, database, parse_channel_list
from models.training_spec import TrainingSpec

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from models.repository import ModelArtifact

DEFAULT = TrainingSpec()


def train(
    repository: Annotated[
        Path | None, typer.Option(help="Model repository to publish into (default: settings).")
    ] = None,
    name: Annotated[str, typer.Option(help="Model name in the repository.")] = DEFAULT.name,
    source: Annotated[
        str,
        typer.Option(
            help="simulated: fresh simulated plates; database: this service's plates with FCT "
            "labels (split by plate); folder: an ImageFolder tree given by --data (split by "
            "--group-by)."
        ),
    ] = DEFAULT.source,
    plates: Annotated[
        list[str] | None,
        typer.Option("--plate", help="--source database: only these barcodes (repeat)."),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(file_okay=False, help="--source folder: root of <class>/<image> folders."),
    ] = None,
    group_by: Annotated[
        str | None,
        typer.Option(
            help="--source folder: regex on file stems naming the group that must not straddle "
            "splits ('celltype' = <line>-<field>); default: each image its own group."
        ),
    ] = None,
    size: Annotated[
        int | None,
        typer.Option(help="--source folder: network input height = width (pixels, >= 16)."),
    ] = None,
    bit_depth: Annotated[
        int | None,
        typer.Option(
            "--bit-depth",
            min=8,
            max=16,
            help="--source folder: significant bits of 16-bit files that do not state them "
            "(e.g. 12 for a 12-bit camera); default: the files' metadata, else inferred from "
            "the folder's maximum.",
        ),
    ] = None,
    channels: Annotated[
        str | None,
        typer.Option(
            "--channels",
            help="--source folder: channels to use, 0-based, comma-separated (e.g. 0,2); "
            "default: all. Two or more train one band per channel.",
        ),
    ] = None,
    ws: Annotated[
        int,
        typer.Option(
            help="SSCD window: 1 = no spatial-spectral neighbours (the default, see "
            "docs/experiments.md, HSM ablation); 9 with --k 12 = the paper's HSM.",
        ),
    ] = DEFAULT.ws,
    k: Annotated[int, typer.Option(help="SSN count K (with --ws > 1).")] = DEFAULT.k,
    architecture: Annotated[
        str, typer.Option(help="Registered network (scnn, resnet18, vgg11).")
    ] = DEFAULT.architecture,
    train_plates: Annotated[
        int, typer.Option(help="Simulated training plates.")
    ] = DEFAULT.train_plates,
    val_plates: Annotated[
        int, typer.Option(help="Simulated validation plates.")
    ] = DEFAULT.val_plates,
    test_plates: Annotated[
        int, typer.Option(help="Simulated held-out test plates.")
    ] = DEFAULT.test_plates,
    calibration_plates: Annotated[
        int,
        typer.Option(
            help="Simulated plates held out for the decision set (thresholds, selective "
            "calls); 0: the validation plates stand in (approximate guarantee)."
        ),
    ] = DEFAULT.calibration_plates,
    epochs: Annotated[int, typer.Option()] = DEFAULT.epochs,
    seed: Annotated[int, typer.Option(help="Seeds the plates or split, and training.")] = 0,
    difficulty: Annotated[
        float, typer.Option(help="Simulator class overlap (0..1).")
    ] = DEFAULT.difficulty,
    device: Annotated[
        str, typer.Option(help="cpu (deterministic), cuda, or auto (CUDA when available).")
    ] = DEFAULT.device,
    run_id: Annotated[
        int | None, typer.Option(help="Train the stored spec of this run (set by the API).")
    ] = None,
) -> None:
    """Train a network on simulated plates, labelled plates or an image folder; publish it."""
    if run_id is not None:
        _train_for_run(run_id, repository)
        return
    spec = TrainingSpec.model_validate(
        {
            "name": name,
            "source": source,
            "plates": plates or None,
            "data": data,
            "group_by": group_by,
            "size": size,
            "bit_depth": bit_depth,
            "channels": parse_channel_list(channels),
            "ws": ws,
            "k": k,
            "architecture": architecture,
            "train_plates": train_plates,
            "val_plates": val_plates,
            "test_plates": test_plates,
            "calibration_plates": calibration_plates,
            "epochs": epochs,
            "seed": seed,
            "difficulty": difficulty,
            "device": device,
        }
    )  # a ValidationError is one `error:` line (cli.main)
    _run(spec, repository)


def _run(
    spec: TrainingSpec,
    repository: Path | None,
    session_factory: sessionmaker[Session] | None = None,
) -> ModelArtifact:
    """Train ``spec``, publish it, print its held-out figures; returns what was published.

    ``session_factory``: the database to read labelled plates from (source "database");
    default: the configured one.
    """
    from app.runtime import serving_bit_depth

    jobs = _training_jobs()
    settings = get_settings()
    try:
        jobs.check_spec(spec)
        with ExitStack() as stack:
            if spec.source == "database" and session_factory is None:
                session_factory = stack.enter_context(database())
            artifact, card = jobs.run_training(
                spec,
                repository=repository or settings.model_repository,
                session_factory=session_factory,
                bit_depth=serving_bit_depth(settings),
            )
    except ValueError as exc:  # data the user can fix: too few plates, bad folder, no labels
        raise UserError(str(exc)) from exc
    test = card["metrics"]["test"]
    metrics, ci = test["metrics"], test["ci95"]

    def figure(value: float | None) -> str:  # None: undefined (e.g. AUC on one class)
        return "n/a" if value is None else f"{value:.3f}"

    low, high = ci.get("accuracy") or (None, None)
    typer.echo(
        f"published {artifact.name} v{artifact.version} at {artifact.directory}\n"
        f"held-out {spec.source} data: accuracy {figure(metrics['accuracy'])} "
        f"(95% CI {figure(low)}-{figure(high)}), AUC {figure(metrics.get('auc'))}, "
        f"n={metrics['n']}"
    )
    return artifact


def _training_jobs() -> ModuleType:
    """training.jobs, imported on use: it needs PyTorch, which the service install lacks."""
    try:
        from training import jobs
    except ImportError as exc:
        raise UserError(
            "training needs the 'train' extra (PyTorch, onnx): "
            f"pip install 'mscreen[train]' ({exc})"
        ) from exc
    return jobs


def _train_for_run(run_id: int, repository: Path | None) -> None:
    """Train the run's stored spec; record its start, outcome and published version.

    Every update is conditional on the run's status: a run cancelled before this process got
    to it is not trained, and one cancelled meanwhile stays ``cancelled`` (its process group
    is being killed then anyway). It never publishes into the bundled, read-only repository.
    """
    import logging

    from app.training_runs import mark_finished, mark_running, repository_problem, spec_of
    from store.db import session_scope

    logger = logging.getLogger(__name__)
    target = repository or get_settings().model_repository
    with database() as factory:
        with session_scope(factory) as session:
            if not mark_running(session, run_id):
                logger.info("training run %d is no longer to run (cancelled?); exiting", run_id)
                return
        try:
            problem = repository_problem(target)
            if problem is not None:
                raise UserError(problem)
            with session_scope(factory) as session:
                spec = spec_of(session, run_id)
            artifact = _run(spec, target, factory)
        except BaseException as exc:
            with session_scope(factory) as session:
                mark_finished(session, run_id, error=f"{type(exc).__name__}: {exc}")
            raise
        with session_scope(factory) as session:
            if not mark_finished(session, run_id, version=artifact.version):
                logger.warning(
                    "training run %d published v%d but was cancelled meanwhile; it stays cancelled",
                    run_id,
                    artifact.version,
                )


def experiment(ctx: typer.Context) -> None:
    """The paper's experiments (ws-k-grid, learning-curve, plate-eval, cv); `mscreen experiment
    --help` lists them. Needs the 'train' extra."""
    # Imported on use: the experiments need PyTorch, which the service install does not have.
    try:
        from cli.experiment import experiment_cli
    except ImportError as exc:
        raise UserError(
            f"experiments need the 'train' extra: pip install 'mscreen[train]' ({exc})"
        ) from exc
    experiment_cli(ctx.args, prog_name="mscreen experiment")
