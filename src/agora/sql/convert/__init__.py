"""Convert a SQLite database (as Agora hosted them before PostgreSQL, or an uploaded
``.sqlite`` file) into an empty PostgreSQL database.

    report = convert_sqlite(Path("shop.sqlite"), conn)   # psycopg 3 sync Connection
    report.tables     # [TableReport(name, source_rows, target_rows, columns)]
    report.warnings   # what could not be carried over as it was, and why

The source is opened read-only (stdlib sqlite3) in one read transaction; everything is
created in schema ``public`` (``schema=``) by ``conn``'s role, in one transaction that is
committed at the end. ``ConversionError`` (nothing is left in the target) when the file
is not a readable SQLite database, a value does not fit its column's type (the message
names table, rowid and column), or a row count differs after the copy.

Types: SQLite's declared type is mapped by its affinity (INT -> bigint, REAL -> double
precision, NUMERIC/DECIMAL(p,s) -> numeric(p,s), TEXT/CHAR -> text, VARCHAR(n) ->
varchar(n)); BOOLEAN, DATE, DATETIME/TIMESTAMP, TIME, JSON and UUID become PostgreSQL's
type when every stored value fits it, else the type the values call for (with a warning);
BLOB and untyped columns get the type the values call for (all integers -> bigint, all
text -> text, all blobs -> bytea, mixed -> text). PostgreSQL's own names (SERIAL, BYTEA,
TIMESTAMPTZ, JSONB, INT4...; databases made through Agora's old PostgreSQL face have
them) mean PostgreSQL's type. ``INTEGER PRIMARY KEY`` and SERIAL become identities
restarted past the highest id (SERIAL ids SQLite left NULL are numbered). Rows go
through COPY, in batches, so memory stays bounded. Constraints and indexes follow the
rows; views, CHECKs and expression indexes are kept where their SQL also runs on
PostgreSQL, else warned about. Triggers are warned about.

Here: ``convert_sqlite``, which plans (``plan``) and then writes each table (``schema``,
``rows``). Its modules: ``source`` (the SQLite file, its tables and columns), ``typemap``
and ``values`` (PostgreSQL types, and each stored value checked and converted for one),
``plan`` (each column's type chosen from its values), ``schema`` (tables, then what
follows their rows), ``rows`` (COPY), ``sqltext`` (SQLite's SQL text in PostgreSQL's
terms), ``report`` (the report and ConversionError).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg import sql

from agora.sql.convert.plan import _plan
from agora.sql.convert.report import (ColumnReport, ConversionError, ConversionReport,
                                      TableReport, _pg_message)
# _write calls _copy_rows by this module's name for it, so a test can stand in for it.
from agora.sql.convert.rows import _copy_rows
from agora.sql.convert.schema import (_create_foreign_keys, _create_table, _create_views,
                                      _finish_table)
from agora.sql.convert.source import _open, _Table
from agora.sql.convert.sqltext import _q, _Rewriter
# The value checks, which the tests try one by one.
from agora.sql.convert.values import _to_date, _to_time, _to_timestamp  # noqa: F401
from agora.sql.convert.values import _to_timestamptz, _to_uuid, _Unfit  # noqa: F401

__all__ = ["ColumnReport", "ConversionError", "ConversionReport", "TableReport", "convert_sqlite"]

BATCH_ROWS = 1000   # rows read from SQLite at a time: what bounds the memory used


def convert_sqlite(source: Path, target: psycopg.Connection[Any], *,
                   batch_rows: int = BATCH_ROWS,
                   on_mismatch: Literal["error", "widen"] = "error",
                   schema: str = "public") -> ConversionReport:
    """Copy the SQLite database ``source`` into the (empty) database of ``target``.

    ``target`` is logged in as the role that is to own everything; the conversion runs in
    one transaction of it (a savepoint if one is open) and commits. ``on_mismatch``: what
    a value that does not fit its column's declared type (an INTEGER column holding
    ``'abc'``) does: "error" raises ConversionError naming table, rowid and column;
    "widen" gives the column the type its values call for (text) and adds a warning.
    Everything is made in ``schema`` (which exists); ``batch_rows`` rows are read from
    SQLite at a time.
    """
    if batch_rows < 1 or on_mismatch not in ("error", "widen"):
        raise ValueError("batch_rows >= 1 and on_mismatch 'error' or 'widen', please")
    source = Path(source)
    report = ConversionReport(source)
    db = _open(source, report.warnings)
    try:
        plans = _plan(db, on_mismatch, report.warnings)
        with target.transaction():
            _write(db, target, plans, batch_rows, schema, report)
    except sqlite3.Error as error:
        raise ConversionError(f"{source.name} cannot be read: {error}") from None
    except psycopg.Error as error:
        raise ConversionError(f"converting {source.name} failed: {_pg_message(error)}") from error
    finally:
        db.close()
    return report


def _write(db: sqlite3.Connection, conn: psycopg.Connection[Any], tables: list[_Table],
           batch_rows: int, schema: str, report: ConversionReport) -> None:
    # Limits set on the owner's role (statement time, idle time) must not cut the copy short.
    conn.execute("SET LOCAL statement_timeout = 0")
    conn.execute("SET LOCAL idle_in_transaction_session_timeout = 0")
    # Names in views, CHECKs and indexes resolve there too.
    conn.execute(sql.SQL("SET LOCAL search_path = {}").format(sql.Identifier(schema)))
    names = [t.source for t in tables] + [c.source for t in tables for c in t.columns]
    names += [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'view'")]
    rewriter = _Rewriter(names)
    for table in tables:
        _create_table(conn, table)
        copied = _copy_rows(db, conn, table, batch_rows)
        target_rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier(table.name))).fetchone()[0]   # type: ignore[index]
        if not table.rows == copied == target_rows:
            raise ConversionError(f"table {table.source!r}: {table.rows} rows in SQLite, "
                                  f"{target_rows} in PostgreSQL", table=table.source)
        report.tables.append(TableReport(table.name, table.rows, target_rows, tuple(
            ColumnReport(c.name, c.declared, c.type.pg) for c in table.columns)))
        _finish_table(db, conn, table, rewriter, report)
        # The planner's statistics now, not when autovacuum gets round to it.
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table.name)))
    _create_foreign_keys(db, conn, tables, report.warnings)
    _create_views(db, conn, rewriter, report)
    loaded = {row[1] for t in tables for row in db.execute(f"PRAGMA index_list({_q(t.source)})")}
    for name, in db.execute("SELECT name FROM sqlite_master WHERE type = 'index' "
                            "AND sql IS NOT NULL ORDER BY rowid"):
        if name not in loaded:   # see the warning about the schema
            report.warnings.append(f"index {name!r} was not created: this SQLite cannot read it")
