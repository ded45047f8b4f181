"""`mscreen serve`, `mscreen scan` and `mscreen results`: run the service, scan a plate (in this
process through the service's own worker, or through a running service), read the calls."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from tqdm import tqdm

from app.settings import Settings, get_settings
from cli.common import ApiKeyOption, UserError, client, database, raise_for_api

if TYPE_CHECKING:
    from app.schemas.plates import WellResultPublic


def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    log_level: Annotated[
        str, typer.Option(help="uvicorn log level (info logs every request).")
    ] = "info",
    sila: Annotated[
        bool,
        typer.Option("--sila", help="Also run the SiLA 2 server (sila extra) on the same runtime."),
    ] = False,
    sila_port: Annotated[int, typer.Option(help="SiLA 2 gRPC port.")] = 50052,
    sila_insecure: Annotated[
        bool, typer.Option("--sila-insecure", help="SiLA without TLS (tests, closed networks).")
    ] = False,
) -> None:
    """Run the REST API and the scan worker (OpenAPI docs at /docs); with --sila, also the
    SiLA 2 server (docs/integration.md)."""
    import uvicorn

    from app.main import create_app

    app = create_app(get_settings())
    if sila:
        from cli.sila import attach_sila, sila_options

        attach_sila(app, sila_options(host=host, port=sila_port, insecure=sila_insecure))
    uvicorn.run(app, host=host, port=port, log_level=log_level)


ObjectiveOption = Annotated[str, typer.Option("--objective", help="40x or 100x.")]


def scan(
    plate: Annotated[str, typer.Option("--plate", "-p", help="Plate barcode.")],
    objective: ObjectiveOption = "40x",
    fields: Annotated[int, typer.Option("--fields", min=1, max=25, help="Fields per well.")] = 1,
    wells: Annotated[
        str | None, typer.Option(help="Comma-separated wells (default: all 96), e.g. A1,B7.")
    ] = None,
    plate_plan: Annotated[
        Path | None,
        typer.Option(
            "--plate-plan",
            help="A useq-schema WellPlatePlan (.json, .yaml): plate type, A1's stage centre, "
            "rotation, selected wells and the points in each well; replaces --wells and --fields.",
        ),
    ] = None,
    server: Annotated[
        str | None,
        typer.Option(help="URL of a running service; default: run in this process."),
    ] = None,
    compare_truth: Annotated[
        bool,
        typer.Option(help="Simulated microscope only: compare calls with the hidden FCT truth."),
    ] = False,
    threshold_policy: Annotated[
        str | None,
        typer.Option(
            "--threshold-policy",
            help="How the decision threshold is chosen: default, youden, sensitivity:S or "
            "specificity:S (all but default need a model with a decision set); default: "
            "MSCREEN_THRESHOLD_POLICY of the service.",
        ),
    ] = None,
    alpha: Annotated[
        float | None,
        typer.Option(
            "--alpha",
            help="Selective calls: the error rate allowed among called wells, in (0, 1); the "
            "others are 'uncertain' (confirm by FCT). Default: MSCREEN_SELECTIVE_ALPHA (unset: "
            "off).",
        ),
    ] = None,
    delta: Annotated[
        float | None,
        typer.Option(
            "--delta",
            help="Risk that the --alpha guarantee fails, in (0, 1); default: "
            "MSCREEN_SELECTIVE_DELTA (0.1).",
        ),
    ] = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Scan a plate, classify each well as it is imaged, and print the 96-well map."""
    if objective not in ("40x", "100x"):
        raise UserError(f"--objective must be 40x or 100x, not {objective!r}")
    well_list = [w.strip() for w in wells.split(",") if w.strip()] if wells else None
    body: dict[str, object] = {
        "plate_barcode": plate,
        "objective": objective,
        "fields_per_well": fields,
        "wells": well_list,
    }
    # Only what was given: the service fills in its own defaults (and the request's idempotency
    # fingerprint stays that of a request without them).
    for name, value in (("threshold_policy", threshold_policy), ("alpha", alpha), ("delta", delta)):
        if value is not None:
            body[name] = value
    if plate_plan is not None:
        if well_list is not None or fields != 1:
            raise UserError(
                "--plate-plan names the wells (selected_wells) and fields (well_points_plan); "
                "drop --wells and --fields"
            )
        body["plate_plan"] = _read_plate_plan(plate_plan)
    from cli.platemap import render_plate_map
    from hardware.plate import plate_geometry

    results, plate_type = (
        _scan_remote(server, body, api_key) if server else _scan_local(get_settings(), body)
    )
    geometry = plate_geometry(plate_type)
    typer.echo(render_plate_map(results, color=sys.stdout.isatty(), geometry=geometry))
    if compare_truth:
        _print_truth_comparison(plate, results)


def _read_plate_plan(path: Path) -> dict[str, object]:
    """The WellPlatePlan in ``path`` as the JSON object a scan request carries."""
    import useq
    from pydantic import ValidationError

    if path.suffix not in (".json", ".yaml", ".yml"):
        raise UserError(f"--plate-plan {path}: expected a .json or .yaml WellPlatePlan")
    try:
        plan = useq.WellPlatePlan.from_file(path)
    except FileNotFoundError:
        raise UserError(f"--plate-plan {path}: no such file") from None
    except (ValidationError, ValueError) as exc:
        raise UserError(f"--plate-plan {path} is not a valid WellPlatePlan: {exc}") from None
    dumped: dict[str, object] = plan.model_dump(mode="json")
    return dumped


def _scan_local(settings: Settings, body: dict[str, object]) -> tuple[list[WellResultPublic], str]:
    from app.runtime import build_runtime
    from app.scans import (
        PolicyDefaults,
        check_policy,
        create_scan,
        requested_policy,
        service_defaults_used,
    )
    from app.schemas.plates import WellResultPublic
    from app.schemas.scans import ScanCreate, ScanPublic
    from store.db import session_scope
    from store.orm import Scan
    from store.queries import scan_results

    request = ScanCreate.model_validate(body)
    runtime = build_runtime(settings)
    try:
        # Degraded (no model can serve), or a call policy the model cannot serve: say why
        # before writing a scan (a ServiceError: one line).
        classifier = runtime.require_model()
        defaults = PolicyDefaults.of(settings)
        check_policy(
            classifier,
            requested_policy(request, defaults),
            from_service=service_defaults_used(request),
        )
        try:
            with session_scope(runtime.session_factory) as session:
                scan_row = create_scan(
                    session, request, microscope=runtime.microscope_name, policy_defaults=defaults
                )
                scan_id, total = scan_row.id, scan_row.wells_total
        except ValueError as exc:  # a well twice, a plan's field too near a well's wall
            raise UserError(str(exc)) from None
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
        return results, public.plate_type
    finally:
        runtime.close()


def _scan_remote(
    server: str, body: dict[str, object], api_key: str | None
) -> tuple[list[WellResultPublic], str]:
    from app.schemas.plates import PlateWellsPublic
    from app.schemas.scans import ScanPublic

    with client(server, api_key) as http:
        response = http.post("/api/v1/scans", json=body)
        raise_for_api(response)
        location = response.headers["Location"]
        scan_public = ScanPublic.model_validate(response.json())
        with tqdm(total=scan_public.wells_total, desc="wells", unit="well", file=sys.stderr) as bar:
            while not scan_public.status.finished:
                time.sleep(1.0)
                response = http.get(location)
                raise_for_api(response)
                scan_public = ScanPublic.model_validate(response.json())
                bar.update(scan_public.wells_done - bar.n)
        if scan_public.error:
            typer.echo(
                f"scan {scan_public.id} {scan_public.status.value}: {scan_public.error}", err=True
            )
        response = http.get(f"/api/v1/plates/{body['plate_barcode']}/wells")
        raise_for_api(response)
        return PlateWellsPublic.model_validate(response.json()).wells, scan_public.plate_type


def _print_truth_comparison(barcode: str, results: list[WellResultPublic]) -> None:
    from hardware.sim import SimulationConfig, plate_truth

    settings = get_settings()
    config = SimulationConfig(
        seed=settings.simulation_seed, high_fraction=settings.simulation_high_fraction
    )
    truth = plate_truth(config, barcode)
    called = [r for r in results if r.label in ("high", "low")]  # uncertain / no call: not calls
    if not called:
        typer.echo("no well was called; nothing to compare", err=True)
        return
    agree = sum(1 for r in called if truth[r.well].label == r.label)
    typer.echo(
        f" vs simulated FCT ground truth: {agree}/{len(called)} calls agree "
        f"({agree / len(called):.1%}); the simulator's hidden labels, not a real cytometer"
    )


def results(
    plate: Annotated[str, typer.Option("--plate", "-p", help="Plate barcode.")],
    csv_output: Annotated[
        bool, typer.Option("--csv", help="Print CSV instead of the map.")
    ] = False,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="The calls of this version, NAME:VERSION (a re-analysis: mscreen reanalyse); "
            "default: the scan's own.",
        ),
    ] = None,
    server: Annotated[str | None, typer.Option(help="URL of a running service.")] = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Print the latest per-well calls of a plate."""
    from app import wells
    from app.analyses import ModelSpec
    from app.errors import NotFoundError
    from app.schemas.plates import PlateWellsPublic
    from cli.platemap import render_plate_map
    from store.db import session_scope

    if server:
        with client(server, api_key) as http:
            params = {"model": model} if model else {}
            response = http.get(f"/api/v1/plates/{plate}/wells", params=params)
            raise_for_api(response)
            plate_wells = PlateWellsPublic.model_validate(response.json())
    else:
        spec = ModelSpec.parse(model) if model else None
        with database() as factory, session_scope(factory) as session:
            try:
                plate_wells = wells.plate_wells(session, plate, model=spec).public()
            except NotFoundError as exc:
                if spec is not None:
                    raise UserError(str(exc)) from None
                raise UserError(
                    f"no results for plate {plate!r} in {get_settings().resolved_database_url}"
                ) from None
    if csv_output:
        typer.echo(wells.results_csv(plate_wells.wells), nl=False)
    else:
        analysis = plate_wells.analysis
        by = (
            f", re-analysed with {analysis.model.name} v{analysis.model.version} "
            f"({analysis.status.value})"
            if analysis
            else ""
        )
        typer.echo(
            f"plate {plate_wells.plate_barcode}, scan {plate_wells.scan.id} "
            f"({plate_wells.scan.status.value}){by}"
        )
        typer.echo(render_plate_map(plate_wells.wells, color=sys.stdout.isatty()))
