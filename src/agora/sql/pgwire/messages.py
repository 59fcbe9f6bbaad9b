"""Backend messages of the PostgreSQL protocol v3, encoded to bytes (sans-IO)."""

from __future__ import annotations

import struct
from typing import Sequence



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


def backend_key_data(process_id: int, secret: int) -> bytes:
    return _msg(b"K", struct.pack("!iI", process_id, secret))


def negotiate_protocol_version(minor: int, unknown: Sequence[str]) -> bytes:
    return _msg(b"v", struct.pack("!ii", minor, len(unknown)) + b"".join(_cstr(o) for o in unknown))


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


SSL_ACCEPT = b"S"
SSL_REFUSE = b"N"
