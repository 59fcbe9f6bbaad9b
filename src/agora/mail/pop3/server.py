"""The POP3 listeners: "pop3" (1110, STLS) and "pop3s" (1995, TLS from the first byte).

One asyncio Protocol per connection, feeding one Session task, with back-pressure both
ways: reading stops while a client's unprocessed bytes pile up, and a session waits
(within mail.command_timeout) for a client that does not read what it is sent.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from typing import Any

from agora.core.runtime import Runtime
from agora.core.tls import server_context
from agora.mail.pop3.session import Session
from agora.mail.store import mail_store

log = logging.getLogger("agora.pop3")

READ_AHEAD = 256 * 1024  # bytes a client may send beyond what its session has taken


class POP3Connection(asyncio.Protocol):
    """The transport side of one session (session.Connection)."""

    def __init__(self, listener: "POP3Listener"):
        self.listener = listener
        self.transport: Any = None
        self.peer = ""
        self.secure = listener.implicit
        self.session: Session | None = None
        self.task: asyncio.Task[None] | None = None
        self._buffer = bytearray()
        self._eof = False
        self._closed = False
        self._reading_paused = False
        self._writing_paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else ""
        refusal = self.listener.admit(self)
        if refusal:
            transport.write(b"-ERR [SYS/TEMP] " + refusal.encode() + b"\r\n")
            transport.close()
            self._closed = True
            return
        self.session = Session(self.listener.runtime, self.listener.store, self,
                               stls=not self.listener.implicit and self.listener.ssl_context is not None,
                               maildrops=self.listener.maildrops, stopping=lambda: self.listener.stopping)
        self.task = asyncio.get_running_loop().create_task(self._run())

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) > READ_AHEAD and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = self._closed = True
        self._wake()
        self._resume_writer()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._resume_writer()

    def _resume_writer(self) -> None:
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- what the session uses -------------------------------------------------------

    async def read(self) -> bytes:
        while not self._buffer and not self._eof:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = bytes(self._buffer)
        self._buffer.clear()
        if self._reading_paused and not self._closed:
            self._reading_paused = False
            self.transport.resume_reading()
        return data

    def write(self, data: bytes) -> None:
        if not self._closed:
            self.transport.write(data)

    async def drain(self) -> None:
        while self._writing_paused and not self._closed:
            self._drain_waiter = asyncio.get_running_loop().create_future()
            await self._drain_waiter
        if self._closed:
            raise ConnectionResetError("the client went away")

    async def start_tls(self) -> None:
        # Plain text that came after STLS is dropped, never taken as if it came over TLS.
        self._buffer.clear()
        loop = asyncio.get_running_loop()
        transport = await loop.start_tls(self.transport, self, self.listener.ssl_context, server_side=True,
                                         ssl_handshake_timeout=self.listener.runtime.config.mail.command_timeout)
        if transport is None:
            raise ConnectionResetError("TLS handshake failed")
        self.transport = transport
        self.secure = True

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
            log.exception("POP3 session from %s failed", self.peer)
        finally:
            self.close()
            self.listener.release(self)

    def say_goodbye(self, text: str) -> None:
        """Close a session that waits for its client (server shutdown)."""
        if not self._closed:
            self.transport.write(b"-ERR [SYS/TEMP] " + text.encode() + b"\r\n")
            self.close()


class POP3Listener:
    def __init__(self, runtime: Runtime, sock: socket.socket, name: str = "pop3"):
        self.runtime = runtime
        self.sock = sock
        self.name = name
        self.implicit = name == "pop3s"
        self.store = mail_store(runtime)
        config = runtime.config.mail
        self.max_connections = config.max_connections
        self.max_per_address = config.max_connections_per_ip
        self.ssl_context: ssl.SSLContext | None = server_context(runtime.tls) if runtime.tls else None
        # Users whose maildrop a POP3 session holds, shared by both listeners.
        self.maildrops: set[str] = runtime.shared("mail.pop3.maildrops", set)
        self.connections: set[POP3Connection] = set()
        self.per_address: dict[str, int] = {}
        self.stopping = False
        self.server: Any = None

    async def start(self) -> None:
        if self.implicit and self.ssl_context is None:
            raise RuntimeError("pop3s needs a TLS certificate")
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: POP3Connection(self), sock=self.sock, ssl=self.ssl_context if self.implicit else None,
            ssl_handshake_timeout=self.runtime.config.mail.command_timeout if self.implicit else None)
        self.runtime.metrics.count_connections(self.name, lambda: len(self.connections))

    def admit(self, conn: POP3Connection) -> str | None:
        if self.stopping:
            return "Server shutting down"
        if len(self.connections) >= self.max_connections:
            return "Too many connections; try again later"
        count = self.per_address.get(conn.peer, 0)
        if count >= self.max_per_address:
            return "Too many connections from your address; try again later"
        self.per_address[conn.peer] = count + 1
        self.connections.add(conn)
        return None

    def release(self, conn: POP3Connection) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            count = self.per_address.get(conn.peer, 1) - 1
            if count > 0:
                self.per_address[conn.peer] = count
            else:
                self.per_address.pop(conn.peer, None)

    async def stop(self, timeout: float) -> None:
        """Stop accepting; sessions waiting for their client are closed now (nothing is
        deleted: that needs QUIT), those running a command finish it, within ``timeout``."""
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
                log.warning("closed %d POP3 sessions still busy after %.0f s", len(late), timeout)
                await asyncio.wait(late, timeout=1.0)
