"""The IMAP command reader, sans-IO (as h11): bytes in, events out, no socket.

``feed(data)`` buffers what arrived; ``next_event()`` returns the next event or None when
more bytes are needed. One event at a time, so that the session can switch modes (IDLE,
AUTHENTICATE) before the bytes that follow are read:

- :class:`Command`: a whole command, literals included, with typed arguments (grammar.py);
- :class:`Continue`: the client announced a synchronising literal ``{n}`` and waits for
  "+" before it sends it (a non-synchronising ``{n+}`` (RFC 7888) needs none);
- :class:`Line`: one line, after :meth:`Parser.expect_line` (IDLE's DONE, SASL answers);
- :class:`Error`: the command cannot be run: answer ``tag BAD`` (or ``* BAD`` without a
  usable tag) and read on, unless ``fatal``: then say BYE and close, because what the
  client sends next cannot be told apart from commands (an oversize ``{n+}`` literal).

Limits: a command's text (without its literals) is at most ``max_line`` bytes; each
literal, and all the literals of one command together, at most ``max_literal``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from agora.mail.imap.grammar import Bad, parse_command

_LITERAL_AT_END = re.compile(rb"~?\{(\d{1,20})(\+?)\}\Z")
_TAG = re.compile(rb"[\x21\x23\x24\x26\x27\x2c-\x5b\x5d-\x7a\x7c-\x7e]+")
# How much of a line that is being skipped to keep, to see a literal announced at its end.
_TAIL = 32


@dataclass(slots=True)
class Command:
    tag: str
    name: str            # upper case: "FETCH", "LOGIN"...; UID commands have uid=True
    args: tuple[Any, ...]
    uid: bool = False


@dataclass(slots=True)
class Continue:
    pass


@dataclass(slots=True)
class Line:
    data: bytes


@dataclass(slots=True)
class Error:
    tag: str | None       # None: answer "* BAD"
    text: str
    code: str | None = None  # response code, e.g. "TOOBIG"
    status: str = "BAD"
    fatal: bool = False


Event = Command | Continue | Line | Error


def tag_of(line: bytes) -> str | None:
    """The tag a line starts with, if it is a valid one (so that an error can carry it)."""
    match = _TAG.match(line)
    if match and match.end() < len(line) and line[match.end()] == 0x20 and match.end() <= 64:
        return match.group().decode("ascii")
    return None


class Parser:
    def __init__(self, max_line: int = 64 * 1024, max_literal: int = 50 * 1024 * 1024):
        self.max_line = max_line
        self.max_literal = max_literal
        self._buf = bytearray()
        self._pos = 0             # what is before it in _buf has been read
        self._scan = 0            # where to look for the next LF in _buf
        self._parts: list[bytes] = []   # text, literal, text, literal... of this command
        self._text_len = 0        # bytes of text so far in this command
        self._literal_len = 0     # bytes of literals so far in this command
        self._need = 0            # literal bytes still to come
        self._literal = bytearray()
        self._skipping = False    # dropping an overlong command up to its end
        self._skip_tag: str | None = None
        self._skip_tail = b""
        self._discard = 0         # literal bytes to drop while skipping
        self._line_mode = False

    # -- the interface ---------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if self._pos:
            del self._buf[:self._pos]
            self._scan -= self._pos
            self._pos = 0
        self._buf += data

    def expect_line(self) -> None:
        """Return the next line as a :class:`Line`, whatever it holds, then commands again."""
        self._line_mode = True

    def reset(self) -> None:
        """Forget everything buffered (after STARTTLS, what came in plain text must go)."""
        self.__init__(self.max_line, self.max_literal)  # type: ignore[misc]

    @property
    def pending(self) -> bool:
        """A command has begun but not ended (the server times such a one out)."""
        return bool(len(self._buf) > self._pos or self._parts or self._need or self._skipping
                    or self._discard)

    def next_event(self) -> Event | None:
        buf = self._buf
        while True:
            if self._need or self._discard:
                take = min(self._need or self._discard, len(buf) - self._pos)
                if self._need:
                    self._literal += buf[self._pos:self._pos + take]
                    self._need -= take
                else:
                    self._discard -= take
                self._pos += take
                self._scan = self._pos
                if self._need or self._discard:
                    return None
                if not self._skipping:
                    self._parts.append(bytes(self._literal))
                    self._literal = bytearray()
                continue
            end = buf.find(b"\n", max(self._scan, self._pos))
            if end < 0:
                self._scan = len(buf)
                if self._skipping:
                    self._skip_tail = (self._skip_tail + bytes(buf[self._pos:]))[-_TAIL:]
                    self._pos = self._scan = len(buf)
                    return None
                if self._text_len + len(buf) - self._pos > self.max_line:
                    return self._overlong(None)
                return None
            line = bytes(buf[self._pos:end])
            self._pos = self._scan = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if self._skipping:
                event = self._skipped_line(self._skip_tail + line)
                if event is not None:
                    return event
                continue
            if self._text_len + len(line) > self.max_line:
                event = self._overlong(line)
                if event is not None:
                    return event
                continue
            if self._line_mode:
                self._line_mode = False
                return Line(line)
            if not line and not self._parts:
                continue  # blank lines between commands are harmless
            event = self._command_line(line)
            if event is not None:
                return event

    # -- the steps -------------------------------------------------------------------

    def _command_line(self, line: bytes) -> Event | None:
        self._parts.append(line)
        self._text_len += len(line)
        match = _LITERAL_AT_END.search(line)
        if match:
            size, plus = int(match.group(1)), bool(match.group(2))
            if self._literal_len + size > self.max_literal:
                tag = tag_of(self._parts[0])
                self._end_command()
                text = f"literal too large (at most {self.max_literal} bytes)"
                if plus:
                    return Error(tag, text, "TOOBIG", fatal=True)
                return Error(tag, text, "TOOBIG", status="NO")
            self._literal_len += size
            self._need = size
            if size == 0:
                self._parts.append(b"")
            return None if plus else Continue()
        parts = self._parts
        self._end_command()
        return _parse(parts)

    def _overlong(self, line: bytes | None) -> Event:
        """The command passed max_line: say so, then drop it up to its end. ``line`` is
        the whole offending line if it has ended, else it is still in the buffer."""
        first = self._parts[0] if self._parts else (line if line is not None else bytes(self._buf[self._pos:]))
        tag = tag_of(first)
        self._end_command()
        self._line_mode = False
        error = Error(tag, f"command line too long (at most {self.max_line} bytes)", "TOOBIG")
        self._skip_tag = tag
        if line is not None:
            # The line has ended, and may announce a literal that belongs to it too.
            fatal = self._skipped_line(line)
            if fatal is not None:
                return fatal
        else:
            self._skipping = True
            self._skip_tail = bytes(self._buf[-_TAIL:])
            self._pos = self._scan = len(self._buf)
        return error

    def _skipped_line(self, line: bytes) -> Error | None:
        """The end of a line of a command being dropped: drop what follows if it announces
        a non-synchronising literal (the "+" a synchronising one waits for never comes)."""
        match = _LITERAL_AT_END.search(line)
        self._skip_tail = b""
        self._skipping = False
        if match and match.group(2):
            size = int(match.group(1))
            if size > self.max_literal:
                return Error(self._skip_tag, "literal too large", "TOOBIG", fatal=True)
            self._skipping = True
            self._discard = size
        return None

    def _end_command(self) -> None:
        self._parts = []
        self._text_len = 0
        self._literal_len = 0


def _parse(parts: list[bytes]) -> Event:
    tag = tag_of(parts[0] + (b" " if len(parts) == 1 else b""))
    if tag is None:
        return Error(None, "missing or invalid tag")
    try:
        name, uid, args = parse_command(parts, len(tag) + 1)
    except Bad as error:
        return Error(tag, str(error), error.code)
    return Command(tag, name, args, uid)
