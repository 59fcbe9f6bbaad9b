"""POP3 (RFC 1939, CAPA and response codes of RFC 2449, STLS of RFC 2595, SASL PLAIN of
RFC 5034) as a sans-IO state machine: bytes in, bytes out, and an event whenever the
session has to do I/O (check a password, read a message, start TLS, apply deletions).

Nothing here touches a socket, a file or the store, so every input can be tried without
a network (tests/test_mail_pop3_protocol.py fuzzes it). The asyncio side is session.py.

Usage: ``receive_data(bytes)`` (``b""`` at the end of input), then ``next_event()``
until it returns None, answering each event with the matching method (``logged_in`` or
``login_failed`` for Login, ...) before asking for the next one; ``data_to_send()``
returns what to write. Commands are handled one at a time and in order, so pipelined
commands get their replies in order.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field

AUTHORIZATION, TRANSACTION, UPDATE, CLOSED = "authorization", "transaction", "update", "closed"
CRLF = b"\r\n"
MAX_NUMBER = 10 ** 9  # larger message numbers and line counts are refused, not parsed
# Replies buffered before the machine stops to have them written (Flush): a client
# pipelining thousands of LISTs gets them at the pace it reads them.
FLUSH_AT = 256 * 1024
_NUMBER = re.compile(r"[0-9]{1,10}")
_KEYWORD = re.compile(r"[A-Za-z]{1,8}")


@dataclass(frozen=True)
class Entry:
    """One message of the maildrop as the session saw it at login."""

    uid: int
    key: str   # the UIDL unique-id: 1-70 characters 0x21-0x7E
    size: int


# -- events: what the session has to do --------------------------------------------------


@dataclass(frozen=True)
class Login:
    """Check this name and password; answer with logged_in() or login_failed()."""

    name: str
    password: str


@dataclass(frozen=True)
class Retrieve:
    """Send message ``number``: start_retrieve(), the message through a MessageEncoder,
    then retrieve_done(); or retrieve_failed() if it cannot be read."""

    number: int
    uid: int
    size: int
    lines: int | None  # None for RETR, the body lines wanted for TOP


@dataclass(frozen=True)
class StartTLS:
    """The +OK is in data_to_send(): write it, start TLS, then tls_started()."""


@dataclass(frozen=True)
class Update:
    """QUIT in the TRANSACTION state: remove ``deleted``, mark ``seen`` as read, then
    updated()."""

    deleted: tuple[int, ...]
    seen: tuple[int, ...]


@dataclass(frozen=True)
class Flush:
    """Write data_to_send() (and wait until the client takes it), then ask again."""


@dataclass(frozen=True)
class Close:
    """Write what is left in data_to_send() and close the connection."""


Event = Login | Retrieve | StartTLS | Update | Flush | Close


@dataclass
class _Maildrop:
    entries: list[Entry]
    deleted: set[int] = field(default_factory=set)   # message numbers, 1-based
    retrieved: set[int] = field(default_factory=set)


class POP3:
    def __init__(self, *, max_line: int = 8192, stls: bool = False, secure: bool = False,
                 login_allowed: bool = True, implementation: str = "Agora"):
        self.max_line = max(max_line, 64)
        self.stls = stls                    # STLS offered (the listener has a certificate, no TLS yet)
        self.secure = secure
        self.login_allowed = login_allowed  # plain-text passwords accepted on this connection
        self.implementation = implementation
        self.state = AUTHORIZATION
        self._in = bytearray()
        self._out = bytearray()
        self._eof = False
        self._discarding = False   # in the rest of a too-long line
        self._waiting: Event | None = None
        self._user: str | None = None       # from USER, for PASS
        self._sasl = False                  # the next line is an AUTH PLAIN response
        self._drop: _Maildrop | None = None

    # -- input and output ----------------------------------------------------------------

    def greeting(self) -> None:
        self._ok(f"{self.implementation} POP3 server ready")

    def receive_data(self, data: bytes) -> None:
        if self.state == CLOSED:
            return
        if not data:
            self._eof = True
            return
        self._in += data

    def data_to_send(self) -> bytes:
        data = bytes(self._out)
        self._out.clear()
        return data

    @property
    def pending(self) -> bool:
        """Part of a command has arrived (the session gives the rest command_timeout)."""
        return bool(self._in) or self._discarding

    @property
    def waiting(self) -> bool:
        """An event is outstanding: nothing more happens until the session answers it."""
        return self._waiting is not None

    def next_event(self) -> Event | None:
        if self.state == CLOSED:
            return Close()
        while self._waiting is None:
            if len(self._out) >= FLUSH_AT:
                return Flush()
            line = self._next_line()
            if line is None:
                if self._eof:
                    # The client went without QUIT: nothing is deleted (RFC 1939 6).
                    return self._close()
                return None
            event = self._line(line)
            if event is not None:
                if not isinstance(event, Close):
                    self._waiting = event
                return event
        return None

    def _next_line(self) -> bytes | None:
        while True:
            end = self._in.find(b"\n")
            if self._discarding:
                if end < 0:
                    self._in.clear()
                    return None
                del self._in[:end + 1]
                self._discarding = False
                continue
            if end < 0:
                if len(self._in) > self.max_line + 1:
                    # Answer now rather than buffer without bound; the rest of the line is
                    # dropped when it comes and the session goes on after it.
                    self._in.clear()
                    self._discarding = True
                    self._too_long()
                return None
            if end > self.max_line + 1:  # max_line bytes, then CR LF
                del self._in[:end + 1]
                self._too_long()
                continue
            line = bytes(self._in[:end])
            del self._in[:end + 1]
            return line[:-1] if line.endswith(b"\r") else line

    def _too_long(self) -> None:
        self._sasl = False
        self._err(f"line too long (at most {self.max_line} bytes)")

    # -- replies -------------------------------------------------------------------------

    def _ok(self, text: str = "") -> None:
        self._out += b"+OK" + (b" " + _clean(text) if text else b"") + CRLF

    def _err(self, text: str, code: str | None = None) -> None:
        self._out += b"-ERR " + (f"[{code}] ".encode() if code else b"") + _clean(text) + CRLF

    def _multiline(self, lines: list[str]) -> None:
        for line in lines:
            data = line.encode("ascii", "replace")
            self._out += (b"." + data if data.startswith(b".") else data) + CRLF
        self._out += b"." + CRLF

    def _close(self) -> Close:
        self.state = CLOSED
        self._in.clear()
        self._drop = None
        return Close()

    # -- commands ------------------------------------------------------------------------

    def _line(self, raw: bytes) -> Event | None:
        if self._sasl:
            self._sasl = False
            return self._sasl_response(raw)
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            self._err("command line is not valid UTF-8")
            return None
        keyword, _, argument = line.partition(" ")
        if not _KEYWORD.fullmatch(keyword):
            self._err("unknown command" if line.strip() else "empty command")
            return None
        name = keyword.upper()
        handler = _HANDLERS.get(name)
        if handler is None:
            self._err(f"unknown command {name}")
            return None
        method, states = handler
        if self.state not in states:
            self._err(f"{name} is not valid in the {self.state} state")
            return None
        # PASS takes the whole rest of the line: a password may contain spaces (RFC 1939 7).
        return method(self, argument if name == "PASS" else argument.strip())

    def _capa(self, argument: str) -> Event | None:
        if argument:
            self._err("CAPA takes no argument")
            return None
        lines = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
        if self.state == AUTHORIZATION and self.stls and not self.secure:
            lines.append("STLS")
        if self.login_allowed or self.state != AUTHORIZATION:
            lines += ["USER", "SASL PLAIN"]
        lines.append(f"IMPLEMENTATION {self.implementation}")
        self._ok("Capability list follows")
        self._multiline(lines)
        return None

    def _quit(self, argument: str) -> Event | None:
        if argument:
            self._err("QUIT takes no argument")
            return None
        if self.state == TRANSACTION and self._drop is not None:
            self.state = UPDATE
            drop = self._drop
            return Update(tuple(drop.entries[n - 1].uid for n in sorted(drop.deleted)),
                          tuple(drop.entries[n - 1].uid for n in sorted(drop.retrieved - drop.deleted)))
        self._ok("Agora POP3 server signing off")
        return self._close()

    # AUTHORIZATION

    def _stls(self, argument: str) -> Event | None:
        if argument:
            self._err("STLS takes no argument")
        elif self.secure:
            self._err("TLS is already active")
        elif not self.stls:
            self._err("STLS is not available")
        else:
            self._ok("Begin TLS negotiation now")
            # Whatever the client sent after STLS came in plain text: it must not run as if
            # it had come over TLS (CVE-2011-0411).
            self._in.clear()
            self._discarding = False
            return StartTLS()
        return None

    def _plain_refused(self) -> bool:
        if self.login_allowed:
            return False
        self._err("Plain-text passwords need TLS here: use STLS first", "AUTH")
        return True

    def _user_command(self, argument: str) -> Event | None:
        self._user = None
        if not argument or " " in argument:
            self._err("USER takes one argument: the user name")
        elif not self._plain_refused():
            self._user = argument
            # The same answer for every name: nobody learns which users exist.
            self._ok("send PASS")
        return None

    def _pass(self, argument: str) -> Event | None:
        name, self._user = self._user, None
        if name is None:
            self._err("USER first")
        elif not argument:
            self._err("PASS takes one argument: the password")
        elif not self._plain_refused():
            return Login(name, argument)
        return None

    def _auth(self, argument: str) -> Event | None:
        self._user = None
        if not argument:
            self._ok("Supported SASL mechanisms follow")
            self._multiline(["PLAIN"])
            return None
        mechanism, _, initial = argument.partition(" ")
        if mechanism.upper() != "PLAIN":
            self._err(f"unsupported mechanism {mechanism}; PLAIN is offered")
            return None
        if self._plain_refused():
            return None
        initial = initial.strip()
        if not initial:
            self._out += b"+ " + CRLF
            self._sasl = True
            return None
        return self._sasl_response(initial.encode("utf-8"))

    def _sasl_response(self, raw: bytes) -> Event | None:
        if raw.strip() == b"*":
            self._err("authentication cancelled")
            return None
        try:
            if raw.strip() == b"=":  # an empty initial response (RFC 5034 4)
                decoded = b""
            else:
                decoded = base64.b64decode(raw.strip(), validate=True)
            authzid, authcid, password = decoded.decode("utf-8").split("\0")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            self._err("malformed PLAIN response: base64 of authzid NUL user NUL password", "AUTH")
            return None
        if authzid and authzid != authcid:
            self._err("acting as another user is not supported", "AUTH")
            return None
        if not authcid or not password:
            self._err("empty user name or password", "AUTH")
            return None
        return Login(authcid, password)

    # TRANSACTION

    def _message(self, argument: str) -> int | None:
        """The number of an undeleted message, or None after an -ERR."""
        assert self._drop is not None
        if not _NUMBER.fullmatch(argument):
            self._err("a message number is expected")
            return None
        number = int(argument)
        if not 1 <= number <= len(self._drop.entries):
            self._err(f"no such message {number}")
            return None
        if number in self._drop.deleted:
            self._err(f"message {number} is deleted")
            return None
        return number

    def _live(self) -> list[tuple[int, Entry]]:
        assert self._drop is not None
        return [(n, e) for n, e in enumerate(self._drop.entries, 1) if n not in self._drop.deleted]

    @staticmethod
    def _size_text(entries: list[Entry]) -> str:
        return f"maildrop has {len(entries)} messages ({sum(e.size for e in entries)} octets)"

    def _summary(self) -> str:
        live = self._live()
        return f"{len(live)} {sum(e.size for _, e in live)}"

    def _stat(self, argument: str) -> Event | None:
        if argument:
            self._err("STAT takes no argument")
        else:
            self._ok(self._summary())
        return None

    def _list(self, argument: str) -> Event | None:
        return self._listing(argument, lambda entry: str(entry.size))

    def _uidl(self, argument: str) -> Event | None:
        return self._listing(argument, lambda entry: entry.key)

    def _listing(self, argument: str, column) -> Event | None:
        if argument:
            number = self._message(argument)
            if number is not None:
                assert self._drop is not None
                self._ok(f"{number} {column(self._drop.entries[number - 1])}")
            return None
        live = self._live()
        self._ok(f"{len(live)} messages ({sum(e.size for _, e in live)} octets)")
        self._multiline([f"{n} {column(e)}" for n, e in live])
        return None

    def _retr(self, argument: str) -> Event | None:
        number = self._message(argument)
        if number is None:
            return None
        assert self._drop is not None
        entry = self._drop.entries[number - 1]
        return Retrieve(number, entry.uid, entry.size, None)

    def _top(self, argument: str) -> Event | None:
        message, _, lines = argument.partition(" ")
        if not _NUMBER.fullmatch(lines.strip()) or int(lines) > MAX_NUMBER:
            self._err("TOP takes a message number and a number of lines")
            return None
        number = self._message(message)
        if number is None:
            return None
        assert self._drop is not None
        entry = self._drop.entries[number - 1]
        return Retrieve(number, entry.uid, entry.size, int(lines))

    def _dele(self, argument: str) -> Event | None:
        number = self._message(argument)
        if number is not None:
            assert self._drop is not None
            self._drop.deleted.add(number)
            self._ok(f"message {number} deleted")
        return None

    def _rset(self, argument: str) -> Event | None:
        if argument:
            self._err("RSET takes no argument")
            return None
        assert self._drop is not None
        self._drop.deleted.clear()
        self._ok(self._size_text(self._drop.entries))
        return None

    def _noop(self, argument: str) -> Event | None:
        if argument:
            self._err("NOOP takes no argument")
        else:
            self._ok()
        return None

    # -- the session's answers -----------------------------------------------------------

    def _answer(self, kind: type) -> Event:
        event = self._waiting
        if not isinstance(event, kind):
            raise RuntimeError(f"no {kind.__name__} is outstanding")
        self._waiting = None
        return event

    def logged_in(self, entries: list[Entry]) -> None:
        self._answer(Login)
        self._drop = _Maildrop(list(entries))
        self.state = TRANSACTION
        self._ok(self._size_text(entries))

    def login_failed(self, text: str, code: str | None = "AUTH") -> None:
        self._answer(Login)
        self._err(text, code)

    def start_retrieve(self) -> None:
        """The message can be read: its +OK line (the encoded message follows it)."""
        event = self._waiting
        assert isinstance(event, Retrieve)
        self._ok(f"{event.size} octets" if event.lines is None else "top of message follows")

    def retrieve_done(self) -> None:
        event = self._answer(Retrieve)
        assert self._drop is not None and isinstance(event, Retrieve)
        if event.lines is None:
            self._drop.retrieved.add(event.number)

    def retrieve_failed(self, text: str, code: str | None = None) -> None:
        self._answer(Retrieve)
        self._err(text, code)

    def tls_started(self) -> None:
        self._answer(StartTLS)
        self.secure = True
        self.login_allowed = True
        self._user = None

    def updated(self, ok: bool, text: str) -> None:
        self._answer(Update)
        if ok:
            self._ok(text)
        else:
            self._err(text, "SYS/TEMP")
        self.state = CLOSED
        self._drop = None

    def abort(self, text: str, code: str | None = None) -> None:
        """The session ends without QUIT (a timeout, shutdown): nothing is deleted."""
        if self.state != CLOSED:
            self._err(text, code)
            self._waiting = None
            self._close()


_ANY = (AUTHORIZATION, TRANSACTION)
_HANDLERS = {
    "CAPA": (POP3._capa, _ANY),
    "QUIT": (POP3._quit, _ANY),
    "STLS": (POP3._stls, (AUTHORIZATION,)),
    "USER": (POP3._user_command, (AUTHORIZATION,)),
    "PASS": (POP3._pass, (AUTHORIZATION,)),
    "AUTH": (POP3._auth, (AUTHORIZATION,)),
    "STAT": (POP3._stat, (TRANSACTION,)),
    "LIST": (POP3._list, (TRANSACTION,)),
    "UIDL": (POP3._uidl, (TRANSACTION,)),
    "RETR": (POP3._retr, (TRANSACTION,)),
    "TOP": (POP3._top, (TRANSACTION,)),
    "DELE": (POP3._dele, (TRANSACTION,)),
    "RSET": (POP3._rset, (TRANSACTION,)),
    "NOOP": (POP3._noop, (TRANSACTION,)),
}


def _clean(text: str) -> bytes:
    """Reply text: one line of printable ASCII whatever went into it."""
    return "".join(c if " " <= c <= "~" else "?" for c in text).encode("ascii")


class MessageEncoder:
    """A message as RETR or TOP sends it, fed in chunks of any size: line ends made CRLF
    (a bare LF in a Maildir file becomes CRLF; a CRLF stays one), lines starting with
    "." dot-stuffed, and the terminating ".". For TOP (``lines`` given): the header, the
    blank line and that many lines of the body, then ``done`` (read no more)."""

    def __init__(self, lines: int | None = None):
        self.lines = lines
        self.done = False
        self._cr = False           # the last chunk ended in CR: its LF may come next
        self._line_start = True    # the output so far ends at a line end
        self._in_body = False
        self._top_line_start = True

    def feed(self, chunk: bytes) -> bytes:
        if self.done or not chunk:
            return b""
        data = b"\r" + chunk if self._cr else chunk
        self._cr = data.endswith(b"\r")
        if self._cr:
            data = data[:-1]
        return self._encode(data)

    def finish(self) -> bytes:
        """The rest and the terminating line."""
        tail = b""
        if not self.done and self._cr:
            tail = self._encode(b"\r")
        self._cr = False
        if not self._line_start:
            tail += CRLF
        self.done = True
        return tail + b"." + CRLF

    def _encode(self, data: bytes) -> bytes:
        data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if self.lines is not None:
            data = self._top(data)
        if not data:
            return b""
        out = data.replace(b"\n.", b"\n..")
        if self._line_start and out.startswith(b"."):
            out = b"." + out
        self._line_start = out.endswith(b"\n")
        return out

    def _top(self, data: bytes) -> bytes:
        assert self.lines is not None
        if self._in_body and self.lines <= 0:
            self.done = True
            return b""
        out = bytearray()
        position = 0
        while position < len(data) and not self.done:
            end = data.find(b"\n", position)
            piece = data[position:] if end < 0 else data[position:end + 1]
            position += len(piece)
            out += piece
            complete = end >= 0
            if self._in_body:
                if complete:
                    self.lines -= 1
            elif complete and self._top_line_start and piece == CRLF:
                self._in_body = True  # the blank line between header and body
            self._top_line_start = complete
            if self._in_body and self.lines <= 0:
                self.done = True
        return bytes(out)
