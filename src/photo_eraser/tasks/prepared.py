"""Statements of the hot read path (a poll), compiled once per dialect and run as driver SQL.

SQLAlchemy Core spends 100-200 us of CPU per ``Connection.execute`` of a select before the
database sees it (the statement's cache key, walked anew on every call, the compiled-cache
look-up, parameter and result processing), several times what SQLite takes to answer a
read by index. A poll makes four such reads, so they are compiled here once and handed to the
driver directly; their result columns need no type processing (integers, floats, text).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import CursorResult
from sqlalchemy.sql.compiler import SQLCompiler


def among(column: sa.ColumnElement[int], values: Sequence[int]) -> sa.ColumnElement[bool]:
    """``column IN (values)`` with the integers written into the SQL: a list of bound values
    would be an "expanding" parameter, which needs SQLAlchemy at every execution."""
    return column.in_([sa.literal_column(str(int(v))) for v in values])


class Prepared:
    """A Core statement whose SQL is compiled once per dialect; ``execute`` passes it to the
    DBAPI cursor with the given values of its bound parameters (the others keep theirs)."""

    def __init__(self, statement: sa.ClauseElement) -> None:
        self.statement = statement
        self._compiled: dict[str, SQLCompiler] = {}

    def execute(self, conn: sa.Connection, **values: Any) -> CursorResult[Any]:
        compiled = self._compiled.get(conn.dialect.name)
        if compiled is None:
            made = self.statement.compile(dialect=conn.dialect)
            assert isinstance(made, SQLCompiler)
            compiled = made
            self._compiled[conn.dialect.name] = compiled
        params: Mapping[str, Any] = compiled.construct_params(values)
        if compiled.positiontup is not None:  # qmark (SQLite) and other positional styles
            return conn.exec_driver_sql(
                compiled.string, tuple(params[n] for n in compiled.positiontup)
            )
        return conn.exec_driver_sql(compiled.string, dict(params))
