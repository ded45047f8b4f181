"""`mscreen reanalyse`: re-score stored scans with another model version (issue 16).

One plate (its latest completed scan, or ``--scan``) in this process, preparing fields in a
persistent pool of ``--workers`` processes; or every plate (``--all``), one task per plate, in a
local process pool or on Dask (``--scheduler tcp://host:8786``, or ``--scheduler local`` for a
LocalCluster started for the run). The calls land beside the scans' own: read them with
``mscreen results --plate P --model NAME:V`` or ``?model=NAME:V`` on the API. A killed run is
resumed by running the same command again (no well is scored twice into the database).
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import TYPE_CHECKING, Annotated, Any

import typer
from tqdm import tqdm

from app.settings import get_settings
from cli.common import ApiKeyOption, UserError, client, database, raise_for_api

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from app.analyses import ModelSpec


def reanalyse(
    model: Annotated[
        str, typer.Option("--model", "-m", help="The version to re-score with, NAME:VERSION.")
    ],
    plate: Annotated[
        str | None, typer.Option("--plate", "-p", help="Plate barcode (or --all).")
    ] = None,
    scan_id: Annotated[
        int | None, typer.Option("--scan", help="This scan of the plate (default: its latest).")
    ] = None,
    every_plate: Annotated[
        bool, typer.Option("--all", help="Every plate's latest completed scan.")
    ] = False,
    threshold_policy: Annotated[
        str | None, typer.Option(help="default | youden | sensitivity:S | specificity:S.")
    ] = None,
    alpha: Annotated[float | None, typer.Option(help="Selective calls' error rate.")] = None,
    delta: Annotated[float | None, typer.Option(help="Risk of the alpha guarantee.")] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=0,
            max=256,
            help="One plate: processes preparing fields. --all: plates re-scored at once.",
        ),
    ] = 2,
    batch_size: Annotated[
        int, typer.Option(min=1, max=1024, help="Fields per onnxruntime batch.")
    ] = 64,
    scheduler: Annotated[
        str | None,
        typer.Option(
            help="--all on Dask: a scheduler address (tcp://host:8786), or 'local' for a "
            "LocalCluster of --workers processes."
        ),
    ] = None,
    server: Annotated[str | None, typer.Option(help="URL of a running service.")] = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Re-score stored scans with another model version; the calls are kept beside the
    scans' own, per version."""
    from app.analyses import ModelSpec
    from app.errors import ServiceError

    if (plate is None) == (not every_plate):
        raise UserError("name one plate (--plate P) or --all")
    if scan_id is not None and every_plate:
        raise UserError("--scan names one plate's scan; it cannot go with --all")
    if scheduler is not None and not every_plate:
        raise UserError("--scheduler fans plates out as tasks: use it with --all")
    try:
        spec = ModelSpec.parse(model)
    except ServiceError as exc:
        raise UserError(str(exc)) from None
    policy = {"threshold_policy": threshold_policy, "alpha": alpha, "delta": delta}
    if server:
        if every_plate:
            raise UserError("--all runs here or on Dask; with --server name one plate")
        _remote(server, api_key, plate or "", scan_id, spec, policy)
        return
    _local(spec, plate, scan_id, policy, workers, batch_size, scheduler)


def _scans_to_analyse(
    session: Session, spec: ModelSpec, plate: str | None, scan_id: int | None
) -> list[int]:
    """The scans to re-score: the plate's latest completed (or ``scan_id``), or with no plate,
    every plate's latest completed scan whose model of record is not ``spec`` itself."""
    from sqlalchemy import select

    from app import wells
    from store.orm import Plate, Scan, ScanStatus

    if plate is not None:
        found = wells.plate_or_error(session, plate)
        if scan_id is not None:
            return [wells.scan_or_error(session, found, scan_id).id]
        latest = session.scalar(
            select(Scan.id)
            .where(Scan.plate_id == found.id, Scan.status == ScanStatus.completed)
            .order_by(Scan.id.desc())
            .limit(1)
        )
        if latest is None:
            raise UserError(f"plate {plate!r} has no completed scan to re-analyse")
        return [latest]
    chosen = []
    for plate_row in session.scalars(select(Plate).order_by(Plate.id)):
        scan = session.scalar(
            select(Scan)
            .where(Scan.plate_id == plate_row.id, Scan.status == ScanStatus.completed)
            .order_by(Scan.id.desc())
            .limit(1)
        )
        record = scan.model_version if scan is not None else None
        if scan is None or (record and (record.name, record.version) == (spec.name, spec.version)):
            continue
        chosen.append(scan.id)
    return chosen


def _local(
    spec: ModelSpec,
    plate: str | None,
    scan_id: int | None,
    policy: dict[str, Any],
    workers: int,
    batch_size: int,
    scheduler: str | None,
) -> None:
    from app.analyses import request_analysis
    from app.distributed import TaskConfig, run_in_processes, run_on_dask
    from app.runtime import build_analysis_worker, serving_bit_depth
    from models.repository import ModelRepository
    from store.db import session_scope

    settings = get_settings().model_copy(update={"reanalysis_batch_size": batch_size})
    repository = ModelRepository(settings.model_repository)
    with database(migrate=True) as factory:
        worker = build_analysis_worker(
            settings, factory, repository, prepare_workers=workers if plate else 0
        )
        try:
            with session_scope(factory) as session:
                scans = _scans_to_analyse(session, spec, plate, scan_id)
                if not scans:
                    raise UserError(f"no completed scan to re-analyse with {spec}")
                analyses = []
                for scan in scans:
                    analysis, _ = request_analysis(
                        session,
                        scan,
                        spec,
                        repository=repository,
                        classifiers=worker.context.classifiers,
                        requested_by="cli",
                        policy=policy,
                    )
                    analyses.append((analysis.id, scan, analysis.wells_total))
            started = time.perf_counter()
            if plate is not None:
                analysis_id, scan, total = analyses[0]
                typer.echo(f"analysis {analysis_id}: scan {scan} with {spec}", err=True)
                with tqdm(total=total, desc="wells", unit="well", file=sys.stderr) as bar:
                    worker.on_progress = lambda _id, done, _total: bar.update(done - bar.n)
                    outcome = worker.run_one(analysis_id)
                if (
                    outcome.status is not None
                    and outcome.status.value == "running"
                    and not (outcome.wells)
                ):
                    raise UserError(
                        f"analysis {analysis_id} is running in another worker (its lease has "
                        f"not expired, {settings.lease_seconds:g} s after its last renewal); "
                        "follow it there, or run this again once that worker is gone"
                    )
                fields, seconds = outcome.fields, outcome.seconds
            else:
                config = TaskConfig(
                    database_url=settings.resolved_database_url,
                    model_repository=str(settings.model_repository),
                    bit_depth=serving_bit_depth(settings),
                    onnx_provider=settings.onnx_provider,
                    batch_size=batch_size,
                    lease_seconds=settings.lease_seconds,
                    write_plate_results=settings.plate_results,
                )
                ids = [a for a, _, _ in analyses]
                with tqdm(total=len(ids), desc="plates", unit="plate", file=sys.stderr) as bar:
                    if scheduler is None:
                        done = run_in_processes(
                            ids, config, workers=max(workers, 1), on_done=lambda _o: bar.update()
                        )
                    else:
                        done = run_on_dask(
                            ids,
                            config,
                            scheduler=None if scheduler == "local" else scheduler,
                            local_workers=max(workers, 1),
                            on_done=lambda _o: bar.update(),
                        )
                fields, seconds = sum(o.fields for o in done), time.perf_counter() - started
        finally:
            worker.close()
        _report(factory, [a for a, _, _ in analyses], fields, seconds)


def _report(factory: Any, analysis_ids: list[int], fields: int, seconds: float) -> None:
    """One line per analysis (status, labels, changes against the scan's own calls), then the
    throughput of this run."""
    from sqlalchemy import select

    from store.db import session_scope
    from store.orm import Analysis, AnalysisResult, WellResult

    failed = 0
    with session_scope(factory) as session:
        for analysis_id in analysis_ids:
            analysis = session.get_one(Analysis, analysis_id)
            labels = dict(
                session.execute(
                    select(AnalysisResult.well_id, AnalysisResult.label).where(
                        AnalysisResult.analysis_id == analysis_id
                    )
                ).all()
            )
            own = dict(
                session.execute(
                    select(WellResult.well_id, WellResult.label).where(
                        WellResult.scan_id == analysis.scan_id
                    )
                ).all()
            )
            changed = sum(own.get(w) != label for w, label in labels.items())
            counts = Counter(label or "none" for label in labels.values())
            summary = ", ".join(f"{n} {label}" for label, n in sorted(counts.items()))
            typer.echo(
                f"analysis {analysis_id} (scan {analysis.scan_id}): {analysis.status.value}, "
                f"{analysis.wells_done}/{analysis.wells_total} wells ({summary}); "
                f"{changed} labels differ from the scan's own"
                + (f": {analysis.error}" if analysis.error else "")
            )
            failed += analysis.status.value != "completed"
    rate = f", {fields / seconds:.1f} fields/s" if seconds > 0 and fields else ""
    typer.echo(f"{fields} fields re-scored in {seconds:.1f} s{rate}", err=True)
    if failed:
        raise UserError(f"{failed} analysis(es) did not complete")


def _remote(
    server: str,
    api_key: str | None,
    plate: str,
    scan_id: int | None,
    spec: ModelSpec,
    policy: dict[str, Any],
) -> None:
    """Ask a running service to re-analyse and follow its progress."""
    with client(server, api_key) as http:
        if scan_id is None:
            response = http.get(f"/api/v1/plates/{plate}/wells")
            raise_for_api(response)
            scan_id = int(response.json()["scan"]["id"])
        body = {"model": spec.name, "version": spec.version}
        body |= {k: v for k, v in policy.items() if v is not None}
        response = http.post(f"/api/v1/scans/{scan_id}/analyses", json=body)
        raise_for_api(response)
        analysis = response.json()
        path = f"/api/v1/scans/{scan_id}/analyses/{analysis['id']}"
        with tqdm(total=analysis["wells_total"], desc="wells", file=sys.stderr) as bar:
            while analysis["status"] in ("queued", "running"):
                time.sleep(0.5)
                response = http.get(path)
                raise_for_api(response)
                analysis = response.json()
                bar.update(analysis["wells_done"] - bar.n)
    typer.echo(
        f"analysis {analysis['id']} (scan {scan_id}) with {spec}: {analysis['status']}"
        + (f": {analysis['error']}" if analysis.get("error") else "")
    )
    if analysis["status"] != "completed":
        raise UserError(f"analysis {analysis['id']} did not complete")
