"""Planning the conversion: each column's PostgreSQL type chosen from its declared type
and what its stored values are (one aggregate pass per table, then the values where
they must be tried), and each identity's next value."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from typing import Any

from agora.sql.convert.report import ConversionError, _show
from agora.sql.convert.source import _Column, _read_tables, _Table, _unreadable
from agora.sql.convert.sqltext import _q
from agora.sql.convert.typemap import INTEGER, SMALLINT, TEXT, _candidates, _judged, _Stats, _Type
from agora.sql.convert.values import Convert, _to_text, _Unfit


_COUNTS = ("sum(typeof({c})='integer')", "sum(typeof({c})='real')", "sum(typeof({c})='text')",
           "sum(typeof({c})='blob')")
_MEASURES = {   # the statistics a type's ``fits`` (or the values' judgement) needs
    # abs() of the smallest integer overflows in SQLite: Python takes it (_Stats).
    "int_min": "min(CASE WHEN typeof({c})='integer' THEN {c} END)",
    "int_max": "max(CASE WHEN typeof({c})='integer' THEN {c} END)",
    "number_max_abs": "max(CASE WHEN typeof({c}) IN ('integer', 'real') "
                      "THEN abs(CAST({c} AS REAL)) END)",
    "text_max_length": "max(CASE WHEN typeof({c})='text' THEN length({c}) END)",
    "text_with_nul": "sum(typeof({c})='text' AND instr({c}, char(0)) > 0)",
}


def _measures(declared: str, identity: bool) -> list[str]:
    candidates = _candidates(declared, identity)
    if candidates is None or any(kind.by_value for kind in candidates):   # values judge
        return ["int_min", "int_max", "text_with_nul"]
    needed = []
    if any(kind in (SMALLINT, INTEGER) for kind in candidates):
        needed += ["int_min", "int_max"]
    if any(kind.pg.startswith("numeric(") for kind in candidates):
        needed.append("number_max_abs")
    if any(kind.pg.startswith("varchar(") for kind in candidates):
        needed.append("text_max_length")
    if any(kind.pg.startswith("varchar(") or kind is TEXT for kind in candidates):
        needed.append("text_with_nul")
    return needed


def _stats(db: sqlite3.Connection, table: _Table) -> list[_Stats]:
    """What every column holds, from one pass over the table per 50 columns."""
    result: list[_Stats] = []
    for start in range(0, len(table.columns), 50):
        chunk = table.columns[start:start + 50]
        parts: list[str] = []
        wanted: list[list[str]] = []
        for column in chunk:
            wanted.append(_measures(column.declared, column.identity))
            parts += [e.format(c=_q(column.source)) for e in _COUNTS]
            parts += [_MEASURES[name].format(c=_q(column.source)) for name in wanted[-1]]
        row = iter(db.execute(f"SELECT {', '.join(parts)} FROM {_q(table.source)}").fetchone())
        for names in wanted:
            stats = _Stats(*(next(row) or 0 for _ in _COUNTS))
            for name in names:
                setattr(stats, name, next(row) or 0)
            result.append(stats)
    return result


def _values(db: sqlite3.Connection, table: _Table, column: _Column,
            classes: Iterable[str] | None = None) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """(key, value) of a column's non-NULL values (of the given storage classes)."""
    where = f"{_q(column.source)} IS NOT NULL"
    if classes is not None:
        where += f" AND typeof({_q(column.source)}) IN ({', '.join(repr(c) for c in classes)})"
    for row in db.execute(table.in_key_order(_q(column.source), where)):
        yield row[:-1], row[-1]


def _first_unfit(db: sqlite3.Connection, table: _Table, column: _Column, convert: Convert,
                 classes: Iterable[str] | None = None) -> tuple[tuple[Any, ...], Any] | None:
    for key, value in _values(db, table, column, classes):
        try:
            convert(value)
        except _Unfit:
            return key, value
    return None


def _plan_column(db: sqlite3.Connection, table: _Table, column: _Column, stats: _Stats,
                 on_mismatch: str, warnings: list[str]) -> None:
    """Choose the column's PostgreSQL type and the conversion its values need."""
    def blobs_are_text() -> bool:
        return _first_unfit(db, table, column, _to_text, ["blob"]) is None

    def judged() -> _Type:
        return _judged(stats, "BLOB" in column.declared.upper(), blobs_are_text)

    def unfit(kind: _Type) -> tuple[tuple[Any, ...], Any] | None:
        if kind.by_value:
            return _first_unfit(db, table, column, kind.convert)
        classes = present - kind.native
        if stats.text_with_nul and "text" in present:
            classes.add("text")
        return _first_unfit(db, table, column, kind.convert, classes) if classes else None

    present = stats.classes()
    candidates = _candidates(column.declared, column.identity)
    chosen: _Type | None = None
    reason = ""
    for number, kind in enumerate(candidates or []):
        last = number == len(candidates or []) - 1
        if kind.fits is not None and not kind.fits(stats):
            reason = reason or f"values are out of {kind.pg}'s range"
            continue
        found = unfit(kind)
        if found is None:
            chosen = kind
            break
        key, value = found
        if kind.by_value or not last:
            reason = reason or f"{table.label(key)} holds {_show(value)}"
            continue
        message = (f"table {table.source!r}, {table.label(key)}: column {column.source!r} "
                   f"({column.declared or 'no type'}) holds {_show(value)}, which does not "
                   f"fit {kind.pg}")
        if on_mismatch == "error" or column.identity:
            raise ConversionError(message, table=table.source, rowid=key[0], column=column.source)
        chosen = judged()
        warnings.append(f"{message}; the column became {chosen.pg}")
        break
    if chosen is None:
        chosen = judged()
    if candidates and chosen is not candidates[0] and reason:
        warnings.append(f"column {table.source}.{column.source} ({column.declared}) became "
                        f"{chosen.pg}: {reason}")
    column.type = chosen
    if chosen.passes_text:
        column.convert = None if present <= {"text"} else chosen.convert
    elif chosen.by_value or present - chosen.native or (stats.text_with_nul and "text" in present):
        column.convert = chosen.convert


def _plan(db: sqlite3.Connection, on_mismatch: str, warnings: list[str]) -> list[_Table]:
    tables = _read_tables(db, warnings)
    sequences = {}
    if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'").fetchone():
        sequences = dict(db.execute("SELECT name, seq FROM sqlite_sequence").fetchall())
    for table in tables:
        try:
            for column, stats in zip(table.columns, _stats(db, table), strict=True):
                _plan_column(db, table, column, stats, on_mismatch, warnings)
        except sqlite3.Error as error:
            raise _unreadable(db, table, error) from None
        table.rows = db.execute(f"SELECT count(*) FROM {_q(table.source)}").fetchone()[0]
        for column in table.columns:
            if column.identity:
                highest, nulls = db.execute(
                    f"SELECT max({_q(column.source)}), sum({_q(column.source)} IS NULL) "
                    f"FROM {_q(table.source)}").fetchone()
                if column is table.rowid_alias:
                    highest = max(highest or 0, sequences.get(table.source) or 0)
                column.next_id, column.nulls = max(highest or 0, 0) + 1, nulls or 0
                if column.nulls:
                    warnings.append(f"{column.nulls} rows of {table.source!r} had no "
                                    f"{column.source} (NULL); they were numbered from "
                                    f"{column.next_id} on")
    for name, in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' ORDER BY rowid"):
        warnings.append(f"trigger {name!r} was not copied (PostgreSQL's triggers call functions)")
    return tables
