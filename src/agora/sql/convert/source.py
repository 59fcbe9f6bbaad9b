"""Reading the SQLite source: the file opened read-only in one snapshot, its tables and
columns as SQLite describes them, and the error for a table it cannot read."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agora.sql.convert.report import ConversionError, _show
from agora.sql.convert.sqltext import _q
from agora.sql.convert.typemap import _SERIALS, TEXT, _base, _Type
from agora.sql.convert.values import Convert

_MAGIC = b"SQLite format 3\x00"
_PG_NAME_BYTES = 63


@dataclass
class _Column:
    source: str      # name in SQLite
    name: str        # name in PostgreSQL
    declared: str
    notnull: bool
    default: str | None
    pk: int
    type: _Type = TEXT
    convert: Convert | None = None
    identity: bool = False       # INTEGER PRIMARY KEY, or a PostgreSQL-style SERIAL
    next_id: int = 1             # the identity's next value (NULL ids are numbered too)
    nulls: int = 0


@dataclass
class _Table:
    source: str
    name: str
    sql: str
    key: list[str]              # what names a row in messages: the rowid, else the PK
    columns: list[_Column]
    key_kind: str = "rowid"     # or "primary key", or "row" (every column)
    rowid_alias: _Column | None = None
    without_rowid: bool = False
    rows: int = 0

    def label(self, key: Sequence[Any]) -> str:
        if self.key_kind == "rowid":
            return f"rowid {key[0]}"
        return f"{self.key_kind} ({', '.join(map(repr, key))})"

    @property
    def primary_key(self) -> list[_Column]:
        return sorted((c for c in self.columns if c.pk), key=lambda c: c.pk)

    def in_key_order(self, expressions: str, where: str = "") -> str:
        """A SELECT of each row's key, then ``expressions``, in the key's order."""
        keys = ", ".join(map(_q, self.key))
        where = f" WHERE {where}" if where else ""
        return f"SELECT {keys}, {expressions} FROM {_q(self.source)}{where} ORDER BY {keys}"


def _open(source: Path, warnings: list[str]) -> sqlite3.Connection:
    try:
        with open(source, "rb") as file:
            header = file.read(len(_MAGIC))
    except OSError as error:
        raise ConversionError(f"{source.name}: cannot read it ({error.strerror})") from None
    if header and header != _MAGIC:
        raise ConversionError(f"{source.name} is not a SQLite database (no SQLite header)")
    try:
        db = sqlite3.connect(source.resolve().as_uri() + "?mode=ro", uri=True,
                             isolation_level=None, check_same_thread=False)
        # An uploaded file is anyone's: its schema's SQL (generated columns are computed
        # as rows are read) may call only harmless functions, and pages are checked.
        db.execute("PRAGMA trusted_schema = OFF")
        db.execute("PRAGMA cell_size_check = ON")
        db.execute("BEGIN")   # one snapshot for the whole conversion
        try:
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as error:
            # SQL a newer SQLite wrote (the one apsw bundles): read past it, say so, and
            # fail later only where a table itself cannot be read.
            if "malformed database schema" not in str(error):
                raise
            db.execute("PRAGMA writable_schema = ON")
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            warnings.append(f"this SQLite ({sqlite3.sqlite_version}) cannot read all of the "
                            f"schema ({error}); what it names is skipped with a warning")
    except sqlite3.Error as error:
        raise ConversionError(f"{source.name} is not a readable SQLite database ({error})") from None
    return db


def _pg_name(name: str, what: str, warnings: list[str]) -> str:
    if not name:
        warnings.append(f"{what} with an empty name was named {'_'!r}")
        return "_"
    if len(name.encode()) > _PG_NAME_BYTES:
        warnings.append(f"{what} {name!r}: PostgreSQL keeps only the first {_PG_NAME_BYTES} bytes of a name")
    return name


def _read_tables(db: sqlite3.Connection, warnings: list[str]) -> list[_Table]:
    try:
        listed = db.execute("PRAGMA table_list").fetchall()
    except sqlite3.Error:   # e.g. a virtual table whose module this SQLite lacks
        listed = []
    kinds = {name: kind for schema, name, kind, *_ in listed if schema == "main"}
    without_rowid = {name for schema, name, _kind, _ncol, wr, *_ in listed
                     if schema == "main" and wr}
    entries = db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table' "
                         "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY rowid").fetchall()
    readable_virtual = set()
    for name, _text in entries:
        if kinds.get(name) == "virtual":
            try:
                db.execute(f"SELECT count(*) FROM {_q(name)}").fetchone()
                readable_virtual.add(name)
                warnings.append(f"virtual table {name!r} was copied as an ordinary table "
                                "(its own index, e.g. full-text, is not)")
            except sqlite3.Error as error:
                warnings.append(f"virtual table {name!r} cannot be read here ({error}); "
                                "its storage tables were copied instead")
    tables = []
    for name, text in entries:
        kind = kinds.get(name, "table")
        if kind == "virtual" and name not in readable_virtual:
            continue
        if kind == "shadow" and any(name.startswith(v + "_") for v in readable_virtual):
            continue
        text = text or ""
        wr = name in without_rowid if listed else bool(
            re.search(r"\bWITHOUT\s+ROWID\s*;?\s*\Z", text, re.I))
        tables.append(_read_table(db, name, text, wr, warnings))
    return tables


def _read_table(db: sqlite3.Connection, name: str, text: str, without_rowid: bool,
                warnings: list[str]) -> _Table:
    columns = []
    listed = db.execute(f"PRAGMA table_xinfo({_q(name)})").fetchall()
    if not listed:
        raise ConversionError(f"table {name!r} cannot be read: this SQLite "
                              f"({sqlite3.sqlite_version}) does not understand its definition "
                              f"{_show(text)}", table=name)
    for _cid, column, declared, notnull, default, pk, hidden in listed:
        if hidden == 1:   # a virtual table's hidden column
            continue
        if hidden in (2, 3):
            warnings.append(f"generated column {name}.{column} was copied as a plain column")
        columns.append(_Column(column, _pg_name(column, f"column of {name!r}", warnings),
                               declared or "", bool(notnull), default, pk))
    table = _Table(name, _pg_name(name, "table", warnings), text, [], columns,
                   without_rowid=without_rowid)
    pk = table.primary_key
    pk_index = any(row[3] == "pk" for row in db.execute(f"PRAGMA index_list({_q(name)})"))
    if (len(pk) == 1 and pk[0].declared.upper() == "INTEGER" and not table.without_rowid
            and not pk_index):
        table.rowid_alias = pk[0]   # INTEGER PRIMARY KEY: an alias of the rowid
        pk[0].identity = True
    for column in columns:
        # Databases made through the old PostgreSQL face hold SERIAL columns SQLite
        # filled with NULL: they become identities, and their NULLs are numbered.
        column.identity = column.identity or _base(column.declared) in _SERIALS
    names = {c.source.lower() for c in columns}
    hidden_rowid = next((r for r in ("rowid", "_rowid_", "oid") if r not in names), None)
    if table.rowid_alias is not None:
        table.key = [table.rowid_alias.source]
    elif not table.without_rowid and hidden_rowid:
        table.key = [hidden_rowid]
    else:
        table.key_kind = "primary key" if pk else "row"
        table.key = [c.source for c in pk] or [c.source for c in columns]
    return table


def _unreadable(db: sqlite3.Connection, table: _Table, error: sqlite3.Error) -> ConversionError:
    """The error for a table SQLite could not read: which row, where that can be told."""
    if "decode" in str(error):   # text that is not UTF-8: find the row
        texts = ", ".join(f"CASE WHEN typeof({_q(c.source)}) = 'text' THEN {_q(c.source)} END"
                          for c in table.columns)
        db.text_factory = bytes
        try:
            for row in db.execute(table.in_key_order(texts)):
                key = tuple(v.decode("utf-8", "replace") if isinstance(v, bytes) else v
                            for v in row[:len(table.key)])
                for column, value in zip(table.columns, row[len(table.key):], strict=True):
                    try:
                        value is None or value.decode("utf-8")
                    except UnicodeDecodeError:
                        return ConversionError(
                            f"table {table.source!r}, {table.label(key)}: column "
                            f"{column.source!r} holds text that is not valid UTF-8: "
                            f"{_show(value)}", table=table.source, rowid=key[0],
                            column=column.source)
        except sqlite3.Error:
            pass
        finally:
            db.text_factory = str
    return ConversionError(f"table {table.source!r} cannot be read: {error}", table=table.source)
