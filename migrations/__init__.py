"""Alembic migrations: the only way the schema changes, and the functions that apply them.

The service (when it starts), the CLI (`mscreen db upgrade`) and the tests call :func:`upgrade`;
read-only commands call :func:`check_schema`, which neither creates nor migrates a database.
Alembic run by hand from the repo root uses alembic.ini and env.py in this folder.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

MIGRATIONS_DIR = Path(__file__).resolve().parent


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` (creates it for SQLite)."""
    if url.startswith("sqlite"):
        database = url.split("///", 1)[-1]
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


class DatabaseNotReadyError(RuntimeError):
    """The database does not exist or is not at the code's schema revision."""


def check_schema(engine: Engine) -> None:
    """Raise :class:`DatabaseNotReadyError` unless ``engine``'s schema is at head.

    For read-only commands, which must neither create a database nor migrate one.
    """
    url = engine.url
    file_backed = url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")
    if file_backed and not Path(str(url.database)).exists():
        raise DatabaseNotReadyError(f"no database at {url.database} (nothing scanned yet?)")
    head = ScriptDirectory.from_config(
        alembic_config(url.render_as_string(hide_password=False))
    ).get_current_head()
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    if current != head:
        raise DatabaseNotReadyError(
            f"database {url.render_as_string(hide_password=True)} is at schema revision "
            f"{current or 'none'}, the code needs {head}: run `mscreen db upgrade`"
        )
