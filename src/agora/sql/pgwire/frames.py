"""Frontend messages of the PostgreSQL protocol v3, parsed from bytes (sans-IO).

:class:`FrontendParser` takes whatever bytes arrived and returns the complete messages
in them as events. Framing comes first: a startup packet has no type byte, everything
after it does. A length that cannot be right (negative, below the header, over the
limit) is fatal: :class:`Fatal` is returned and the parser takes nothing more, since
where the next message starts is unknown. A message whose frame is fine but whose body
is malformed is :class:`Malformed`. Only what comes before the session is relayed to
the engine is parsed here: start-up, authentication (password messages) and Terminate;
after that the engine reads the client's bytes itself.

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


Event = SSLRequest | GSSENCRequest | CancelRequest | Startup | Password | Terminate | Malformed | Fatal


def _parse_typed(kind: bytes, body: bytes) -> Event:
    if kind == b"p":
        return Password(body)
    if kind == b"X":
        return Terminate()
    return Malformed(kind, "08P01", f"expected a password message during authentication, got {kind!r}")


_LENGTH = struct.Struct("!i")


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
                event = _parse_typed(bytes(buf[pos:pos + 1]), bytes(buf[pos + 5:end]))
                pos = end
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

