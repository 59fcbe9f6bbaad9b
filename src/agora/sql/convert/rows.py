"""Copying a table's rows: read from SQLite in batches, converted where the column's
type needs it, written with COPY."""

from __future__ import annotations

import sqlite3
from typing import Any

import psycopg
from psycopg import sql

from agora.sql.convert.report import ConversionError, _pg_message, _show
from agora.sql.convert.source import _Table, _unreadable
from agora.sql.convert.sqltext import _ident, _q
from agora.sql.convert.values import _Unfit


def _copy_rows(db: sqlite3.Connection, conn: psycopg.Connection[Any], table: _Table,
               batch_rows: int) -> int:
    query = table.in_key_order(", ".join(_q(c.source) for c in table.columns))
    width = len(table.key)
    converts = [(i, c.convert, c) for i, c in enumerate(table.columns) if c.convert]
    numbered = [(i, c) for i, c in enumerate(table.columns) if c.identity and c.nulls]
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table.name), _ident(*(c.name for c in table.columns)))
    copied = 0
    try:
        cursor = db.execute(query)
        with conn.cursor() as pg, pg.copy(statement) as copy:
            while rows := cursor.fetchmany(batch_rows):
                copied += len(rows)
                if not converts and not numbered:   # the common case, kept quick
                    for row in rows:
                        copy.write_row(row[width:])
                    continue
                for row in rows:
                    values = list(row[width:])
                    for i, convert, column in converts:
                        if values[i] is not None:
                            try:
                                values[i] = convert(values[i])
                            except _Unfit:
                                raise ConversionError(
                                    f"table {table.source!r}, {table.label(row[:width])}: column "
                                    f"{column.source!r} holds {_show(values[i])}, which does "
                                    f"not fit {column.type.pg}", table=table.source,
                                    rowid=row[0], column=column.source) from None
                    for i, column in numbered:
                        if values[i] is None:
                            values[i], column.next_id = column.next_id, column.next_id + 1
                    copy.write_row(values)
    except sqlite3.Error as error:
        raise _unreadable(db, table, error) from None
    except psycopg.Error as error:
        context = (error.diag.context or "").strip()
        raise ConversionError(f"table {table.source!r}: PostgreSQL refused a row: "
                              f"{_pg_message(error)}" + (f" ({context})" if context else ""),
                              table=table.source) from None
    return copied
