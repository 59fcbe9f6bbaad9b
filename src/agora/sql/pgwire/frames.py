"""Frontend messages of the PostgreSQL protocol v3, parsed from bytes (sans-IO).

:class:`FrontendParser` takes whatever bytes arrived and returns the complete messages
in them as events. Framing comes first: a startup packet has no type byte, everything
after it does. A length that cannot be right (negative, below the header, over the
limit) is fatal: :class:`Fatal` is returned and the parser takes nothing more, since
where the next message starts is unknown. A message whose frame is fine but whose body
is malformed is :class:`Malformed` — answered with an error, the connection lives on.

https://www.postgresql.org/docs/current/protocol-message-formats.html
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

PROTOCOL_3 = 3 << 16
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
MAX_STARTUP = 10_000  # PostgreSQL's own limit on a startup packet


# -- events ------------------------------------------------------------------------

@dataclass
class SSLRequest:
    pass


@dataclass
class GSSENCRequest:
    pass


@dataclass
class CancelRequest:
    process_id: int
    secret: int


@dataclass
class Startup:
    version: int
    params: dict[str, str]


@dataclass
class Password:
    """A 'p' message: a password, SASLInitialResponse or SASLResponse (the
    authentication step decides which)."""
    data: bytes


@dataclass
class Query:
    sql: str


@dataclass
class Parse:
    name: str
    sql: str
    param_types: list[int]


@dataclass
class Bind:
    portal: str
    statement: str
    param_formats: list[int]
    params: list[bytes | None]
    result_formats: list[int]


@dataclass
class Describe:
    kind: str  # "S" statement or "P" portal
    name: str


@dataclass
class Execute:
    portal: str
    max_rows: int


@dataclass
class Close:
    kind: str
    name: str


@dataclass
class Sync:
    pass


@dataclass
class Flush:
    pass


@dataclass
class Terminate:
    pass


@dataclass
class Malformed:
    """A well-framed message that cannot be understood; answer with an error."""
    type: bytes
    sqlstate: str
    message: str


@dataclass
class Fatal:
    """The stream cannot be read any further: send the error, then close."""
    sqlstate: str
    message: str


Event = (SSLRequest | GSSENCRequest | CancelRequest | Startup | Password | Query | Parse | Bind
         | Describe | Execute | Close | Sync | Flush | Terminate | Malformed | Fatal)


class _Bad(Exception):
    def __init__(self, message: str, sqlstate: str = "08P01"):
        super().__init__(message)
        self.sqlstate = sqlstate


class _Reader:
    """Reads a message body; every overrun is a _Bad, never an IndexError."""

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def int16(self) -> int:
        if self.pos + 2 > len(self.data):
            raise _Bad("message too short")
        value = struct.unpack_from("!h", self.data, self.pos)[0]
        self.pos += 2
        return value

    def int32(self) -> int:
        if self.pos + 4 > len(self.data):
            raise _Bad("message too short")
        value = struct.unpack_from("!i", self.data, self.pos)[0]
        self.pos += 4
        return value

    def count(self) -> int:
        value = self.int16()
        if value < 0:
            raise _Bad("negative count")
        return value

    def cstring(self) -> str:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            raise _Bad("string not terminated")
        raw = self.data[self.pos:end]
        self.pos = end + 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _Bad("invalid byte sequence for encoding \"UTF8\"", "22021") from None

    def take(self, size: int) -> bytes:
        if size < 0 or self.pos + size > len(self.data):
            raise _Bad("message too short")
        value = self.data[self.pos:self.pos + size]
        self.pos += size
        return value

    def end(self) -> None:
        if self.pos != len(self.data):
            raise _Bad("unexpected bytes at the end of a message")


def _formats(reader: _Reader) -> list[int]:
    formats = [reader.int16() for _ in range(reader.count())]
    if any(f not in (0, 1) for f in formats):
        raise _Bad("unsupported format code", "22023")
    return formats


def _parse_typed(kind: bytes, body: bytes) -> Event:
    r = _Reader(body)
    if kind == b"Q":
        sql = r.cstring()
        r.end()
        return Query(sql)
    if kind == b"P":
        name, sql = r.cstring(), r.cstring()
        types = [r.int32() & 0xFFFFFFFF for _ in range(r.count())]
        r.end()
        return Parse(name, sql, types)
    if kind == b"B":
        portal, statement = r.cstring(), r.cstring()
        formats = _formats(r)
        params: list[bytes | None] = []
        for _ in range(r.count()):
            size = r.int32()
            params.append(None if size == -1 else r.take(size))
        results = _formats(r)
        r.end()
        return Bind(portal, statement, formats, params, results)
    if kind in (b"D", b"C"):
        what = r.take(1).decode("latin-1")
        if what not in ("S", "P"):
            raise _Bad(f"invalid {'DESCRIBE' if kind == b'D' else 'CLOSE'} message subtype {what!r}")
        name = r.cstring()
        r.end()
        return Describe(what, name) if kind == b"D" else Close(what, name)
    if kind == b"E":
        portal = r.cstring()
        max_rows = r.int32()
        r.end()
        return Execute(portal, max(0, max_rows))
    if kind == b"p":
        return Password(body)
    simple = {b"S": Sync, b"H": Flush, b"X": Terminate}
    if kind in simple:
        r.end()
        return simple[kind]()
    raise _Bad(f"unsupported frontend message type {kind!r}", "0A000" if kind in b"Fdcf" else "08P01")


_LENGTH = struct.Struct("!i")
_INT16 = struct.Struct("!h")
_SYNC, _FLUSH = Sync(), Flush()


def _fast_sync(body: bytes) -> Event | None:
    return _SYNC if not body else None


def _fast_flush(body: bytes) -> Event | None:
    return _FLUSH if not body else None


def _fast_execute(body: bytes) -> Event | None:
    end = body.find(b"\x00")
    if end < 0 or len(body) != end + 5:
        return None
    try:
        portal = body[:end].decode("utf-8")
    except UnicodeDecodeError:
        return None
    return Execute(portal, max(0, _LENGTH.unpack_from(body, end + 1)[0]))


def _fast_describe(body: bytes) -> Event | None:
    if len(body) < 2 or body[-1] != 0 or body[0] not in (83, 80) or body.find(b"\x00", 1) != len(body) - 1:
        return None
    try:
        return Describe(chr(body[0]), body[1:-1].decode("utf-8"))
    except UnicodeDecodeError:
        return None


def _fast_bind(body: bytes) -> Event | None:
    """Bind without a reader object; None sends it down the careful path (which also
    names what is wrong with a malformed one)."""
    try:
        a = body.index(b"\x00")
        b = body.index(b"\x00", a + 1)
        portal = body[:a].decode("utf-8") if a else ""
        statement = body[a + 1:b].decode("utf-8")
        pos = b + 1
        count = _INT16.unpack_from(body, pos)[0]
        formats = list(struct.unpack_from(f"!{count}h", body, pos + 2)) if count else []
        pos += 2 + 2 * count
        nparams = _INT16.unpack_from(body, pos)[0]
        pos += 2
        params: list[bytes | None] = []
        for _ in range(nparams):
            length = _LENGTH.unpack_from(body, pos)[0]
            pos += 4
            if length == -1:
                params.append(None)
            elif 0 <= length <= len(body) - pos:
                params.append(body[pos:pos + length])
                pos += length
            else:
                return None
        count = _INT16.unpack_from(body, pos)[0]
        results = list(struct.unpack_from(f"!{count}h", body, pos + 2)) if count else []
        if pos + 2 + 2 * count != len(body) or count < 0 or nparams < 0:
            return None
    except (ValueError, struct.error, UnicodeDecodeError):
        return None
    if formats and any(f not in (0, 1) for f in formats) or results and any(f not in (0, 1) for f in results):
        return None
    return Bind(portal, statement, formats, params, results)


# What drivers send after the Bind of each execution of a prepared statement (libpq,
# pgbench, psycopg: Describe and Execute of the unnamed portal, then Sync; asyncpg
# without the Describe): recognized whole, so the common case costs one comparison.
# These are the very objects returned, so that the query runner can tell the pipeline
# by identity (QueryRunner.answer_now); nobody changes an event.
DESCRIBE_PORTAL, EXECUTE_ALL, SYNC = Describe("P", ""), Execute("", 0), _SYNC
_PIPELINE_TAILS = (
    (b"D\x00\x00\x00\x06P\x00" b"E\x00\x00\x00\x09\x00\x00\x00\x00\x00" b"S\x00\x00\x00\x04",
     (DESCRIBE_PORTAL, EXECUTE_ALL, SYNC)),
    (b"E\x00\x00\x00\x09\x00\x00\x00\x00\x00" b"S\x00\x00\x00\x04", (EXECUTE_ALL, SYNC)),
)


def _bind_pipeline(data: bytes) -> list[Event] | None:
    """The events of ``data`` if it is exactly a Bind followed by one of the usual
    tails; else None (the general path reads it)."""
    if len(data) < 20 or data[0] != 66:  # "B"
        return None
    end = 1 + _LENGTH.unpack_from(data, 1)[0]
    for tail, events in _PIPELINE_TAILS:
        if len(data) - end == len(tail) and data.endswith(tail):
            bind = _fast_bind(data[5:end])
            return None if bind is None else [bind, *events]
    return None


_FAST = {ord("S"): _fast_sync, ord("H"): _fast_flush, ord("E"): _fast_execute, ord("D"): _fast_describe,
         ord("B"): _fast_bind}


class FrontendParser:
    """Bytes in, events out. ``startup`` is True until the startup packet is read."""

    def __init__(self, max_message: int = 1 << 20):
        self.max_message = max_message
        self.startup = True
        self.dead = False
        self._buffer = bytearray()

    def expect_startup(self) -> None:
        """After SSLRequest/GSSENCRequest the client sends another startup packet."""
        self.startup = True

    def feed(self, data: bytes) -> list[Event]:
        if self.dead:
            return []
        if not self._buffer and not self.startup and len(data) <= self.max_message:
            events = _bind_pipeline(data)
            if events is not None:
                return events
        self._buffer += data
        events: list[Event] = []
        while self.startup and not self.dead:
            event = self._next()
            if event is None:
                return events
            events.append(event)
            if isinstance(event, Fatal):
                self.dead = True
                self._buffer.clear()
            elif isinstance(event, (Startup, CancelRequest)):
                # Nothing is read after a startup packet until the server has answered
                # it (authentication is a dialogue), nor after a cancel.
                return events
        if not self.dead:
            self._typed(events)
        return events

    def _typed(self, events: list[Event]) -> None:
        """Every complete typed message in the buffer (the hot path: one pass, one
        compaction of the buffer at the end)."""
        buf = self._buffer
        size = len(buf)
        pos = 0
        while size - pos >= 5:
            length = _LENGTH.unpack_from(buf, pos + 1)[0]
            if length < 4:
                events.append(Fatal("08P01", f"invalid message length {length}"))
            elif length > self.max_message:
                events.append(Fatal("54000", f"message of {length} bytes is longer than the limit of "
                                             f"{self.max_message}"))
            else:
                end = pos + 1 + length
                if end > size:
                    break
                kind = buf[pos]
                body = bytes(buf[pos + 5:end])
                pos = end
                fast = _FAST.get(kind)
                event = fast(body) if fast is not None else None
                if event is None:
                    try:
                        event = _parse_typed(bytes((kind,)), body)
                    except _Bad as bad:
                        event = Malformed(bytes((kind,)), bad.sqlstate, str(bad))
                events.append(event)
                if not isinstance(event, Terminate):
                    continue
            # Fatal or Terminate: nothing after it is read.
            self.dead = True
            buf.clear()
            return
        del buf[:pos]

    def pending(self) -> int:
        return len(self._buffer)

    def take(self) -> bytes:
        """The bytes not parsed yet (for a session that stops parsing and relays)."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        return rest

    def _next(self) -> Event | None:
        """The startup packet (no type byte), or None until it is complete."""
        buf = self._buffer
        if len(buf) < 4:
            return None
        length = struct.unpack_from("!i", buf)[0]
        if not 8 <= length <= MAX_STARTUP:
            return Fatal("08P01", "invalid length of startup packet")
        if len(buf) < length:
            return None
        body = bytes(buf[4:length])
        del buf[:length]
        return self._startup(body)

    def _startup(self, body: bytes) -> Event:
        code = struct.unpack_from("!i", body)[0]
        if code == SSL_REQUEST and len(body) == 4:
            return SSLRequest()
        if code == GSSENC_REQUEST and len(body) == 4:
            return GSSENCRequest()
        if code == CANCEL_REQUEST and len(body) == 12:
            _, pid, secret = struct.unpack("!iii", body)
            return CancelRequest(pid, secret)
        if code >> 16 != 3:
            return Fatal("0A000", f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: "
                                  "server supports 3.0")
        parts = body[4:].split(b"\x00")
        # key\0value\0 ... \0 : the list ends with an empty key.
        if len(parts) < 2 or parts[-1] != b"" or parts[-2] != b"" or len(parts) % 2 != 0:
            return Fatal("08P01", "invalid startup packet layout: expected terminator as last byte")
        params: dict[str, str] = {}
        try:
            for i in range(0, len(parts) - 2, 2):
                params[parts[i].decode()] = parts[i + 1].decode()
        except UnicodeDecodeError:
            return Fatal("22021", "invalid byte sequence for encoding \"UTF8\" in the startup packet")
        self.startup = False
        return Startup(code, params)

