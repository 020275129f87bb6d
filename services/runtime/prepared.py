"""Statements of the hot paths, compiled once per dialect and run on the DBAPI cursor.

SQLAlchemy's `Connection.execute` costs about 50 µs per statement on top of the 10 to 15 µs
SQLite itself takes (docs/benchmarks.md, "Statements without the execution context"): it builds
an execution context, runs the parameters through the compiled statement and wraps the cursor
in a Result, for every statement. A transfer runs about thirty statements, so that overhead was
the largest cost left in the services' database threads. `Prepared` keeps what SQLAlchemy
decides (the SQL text for the dialect, the order of the parameters, each type's bind and result
processing, the transaction the connection is in, the exception classes) and does only the
per-call part itself: values in, plain rows out.

Not every statement can be prepared: one with an IN list of values given at run time
(an expanding parameter), a value rendered into its text (literal_execute) or column defaults
computed in Python is refused when it is compiled; write it with a fixed number of parameters, or run it with `Connection.execute`.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

from sqlalchemy import Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement


@dataclass(frozen=True)
class _Compiled:
    sql: str
    # (placeholder, the caller's key, its bind processor, its value when the caller gives none)
    binds: tuple[tuple[str, str, Callable | None, Any], ...]
    positional: bool
    columns: tuple                    # what a SELECT or RETURNING gives
    row: type | None                  # a namedtuple of those columns
    processors: dict = field(default_factory=dict)    # result processors by the driver's type codes


_NO_VALUE = object()


class Rows:
    """What a prepared statement gave: its rows (already read and converted), and how many
    rows it changed."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: list, rowcount: int):
        self._rows, self.rowcount = rows, rowcount

    def __iter__(self) -> Iterator:
        return iter(self._rows)

    def all(self) -> list:
        return self._rows

    def first(self):
        return self._rows[0] if self._rows else None

    def scalar_one(self):
        """The first column of the only row (a RETURNING id, a count)."""
        if len(self._rows) != 1:
            raise ValueError(f"expected one row, got {len(self._rows)}")
        return self._rows[0][0]

    def scalars(self) -> list:
        return [row[0] for row in self._rows]


class Prepared:
    """A Core statement, compiled once per dialect (and, for an INSERT, per set of columns
    given), run with `run(connection, values)` inside the connection's transaction. Values are
    keyed as for `Connection.execute`; a list of them runs the statement once per item
    (executemany). Errors are SQLAlchemy's own (IntegrityError, OperationalError...), as
    `Connection.execute` raises them."""

    def __init__(self, statement: ClauseElement):
        self.statement = statement
        self._insert = getattr(statement, "is_insert", False)
        self._compiled: dict[tuple, _Compiled] = {}

    def __repr__(self) -> str:
        return f"Prepared({str(self.statement)!r})"

    def _compile(self, dialect: Dialect, keys: tuple[str, ...] | None) -> _Compiled:
        found = self._compiled.get((dialect.name, keys))
        if found is not None:
            return found
        # An INSERT is compiled as for executemany: without the RETURNING of a generated key that
        # PostgreSQL's compiler adds by itself (one the statement asks for stays).
        options = {"column_keys": list(keys), "for_executemany": True} if keys is not None else {}
        compiled = self.statement.compile(dialect=dialect, **options)
        if getattr(compiled, "insert_prefetch", None) or getattr(compiled, "update_prefetch", None):
            raise ValueError(f"{self!r}: columns with Python-side defaults cannot be prepared; give their values")
        escaped = getattr(compiled, "escaped_bind_names", None) or {}
        binds = []
        for bind, name in compiled.bind_names.items():
            if bind.expanding:
                raise ValueError(f"{self!r}: an IN list of values ({name}) cannot be prepared; "
                                 "use a fixed number of parameters")
            if bind.literal_execute:
                raise ValueError(f"{self!r}: a value rendered into the SQL text ({name}) cannot be prepared; "
                                 "make it an ordinary parameter")
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            default = _NO_VALUE if bind.required else bind.effective_value
            binds.append((escaped.get(name, name), name, processor, default))
        if compiled.positional:
            # positiontup names the parameters as the statement does, before any escaping.
            order = {name: i for i, name in enumerate(compiled.positiontup)}
            binds.sort(key=lambda b: order[b[1]])
            if len(binds) != len(compiled.positiontup):
                raise ValueError(f"{self!r}: a parameter appears more than once; prepare it once per use")
        columns = tuple(self.statement.selected_columns if hasattr(self.statement, "selected_columns")
                        else getattr(compiled, "returning", None) or ())
        row = collections.namedtuple("Row", [column.key for column in columns], rename=True) if columns else None
        found = _Compiled(compiled.string, tuple(binds), compiled.positional, columns, row)
        self._compiled[(dialect.name, keys)] = found
        return found

    def _values(self, compiled: _Compiled, given: dict):
        values = []
        for _placeholder, key, processor, default in compiled.binds:
            value = given.get(key, default)
            if value is _NO_VALUE:
                raise KeyError(f"{self!r}: no value for parameter '{key}'")
            # As SQLAlchemy does, a processor sees None too: a type may store None as something else.
            values.append(processor(value) if processor is not None else value)
        if compiled.positional:
            return values
        return {b[0]: value for b, value in zip(compiled.binds, values, strict=True)}

    def run(self, connection: Connection, values: dict | Sequence[dict] | None = None) -> Rows:
        if not isinstance(connection, Connection):
            # A stand-in for a connection (a unit test's fake of the database) runs the statement itself.
            return connection.execute(self.statement, values)
        many = isinstance(values, (list, tuple))
        if many and not values:
            return Rows([], 0)
        dialect = connection.dialect
        first = (values[0] if many else values) or {}
        compiled = self._compile(dialect, tuple(first) if self._insert else None)
        if many and compiled.row is not None:
            raise ValueError(f"{self!r}: a statement that returns rows runs one row at a time")
        parameters = [self._values(compiled, v) for v in values] if many else self._values(compiled, first)
        if not connection.in_transaction():
            connection.begin()          # as Connection.execute would (its "autobegin")
        dbapi_connection = connection.connection.dbapi_connection
        cursor = None
        try:
            cursor = dbapi_connection.cursor()
            if many:
                cursor.executemany(compiled.sql, parameters)
            else:
                cursor.execute(compiled.sql, parameters)
            rows = _converted(cursor, compiled, dialect) if cursor.description else []
            return Rows(rows, cursor.rowcount)
        except dialect.loaded_dbapi.Error as exc:
            # A lost server invalidates this connection; the pool's other connections are checked
            # when next taken out (the PostgreSQL pool pings before use), not invalidated all at once.
            disconnected = dialect.is_disconnect(exc, dbapi_connection, cursor)
            if disconnected:
                connection.invalidate(exc)
            raise DBAPIError.instance(compiled.sql, parameters, exc, dialect.loaded_dbapi.Error,
                                      hide_parameters=True, connection_invalidated=disconnected,
                                      dialect=dialect, ismulti=many) from exc
        finally:
            if cursor is not None:
                cursor.close()


def _converted(cursor, compiled: _Compiled, dialect: Dialect) -> list:
    fetched = cursor.fetchall()
    codes = tuple(column[1] for column in cursor.description)
    processors = compiled.processors.get(codes)
    if processors is None:
        # A type's result processing may depend on the driver's type code (psycopg's numeric
        # codes, say), known once a cursor has described the rows.
        processors = compiled.processors[codes] = tuple(
            (index, processor) for index, (column, code) in enumerate(zip(compiled.columns, codes, strict=True))
            if (processor := column.type.dialect_impl(dialect).result_processor(dialect, code)) is not None)
    make = compiled.row._make if compiled.row is not None else tuple
    if not processors:
        return [make(row) for row in fetched]
    rows = []
    for row in fetched:
        row = list(row)
        for index, processor in processors:
            row[index] = processor(row[index])
        rows.append(make(row))
    return rows
