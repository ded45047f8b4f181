"""Shared fixtures. Tests never touch a developer's real database or data directory.

PostgreSQL tests create a throw-away database on the server named by MSCREEN_TEST_POSTGRES_URL
(default: postgres@127.0.0.1:5432) and drop it afterwards. Where no server answers they skip,
unless MSCREEN_REQUIRE_POSTGRES=1 (CI), where they fail instead.
"""

from __future__ import annotations

import os

# sila2 (tests/test_sila.py) needs protobuf's pure-Python implementation, chosen when protobuf
# is first imported: sila2 selects it on import, but onnx (imported by many tests before it)
# would load the default upb one, whose pool refuses sila2's second SiLAFramework.proto. The
# service's own `mscreen sila` imports sila2 before anything loads protobuf (app/sila/__init__.py).
os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

import migrations
from app.auth import create_key
from app.main import create_app
from app.runtime import Runtime
from app.settings import Settings
from store.db import session_scope
from store.orm import Role

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A developer's MSCREEN_* variables or .env must not leak into tests.
    for key in list(os.environ):
        if key.startswith("MSCREEN_") and not key.startswith(("MSCREEN_TEST_", "MSCREEN_REQUIRE_")):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def _postgres_admin_url() -> str:
    return os.environ.get("MSCREEN_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)


@contextmanager
def _throwaway_postgres(template: str | None = None) -> Iterator[str]:
    """URL of a new PostgreSQL database (a copy of ``template``, else empty), dropped after."""
    admin_url = make_url(_postgres_admin_url())
    admin = create_engine(admin_url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    name = f"mscreen_test_{uuid.uuid4().hex[:12]}"
    copy_of = f' TEMPLATE "{template}"' if template else ""
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"{copy_of}'))
    except Exception as exc:
        admin.dispose()
        if os.environ.get("MSCREEN_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL is required here but {admin_url!r} failed: {exc}")
        pytest.skip(
            f"no PostgreSQL at {admin_url.render_as_string(hide_password=True)}: "
            f"{type(exc).__name__}"
        )
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """URL of a fresh, empty PostgreSQL database, dropped after the test."""
    with _throwaway_postgres() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mscreen-test.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    """An empty database; each test using this runs once on SQLite and once on PostgreSQL."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return str(request.getfixturevalue(fixture))


# Migrating costs ~0.3 s on SQLite and more on PostgreSQL per database: tests that only need a
# database at the code's schema get a copy of one migrated once per session (the service still
# runs its own `upgrade`, which then finds nothing to do).
@pytest.fixture(scope="session")
def _migrated_sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "migrated.db"
    migrations.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def _migrated_postgres_template() -> Iterator[str]:
    with _throwaway_postgres() as url:
        migrations.upgrade(url)
        yield str(make_url(url).database)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def migrated_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database at the code's schema, copied from a session template; SQLite and PostgreSQL."""
    if request.param == "sqlite":
        path = tmp_path / "mscreen-test.db"
        shutil.copyfile(request.getfixturevalue("_migrated_sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    template = request.getfixturevalue("_migrated_postgres_template")
    with _throwaway_postgres(template=template) as url:
        yield url


@pytest.fixture
def settings(tmp_path: Path, migrated_database_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=migrated_database_url,
        worker_poll_seconds=0.05,
        onnx_provider="cpu",
        _env_file=None,  # type: ignore[call-arg]
    )


@dataclass
class Service:
    """A running app (lifespan started) with one API key per role."""

    client: TestClient
    keys: dict[str, str]

    @property
    def runtime(self) -> Runtime:
        runtime: Runtime = self.client.app.state.runtime  # type: ignore[attr-defined]
        return runtime

    def headers(self, role: str) -> dict[str, str]:
        return {"X-API-Key": self.keys[role]}


@pytest.fixture
def service(settings: Settings) -> Iterator[Service]:
    """The app with its worker running; the client sends the operator key unless told otherwise."""
    with TestClient(create_app(settings)) as client:
        runtime: Runtime = client.app.state.runtime  # type: ignore[attr-defined]
        with session_scope(runtime.session_factory) as session:
            keys = {role.value: create_key(session, f"test-{role.value}", role) for role in Role}
        client.headers["X-API-Key"] = keys["operator"]
        yield Service(client, keys)


def wait_for_scan(client: TestClient, location: str, timeout_s: float = 300.0) -> dict:
    """Poll a scan until it is finished; return its last state."""
    deadline = time.monotonic() + timeout_s
    body: dict = {}
    while time.monotonic() < deadline:
        body = client.get(location).json()
        if body["status"] in ("completed", "failed", "cancelled"):
            return body
        time.sleep(0.2)
    raise AssertionError(f"scan did not finish in {timeout_s} s: {body}")


def copy_bundled_v1(repository: Path) -> Path:
    """``repository/hscnn-sim`` holding the bundled model's v1 only (and its Triton config).

    Tests that add versions, activate them or count them reason from one known version; the
    bundled repository's newest (v2, with a decision set and an out-of-distribution guard) is
    tested by its own tests.
    """
    from models.repository import BUNDLED_REPOSITORY

    source = BUNDLED_REPOSITORY / "hscnn-sim"
    target = repository / "hscnn-sim"
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source / "config.pbtxt", target / "config.pbtxt")
    shutil.copytree(source / "1", target / "1")
    return target
