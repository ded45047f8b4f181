"""The schema comes only from migrations, and migrations match the ORM models."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

import migrations
from store.orm import Base

EXPECTED_TABLES = {
    "plates",
    "wells",
    "scans",
    "images",
    "well_results",
    "fct_measurements",
    "model_versions",
}


def test_upgrade_head_on_an_empty_database_creates_the_schema(database_url):
    engine = create_engine(database_url)
    try:
        assert not set(inspect(engine).get_table_names()) & EXPECTED_TABLES
        migrations.upgrade(database_url)
        tables = set(inspect(engine).get_table_names())
        assert tables >= EXPECTED_TABLES | {"alembic_version"}
        with engine.connect() as connection:
            diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        assert diff == [], f"ORM models and migrations disagree: {diff}"
    finally:
        engine.dispose()


def test_downgrade_to_base_and_back(database_url):
    engine = create_engine(database_url)
    try:
        migrations.upgrade(database_url)
        migrations.downgrade(database_url, "base")
        assert not set(inspect(engine).get_table_names()) & EXPECTED_TABLES
        migrations.upgrade(database_url)
        assert set(inspect(engine).get_table_names()) >= EXPECTED_TABLES
    finally:
        engine.dispose()
