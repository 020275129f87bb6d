"""Every service's Alembic migrations make exactly the schema its tables.py declares, on both
backends (a column added to a shared table, like the work queue's, needs its migration)."""
from __future__ import annotations

import contextlib
import logging
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from importlib import import_module

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from services.runtime.config import load_topology
from services.runtime.db import BUSY_TIMEOUT_MS, Database
from tools.migration import ROOT, new_migration

from conftest import postgres_schema


@contextlib.contextmanager
def at_revision(db: Database, service: str, revision: str):
    """A connection, in one transaction, to `db` migrated by `service`'s migrations only up to
    `revision` (a database of an older release): what the block writes there, `db.migrate()`
    then upgrades."""
    config = Config()
    config.set_main_option("script_location", str(import_module(f"services.{service}.app").MIGRATIONS))
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
        yield connection


@pytest.mark.parametrize("service", list(load_topology(env={}).services))
def test_the_migrations_make_the_schema_of_tables_py(service, database_url):
    db = Database(database_url, import_module(f"services.{service}.app").MIGRATIONS)
    db.migrate()
    try:
        with db.engine.connect() as connection:
            assert compare_metadata(MigrationContext.configure(connection),
                                    import_module(f"services.{service}.tables").metadata) == []
    finally:
        db.close()


@pytest.mark.postgres
def test_an_existing_database_keeps_its_rows_and_counts_past_32_bits_after_the_bigint_revision():
    """A wallet database of before the 64-bit ids (revision 0002), with an event in its outbox,
    upgraded: the row is kept and the next ids go past 2**31."""
    with postgres_schema() as url:
        db = Database(url, import_module("services.wallet.app").MIGRATIONS)
        with at_revision(db, "wallet", "0002") as connection:
            connection.execute(text("INSERT INTO outbox (event_id, topic, envelope, created_at) "
                                    "VALUES ('e1', 't', '', now())"))
        db.migrate()
        try:
            with db.engine.begin() as connection:
                connection.execute(text("SELECT setval(pg_get_serial_sequence('outbox', 'id'), 3000000000)"))
                new_id = connection.execute(text("INSERT INTO outbox (event_id, topic, envelope, created_at) "
                                                 "VALUES ('e2', 't', '', now()) RETURNING id")).scalar_one()
                kept = connection.execute(text("SELECT id FROM outbox WHERE event_id = 'e1'")).scalar_one()
            assert (kept, new_id) == (1, 3000000001)
        finally:
            db.close()


def test_transactions_in_flight_when_screening_arrives_are_exempt_and_ended_ones_untouched(database_url):
    """A transaction database of before screening (revision 0008), upgraded: what is PENDING or
    PROCESSING finishes unscreened (its saga may have held or paid already); what has ended keeps
    no decision."""
    db = Database(database_url, import_module("services.transaction.app").MIGRATIONS)
    with at_revision(db, "transaction", "0008") as connection:
        for tx_id, state in (("p", "PENDING"), ("r", "PROCESSING"), ("c", "COMPLETED"), ("f", "FAILED")):
            connection.execute(text(
                "INSERT INTO transactions (id, type, state, source_wallet, destination_wallet, currency, amount, hold, "
                "failure_reason, created_at, updated_at) VALUES (:id, 'SEND', :state, 'wallets/a', 'wallets/b', "
                "'USD', 1, '', '', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"), {"id": tx_id, "state": state})
    db.migrate()
    try:
        with db.engine.connect() as connection:
            decisions = dict(connection.execute(text("SELECT id, screening_decision FROM transactions")).all())
        assert decisions == {"p": "EXEMPT", "r": "EXEMPT", "c": "", "f": ""}
    finally:
        db.close()


def test_the_migration_tool_writes_the_next_revision_lint_clean(tmp_path):
    """tools/migration.py on a copy of the wallet's migrations: the next number, and (tables.py
    and the migrations agreeing) nothing to do; the file passes the project's lint."""
    shutil.copytree(ROOT / "services" / "wallet" / "migrations", tmp_path / "services" / "wallet" / "migrations",
                    ignore=shutil.ignore_patterns("__pycache__"))
    path = new_migration("wallet", "nothing new", root=tmp_path)
    assert path.name == "0004_nothing_new.py"
    written = path.read_text()
    assert "down_revision = '0003'" in written and "op." not in written.split("def upgrade")[1].split("def downgrade")[0]
    lint = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--config", str(ROOT / "pyproject.toml"), str(path)],
                          capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout


def test_a_migration_the_tool_writes_for_our_column_types_runs(tmp_path):
    """tools/migration.py from no revision at all: every table of the wallet's tables.py, with its
    ExactDecimal amounts, in one migration that imports what it names, runs, and makes that schema."""
    migrations = tmp_path / "services" / "wallet" / "migrations"
    shutil.copytree(ROOT / "services" / "wallet" / "migrations", migrations,
                    ignore=shutil.ignore_patterns("__pycache__", "versions"))
    path = new_migration("wallet", "everything", root=tmp_path)
    assert "services.runtime.db.ExactDecimal" in path.read_text()
    db = Database(f"sqlite:///{tmp_path}/wallet.db", migrations)
    db.migrate()
    try:
        with db.engine.connect() as connection:
            assert compare_metadata(MigrationContext.configure(connection),
                                    import_module("services.wallet.tables").metadata) == []
    finally:
        db.close()


def test_an_instance_waits_for_another_ones_slow_migration_past_the_busy_timeout(tmp_path, caplog):
    """Two instances of a service on one SQLite file migrate in turn: one that finds the file
    locked for longer than the busy timeout (a migration slowed by a machine busy starting every
    process) waits for it, instead of stopping with "database is locked"."""
    path = tmp_path / "wallet.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("PRAGMA journal_mode=WAL")
    holder.execute("BEGIN IMMEDIATE")                # the other instance, mid-migration
    released = threading.Timer(BUSY_TIMEOUT_MS / 1000 + 0.5, holder.rollback)
    released.start()
    db = Database(f"sqlite:///{path}", import_module("services.wallet.app").MIGRATIONS)
    try:
        started = time.monotonic()
        with caplog.at_level(logging.INFO, logger="diboas.db"):
            db.migrate()
        assert time.monotonic() - started > BUSY_TIMEOUT_MS / 1000
        assert "is locked by another process" in caplog.text
        with db.engine.connect() as connection:
            assert compare_metadata(MigrationContext.configure(connection),
                                    import_module("services.wallet.tables").metadata) == []
    finally:
        released.join()
        holder.close()
        db.close()
