"""Statements of the hot read path (a poll), compiled once per dialect and run on the DBAPI
cursor.

SQLAlchemy spends 50-200 us of CPU per ``Connection.execute`` of a select (the statement's
cache key, walked anew on every call, the compiled-cache look-up, parameter and result
processing), several times what SQLite takes to answer a read by index; even
``exec_driver_sql`` costs some 50 us more than the cursor. A poll makes four reads, so those
are compiled here once and handed to the driver's cursor. What SQLAlchemy would do around the
cursor and a poll needs is kept: a driver error is raised as SQLAlchemy's (the API answers 503
for ``OperationalError``), and a connection found dead is invalidated so the pool drops it.
Their result columns need no type processing (integers, floats, text). On PostgreSQL they are
prepared statements (planned once per connection).
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql.compiler import SQLCompiler


def among(column: sa.ColumnElement[int], values: Sequence[int]) -> sa.ColumnElement[bool]:
    """``column IN (values)`` with the integers written into the SQL: a list of bound values
    would be an "expanding" parameter, which needs SQLAlchemy at every execution."""
    return column.in_([sa.literal_column(str(int(v))) for v in values])


@dataclass
class _Compiled:
    sql: str
    positions: tuple[str, ...] | None
    """Parameter names in order for a positional paramstyle (SQLite's ``?``); else None."""
    defaults: dict[str, Any]
    server_prepared: bool
    """Prepared on the server once per connection (psycopg): planned once, not per poll."""
    row: type[tuple[Any, ...]] | None = None
    """A named tuple of the result's columns, made at the first execution."""


class Prepared:
    """A Core statement whose SQL is compiled once per dialect; ``rows`` runs it on the DBAPI
    cursor with the given values of its bound parameters (the others keep theirs) and returns
    its rows as named tuples (columns by name, as on SQLAlchemy's rows)."""

    def __init__(self, statement: sa.ClauseElement) -> None:
        self.statement = statement
        self._compiled: dict[str, _Compiled] = {}

    def rows(self, conn: sa.Connection, **values: Any) -> list[Any]:
        compiled = self._compiled.get(conn.dialect.name) or self._compile(conn.dialect)
        params: Any
        if compiled.positions is not None:
            params = tuple(values.get(n, compiled.defaults[n]) for n in compiled.positions)
        else:
            params = {**compiled.defaults, **values}
        dbapi_conn = conn.connection.dbapi_connection
        assert dbapi_conn is not None, "a connection that is open"
        error = conn.dialect.loaded_dbapi.Error
        try:
            cursor: Any = dbapi_conn.cursor()
            try:
                if compiled.server_prepared:
                    cursor.execute(compiled.sql, params, prepare=True)
                else:
                    cursor.execute(compiled.sql, params)
                fetched = cursor.fetchall()
                if compiled.row is None:
                    names = [d[0] for d in cursor.description]
                    compiled.row = namedtuple("Row", names, rename=True)  # type: ignore[misc]
            finally:
                cursor.close()
        except error as exc:
            if conn.dialect.is_disconnect(exc, dbapi_conn, None):
                conn.invalidate(exc)
            raise sa.exc.DBAPIError.instance(
                compiled.sql, params, exc, error, dialect=conn.dialect
            ) from exc
        make = compiled.row
        return [make(*r) for r in fetched]

    def _compile(self, dialect: sa.Dialect) -> _Compiled:
        made = self.statement.compile(dialect=dialect)
        assert isinstance(made, SQLCompiler)
        defaults = dict(made.construct_params(_check=False))
        positions = tuple(made.positiontup) if made.positiontup is not None else None
        # sqlite3 keeps its own cache of compiled statements per connection (by SQL text).
        server_prepared = dialect.driver == "psycopg"
        compiled = _Compiled(made.string, positions, defaults, server_prepared)
        self._compiled[dialect.name] = compiled
        return compiled
