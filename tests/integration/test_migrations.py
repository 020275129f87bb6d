"""Every service's Alembic migrations make exactly the schema its tables.py declares, on both
backends (a column added to a shared table, like the work queue's, needs its migration)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from importlib import import_module

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from services.runtime.db import Database
from tools.migration import ROOT, new_migration


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


def test_the_migration_tool_writes_the_next_revision_lint_clean(tmp_path):
    """tools/migration.py on a copy of the wallet's migrations: the next number, and (tables.py
    and the migrations agreeing) nothing to do; the file passes the project's lint."""
    shutil.copytree(ROOT / "services" / "wallet" / "migrations", tmp_path / "services" / "wallet" / "migrations",
                    ignore=shutil.ignore_patterns("__pycache__"))
    path = new_migration("wallet", "nothing new", root=tmp_path)
    assert path.name == "0003_nothing_new.py"
    text = path.read_text()
    assert "down_revision = '0002'" in text and "op." not in text.split("def upgrade")[1].split("def downgrade")[0]
    lint = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--config", str(ROOT / "pyproject.toml"), str(path)],
                          capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout
