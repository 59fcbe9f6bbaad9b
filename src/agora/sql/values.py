"""PostgreSQL values in JSON, in CSV and as the console shows them.

Results are read in PostgreSQL's text format and turned into their final form by
psycopg loaders (so nothing is converted twice, and a type psycopg cannot represent in
Python, an ``infinity`` timestamp or a year-10000 date, still has its text):

- ``JSON`` (the HTTP API): integers and booleans stay themselves; float4/float8 are
  numbers, or the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``; numeric is a string
  (no precision lost); timestamp, timestamptz, date, time and timetz are ISO 8601
  (``2024-05-01T10:00:00+02:00``; ``infinity`` and BC dates as PostgreSQL writes them);
  interval is PostgreSQL's text form in the session's IntervalStyle (``1 day 02:00:00``);
  bytea is ``{"$base64": "..."}``; json and jsonb are JSON, as stored; arrays of built-in
  types are JSON arrays (recursively); NULL is null; anything else (uuid, inet, ranges,
  enums, geometric types...) is its text.
- ``TEXT`` (the console): every value as PostgreSQL's text output, as psql shows it.
- ``CSV`` (exports): PostgreSQL's text output, bytea as base64, NULL as an empty field.

Parameters come from JSON: numbers, strings (sent untyped, so PostgreSQL infers the
type: a date, a uuid, jsonb...), true/false, null and ``{"$base64": "..."}`` for bytea.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
import math
import re
from typing import Any, Callable, Iterable, Sequence

import psycopg
from psycopg import postgres
from psycopg.adapt import AdaptersMap, Buffer, Loader
from psycopg.pq import Escaping
from psycopg.types.string import TextLoader

from agora.core.errors import InvalidInput

# -- loaders ---------------------------------------------------------------------------

_TIMESTAMP = re.compile(r"(\d{4,}-\d\d-\d\d) (\d\d:\d\d:\d\d(?:\.\d+)?)")
_TIMESTAMPTZ = re.compile(r"(\d{4,}-\d\d-\d\d) (\d\d:\d\d:\d\d(?:\.\d+)?)([+-]\d\d)(:\d\d)?(:\d\d)?")
_TIMETZ = re.compile(r"(\d\d:\d\d:\d\d(?:\.\d+)?)([+-]\d\d)(:\d\d)?(:\d\d)?")
_SPECIAL_FLOATS = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def _text(data: Buffer) -> str:
    return bytes(data).decode()


def _bytea(data: Buffer) -> bytes:
    if bytes(data[:2]) == b"\\x":
        return binascii.unhexlify(data[2:])
    return Escaping().unescape_bytea(bytes(data))  # bytea_output = escape


class RawJSON(str):
    """A json/jsonb value: JSON text from PostgreSQL, written out as it is."""


class _JSONLoader(Loader):
    def load(self, data: Buffer) -> RawJSON:
        # json keeps its input's whitespace; a newline there would end an NDJSON line.
        return RawJSON(_text(data).replace("\n", " ").replace("\r", " "))


class _FloatLoader(Loader):
    def load(self, data: Buffer) -> float | str:
        value = float(bytes(data))
        return value if math.isfinite(value) else _SPECIAL_FLOATS[str(value)]


class _Base64Loader(Loader):
    def load(self, data: Buffer) -> dict[str, str]:
        return {"$base64": base64.b64encode(_bytea(data)).decode()}


class _Base64TextLoader(Loader):
    def load(self, data: Buffer) -> str:
        return base64.b64encode(_bytea(data)).decode()


class _TimestampLoader(Loader):
    def load(self, data: Buffer) -> str:
        text = _text(data)
        found = _TIMESTAMP.fullmatch(text)
        return f"{found[1]}T{found[2]}" if found else text


class _TimestamptzLoader(Loader):
    def load(self, data: Buffer) -> str:
        text = _text(data)
        found = _TIMESTAMPTZ.fullmatch(text)
        if not found:
            return text
        return f"{found[1]}T{found[2]}{found[3]}{found[4] or ':00'}{found[5] or ''}"


class _TimetzLoader(Loader):
    def load(self, data: Buffer) -> str:
        text = _text(data)
        found = _TIMETZ.fullmatch(text)
        return f"{found[1]}{found[2]}{found[3] or ':00'}{found[4] or ''}" if found else text


# Types whose psycopg loaders already give JSON's own values.
_NATIVE = {"int2", "int4", "int8", "oid", "bool", "text", "varchar", "bpchar", "name", '"char"'}
_JSON_LOADERS: dict[str, type[Loader]] = {
    "float4": _FloatLoader, "float8": _FloatLoader, "bytea": _Base64Loader, "json": _JSONLoader,
    "jsonb": _JSONLoader, "timestamp": _TimestampLoader, "timestamptz": _TimestamptzLoader,
    "timetz": _TimetzLoader,
}


def _adapters(special: dict[str, type[Loader]], native: set[str]) -> AdaptersMap:
    """psycopg's dumpers and array loaders, with every built-in type's text loader
    replaced: ``special`` ones, psycopg's own for ``native`` ones, else the text."""
    adapters = AdaptersMap(psycopg.adapters)
    adapters.register_loader(0, TextLoader)  # types psycopg does not know: their text
    for info in postgres.types:
        if info.name in special:
            adapters.register_loader(info.oid, special[info.name])
        elif info.name not in native:
            adapters.register_loader(info.oid, TextLoader)
    return adapters


JSON_ADAPTERS = _adapters(_JSON_LOADERS, _NATIVE)
TEXT_ADAPTERS = _adapters({}, set())
for _info in postgres.types:  # the console shows arrays as psql does: {1,2}
    if _info.array_oid:
        TEXT_ADAPTERS.register_loader(_info.array_oid, TextLoader)
CSV_ADAPTERS = AdaptersMap(TEXT_ADAPTERS)
CSV_ADAPTERS.register_loader("bytea", _Base64TextLoader)

JSON_OIDS = frozenset(postgres.types[name].oid for name in ("json", "jsonb")) | frozenset(
    postgres.types[name].array_oid for name in ("json", "jsonb"))


def type_name(oid: int) -> str | None:
    """PostgreSQL's name for a built-in type (``int4``, ``_text`` for text[]), else None."""
    info = postgres.types.get(oid)
    if info is None:
        return None
    name = info.name.strip('"')
    return "_" + name if oid == info.array_oid and oid != info.oid else name


# -- JSON ------------------------------------------------------------------------------

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _raw(value: Any) -> str:
    if isinstance(value, RawJSON):
        return str(value)
    if isinstance(value, list):
        return "[" + ",".join(map(_raw, value)) + "]"
    return _dumps(value)


def json_row_encoder(oids: Sequence[int]) -> Callable[[Sequence[Any]], bytes]:
    """Encodes one loaded row as a JSON array (UTF-8); json/jsonb columns go as they are."""
    if JSON_OIDS.isdisjoint(oids):
        return lambda row: _dumps(row).encode()
    return lambda row: _raw(list(row)).encode()


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON of a document that holds no loaded values."""
    return _dumps(value).encode()


# -- CSV -------------------------------------------------------------------------------


def csv_lines(rows: Iterable[Sequence[Any]]) -> bytes:
    """Rows as CSV lines (CRLF), NULL as an empty field."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)
    return buffer.getvalue().encode()


_CSV_SPECIAL = re.compile(r'[",\r\n]')


def _csv_field(value: str | None) -> str:
    if not value:
        return ""
    if _CSV_SPECIAL.search(value):
        return '"' + value.replace('"', '""') + '"'
    return value


def csv_line(row: Sequence[str | None]) -> bytes:
    """One row as a CSV line, as csv_lines writes it (the csv module is slow on long
    values: this quotes with str methods)."""
    if len(row) == 1 and not row[0]:
        return b'""\r\n'  # else it would read as an empty line
    return (",".join(map(_csv_field, row)) + "\r\n").encode()


# -- parameters ------------------------------------------------------------------------


def from_json(value: Any, where: str = "params") -> Any:
    """A statement parameter from its JSON form."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict) and set(value) == {"$base64"} and isinstance(value["$base64"], str):
        try:
            return base64.b64decode(value["$base64"], validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput(f"{where}: $base64 is not valid base64") from None
    raise InvalidInput(f"{where}: a parameter is a number, a string, true/false, null or {{\"$base64\": ...}}")


def params_from_json(values: Sequence[Any]) -> list[Any]:
    return [from_json(v) for v in values]
