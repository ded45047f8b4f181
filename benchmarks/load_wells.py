"""Latency of the per-well query under concurrent clients, against a real server process.

Starts `mscreen serve` on a fresh PostgreSQL database (or the URL given), scans one simulated
plate so every well has a result, then runs N concurrent clients that each request random
wells (GET /api/v1/plates/{barcode}/wells/{well}) for a fixed time. Prints p50/p90/p99 latency
and throughput, and ends with one line `RESULT {json}`.

    .venv/bin/python benchmarks/load_wells.py --clients 50 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

import migrations
from app.auth import create_key
from hardware.plate import SBS_96
from store.orm import Role

logger = logging.getLogger("load_wells")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _fresh_postgres(admin_url: str) -> tuple[str, str]:
    url = make_url(admin_url)
    name = f"mscreen_load_{uuid.uuid4().hex[:10]}"
    engine = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return url.set(database=name).render_as_string(hide_password=False), name


def _drop_postgres(admin_url: str, name: str) -> None:
    engine = create_engine(
        make_url(admin_url).set(database="postgres"), isolation_level="AUTOCOMMIT"
    )
    with engine.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


async def _client(
    client: httpx.AsyncClient,
    barcode: str,
    stop_at: float,
    latencies: list[float],
    errors: list[str],
) -> None:
    rng = random.Random()
    while time.perf_counter() < stop_at:
        well = rng.choice(SBS_96.well_names)
        started = time.perf_counter()
        try:
            response = await client.get(f"/api/v1/plates/{barcode}/wells/{well}")
        except httpx.HTTPError as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            continue
        elapsed = time.perf_counter() - started
        if response.status_code == 200:
            latencies.append(elapsed)
        else:
            errors.append(f"{response.status_code}: {response.text[:80]}")


async def _load(
    base: str, key: str, barcode: str, clients: int, seconds: float
) -> dict[str, float]:
    latencies: list[float] = []
    errors: list[str] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(
        base_url=base, headers={"X-API-Key": key}, limits=limits, timeout=30
    ) as client:
        stop_at = time.perf_counter() + seconds
        started = time.perf_counter()
        await asyncio.gather(
            *(_client(client, barcode, stop_at, latencies, errors) for _ in range(clients))
        )
        wall = time.perf_counter() - started
    if errors:
        logger.warning("%d errors, first: %s", len(errors), errors[0])
    ms = np.array(latencies) * 1000.0
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "throughput_rps": round(len(latencies) / wall, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p90_ms": round(float(np.percentile(ms, 90)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "max_ms": round(float(ms.max()), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument(
        "--postgres-admin-url",
        default=os.environ.get(
            "MSCREEN_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
        ),
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    url, database = _fresh_postgres(args.postgres_admin_url)
    data_dir = Path(tempfile.mkdtemp(prefix="mscreen-load-"))
    process = None
    try:
        migrations.upgrade(url)
        engine = create_engine(url)
        with Session(engine) as session:
            key = create_key(session, "load", Role.viewer)
            operator = create_key(session, "load-operator", Role.operator)
            session.commit()
        engine.dispose()
        port = _free_port()
        env = dict(
            os.environ,
            MSCREEN_DATABASE_URL=url,
            MSCREEN_DATA_DIR=str(data_dir),
            MSCREEN_ONNX_PROVIDER="cpu",
        )
        log = (data_dir / "service.log").open("ab")
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cli",
                "serve",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                if httpx.get(f"{base}/api/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        barcode = "LOAD-1"
        response = httpx.post(
            f"{base}/api/v1/scans", json={"plate_barcode": barcode}, headers={"X-API-Key": operator}
        )
        location = response.headers["Location"]
        while (
            httpx.get(f"{base}{location}", headers={"X-API-Key": key}).json()["status"]
            != "completed"
        ):
            time.sleep(0.5)
        logger.info("plate scanned; %d clients for %.0f s", args.clients, args.seconds)
        figures = asyncio.run(_load(base, key, barcode, args.clients, args.seconds))
        figures.update(
            {
                "clients": args.clients,
                "seconds": args.seconds,
                "database": "postgresql",
                "cores": os.cpu_count(),
            }
        )
        for name, value in figures.items():
            print(f"{name:>16}: {value}")
        print("RESULT " + json.dumps(figures))
    finally:
        if process is not None:
            process.terminate()
            process.wait(30)
        _drop_postgres(args.postgres_admin_url, database)


if __name__ == "__main__":
    main()
