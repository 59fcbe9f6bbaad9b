"""Turning the domain's results into RowDescription/DataRow bytes, and statement types.

A column's OID comes from its declared type, else from the values it holds, else from
the shape of its expression (count(...) is an integer...), else text. Describe of a
statement has no values yet, so only the first and the last apply there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from agora.sql.pgwire import messages
from agora.sql.pgwire.types import (BOOL, FLOAT8, INT8, TEXT, encode_binary, encode_text, oid_for_cast,
                                    oid_for_declared, oid_for_value)


@dataclass
class Rows:
    """A result as the wire protocol sends it: columns (name, decltype), rows, tag."""
    columns: list[tuple[str, str | None]]
    rows: list[Sequence[Any]] = field(default_factory=list)
    tag: str = "SELECT 0"
    truncated: bool = False


def columns_of(result: Any) -> list[tuple[str, str | None]]:
    out = []
    listed = result if isinstance(result, list) else getattr(result, "columns", None) or []
    for column in listed:
        if isinstance(column, (tuple, list)):
            out.append((str(column[0]), column[1] if len(column) > 1 else None))
        elif isinstance(column, dict):
            out.append((str(column.get("name")), column.get("decltype") or column.get("type")))
        else:
            out.append((str(getattr(column, "name", column)), getattr(column, "decltype", None)))
    return out


_EXPRESSIONS = (
    (re.compile(r"(?i)^\s*(count|length|changes|total_changes|last_insert_rowid|instr|unicode|random)\s*\("), INT8),
    (re.compile(r"(?i)^\s*(total|avg)\s*\("), FLOAT8),
    (re.compile(r"^\s*-?\d+\s*$"), INT8),
    (re.compile(r"^\s*-?\d+\.\d*\s*$"), FLOAT8),
    (re.compile(r"(?i)^\s*(true|false)\s*$"), BOOL),
)


_CAST = re.compile(r"(?is)^\s*CAST\s*\(.*\bAS\s+([A-Za-z_][A-Za-z0-9_ ]*(?:\(\s*\d+(?:\s*,\s*\d+)?\s*\))?)\s*\)\s*$")
_PG_CAST = re.compile(r"(?s)::\s*([A-Za-z_][A-Za-z0-9_ ]*(?:\(\s*\d+(?:\s*,\s*\d+)?\s*\))?)\s*$")


def oid_for_expression(name: str, decltype: str | None) -> int:
    """An expression column's OID from its text (or its name, which SQLite makes the
    text when there is no alias): casts, counts, literals; else text."""
    oid = oid_for_declared(decltype)
    if oid is not None:
        return oid
    cast = _PG_CAST.search(name) or _CAST.match(name)
    if cast:
        return oid_for_cast(cast.group(1))
    for pattern, kind in _EXPRESSIONS:
        if pattern.search(name):
            return kind
    return TEXT


def result_oids(columns: list[tuple[str, str | None]], rows: Sequence[Sequence[Any]]) -> list[int]:
    oids = []
    for i, (name, decltype) in enumerate(columns):
        oid = oid_for_declared(decltype)
        if oid is None:
            kinds = {oid_for_value(row[i]) for row in rows if row[i] is not None}
            oid = kinds.pop() if len(kinds) == 1 else oid_for_expression(name, None) if not kinds else TEXT
        oids.append(oid)
    return oids


def encode_rows(rows: Sequence[Sequence[Any]], oids: Sequence[int], formats: Sequence[int]) -> list[bytes]:
    """DataRow messages; ValueError if a value cannot take a column's binary type."""
    n = len(oids)
    fmts = list(formats) * n if len(formats) == 1 else list(formats) if formats else [0] * n
    out = []
    for row in rows:
        values: list[bytes | None] = []
        for value, oid, fmt in zip(row, oids, fmts):
            if value is None:
                values.append(None)
            elif fmt:
                values.append(encode_binary(value, oid))
            else:
                values.append(encode_text(value, oid))
        out.append(messages.data_row(values))
    return out
