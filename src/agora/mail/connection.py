"""What the IMAP and POP3 listeners share: the asyncio connection that feeds a session,
and the listener that admits, counts and stops those connections.

One asyncio Protocol per connection (core/streams.py), feeding one Session task: no
thread, and little state per idle client. The protocol hands the session whatever bytes
arrived, with back-pressure both ways: it stops reading from a client whose bytes pile
up, and a session waits (within mail.command_timeout) for a client that does not read
its responses, so a slow client holds only itself.

A protocol's listener (imap/server.py, pop3/server.py) is a subclass of MailListener
that says what differs: its name in logs, the line that turns a client away, its
implicit-TLS listener's name, and how a session is made.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from typing import Any, Callable, Protocol

from agora.core import descriptors
from agora.core.runtime import Runtime
from agora.core.streams import StreamProtocol
from agora.core.tls import server_context
from agora.mail.store import mail_store


class SessionConnection(Protocol):
    """What a session writes through (a MailConnection, or a test's); each protocol's
    session module adds how it reads."""

    peer: str
    secure: bool

    def write(self, data: bytes) -> None: ...
    async def drain(self) -> None: ...
    async def start_tls(self) -> None: ...
    def close(self) -> None: ...


class MailSession:
    """What every session holds: the runtime, the store, its connection, whether the
    server is stopping, and the mail timeouts."""

    def __init__(self, runtime: Any, store: Any, conn: Any, stopping: Callable[[], bool]):
        config = runtime.config.mail
        self.runtime = runtime
        self.store = store
        self.conn = conn
        self.stopping = stopping
        self.idle_timeout = config.idle_timeout
        self.command_timeout = config.command_timeout
        # Before login a silent client holds a connection (and one of its address's
        # mail.max_connections_per_ip) for this long, not for the idle timeout.
        self.login_timeout = config.login_timeout


class MailConnection(StreamProtocol):
    """The transport side of one session (its session module's Connection): the bytes
    received wait in a buffer for the session's next read."""

    def __init__(self, listener: "MailListener"):
        super().__init__()
        self.listener = listener
        self.peer = ""
        self.secure = listener.implicit
        self.session: Any = None
        self.task: asyncio.Task[None] | None = None
        self._buffer = bytearray()
        self._interrupted = False

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else ""
        refusal = self.listener.admit(self)
        if refusal:
            transport.write(self.listener.goodbye + refusal.encode() + b"\r\n")
            transport.close()
            self._closed = True
            return
        self.session = self.listener.new_session(self)
        self.task = asyncio.get_running_loop().create_task(self._run())

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) > self.listener.read_ahead:
            self._hold_reading()
        self._wake()

    # -- what the session uses -------------------------------------------------------

    def interrupt(self) -> None:
        """Make a waiting read return None (or the next one, if none waits)."""
        self._interrupted = True
        self._wake()

    async def read(self) -> bytes | None:
        """What the client sent since the last read; b"" at the end, None after
        interrupt() (which only IMAP uses)."""
        while not self._buffer and not self._eof:
            if self._interrupted:
                self._interrupted = False
                return None
            await self._until_woken()
        data = bytes(self._buffer)
        self._buffer.clear()
        self._release_reading()
        return data

    def write(self, data: bytes) -> None:
        if not self._closed:
            self.transport.write(data)

    async def start_tls(self) -> None:
        # Whatever came in plain text after STARTTLS (STLS) is dropped, never run as if
        # it had come over TLS (CVE-2011-0411).
        self._buffer.clear()
        try:
            await self._start_tls(self.listener.ssl_context, self.listener.runtime.config.mail.command_timeout)
        except OSError as error:  # ssl.SSLError, a timeout, the client gone
            # A client's failed handshake is its own affair: one line, no traceback.
            self.listener.log.info("%s %s: TLS handshake failed: %s", self.listener.protocol, self.peer,
                                   error or type(error).__name__)
            self.close()
            raise ConnectionResetError("TLS handshake failed") from None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.transport.close()
        self._eof = True
        self._wake()

    # -- the session -----------------------------------------------------------------

    async def _run(self) -> None:
        assert self.session is not None
        try:
            await self.session.run()
        except Exception:
            self.listener.log.exception("%s session from %s failed", self.listener.protocol, self.peer)
        finally:
            self.close()
            self.listener.release(self)

    def say_goodbye(self, text: str) -> None:
        """Close a session that waits for its client (server shutdown), saying why."""
        if not self._closed:
            self.transport.write(self.listener.goodbye + text.encode() + b"\r\n")
            self.close()


class MailListener:
    """One listening socket of a protocol, plain (with STARTTLS) or implicit TLS."""

    protocol = ""            # the protocol's name in logs: "IMAP", "POP3"
    implicit_name = ""       # the name of its implicit-TLS listener: "imaps", "pop3s"
    goodbye = b""            # what starts the line that turns a client away
    read_ahead = 256 * 1024  # bytes a client may send beyond what its session has taken
    try_later = ""           # said after "Too many connections"
    log = logging.getLogger("agora.mail")

    def __init__(self, runtime: Runtime, sock: socket.socket, name: str):
        self.runtime = runtime
        self.sock = sock
        self.name = name
        self.implicit = name == self.implicit_name
        self.store = mail_store(runtime)
        config = runtime.config.mail
        self.max_connections = config.max_connections
        self.max_per_address = config.max_connections_per_ip
        self.ssl_context: ssl.SSLContext | None = server_context(runtime.tls) if runtime.tls else None
        self.connections: set[MailConnection] = set()
        self.per_address: dict[str, int] = {}
        self.stopping = False
        self.server: Any = None

    def new_session(self, conn: MailConnection) -> Any:
        """The session that will run over a connection just admitted."""
        raise NotImplementedError

    @property
    def offers_starttls(self) -> bool:
        return not self.implicit and self.ssl_context is not None

    async def start(self) -> None:
        if self.implicit and self.ssl_context is None:
            raise RuntimeError(f"{self.implicit_name} needs a TLS certificate")
        loop = asyncio.get_running_loop()
        config = self.runtime.config.mail
        self.server = await loop.create_server(
            lambda: MailConnection(self), sock=self.sock, ssl=self.ssl_context if self.implicit else None,
            backlog=descriptors.backlog(self.runtime.config),
            # A client silent in its handshake has not logged in either.
            ssl_handshake_timeout=min(config.command_timeout, config.login_timeout) if self.implicit else None)
        self.runtime.metrics.count_connections(self.name, lambda: len(self.connections))

    def admit(self, conn: MailConnection) -> str | None:
        if self.stopping:
            return "Server shutting down"
        if len(self.connections) >= self.max_connections:
            return "Too many connections" + self.try_later
        count = self.per_address.get(conn.peer, 0)
        if count >= self.max_per_address:
            return "Too many connections from your address" + self.try_later
        self.per_address[conn.peer] = count + 1
        self.connections.add(conn)
        return None

    def release(self, conn: MailConnection) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            count = self.per_address.get(conn.peer, 1) - 1
            if count > 0:
                self.per_address[conn.peer] = count
            else:
                self.per_address.pop(conn.peer, None)

    async def stop(self, timeout: float) -> None:
        """Stop accepting; sessions waiting for their client are told goodbye and closed
        now, those running a command finish it first, all within ``timeout``."""
        self.stopping = True
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections):
            if conn.session is not None and not conn.session.busy:
                conn.say_goodbye("Server shutting down")
        tasks = [c.task for c in self.connections if c.task is not None and not c.task.done()]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=timeout)
            for task in late:
                task.cancel()
            if late:
                self.log.warning("closed %d %s sessions still busy after %.0f s", len(late), self.protocol, timeout)
                await asyncio.wait(late, timeout=1.0)
