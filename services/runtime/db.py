"""Persistence plumbing shared by the services: engines, transactions, exact amounts, migrations.

The same code runs on the embedded default (one SQLite file per service, WAL mode) and on
PostgreSQL, chosen by the service's database URL in the topology. Domain code never sees
this module; repositories do.

Database work is synchronous SQLAlchemy run off the event loop (`Database.run`), so the
loop that serves gRPC never blocks on I/O and service-layer code stays plain functions. On
SQLite, which has one writer at a time anyway, a process's jobs run on one thread in batches,
each batch one transaction whose commit answers all its jobs (`Batches`): a handful of small
units cost less that way than each in a thread hop and a commit of its own. On PostgreSQL a
small pool of threads runs the jobs side by side. SQLite's write transactions start with BEGIN
IMMEDIATE, so a writer in another process queues for the lock instead of failing half-way with
"database is locked".
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import datetime as dt
import functools
import logging
import sqlite3
import threading
import time
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


# SQLite: how long a statement waits for another connection's lock before "database is locked".
BUSY_TIMEOUT_MS = 10_000


def _sqlite_setup(engine: Engine, writer: bool) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves (below)
        cursor = dbapi_connection.cursor()
        # The busy timeout first: switching to WAL waits for another process's lock too (with the
        # driver's default of 5 s, a second instance starting beside a slow migration gave up).
        for pragma in (f"busy_timeout={BUSY_TIMEOUT_MS}", "journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON"):
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
# SQLite: how long a migration waits, in all, for other processes' locks (instances of one
# service starting together on one file migrate in turn, each holding the lock for its whole
# migration, which takes seconds on a machine busy starting every process at once).
MIGRATION_WAIT_SECONDS = 120.0


def migrate(engine: Engine, migrations: Path) -> None:
    """Bring the schema to the newest revision of `migrations` (an Alembic script folder). Several
    instances starting at once migrate one after the other: the others then find the schema at
    its newest revision (PostgreSQL: an advisory lock for the transaction; SQLite: its writer's
    lock, taken when the transaction begins)."""
    config = Config()
    config.set_main_option("script_location", str(migrations))
    deadline = time.monotonic() + MIGRATION_WAIT_SECONDS
    while True:
        try:
            with engine.begin() as connection:
                if connection.dialect.name == "postgresql":
                    connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
            return
        except OperationalError as exc:
            if not (_sqlite_locked(exc) and time.monotonic() < deadline):
                raise
            log.info("database %s is locked by another process (migrating too?); waiting",
                     engine.url.render_as_string(hide_password=True))
            time.sleep(0.5)


def _sqlite_locked(exc: OperationalError) -> bool:
    """SQLite's "database is locked": another connection held its lock past the busy timeout."""
    return isinstance(exc.orig, sqlite3.OperationalError) and "locked" in str(exc.orig)


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


class _Batch:
    """One transaction of the batch thread and the jobs that ran in it."""

    def __init__(self, connection: Connection):
        self.connection = connection
        self.transaction = connection.begin()
        self.broken: BaseException | None = None     # the transaction cannot commit: why
        self.in_unit = False                         # a job's write transaction is open
        self.after_commit: list[tuple[contextvars.Context, Callable[[], None]]] = []

    def sql(self, statement: str) -> None:
        """A savepoint statement, straight to the driver: SQLAlchemy's own savepoints cost some
        200 µs of Python each way, the driver's a few (docs/benchmarks.md)."""
        try:
            self.connection.connection.dbapi_connection.execute(statement)
        except BaseException as exc:
            self.broken = self.broken or exc
            raise

    def note(self, exc: BaseException) -> None:
        """A job's block raised `exc`: a database error other than a constraint may have broken
        the shared transaction, which then cannot commit."""
        if isinstance(exc, DBAPIError) and not isinstance(exc, IntegrityError):
            self.broken = self.broken or exc


# A job of the batch thread: the loop to answer on, the future to answer, the work.
_Job = tuple[asyncio.AbstractEventLoop, asyncio.Future, Callable[[], object]]


class Batches:
    """SQLite: the database work of one process, run on one thread in batches, each batch one
    transaction.

    SQLite has one writer at a time, and a small unit of work costs less than handing it to a
    thread and back (docs/benchmarks.md, "One database thread, in batches"). So every job
    (`submit`) goes to one thread, which runs the jobs queued meanwhile one after another, up to
    `max_jobs`, in one transaction on one connection: a job's write transaction
    (`Database.transaction`) is a SAVEPOINT of it, so one that raises undoes only its own writes,
    and its reads (`Database.reading`) see what the jobs before it wrote. When no job is left
    (or the batch is full) the thread commits, and only then answers each job's caller, all of
    one event loop in one wake-up: what a caller was told is durable, exactly as with a
    transaction of its own. If the commit fails, or a job's database error may have broken the
    shared transaction (any but a constraint's), none of the batch's writes remain: that job
    gets its own error, the others ServiceUnavailable (they may retry); the jobs queued after it
    run in a new batch. A batch takes the write lock when it begins (BEGIN IMMEDIATE), so a
    writer in another process waits for it instead of failing half-way."""

    SAVEPOINT = "unit"

    def __init__(self, engine: Engine, max_jobs: int = 64):
        self._engine, self._max_jobs = engine, max_jobs
        self._jobs: collections.deque[_Job] = collections.deque()
        self._ready = threading.Condition()
        self._idle = False                       # the thread waits for a job (submit wakes it)
        self._closed = False
        self._batch: _Batch | None = None        # the batch being run
        self._connection: Connection | None = None   # kept between batches; replaced after a failure
        self._thread = threading.Thread(target=self._serve, name="db-batches", daemon=True)
        self._thread.start()

    def here(self) -> bool:
        """Whether the caller is a job of a batch being run (not, say, a callback after its commit)."""
        return self._batch is not None and threading.current_thread() is self._thread

    def submit(self, work: Callable[[], T]) -> asyncio.Future:
        """Queue `work`; the future (of the running loop) has its result once its batch committed."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._ready:
            if self._closed:
                raise RuntimeError("the database is closed")
            self._jobs.append((loop, future, work))
            if self._idle:
                self._idle = False
                self._ready.notify()
        return future

    def _next(self) -> _Job | None:
        """The next job of the current batch, or None when the thread is to stop."""
        with self._ready:
            while not self._jobs:
                if self._closed:
                    return None
                self._idle = True
                self._ready.wait()
            return self._jobs.popleft()

    def _serve(self) -> None:
        while (job := self._next()) is not None:
            try:
                self._run_batch(job)
            except BaseException:  # noqa: BLE001 - the thread must outlive a bug in one batch
                log.exception("a batch of database work failed unexpectedly")

    def _run_batch(self, first: _Job) -> None:
        done: list[tuple[_Job, object, BaseException | None]] = []
        try:
            batch = self._batch = self._open()
        except BaseException as exc:  # noqa: BLE001 - the jobs hear why their batch could not begin
            # Every job queued now would wait for the same lock (or the same broken file) in
            # turn, each for the whole busy timeout: they all hear of it at once instead.
            with self._ready:
                waiting, self._jobs = list(self._jobs), collections.deque()
            self._answer([(job, None, exc) for job in (first, *waiting)])
            return
        job: _Job | None = first
        while job is not None:
            if not job[1].cancelled():           # its caller gave up before it started
                try:
                    done.append((job, job[2](), None))
                except BaseException as exc:  # noqa: BLE001 - handed to the job's caller
                    done.append((job, None, exc))
            if batch.broken is not None or len(done) >= self._max_jobs:
                break
            with self._ready:
                job = self._jobs.popleft() if self._jobs else None
        self._batch = None
        failure = self._end(batch)
        if failure is not None:
            # The job whose error broke the batch hears its own error; the others, whose work was
            # rolled back with it, that they may retry (not another request's SQL and values).
            shown = self._engine.url.render_as_string(hide_password=True)
            why = (str(getattr(failure, "orig", None) or failure).splitlines() or [repr(failure)])[0]
            log.warning("database %s: a batch of %d job(s) was rolled back: %s", shown, len(done), why,
                        extra={"reason": "BATCH_ROLLED_BACK"})
            done = [(job, None, error if error is failure else _rolled_back()) for job, _, error in done]
        else:
            for context, callback in batch.after_commit:
                try:
                    context.run(callback)
                except BaseException:  # noqa: BLE001 - a hook must not take the answers with it
                    log.exception("a callback after a commit failed")
        self._answer(done)

    def _end(self, batch: _Batch) -> BaseException | None:
        """Commit the batch (roll it back when broken); None, or why its jobs did not commit."""
        try:
            if batch.broken is None and not batch.connection.connection.dbapi_connection.in_transaction:
                # SQLite ended the transaction itself (an I/O error, a full disk) and the jobs did
                # not say: committing now would commit nothing and tell them it had.
                batch.broken = OperationalError("COMMIT", {}, Exception("the batch's transaction ended by itself"))
            if batch.broken is not None:
                batch.transaction.rollback()
                return batch.broken
            batch.transaction.commit()
            return None
        except BaseException as exc:  # noqa: BLE001 - handed to every job of the batch
            self._discard()
            return batch.broken or exc

    @staticmethod
    def _answer(done: list[tuple[_Job, object, BaseException | None]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for (loop, future, _), result, error in done:
            by_loop.setdefault(loop, []).append((future, result, error))
        for loop, answers in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, answers)
            except RuntimeError:        # the loop is closed: nobody waits for these any more
                pass

    def _open(self) -> _Batch:
        if self._connection is None:
            self._connection = self._engine.connect()
        try:
            return _Batch(self._connection)
        except BaseException:
            self._discard()
            raise

    def _discard(self) -> None:
        """The connection is not used again, whatever state a failure left it in."""
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.invalidate()
                connection.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A job's write transaction: a savepoint of its batch."""
        batch = self._batch
        if batch.in_unit:
            raise RuntimeError("a write transaction cannot open another one (use the connection it gives)")
        batch.in_unit = True
        try:
            batch.sql(f"SAVEPOINT {self.SAVEPOINT}")
            try:
                yield batch.connection
            except BaseException as exc:
                batch.note(exc)
                if batch.broken is None:
                    self._undo(batch)
                raise
            batch.sql(f"RELEASE {self.SAVEPOINT}")
        finally:
            batch.in_unit = False

    @contextlib.contextmanager
    def reading(self) -> Iterator[Connection]:
        """A job's reads: on its batch's connection (what the jobs before it wrote, included)."""
        batch = self._batch
        try:
            yield batch.connection
        except BaseException as exc:
            batch.note(exc)
            raise

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run `callback` once the current job's batch has committed (never if it does not), in
        the job's context (its trace and service name stay on what it logs)."""
        self._batch.after_commit.append((contextvars.copy_context(), callback))

    def _undo(self, batch: _Batch) -> None:
        """Roll a job's writes back to its savepoint; if even that fails, the batch is broken."""
        try:
            batch.sql(f"ROLLBACK TO {self.SAVEPOINT}")
            batch.sql(f"RELEASE {self.SAVEPOINT}")
        except BaseException:  # noqa: BLE001 - the job raises its own error; the batch ends (sql() noted why)
            pass

    def close(self) -> None:
        """Run the jobs queued already, then stop the thread."""
        with self._ready:
            self._closed = True
            self._ready.notify()
        self._thread.join()
        self._discard()


def _rolled_back() -> ServiceUnavailable:
    return ServiceUnavailable("the service's database rolled this request back with others; retry shortly",
                              reason="DATABASE_UNAVAILABLE")


def _settle(answers: list[tuple[asyncio.Future, object, BaseException | None]]) -> None:
    """On the caller's loop: each job's result (or error) to its future, unless it was cancelled."""
    for future, result, error in answers:
        if future.done():           # cancelled: its caller gave up waiting
            continue
        if isinstance(error, StopIteration):    # a future refuses it (it would end a coroutine)
            error = RuntimeError(f"a database job raised {error!r}")
        try:
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)
        except BaseException:  # noqa: BLE001 - one odd answer must not keep the others from theirs
            log.exception("a database job's answer could not be given")


class Database:
    """One service's database: an engine, its migrations, and a way to use it from asyncio
    (`run`): on SQLite, one thread running the process's jobs in batches (Batches); on
    PostgreSQL, a small pool of threads, each job in transactions of its own."""

    def __init__(self, url: str, migrations: Path | None, workers: int = 8):
        self.url = url
        self.engine = make_engine(url, pool_size=workers)
        # SQLite: a second pool for reads outside the batch thread, which must not take the write lock.
        sqlite = self.engine.dialect.name == "sqlite"
        self._reader = make_engine(url, pool_size=workers, writer=False) if sqlite else self.engine
        self._migrations = migrations
        self._batches = Batches(self.engine) if sqlite else None
        self._writing = threading.local()        # SQLite, outside `run`: this thread's transaction is open
        self._executor = None if sqlite else ThreadPoolExecutor(max_workers=workers, thread_name_prefix="db")

    def migrate(self) -> None:
        try:
            migrate(self.engine, self._migrations)
        except SQLAlchemyError as exc:
            shown = self.engine.url.render_as_string(hide_password=True)
            raise ConfigError(f"database {shown} cannot be prepared: {str(exc).splitlines()[0]}") from None

    def _batch_job(self) -> bool:
        return self._batches is not None and self._batches.here()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A connection inside one transaction: committed when the block ends, rolled back if it
        raises. In a job of `run` on SQLite, a savepoint of the job's batch, committed with it
        (see Batches): the job's caller hears of it only once it is."""
        if self._batch_job():
            with self._batches.transaction() as connection:
                yield connection
        elif self._batches is not None:
            # Outside `run` (a tool, a test): a transaction of its own. A second one opened inside
            # it would wait for the first's lock until the busy timeout: refused at once instead.
            if getattr(self._writing, "open", False):
                raise RuntimeError("a write transaction cannot open another one (use the connection it gives)")
            self._writing.open = True
            try:
                with self.engine.begin() as connection:
                    yield connection
            finally:
                self._writing.open = False
        else:
            with self.engine.begin() as connection:
                yield connection

    @contextlib.contextmanager
    def reading(self) -> Iterator[Connection]:
        """A connection for reads only (a consistent snapshot; on SQLite it never waits for
        writers, except in a job of `run`, which reads in its batch's transaction)."""
        if self._batch_job():
            with self._batches.reading() as connection:
                yield connection
        else:
            with self._reader.connect() as connection:
                yield connection

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run `callback` once what the caller wrote is committed: at once, or in a job of `run`
        on SQLite, after its batch commits (never if it does not)."""
        if self._batch_job():
            self._batches.after_commit(callback)
        else:
            callback()

    async def run(self, fn: Callable[..., T], *args) -> T:
        """Run blocking database work off the event loop, in the caller's context (as
        asyncio.to_thread does: the current span, so an event or work item written there carries
        the caller's trace, and log lines its trace id). A database that cannot be reached (or
        stays locked) is ServiceUnavailable for the caller, who may retry: not an internal error."""
        work = functools.partial(contextvars.copy_context().run, fn, *args)
        try:
            if self._batches is not None:
                return await self._batches.submit(work)
            return await asyncio.get_running_loop().run_in_executor(self._executor, work)
        except (OperationalError, DisconnectionError) as exc:
            # Where the database is and what the driver said stay in the log: callers learn only
            # that it is away and that they may retry.
            shown = self.engine.url.render_as_string(hide_password=True)
            why = str(getattr(exc, "orig", None) or exc).splitlines()[0]
            log.warning("database %s is unavailable: %s", shown, why, extra={"reason": "DATABASE_UNAVAILABLE"})
            raise ServiceUnavailable("the service's database is unavailable; retry shortly",
                                     reason="DATABASE_UNAVAILABLE") from None

    def close(self) -> None:
        if self._batches is not None:
            self._batches.close()
        else:
            self._executor.shutdown(wait=True)
        self.engine.dispose()
        self._reader.dispose()
