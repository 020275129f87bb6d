"""Prepared statements (services/runtime/prepared.py) on SQLite and PostgreSQL: what they write
SQLAlchemy reads back unchanged and the other way round, for every column type the services
use; their errors are SQLAlchemy's; statements they cannot run are refused when compiled."""
from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    TypeDecorator,
    bindparam,
    func,
    insert,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError

from services.runtime.db import BigId, Database, ExactDecimal, as_utc, param
from services.runtime.prepared import Prepared


class NoneAsDash(TypeDecorator):
    """A type that stores None as '-': its processors must see None both ways."""

    impl = String(8)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return "-" if value is None else value

    def process_result_value(self, value, dialect):
        return None if value == "-" else value


metadata = MetaData()
things = Table(
    "things", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("name", String(40), nullable=False, unique=True),
    Column("amount", ExactDecimal, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("blob", LargeBinary, nullable=False),
    Column("state", String(16), nullable=False),
    Column("count", Integer),
)
# Names SQLAlchemy must escape in its placeholders ('.', '%', a space).
odd = Table(
    "odd", metadata,
    Column("a.b", String(8), primary_key=True),
    Column("per cent%", NoneAsDash, nullable=False),
)
c = things.c
AT = dt.datetime(2026, 12, 5, 1, 2, 3, 456789, tzinfo=dt.timezone.utc)
ADD = Prepared(insert(things).returning(c.id))
ADD_MANY = Prepared(insert(things))
GET = Prepared(select(things).where(c.name == param(c.name)))
OPEN = Prepared(select(c.name).where(c.state.in_([literal("OPEN"), literal("NEW")])).order_by(c.name))
SET = Prepared(update(things).where(c.name == param(c.name), c.state != "CLOSED")
               .values(amount=param(c.amount), state=param(c.state)))
TOTAL = Prepared(select(func.count()).select_from(things))


@pytest.fixture
def db(database_url):
    database = Database(database_url, migrations=None)
    metadata.create_all(database.engine)
    yield database
    database.close()


def row(name: str, amount: str, state: str = "OPEN", count: int | None = 3) -> dict:
    return {"name": name, "amount": Decimal(amount), "at": AT, "blob": b"\x00\xffbytes", "state": state,
            "count": count}


def test_what_prepared_statements_write_reads_back_through_sqlalchemy_and_the_other_way(db):
    with db.transaction() as connection:
        first = ADD.run(connection, row("a", "12345678901234567890.123456789012345678")).scalar_one()
        connection.execute(insert(things), row("b", "-0.000000000000000001", state="NEW", count=None))
        assert ADD_MANY.run(connection, [row("c", "1"), row("d", "2", state="CLOSED")]).rowcount == 2
        assert ADD_MANY.run(connection, row("e", "3", state="CLOSED")).rowcount == 1   # no RETURNING of its own
    with db.reading() as connection:
        by_sqlalchemy = {r.name: r for r in connection.execute(select(things))}
        a, b = GET.run(connection, {"things_name": "a"}).first(), GET.run(connection, {"things_name": "b"}).first()
        assert OPEN.run(connection).scalars() == ["a", "b", "c"]
        assert TOTAL.run(connection).scalar_one() == 5
        assert GET.run(connection, {"things_name": "nobody"}).first() is None
    assert a.id == first == by_sqlalchemy["a"].id
    assert a.amount == Decimal("12345678901234567890.123456789012345678") == by_sqlalchemy["a"].amount
    assert b.amount == Decimal("-0.000000000000000001") == by_sqlalchemy["b"].amount
    assert a.at == by_sqlalchemy["a"].at and as_utc(a.at) == AT      # naive on SQLite, as SQLAlchemy reads it
    assert bytes(a.blob) == b"\x00\xffbytes" == bytes(by_sqlalchemy["b"].blob)
    assert (a.count, b.count) == (3, None)
    assert a._fields == tuple(things.c.keys())


def test_an_update_says_how_many_rows_it_changed(db):
    with db.transaction() as connection:
        ADD_MANY.run(connection, [row("a", "1"), row("z", "1", state="CLOSED")])
        changed = SET.run(connection, {"things_name": "a", "things_amount": Decimal("7.5"), "things_state": "NEW"})
        closed = SET.run(connection, {"things_name": "z", "things_amount": Decimal("9"), "things_state": "NEW"})
    assert (changed.rowcount, closed.rowcount) == (1, 0)
    with db.reading() as connection:
        assert connection.execute(select(c.amount, c.state).where(c.name == "a")).one() == (Decimal("7.5"), "NEW")
        assert connection.execute(select(c.amount).where(c.name == "z")).scalar_one() == Decimal("1")


def test_errors_are_sqlalchemys_and_undo_only_the_failed_transaction(db):
    with db.transaction() as connection:
        ADD.run(connection, row("a", "1"))
    with pytest.raises(IntegrityError), db.transaction() as connection:
        ADD.run(connection, row("b", "1"))
        ADD.run(connection, row("a", "2"))
    with db.reading() as connection:
        assert OPEN.run(connection).scalars() == ["a"]


def test_a_missing_value_is_named_before_anything_runs(db):
    with pytest.raises(KeyError, match="things_amount"), db.transaction() as connection:
        SET.run(connection, {"things_name": "a", "things_state": "NEW"})


def test_statements_it_cannot_run_are_refused_when_compiled(db):
    with db.reading() as connection:
        with pytest.raises(ValueError, match="IN list"):
            Prepared(select(things).where(c.name.in_(bindparam("names", expanding=True)))).run(
                connection, {"names": ["a"]})
        with pytest.raises(ValueError, match="IN list"):
            Prepared(select(things).where(c.state.in_(["OPEN", "NEW"]))).run(connection)
        with pytest.raises(ValueError, match="rendered into the SQL text"):
            Prepared(select(things).where(c.name == bindparam("name", "a", literal_execute=True))).run(connection)
        with pytest.raises(ValueError, match="one row at a time"):
            ADD.run(connection, [row("a", "1"), row("b", "1")])


def test_a_type_that_stores_none_as_something_else_sees_none_both_ways(db):
    add, get = Prepared(insert(odd)), Prepared(select(odd).where(odd.c["a.b"] == param(odd.c["a.b"])))
    with db.transaction() as connection:
        add.run(connection, {"a.b": "x", "per cent%": None})
        connection.execute(insert(odd), {"a.b": "y", "per cent%": None})
    with db.reading() as connection:
        stored = dict(connection.execute(text('SELECT "a.b", "per cent%" FROM odd')).all())
        assert stored == {"x": "-", "y": "-"}
        assert get.run(connection, {"odd_a.b": "y"}).first() == ("y", None)


def test_parameters_with_names_that_need_escaping_bind_to_the_right_placeholder(db):
    add = Prepared(insert(odd))
    both = Prepared(select(odd.c["per cent%"]).where(odd.c["a.b"] == param(odd.c["a.b"]),
                                                      odd.c["per cent%"] == param(odd.c["per cent%"], "p.c")))
    with db.transaction() as connection:
        add.run(connection, [{"a.b": "x", "per cent%": "one"}, {"a.b": "y", "per cent%": "two"}])
    with db.reading() as connection:
        assert both.run(connection, {"odd_a.b": "y", "p.c": "two"}).scalars() == ["two"]
        assert both.run(connection, {"odd_a.b": "y", "p.c": "one"}).scalars() == []


def test_a_connection_that_fails_before_the_statement_gives_sqlalchemys_error(db):
    connection = db.engine.connect()
    try:
        connection.connection.dbapi_connection.close()
        with pytest.raises(DBAPIError) as raised:
            TOTAL.run(connection)
        # Both dialects call it a lost connection, which is then never used again.
        assert connection.invalidated and raised.value.connection_invalidated
    finally:
        connection.invalidate()
        connection.close()
