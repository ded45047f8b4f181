"""Deployment files, checked without a Docker engine: the compose file parses and wires what it
must, and the image's entrypoint + command start a healthy service from a virtualenv."""

import os
import re
import shlex
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _dockerfile() -> dict[str, str]:
    """Last value of each Dockerfile instruction, with line continuations joined."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    instructions: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions[keyword.upper()] = rest.strip()
    return instructions


def test_compose_file_wires_postgres_gpu_volume_and_health():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"db", "mscreen"} <= set(services)
    db, app = services["db"], services["mscreen"]
    assert db["image"].startswith("postgres:")
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    assert app["depends_on"]["db"]["condition"] == "service_healthy"
    env = app["environment"]
    assert (
        env["MSCREEN_DATABASE_URL"].startswith("postgresql+psycopg://")
        and "@db:5432/" in env["MSCREEN_DATABASE_URL"]
    )
    assert env["MSCREEN_ENVIRONMENT"] == "production"
    devices = app["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] and d["driver"] == "nvidia" for d in devices)
    volume, _, target = app["volumes"][0].partition(":")
    assert volume in compose["volumes"] and target == env["MSCREEN_DATA_DIR"]
    assert "8000:8000" in app["ports"]


def test_dockerfile_is_cuda_based_non_root_with_healthcheck():
    instructions = _dockerfile()
    assert instructions["FROM"].startswith("nvidia/cuda:") and "cudnn" in instructions["FROM"]
    assert instructions["USER"] not in ("root", "0")
    assert "/api/v1/health" in instructions["HEALTHCHECK"]
    installed = re.search(r'pip install "\.\[([a-z,]+)\]"', (ROOT / "Dockerfile").read_text())
    assert installed is not None, "the image installs the project with its extras"
    extras = set(installed.group(1).split(","))
    assert {"gpu", "postgres", "fast", "sila"} <= extras
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert extras <= set(declared["optional-dependencies"]), "an extra the project lacks"
    assert "50052" in instructions["EXPOSE"].split()  # the SiLA 2 server (mscreen serve --sila)
    copied = set()
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"COPY source {source} missing"
                copied.add(source)
    # Every package the wheel is built from must be in the image (a new top-level package that
    # is not copied installs nothing and fails only when the image first imports it).
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for pattern in packages["packages"]["find"]["include"]:
        assert pattern.rstrip("*") in copied, f"package {pattern} is not copied into the image"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
@pytest.mark.postgres
def test_image_entrypoint_and_command_serve_from_a_venv(tmp_path, postgres_url):
    """Run the image's ENTRYPOINT + CMD (port changed) as the container would, then its
    HEALTHCHECK command."""
    instructions = _dockerfile()
    command = [part.strip('" ') for part in re.findall(r'"[^"]*"', instructions["CMD"])]
    assert command[:2] == ["mscreen", "serve"]
    port = _free_port()
    command = [c if c != "8000" else str(port) for c in command]
    command = [c if c != "0.0.0.0" else "127.0.0.1" for c in command]
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        MSCREEN_ENVIRONMENT="production",
        MSCREEN_DATABASE_URL=postgres_url,
        MSCREEN_DATA_DIR=str(tmp_path / "data"),
        MSCREEN_MODEL_REPOSITORY=str(tmp_path / "data" / "models"),
        MSCREEN_ONNX_PROVIDER="auto",
    )
    log = tmp_path / "container.log"
    process = subprocess.Popen(
        ["sh", str(ROOT / "docker" / "entrypoint.sh"), *command],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=2)
                if health.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        assert health.json()["database"] == "ok (postgresql)"
        # The entrypoint seeded the model repository on the data volume.
        assert (tmp_path / "data" / "models" / "hscnn-sim" / "1" / "model.onnx").is_file()
        check = instructions["HEALTHCHECK"].split(" CMD ", 1)[1].replace("8000", str(port))
        assert (
            subprocess.run(
                shlex.split(check.replace("python ", f"{sys.executable} ", 1)), timeout=30
            ).returncode
            == 0
        )
    finally:
        process.terminate()
        process.wait(30)


def test_production_settings_refuse_unsafe_defaults(monkeypatch):
    from pydantic import ValidationError

    from app.settings import Settings

    with pytest.raises(ValidationError, match="PostgreSQL"):
        Settings(environment="production", _env_file=None)
    with pytest.raises(ValidationError, match="AUTH_DISABLED"):
        Settings(
            environment="production",
            auth_disabled=True,
            database_url="postgresql+psycopg://x@y/z",
            _env_file=None,
        )
