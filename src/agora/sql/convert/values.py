"""Stored SQLite values checked and converted for a PostgreSQL column type: each
converter returns the value COPY is given, or raises ``_Unfit``."""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import uuid
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any


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
