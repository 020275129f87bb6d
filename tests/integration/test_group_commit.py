"""Group commit of SQLite's write transactions (services/runtime/db.py, GroupCommit), on a real
SQLite file: every unit that returned is committed, one that raised left nothing, and a group
whose commit fails (or whose shared transaction a unit broke) leaves nothing of any of its units
and tells each of them."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, event, insert, select
from sqlalchemy.exc import IntegrityError, OperationalError

from services.runtime.db import Database

metadata = MetaData()
rows = Table("rows", metadata, Column("id", Integer, primary_key=True), Column("who", String(32), nullable=False))


@pytest.fixture
def db(tmp_path):
    database = Database(f"sqlite:///{tmp_path / 'group.db'}", migrations=None, workers=16)
    metadata.create_all(database.engine)
    yield database
    database.close()


def committed(db: Database) -> set[int]:
    with db.reading() as connection:
        return {r.id for r in connection.execute(select(rows.c.id))}


def write(db: Database, row_id: int) -> bool:
    """One unit; once it returns, a reader on another connection sees its row."""
    with db.transaction() as connection:
        connection.execute(insert(rows).values(id=row_id, who=threading.current_thread().name))
    return row_id in committed(db)


def wait_for_turn_takers(db: Database, n: int) -> None:
    deadline = time.monotonic() + 5
    while db._group_commit._waiting < n:
        assert time.monotonic() < deadline, "the other writer never asked for its turn"
        time.sleep(0.001)


def test_concurrent_writers_are_committed_in_fewer_transactions_and_each_sees_its_write(db):
    commits = []
    event.listen(db.engine, "commit", lambda connection: commits.append(1))
    with ThreadPoolExecutor(16) as pool:
        visible = list(pool.map(lambda i: write(db, i), range(800)))
    assert all(visible), "a unit returned before its write was committed"
    assert committed(db) == set(range(800))
    assert len(commits) < 800, f"{len(commits)} commits for 800 units: nothing was grouped"


def test_a_unit_that_raises_leaves_nothing_and_the_rest_of_its_group_commits(db):
    def unit(i: int) -> str:
        try:
            with db.transaction() as connection:
                connection.execute(insert(rows).values(id=i, who="x"))
                if i % 3 == 0:
                    raise ValueError("refused")
        except ValueError:
            return "refused"
        return "ok"

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(unit, range(300)))
    assert committed(db) == {i for i in range(300) if i % 3}
    assert outcomes.count("refused") == 100


def test_a_constraint_violation_fails_only_its_own_unit(db):
    write(db, 1)
    held = threading.Event()

    def first():
        with db.transaction() as connection:         # its group stays open while the other waits
            connection.execute(insert(rows).values(id=2, who="first"))
            wait_for_turn_takers(db, 1)
            held.set()

    def duplicate():
        with db.transaction() as connection:
            connection.execute(insert(rows).values(id=1, who="again"))

    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(first)
        time.sleep(0.05)
        b = pool.submit(duplicate)
        a.result(timeout=10)
        with pytest.raises(IntegrityError):
            b.result(timeout=10)
    assert held.is_set()
    assert committed(db) == {1, 2}


def test_a_database_error_in_one_unit_rolls_back_its_whole_group_and_every_unit_hears_of_it(db):
    def first():
        with db.transaction() as connection:
            connection.execute(insert(rows).values(id=10, who="first"))
            wait_for_turn_takers(db, 1)

    def broken():
        with db.transaction() as connection:
            connection.execute(insert(rows).values(id=11, who="broken"))
            connection.exec_driver_sql("SELECT * FROM no_such_table")

    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(first)
        time.sleep(0.05)
        b = pool.submit(broken)
        for future in (a, b):
            with pytest.raises(OperationalError):
                future.result(timeout=10)
    assert committed(db) == set()
    assert write(db, 12), "the next unit starts a new group"


def test_a_commit_that_fails_fails_every_unit_of_the_group_and_keeps_none_of_them(db):
    failing = threading.Event()

    def refuse(connection):
        if failing.is_set():
            raise OperationalError("COMMIT", {}, Exception("disk I/O error"))
    event.listen(db.engine, "commit", refuse)
    failing.set()
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(write, db, i) for i in range(40)]
        for future in futures:
            with pytest.raises(OperationalError):
                future.result(timeout=10)
    failing.clear()
    assert committed(db) == set()
    assert write(db, 41)


def test_a_write_transaction_inside_another_is_refused_instead_of_waiting_forever(db):
    with pytest.raises(RuntimeError, match="cannot open another"):
        with db.transaction():
            with db.transaction():
                pass
    assert write(db, 1)
