"""SQLite's batches (services/runtime/db.py, Batches), on a real SQLite file: jobs of `Database.run`
are committed together, a job's caller hears of it only once its batch committed, a job that
raises leaves nothing, and a batch whose commit fails (or whose shared transaction a job broke)
leaves nothing of any of its jobs and tells each of them."""
from __future__ import annotations

import asyncio
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, event, insert, select
from sqlalchemy.exc import IntegrityError, OperationalError

from services.domain.errors import ServiceUnavailable
from services.runtime.db import Database

metadata = MetaData()
rows = Table("rows", metadata, Column("id", Integer, primary_key=True), Column("who", String(32), nullable=False))


@pytest.fixture
def db(tmp_path):
    database = Database(f"sqlite:///{tmp_path / 'group.db'}", migrations=None)
    metadata.create_all(database.engine)
    yield database
    database.close()


def committed(db: Database) -> set[int]:
    """What another connection sees: the committed rows."""
    with db._reader.connect() as connection:
        return {r.id for r in connection.execute(select(rows.c.id))}


def read_committed(db: Database) -> set[int]:
    """What `Database.reading` sees: in a callback after a commit (on the batch thread, but no
    longer in its batch), what is committed."""
    with db.reading() as connection:
        return {r.id for r in connection.execute(select(rows.c.id))}


def insert_row(db: Database, row_id: int) -> None:
    with db.transaction() as connection:
        connection.execute(insert(rows).values(id=row_id, who=threading.current_thread().name))


class Gate:
    """A job that holds its batch open until the test has queued the jobs that are to join it."""

    def __init__(self):
        self.entered, self.opened = threading.Event(), threading.Event()

    def job(self) -> None:
        self.entered.set()
        assert self.opened.wait(10), "the gate was never opened"

    async def start(self, db: Database) -> asyncio.Task:
        task = asyncio.create_task(db.run(self.job))
        while not self.entered.is_set():
            await asyncio.sleep(0.001)
        return task


async def test_concurrent_jobs_are_committed_in_fewer_transactions_and_each_caller_sees_its_write(db):
    commits = []
    event.listen(db.engine, "commit", lambda connection: commits.append(1))

    async def caller(first: int) -> bool:
        for row_id in range(first, first + 50):
            await db.run(insert_row, db, row_id)
            if row_id not in committed(db):
                return False
        return True
    visible = await asyncio.gather(*(caller(k * 50) for k in range(16)))
    assert all(visible), "a caller heard of its write before it was committed"
    assert committed(db) == set(range(800))
    assert len(commits) < 800, f"{len(commits)} commits for 800 jobs: nothing was batched"


async def test_a_job_that_raises_leaves_nothing_and_the_rest_of_its_batch_commits(db):
    def job(i: int) -> str:
        try:
            with db.transaction() as connection:
                connection.execute(insert(rows).values(id=i, who="x"))
                if i % 3 == 0:
                    raise ValueError("refused")
        except ValueError:
            return "refused"
        return "ok"
    outcomes = await asyncio.gather(*(db.run(job, i) for i in range(300)))
    assert committed(db) == {i for i in range(300) if i % 3}
    assert outcomes.count("refused") == 100


async def test_a_constraint_violation_fails_only_its_own_job_and_a_later_job_reads_what_earlier_ones_wrote(db):
    await db.run(insert_row, db, 1)
    gate = Gate()
    held = await gate.start(db)
    first = asyncio.create_task(db.run(insert_row, db, 2))
    duplicate = asyncio.create_task(db.run(insert_row, db, 1))

    def read() -> set[int]:
        with db.reading() as connection:
            return {r.id for r in connection.execute(select(rows.c.id))}
    seen = asyncio.create_task(db.run(read))
    await asyncio.sleep(0.05)
    assert not first.done(), "answered before its batch was committed"
    gate.opened.set()
    await held
    await first
    with pytest.raises(IntegrityError):
        await duplicate
    assert await seen == {1, 2}, "a job reads in its batch's transaction, after the jobs before it"
    assert committed(db) == {1, 2}


async def test_a_database_error_in_one_job_rolls_back_its_whole_batch_and_every_job_hears_of_it(db):
    def broken() -> None:
        with db.transaction() as connection:
            connection.execute(insert(rows).values(id=11, who="broken"))
            connection.exec_driver_sql("SELECT * FROM no_such_table")
    gate = Gate()
    held = await gate.start(db)
    before = asyncio.create_task(db.run(insert_row, db, 10))
    breaking = asyncio.create_task(db.run(broken))
    after = asyncio.create_task(db.run(insert_row, db, 12))
    await asyncio.sleep(0.05)
    gate.opened.set()
    for task in (held, before, breaking):
        with pytest.raises(ServiceUnavailable):
            await task
    await after                                 # queued behind the broken batch: a batch of its own
    assert committed(db) == {12}


async def test_a_commit_that_fails_fails_every_job_of_the_batch_and_keeps_none_of_them(db):
    failing = threading.Event()

    def refuse(connection):
        if failing.is_set():
            raise OperationalError("COMMIT", {}, Exception("disk I/O error"))
    event.listen(db.engine, "commit", refuse)
    failing.set()
    outcomes = await asyncio.gather(*(db.run(insert_row, db, i) for i in range(40)), return_exceptions=True)
    assert all(isinstance(outcome, ServiceUnavailable) for outcome in outcomes), outcomes
    failing.clear()
    assert committed(db) == set()
    await db.run(insert_row, db, 41)
    assert committed(db) == {41}


async def test_callbacks_after_commit_run_once_committed_and_never_for_a_batch_that_failed(db):
    heard = []

    def job(row_id: int) -> None:
        insert_row(db, row_id)
        db.after_commit(lambda: heard.append((row_id, row_id in read_committed(db))))
    await db.run(job, 1)
    assert heard == [(1, True)]

    def breaking() -> None:
        with db.reading() as connection:
            connection.exec_driver_sql("SELECT * FROM no_such_table")
    gate = Gate()
    held = await gate.start(db)
    tasks = [asyncio.create_task(db.run(job, 2)), asyncio.create_task(db.run(breaking))]
    await asyncio.sleep(0.05)
    gate.opened.set()
    await asyncio.gather(held, *tasks, return_exceptions=True)
    assert heard == [(1, True)], "a callback ran for a batch that was rolled back"
    assert committed(db) == {1}


async def test_a_job_whose_caller_gave_up_before_it_started_is_not_run(db):
    gate = Gate()
    held = await gate.start(db)
    given_up = asyncio.create_task(db.run(insert_row, db, 5))
    await asyncio.sleep(0.01)
    given_up.cancel()
    gate.opened.set()
    await held
    await db.run(insert_row, db, 6)
    assert committed(db) == {6}


async def test_a_write_transaction_inside_another_is_refused_instead_of_waiting_forever(db):
    def nested() -> None:
        with db.transaction():
            with db.transaction():
                pass
    with pytest.raises(RuntimeError, match="cannot open another"):
        await db.run(nested)
    await db.run(insert_row, db, 1)
    assert committed(db) == {1}


def test_writers_on_other_threads_take_turns_on_the_lock_with_the_batches(db):
    """Code outside `run` (a tool, a test) writes in transactions of its own, alongside the batches."""
    async def batches() -> None:
        await asyncio.gather(*(db.run(insert_row, db, i) for i in range(200)))
    with ThreadPoolExecutor(4) as pool:
        others = [pool.submit(insert_row, db, 1000 + i) for i in range(200)]
        asyncio.run(batches())
        for future in others:
            future.result(timeout=30)
    assert committed(db) == set(range(200)) | set(range(1000, 1200))


async def test_when_a_batch_cannot_begin_every_job_queued_hears_of_it_at_once(tmp_path):
    """Another process holds the write lock past the busy timeout: the jobs queued behind the
    failed BEGIN fail with it, rather than each waiting out the timeout again in turn."""
    db = Database(f"sqlite:///{tmp_path / 'locked.db'}", migrations=None)
    metadata.create_all(db.engine)
    db.engine.dispose()
    event.listen(db.engine, "connect", lambda dbapi, _record: dbapi.execute("PRAGMA busy_timeout=500"))
    other = sqlite3.connect(db.engine.url.database, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        loop = asyncio.get_running_loop()
        started = loop.time()
        outcomes = await asyncio.gather(*(db.run(insert_row, db, i) for i in range(6)), return_exceptions=True)
        took = loop.time() - started
        other.execute("ROLLBACK")
        assert all(isinstance(outcome, ServiceUnavailable) for outcome in outcomes), outcomes
        assert took < 1.5, f"{took:.1f}s: the queued jobs waited out the busy timeout one after another"
        await db.run(insert_row, db, 7)
        assert committed(db) == {7}
    finally:
        other.close()
        db.close()


async def test_the_jobs_rolled_back_with_another_hear_only_that_they_may_retry_not_its_error(db):
    def broken() -> None:
        with db.transaction() as connection:
            connection.exec_driver_sql("INSERT INTO no_such_table VALUES ('wallet-7', 100)")
    gate = Gate()
    held = await gate.start(db)
    innocent = asyncio.create_task(db.run(insert_row, db, 1))
    breaking = asyncio.create_task(db.run(broken))
    await asyncio.sleep(0.05)
    gate.opened.set()
    with pytest.raises(ServiceUnavailable) as heard:
        await innocent
    assert "wallet-7" not in str(heard.value) and "no_such_table" not in str(heard.value)
    with pytest.raises(ServiceUnavailable):
        await breaking
    with pytest.raises(ServiceUnavailable):
        await held
    assert committed(db) == set()


async def test_an_answer_a_future_refuses_does_not_keep_the_others_of_its_batch_waiting(db):
    def odd() -> None:
        raise StopIteration
    gate = Gate()
    held = await gate.start(db)
    tasks = [asyncio.create_task(db.run(odd)), asyncio.create_task(db.run(insert_row, db, 1))]
    await asyncio.sleep(0.05)
    gate.opened.set()
    await asyncio.wait_for(held, 5)
    with pytest.raises(RuntimeError, match="StopIteration"):
        await asyncio.wait_for(tasks[0], 5)
    await asyncio.wait_for(tasks[1], 5)
    assert committed(db) == {1}


async def test_a_failing_callback_after_commit_neither_stops_the_thread_nor_loses_answers(db):
    def job(row_id: int) -> int:
        insert_row(db, row_id)
        db.after_commit(lambda: (_ for _ in ()).throw(SystemExit("a hook that exits")))
        return row_id
    assert await asyncio.wait_for(db.run(job, 1), 5) == 1
    assert await asyncio.wait_for(db.run(job, 2), 5) == 2
    assert committed(db) == {1, 2}


async def test_callbacks_after_commit_run_in_the_context_of_the_job_that_registered_them(db):
    import contextvars
    who = contextvars.ContextVar("who", default=None)
    heard = []

    def job(name: str) -> None:
        insert_row(db, len(name))
        db.after_commit(lambda: heard.append(who.get()))

    async def caller(name: str) -> None:
        who.set(name)
        await db.run(job, name)
    await asyncio.gather(asyncio.create_task(caller("a")), asyncio.create_task(caller("bb")))
    assert sorted(heard) == ["a", "bb"]


async def test_a_batch_whose_transaction_sqlite_ended_by_itself_is_not_reported_committed(db):
    def ended_quietly() -> None:
        insert_row(db, 1)
        with db.reading() as connection:
            connection.connection.dbapi_connection.execute("ROLLBACK")     # as SQLite does on a full disk
    with pytest.raises(ServiceUnavailable):
        await db.run(ended_quietly)
    assert committed(db) == set()
    await db.run(insert_row, db, 2)
    assert committed(db) == {2}


def test_outside_run_too_a_write_transaction_inside_another_is_refused_at_once(db):
    with pytest.raises(RuntimeError, match="cannot open another"):
        with db.transaction():
            with db.transaction():
                pass
    insert_row(db, 1)
    assert committed(db) == {1}
