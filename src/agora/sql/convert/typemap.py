"""PostgreSQL types for SQLite's declared ones: by SQLite's affinity rules, by
PostgreSQL's own names, or, where the declaration says nothing, by the stored values
(``_Stats``, one aggregate pass over a column)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agora.sql.convert.values import (Convert, _int_in, _numeric, _to_bool, _to_bytes, _to_date,
                                      _to_float, _to_json, _to_text, _to_time, _to_timestamp,
                                      _to_timestamptz, _to_uuid, _Unfit)


@dataclass(frozen=True)
class _Type:
    pg: str                   # as written in CREATE TABLE
    convert: Convert
    native: frozenset[str] = frozenset()   # storage classes stored as they are
    # A declared type SQLite never enforced: ``fits`` says from the column's statistics
    # whether its values are in range; ``by_value``: every value is tried (dates, JSON...).
    fits: Callable[[_Stats], bool] | None = None
    by_value: bool = False
    # Once every value was found to fit, COPY is given text values as they are:
    # PostgreSQL reads the ISO dates, JSON and UUID text itself.
    passes_text: bool = False


@dataclass
class _Stats:
    """What one aggregate pass tells about a column's stored values."""

    integer: int = 0
    real: int = 0
    text: int = 0
    blob: int = 0
    int_min: int = 0
    int_max: int = 0
    number_max_abs: float = 0.0
    text_max_length: int = 0
    text_with_nul: int = 0

    def classes(self) -> set[str]:
        return {name for name in ("integer", "real", "text", "blob") if getattr(self, name)}

    @property
    def int_max_abs(self) -> int:
        return max(abs(self.int_min), abs(self.int_max))


BIGINT = _Type("bigint", _int_in(-2**63, 2**63 - 1), frozenset({"integer"}))
INTEGER = _Type("integer", _int_in(-2**31, 2**31 - 1), frozenset({"integer"}),
                fits=lambda s: s.int_max_abs < 2**31)
SMALLINT = _Type("smallint", _int_in(-2**15, 2**15 - 1), frozenset({"integer"}),
                 fits=lambda s: s.int_max_abs < 2**15)
DOUBLE = _Type("double precision", _to_float, frozenset({"real"}))
NUMERIC = _Type("numeric", _numeric(None, 0), frozenset({"integer", "real"}))
TEXT = _Type("text", _to_text, frozenset({"text"}))
BYTEA = _Type("bytea", _to_bytes, frozenset({"blob"}))
BOOLEAN = _Type("boolean", _to_bool, by_value=True)
DATE = _Type("date", _to_date, by_value=True, passes_text=True)
TIMESTAMP = _Type("timestamp", _to_timestamp, by_value=True, passes_text=True)
TIMESTAMPTZ = _Type("timestamp with time zone", _to_timestamptz, by_value=True, passes_text=True)
TIME = _Type("time", _to_time, by_value=True, passes_text=True)
JSONB = _Type("jsonb", _to_json, by_value=True, passes_text=True)
JSON = _Type("json", _to_json, by_value=True, passes_text=True)
UUID = _Type("uuid", _to_uuid, by_value=True, passes_text=True)


def _varchar(length: int) -> _Type:
    def convert(value: Any) -> str:
        text = _to_text(value)
        if len(text) > length:
            raise _Unfit
        return text
    return _Type(f"varchar({length})", convert, frozenset({"text"}),
                 fits=lambda s: s.text_max_length <= length)


def _bounded_numeric(precision: int, scale: int) -> _Type:
    digits = precision - scale
    limit = 10.0 ** digits - 10.0 ** -scale if digits < 300 else float("inf")
    return _Type(f"numeric({precision},{scale})", _numeric(precision, scale),
                 frozenset({"integer", "real"}), fits=lambda s: s.number_max_abs < limit)


def _args(declared: str) -> list[int]:
    inside = re.search(r"\(([^)]*)\)", declared)
    if inside is None:
        return []
    try:
        return [int(part) for part in inside.group(1).split(",")]
    except ValueError:
        return []


def _base(declared: str) -> str:
    """A declared type's name without its arguments, upper case, spaces single."""
    words = re.sub(r"\(.*?\)", " ", declared.upper()).split()
    return " ".join(w for w in words if w != "UNSIGNED")   # MySQL's, and Django's on SQLite


# PostgreSQL's names, as databases made through Agora's old PostgreSQL face declare them.
_SERIALS = {"SERIAL": [INTEGER, BIGINT], "SERIAL4": [INTEGER, BIGINT], "BIGSERIAL": [BIGINT],
            "SERIAL8": [BIGINT], "SMALLSERIAL": [SMALLINT, INTEGER, BIGINT],
            "SERIAL2": [SMALLINT, INTEGER, BIGINT]}
_NAMED = {
    "INT4": [INTEGER, BIGINT], "INT2": [SMALLINT, BIGINT], "SMALLINT": [SMALLINT, BIGINT],
    "TINYINT": [SMALLINT, BIGINT], "BOOLEAN": [BOOLEAN], "BOOL": [BOOLEAN], "BYTEA": [BYTEA],
    "DATE": [DATE, TIMESTAMP, TIMESTAMPTZ],
    "DATETIME": [TIMESTAMP, TIMESTAMPTZ], "TIMESTAMP": [TIMESTAMP, TIMESTAMPTZ],
    "TIMESTAMP WITHOUT TIME ZONE": [TIMESTAMP, TIMESTAMPTZ],
    "TIMESTAMPTZ": [TIMESTAMPTZ], "TIMESTAMP WITH TIME ZONE": [TIMESTAMPTZ],
    "TIME": [TIME], "TIME WITHOUT TIME ZONE": [TIME], "JSON": [JSON], "JSONB": [JSONB],
    "UUID": [UUID], "GUID": [UUID], "UNIQUEIDENTIFIER": [UUID],
}


def _declared_types(declared: str) -> list[_Type] | None:
    """PostgreSQL types to try, in order, for a declared type; None: judge by the values."""
    name = declared.upper()
    base = _base(declared)
    if base in _NAMED:
        return _NAMED[base]
    if "[" in name or base in ("INTERVAL", "POINT"):   # INT in them says nothing
        return None
    # SQLite's affinity rules (https://sqlite.org/datatype3.html#affname), in order.
    if "INT" in name:
        return [BIGINT]
    if "CHAR" in name or "CLOB" in name or "TEXT" in name:
        length = _args(declared)
        if "VAR" in base and len(length) == 1 and 0 < length[0] <= 10485760:
            return [_varchar(length[0]), TEXT]
        return [TEXT]
    if "BLOB" in name or not name.strip():
        return None
    if "REAL" in name or "FLOA" in name or "DOUB" in name:
        return [DOUBLE]
    if base in ("NUMERIC", "DECIMAL"):
        numbers = _args(declared) + [0]
        if 0 < numbers[0] <= 1000 and 0 <= numbers[1] <= numbers[0]:
            return [_bounded_numeric(numbers[0], numbers[1]), NUMERIC]
        return [NUMERIC]
    return None


def _candidates(declared: str, identity: bool) -> list[_Type] | None:
    """The types to try for a column; an identity's are an integer type."""
    return _SERIALS.get(_base(declared), [BIGINT]) if identity else _declared_types(declared)


def _judged(stats: _Stats, declared_blob: bool, blobs_are_text: Callable[[], bool]) -> _Type:
    """The type a column's values call for, when its declared type says nothing."""
    classes = stats.classes()
    if not classes:
        return BYTEA if declared_blob else TEXT
    if classes == {"integer"}:
        return BIGINT
    if classes <= {"integer", "real"}:
        return DOUBLE if stats.int_max_abs <= 2**53 else NUMERIC
    if classes == {"blob"}:
        return BYTEA
    if stats.text_with_nul or ("blob" in classes and not blobs_are_text()):
        return BYTEA
    return TEXT
