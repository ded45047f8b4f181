"""Where the persistent state lives: the database URL and the image folder.

The service's :class:`app.settings.Settings` extends this, so ``MSCREEN_DATA_DIR``,
``MSCREEN_DATABASE_URL`` and ``MSCREEN_IMAGE_DIR`` mean the same thing to the service, to
training and to Alembic run by hand (migrations/env.py).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class StoreSettings(BaseSettings):
    """Every field can be set as ``MSCREEN_<FIELD>`` (upper case) or in a ``.env`` file."""

    model_config = SettingsConfigDict(env_prefix="MSCREEN_", env_file=".env", extra="ignore")

    data_dir: Path = Field(
        default=Path("mscreen-data"),
        description="Where the SQLite database and acquired images live by default.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; default sqlite:///<data_dir>/mscreen.db. "
        "PostgreSQL: postgresql+psycopg://user:pass@host/db",
    )
    image_dir: Path | None = Field(default=None, description="Default <data_dir>/images.")

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'mscreen.db').resolve()}"

    @property
    def resolved_image_dir(self) -> Path:
        return (self.image_dir or self.data_dir / "images").resolve()
