"""Persistence plumbing shared by the services: engines, transactions, exact amounts, migrations.

The same code runs on the embedded default (one SQLite file per service, WAL mode) and on
PostgreSQL, chosen by the service's database URL in the topology. Domain code never sees
this module; repositories do.

Database work is synchronous SQLAlchemy run in a small thread pool (`Database.run`), so the
asyncio loop that serves gRPC never blocks on I/O and service-layer code stays plain
functions. On SQLite, which has one writer at a time anyway, the write transactions of a
process are group-committed (`GroupCommit`): they take turns on one connection, each in a
savepoint of a shared transaction that commits once nobody else is waiting, and each
caller returns only after that commit. Write transactions start with BEGIN IMMEDIATE, so a
writer in another process queues for the lock instead of failing half-way with "database
is locked".
"""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime as dt
import functools
import logging
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Insert,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    bindparam,
    create_engine,
    event,
    insert,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    DisconnectionError,
    IntegrityError,
    NoSuchModuleError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.sql.elements import BindParameter
from sqlalchemy.types import TypeDecorator

from services.config_files import ConfigError
from services.domain.errors import ServiceUnavailable

T = TypeVar("T")
log = logging.getLogger("diboas.db")


def new_metadata() -> MetaData:
    """A service's schema, with names for constraints and indexes that migrations can rely on."""
    return MetaData(naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s", "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s", "pk": "pk_%(table_name)s",
    })


def as_utc(value: dt.datetime | None) -> dt.datetime | None:
    """A timestamp read back from the database, in UTC (SQLite returns it without its zone)."""
    return value if value is None or value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


# Statements on the hot paths are built once and run with their values each time: building a
# statement (and its cache key) per call costs SQLAlchemy two to four times what executing it
# does (docs/benchmarks.md, "Where the time goes").
def param(column: Column, name: str | None = None) -> BindParameter:
    """A named placeholder typed as `column`, for a statement built once: '<table>_<column>' by
    default (a name that never collides with the column's own in an UPDATE's SET)."""
    return bindparam(name or f"{column.table.name}_{column.name}", type_=column.type)


@functools.cache
def insert_into(table: Table) -> Insert:
    """INSERT INTO `table`, built once; run it with a dict of column values (or a list of them)."""
    return insert(table)


# Ids that count rows (ledger entries, events, work items): 64-bit. BIGINT on PostgreSQL; on SQLite,
# INTEGER, which is 64-bit there and must stay the type of an autoincrementing key (the rowid).
BigId = BigInteger().with_variant(Integer, "sqlite")


class ExactDecimal(TypeDecorator):
    """A Decimal stored without loss: NUMERIC(38, 18) on PostgreSQL, canonical text on SQLite
    (whose NUMERIC is a float). Arithmetic on amounts happens in Python, on locked rows."""

    impl = String(64)
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name == "postgresql":
            return dialect.type_descriptor(Numeric(38, 18, asdecimal=True))
        return dialect.type_descriptor(String(64))

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if not isinstance(value, Decimal):
            raise TypeError(f"amounts must be Decimal, got {type(value).__name__}")
        return value if dialect.name == "postgresql" else f"{value:f}"

    def process_result_value(self, value, dialect):
        return None if value is None else Decimal(value)


def _sqlite_setup(engine: Engine, writer: bool) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves (below)
        cursor = dbapi_connection.cursor()
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON", "busy_timeout=10000"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection):
        # Writers take the lock up front (no "database is locked" half-way through); readers
        # begin deferred and, in WAL mode, never wait for a writer.
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")


def database_url(url: str) -> URL:
    """The parsed URL of a supported database, its SQLite folder created; ConfigError otherwise."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"database URL '{url}' is not a valid SQLAlchemy URL") from None
    shown = parsed.render_as_string(hide_password=True)
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise ConfigError(f"database URL '{shown}': only sqlite:/// and postgresql+psycopg:// are supported")
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise ConfigError(f"database URL '{shown}': an in-memory SQLite database cannot be shared; use a file")
        try:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"database URL '{shown}': cannot create its folder: {exc.strerror or exc}") from None
    return parsed


def create(url: URL, **options) -> Engine:
    try:
        return create_engine(url, **options)
    except (NoSuchModuleError, ImportError) as exc:
        shown = url.render_as_string(hide_password=True)
        raise ConfigError(f"database URL '{shown}': no driver for it ({exc}); use postgresql+psycopg://") from None


def make_engine(url: str, pool_size: int = 8, writer: bool = True) -> Engine:
    parsed = database_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create(parsed, pool_size=pool_size, max_overflow=0, pool_timeout=30)
        _sqlite_setup(engine, writer)
        return engine
    return create(parsed, pool_size=pool_size, max_overflow=0, pool_timeout=30, pool_pre_ping=True,
                  connect_args={"connect_timeout": 5})


# PostgreSQL advisory lock key held while a schema is migrated (any 64-bit number of our own).
MIGRATION_LOCK = 0x6469626F6173


def migrate(engine: Engine, migrations: Path) -> None:
    """Bring the schema to the newest revision of `migrations` (an Alembic script folder). Several
    instances starting at once migrate one after the other: the others then find the schema at
    its newest revision (PostgreSQL: an advisory lock for the transaction; SQLite: its writer's
    lock, taken when the transaction begins)."""
    config = Config()
    config.set_main_option("script_location", str(migrations))
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


@contextlib.contextmanager
def scratch_schema(server_url: str, prefix: str) -> Iterator[str]:
    """A database URL on a PostgreSQL server whose search_path is a new, empty schema, dropped
    afterwards: a private database for one test or benchmark run."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server_url)
    try:
        with admin.begin() as connection:
            connection.exec_driver_sql(f'CREATE SCHEMA "{name}"')
        yield f"{server_url}?options=-csearch_path%3D{name}"
    finally:
        with admin.begin() as connection:
            connection.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        admin.dispose()


class _Group:
    """One shared write transaction and the units that ran in it."""

    def __init__(self, connection: Connection):
        self.connection = connection
        self.transaction = connection.begin()
        self.units = 0
        self.broken: BaseException | None = None     # the transaction cannot commit: why
        self.error: BaseException | None = None      # it did not commit: why
        self.ended = threading.Event()

    def sql(self, statement: str) -> None:
        """A savepoint statement, straight to the driver: SQLAlchemy's own savepoints cost some
        200 µs of Python each way, the driver's a few (docs/benchmarks.md)."""
        try:
            self.connection.connection.dbapi_connection.execute(statement)
        except BaseException as exc:
            self.broken = self.broken or exc
            raise

    def wait(self) -> None:
        """Until the group has committed; raises what ended it otherwise."""
        self.ended.wait()
        if self.error is not None:
            raise self.error


class GroupCommit:
    """Write transactions of one process on one SQLite database, group-committed.

    SQLite lets one connection write at a time; writers on separate connections wait for its
    lock by sleeping and polling (a millisecond, then more), which under load costs more than
    the writes. Here the process's writers take turns on one connection instead: each
    `transaction()` runs in a SAVEPOINT of a shared transaction (so one that raises undoes only
    its own writes), and the writer that finds nobody waiting for a turn, or a group of
    `max_units`, commits for all of them. A caller's block returns only once that commit is
    done, so what it wrote is durable when it goes on, exactly as with a transaction of its own;
    if the commit fails, every unit of the group raises and none of their writes remain. A unit
    whose failure may have broken the shared transaction (a database error other than a
    constraint) ends the group: the others roll back with it and raise the same error."""

    SAVEPOINT = "unit"

    def __init__(self, engine: Engine, max_units: int = 64):
        self._engine, self._max_units = engine, max_units
        self._turn = threading.Lock()          # the shared connection: one unit at a time
        self._count = threading.Lock()
        self._waiting = 0                      # threads waiting for their turn
        self._group: _Group | None = None
        self._holder: int | None = None        # the thread whose turn it is
        self._connection: Connection | None = None   # kept between groups; replaced after a failure

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        if self._holder == threading.get_ident():
            raise RuntimeError("a write transaction cannot open another one (use the connection it gives)")
        with self._count:
            self._waiting += 1
        self._turn.acquire()
        with self._count:
            self._waiting -= 1
        self._holder = threading.get_ident()
        try:
            group = self._group = self._group or self._open()
        except BaseException:
            self._holder = None
            self._turn.release()
            raise
        try:
            group.sql(f"SAVEPOINT {self.SAVEPOINT}")
            try:
                yield group.connection
            except BaseException as exc:
                if isinstance(exc, DBAPIError) and not isinstance(exc, IntegrityError):
                    group.broken = group.broken or exc
                else:
                    self._undo(group)
                raise
            group.sql(f"RELEASE {self.SAVEPOINT}")
            group.units += 1
        finally:
            self._end_turn(group)
        group.wait()

    def _undo(self, group: _Group) -> None:
        """Roll a unit back to its savepoint; if even that fails, the group is broken."""
        try:
            group.sql(f"ROLLBACK TO {self.SAVEPOINT}")
            group.sql(f"RELEASE {self.SAVEPOINT}")
        except BaseException:  # noqa: BLE001 - the unit raises its own error; the group ends (sql() noted why)
            pass

    def _open(self) -> _Group:
        if self._connection is None:
            self._connection = self._engine.connect()
        try:
            return _Group(self._connection)
        except BaseException:
            self._discard()
            raise

    def _discard(self) -> None:
        """The connection is not used again, whatever state a failure left it in."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.invalidate()
            connection.close()

    def _end_turn(self, group: _Group) -> None:
        """Commit (or, broken, roll back) the group if nobody is waiting or it is full; next turn."""
        try:
            with self._count:
                last = self._waiting == 0
            if group.broken is not None or last or group.units >= self._max_units:
                self._group = None
                try:
                    if group.broken is not None:
                        group.error = group.broken
                        group.transaction.rollback()
                    else:
                        group.transaction.commit()
                except BaseException as exc:  # noqa: BLE001 - handed to every unit of the group
                    group.error = group.error or exc
                    self._discard()
                finally:
                    group.ended.set()
        finally:
            self._holder = None
            self._turn.release()

    def close(self) -> None:
        with self._turn:
            if self._connection is not None:
                self._connection.close()
                self._connection = None


class Database:
    """One service's database: an engine, its migrations, and a thread pool to use it from asyncio."""

    def __init__(self, url: str, migrations: Path | None, workers: int = 8):
        self.url = url
        self.engine = make_engine(url, pool_size=workers)
        # SQLite: a second pool for reads, which must not take the write lock.
        sqlite = self.engine.dialect.name == "sqlite"
        self._reader = make_engine(url, pool_size=workers, writer=False) if sqlite else self.engine
        self._migrations = migrations
        self._group_commit = GroupCommit(self.engine) if sqlite else None
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="db")

    def migrate(self) -> None:
        try:
            migrate(self.engine, self._migrations)
        except SQLAlchemyError as exc:
            shown = self.engine.url.render_as_string(hide_password=True)
            raise ConfigError(f"database {shown} cannot be prepared: {str(exc).splitlines()[0]}") from None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A connection inside one transaction: committed when the block ends, rolled back if it
        raises (on SQLite, group-committed with the process's other writers: see GroupCommit)."""
        if self._group_commit is not None:
            with self._group_commit.transaction() as connection:
                yield connection
        else:
            with self.engine.begin() as connection:
                yield connection

    @contextlib.contextmanager
    def reading(self) -> Iterator[Connection]:
        """A connection for reads only (a consistent snapshot; on SQLite it never waits for writers)."""
        with self._reader.connect() as connection:
            yield connection

    async def run(self, fn: Callable[..., T], *args) -> T:
        """Run blocking database work off the event loop, in the caller's context (as
        asyncio.to_thread does: the current span, so an event or work item written there carries
        the caller's trace, and log lines its trace id). A database that cannot be reached (or
        stays locked) is ServiceUnavailable for the caller, who may retry: not an internal error."""
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, contextvars.copy_context().run, fn, *args)
        except (OperationalError, DisconnectionError) as exc:
            # Where the database is and what the driver said stay in the log: callers learn only
            # that it is away and that they may retry.
            shown = self.engine.url.render_as_string(hide_password=True)
            why = str(getattr(exc, "orig", None) or exc).splitlines()[0]
            log.warning("database %s is unavailable: %s", shown, why, extra={"reason": "DATABASE_UNAVAILABLE"})
            raise ServiceUnavailable("the service's database is unavailable; retry shortly",
                                     reason="DATABASE_UNAVAILABLE") from None

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        if self._group_commit is not None:
            self._group_commit.close()
        self.engine.dispose()
        self._reader.dispose()
