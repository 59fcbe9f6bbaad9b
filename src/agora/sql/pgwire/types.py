"""PostgreSQL type OIDs for SQLite values, and their text and binary encodings.

SQLite has five storage classes and free-form declared types; drivers need an OID per
column and parameter. Declared types map by SQLite's own affinity rules (INT anywhere ->
integer...), expressions by the storage class of their values. Only OIDs every driver
knows as builtin are used, so that asyncpg never has to introspect pg_type.
"""

from __future__ import annotations

import math
import re
import struct
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

BOOL, BYTEA, INT8, INT2, INT4, TEXT, OID, FLOAT4, FLOAT8, UNKNOWN = 16, 17, 20, 21, 23, 25, 26, 700, 701, 705
VARCHAR, BPCHAR, NAME, CHAR, TIMESTAMP, TIMESTAMPTZ, DATE, NUMERIC, JSON, JSONB = 1043, 1042, 19, 18, 1114, 1184, 1082, 1700, 114, 3802

# typname, typlen (as RowDescription reports it): what pg_type would say.
TYPES: dict[int, tuple[str, int]] = {
    BOOL: ("bool", 1), BYTEA: ("bytea", -1), INT8: ("int8", 8), INT2: ("int2", 2), INT4: ("int4", 4),
    TEXT: ("text", -1), OID: ("oid", 4), FLOAT4: ("float4", 4), FLOAT8: ("float8", 8),
    UNKNOWN: ("unknown", -2), VARCHAR: ("varchar", -1), BPCHAR: ("bpchar", -1), NAME: ("name", 64),
    CHAR: ("char", 1), TIMESTAMP: ("timestamp", 8), TIMESTAMPTZ: ("timestamptz", 8), DATE: ("date", 4),
    NUMERIC: ("numeric", -1), JSON: ("json", -1), JSONB: ("jsonb", -1),
}
BY_NAME = {name: oid for oid, (name, _) in TYPES.items()}
BY_NAME.update({"integer": INT8, "int": INT8, "bigint": INT8, "smallint": INT8, "text": TEXT,
                "varchar": TEXT, "character varying": TEXT, "real": FLOAT8, "double precision": FLOAT8,
                "float": FLOAT8, "double": FLOAT8, "boolean": BOOL, "blob": BYTEA, "decimal": NUMERIC,
                "timestamp without time zone": TIMESTAMP, "timestamp with time zone": TIMESTAMPTZ,
                "int4": INT8, "int2": INT8, "float4": FLOAT8, "bpchar": TEXT, "char": TEXT, "name": TEXT})

_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)


def type_size(oid: int) -> int:
    return TYPES.get(oid, ("", -1))[1]


def type_name(oid: int) -> str:
    return TYPES.get(oid, ("text", -1))[0]


@lru_cache(maxsize=4096)
def oid_for_declared(decltype: str | None) -> int | None:
    """The OID for a column's declared type, or None (an expression: decide by value)."""
    if not decltype:
        return None
    t = decltype.strip().upper()
    if t.startswith("BOOL"):
        return BOOL
    if t.startswith("TIMESTAMPTZ") or "WITH TIME ZONE" in t:
        return TIMESTAMPTZ
    if t.startswith("TIMESTAMP") or t == "DATETIME":
        return TIMESTAMP
    if t.startswith("NUMERIC") or t.startswith("DECIMAL"):
        return NUMERIC
    # SQLite's affinity rules (https://sqlite.org/datatype3.html#determination_of_column_affinity)
    if "INT" in t:
        return INT8
    if "CHAR" in t or "CLOB" in t or "TEXT" in t:
        return TEXT
    if "BLOB" in t or "BYTEA" in t:
        return BYTEA
    if "REAL" in t or "FLOA" in t or "DOUB" in t:
        return FLOAT8
    return TEXT


def oid_for_value(value: Any) -> int:
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, int):
        return INT8
    if isinstance(value, float):
        return FLOAT8
    if isinstance(value, (bytes, bytearray, memoryview)):
        return BYTEA
    return TEXT


def oid_for_column(decltype: str | None, values: list[Any]) -> int:
    oid = oid_for_declared(decltype)
    if oid is not None:
        return oid
    kinds = {oid_for_value(v) for v in values if v is not None}
    return kinds.pop() if len(kinds) == 1 else TEXT


# -- results: SQLite value -> bytes in a DataRow ---------------------------------------

def _float_text(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(value)


def encode_text(value: Any, oid: int) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return b"\\x" + bytes(value).hex().encode()
    if oid == BOOL:
        if isinstance(value, (int, float)):
            return b"t" if value else b"f"
        return b"t" if str(value).lower() in ("t", "true", "1", "yes", "on") else b"f"
    if isinstance(value, float):
        if oid in (INT8, INT2, INT4) and value.is_integer():
            return str(int(value)).encode()
        return _float_text(value).encode()
    if oid == BYTEA:
        return b"\\x" + str(value).encode().hex().encode()
    return str(value).encode()


def _timestamp_micros(value: Any) -> int:
    if isinstance(value, (int, float)):
        moment = datetime.fromtimestamp(value, timezone.utc)
    else:
        moment = datetime.fromisoformat(str(value).strip().replace(" ", "T", 1))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
    delta = moment - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def encode_binary(value: Any, oid: int) -> bytes:
    """Binary format for the OIDs this module hands out; ValueError if impossible."""
    if oid == INT8:
        return struct.pack("!q", int(value))
    if oid == FLOAT8:
        return struct.pack("!d", float(value))
    if oid == BOOL:
        return b"\x01" if encode_text(value, BOOL) == b"t" else b"\x00"
    if oid == BYTEA:
        return bytes(value) if isinstance(value, (bytes, bytearray, memoryview)) else str(value).encode()
    if oid in (TIMESTAMP, TIMESTAMPTZ):
        return struct.pack("!q", _timestamp_micros(value))
    if oid == NUMERIC:
        return _numeric_binary(Decimal(str(value)))
    return encode_text(value, oid)


def _numeric_binary(number: Decimal) -> bytes:
    if number.is_nan():
        return struct.pack("!hhHH", 0, 0, 0xC000, 0)
    sign, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)
    dscale = max(0, -exponent)
    text = "".join(map(str, digits))
    # Align to base-10000 groups around the decimal point.
    int_len = len(text) + exponent
    if int_len > 0:
        int_part, frac_part = text[:int_len] if exponent < 0 else text + "0" * exponent, text[int_len:] if exponent < 0 else ""
    else:
        int_part, frac_part = "", "0" * (-int_len) + text
    int_part = int_part.lstrip("0")
    int_part = "0" * (-len(int_part) % 4) + int_part
    frac_part = frac_part + "0" * (-len(frac_part) % 4)
    groups = [int(int_part[i:i + 4]) for i in range(0, len(int_part), 4)]
    weight = len(groups) - 1
    groups += [int(frac_part[i:i + 4]) for i in range(0, len(frac_part), 4)]
    while groups and groups[0] == 0:
        groups.pop(0)
        weight -= 1
    while groups and groups[-1] == 0:
        groups.pop()
    if not groups:
        weight = 0
    return struct.pack(f"!hhHH{len(groups)}H", len(groups), weight, 0x4000 if sign else 0, dscale, *groups)


# -- parameters: bytes from Bind -> a value SQLite binds -----------------------------

def decode_param(data: bytes, oid: int, binary: bool) -> Any:
    """A Bind parameter as a Python value for sqlite3; ValueError if malformed."""
    if not binary:
        text = data.decode("utf-8")
        if oid in (INT2, INT4, INT8, OID):
            return int(text)
        if oid in (FLOAT4, FLOAT8):
            return float(text)
        if oid == BOOL:
            return 1 if text.lower() in ("t", "true", "1", "yes", "on", "y") else 0
        if oid == BYTEA:
            return bytes.fromhex(text[2:]) if text.startswith("\\x") else text.encode()
        if oid == NUMERIC:
            try:
                number = Decimal(text)
            except InvalidOperation:
                raise ValueError("invalid numeric") from None
            return int(number) if number == number.to_integral_value() and abs(number) < 2**63 else float(number)
        return text
    size = len(data)
    if oid == INT8 and size == 8:
        return struct.unpack("!q", data)[0]
    if oid == INT4 and size == 4:
        return struct.unpack("!i", data)[0]
    if oid == INT2 and size == 2:
        return struct.unpack("!h", data)[0]
    if oid == OID and size == 4:
        return struct.unpack("!I", data)[0]
    if oid == FLOAT8 and size == 8:
        return struct.unpack("!d", data)[0]
    if oid == FLOAT4 and size == 4:
        return struct.unpack("!f", data)[0]
    if oid == BOOL and size == 1:
        return 1 if data != b"\x00" else 0
    if oid == BYTEA:
        return bytes(data)
    if oid in (TIMESTAMP, TIMESTAMPTZ) and size == 8:
        micros = struct.unpack("!q", data)[0]
        from datetime import timedelta
        return (_EPOCH + timedelta(microseconds=micros)).strftime("%Y-%m-%d %H:%M:%S.%f").rstrip("0").rstrip(".")
    if oid == NUMERIC and size >= 8:
        return _numeric_from_binary(data)
    if oid in (TEXT, VARCHAR, BPCHAR, NAME, UNKNOWN, JSON, CHAR, 0):
        return data.decode("utf-8")
    raise ValueError(f"cannot read a binary parameter of type {type_name(oid)} ({size} bytes)")


def _numeric_from_binary(data: bytes) -> Any:
    ndigits, weight, sign, dscale = struct.unpack("!hhHH", data[:8])
    if ndigits < 0 or len(data) != 8 + 2 * ndigits:
        raise ValueError("malformed numeric")
    if sign == 0xC000:
        return float("nan")
    groups = struct.unpack(f"!{ndigits}H", data[8:])
    number = Decimal(0)
    for i, group in enumerate(groups):
        number += Decimal(group) * (Decimal(10000) ** (weight - i))
    if sign == 0x4000:
        number = -number
    if number == number.to_integral_value() and abs(number) < 2**63:
        return int(number)
    return float(number)


def oid_for_cast(type_text: str) -> int:
    """The OID a `::type` cast in a query names (unknown names: text)."""
    name = re.sub(r"\(.*", "", type_text.strip().lower()).strip()
    if name.endswith("[]"):
        return TEXT
    if name in BY_NAME:
        oid = BY_NAME[name]
        return INT8 if oid in (INT2, INT4) else FLOAT8 if oid == FLOAT4 else TEXT if oid in (VARCHAR, BPCHAR, NAME, CHAR) else oid
    return oid_for_declared(name) or TEXT
