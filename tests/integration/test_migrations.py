"""Every service's Alembic migrations make exactly the schema its tables.py declares, on both
backends (a column added to a shared table, like the work queue's, needs its migration)."""
from __future__ import annotations

from importlib import import_module

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from services.runtime.db import Database


@pytest.mark.parametrize("service", ["wallet", "transaction", "provider", "blockchain"])
def test_the_migrations_make_the_schema_of_tables_py(service, database_url):
    db = Database(database_url, import_module(f"services.{service}.app").MIGRATIONS)
    db.migrate()
    try:
        with db.engine.connect() as connection:
            assert compare_metadata(MigrationContext.configure(connection),
                                    import_module(f"services.{service}.tables").metadata) == []
    finally:
        db.close()
