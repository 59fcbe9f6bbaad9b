"""The IMAP4rev1 command grammar (RFC 3501 section 9, with the extensions we offer):
turns one command, its literals already read, into typed arguments.

A command is a list of parts: text, literal, text, literal, ..., text; every text part
but the last ends with the literal's announcement ``{n}``/``{n+}``.

Arguments by command (``Command.args``):
  LOGIN (user, password)               AUTHENTICATE (mechanism, initial response or None)
  SELECT/EXAMINE/CREATE/DELETE/SUBSCRIBE/UNSUBSCRIBE (mailbox,)      RENAME (old, new)
  LIST (reference, pattern, selection options, return options)       LSUB (reference, pattern)
  STATUS (mailbox, items)              APPEND (mailbox, flags, date-time or None, message)
  SEARCH (charset or None, key)        FETCH (sequence set, [FetchAtt...])
  STORE (sequence set, mode "set"/"add"/"remove", silent, flags)
  COPY/MOVE (sequence set, mailbox)    UID EXPUNGE (sequence set,)
  ID (dict or None)                    ENABLE (capabilities...)
Mailbox names are decoded (modified UTF-7) and INBOX in any case is "INBOX".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

from agora.mail.imap import mutf7
from agora.mail.imap.sequence import SequenceSet, parse_sequence_set

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH = {m.upper(): i + 1 for i, m in enumerate(MONTHS)}
SYSTEM_FLAGS = {f.upper(): f for f in ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft", "\\Recent")}
MAX_DEPTH = 64  # of nested search keys and lists

# atom-char: any CHAR but atom-specials "(" ")" "{" SP CTL "%" "*" DQUOTE "\" "]"
_ATOM = re.compile(rb"[\x21\x23\x24\x26\x27\x2b-\x5b\x5e-\x7a\x7c-\x7e]+")
_ASTRING = re.compile(rb"[\x21\x23\x24\x26\x27\x2b-\x5b\x5d-\x7a\x7c-\x7e]+")  # and "]"
_LIST_MAILBOX = re.compile(rb"[\x21\x23-\x27\x2a-\x5b\x5d-\x7a\x7c-\x7e]+")  # and "%" "*"
_NUMBER = re.compile(rb"\d+")
_SEQUENCE = re.compile(rb"[\d:*,]+")
_DATE_TIME = re.compile(r"([ \d]?\d)-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)")
_DATE = re.compile(r"(\d{1,2})-([A-Za-z]{3})-(\d{4})")
_LITERAL = re.compile(rb"\{\d+\+?\}")
_SECTION_PART = re.compile(r"\d+(?:\.\d+)*")


class Bad(Exception):
    def __init__(self, text: str, code: str | None = None):
        super().__init__(text)
        self.code = code


@dataclass(frozen=True, slots=True)
class FetchAtt:
    name: str                     # FLAGS, ENVELOPE, BODY (with a section), RFC822.HEADER...
    section: str | None = None    # BODY[section]: "" (all), "1.2.MIME", "HEADER.FIELDS (A B)"
    partial: tuple[int, int] | None = None  # <origin.count>
    peek: bool = False

    @property
    def label(self) -> bytes:
        """How the response names it: BODY[1]<0> for BODY.PEEK[1]<0.100>."""
        if self.section is None:
            return self.name.encode()
        tail = f"<{self.partial[0]}>" if self.partial else ""
        return f"BODY[{self.section}]{tail}".encode()


class Reader:
    def __init__(self, parts: list[bytes], pos: int = 0):
        self.parts = parts
        self.index = 0
        self.text = parts[0]
        self.pos = pos
        self.depth = 0

    # -- characters ------------------------------------------------------------------

    def peek(self) -> int | None:
        return self.text[self.pos] if self.pos < len(self.text) else None

    def at_end(self) -> bool:
        return self.pos >= len(self.text) and self.index == len(self.parts) - 1

    def expect(self, char: bytes, what: str | None = None) -> None:
        if self.text[self.pos:self.pos + 1] != char:
            raise Bad(f"expected {what or repr(char.decode())}")
        self.pos += 1

    def sp(self) -> None:
        self.expect(b" ", "a space")

    def maybe(self, char: bytes) -> bool:
        if self.text[self.pos:self.pos + 1] == char:
            self.pos += 1
            return True
        return False

    def end(self) -> None:
        if not self.at_end():
            raise Bad("unexpected characters at the end of the command")

    def _match(self, pattern: re.Pattern[bytes], what: str) -> bytes:
        match = pattern.match(self.text, self.pos)
        if not match:
            raise Bad(f"expected {what}")
        self.pos = match.end()
        return match.group()

    # -- tokens ----------------------------------------------------------------------

    def atom(self, what: str = "an atom") -> str:
        return self._match(_ATOM, what).decode("ascii")

    def number(self, what: str = "a number") -> int:
        value = int(self._match(_NUMBER, what))
        if value > 0xFFFFFFFF:
            raise Bad(f"{what} is too large")
        return value

    def quoted(self) -> bytes:
        self.expect(b'"')
        out = bytearray()
        text = self.text
        while True:
            end = self.pos
            while end < len(text) and text[end] not in (0x22, 0x5C):
                end += 1
            out += text[self.pos:end]
            if end >= len(text):
                raise Bad("unterminated quoted string")
            self.pos = end + 1
            if text[end] == 0x22:
                return bytes(out)
            if self.pos >= len(text) or text[self.pos] not in (0x22, 0x5C):
                raise Bad("bad escape in quoted string")
            out.append(text[self.pos])
            self.pos += 1

    def literal(self) -> bytes:
        self.maybe(b"~")
        match = _LITERAL.match(self.text, self.pos)
        if not match or match.end() != len(self.text) or self.index + 2 >= len(self.parts):
            raise Bad("bad literal")
        value = self.parts[self.index + 1]
        self.index += 2
        self.text = self.parts[self.index]
        self.pos = 0
        return value

    def string(self, what: str = "a string") -> bytes:
        char = self.peek()
        if char == 0x22:
            return self.quoted()
        if char in (0x7B, 0x7E):
            return self.literal()
        raise Bad(f"expected {what}")

    def astring(self, what: str = "a string") -> bytes:
        char = self.peek()
        if char in (0x22, 0x7B, 0x7E):
            return self.string(what)
        return self._match(_ASTRING, what)

    def nstring(self) -> bytes | None:
        if self.text[self.pos:self.pos + 3].upper() == b"NIL" and not _ASTRING.match(self.text, self.pos + 3):
            self.pos += 3
            return None
        return self.string()

    def text_arg(self, what: str = "a string") -> str:
        return self.astring(what).decode("utf-8", "replace")

    def mailbox(self) -> str:
        return decode_mailbox(self.astring("a mailbox name"))

    def list_mailbox(self) -> str:
        if self.peek() in (0x22, 0x7B, 0x7E):
            raw = self.string()
        else:
            raw = self._match(_LIST_MAILBOX, "a mailbox pattern")
        return decode_mailbox(raw, pattern=True)

    def sequence_set(self) -> SequenceSet:
        raw = self._match(_SEQUENCE, "a sequence set")
        try:
            return parse_sequence_set(raw.decode("ascii"))
        except ValueError as error:
            raise Bad(str(error)) from None

    def flag(self) -> str:
        if self.maybe(b"\\"):
            if self.maybe(b"*"):
                return "\\*"
            name = "\\" + self.atom("a flag")
            return SYSTEM_FLAGS.get(name.upper(), name)
        return self.atom("a flag")

    def flag_list(self) -> list[str]:
        self.expect(b"(")
        flags = []
        while not self.maybe(b")"):
            if flags:
                self.sp()
            flags.append(self.flag())
        return flags

    def date(self) -> date:
        quoted = self.peek() == 0x22
        raw = self.quoted().decode("ascii", "replace") if quoted else self._match(_ASTRING, "a date").decode()
        match = _DATE.fullmatch(raw)
        if not match or match.group(2).upper() not in _MONTH:
            raise Bad("expected a date like 1-Feb-2024")
        try:
            return date(int(match.group(3)), _MONTH[match.group(2).upper()], int(match.group(1)))
        except ValueError:
            raise Bad("not a valid date") from None

    def date_time(self) -> datetime:
        match = _DATE_TIME.fullmatch(self.quoted().decode("ascii", "replace"))
        if not match or match.group(2).upper() not in _MONTH:
            raise Bad('expected a date-time like "01-Feb-2024 10:00:00 +0000"')
        day, month, year, hh, mm, ss, sign, zh, zm = match.groups()
        try:
            offset = timedelta(hours=int(zh), minutes=int(zm)) * (-1 if sign == "-" else 1)
            return datetime(int(year), _MONTH[month.upper()], int(day), int(hh), int(mm), int(ss),
                            tzinfo=timezone(offset))
        except ValueError:
            raise Bad("not a valid date-time") from None

    def paren_list(self, item) -> list[Any]:
        self.expect(b"(")
        items: list[Any] = []
        while not self.maybe(b")"):
            if items:
                self.sp()
            items.append(item())
        return items


def decode_mailbox(raw: bytes, pattern: bool = False) -> str:
    try:
        name = mutf7.decode(raw)
    except ValueError:
        # Clients that send UTF-8 as it is (as if UTF8=ACCEPT): take it when it is that.
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise Bad("mailbox name is neither modified UTF-7 nor UTF-8") from None
        if b"&" in raw or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
            raise Bad("mailbox name is not valid modified UTF-7")
    if not pattern and name.upper() == "INBOX":
        return "INBOX"
    if name.upper().startswith("INBOX.") and not pattern:
        return "INBOX" + name[5:]
    return name


def parse_command(parts: list[bytes], start: int) -> tuple[str, bool, tuple[Any, ...]]:
    from agora.mail.imap.commands import ARGUMENTS

    reader = Reader(parts, start)
    name = reader.atom("a command name").upper()
    uid = False
    if name == "UID":
        reader.sp()
        name = reader.atom("a command name").upper()
        uid = True
        if name not in ("FETCH", "SEARCH", "STORE", "COPY", "MOVE", "EXPUNGE"):
            raise Bad(f"UID {name} is not a command")
    parse = ARGUMENTS.get(name)
    if parse is None:
        raise Bad(f"unknown command {name[:40]}")
    if uid and name == "EXPUNGE":
        reader.sp()
        args: tuple[Any, ...] = (reader.sequence_set(),)
    else:
        args = parse(reader)
    reader.end()
    return name, uid, args
