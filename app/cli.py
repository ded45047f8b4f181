"""`mscreen`: serve the API, run scans, read results, train models.

User mistakes end in one line on stderr (``error: ...``) and exit code 2, not a traceback.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import httpx
import typer
from tqdm import tqdm

from app.settings import Settings, get_settings

logger = logging.getLogger("mscreen")

cli = typer.Typer(
    name="mscreen",
    help="Screen 96-well plates of mesenchymal stem cells: high/low functionality per well "
    "from label-free phase-contrast images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_cli = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)
cli.add_typer(db_cli, name="db")
keys_cli = typer.Typer(help="API keys (viewer, operator, admin).", no_args_is_help=True)
cli.add_typer(keys_cli, name="keys")

ApiKeyOption = Annotated[
    str | None,
    typer.Option("--api-key", envvar="MSCREEN_API_KEY", help="API key for --server calls."),
]


class UserError(Exception):
    """A mistake the user can fix; printed as one line."""


@cli.callback()
def _configure(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


# -- serve -------------------------------------------------------------------------------------
@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    log_level: Annotated[
        str, typer.Option(help="uvicorn log level (info logs every request).")
    ] = "info",
) -> None:
    """Run the REST API and the scan worker (OpenAPI docs at /docs)."""
    import uvicorn

    from app.main import create_app

    uvicorn.run(create_app(get_settings()), host=host, port=port, log_level=log_level)


# -- scan --------------------------------------------------------------------------------------
ObjectiveOption = Annotated[str, typer.Option("--objective", help="40x or 100x.")]


@cli.command()
def scan(
    plate: Annotated[str, typer.Option("--plate", "-p", help="Plate barcode.")],
    objective: ObjectiveOption = "40x",
    fields: Annotated[int, typer.Option("--fields", min=1, max=25, help="Fields per well.")] = 1,
    wells: Annotated[
        str | None, typer.Option(help="Comma-separated wells (default: all 96), e.g. A1,B7.")
    ] = None,
    server: Annotated[
        str | None,
        typer.Option(help="URL of a running service; default: run in this process."),
    ] = None,
    compare_truth: Annotated[
        bool,
        typer.Option(help="Simulated microscope only: compare calls with the hidden FCT truth."),
    ] = False,
    api_key: ApiKeyOption = None,
) -> None:
    """Scan a plate, classify each well as it is imaged, and print the 96-well map."""
    if objective not in ("40x", "100x"):
        raise UserError(f"--objective must be 40x or 100x, not {objective!r}")
    well_list = [w.strip() for w in wells.split(",") if w.strip()] if wells else None
    body = {
        "plate_barcode": plate,
        "objective": objective,
        "fields_per_well": fields,
        "wells": well_list,
    }
    results = _scan_remote(server, body, api_key) if server else _scan_local(get_settings(), body)
    from app.platemap import render_plate_map

    typer.echo(render_plate_map(results, color=sys.stdout.isatty()))
    if compare_truth:
        _print_truth_comparison(plate, results)


def _scan_local(settings: Settings, body: dict[str, object]) -> list:
    from app.api.schemas import ScanCreate, ScanPublic, WellResultPublic
    from app.db import session_scope
    from app.orm import Scan
    from app.plates import scan_results
    from app.runtime import build_runtime
    from app.scans import create_scan

    request = ScanCreate.model_validate(body)
    runtime = build_runtime(settings)
    try:
        with session_scope(runtime.session_factory) as session:
            scan_row = create_scan(session, request, microscope=runtime.microscope_name)
            scan_id, total = scan_row.id, scan_row.wells_total
        typer.echo(
            f"scan {scan_id} of {request.plate_barcode}: {total} wells at {request.objective}, "
            f"model {runtime.model.name} v{runtime.model.version} on {runtime.model.provider}",
            err=True,
        )
        started = time.perf_counter()
        with tqdm(total=total, desc="wells", unit="well", file=sys.stderr) as bar:
            runtime.worker.on_progress = lambda _id, done, _total: bar.update(done - bar.n)
            runtime.worker.run_pending()
        with session_scope(runtime.session_factory) as session:
            scan_row = session.get_one(Scan, scan_id)
            public = ScanPublic.of(scan_row)
            results = [WellResultPublic.of(r) for r in scan_results(session, scan_row)]
        typer.echo(
            f"scan {scan_id} {public.status.value} in {time.perf_counter() - started:.1f} s"
            + (f": {public.error}" if public.error else ""),
            err=True,
        )
        return results
    finally:
        runtime.close()


def _client(server: str, api_key: str | None) -> httpx.Client:
    headers = {"X-API-Key": api_key} if api_key else {}
    return httpx.Client(base_url=server.rstrip("/"), timeout=30, headers=headers)


def _scan_remote(server: str, body: dict[str, object], api_key: str | None) -> list:
    from app.api.schemas import PlateWellsPublic, ScanPublic

    with _client(server, api_key) as client:
        response = client.post("/api/v1/scans", json=body)
        _raise_for_api(response)
        location = response.headers["Location"]
        scan_public = ScanPublic.model_validate(response.json())
        with tqdm(total=scan_public.wells_total, desc="wells", unit="well", file=sys.stderr) as bar:
            while not scan_public.status.finished:
                time.sleep(1.0)
                response = client.get(location)
                _raise_for_api(response)
                scan_public = ScanPublic.model_validate(response.json())
                bar.update(scan_public.wells_done - bar.n)
        if scan_public.error:
            typer.echo(
                f"scan {scan_public.id} {scan_public.status.value}: {scan_public.error}", err=True
            )
        response = client.get(f"/api/v1/plates/{body['plate_barcode']}/wells")
        _raise_for_api(response)
        return PlateWellsPublic.model_validate(response.json()).wells


def _raise_for_api(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    raise UserError(
        f"{response.request.method} {response.request.url.path}: "
        f"HTTP {response.status_code}: {detail}"
    )


def _print_truth_comparison(barcode: str, results: list) -> None:
    from hardware.simulation import SimulationConfig, plate_truth

    truth = plate_truth(SimulationConfig(seed=get_settings().simulation_seed), barcode)
    called = [r for r in results if r.label is not None]
    if not called:
        typer.echo("no well was called; nothing to compare", err=True)
        return
    agree = sum(1 for r in called if truth[r.well].label == r.label)
    typer.echo(
        f" vs simulated FCT ground truth: {agree}/{len(called)} calls agree "
        f"({agree / len(called):.1%}); the simulator's hidden labels, not a real cytometer"
    )


# -- results -----------------------------------------------------------------------------------
@cli.command()
def results(
    plate: Annotated[str, typer.Option("--plate", "-p", help="Plate barcode.")],
    csv_output: Annotated[
        bool, typer.Option("--csv", help="Print CSV instead of the map.")
    ] = False,
    server: Annotated[str | None, typer.Option(help="URL of a running service.")] = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Print the latest per-well calls of a plate."""
    from app.api.schemas import PlateWellsPublic, ScanPublic, WellResultPublic
    from app.platemap import render_plate_map, results_csv

    if server:
        with _client(server, api_key) as client:
            response = client.get(f"/api/v1/plates/{plate}/wells")
            _raise_for_api(response)
            plate_wells = PlateWellsPublic.model_validate(response.json())
    else:
        from app import db
        from app.plates import find_plate, latest_scan, scan_results

        settings = get_settings()
        engine = db.make_engine(settings.resolved_database_url)
        try:
            db.check_schema(engine)
            with db.session_scope(db.make_session_factory(engine)) as session:
                plate_row = find_plate(session, plate)
                scan_row = latest_scan(session, plate_row) if plate_row else None
                if plate_row is None or scan_row is None:
                    raise UserError(
                        f"no results for plate {plate!r} in {settings.resolved_database_url}"
                    )
                plate_wells = PlateWellsPublic(
                    plate_barcode=plate_row.barcode,
                    scan=ScanPublic.of(scan_row),
                    wells=[WellResultPublic.of(r) for r in scan_results(session, scan_row)],
                )
        finally:
            engine.dispose()
    if csv_output:
        typer.echo(results_csv(plate_wells.wells), nl=False)
    else:
        typer.echo(
            f"plate {plate_wells.plate_barcode}, scan {plate_wells.scan.id} "
            f"({plate_wells.scan.status.value})"
        )
        typer.echo(render_plate_map(plate_wells.wells, color=sys.stdout.isatty()))


# -- train -------------------------------------------------------------------------------------
@cli.command()
def train(
    repository: Annotated[
        Path | None, typer.Option(help="Model repository to publish into (default: settings).")
    ] = None,
    name: Annotated[str, typer.Option(help="Model name in the repository.")] = "hscnn-sim",
    source: Annotated[
        str,
        typer.Option(
            help="simulated: fresh simulated plates; database: this service's plates with FCT "
            "labels (split by plate); folder: an ImageFolder tree given by --data (split by "
            "--group-by)."
        ),
    ] = "simulated",
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
        typer.Option(min=16, help="--source folder: network input height = width (pixels)."),
    ] = None,
    ws: Annotated[
        int,
        typer.Option(
            min=1,
            help="SSCD window: 1 = no spatial-spectral neighbours (the default, see "
            "docs/experiments.md, HSM ablation); 9 with --k 12 = the paper's HSM.",
        ),
    ] = 1,
    k: Annotated[int, typer.Option(min=2, help="SSN count K (with --ws > 1).")] = 12,
    architecture: Annotated[
        str, typer.Option(help="Registered network (scnn, resnet18, vgg11).")
    ] = "scnn",
    train_plates: Annotated[int, typer.Option(min=1, help="Simulated training plates.")] = 4,
    val_plates: Annotated[int, typer.Option(min=1, help="Simulated validation plates.")] = 1,
    test_plates: Annotated[int, typer.Option(min=1, help="Simulated held-out test plates.")] = 2,
    epochs: Annotated[int, typer.Option(min=1)] = 30,
    seed: Annotated[int, typer.Option(help="Seeds the plates or split, and training.")] = 0,
    difficulty: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Simulator class overlap.")
    ] = 0.5,
    device: Annotated[
        str, typer.Option(help="cpu (deterministic), cuda, or auto (CUDA when available).")
    ] = "cpu",
    run_id: Annotated[
        int | None, typer.Option(help="Report to this training run (set by the API).")
    ] = None,
) -> None:
    """Train a network on simulated plates, labelled plates or an image folder; publish it."""
    arguments = dict(locals())
    if run_id is not None:
        _train_for_run(run_id, lambda: train(**(arguments | {"run_id": None})))
        return
    try:
        from training import jobs
        from training.trainer import TrainConfig, resolve_device
    except ImportError as exc:
        raise UserError(
            "training needs the 'train' extra (PyTorch, onnx): "
            f"pip install 'mscreen[train]' ({exc})"
        ) from exc
    from models.networks import registered_models

    if architecture not in registered_models():
        raise UserError(f"--architecture {architecture!r} unknown; known: {registered_models()}")
    try:
        resolve_device(device)
    except (ValueError, RuntimeError) as exc:
        raise UserError(f"--device: {exc}") from exc
    settings = get_settings()
    train_config = TrainConfig(epochs=epochs, seed=seed, device=device)
    target = repository or settings.model_repository
    try:
        pipeline = replace(jobs.TRAINING_PIPELINE, ws=ws, k=k)  # validated: ValueError
        if source == "simulated":
            from hardware.simulation import SimulationConfig

            artifact, card = jobs.SimulatedTrainingJob(
                repository=target,
                name=name,
                architecture=architecture,
                pipeline=pipeline,
                train_plates=train_plates,
                val_plates=val_plates,
                test_plates=test_plates,
                simulation=SimulationConfig(seed=seed, difficulty=difficulty),
                train_config=train_config,
            ).run()
        elif source in ("database", "folder"):
            if source == "database":
                from app import db
                from app.runtime import serving_bit_depth

                engine = db.make_engine(settings.resolved_database_url)
                try:
                    prepared = jobs.database_training_data(
                        db.make_session_factory(engine),
                        pipeline,
                        barcodes=plates,
                        bit_depth=serving_bit_depth(settings),
                        seed=seed,
                    )
                finally:
                    engine.dispose()
            else:
                if data is None:
                    raise UserError("--source folder needs --data DIR")
                from training.datasets import CELLTYPE_GROUP_PATTERN

                if size is not None:
                    pipeline = replace(pipeline, height=size, width=size)
                pattern = CELLTYPE_GROUP_PATTERN if group_by == "celltype" else group_by
                prepared = jobs.folder_training_data(data, pipeline, group_by=pattern, seed=seed)
            artifact, card = jobs.train_and_publish(
                prepared,
                repository=target,
                name=name,
                architecture=architecture,
                pipeline=pipeline,
                train_config=train_config,
            )
        else:
            raise UserError(f"--source must be simulated, database or folder, not {source!r}")
    except ValueError as exc:  # data the user can fix: too few plates, bad folder, no labels
        raise UserError(str(exc)) from exc
    test = card["metrics"]["test"]  # type: ignore[index]
    metrics, ci = test["metrics"], test["ci95"]

    def figure(value: float | None) -> str:  # None: undefined (e.g. AUC on one class)
        return "n/a" if value is None else f"{value:.3f}"

    low, high = ci.get("accuracy") or (None, None)
    typer.echo(
        f"published {artifact.name} v{artifact.version} at {artifact.directory}\n"
        f"held-out {source} data: accuracy {figure(metrics['accuracy'])} "
        f"(95% CI {figure(low)}-{figure(high)}), AUC {figure(metrics.get('auc'))}, "
        f"n={metrics['n']}"
    )


def _train_for_run(run_id: int, job: Callable[[], object]) -> None:
    """Run ``job`` and record its start, outcome and published version on the run's row."""
    from app import db
    from app.orm import TrainingRun
    from app.training_runs import mark_finished, mark_running
    from models.repository import ModelRepository

    settings = get_settings()
    engine = db.make_engine(settings.resolved_database_url)
    factory = db.make_session_factory(engine)
    try:
        with db.session_scope(factory) as session:
            mark_running(session, run_id)
        try:
            job()
        except BaseException as exc:
            with db.session_scope(factory) as session:
                mark_finished(session, run_id, error=f"{type(exc).__name__}: {exc}")
            raise
        with db.session_scope(factory) as session:
            name = session.get_one(TrainingRun, run_id).model_name or settings.model_name
            versions = ModelRepository(settings.model_repository).versions(name)
            mark_finished(session, run_id, version=versions[-1] if versions else None)
    finally:
        engine.dispose()


# -- experiments -------------------------------------------------------------------------------
@cli.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def experiment(ctx: typer.Context) -> None:
    """The paper's experiments (ws-k-grid, learning-curve, plate-eval, cv); `mscreen experiment
    --help` lists them. Needs the 'train' extra."""
    # Imported on use: the experiments need PyTorch, which the service install does not have.
    try:
        from training.cli import experiment_cli
    except ImportError as exc:
        raise UserError(
            f"experiments need the 'train' extra: pip install 'mscreen[train]' ({exc})"
        ) from exc
    experiment_cli(ctx.args, prog_name="mscreen experiment")


# -- keys --------------------------------------------------------------------------------------
@keys_cli.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="Who or what uses the key.")],
    role: Annotated[str, typer.Option(help="viewer, operator or admin.")] = "viewer",
) -> None:
    """Create an API key and print its secret (shown once; only a hash is stored)."""
    from app import db
    from app.auth import audit, create_key
    from app.orm import Role

    try:
        chosen = Role(role)
    except ValueError:
        raise UserError(f"--role must be viewer, operator or admin, not {role!r}") from None
    url = get_settings().resolved_database_url
    db.upgrade(url)
    engine = db.make_engine(url)
    try:
        with db.session_scope(db.make_session_factory(engine)) as session:
            try:
                secret = create_key(session, name, chosen)
            except ValueError as exc:
                raise UserError(str(exc)) from exc
            audit(session, "cli", "key.create", f"key:{name}", role=chosen.value)
    finally:
        engine.dispose()
    typer.echo(secret)


@keys_cli.command("revoke")
def keys_revoke(name: Annotated[str, typer.Argument(help="The key's name.")]) -> None:
    """Revoke an API key."""
    from app import db
    from app.auth import audit, revoke_key

    engine = db.make_engine(get_settings().resolved_database_url)
    try:
        db.check_schema(engine)
        with db.session_scope(db.make_session_factory(engine)) as session:
            try:
                revoke_key(session, name)
            except LookupError as exc:
                raise UserError(str(exc)) from exc
            audit(session, "cli", "key.revoke", f"key:{name}")
    finally:
        engine.dispose()
    typer.echo(f"revoked {name}")


# -- db ----------------------------------------------------------------------------------------
@db_cli.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Apply migrations up to REVISION (default head)."""
    from app import db

    url = get_settings().resolved_database_url
    db.upgrade(url, revision)
    typer.echo(f"database at {revision}: {url}")


def main() -> None:
    """Entry point: run the CLI and turn user errors into one line."""
    from pydantic import ValidationError

    from app.db import DatabaseNotReadyError
    from hardware.plate import WellNameError
    from models.repository import ModelNotFoundError
    from models.runtime import RuntimeUnavailableError

    try:
        cli()
    except (
        UserError,
        WellNameError,
        ModelNotFoundError,
        RuntimeUnavailableError,
        DatabaseNotReadyError,
    ) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        typer.echo(f"error: {problems}", err=True)
        raise SystemExit(2) from None
    except httpx.HTTPError as exc:
        typer.echo(f"error: cannot reach the service: {exc}", err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
