"""`mscreen sila` and `mscreen serve --sila`: the SiLA 2 server (issue 17) for lab schedulers.

Two ways to run it, never both against one instrument (each would run a scan worker on it):

- ``mscreen sila``: the SiLA server alone, with its own runtime and scan worker (no REST).
- ``mscreen serve --sila``: beside the REST API in the same process, on the app's runtime
  (:func:`attach_sila` wraps the app's lifespan), so REST and SiLA share one worker.

Both need the ``sila`` extra (``pip install 'mscreen[sila]'``).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from app.settings import Settings, get_settings
from cli.common import UserError

if TYPE_CHECKING:
    from fastapi import FastAPI

    from app.sila.server import SilaOptions

logger = logging.getLogger(__name__)

DEFAULT_SILA_PORT = 50052  # app.sila.server.DEFAULT_PORT, without importing sila2 for --help


def _sila_server_module() -> Any:
    try:
        from app.sila import server
    except ImportError as exc:  # sila2 (or its grpcio) missing
        raise UserError(
            f"the SiLA server needs the sila extra: pip install 'mscreen[sila]' ({exc})"
        ) from exc
    except RuntimeError as exc:  # protobuf loaded with an implementation sila2 cannot use
        raise UserError(str(exc)) from exc
    return server


def sila_options(
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_SILA_PORT,
    insecure: bool = False,
    discovery: bool = True,
    cert: Path | None = None,
    key: Path | None = None,
) -> SilaOptions:
    """The server's options (UserError without the sila extra)."""
    server = _sila_server_module()
    options: SilaOptions = server.SilaOptions(
        host=host,
        port=port,
        insecure=insecure,
        discovery=discovery,
        cert_file=cert,
        key_file=key,
    )
    return options


def run_sila(settings: Settings, options: SilaOptions, stop: threading.Event) -> None:
    """Build a runtime, start its scan worker and the SiLA server; block until ``stop`` is set,
    then stop both (the server first: its ScanPlate executions end, the scans go on)."""
    from app.runtime import build_runtime

    server_module = _sila_server_module()
    runtime = build_runtime(settings)
    try:
        if settings.worker_enabled:
            runtime.worker.start()
        server = server_module.start_sila_server(runtime, options)
        try:
            stop.wait()
        finally:
            server.stop(grace_period=5)
    finally:
        runtime.close()


def sila_serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="gRPC port of the SiLA server.")] = DEFAULT_SILA_PORT,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            help="Plain gRPC, no TLS (the SiLA specification requires TLS: tests and closed "
            "lab networks only).",
        ),
    ] = False,
    discovery: Annotated[
        bool, typer.Option(help="Announce the server by mDNS (SiLA Server Discovery).")
    ] = True,
    cert: Annotated[
        Path | None, typer.Option(help="TLS certificate chain (PEM); default: self-signed.")
    ] = None,
    key: Annotated[Path | None, typer.Option(help="TLS private key (PEM), with --cert.")] = None,
) -> None:
    """Run the SiLA 2 server (PlateScreening feature) and the scan worker, without REST.

    Schedulers send an mscreen API key as the AuthorizationService AccessToken metadata
    (`mscreen keys create --name scheduler --role operator`). Without --cert, the self-signed
    certificate's CA is written to <data dir>/sila-ca.pem. Stop with Ctrl-C or SIGTERM."""
    options = sila_options(
        host=host, port=port, insecure=insecure, discovery=discovery, cert=cert, key=key
    )
    stop = threading.Event()
    # Both signals end the wait below, so the server and worker are stopped in order.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    plain = " (insecure)" if insecure else ""
    typer.echo(f"starting the SiLA 2 server on {host}:{port}{plain}; Ctrl-C stops")
    run_sila(get_settings(), options, stop)


def attach_sila(app: FastAPI, options: SilaOptions) -> FastAPI:
    """Run the SiLA server inside ``app``'s lifespan, on the runtime the app builds (one
    worker for REST and SiLA). Returns ``app``."""
    server_module = _sila_server_module()
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(application: Any) -> AsyncIterator[Any]:
        async with inner(application) as state:
            server = server_module.start_sila_server(application.state.runtime, options)
            try:
                yield state
            finally:
                server.stop(grace_period=5)

    app.router.lifespan_context = lifespan
    return app
