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
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg import sql

from agora.core.errors import InvalidInput

__all__ = ["ColumnReport", "ConversionError", "ConversionReport", "TableReport", "convert_sqlite"]

BATCH_ROWS = 1000   # rows read from SQLite at a time: what bounds the memory used
_MAGIC = b"SQLite format 3\x00"
_PG_NAME_BYTES = 63


class ConversionError(InvalidInput):
    """The database could not be converted; nothing was left in the target."""

    title = "SQLite conversion failed"

    def __init__(self, detail: str, *, table: str | None = None, rowid: Any = None,
                 column: str | None = None):
        super().__init__(detail)
        self.table, self.rowid, self.column = table, rowid, column


@dataclass(frozen=True)
class ColumnReport:
    name: str
    declared: str   # SQLite's declared type, "" for none
    type: str       # the PostgreSQL type it was given


@dataclass(frozen=True)
class TableReport:
    name: str
    source_rows: int
    target_rows: int
    columns: tuple[ColumnReport, ...]


@dataclass
class ConversionReport:
    source: Path
    tables: list[TableReport] = field(default_factory=list)
    indexes: list[str] = field(default_factory=list)   # created, user-named ones
    views: list[str] = field(default_factory=list)     # created
    warnings: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(table.target_rows for table in self.tables)


# --- values ---------------------------------------------------------------------------

class _Unfit(Exception):
    """A stored value that does not fit a column's PostgreSQL type."""


Convert = Callable[[Any], Any]
# ASCII: Python's \d and \s take digits and spaces PostgreSQL (and SQLite) do not.
_INT_TEXT = re.compile(r"\s*[+-]?\d+\s*\Z", re.A)
_REAL_TEXT = re.compile(
    r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*\Z|\s*[+-]?(inf|infinity|nan)\s*\Z", re.I | re.A)
_BOOL_TEXT = {"1": True, "0": False, "t": True, "f": False, "true": True, "false": False,
              "y": True, "n": False, "yes": True, "no": False, "on": True, "off": False}
_TIME = r"(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,6})0*)?)?"
_DATETIME_TEXT = re.compile(
    rf"(\d{{4}})-(\d{{2}})-(\d{{2}})(?:[T ]{_TIME}\s*(Z|[+-]\d{{2}}(?::?\d{{2}})?)?)?\Z", re.I | re.A)
_TIME_TEXT = re.compile(_TIME + r"\Z", re.A)
_UUID = r"[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}"
_UUID_TEXT = re.compile(rf"(?:{_UUID}|\{{{_UUID}\}})\Z", re.I | re.A)


def _int_in(low: int, high: int) -> Convert:
    def convert(value: Any) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        elif isinstance(value, str) and _INT_TEXT.match(value):
            value = int(value)
        if type(value) is not int or not low <= value <= high:
            raise _Unfit
        return value
    return convert


def _to_float(value: Any) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and _REAL_TEXT.match(value):
        return float(value)
    raise _Unfit


def _numeric(precision: int | None, scale: int) -> Convert:
    limit = Decimal(10) ** (precision - scale) if precision else None

    def convert(value: Any) -> Any:
        if isinstance(value, str):
            if not _REAL_TEXT.match(value):
                raise _Unfit
            try:
                value = Decimal(value.strip())
            except InvalidOperation:
                raise _Unfit from None
        elif not isinstance(value, (int, float)):
            raise _Unfit
        if limit is not None:
            number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
            if not number.is_finite() or abs(round(number, scale)) >= limit:
                raise _Unfit
        return value
    return convert


def _to_text(value: Any) -> str:
    if isinstance(value, bytes):
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            raise _Unfit from None
    else:
        text = value if isinstance(value, str) else repr(value)
    if "\x00" in text:   # PostgreSQL's text cannot hold NUL
        raise _Unfit
    return text


def _to_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    return (value if isinstance(value, str) else repr(value)).encode("utf-8")


def _to_bool(value: Any) -> bool:
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _BOOL_TEXT:
        return _BOOL_TEXT[value.strip().lower()]
    raise _Unfit


def _fraction(digits: str | None) -> int:
    return int((digits or "").ljust(6, "0"))


def _parse_datetime(value: Any) -> dt.date | dt.datetime:
    match = _DATETIME_TEXT.match(value) if isinstance(value, str) else None
    if match is None:
        raise _Unfit
    year, month, day, hour, minute, second, frac, zone = match.groups()
    try:
        if hour is None:
            return dt.date(int(year), int(month), int(day))
        tz = None
        if zone and zone.upper() != "Z":
            sign = -1 if zone[0] == "-" else 1
            digits = zone[1:].replace(":", "")
            hours, minutes = int(digits[:2]), int(digits[2:] or 0)
            if hours > 15 or minutes > 59:   # beyond what PostgreSQL takes
                raise _Unfit
            tz = dt.timezone(sign * dt.timedelta(hours=hours, minutes=minutes))
        elif zone:
            tz = dt.timezone.utc
        return dt.datetime(int(year), int(month), int(day), int(hour), int(minute),
                           int(second or 0), _fraction(frac), tzinfo=tz)
    except ValueError:
        raise _Unfit from None


def _to_date(value: Any) -> dt.date:
    parsed = _parse_datetime(value)
    if isinstance(parsed, dt.datetime):
        raise _Unfit
    return parsed


def _to_timestamp(value: Any) -> dt.datetime:
    parsed = _parse_datetime(value)
    if not isinstance(parsed, dt.datetime):
        return dt.datetime(parsed.year, parsed.month, parsed.day)
    if parsed.tzinfo is not None:
        raise _Unfit
    return parsed


def _to_timestamptz(value: Any) -> dt.datetime:
    parsed = _parse_datetime(value)
    if not isinstance(parsed, dt.datetime) or parsed.tzinfo is None:
        raise _Unfit
    return parsed


def _to_time(value: Any) -> dt.time:
    match = _TIME_TEXT.match(value) if isinstance(value, str) else None
    if match is None:
        raise _Unfit
    hour, minute, second, frac = match.groups()
    try:
        return dt.time(int(hour), int(minute), int(second or 0), _fraction(frac))
    except ValueError:
        raise _Unfit from None


def _json_constant(name: str) -> Any:
    raise ValueError(name)   # NaN and Infinity are not JSON to PostgreSQL


def _json_strings_ok(item: Any) -> bool:
    if isinstance(item, str):
        return "\x00" not in item and not any(0xD800 <= ord(c) <= 0xDFFF for c in item)
    if isinstance(item, dict):
        return all(_json_strings_ok(k) and _json_strings_ok(v) for k, v in item.items())
    if isinstance(item, list):
        return all(_json_strings_ok(v) for v in item)
    return True


def _to_json(value: Any) -> str:
    if isinstance(value, int) or isinstance(value, float) and math.isfinite(value):
        return repr(value)   # JSON text SQLite's NUMERIC affinity had made a number
    if not isinstance(value, str) or "\x00" in value:
        raise _Unfit
    try:
        parsed = json.loads(value, parse_constant=_json_constant)
    except ValueError:
        raise _Unfit from None
    if not _json_strings_ok(parsed):   # jsonb refuses \u0000 and lone surrogates
        raise _Unfit
    return value


def _to_uuid(value: Any) -> uuid.UUID:
    if isinstance(value, bytes) and len(value) == 16:
        return uuid.UUID(bytes=value)
    if isinstance(value, str) and _UUID_TEXT.match(value):
        return uuid.UUID(value)
    raise _Unfit


# --- types ----------------------------------------------------------------------------

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


_ALL = frozenset({"integer", "real", "text", "blob"})
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


# --- reading the source ---------------------------------------------------------------

def _q(name: str) -> str:
    """A SQLite identifier, quoted."""
    return '"' + name.replace('"', '""') + '"'


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
    pk = sorted((c for c in columns if c.pk), key=lambda c: c.pk)
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
    candidates = _SERIALS.get(_base(declared), [BIGINT]) if identity else _declared_types(declared)
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
    keys = ", ".join(map(_q, table.key))
    for row in db.execute(f"SELECT {keys}, {_q(column.source)} FROM {_q(table.source)} "
                          f"WHERE {where} ORDER BY {keys}"):
        yield row[:-1], row[-1]


def _first_unfit(db: sqlite3.Connection, table: _Table, column: _Column, convert: Convert,
                 classes: Iterable[str] | None = None) -> tuple[tuple[Any, ...], Any] | None:
    for key, value in _values(db, table, column, classes):
        try:
            convert(value)
        except _Unfit:
            return key, value
    return None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


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
    candidates = (_SERIALS.get(_base(column.declared), [BIGINT]) if column.identity
                  else _declared_types(column.declared))
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


# --- SQL text (views, CHECKs, index expressions, defaults) -----------------------------

_TOKEN = re.compile(r"""
    (?P<space>\s+|--[^\n]*|/\*.*?(?:\*/|\Z))
  | (?P<blob>[xX]'[0-9a-fA-F]*')
  | (?P<string>'(?:[^']|'')*')
  | (?P<quoted>"(?:[^"]|"")*"|`(?:[^`]|``)*`|\[[^\]]*\])
  | (?P<number>(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?))
  | (?P<word>(?:[A-Za-z_]|[^\x00-\x7f])(?:[A-Za-z0-9_$]|[^\x00-\x7f])*)
  | (?P<op>==|!=|<>|<=|>=|\|\||<<|>>|->>|->|.)
""", re.X | re.S)
_KEYWORDS = frozenset("""
    all and as asc between by case cast collate create cross current_date current_time
    current_timestamp desc distinct else end escape except exists false from full group
    having if in index inner intersect is isnull join left like limit natural not notnull
    null offset on or order outer over partition recursive right select table then true
    union unique using values view when where window with
""".split())


def _tokens(text: str) -> list[tuple[str, str]]:
    return [(m.lastgroup or "op", m.group()) for m in _TOKEN.finditer(text)]


def _unquote(token: str) -> str:
    if token[0] == "[":
        return token[1:-1]
    return token[1:-1].replace(token[0] * 2, token[0])


def _pg_quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _fold(name: str) -> str:
    """A name as an unquoted identifier reaches PostgreSQL (and SQLite compares it)."""
    return name.translate(_ASCII_LOWER)


class _Rewriter:
    """SQLite SQL text into PostgreSQL's, for what both spell alike but for quoting:
    SQLite ignores the case of names, PostgreSQL folds unquoted ones to lower case, so a
    name written ``Users`` for the table "Users" is quoted; `x` and [x] become "x"."""

    def __init__(self, names: Iterable[str]):
        self.names: dict[str, set[str]] = {}
        for name in names:
            self.names.setdefault(_fold(name), set()).add(name)

    def rewrite(self, tokens: Sequence[tuple[str, str]]) -> str:
        solid = [i for i, t in enumerate(tokens) if t[0] != "space"]
        after = {i: tokens[j][1] for i, j in zip(solid, solid[1:] + [len(tokens)], strict=True)
                 if j < len(tokens)}
        before = {j: tokens[i][1] for i, j in zip(solid, solid[1:], strict=False)}
        casts: list[bool] = []   # per open parenthesis: whether it is CAST's
        out = []
        for i, (kind, text) in enumerate(tokens):
            following, previous = after.get(i, ""), before.get(i, "")
            if kind == "quoted":
                out.append(_pg_quote(_unquote(text)))
            elif kind == "blob":
                out.append(f"'\\x{text[2:-1]}'::bytea")
            elif kind == "op" and text == "==":
                out.append("=")
            elif kind == "word":
                exact = self.names.get(_fold(text), set())
                keyword = _fold(text) in _KEYWORDS
                if _fold(text) == "ifnull" and following == "(":
                    out.append("coalesce")
                elif (previous.upper() == "AS" and not keyword and not (casts and casts[-1])
                      and _fold(text) != text):
                    out.append(_pg_quote(text))   # an alias keeps its case, as in SQLite
                elif (len(exact) == 1 and not keyword and following != "("
                      and next(iter(exact)) != _fold(text)):
                    out.append(_pg_quote(next(iter(exact))))
                else:
                    out.append(text)
            else:
                if text == "(":
                    casts.append(_fold(previous) == "cast")
                elif text == ")" and casts:
                    casts.pop()
                out.append(text)
        return "".join(out)


def _balanced(tokens: Sequence[tuple[str, str]], start: int) -> int:
    """Index after the parenthesis closing the one at ``start``."""
    depth = 0
    for i in range(start, len(tokens)):
        if tokens[i] == ("op", "("):
            depth += 1
        elif tokens[i] == ("op", ")"):
            depth -= 1
            if depth == 0:
                return i + 1
    return len(tokens)


def _checks(text: str) -> list[list[tuple[str, str]]]:
    """The expressions of a CREATE TABLE's CHECK constraints."""
    tokens = [t for t in _tokens(text) if t[0] != "space"]
    found = []
    for i, (kind, word) in enumerate(tokens):
        if kind == "word" and word.upper() == "CHECK" and tokens[i + 1:i + 2] == [("op", "(")]:
            found.append(tokens[i + 2:_balanced(tokens, i + 1) - 1])
    return found


def _collations(text: str) -> set[str]:
    tokens = [t for t in _tokens(text) if t[0] != "space"]
    return {(_unquote(t[1]) if t[0] == "quoted" else t[1]).upper()
            for i, t in enumerate(tokens[1:], 1)
            if tokens[i - 1][0] == "word" and tokens[i - 1][1].upper() == "COLLATE"} - {"BINARY"}


def _spaced(tokens: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    result: list[tuple[str, str]] = []
    for token in tokens:
        if result:
            result.append(("space", " "))
        result.append(token)
    return result


_NOW = {
    "current_timestamp": "timestamp", "datetime('now')": "timestamp",
    "current_date": "date", "date('now')": "date",
    "current_time": "time", "time('now')": "time",
}


def _default(column: _Column, rewriter: _Rewriter) -> sql.Composable | None:
    """PostgreSQL's DEFAULT for SQLite's (raises _Unfit when there is none to give)."""
    text = column.default
    if text is None:
        return None
    tokens = [t for t in _tokens(text) if t[0] != "space"]
    while len(tokens) > 2 and tokens[0] == ("op", "(") and _balanced(tokens, 0) == len(tokens):
        tokens = tokens[1:-1]
    sign = -1 if tokens[:1] == [("op", "-")] else 1
    literal = tokens[1:] if tokens[:1] in ([("op", "-")], [("op", "+")]) else tokens
    value: Any = ...
    if len(literal) == 1:
        kind, word = literal[0]
        if kind == "number":
            value = sign * (int(word, 16) if word[:2].lower() == "0x" else
                            int(word) if re.fullmatch(r"\d+", word) else float(word))
        elif kind == "string" and sign == 1:
            value = _unquote(word)
        elif kind == "blob":
            value = bytes.fromhex(word[2:-1])
        elif kind == "word" and word.upper() in ("TRUE", "FALSE"):
            value = int(word.upper() == "TRUE")
        elif kind == "word" and word.upper() == "NULL":
            return None
    if value is not ...:
        return sql.Literal(column.type.convert(value))
    compact = "".join(t[1] for t in tokens).lower().replace('"', "'")
    now = _NOW.get(compact)
    pg = column.type.pg
    if now and pg == "timestamp with time zone":
        return sql.SQL("now()")
    if now and pg in ("timestamp", "date", "time"):
        # SQLite's are in UTC, as the rows already there.
        return sql.SQL(f"(timezone('UTC', now()))::{pg if pg != 'time' else 'time(0)'}")
    if now and (pg == "text" or pg.startswith("varchar")):
        form = {"timestamp": "YYYY-MM-DD HH24:MI:SS", "date": "YYYY-MM-DD", "time": "HH24:MI:SS"}
        return sql.SQL(f"to_char(timezone('UTC', now()), '{form[now]}')")
    return sql.SQL("(" + rewriter.rewrite(_spaced(tokens)) + ")")


# --- writing the target ---------------------------------------------------------------

def _ident(*names: str) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


def _attempt(conn: psycopg.Connection[Any], statement: sql.SQL | sql.Composed,
             warnings: list[str], what: str) -> bool:
    """Run one statement in a savepoint; a failure becomes a warning."""
    try:
        with conn.transaction():
            conn.execute(statement)
        return True
    except psycopg.Error as error:
        message = (error.diag.message_primary or str(error)).strip()
        warnings.append(f"{what} was not created: {message}")
        return False


def _copy_rows(db: sqlite3.Connection, conn: psycopg.Connection[Any], table: _Table,
               batch_rows: int) -> int:
    keys = ", ".join(map(_q, table.key))
    query = (f"SELECT {keys}, {', '.join(_q(c.source) for c in table.columns)} "
             f"FROM {_q(table.source)} ORDER BY {keys}")
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
                              f"{(error.diag.message_primary or str(error)).strip()}"
                              + (f" ({context})" if context else ""), table=table.source) from None
    return copied


def _unreadable(db: sqlite3.Connection, table: _Table, error: sqlite3.Error) -> ConversionError:
    """The error for a table SQLite could not read: which row, where that can be told."""
    if "decode" in str(error):   # text that is not UTF-8: find the row
        keys = ", ".join(map(_q, table.key))
        texts = ", ".join(f"CASE WHEN typeof({_q(c.source)}) = 'text' THEN {_q(c.source)} END"
                          for c in table.columns)
        db.text_factory = bytes
        try:
            for row in db.execute(f"SELECT {keys}, {texts} FROM {_q(table.source)} ORDER BY {keys}"):
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


def _create_table(conn: psycopg.Connection[Any], table: _Table) -> None:
    parts = []
    for column in table.columns:
        part = sql.SQL("{} {}").format(sql.Identifier(column.name), sql.SQL(column.type.pg))
        if column.identity:
            part = sql.SQL("{} GENERATED BY DEFAULT AS IDENTITY").format(part)
        elif column.notnull:
            part = sql.SQL("{} NOT NULL").format(part)
        parts.append(part)
    conn.execute(sql.SQL("CREATE TABLE {} ({})").format(sql.Identifier(table.name),
                                                       sql.SQL(", ").join(parts)))


def _finish_table(db: sqlite3.Connection, conn: psycopg.Connection[Any], table: _Table,
                  rewriter: _Rewriter, report: ConversionReport) -> None:
    """Defaults, indexes, keys, CHECKs and the identity's next value, after the rows."""
    warnings = report.warnings
    by_source = {c.source: c for c in table.columns}
    target = sql.Identifier(table.name)
    for column in table.columns:
        if column.identity:
            continue
        what = f"default {column.default} of {table.source}.{column.source}"
        try:
            default = _default(column, rewriter)
        except (_Unfit, ValueError):
            warnings.append(f"{what} was not kept: it does not fit {column.type.pg}")
            continue
        if default is not None:
            _attempt(conn, sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET DEFAULT {}").format(
                target, sql.Identifier(column.name), default), warnings, what)
    indexes = db.execute(f"PRAGMA index_list({_q(table.source)})").fetchall()
    for _seq, index, unique, origin, partial in reversed(indexes):
        if origin != "c":
            continue
        _create_index(db, conn, table, index, bool(unique), bool(partial), rewriter, report)
    pk = [c.name for c in sorted((c for c in table.columns if c.pk), key=lambda c: c.pk)]
    if pk:
        _attempt(conn, sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(target, _ident(*pk)),
                 warnings, f"primary key of {table.source!r}")
    for _seq, index, _unique, origin, _partial in reversed(indexes):
        if origin == "u":
            names = [by_source[row[2]].name for row in
                     db.execute(f"PRAGMA index_info({_q(index)})") if row[2] in by_source]
            _attempt(conn, sql.SQL("ALTER TABLE {} ADD UNIQUE ({})").format(target, _ident(*names)),
                     warnings, f"UNIQUE ({', '.join(names)}) of {table.source!r}")
    for check in _checks(table.sql):
        expression = rewriter.rewrite(_spaced(check))
        _attempt(conn, sql.SQL("ALTER TABLE {} ADD CHECK ({})").format(target, sql.SQL(expression)),
                 warnings, f"CHECK ({expression}) of {table.source!r}")
    for collation in _collations(table.sql):
        warnings.append(f"table {table.source!r}: COLLATE {collation} has no PostgreSQL "
                        "equivalent; comparisons are now case- and byte-exact")
    for column in table.columns:
        if column.identity and column.next_id > 1:
            _attempt(conn, sql.SQL("ALTER TABLE {} ALTER COLUMN {} RESTART WITH {}").format(
                target, sql.Identifier(column.name), sql.Literal(column.next_id)),
                warnings, f"the next value of {table.source}.{column.source}")


def _create_index(db: sqlite3.Connection, conn: psycopg.Connection[Any], table: _Table,
                  index: str, unique: bool, partial: bool, rewriter: _Rewriter,
                  report: ConversionReport) -> None:
    by_source = {c.source: c for c in table.columns}
    parts = []
    plain = not partial
    for _seqno, cid, column, desc, collation, key in db.execute(
            f"PRAGMA index_xinfo({_q(index)})"):
        if not key:
            continue
        if cid < 0 or column not in by_source:
            plain = False
            break
        if collation.upper() != "BINARY":
            report.warnings.append(f"index {index!r}: COLLATE {collation} was dropped")
        parts.append(sql.SQL("{}{}").format(sql.Identifier(by_source[column].name),
                                            sql.SQL(" DESC" if desc else "")))
    name = _pg_name(index, "index", report.warnings)
    if plain:
        statement = sql.SQL("CREATE {}INDEX {} ON {} ({})").format(
            sql.SQL("UNIQUE " if unique else ""), sql.Identifier(name),
            sql.Identifier(table.name), sql.SQL(", ").join(parts))
    else:
        text = db.execute("SELECT sql FROM sqlite_master WHERE type = 'index' AND name = ?",
                          (index,)).fetchone()[0]
        translated = _index_sql(text, rewriter, report.warnings)
        if translated is None:
            report.warnings.append(f"index {index!r} was not created: its SQL was not understood")
            return
        statement = sql.SQL("CREATE {}INDEX {} ON {} {}").format(
            sql.SQL("UNIQUE " if unique else ""), sql.Identifier(name),
            sql.Identifier(table.name), sql.SQL(translated))
    if _attempt(conn, statement, report.warnings, f"index {index!r}"):
        report.indexes.append(name)


def _index_sql(text: str, rewriter: _Rewriter, warnings: list[str]) -> str | None:
    """``(...) [WHERE ...]`` of an expression or partial index, in PostgreSQL's terms
    (which wants each expression in parentheses)."""
    tokens = [t for t in _tokens(text) if t[0] != "space"]
    on = next((i for i, t in enumerate(tokens) if t[0] == "word" and t[1].upper() == "ON"), None)
    if on is None:
        return None
    start = next((i for i in range(on, len(tokens)) if tokens[i] == ("op", "(")), None)
    if start is None:
        return None
    end = _balanced(tokens, start)
    elements: list[list[tuple[str, str]]] = [[]]
    depth = 0
    for token in tokens[start + 1:end - 1]:
        depth += token == ("op", "(")
        depth -= token == ("op", ")")
        if token == ("op", ",") and depth == 0:
            elements.append([])
        else:
            elements[-1].append(token)
    parts = []
    for element in elements:
        order = ""
        if element and element[-1][0] == "word" and element[-1][1].upper() in ("ASC", "DESC"):
            order = " " + element.pop()[1].upper()
        if len(element) > 2 and element[-2][0] == "word" and element[-2][1].upper() == "COLLATE":
            kind, name = element[-1]
            warnings.append(f"an index's COLLATE {_unquote(name) if kind == 'quoted' else name} "
                            "was dropped")
            element = element[:-2]
        if not element:
            return None
        parts.append(f"({rewriter.rewrite(_spaced(element))}){order}")
    rest = tokens[end:]
    where = ""
    if rest and rest[0][0] == "word" and rest[0][1].upper() == "WHERE":
        where = " WHERE " + rewriter.rewrite(_spaced(rest[1:]))
    elif rest:
        return None
    return f"({', '.join(parts)}){where}"


def _deferred_keys(text: str) -> set[tuple[str, ...]]:
    """The (lower-case) columns of a CREATE TABLE's foreign keys declared DEFERRABLE
    INITIALLY DEFERRED (as Django declares them), which SQLite's pragmas do not tell."""
    tokens = [t for t in _tokens(text) if t[0] != "space"]
    start = next((i for i, t in enumerate(tokens) if t == ("op", "(")), None)
    if start is None:
        return set()
    elements: list[list[tuple[str, str]]] = [[]]
    depth = 0
    for token in tokens[start + 1:_balanced(tokens, start) - 1]:
        depth += token == ("op", "(")
        depth -= token == ("op", ")")
        if token == ("op", ",") and depth == 0:
            elements.append([])
        else:
            elements[-1].append(token)
    found = set()
    for element in elements:
        words = [w.upper() if k == "word" else w for k, w in element]
        if "REFERENCES" not in words or " ".join(words).find("NOT DEFERRABLE") >= 0:
            continue
        if "DEFERRABLE INITIALLY DEFERRED" not in " ".join(words):
            continue
        names = [(_unquote(w) if k == "quoted" else w).lower() for k, w in element]
        if "FOREIGN" in words[:3]:
            opening = words.index("(")
            found.add(tuple(n for n in names[opening + 1:words.index(")")] if n != ","))
        else:
            found.add((names[0],))
    return found


def _create_foreign_keys(db: sqlite3.Connection, conn: psycopg.Connection[Any],
                         tables: list[_Table], warnings: list[str]) -> None:
    by_lower = {t.source.lower(): t for t in tables}
    for table in tables:
        deferred = _deferred_keys(table.sql)
        keys: dict[int, list[Any]] = {}
        for row in db.execute(f"PRAGMA foreign_key_list({_q(table.source)})"):
            keys.setdefault(row[0], []).append(row)
        for rows in keys.values():
            rows.sort(key=lambda r: r[1])
            parent = by_lower.get(rows[0][2].lower())
            what = f"foreign key of {table.source!r} to {rows[0][2]!r}"
            if parent is None:
                warnings.append(f"{what} was not created: there is no such table")
                continue
            columns = {c.source.lower(): c.name for c in table.columns}
            parent_columns = {c.source.lower(): c.name for c in parent.columns}
            if any(r[4] is None for r in rows):
                referenced = [c.name for c in sorted((c for c in parent.columns if c.pk),
                                                     key=lambda c: c.pk)]
            else:
                referenced = [parent_columns.get(r[4].lower(), r[4]) for r in rows]
            child = [columns.get(r[3].lower(), r[3]) for r in rows]
            timing = (" DEFERRABLE INITIALLY DEFERRED"
                      if tuple(r[3].lower() for r in rows) in deferred else "")
            statement = sql.SQL("ALTER TABLE {} ADD FOREIGN KEY ({}) REFERENCES {} ({}) "
                                "ON UPDATE {} ON DELETE {}{}").format(
                sql.Identifier(table.name), _ident(*child), sql.Identifier(parent.name),
                _ident(*referenced), sql.SQL(_action(rows[0][5])), sql.SQL(_action(rows[0][6])),
                sql.SQL(timing))
            try:
                with conn.transaction():
                    conn.execute(statement)
            except psycopg.errors.ForeignKeyViolation:
                # SQLite checks foreign keys only when told to: keep rows that break it,
                # and have PostgreSQL check new ones.
                if _attempt(conn, sql.SQL("{} NOT VALID").format(statement), warnings, what):
                    warnings.append(f"{what}: some existing rows break it; it was created "
                                    "NOT VALID (checked for new rows only)")
            except psycopg.Error as error:
                warnings.append(f"{what} was not created: "
                                f"{(error.diag.message_primary or str(error)).strip()}")


def _action(action: str) -> str:
    action = action.upper()
    return action if action in ("CASCADE", "SET NULL", "SET DEFAULT", "RESTRICT") else "NO ACTION"


def _create_views(db: sqlite3.Connection, conn: psycopg.Connection[Any], rewriter: _Rewriter,
                  report: ConversionReport) -> None:
    pending: list[tuple[str, sql.Composed]] = []
    for name, text in db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'view' "
                                 "ORDER BY rowid"):
        tokens = _tokens(text)
        solid = [i for i, t in enumerate(tokens) if t[0] != "space"]
        at = next((n for n, i in enumerate(solid) if tokens[i][0] == "word"
                   and tokens[i][1].upper() == "VIEW"), 0) + 1
        if [tokens[i][1].upper() for i in solid[at:at + 3]] == ["IF", "NOT", "EXISTS"]:
            at += 3
        at += 1   # the name
        if at < len(solid) and tokens[solid[at]][1] == ".":   # main.name
            at += 2
        columns: sql.Composable = sql.SQL("")
        if at < len(solid) and tokens[solid[at]] == ("op", "("):
            end = _balanced([tokens[i] for i in solid], at)
            names = [tokens[i] for i in solid[at + 1:end - 1] if tokens[i][1] != ","]
            columns = sql.SQL(" ({})").format(_ident(*(_unquote(t) if k == "quoted" else t
                                                       for k, t in names)))
            at = end
        if at >= len(solid) or tokens[solid[at]][1].upper() != "AS":
            report.warnings.append(f"view {name!r} was not created: its SQL was not understood")
            continue
        body = rewriter.rewrite(tokens[solid[at] + 1:])
        pending.append((name, sql.SQL("CREATE VIEW {}{} AS {}").format(
            sql.Identifier(_pg_name(name, "view", report.warnings)), columns, sql.SQL(body))))
    errors: dict[str, str] = {}
    while pending:   # a view may use one defined after it: retry while that helps
        failed = []
        for name, statement in pending:
            try:
                with conn.transaction():
                    conn.execute(statement)
                report.views.append(name)
            except psycopg.Error as error:
                errors[name] = (error.diag.message_primary or str(error)).strip()
                failed.append((name, statement))
        if len(failed) == len(pending):
            break
        pending = failed
    for name, _statement in pending:
        report.warnings.append(f"view {name!r} was not created: {errors[name]} "
                               "(its SQL does not run on PostgreSQL as it is)")


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
        raise ConversionError(f"converting {source.name} failed: "
                              f"{(error.diag.message_primary or str(error)).strip()}") from error
    finally:
        db.close()
    return report


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
        try:
            with conn.transaction():
                _create_table(conn, table)
        except psycopg.Error as error:
            raise ConversionError(f"table {table.source!r} cannot be made in PostgreSQL: "
                                  f"{(error.diag.message_primary or str(error)).strip()}",
                                  table=table.source) from None
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
