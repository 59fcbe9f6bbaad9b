"""Backend messages of the PostgreSQL protocol v3, encoded to bytes (sans-IO)."""

from __future__ import annotations

import struct
from functools import lru_cache
from typing import Iterable, Sequence

from agora.sql.pgwire.types import type_size


def _msg(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def _cstr(text: str) -> bytes:
    return text.encode("utf-8", "replace").replace(b"\x00", b"") + b"\x00"


def authentication_ok() -> bytes:
    return _msg(b"R", struct.pack("!i", 0))


def authentication_cleartext() -> bytes:
    return _msg(b"R", struct.pack("!i", 3))


def authentication_sasl(mechanisms: Sequence[str]) -> bytes:
    return _msg(b"R", struct.pack("!i", 10) + b"".join(_cstr(m) for m in mechanisms) + b"\x00")


def authentication_sasl_continue(data: bytes) -> bytes:
    return _msg(b"R", struct.pack("!i", 11) + data)


def authentication_sasl_final(data: bytes) -> bytes:
    return _msg(b"R", struct.pack("!i", 12) + data)


def parameter_status(name: str, value: str) -> bytes:
    return _msg(b"S", _cstr(name) + _cstr(value))


def backend_key_data(process_id: int, secret: int) -> bytes:
    return _msg(b"K", struct.pack("!iI", process_id, secret))


def negotiate_protocol_version(minor: int, unknown: Sequence[str]) -> bytes:
    return _msg(b"v", struct.pack("!ii", minor, len(unknown)) + b"".join(_cstr(o) for o in unknown))


# ReadyForQuery for each transaction status: idle, in a transaction, in a failed one.
READY_FOR_QUERY = {status: _msg(b"Z", status.encode()) for status in "ITE"}


def row_description(columns: Iterable[tuple[str, int]], formats: Sequence[int] = ()) -> bytes:
    """``columns``: (name, type OID); ``formats``: one per column, one for all, or none (text)."""
    parts = []
    columns = list(columns)
    for i, (name, oid) in enumerate(columns):
        fmt = formats[i] if len(formats) > 1 else formats[0] if formats else 0
        parts.append(_cstr(name) + struct.pack("!ihihih", 0, 0, oid, type_size(oid), -1, fmt))
    return _msg(b"T", struct.pack("!h", len(columns)) + b"".join(parts))


def data_row(values: Sequence[bytes | None]) -> bytes:
    parts = [_INT16.pack(len(values))]
    for value in values:
        if value is None:
            parts.append(b"\xff\xff\xff\xff")
        else:
            parts.append(_INT32.pack(len(value)))
            parts.append(value)
    body = b"".join(parts)
    return b"D" + _INT32.pack(len(body) + 4) + body


_INT16, _INT32 = struct.Struct("!h"), struct.Struct("!i")


@lru_cache(maxsize=1024)
def command_complete(tag: str) -> bytes:
    return _msg(b"C", _cstr(tag))


EMPTY_QUERY_RESPONSE = _msg(b"I")


PARSE_COMPLETE = _msg(b"1")


BIND_COMPLETE = _msg(b"2")


CLOSE_COMPLETE = _msg(b"3")


NO_DATA = _msg(b"n")


PORTAL_SUSPENDED = _msg(b"s")


def parameter_description(oids: Sequence[int]) -> bytes:
    return _msg(b"t", struct.pack(f"!h{len(oids)}I", len(oids), *oids))


def _fields(severity: str, sqlstate: str, message: str, detail: str | None, hint: str | None,
            position: int | None) -> bytes:
    body = b"S" + _cstr(severity) + b"V" + _cstr(severity) + b"C" + _cstr(sqlstate) + b"M" + _cstr(message)
    if detail:
        body += b"D" + _cstr(detail)
    if hint:
        body += b"H" + _cstr(hint)
    if position:
        body += b"P" + _cstr(str(position))
    return body + b"\x00"


def error_response(sqlstate: str, message: str, *, severity: str = "ERROR", detail: str | None = None,
                   hint: str | None = None, position: int | None = None) -> bytes:
    return _msg(b"E", _fields(severity, sqlstate, message, detail, hint, position))


def notice_response(message: str, *, sqlstate: str = "00000", severity: str = "NOTICE") -> bytes:
    return _msg(b"N", _fields(severity, sqlstate, message, None, None, None))


SSL_ACCEPT = b"S"
SSL_REFUSE = b"N"
