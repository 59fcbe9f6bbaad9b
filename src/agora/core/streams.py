"""The transport half of a connection that a task serves: what the mail sessions (IMAP,
POP3) and the PostgreSQL session share.

An asyncio Protocol, not streams: the subclass takes the bytes in data_received (the
mail connection buffers them, the PostgreSQL session parses them and answers some at
once) and its task waits in ``_until_woken`` for more. Back-pressure goes both ways:
the subclass stops reading from a client whose bytes pile up (``_hold_reading``) and
reads again once its task has caught up (``_release_reading``); the task's writes wait
in ``drain`` while the transport's buffer is full, so a client that does not read holds
only its own task.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any


class StreamProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: Any = None
        self.secure = False
        self._eof = False                 # the client has sent its end, or the connection is gone
        self._closed = False              # nothing more goes out: lost or closed
        self._reading_paused = False
        self._writing_paused = False
        self._waiter: asyncio.Future[None] | None = None        # set while the task waits for bytes
        self._drain_waiter: asyncio.Future[None] | None = None  # set while it waits to write

    # -- asyncio.Protocol ------------------------------------------------------------

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = self._closed = True
        self._wake()
        self._resume_writer()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._resume_writer()

    # -- for the subclass and its task -----------------------------------------------

    def _wake(self) -> None:
        """Wake the task if it waits for bytes (it is then no longer waiting: ``_waiter``
        is None until it waits again)."""
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _resume_writer(self) -> None:
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _until_woken(self) -> None:
        """Until data_received (or the end of the connection) calls ``_wake``."""
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _hold_reading(self) -> None:
        if not self._reading_paused and not self._closed:
            self._reading_paused = True
            self.transport.pause_reading()

    def _release_reading(self) -> None:
        if self._reading_paused and not self._closed:
            self._reading_paused = False
            self.transport.resume_reading()

    async def drain(self) -> None:
        """Until the transport takes more; ConnectionResetError once the connection is gone."""
        while self._writing_paused and not self._closed:
            self._drain_waiter = asyncio.get_running_loop().create_future()
            await self._drain_waiter
        if self._closed:
            raise ConnectionResetError("the client went away")

    async def _start_tls(self, context: ssl.SSLContext, timeout: float) -> None:
        """The connection from here on over TLS (the server's side of the handshake)."""
        transport = await asyncio.get_running_loop().start_tls(
            self.transport, self, context, server_side=True, ssl_handshake_timeout=timeout)
        if transport is None:  # the client went away during the handshake
            raise ConnectionResetError("TLS handshake failed")
        self.transport = transport
        self.secure = True
