"""`mscreen models ...`: the published models of a repository, re-calibrating one on a
lab's own labelled plates (a new version, same network: :mod:`training.recalibrate`), and
exporting one for other tools (a bioimage.io package: :mod:`training.bioimageio`).

``calibrate`` needs the 'train' extra (onnx, to rewrite the model's metadata); ``export`` the
'train' and 'bioimageio' extras; ``list`` only onnxruntime. All import their heavy modules on
use, as the other command groups do.
"""

from __future__ import annotations

import logging
import re
from contextlib import ExitStack
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Annotated

import typer

from cli.common import UserError, database

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from models.pipeline import PipelineConfig
    from models.repository import ModelRepository
    from training.imagesets import ImageSet

logger = logging.getLogger(__name__)

models_cli = typer.Typer(
    help="Published models: list them; re-calibrate one on your own labelled plates; export one.",
    no_args_is_help=True,
)

_MODEL = re.compile(r"^(?P<name>[^:]+)(?::(?P<version>[0-9]+))?$")


def parse_model(text: str) -> tuple[str, int | None]:
    """``"hscnn-sim:2"`` -> ``("hscnn-sim", 2)``; ``"hscnn-sim"`` -> ``("hscnn-sim", None)``
    (the newest version)."""
    match = _MODEL.match(text.strip())
    if match is None:
        raise UserError(f"expected NAME or NAME:VERSION (e.g. hscnn-sim:2), got {text!r}")
    version = match.group("version")
    return match.group("name"), int(version) if version is not None else None


def _repository(path: Path | None) -> ModelRepository:
    from app.settings import get_settings
    from models.repository import ModelRepository

    return ModelRepository(path or get_settings().model_repository)


def _recalibration() -> ModuleType:
    """training.recalibrate, imported on use: it needs onnx and PyTorch (the 'train' extra)."""
    try:
        from training import recalibrate
    except ImportError as exc:
        raise UserError(
            "re-calibrating needs the 'train' extra (onnx, PyTorch): "
            f"pip install 'mscreen[train]' ({exc})"
        ) from exc
    return recalibrate


@models_cli.command("calibrate")
def calibrate(
    model: Annotated[
        str,
        typer.Argument(metavar="NAME[:VERSION]", help="Model to re-calibrate (default: newest)."),
    ],
    source: Annotated[
        str,
        typer.Option(
            help="simulated: fresh simulated plates (--seed, --plates); database: this "
            "service's plates with FCT labels (--plate to pick)."
        ),
    ] = "simulated",
    seed: Annotated[
        int, typer.Option(min=0, help="--source simulated: the simulator seed of the plates.")
    ] = 1,
    plates: Annotated[int, typer.Option(min=2, help="--source simulated: how many plates.")] = 4,
    objective: Annotated[
        str, typer.Option(help="--source simulated: objective the plates are imaged with.")
    ] = "40x",
    wells_per_plate: Annotated[
        int | None,
        typer.Option(
            min=1, max=96, help="--source simulated: the first K wells of each plate (default 96)."
        ),
    ] = None,
    barcodes: Annotated[
        list[str] | None,
        typer.Option("--plate", help="--source database: only these barcodes (repeat)."),
    ] = None,
    repository: Annotated[
        Path | None,
        typer.Option(help="Model repository to read and publish into (default: settings)."),
    ] = None,
    calibration_share: Annotated[
        float,
        typer.Option(
            help="Share (0..1, exclusive) of the plates the calibration map is fitted on; "
            "the rest is the held-out decision set (thresholds, selective calls).",
        ),
    ] = 0.5,
    method: Annotated[
        str,
        typer.Option(
            help="auto (lowest cross-validated NLL, none included), temperature, isotonic or "
            "identity. With contradicting labels NLL may keep none where isotonic lowers ECE."
        ),
    ] = "auto",
    split_seed: Annotated[
        int, typer.Option(min=0, help="Decides which plates fit the map and which are held out.")
    ] = 0,
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="Processes preparing images (default: all cores; database: 1)."),
    ] = None,
) -> None:
    """Re-calibrate a model on labelled plates: a new version, the same network.

    Fits the calibration on part of the plates and the decision set on the others (by plate),
    and publishes both as the model's next version; the version re-calibrated stays as it is.
    """
    from app.training_runs import repository_problem
    from models.inference import OnnxClassifier

    name, version = parse_model(model)
    repo = _repository(repository)
    problem = repository_problem(repo.root)
    if problem is not None:
        raise UserError(f"{problem} (or pass --repository DIR)")
    if method not in ("auto", "identity", "temperature", "isotonic"):
        raise UserError(f"--method must be auto, temperature, isotonic or identity, got {method!r}")
    if source not in ("simulated", "database"):
        raise UserError(f"--source must be simulated or database, got {source!r}")
    if source == "simulated" and barcodes:
        raise UserError("--plate picks database plates; with --source simulated use --plates N")
    recalibration = _recalibration()
    parent = repo.get(name, version)  # ModelNotFoundError: one `error:` line (cli.main)
    pipeline = OnnxClassifier(parent.model_path, providers="cpu").pipeline_config
    try:
        with ExitStack() as stack:
            if source == "simulated":
                data, described = _simulated(
                    pipeline, seed, plates, objective, wells_per_plate, workers
                )
            else:
                factory = stack.enter_context(database())
                data, described = _database(factory, pipeline, barcodes, workers)
            artifact, card = recalibration.recalibrate(
                repo,
                name,
                parent.version,
                data,
                calibration_share=calibration_share,
                seed=split_seed,
                source=described,
                method=method,  # checked above
            )
    except ValueError as exc:  # too few plates, one class, no labels, bad objective
        raise UserError(str(exc)) from exc
    section = card["calibration"]
    summary = card["decision_set"]
    typer.echo(
        f"published {artifact.name} v{artifact.version} (re-calibrated from v{parent.version}) "
        f"at {artifact.directory}\n"
        f"calibration {section['method']} fitted on {len(section['fitted_on'])} plates "
        f"({section['fields_fitted']} fields); decision set {summary['fields']} held-out fields "
        f"of {len(section['evaluated_on'])} plates\n"
        f"ECE on the held-out plates: before {section['ece_before']:.4f} "
        f"(v{parent.version}'s calibration), after {section['ece_after']:.4f} "
        f"(network alone {section['ece_raw']:.4f})"
    )


def _simulated(
    pipeline: PipelineConfig,
    seed: int,
    plates: int,
    objective: str,
    wells_per_plate: int | None,
    workers: int | None,
) -> tuple[ImageSet, str]:
    from hardware.plate import SBS_96
    from hardware.sim import SimulationConfig
    from training.imagesets import simulated_barcodes, simulated_image_set

    barcodes = simulated_barcodes("recal", seed, plates)
    wells = SBS_96.well_names[:wells_per_plate] if wells_per_plate else None
    data = simulated_image_set(
        barcodes,
        sim=SimulationConfig(seed=seed),
        pipeline=pipeline,
        objective=objective,
        wells=wells,
        workers=workers,
        progress=False,
    )
    per_plate = wells_per_plate or len(SBS_96.well_names)
    return data, f"simulated plates (seed {seed}, {objective}, {per_plate} wells each)"


def _database(
    factory: sessionmaker[Session],
    pipeline: PipelineConfig,
    barcodes: list[str] | None,
    workers: int | None,
) -> tuple[ImageSet, str]:
    from app.runtime import serving_bit_depth
    from app.settings import get_settings
    from training.imagesets import database_image_set

    data = database_image_set(
        factory,
        pipeline,
        barcodes=barcodes or None,
        bit_depth=serving_bit_depth(get_settings()),
        workers=workers or 1,
        progress=False,
    )
    return data, "labelled plates of this service's database (FCT labels)"


@models_cli.command("list")
def list_models(
    repository: Annotated[
        Path | None, typer.Option(help="Model repository (default: settings).")
    ] = None,
) -> None:
    """Published versions with their calibration, decision set and guard.

    One line per version: the calibration method, the decision set's size (or none), whether
    it carries an out-of-distribution guard, and what it was re-calibrated from.
    """
    from models.inference import OnnxClassifier

    repo = _repository(repository)
    names = repo.names()
    if not names:
        raise UserError(f"no published models in {repo.root}")
    for name in names:
        for version in repo.versions(name):
            artifact = repo.get(name, version)
            try:
                classifier = OnnxClassifier(artifact.model_path, providers="cpu")
                card = artifact.card()
            except Exception as exc:  # onnxruntime raises its own exception classes
                typer.echo(f"{name}:{version}  cannot be loaded ({type(exc).__name__})")
                continue
            decision_set = classifier.decision_set
            parent = card.get("recalibrated_from")
            typer.echo(
                f"{name}:{version}  calibration {classifier.calibration.method}  "
                f"decision set {decision_set.size if decision_set is not None else 'none'}  "
                f"guard {'yes' if classifier.ood_guard is not None else 'no'}"
                + (
                    f"  re-calibrated from v{parent.get('version')}"
                    if isinstance(parent, dict)
                    else ""
                )
            )


EXPORT_FORMATS = ("bioimageio",)


def _bioimageio() -> ModuleType:
    """training.bioimageio, imported on use: it needs onnx and PyTorch (the 'train' extra)."""
    try:
        from training import bioimageio
    except ImportError as exc:
        raise UserError(
            "exporting needs the 'train' extra (onnx, PyTorch) and the 'bioimageio' extra: "
            f"pip install 'mscreen[train,bioimageio]' ({exc})"
        ) from exc
    return bioimageio


@models_cli.command("export")
def export(
    model: Annotated[
        str,
        typer.Argument(metavar="NAME[:VERSION]", help="Model to export (default: newest)."),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="Package folder to write (must not exist, or be empty)."
        ),
    ],
    export_format: Annotated[
        str, typer.Option("--format", help="Package format; only 'bioimageio' (spec 0.5).")
    ] = "bioimageio",
    repository: Annotated[
        Path | None, typer.Option(help="Model repository to read (default: settings).")
    ] = None,
    zip_package: Annotated[
        bool, typer.Option("--zip/--no-zip", help="Also write the package as OUTPUT.zip.")
    ] = False,
    check: Annotated[
        bool,
        typer.Option(
            "--test/--no-test", help="Run bioimageio.core's own test on the written package."
        ),
    ] = True,
    license_id: Annotated[
        str | None,
        typer.Option("--license", help="SPDX licence id to state (none is recorded, none set)."),
    ] = None,
    authors: Annotated[
        list[str] | None,
        typer.Option("--author", help="An author's name to state (repeat); none by default."),
    ] = None,
) -> None:
    """Write a published model version as a package other tools run without mscreen.

    bioimageio: rdf.yaml (spec 0.5), ONNX weights, a test input and output from simulated
    fields, and a README. A model without the SSN step takes the normalised image (its bands
    are computed inside the graph); one with it takes the band cube. QC, normalisation and the
    cell mask are never in the package (docs/bioimageio.md).
    """
    from models.repository import BrokenModelError, InvalidModelNameError, ModelNotFoundError

    if export_format not in EXPORT_FORMATS:
        raise UserError(
            f"--format must be one of {', '.join(EXPORT_FORMATS)}, got {export_format!r}"
        )
    name, version = parse_model(model)
    repo = _repository(repository)
    try:
        artifact = repo.get(name, version)
    except (ModelNotFoundError, InvalidModelNameError) as exc:
        raise UserError(f"{exc} (repository {repo.root})") from exc
    problem = repo.problem(artifact)
    if problem is not None:
        raise UserError(problem)
    bioimageio = _bioimageio()
    try:
        package = bioimageio.export_bioimageio(
            artifact,
            output,
            zip_package=zip_package,
            license_id=license_id,
            authors=tuple(authors or ()),
        )
    except (bioimageio.BioimageioUnavailableError, FileExistsError, BrokenModelError) as exc:
        raise UserError(str(exc)) from exc
    except ValueError as exc:  # an unsupported model, or bioimageio.spec refused the description
        raise UserError(f"cannot export {artifact.label}: {exc}") from exc
    typer.echo(
        f"wrote {artifact.name}:{artifact.version} as a bioimage.io package at {package.folder}"
        + (f" and {package.zip_path}" if package.zip_path is not None else "")
        + f"\ninput: {package.input_kind} + mask; P(high) vs the service on {package.fields} "
        f"simulated fields: max abs diff {package.parity_max_abs_diff:.3g}"
    )
    if not check:
        return
    try:
        summary = bioimageio.run_bioimageio_test(package.rdf_path)
    except bioimageio.BioimageioUnavailableError as exc:
        raise UserError(str(exc)) from exc
    typer.echo(f"bioimageio.core test: {summary.status}")
    if summary.status != "passed":
        raise UserError(f"bioimageio.core's test failed: {bioimageio.summary_json(summary)}")
