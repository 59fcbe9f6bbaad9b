"""Serialising IMAP responses: strings (quoted or literal), NIL, lists, flags, dates."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any, Iterable

from agora.mail.imap import mutf7
from agora.mail.imap.grammar import MONTHS

# Longer strings, and any with CR, LF, NUL, other controls or 8-bit bytes, go as literals.
MAX_QUOTED = 1024
_QUOTABLE = re.compile(rb"[\x20-\x7e]*")
_UNSAFE_TEXT = re.compile(r"[^\x20-\x7e]")
CRLF = b"\r\n"


def string(value: str | bytes) -> bytes:
    data = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    if len(data) <= MAX_QUOTED and _QUOTABLE.fullmatch(data):
        if b'"' in data or b"\\" in data:
            data = data.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
        return b'"' + data + b'"'
    return b"{%d}\r\n" % len(data) + data


def nstring(value: str | bytes | None) -> bytes:
    return b"NIL" if value is None else string(value)


def literal(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data


def encode(value: Any) -> bytes:
    """A nested structure from message.summarize (None = NIL, str/bytes = string,
    int = number, list = parenthesised list) in its wire form."""
    return _encode(value).encode("utf-8", "surrogateescape")


def _text_string(value: str) -> str:
    if len(value) <= MAX_QUOTED and value.isascii() and value.isprintable():
        if '"' in value or "\\" in value:
            value = value.replace("\\", "\\\\").replace('"', '\\"')
        return '"' + value + '"'
    return "{%d}\r\n" % len(value.encode("utf-8", "surrogateescape")) + value


def _encode(value: Any) -> str:
    # Built as text and encoded once: this runs for every ENVELOPE and BODYSTRUCTURE.
    kind = type(value)
    if kind is list:
        return "(" + " ".join([_text_string(v) if type(v) is str else _encode(v) for v in value]) + ")"
    if kind is str:
        return _text_string(value)
    if value is None:
        return "NIL"
    if kind is int:
        return str(value)
    if kind is bool:
        return "1" if value else "0"
    if kind is bytes:
        return string(value).decode("utf-8", "surrogateescape")
    if kind is tuple:
        return _encode(list(value))
    for base in (bool, str, int, list, tuple):  # subclasses: as their base
        if isinstance(value, base):
            return _encode(base(value))
    raise TypeError(f"cannot encode {kind.__name__}")


_FLAG_CACHE: dict[frozenset[str], bytes] = {}


def flags(values: Iterable[str]) -> bytes:
    """A flag list; lists seen before come from a cache (there are few different ones)."""
    key = values if isinstance(values, frozenset) else frozenset(values)
    cached = _FLAG_CACHE.get(key)
    if cached is None:
        cached = b"(" + " ".join(sorted(key, key=_flag_order)).encode("utf-8", "replace") + b")"
        if len(_FLAG_CACHE) < 4096:
            _FLAG_CACHE[key] = cached
    return cached


def _flag_order(flag: str) -> tuple[bool, str]:
    return (not flag.startswith("\\"), flag)


def internaldate(when: datetime) -> bytes:
    """ "17-Jul-1996 02:44:25 -0700", in the date's own offset (UTC if it has none)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    offset = when.utcoffset()
    minutes = int(offset.total_seconds() // 60) if offset else 0
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    return (f'"{when.day:2d}-{MONTHS[when.month - 1]}-{when.year:04d} '
            f'{when.hour:02d}:{when.minute:02d}:{when.second:02d} {sign}{minutes // 60:02d}{minutes % 60:02d}"').encode()


def mailbox(name: str) -> bytes:
    return string(mutf7.encode(name))


def text(value: str) -> str:
    """Human-readable response text: one line of printable ASCII."""
    return _UNSAFE_TEXT.sub("?", value)[:400]


def tagged(tag: str, status: str, message: str, code: str | None = None) -> bytes:
    head = f"{tag} {status} " + (f"[{code}] " if code else "")
    return (head + text(message)).encode("ascii") + CRLF


def untagged(line: str | bytes) -> bytes:
    return b"* " + (line.encode("utf-8", "replace") if isinstance(line, str) else line) + CRLF


def continuation(message: str = "Ready") -> bytes:
    return b"+ " + text(message).encode("ascii") + CRLF
