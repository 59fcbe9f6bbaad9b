"""A file's bytes over HTTP through Starlette, for the files API, the file browser,
share links and WebDAV alike.

Downloads: conditional requests (RFC 9110 section 13: ``If-Match``, ``If-None-Match``,
``If-Modified-Since``, ``If-Unmodified-Since``), one byte range (section 14: ``Range``,
``If-Range``; a multi-range request gets the whole file, which the RFC allows) and a
response sent from the descriptor that was checked: by the server with sendfile(2)
where it offers that (``agora.web.sendfile``), else read in a thread a chunk at a time.
What each header means is decided in ``httpfile.py``, the same for users' sites.

Uploads: the request body streamed into an atomic :class:`~agora.files.store.Upload`,
never held whole in memory.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from typing import BinaryIO, Mapping

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from agora.core.errors import TooLarge
from agora.files import httpfile
from agora.files.store import Entry, Upload, UserFiles
from agora.web.sendfile import ZEROCOPY

CHUNK = 1024 * 1024  # per thread hop: large enough that the hops cost nothing
# An upload whose client sends nothing for this long is dropped (and aborted), so a
# stalled client cannot hold a temporary file and a worker forever.
UPLOAD_IDLE_TIMEOUT = 300.0
# A user's document that a browser would run (HTML, SVG, XML) is shown sandboxed, with
# nothing active: else an uploaded page with scripts, shared by link, would run as us.
# Other types keep the site's CSP: a sandbox would stop the PDF viewer, for one.
FILE_CSP = "default-src 'none'; img-src 'self' data:; media-src 'self'; style-src 'unsafe-inline'; sandbox"
ACTIVE_TYPES = ("text/html", "application/xhtml+xml", "text/xml", "application/xml", "image/svg+xml")


# -- validators -----------------------------------------------------------------------


def preconditions(headers: Mapping[str, str], entry: Entry | None, method: str) -> int | None:
    """304 or 412 when the request's conditions say so (RFC 9110 13.2.2), else None.

    ``entry`` is the current version, None when there is none.
    """
    if_match = headers.get("if-match")
    if if_match is not None:
        if entry is None or not httpfile.etag_matches(if_match, entry.etag):
            return 412
    elif entry is not None and (since := headers.get("if-unmodified-since")) is not None:
        if httpfile.modified_since(since, entry.mtime):
            return 412
    if entry is None:
        return None
    if method in ("GET", "HEAD"):
        if httpfile.not_modified(headers.get("if-none-match"), headers.get("if-modified-since"),
                                 (entry.etag,), entry.mtime):
            return 304
    elif (if_none_match := headers.get("if-none-match")) is not None:
        # If-None-Match: * is how a client asks to create a file only where there is none.
        if httpfile.none_match(if_none_match, (entry.etag,)):
            return 412
    return None


def validator_headers(entry: Entry) -> dict[str, str]:
    return {"ETag": entry.etag, "Last-Modified": httpfile.http_date(entry.mtime)}


# -- downloads ------------------------------------------------------------------------


class FileDownload(Response):
    """``length`` bytes of ``handle`` from ``offset``: handed to the server to send
    (``http.response.zerocopysend``) where it offers that, else read in a thread a chunk
    at a time.

    The handle is the one whose stat made the headers, so the bytes match the ETag even
    if the file is replaced meanwhile (the old inode stays readable). It is closed when
    the response ends, however it ends.
    """

    def __init__(self, handle: BinaryIO, offset: int, length: int, *, status_code: int,
                 headers: Mapping[str, str]):
        self.handle = handle
        self.offset = offset
        self.length = length
        self.background = None
        self.status_code = status_code
        self.init_headers({**headers, "Content-Length": str(length)})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            if scope["method"] == "HEAD" or not self.length:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            if ZEROCOPY in scope.get("extensions", ()):
                # The server sends the bytes from the page cache itself (sendfile), and
                # notices a client that goes away.
                await send({"type": ZEROCOPY, "file": self.handle, "offset": self.offset, "count": self.length})
                return
            async with anyio.create_task_group() as group:
                async def stream() -> None:
                    await self._stream(send)
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                # ASGI 2.3 servers do not fail send() when the client has gone; the
                # disconnect arrives on receive(), and ends the transfer early.
                while (await receive())["type"] != "http.disconnect":
                    pass
                group.cancel_scope.cancel()
        finally:
            self.handle.close()

    async def _stream(self, send: Send) -> None:
        fd = self.handle.fileno()
        position, end = self.offset, self.offset + self.length
        while position < end:
            chunk = await run_in_threadpool(os.pread, fd, min(CHUNK, end - position), position)
            if not chunk:
                raise RuntimeError("the file shrank while it was being sent")
            position += len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": position < end})


def _open(files: UserFiles, path: str) -> tuple[Entry, BinaryIO]:
    entry = files.stat(path)
    handle = files.open(path)
    try:
        st = os.fstat(handle.fileno())
    except BaseException:
        handle.close()
        raise
    return dataclasses.replace(entry, size=st.st_size, mtime=st.st_mtime, mtime_ns=st.st_mtime_ns), handle


async def download(request: Request, files: UserFiles, path: str, *, disposition: str | None = None,
                   cache_control: str = "private, no-cache") -> tuple[Response, bool]:
    """The response to GET/HEAD of a file; and whether it sends the file from its first
    byte (what a share link counts as a download). ``disposition``: "attachment" (save
    it), "inline" (show it, saved under its own name), or None (no header)."""
    entry, handle = await run_in_threadpool(_open, files, path)
    try:
        headers = {**validator_headers(entry), "Cache-Control": cache_control, "Accept-Ranges": "bytes"}
        status = preconditions(request.headers, entry, request.method)
        if status is not None:
            handle.close()
            return Response(status_code=status, headers=headers), False
        span = None
        wanted = request.headers.get("range")
        if wanted is not None and httpfile.range_applies(request.headers.get("if-range"), entry.etag,
                                                         headers["Last-Modified"]):
            span = httpfile.parse_range(wanted, entry.size)
        if span == httpfile.UNSATISFIABLE:
            handle.close()
            return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{entry.size}"}), False
        headers["Content-Type"] = kind = httpfile.content_type(entry.name)
        base = kind.split(";", 1)[0]
        if base in ACTIVE_TYPES or base.endswith("+xml"):
            headers["Content-Security-Policy"] = FILE_CSP
        if disposition:
            headers["Content-Disposition"] = httpfile.content_disposition(disposition, entry.name)
        if span is None:
            return FileDownload(handle, 0, entry.size, status_code=200, headers=headers), request.method == "GET"
        start, end = span
        headers["Content-Range"] = f"bytes {start}-{end}/{entry.size}"
        response = FileDownload(handle, start, end - start + 1, status_code=206, headers=headers)
        return response, request.method == "GET" and start == 0
    except BaseException:
        handle.close()
        raise


# -- uploads --------------------------------------------------------------------------


async def receive_into(request: Request, upload: Upload, *, limit: int, offset: int = 0) -> int:
    """Write the request body into ``upload``; returns the number of bytes received.

    Raises TooLarge when the file would pass ``limit`` bytes (the body comes after
    ``offset`` kept ones), QuotaExceeded (from the upload), TimeoutError
    when the client stalls, ClientDisconnect when it goes away. The caller aborts the
    upload on any of them.
    """
    buffer = bytearray()
    received = 0
    stream = request.stream()
    try:
        while True:
            try:
                async with asyncio.timeout(UPLOAD_IDLE_TIMEOUT):
                    chunk = await anext(stream)
            except StopAsyncIteration:
                break
            received += len(chunk)
            if offset + received > limit:
                raise TooLarge(f"files are limited to {limit} bytes (files.max_upload)")
            buffer += chunk
            if len(buffer) >= CHUNK:
                await run_in_threadpool(upload.write, buffer)
                buffer.clear()
        if buffer:
            await run_in_threadpool(upload.write, buffer)
    finally:
        await stream.aclose()
    return received
