"""Zero-copy file bodies: uvicorn's httptools protocol with the ASGI extensions
``http.response.zerocopysend`` and ``http.response.pathsend``.

uvicorn implements neither, so every byte of a download went from the file into Python
bytes (a thread hop per chunk) and from there into the transport: a 1 GiB download ran
at about 0.6x nginx's speed. With these extensions an app hands the server an open file
(zerocopysend, with an offset and a count, so a range too) or a path (pathsend, which
Starlette's FileResponse sends when the extension is advertised), and the server writes
the body with sendfile(2), from the page cache to the socket, as nginx does. (Both are
extensions in the ASGI spec; ``file`` may be a descriptor number here as well as a
file object.) In chunked responses the server copies the bytes instead.

How: the status line and headers go through the transport as usual; once its buffer
has drained, the body goes around it, by sendfile on a duplicate of the socket's
descriptor. A duplicate, because uvloop's transport lends out no socket to write on,
and because the transport may close its descriptor at any time (the client went away),
after which the number could name another client's connection. The socket is
non-blocking: when it is full, loop.add_writer waits for room. Nothing else writes to
the transport meanwhile (uvicorn starts the next pipelined response only when this one
is complete), and the response is then completed by uvicorn's own code: keep-alive,
pipelining, ``Connection: close`` and the graceful shutdown work as for any response.

Only on plain HTTP: through TLS the bytes must be encrypted in this process, so there
the extensions are not advertised and apps stream their bodies as before.

It leans on uvicorn's RequestResponseCycle (``send``, ``response_started``,
``response_complete``, ``chunked_encoding``, ``expected_content_length``,
``disconnected``) and on the protocol's ``scope``, ``cycle`` and
``on_headers_complete``; tests/test_files_sendfile.py drives it in-process, so an
upgrade of uvicorn that changes them shows up there.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from functools import cache
from typing import Any

from uvicorn.protocols.utils import is_ssl

from agora.web.guard import guarded_protocol

ZEROCOPY = "http.response.zerocopysend"
PATHSEND = "http.response.pathsend"

# Bodies smaller than this are read (in a thread) and written through the transport
# instead. None are: measured here (uvicorn on uvloop, wrk -c8 on loopback), sendfile
# answers even 1 KiB bodies faster (30,500 against 18,500 requests/s; 256 KiB: 8,000
# against 3,800; no size between where it lost), since copying costs a thread hop and
# the headers go out in a write of their own either way. A knob for a platform where
# small sendfiles do cost more.
SENDFILE_MIN = 0
# At most this much is sent per wake-up of the event loop, so that one fast client on
# loopback cannot hold the loop for a whole large file while other connections wait
# (nginx bounds each sendfile the same way, sendfile_max_chunk).
SENDFILE_SLICE = 8 * 1024**2
COPY_CHUNK = 1024**2  # the copying path's read size, as the apps' own streaming uses

_TCP_CORK = getattr(socket, "TCP_CORK", None)  # Linux only
# What a connection lost mid-transfer raises from sendfile.
_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)
# What sendfile raises for a file it cannot send from.
_UNSUPPORTED = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP)


def _fileno(file: Any) -> int:
    return file if isinstance(file, int) else file.fileno()


def _cork(channel: socket.socket, on: bool) -> None:
    """TCP_CORK while a body is sent, as nginx's ``tcp_nopush`` does with sendfile:
    only full segments go out until it is lifted. Measured here, the same 1 GiB went
    about 13 % faster so, on less CPU (without it: 0.91x nginx, with it: 1.03x)."""
    try:
        channel.setsockopt(socket.IPPROTO_TCP, _TCP_CORK, on)
    except (OSError, TypeError):
        pass  # not TCP (a Unix socket), or a system without TCP_CORK


@cache
def sendfile_protocol() -> Any:
    """The uvicorn ``http`` protocol class with both extensions; "auto" without httptools."""
    try:
        from uvicorn.protocols.http.httptools_impl import RequestResponseCycle
    except ImportError:  # pragma: no cover - httptools is a dependency on CPython
        return "auto"

    class FileCycle(RequestResponseCycle):
        """uvicorn's request cycle, also taking the two file-body messages."""

        transfer: asyncio.Future[None] | None = None  # a sendfile in progress

        async def send(self, message: Any) -> None:
            kind = message["type"]
            if kind == ZEROCOPY:
                file = message["file"]
                await self._send_file(_fileno(file), message.get("offset"), message.get("count"),
                                      message.get("more_body", False))
            elif kind == PATHSEND:
                fd = os.open(message["path"], os.O_RDONLY | os.O_CLOEXEC)
                try:
                    await self._send_file(fd, 0, None, False)
                finally:
                    os.close(fd)
            else:
                await super().send(message)

        async def _send_file(self, fd: int, offset: int | None, count: int | None, more_body: bool) -> None:
            await self._drained()
            if self.disconnected:
                return
            if not self.response_started or self.response_complete:
                raise RuntimeError("a file body is only sent after 'http.response.start' and before the end")
            if offset is None:
                offset = os.lseek(fd, 0, os.SEEK_CUR)
            if count is None:
                count = max(0, os.fstat(fd).st_size - offset)
            if self.scope["method"] == "HEAD":
                count = 0
            if count and count >= SENDFILE_MIN and not self.chunked_encoding:
                if count > self.expected_content_length:
                    raise RuntimeError("Response content longer than Content-Length")
                sent = await self._sendfile(fd, offset, count)
                if self.disconnected:
                    return  # the client went away; the connection is closed
                self.expected_content_length -= sent
                offset += sent
                count -= sent
            if count:
                await self._copy(fd, offset, count)
            # Completes the response the way uvicorn completes any other.
            await super().send({"type": "http.response.body", "body": b"", "more_body": more_body})

        async def _copy(self, fd: int, offset: int, count: int) -> None:
            end = offset + count
            while offset < end and not self.disconnected:
                chunk = await asyncio.to_thread(os.pread, fd, min(COPY_CHUNK, end - offset), offset)
                if not chunk:
                    raise RuntimeError("the file shrank while it was being sent")
                offset += len(chunk)
                await super().send({"type": "http.response.body", "body": chunk, "more_body": True})

        async def _drained(self) -> None:
            """Until everything written through the transport is on the socket: the
            file's bytes must come after it. Lowering the transport's high-water mark to
            0 makes it pause the protocol until its buffer is empty."""
            transport = self.transport
            if not transport.get_write_buffer_size() or self.disconnected:
                return
            low, high = transport.get_write_buffer_limits()
            transport.set_write_buffer_limits(high=0, low=0)
            try:
                while transport.get_write_buffer_size() and not self.disconnected:
                    await self.flow.drain()
            finally:
                if not transport.is_closing():
                    transport.set_write_buffer_limits(high=high, low=low)

        async def _sendfile(self, fd: int, offset: int, count: int) -> int:
            """Up to ``count`` bytes of ``fd`` from ``offset`` onto the socket, which
            nothing waits to be written before; returns how many were sent: fewer when
            the client went away (``disconnected``), or none when this file cannot be
            sent so (the caller copies it then)."""
            transport = self.transport
            if self.disconnected or transport.is_closing():
                self.disconnected = True
                return 0
            channel = socket.socket(fileno=os.dup(transport.get_extra_info("socket").fileno()))
            out = channel.fileno()
            loop = asyncio.get_running_loop()
            done: asyncio.Future[None] = loop.create_future()
            position, end = offset, offset + count
            unsupported = False

            def pump() -> None:
                nonlocal position, unsupported
                budget = SENDFILE_SLICE
                try:
                    while position < end and budget > 0:
                        try:
                            sent = os.sendfile(out, fd, position, min(end - position, budget))
                        except BlockingIOError:
                            return  # the socket is full: on when it has room
                        except InterruptedError:
                            continue
                        except OSError as error:
                            if position == offset and error.errno in _UNSUPPORTED:
                                unsupported = True  # not this file (some FUSE filesystems): it is copied
                                break
                            raise
                        if not sent:
                            raise RuntimeError("the file shrank while it was being sent")
                        position += sent
                        budget -= sent
                    else:
                        if position < end:
                            return  # a slice sent: the rest on the next turn of the loop
                except BaseException as error:
                    if not done.done():
                        done.set_exception(error)
                    return
                if not done.done():
                    done.set_result(None)

            self.transfer = done
            _cork(channel, True)
            try:
                pump()
                if not done.done():
                    loop.add_writer(out, pump)
                    try:
                        await done
                    finally:
                        loop.remove_writer(out)
                else:
                    done.result()
            except _GONE:
                self.disconnected = True
                transport.close()
            finally:
                self.transfer = None
                _cork(channel, False)  # the last, partial, segment goes out now
                channel.close()
            if (position < end and not unsupported) or transport.is_closing():
                # Woken by connection_lost, or the transport was closed meanwhile (our
                # duplicate kept the socket open): nothing more goes through it.
                self.disconnected = True
            elif position == end:
                SendfileProtocol.files_sent += 1
            return position - offset

    class SendfileProtocol(guarded_protocol()):  # type: ignore[misc]
        """Advertises the extensions on plain-HTTP connections and serves them (on top
        of the head deadline and per-address limit of web/guard.py)."""

        zero_copy = False
        files_sent = 0  # file bodies sent with sendfile, for the tests

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.zero_copy = not is_ssl(transport) and transport.get_extra_info("socket") is not None

        def on_headers_complete(self) -> None:
            if not self.zero_copy:
                super().on_headers_complete()
                return
            self.scope["extensions"] = {ZEROCOPY: {}, PATHSEND: {}}
            super().on_headers_complete()
            cycle = self.cycle
            # uvicorn makes the cycle itself; it becomes ours before its task first runs.
            if cycle is not None and cycle.__class__ is RequestResponseCycle:
                cycle.__class__ = FileCycle

        def connection_lost(self, exc: Exception | None) -> None:
            cycle = self.cycle
            super().connection_lost(exc)
            # A transfer waiting for room stops now. (One behind which a pipelined
            # request has already arrived is no longer self.cycle: the socket's error
            # wakes it instead, or it ends and finds the transport closed.)
            transfer = getattr(cycle, "transfer", None)
            if transfer is not None and not transfer.done():
                transfer.set_result(None)

    return SendfileProtocol
